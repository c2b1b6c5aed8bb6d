//! The audit log: every access to unmasked personal data and every administrative action, with
//! who, why, when and which person, kept so that an edit, a deletion or a reordering shows.
//!
//! Guarantees:
//! - an entry holds when, the actor (an authenticated identity bound by the deployment, never
//!   `$USER`), the action, the person as a keyed hash (never the ID number), the purpose (个人信息
//!   保护法), and a detail without personal data;
//! - entries are numbered 1, 2, 3, … (`seq`, the primary key: two writers cannot both append entry
//!   n; the loser reads the new end and tries again);
//! - each entry carries the previous entry's hash (`prev_hash`; 64 zeros for the first) and a MAC:
//!   HMAC-SHA-256 under `keys.audit_key` of its own hash, SHA-256 over the previous hash and its
//!   fields. The key comes from the settings or a Secret, never the database, so whoever can write
//!   the table cannot forge an entry; `verify` names the first entry whose number, link or MAC is
//!   wrong. Removing the newest entries leaves a valid shorter chain: every append therefore also
//!   goes to the process log (`audit_seq`, `audit_hash`), which is shipped elsewhere; compare the
//!   last `seq` there with `doudi audit list`.

use hmac::{KeyInit, Mac};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{Database, now_rfc3339};
use crate::idnum::IdNumber;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the audit log could not be appended after {0} attempts (other writers kept appending)")]
    Busy(u32),
}

/// What every audited action needs: who acts and why. Unmasked access without both is refused
/// before anything is read.
#[derive(Clone, Debug)]
pub struct Who {
    pub actor: String,
    pub purpose: String,
}

impl Who {
    /// `actor` from `--actor` or the settings (`audit.actor`, `DOUDI_AUDIT_ACTOR`), `purpose` from
    /// `--purpose`: both required and not blank.
    pub fn required(actor: Option<&str>, purpose: Option<&str>, what: &str) -> Result<Who, String> {
        let actor = actor.map(str::trim).filter(|a| !a.is_empty());
        let purpose = purpose.map(str::trim).filter(|p| !p.is_empty());
        match (actor, purpose) {
            (Some(actor), Some(purpose)) => Ok(Who { actor: actor.to_string(), purpose: purpose.to_string() }),
            (None, _) => Err(format!(
                "{what} is recorded in the audit log with who did it: give --actor NAME (or set audit.actor / DOUDI_AUDIT_ACTOR as the deployment binds it)"
            )),
            (_, None) => Err(format!("{what} is recorded in the audit log with its purpose: give --purpose TEXT")),
        }
    }
}

/// The audit key (`keys.audit_key`).
#[derive(Clone)]
pub struct Auditor {
    key: Vec<u8>,
}

impl Auditor {
    pub fn new(key: &[u8]) -> Auditor {
        Auditor { key: key.to_vec() }
    }

    fn mac(&self) -> hmac::Hmac<Sha256> {
        <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| <hmac::Hmac<Sha256> as KeyInit>::new(&Default::default()))
    }

    /// The keyed hash that stands for a person in the log.
    pub fn person(&self, id: &IdNumber) -> String {
        let mut mac = self.mac();
        mac.update(b"audit-person:");
        mac.update(id.as_str().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn seal(&self, hash: &str) -> String {
        let mut mac = self.mac();
        mac.update(hash.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// One entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    /// The person's keyed hash, when the action concerns one.
    pub person: Option<String>,
    pub purpose: String,
    /// JSON without personal data.
    pub detail: String,
    pub prev_hash: String,
    pub mac: String,
}

impl Entry {
    /// SHA-256 over the previous hash and the fields, as a JSON array (one encoding).
    fn hash(&self) -> String {
        let fields = serde_json::json!([self.seq, self.at, self.actor, self.action, self.person, self.purpose, self.detail]);
        let mut sha = Sha256::new();
        sha.update(self.prev_hash.as_bytes());
        sha.update(fields.to_string().as_bytes());
        hex::encode(sha.finalize())
    }
}

fn entry(row: &sqlx::any::AnyRow) -> Result<Entry, sqlx::Error> {
    Ok(Entry {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        person: row.try_get("person")?,
        purpose: row.try_get("purpose")?,
        detail: row.try_get("detail")?,
        prev_hash: row.try_get("prev_hash")?,
        mac: row.try_get("mac")?,
    })
}

/// Appends one entry and returns it.
pub async fn record(
    db: &Database,
    auditor: &Auditor,
    who: &Who,
    action: &str,
    person: Option<&IdNumber>,
    detail: Value,
) -> Result<Entry, AuditError> {
    const ATTEMPTS: u32 = 20;
    for _ in 0..ATTEMPTS {
        let last =
            sqlx::query("SELECT seq, at, actor, action, person, purpose, detail, prev_hash, mac FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(db.pool())
                .await?;
        let (seq, prev_hash) = match last {
            Some(row) => {
                let last = entry(&row)?;
                (last.seq + 1, last.hash())
            }
            None => (1, GENESIS.to_string()),
        };
        let mut e = Entry {
            seq,
            at: now_rfc3339(),
            actor: who.actor.clone(),
            action: action.to_string(),
            person: person.map(|p| auditor.person(p)),
            purpose: who.purpose.clone(),
            detail: detail.to_string(),
            prev_hash,
            mac: String::new(),
        };
        let hash = e.hash();
        e.mac = auditor.seal(&hash);
        let inserted = sqlx::query("INSERT INTO audit_log (seq, at, actor, action, person, purpose, detail, prev_hash, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(e.seq)
            .bind(&e.at)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.person)
            .bind(&e.purpose)
            .bind(&e.detail)
            .bind(&e.prev_hash)
            .bind(&e.mac)
            .execute(db.pool())
            .await;
        match inserted {
            Ok(_) => {
                tracing::info!(audit_seq = e.seq, audit_hash = %hash, actor = %e.actor, action = %e.action, "Audit log entry recorded.");
                return Ok(e);
            }
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => continue,
            Err(other) => return Err(other.into()),
        }
    }
    Err(AuditError::Busy(ATTEMPTS))
}

/// The first entry that breaks the chain, and how.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// Checks the whole chain: numbers consecutive from 1, each link to the previous entry's hash, each
/// MAC. Returns how many entries verified, or the first bad one.
pub async fn verify(db: &Database, auditor: &Auditor) -> Result<Result<u64, Broken>, AuditError> {
    let rows = sqlx::query("SELECT seq, at, actor, action, person, purpose, detail, prev_hash, mac FROM audit_log ORDER BY seq")
        .fetch_all(db.pool())
        .await?;
    let mut prev = GENESIS.to_string();
    let mut count = 0;
    for (i, row) in rows.iter().enumerate() {
        let e = entry(row)?;
        let expected_seq = i64::try_from(i).unwrap_or(i64::MAX).saturating_add(1);
        if e.seq != expected_seq {
            return Ok(Err(Broken { seq: e.seq, reason: format!("entry {expected_seq} is missing (deleted?): the next is {}", e.seq) }));
        }
        if e.prev_hash != prev {
            return Ok(Err(Broken {
                seq: e.seq,
                reason: "its link does not match the entry before it (an entry was deleted, inserted or reordered)".into(),
            }));
        }
        let hash = e.hash();
        let sealed = auditor.seal(&hash);
        if !crate::http::secret_matches(&e.mac, &sealed) {
            return Ok(Err(Broken { seq: e.seq, reason: "its MAC does not match its content (the entry was edited)".into() }));
        }
        prev = hash;
        count += 1;
    }
    Ok(Ok(count))
}

/// Entries, oldest first, filtered by time (RFC 3339, inclusive), actor and person (by hash).
pub async fn list(db: &Database, since: Option<&str>, actor: Option<&str>, person: Option<&str>) -> Result<Vec<Entry>, AuditError> {
    let rows = sqlx::query(
        "SELECT seq, at, actor, action, person, purpose, detail, prev_hash, mac FROM audit_log WHERE (CAST($1 AS TEXT) IS NULL OR at >= $1) AND (CAST($2 AS TEXT) IS NULL OR actor = $2) \
         AND (CAST($3 AS TEXT) IS NULL OR person = $3) ORDER BY seq",
    )
    .bind(since)
    .bind(actor)
    .bind(person)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(entry).collect::<Result<_, _>>().map_err(Into::into)
}
