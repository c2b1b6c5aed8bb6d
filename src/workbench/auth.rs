//! Who may use the workbench: local accounts with Argon2id password hashes, sessions that expire,
//! and a token per session against cross-site request forgery.
//!
//! Guarantees: a password is checked against its PHC string (Argon2id, the parameters in the
//! string) and never stored or logged; an unknown user costs the same hash as a known one; a
//! session id is 256 random bits from the operating system, sent as an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` over HTTPS); a session ends after 30 idle minutes or 8 hours; every form
//! carries the session's CSRF token, compared in constant time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Deserialize;

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Works the tasks of their counties: resolves, looks people up.
    Caseworker,
    /// As a caseworker, and assigns tasks.
    Supervisor,
    /// Reads everything of their counties and the audit log; changes nothing.
    Auditor,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Caseworker => "经办人",
            Role::Supervisor => "审核人",
            Role::Auditor => "审计员",
        }
    }

    pub fn may_resolve(self) -> bool {
        matches!(self, Role::Caseworker | Role::Supervisor)
    }

    pub fn may_assign(self) -> bool {
        self == Role::Supervisor
    }
}

/// One local account (`workbench-accounts.toml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub user: String,
    /// Argon2id PHC string (`doudi workbench hash-password`).
    pub password: String,
    pub role: Role,
    /// Division codes the user answers for (item 24: the county is responsible): a county
    /// (`220102`), a prefecture (`220100`: its counties) or the province (`220000`).
    pub counties: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    account: Vec<Account>,
}

/// The accounts, by user.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    by_user: HashMap<String, Account>,
}

impl Accounts {
    /// Reads and checks the accounts file; errors name the account and field.
    pub fn load(path: &Path) -> Result<Accounts, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: AccountsFile = toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
        let mut by_user = HashMap::new();
        for a in file.account {
            if a.user.trim().is_empty() {
                return Err(format!("{}: an account has an empty user", path.display()));
            }
            if PasswordHash::new(&a.password).is_err() {
                return Err(format!(
                    "{}: account {}: password is not a PHC hash (use `doudi workbench hash-password`)",
                    path.display(),
                    a.user
                ));
            }
            if a.counties.is_empty() || a.counties.iter().any(|c| c.len() != 6 || !c.bytes().all(|b| b.is_ascii_digit())) {
                return Err(format!("{}: account {}: counties must be six-digit division codes", path.display(), a.user));
            }
            if by_user.insert(a.user.clone(), a.clone()).is_some() {
                return Err(format!("{}: account {} is listed twice", path.display(), a.user));
            }
        }
        Ok(Accounts { by_user })
    }

    /// The account, if `password` is its password.
    pub fn check(&self, user: &str, password: &str) -> Option<&Account> {
        let account = self.by_user.get(user);
        // An unknown user is checked against a fixed hash, so timing does not tell who exists.
        let hash = account.map_or(DUMMY_HASH, |a| a.password.as_str());
        let ok = PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
        account.filter(|_| ok)
    }
}

/// An Argon2id hash of a random password nobody knows.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3Sw+XlQpVGgpM6DvcvRMRc1lH+ym5zi3XvZi9mHjb6c";

/// The PHC string of `password` (Argon2id with the crate's default parameters and a random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes()).map_err(|e| e.to_string())?;
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `account` answers for `region`: one of its codes is the region, or a prefecture or
/// province containing it.
pub fn covers(account: &Account, region: &str) -> bool {
    account.counties.iter().any(|c| region.starts_with(crate::matcher::policy_change::region_prefix(c)))
}

/// A signed-in user's session.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub counties: Vec<String>,
    pub csrf: String,
    started: Instant,
    seen: Instant,
}

impl Session {
    pub fn account(&self) -> Account {
        Account { user: self.user.clone(), password: String::new(), role: self.role, counties: self.counties.clone() }
    }
}

/// How long a session lasts.
#[derive(Clone, Copy, Debug)]
pub struct Expiry {
    pub idle: Duration,
    pub absolute: Duration,
}

impl Default for Expiry {
    fn default() -> Self {
        Expiry { idle: Duration::from_secs(30 * 60), absolute: Duration::from_secs(8 * 3600) }
    }
}

/// The sessions of this process (a restart signs everyone out).
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Session>>>,
    expiry: Expiry,
}

/// 256 random bits from the operating system, hex.
pub fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

impl Sessions {
    pub fn new(expiry: Expiry) -> Sessions {
        Sessions { inner: Arc::default(), expiry }
    }

    /// Starts a session for `account`; returns its id.
    pub fn start(&self, account: &Account) -> String {
        let id = random_token();
        let now = Instant::now();
        let session = Session {
            user: account.user.clone(),
            role: account.role,
            counties: account.counties.clone(),
            csrf: random_token(),
            started: now,
            seen: now,
        };
        let mut all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, s| !self.expired(s, now));
        all.insert(id.clone(), session);
        id
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.seen) > self.expiry.idle || now.duration_since(s.started) > self.expiry.absolute
    }

    /// The live session `id`, its idle time reset; an expired one is ended.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let expired = all.get(id).is_some_and(|s| self.expired(s, now));
        if expired {
            all.remove(id);
            return None;
        }
        let s = all.get_mut(id)?;
        s.seen = now;
        Some(s.clone())
    }

    pub fn end(&self, id: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_hash_and_unknown_users_fail() {
        let hash = hash_password("correct horse").unwrap_or_default();
        assert!(hash.starts_with("$argon2id$"));
        let accounts = Accounts {
            by_user: HashMap::from([(
                "cw".to_string(),
                Account { user: "cw".into(), password: hash, role: Role::Caseworker, counties: vec!["220102".into()] },
            )]),
        };
        assert!(accounts.check("cw", "correct horse").is_some());
        assert!(accounts.check("cw", "wrong").is_none());
        assert!(accounts.check("nobody", "correct horse").is_none());
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn counties_cover_their_own_divisions_only() {
        let a = |c: &str| Account { user: "u".into(), password: String::new(), role: Role::Caseworker, counties: vec![c.into()] };
        assert!(covers(&a("220102"), "220102"));
        assert!(!covers(&a("220102"), "220104"));
        assert!(covers(&a("220100"), "220104"), "a prefecture covers its counties");
        assert!(!covers(&a("220100"), "220202"));
        assert!(covers(&a("220000"), "222401"), "the province covers every county");
    }

    #[test]
    fn sessions_expire_when_idle() {
        let sessions = Sessions::new(Expiry { idle: Duration::from_millis(50), absolute: Duration::from_secs(60) });
        let account = Account { user: "u".into(), password: String::new(), role: Role::Auditor, counties: vec!["220102".into()] };
        let id = sessions.start(&account);
        assert_eq!(sessions.get(&id).map(|s| s.user), Some("u".to_string()));
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.get(&id).is_none(), "idle too long");
        assert_eq!(random_token().len(), 64);
    }
}
