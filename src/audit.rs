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

use crate::db::sql::{Bind, Conn, Tx, ot, t};
use crate::db::{Database, now_rfc3339};
use crate::idnum::IdNumber;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the audit log could not be appended after {0} attempts (other writers kept appending)")]
    Busy(u32),
    #[error("{0}")]
    Other(String),
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

fn entry(row: &crate::db::sql::Record) -> Result<Entry, sqlx::Error> {
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

/// An entry to append in the caller's transaction ([`append`]), so that an action and its entry
/// are committed together or not at all.
#[derive(Clone, Debug)]
pub struct Pending {
    pub who: Who,
    pub action: String,
    pub person: Option<IdNumber>,
    /// JSON without personal data.
    pub detail: Value,
}

/// Advisory lock key of the audit log's end (PostgreSQL): appenders in transactions queue on it
/// instead of racing for the next `seq` (a lost race would abort the caller's whole transaction).
const APPEND_LOCK: i64 = 0x6175_6469_745f_6c6f;

/// Appends `pending` in order, in the transaction `conn` is in, and returns the entries. On
/// PostgreSQL the log's end is locked until that transaction ends; on SQLite the transaction holds
/// the database's write lock once it has written. Log them with [`logged`] once committed.
pub async fn append(conn: &mut Conn<'_>, auditor: &Auditor, pending: &[Pending]) -> Result<Vec<Entry>, crate::db::DbError> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    if conn.backend().has_advisory_locks() {
        conn.fetch("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock($1)) l".into(), vec![Bind::Int(APPEND_LOCK)]).await?;
    }
    let last = conn
        .fetch(
            "SELECT seq, at, actor, action, person, purpose, detail, prev_hash, mac FROM audit_log ORDER BY seq DESC LIMIT 1".into(),
            Vec::new(),
        )
        .await?;
    let (mut seq, mut prev_hash) = match last.first() {
        Some(row) => {
            let last = entry(row)?;
            (last.seq, last.hash())
        }
        None => (0, GENESIS.to_string()),
    };
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        seq += 1;
        let mut e = Entry {
            seq,
            at: now_rfc3339(),
            actor: p.who.actor.clone(),
            action: p.action.clone(),
            person: p.person.as_ref().map(|id| auditor.person(id)),
            purpose: p.who.purpose.clone(),
            detail: p.detail.to_string(),
            prev_hash: prev_hash.clone(),
            mac: String::new(),
        };
        let hash = e.hash();
        e.mac = auditor.seal(&hash);
        conn.execute(
            "INSERT INTO audit_log (seq, at, actor, action, person, purpose, detail, prev_hash, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)".into(),
            vec![
                Bind::Int(e.seq),
                t(&e.at),
                t(&e.actor),
                t(&e.action),
                ot(e.person.clone()),
                t(&e.purpose),
                t(&e.detail),
                t(&e.prev_hash),
                t(&e.mac),
            ],
        )
        .await?;
        prev_hash = hash;
        out.push(e);
    }
    Ok(out)
}

/// Writes committed entries to the process log (`audit_seq`, `audit_hash`), which is shipped
/// elsewhere: a truncated table then shows against it.
pub fn logged(entries: &[Entry]) {
    for e in entries {
        tracing::info!(audit_seq = e.seq, audit_hash = %e.hash(), actor = %e.actor, action = %e.action, "Audit log entry recorded.");
    }
}

/// Appends one entry in a transaction of its own and returns it.
pub async fn record(
    db: &Database,
    auditor: &Auditor,
    who: &Who,
    action: &str,
    person: Option<&IdNumber>,
    detail: Value,
) -> Result<Entry, AuditError> {
    const ATTEMPTS: u32 = 20;
    let pending = [Pending { who: who.clone(), action: action.to_string(), person: person.cloned(), detail }];
    for _ in 0..ATTEMPTS {
        let mut tx = Tx::begin(db).await?;
        match append(&mut tx.conn(), auditor, &pending).await {
            Ok(mut entries) => {
                tx.commit().await?;
                logged(&entries);
                if let Some(e) = entries.pop() {
                    return Ok(e);
                }
            }
            // Two SQLite writers read the same end: the loser tries again.
            Err(crate::db::DbError::Query(sqlx::Error::Database(d))) if d.is_unique_violation() => continue,
            Err(crate::db::DbError::Query(e)) => return Err(e.into()),
            Err(other) => return Err(AuditError::Other(other.to_string())),
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
    for (i, row) in rows.into_iter().enumerate() {
        let e = entry(&crate::db::sql::Record::Any(row))?;
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
    rows.into_iter().map(|r| entry(&crate::db::sql::Record::Any(r))).collect::<Result<_, _>>().map_err(Into::into)
}
