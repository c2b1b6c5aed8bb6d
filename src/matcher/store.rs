//! Applying a batch of inbound events to the recipient database, inside the caller's transaction.
//!
//! Guarantees: [`apply_batch`] reads what the whole batch needs in a few statements, applies the
//! events in memory in their order, and writes everything the batch causes (persons, memberships,
//! facts with provenance, decisions, entitlements, review tasks and outbox rows) with multi-row
//! statements through one connection that the caller has put in a transaction, together with the
//! consumed offsets; so the effects of an event happen exactly once even when Kafka delivers it
//! again. An event already applied (its
//! `ce_id` is in `processed_events`) changes nothing. A fact older than the current one for the same
//! person, source and field is stored as `stale` and changes nothing. A department's name that
//! differs from the registry's holds the event's facts and raises an `identity_conflict` task; it is
//! never merged silently. Every outbound payload is checked against its topic's schema before it is
//! written. Logs name topic, partition, offset and field, never personal data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::NaiveDate;
use serde_json::{Value, json};
use sqlx::{AnyConnection, Row};

use super::assemble::{StoredFact, StoredMember, assemble};
use super::facts::{Extracted, Feed, HouseholdRecord, PersonFact, extract};
use super::outbound::{Change, EntitlementRow, Summary, diff, entitlement_payload, entitlements_of, status_payload, task_detail};
use crate::db::{DbError, now_rfc3339};
use crate::envelope::{KeyDeriver, event_id, event_type};
use crate::idnum::IdNumber;
use crate::policy::Params;
use crate::schema::Registry;

/// The CloudEvents source of everything the matcher derives.
pub const MATCHER_SOURCE: &str = "doudi://matcher";

/// The outbound topics, by the catalogue name whose schema they follow.
#[derive(Clone, Debug)]
pub struct Outbound {
    /// Catalogue name → actual topic name (the same in production; tests add a suffix).
    pub names: BTreeMap<String, String>,
}

pub const STATUS_TOPIC: &str = "exchange.recipient.status.v1";
pub const REVIEW_TOPIC: &str = "exchange.review-task.v1";

/// Every agency's entitlement topic starts so.
pub const ENTITLEMENT_TOPIC_PREFIX: &str = "exchange.entitlement.";

/// The agencies with an entitlement topic.
pub const AGENCIES: [&str; 5] = ["medical", "education", "housing", "hrss", "union"];

/// The catalogue topic of an agency's entitlements.
pub fn agency_topic(agency: &str) -> String {
    format!("{ENTITLEMENT_TOPIC_PREFIX}{agency}.v1")
}

impl Outbound {
    /// Every outbound catalogue topic, each named `prefix + name + suffix`.
    pub fn with_affixes(prefix: &str, suffix: &str) -> Self {
        let mut names = BTreeMap::new();
        let mut all = vec![STATUS_TOPIC.to_string(), REVIEW_TOPIC.to_string()];
        all.extend(AGENCIES.iter().map(|a| agency_topic(a)));
        for n in all {
            names.insert(n.clone(), format!("{prefix}{n}{suffix}"));
        }
        Outbound { names }
    }

    pub fn actual(&self, catalogue: &str) -> String {
        self.names.get(catalogue).cloned().unwrap_or_else(|| catalogue.to_string())
    }
}

/// What the matcher needs besides the database.
#[derive(Clone)]
pub struct Context {
    pub params: Arc<Params>,
    pub keys: KeyDeriver,
    pub registry: Arc<Registry>,
    pub outbound: Outbound,
    /// Today, bounding birth dates in ID numbers (wall clock; decisions never use it).
    pub today: NaiveDate,
}

/// One consumed inbound event.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub topic: String,
    pub feed: Feed,
    pub partition: i32,
    pub offset: i64,
    pub ce_id: String,
    /// `ce_time` of the source record, RFC 3339.
    pub recorded_at: String,
    pub source_file: Option<String>,
    pub source_row: Option<String>,
    pub payload: Value,
}

/// Counts of what a batch did; no personal data.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchOutcome {
    pub events: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub invalid: u64,
    pub stale: u64,
    pub held: u64,
    pub households_evaluated: u64,
    pub decisions: u64,
    pub outbox: u64,
    pub review_tasks: u64,
    pub assessment_problems: u64,
}

impl BatchOutcome {
    pub fn add(&mut self, o: &BatchOutcome) {
        self.events += o.events;
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.invalid += o.invalid;
        self.stale += o.stale;
        self.held += o.held;
        self.households_evaluated += o.households_evaluated;
        self.decisions += o.decisions;
        self.outbox += o.outbox;
        self.review_tasks += o.review_tasks;
        self.assessment_problems += o.assessment_problems;
    }
}

/// Errors applying a batch: the transaction must be rolled back.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("an outbound event for {topic} does not match its schema ({reason}); nothing was written")]
    InvalidOutbound { topic: String, reason: String },
    /// Rows bound as JSON text were not UTF-8 (they are built from Rust strings, so this would be a
    /// bug, reported rather than papered over).
    #[error("the rows for {0} could not be encoded as JSON text")]
    Encoding(String),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        ApplyError::Db(DbError::Query(e))
    }
}

/// `($1, $2), ($3, $4)`: the placeholders of `rows` rows of `width` values.
fn values_list(rows: usize, width: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(rows * width * 7);
    for i in 0..rows * width {
        let sep = match (i % width, i) {
            (0, 0) => "(",
            (0, _) => "), (",
            _ => ", ",
        };
        // Writing into a String cannot fail.
        let _ = write!(out, "{sep}${}", i + 1);
    }
    if rows * width > 0 {
        out.push(')');
    }
    out
}

/// A value bound into a statement.
#[derive(Clone, Debug)]
pub enum Bind {
    Text(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
}

fn t(s: impl Into<String>) -> Bind {
    Bind::Text(Some(s.into()))
}

fn ot(s: Option<impl Into<String>>) -> Bind {
    Bind::Text(s.map(Into::into))
}

/// The connection the store works through: the `Any` driver's (SQLite, and PostgreSQL where the
/// caller has no other), or PostgreSQL's own. The statements are the same; the native driver saves
/// converting every row read and every value bound, about a quarter of doudi's CPU in a
/// re-evaluation (BENCHMARKS.md), and sends a multi-row statement's values as one array per column.
pub enum Conn<'c> {
    Any(&'c mut AnyConnection),
    Pg(&'c mut sqlx::PgConnection),
}

/// A row read through a [`Conn`].
pub enum Record {
    Any(sqlx::any::AnyRow),
    Pg(sqlx::postgres::PgRow),
}

impl Record {
    /// The value of a column, as [`sqlx::Row::try_get`] on either driver.
    pub fn try_get<'r, T, I>(&'r self, index: I) -> Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any> + sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
        I: sqlx::ColumnIndex<sqlx::any::AnyRow> + sqlx::ColumnIndex<sqlx::postgres::PgRow>,
    {
        match self {
            Record::Any(r) => r.try_get(index),
            Record::Pg(r) => r.try_get(index),
        }
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;
type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds one value, moving it into the statement.
fn bind_any(q: AnyQuery<'_>, b: Bind) -> AnyQuery<'_> {
    // The `Any` driver's `Option<String>` clones its text when bound (its `encode` goes through
    // `encode_by_ref`); a present value is bound as a `String`, which is moved.
    match b {
        Bind::Text(Some(v)) => q.bind(v),
        Bind::Text(None) => q.bind(None::<String>),
        Bind::Int(v) => q.bind(v),
        Bind::OptInt(v) => q.bind(v),
    }
}

/// Binds one value, moving it into the statement.
fn bind_pg(q: PgQuery<'_>, b: Bind) -> PgQuery<'_> {
    match b {
        Bind::Text(v) => q.bind(v),
        Bind::Int(v) => q.bind(v),
        Bind::OptInt(v) => q.bind(v),
    }
}

/// A transaction on the store's connection: PostgreSQL's own driver where the database has it. It
/// is rolled back when dropped uncommitted.
pub enum Tx {
    Any(sqlx::Transaction<'static, sqlx::Any>),
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Tx {
    /// Begins a transaction on a pooled connection of `db`.
    pub async fn begin(db: &crate::db::Database) -> Result<Self, sqlx::Error> {
        Ok(match db.postgres_pool() {
            Some(pool) => Tx::Pg(pool.begin().await?),
            None => Tx::Any(db.pool().begin().await?),
        })
    }

    /// The transaction's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Any(tx) => Conn::Any(tx),
            Tx::Pg(tx) => Conn::Pg(tx),
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Any(tx) => tx.commit().await,
            Tx::Pg(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Any(tx) => tx.rollback().await,
            Tx::Pg(tx) => tx.rollback().await,
        }
    }
}

/// A pooled connection outside a transaction: PostgreSQL's own driver where the database has it.
pub enum Pooled {
    Any(sqlx::pool::PoolConnection<sqlx::Any>),
    Pg(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl Pooled {
    pub async fn acquire(db: &crate::db::Database) -> Result<Self, sqlx::Error> {
        Ok(match db.postgres_pool() {
            Some(pool) => Pooled::Pg(pool.acquire().await?),
            None => Pooled::Any(db.pool().acquire().await?),
        })
    }

    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Any(c) => Conn::Any(c),
            Pooled::Pg(c) => Conn::Pg(c),
        }
    }
}

impl Conn<'_> {
    /// sqlx's name for the PostgreSQL driver behind an `Any` connection is "PostgreSQL".
    fn is_postgres(&self) -> bool {
        match self {
            Conn::Any(c) => c.backend_name().eq_ignore_ascii_case("postgresql"),
            Conn::Pg(_) => true,
        }
    }

    /// The rows of `sql` with `binds`.
    pub async fn fetch(&mut self, sql: String, binds: Vec<Bind>) -> Result<Vec<Record>, ApplyError> {
        Ok(match self {
            Conn::Any(c) => {
                let q = binds.into_iter().fold(sqlx::query(sqlx::AssertSqlSafe(sql)), bind_any);
                q.fetch_all(&mut **c).await?.into_iter().map(Record::Any).collect()
            }
            Conn::Pg(c) => {
                let q = binds.into_iter().fold(sqlx::query(sqlx::AssertSqlSafe(sql)), bind_pg);
                q.fetch_all(&mut **c).await?.into_iter().map(Record::Pg).collect()
            }
        })
    }

    /// Executes `sql` with `binds`; the number of rows it affected.
    pub async fn execute(&mut self, sql: String, binds: Vec<Bind>) -> Result<u64, ApplyError> {
        Ok(match self {
            Conn::Any(c) => {
                binds.into_iter().fold(sqlx::query(sqlx::AssertSqlSafe(sql)), bind_any).execute(&mut **c).await?.rows_affected()
            }
            Conn::Pg(c) => binds.into_iter().fold(sqlx::query(sqlx::AssertSqlSafe(sql)), bind_pg).execute(&mut **c).await?.rows_affected(),
        })
    }
}

/// Most values bound in one SQLite statement (it allows 32,766).
const MAX_BINDS: usize = 30_000;

/// The set of a JSON array of strings bound as the parameter `$n`, for `… IN (set)`: one statement
/// of fixed text whatever the number of keys, so it is prepared once per connection (an `IN` list
/// of thousands of parameters is planned again at every execution).
fn json_set(conn: &Conn<'_>, n: usize, integers: bool) -> String {
    match (conn.is_postgres(), integers) {
        (true, false) => format!("SELECT json_array_elements_text(CAST(${n} AS json))"),
        (true, true) => format!("SELECT CAST(json_array_elements_text(CAST(${n} AS json)) AS BIGINT)"),
        (false, _) => format!("SELECT value FROM json_each(${n})"),
    }
}

/// The (text, integer) pairs of a JSON array of two-element arrays bound as `$1`, for
/// `(a, b) IN (pairs)`.
fn json_pairs(conn: &Conn<'_>) -> &'static str {
    if conn.is_postgres() {
        "SELECT k->>0, CAST(k->>1 AS BIGINT) FROM json_array_elements(CAST($1 AS json)) k"
    } else {
        "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each($1)"
    }
}

/// Text of a JSON array of strings.
fn json_array(keys: &[String]) -> String {
    serde_json::to_string(keys).unwrap_or_else(|_| "[]".into())
}

/// A JSON array of `items`, each written by `write`; `what` names the rows in the (impossible)
/// error of a text that is not UTF-8.
fn json_list<T>(items: impl IntoIterator<Item = T>, what: &str, mut write: impl FnMut(&mut Vec<u8>, T)) -> Result<String, ApplyError> {
    let mut out = vec![b'['];
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(&mut out, item);
    }
    out.push(b']');
    String::from_utf8(out).map_err(|_| ApplyError::Encoding(what.to_string()))
}

/// Appends a bound value to a JSON text under construction.
fn push_json(out: &mut Vec<u8>, b: &Bind) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = match b {
        Bind::Text(Some(v)) => serde_json::to_writer(&mut *out, v).map_err(std::io::Error::from),
        Bind::Int(v) | Bind::OptInt(Some(v)) => write!(out, "{v}"),
        Bind::Text(None) | Bind::OptInt(None) => out.write_all(b"null"),
    };
}

/// The values of one column of a multi-row statement, sent to PostgreSQL as one array.
enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
}

/// `rows` as one array per column, and the `SELECT * FROM UNNEST(…)` that reads them back as rows.
/// Every row must have `width` values, each column of one kind (text or integer).
fn unnest(width: usize, rows: Vec<Vec<Bind>>) -> Result<(String, Vec<Column>), ApplyError> {
    let n = rows.len();
    let mut columns: Vec<Option<Column>> = (0..width).map(|_| None).collect();
    let misfit = || ApplyError::Encoding("a multi-row statement's column".to_string());
    for row in rows {
        if row.len() != width {
            return Err(misfit());
        }
        for (column, b) in columns.iter_mut().zip(row) {
            let column = column.get_or_insert_with(|| match b {
                Bind::Text(_) => Column::Text(Vec::with_capacity(n)),
                Bind::Int(_) | Bind::OptInt(_) => Column::Int(Vec::with_capacity(n)),
            });
            match (column, b) {
                (Column::Text(values), Bind::Text(v)) => values.push(v),
                (Column::Int(values), Bind::Int(v)) => values.push(Some(v)),
                (Column::Int(values), Bind::OptInt(v)) => values.push(v),
                _ => return Err(misfit()),
            }
        }
    }
    let columns: Vec<Column> = columns.into_iter().flatten().collect();
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Column::Text(_) => format!("CAST(${} AS text[])", i + 1),
            Column::Int(_) => format!("CAST(${} AS bigint[])", i + 1),
        })
        .collect();
    Ok((format!("SELECT * FROM UNNEST({})", arrays.join(", ")), columns))
}

/// Executes `statement(rows)` for `rows`, where `rows` is a row source: `VALUES ($1, $2), …` or
/// `SELECT * FROM UNNEST(…)`, with the rows moved into the binds.
/// - On PostgreSQL's own driver, one statement for all rows, each column bound as one array.
/// - Through the `Any` driver (SQLite; PostgreSQL's writes always go through its own), in as few
///   `VALUES` statements as SQLite's bind limit allows.
async fn execute_values(
    conn: &mut Conn<'_>,
    width: usize,
    rows: Vec<Vec<Bind>>,
    statement: impl Fn(&str) -> String,
) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let conn = match conn {
        Conn::Pg(c) => {
            let (source, columns) = unnest(width, rows)?;
            let mut q = sqlx::query(sqlx::AssertSqlSafe(statement(&source)));
            for column in columns {
                q = match column {
                    Column::Text(v) => q.bind(v),
                    Column::Int(v) => q.bind(v),
                };
            }
            q.execute(&mut **c).await?;
            return Ok(());
        }
        Conn::Any(c) => c,
    };
    let most = (MAX_BINDS / width.max(1)).max(1);
    let mut left = rows.len();
    let mut rows = rows.into_iter();
    while left > 0 {
        let n = most.min(left);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(statement(&format!("VALUES {}", values_list(n, width)))));
        for row in rows.by_ref().take(n) {
            for b in row {
                q = bind_any(q, b);
            }
        }
        q.execute(&mut **conn).await?;
        left -= n;
    }
    Ok(())
}

/// `INSERT INTO table (cols) … suffix` of many rows (see [`execute_values`]).
async fn insert_rows(conn: &mut Conn<'_>, table: &str, cols: &[&str], rows: Vec<Vec<Bind>>, suffix: &str) -> Result<(), ApplyError> {
    let list = cols.join(", ");
    execute_values(conn, cols.len(), rows, |source| format!("INSERT INTO {table} ({list}) {source} {suffix}")).await
}

/// Rows of `sql_prefix (keys) sql_suffix`, where the prefix ends in `… IN`.
async fn select_in(conn: &mut Conn<'_>, sql_prefix: &str, sql_suffix: &str, keys: &[String]) -> Result<Vec<Record>, ApplyError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    // Planned at each execution (not kept as a prepared statement): a plan kept from a
    // connection's first executions, made while the tables were small, was kept as they grew. A
    // matcher loading an empty database read members and facts in 387 ms per batch instead of
    // about 5 ms, and applied half as many events per second (BENCHMARKS.md).
    if let Conn::Pg(c) = conn
        && let Some(column) = sql_prefix.strip_suffix(" IN")
    {
        let sql = format!("{column} = ANY(CAST($1 AS text[])) {sql_suffix}");
        let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(keys).persistent(false);
        return Ok(q.fetch_all(&mut **c).await?.into_iter().map(Record::Pg).collect());
    }
    let sql = format!("{sql_prefix} ({}) {sql_suffix}", json_set(conn, 1, false));
    conn.fetch(sql, vec![t(json_array(keys))]).await
}

/// The keys of [`execute_in`] as one PostgreSQL array, when they are all of one kind.
enum KeyArray {
    Text(Vec<String>),
    Int(Vec<i64>),
}

impl KeyArray {
    fn of(keys: &[Bind]) -> Option<Self> {
        if let Some(ints) = keys.iter().map(|k| if let Bind::Int(v) | Bind::OptInt(Some(v)) = k { Some(*v) } else { None }).collect() {
            return Some(KeyArray::Int(ints));
        }
        keys.iter().map(|k| if let Bind::Text(Some(v)) = k { Some(v.clone()) } else { None }).collect::<Option<_>>().map(KeyArray::Text)
    }
}

/// `UPDATE …` or `DELETE … WHERE key IN (keys)` with fixed leading binds.
pub(super) async fn execute_in(conn: &mut Conn<'_>, sql_prefix: &str, leading: &[Bind], keys: &[Bind]) -> Result<(), ApplyError> {
    if keys.is_empty() {
        return Ok(());
    }
    // On PostgreSQL's own driver, the keys are one array: `key = ANY($n)`, read as an index scan of
    // the keys (the JSON set is parsed and hashed first).
    if let Conn::Pg(c) = conn
        && let Some(column) = sql_prefix.strip_suffix(" IN")
        && let Some(array) = KeyArray::of(keys)
    {
        let cast = match array {
            KeyArray::Text(_) => "text[]",
            KeyArray::Int(_) => "bigint[]",
        };
        let sql = format!("{column} = ANY(CAST(${} AS {cast}))", leading.len() + 1);
        let q = leading.iter().cloned().fold(sqlx::query(sqlx::AssertSqlSafe(sql)), bind_pg);
        let q = match array {
            KeyArray::Text(v) => q.bind(v),
            KeyArray::Int(v) => q.bind(v),
        };
        q.execute(&mut **c).await?;
        return Ok(());
    }
    // Integer keys (row ids) travel as JSON numbers, text keys as JSON strings.
    let integers = keys.iter().all(|k| matches!(k, Bind::Int(_) | Bind::OptInt(Some(_))));
    let set = json_list(keys, "a key set", push_json)?;
    let sql = format!("{sql_prefix} ({})", json_set(conn, leading.len() + 1, integers));
    let mut binds = leading.to_vec();
    binds.push(t(set));
    conn.execute(sql, binds).await?;
    Ok(())
}

fn sorted_unique(items: impl IntoIterator<Item = String>) -> Vec<String> {
    items.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

/// A person as known in this batch.
#[derive(Clone, Debug)]
struct Person {
    name: Option<String>,
    name_source: Option<String>,
    /// Not in the database yet.
    new: bool,
    /// Name changed: to be written.
    renamed: bool,
}

/// Where the current fact for (person, source, field) is.
#[derive(Clone, Debug)]
struct Current {
    effective: Option<NaiveDate>,
    recorded_at: String,
    offset: i64,
    /// Row id when in the database, else the index in `new_facts`.
    db_id: Option<i64>,
    new_index: Option<usize>,
}

#[derive(Clone, Debug)]
struct NewFact {
    event: usize,
    id_number: String,
    fact: PersonFact,
    state: &'static str,
}

#[derive(Clone, Debug)]
struct HouseholdRow {
    region: String,
    as_of: NaiveDate,
    /// The registration's own fields, as stored (JSON text).
    base: String,
    version: i64,
    /// The summary of decision `version` (`households.decision_summary`), compared with the next
    /// decision's; `None` before the first decision, or for a row written before the column was.
    summary: Option<Summary>,
    /// Assessed no earlier than this date (set by a policy change or a calendar review).
    reevaluated_on: Option<NaiveDate>,
    /// When the next periodic review is due.
    next_review_on: Option<NaiveDate>,
    dirty: Dirty,
}

/// What of a household row is to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dirty {
    Clean,
    /// Only its decision version, date floor or next review (an existing row).
    Decision,
    /// The whole row (new, or registered again).
    Record,
}

impl HouseholdRow {
    fn touch(&mut self) {
        self.dirty = self.dirty.max(Dirty::Decision);
    }
}

#[derive(Clone, Debug)]
struct MemberRow {
    db_id: Option<i64>,
    household_id: String,
    id_number: String,
    relation: String,
    record: Value,
    valid_from: String,
    valid_to: Option<String>,
    ce_id: String,
}

/// A review task and its outbox row, waiting to be written.
#[derive(Clone, Debug)]
struct NewTask {
    task_id: String,
    kind: String,
    id_number: Option<String>,
    household_id: Option<String>,
    region: String,
    created_on: NaiveDate,
    rule: Option<String>,
    detail: String,
}

/// Everything a batch reads and writes, in memory until it is flushed.
#[derive(Default)]
struct Batch {
    seen: BTreeSet<String>,
    persons: BTreeMap<String, Person>,
    current: BTreeMap<(String, &'static str, String), Current>,
    new_facts: Vec<NewFact>,
    superseded: Vec<i64>,
    households: BTreeMap<String, HouseholdRow>,
    /// Every membership row touched or loaded: current ones have `valid_to == None`.
    members: Vec<MemberRow>,
    /// Current household of each person (index into `members`).
    membership: BTreeMap<String, usize>,
    open_conflicts: BTreeSet<String>,
    tasks: Vec<NewTask>,
    outbox: Vec<Vec<Bind>>,
    /// Delivery rows of the entitlement events in `outbox`.
    deliveries: Vec<Vec<Bind>>,
    processed: Vec<Vec<Bind>>,
    /// Household → (triggering ce_id, its source time).
    affected: BTreeMap<String, (String, String)>,
    /// Set when the households re-evaluated are (nearly) every household of an id range: their
    /// rows are then read by that range.
    span: Option<Span>,
}

/// A range of household ids, first and last inclusive, holding the households of a re-evaluation
/// chunk and at most as many others. The range compares bytes (`COLLATE "C"`, the collation of every
/// `household_id` column since migration 0006): the order of Rust's strings, in which the chunk's
/// ids are sorted. A chunk of a policy change is usually every household of its
/// range (ids sort by region), so its rows are read with one range scan of each index instead of
/// an index descent per household; rows of other households in the range are dropped as read.
///
/// `exact`: when the chunk's household rows were read, the range held the chunk's households and no
/// other. The chunk's other reads then keep every row without looking its household up among the
/// chunk's ids (a binary search per row of members, facts and entitlements: 6 % of doudi's CPU in a
/// policy change, BENCHMARKS.md). A household inserted into the range by another transaction after
/// that read could still bring rows in; they are ignored, as every row read is used through the
/// chunk's ids (`state.remove(id)`, `in_force.remove(id)`, `open_tasks.remove(id)`).
#[derive(Clone, Debug)]
struct Span {
    first: String,
    last: String,
    exact: bool,
}

/// Rows of `sql_prefix (keys) sql_suffix` as [`select_in`], read by `span` on PostgreSQL when
/// given and `keys` are sorted and inside it (otherwise by the keys). The rows must have a
/// `household_id` column; rows of other households of the range are dropped, unless the range
/// held only the chunk's households when they were read (`Span::exact`).
async fn select_households(
    conn: &mut Conn<'_>,
    span: Option<&Span>,
    sql_prefix: &str,
    sql_suffix: &str,
    keys: &[String],
) -> Result<Vec<Record>, ApplyError> {
    if let Some(span) = span
        && let Conn::Pg(c) = conn
        && let Some(column) = sql_prefix.strip_suffix(" IN")
        && keys.is_sorted()
        && keys.first().is_some_and(|k| *k >= span.first)
        && keys.last().is_some_and(|k| *k <= span.last)
    {
        let mut out = Vec::new();
        for r in rows_in_span(c, column, span, sql_suffix).await? {
            if span.exact || among(keys, r.try_get("household_id")?) {
                out.push(Record::Pg(r));
            }
        }
        return Ok(out);
    }
    select_in(conn, sql_prefix, sql_suffix, keys).await
}

/// Rows of `{sql_prefix} BETWEEN first AND last {sql_suffix}`, the prefix ending in the compared
/// column, in byte order ([`Span`]). Planned at each execution, as the key sets in [`select_in`].
async fn rows_in_span(
    c: &mut sqlx::PgConnection,
    sql_prefix: &str,
    span: &Span,
    sql_suffix: &str,
) -> Result<Vec<sqlx::postgres::PgRow>, ApplyError> {
    let sql = format!("{sql_prefix} BETWEEN ($1 COLLATE \"C\") AND ($2 COLLATE \"C\") {sql_suffix}");
    Ok(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&span.first).bind(&span.last).persistent(false).fetch_all(c).await?)
}

/// Whether `id` is one of the sorted `keys`.
fn among(keys: &[String], id: &str) -> bool {
    keys.binary_search_by(|k| k.as_str().cmp(id)).is_ok()
}

/// Applies `events` in order, then re-evaluates every household they touched. Reads are a few
/// statements for the whole batch; writes are multi-row statements.
pub async fn apply_batch(conn: &mut Conn<'_>, ctx: &Context, events: &[Inbound]) -> Result<BatchOutcome, ApplyError> {
    let mut outcome = BatchOutcome::default();
    let mut b = Batch::default();
    let extracted: Vec<Result<Extracted, super::facts::FactError>> =
        events.iter().map(|e| extract(e.feed, &e.payload, ctx.today)).collect();
    load_for_events(conn, &mut b, events, &extracted).await?;
    for (i, (event, x)) in events.iter().zip(&extracted).enumerate() {
        outcome.events += 1;
        if b.seen.contains(&event.ce_id) {
            outcome.duplicates += 1;
            continue;
        }
        b.seen.insert(event.ce_id.clone());
        let result = match x {
            Err(e) => {
                tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset, field = %e.field,
                    "An inbound event could not be used and was recorded as invalid: {}", e.message);
                outcome.invalid += 1;
                "invalid"
            }
            Ok(Extracted::Household(record)) => apply_household(&mut b, ctx, i, event, record, &mut outcome)?,
            Ok(Extracted::Person { id, name, facts }) => apply_person(&mut b, ctx, i, event, id, name.as_deref(), facts, &mut outcome)?,
        };
        b.processed.push(vec![
            t(&event.ce_id),
            t(&event.topic),
            Bind::Int(i64::from(event.partition)),
            Bind::Int(event.offset),
            t(result),
            t(now_rfc3339()),
        ]);
    }
    flush_events(conn, ctx, &mut b, events).await?;
    evaluate_households(conn, ctx, &mut b, &mut outcome).await?;
    flush_derived(conn, &mut b).await?;
    Ok(outcome)
}

/// One round of bulk reads: what the batch's events need to be applied.
async fn load_for_events(
    conn: &mut Conn<'_>,
    b: &mut Batch,
    events: &[Inbound],
    extracted: &[Result<Extracted, super::facts::FactError>],
) -> Result<(), ApplyError> {
    let ce_ids = sorted_unique(events.iter().map(|e| e.ce_id.clone()));
    for r in select_in(conn, "SELECT ce_id FROM processed_events WHERE ce_id IN", "", &ce_ids).await? {
        b.seen.insert(r.try_get("ce_id")?);
    }
    let mut ids = Vec::new();
    let mut household_ids = Vec::new();
    for x in extracted.iter().flatten() {
        match x {
            Extracted::Household(h) => {
                household_ids.push(h.household_id.clone());
                ids.extend(h.members.iter().map(|m| m.id.as_str().to_string()));
            }
            Extracted::Person { id, .. } => ids.push(id.as_str().to_string()),
        }
    }
    let ids = sorted_unique(ids);
    for r in select_in(conn, "SELECT id_number, name, name_source FROM persons WHERE id_number IN", "", &ids).await? {
        b.persons.insert(
            r.try_get("id_number")?,
            Person { name: r.try_get("name")?, name_source: r.try_get("name_source")?, new: false, renamed: false },
        );
    }
    for r in select_in(
        conn,
        "SELECT id, id_number, source, field, effective_date, recorded_at, kafka_offset FROM facts WHERE state = 'current' AND id_number IN",
        "",
        &ids,
    )
    .await?
    {
        let source: String = r.try_get("source")?;
        let Some(feed) = Feed::ALL.iter().find(|f| f.topic() == source) else { continue };
        b.current.insert(
            (r.try_get("id_number")?, feed.topic(), r.try_get("field")?),
            Current {
                effective: r.try_get::<Option<String>, _>("effective_date")?.as_deref().and_then(crate::dates::ymd),
                recorded_at: r.try_get("recorded_at")?,
                offset: r.try_get("kafka_offset")?,
                db_id: Some(r.try_get("id")?),
                new_index: None,
            },
        );
    }
    for r in
        select_in(conn, "SELECT id_number FROM review_tasks WHERE kind = 'identity_conflict' AND state = 'open' AND id_number IN", "", &ids)
            .await?
    {
        b.open_conflicts.insert(r.try_get("id_number")?);
    }
    // Current memberships of the batch's people, and every current member of the households involved.
    let mut households = household_ids;
    for r in select_in(conn, "SELECT household_id FROM household_members WHERE valid_to IS NULL AND id_number IN", "", &ids).await? {
        households.push(r.try_get("household_id")?);
    }
    let households = sorted_unique(households);
    load_households(conn, b, &households).await?;
    for r in select_in(
        conn,
        "SELECT id, household_id, id_number, relation, member, valid_from, ce_id FROM household_members WHERE valid_to IS NULL AND household_id IN",
        "ORDER BY id",
        &households,
    )
    .await?
    {
        let row = MemberRow {
            db_id: Some(r.try_get("id")?),
            household_id: r.try_get("household_id")?,
            id_number: r.try_get("id_number")?,
            relation: r.try_get("relation")?,
            record: serde_json::from_str(&r.try_get::<String, _>("member")?).unwrap_or_default(),
            valid_from: r.try_get("valid_from")?,
            valid_to: None,
            ce_id: r.try_get("ce_id")?,
        };
        b.membership.insert(row.id_number.clone(), b.members.len());
        b.members.push(row);
    }
    Ok(())
}

/// `households.decision_summary`: the summary of the decision it names. A row whose decision
/// version moved without it (written by an older doudi) is not trusted: the decision is read.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSummary<S> {
    version: i64,
    #[serde(flatten)]
    summary: S,
}

/// The columns of a household row the matcher reads.
const HOUSEHOLD_COLUMNS: &str = "household_id, region, as_of, base, decision_version, decision_summary, reevaluated_on, next_review_on";

/// Reads the stored rows of `household_ids` into the batch.
async fn load_households(conn: &mut Conn<'_>, b: &mut Batch, household_ids: &[String]) -> Result<(), ApplyError> {
    let sql = format!("SELECT {HOUSEHOLD_COLUMNS} FROM households WHERE household_id IN");
    for r in select_in(conn, &sql, "", household_ids).await? {
        let (id, row) = household_row(&r)?;
        b.households.insert(id, row);
    }
    Ok(())
}

/// As [`load_households`] for sorted `household_ids`; on PostgreSQL, when the range from the first
/// to the last holds at most twice as many households, they are read by that range and the range
/// is returned for the chunk's other reads ([`Span`]). At most that many rows are read to find out.
async fn load_households_by_range(conn: &mut Conn<'_>, b: &mut Batch, household_ids: &[String]) -> Result<Option<Span>, ApplyError> {
    if let Conn::Pg(c) = conn
        && let (Some(first), Some(last)) = (household_ids.first(), household_ids.last())
        && household_ids.is_sorted()
    {
        let mut span = Span { first: first.clone(), last: last.clone(), exact: false };
        let limit = 2 * household_ids.len();
        let select = format!("SELECT {HOUSEHOLD_COLUMNS} FROM households WHERE household_id");
        let rows = rows_in_span(c, &select, &span, &format!("ORDER BY household_id LIMIT {}", limit + 1)).await?;
        if rows.len() <= limit {
            let (read, mut kept) = (rows.len(), 0);
            for r in rows {
                let r = Record::Pg(r);
                let (id, row) = household_row(&r)?;
                if among(household_ids, &id) {
                    b.households.insert(id, row);
                    kept += 1;
                }
            }
            span.exact = kept == read;
            return Ok(Some(span));
        }
    }
    load_households(conn, b, household_ids).await?;
    Ok(None)
}

/// A household row read with [`HOUSEHOLD_COLUMNS`].
fn household_row(r: &Record) -> Result<(String, HouseholdRow), ApplyError> {
    let version: i64 = r.try_get("decision_version")?;
    Ok((
        r.try_get("household_id")?,
        HouseholdRow {
            region: r.try_get("region")?,
            as_of: crate::dates::ymd(&r.try_get::<String, _>("as_of")?).unwrap_or_default(),
            base: r.try_get("base")?,
            version,
            summary: r
                .try_get::<Option<&str>, _>("decision_summary")?
                .and_then(|s| serde_json::from_str::<StoredSummary<Summary>>(s).ok())
                .filter(|s| s.version == version)
                .map(|s| s.summary),
            reevaluated_on: r.try_get::<Option<String>, _>("reevaluated_on")?.as_deref().and_then(crate::dates::ymd),
            next_review_on: r.try_get::<Option<String>, _>("next_review_on")?.as_deref().and_then(crate::dates::ymd),
            dirty: Dirty::Clean,
        },
    ))
}

/// How a name compares with the registry.
enum Identity {
    Consistent,
    /// Civil affairs (the registry) gave a different name than a department did: the registry's name
    /// is kept, and a caseworker checks that the department's facts are about this person.
    RegistryCorrected,
    /// A department's name differs from the registered one: its facts are held.
    Conflict,
}

fn ensure_person(b: &mut Batch, id: &IdNumber, name: Option<&str>, topic: &str, registry: bool) -> Identity {
    let Some(person) = b.persons.get_mut(id.as_str()) else {
        b.persons.insert(
            id.as_str().to_string(),
            Person { name: name.map(str::to_string), name_source: name.map(|_| topic.to_string()), new: true, renamed: false },
        );
        return Identity::Consistent;
    };
    let Some(name) = name else { return Identity::Consistent };
    match person.name.as_deref() {
        None => {
            person.name = Some(name.to_string());
            person.name_source = Some(topic.to_string());
            person.renamed = true;
            Identity::Consistent
        }
        Some(k) if k == name => {
            if registry && person.name_source.as_deref() != Some(topic) {
                person.name_source = Some(topic.to_string());
                person.renamed = true;
            }
            Identity::Consistent
        }
        Some(_) if registry => {
            let from_registry = person.name_source.as_deref().is_some_and(|s| s.contains(Feed::Household.topic()));
            person.name = Some(name.to_string());
            person.name_source = Some(topic.to_string());
            person.renamed = true;
            if from_registry { Identity::Consistent } else { Identity::RegistryCorrected }
        }
        Some(_) => Identity::Conflict,
    }
}

fn current_household(b: &Batch, id_number: &str) -> Option<(String, String)> {
    let m = b.membership.get(id_number).map(|i| &b.members[*i])?;
    let region = b.households.get(&m.household_id).map(|h| h.region.clone()).unwrap_or_default();
    Some((m.household_id.clone(), region))
}

fn push_fact(b: &mut Batch, event: usize, id_number: &str, fact: &PersonFact, state: &'static str) -> usize {
    b.new_facts.push(NewFact { event, id_number: id_number.to_string(), fact: fact.clone(), state });
    b.new_facts.len() - 1
}

/// Makes a fact current unless the one held for the same person, source and field is newer.
fn apply_fact(b: &mut Batch, index: usize, event: &Inbound, id_number: &str, fact: &PersonFact) -> bool {
    let key = (id_number.to_string(), event.feed.topic(), fact.field.clone());
    if let Some(held) = b.current.get(&key) {
        let newer = match (fact.effective, held.effective) {
            (Some(new), Some(old)) if new != old => new > old,
            _ => (event.recorded_at.as_str(), event.offset) >= (held.recorded_at.as_str(), held.offset),
        };
        if !newer {
            push_fact(b, index, id_number, fact, "stale");
            return false;
        }
        match (held.db_id, held.new_index) {
            (Some(id), _) => b.superseded.push(id),
            (None, Some(i)) => b.new_facts[i].state = "superseded",
            _ => {}
        }
    }
    let i = push_fact(b, index, id_number, fact, "current");
    b.current.insert(
        key,
        Current {
            effective: fact.effective,
            recorded_at: event.recorded_at.clone(),
            offset: event.offset,
            db_id: None,
            new_index: Some(i),
        },
    );
    true
}

#[allow(clippy::too_many_arguments)]
fn apply_person(
    b: &mut Batch,
    ctx: &Context,
    index: usize,
    event: &Inbound,
    id: &IdNumber,
    name: Option<&str>,
    facts: &[PersonFact],
    outcome: &mut BatchOutcome,
) -> Result<&'static str, ApplyError> {
    let household = current_household(b, id.as_str());
    if let Identity::Conflict = ensure_person(b, id, name, &event.topic, false) {
        for fact in facts {
            push_fact(b, index, id.as_str(), fact, "held");
        }
        outcome.held += 1;
        let region = household.as_ref().map_or_else(|| id.division().to_string(), |h| h.1.clone());
        let on = facts
            .iter()
            .filter_map(|f| f.effective)
            .max()
            .or_else(|| event.recorded_at.get(..10).and_then(crate::dates::ymd))
            .unwrap_or(ctx.today);
        raise_identity_conflict(b, ctx, id, household.as_ref().map(|h| h.0.as_str()), &region, on, event, outcome)?;
        tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset,
            "A department's name for a person differs from the registry: the facts are held and a caseworker review task was raised.");
        return Ok("held");
    }
    let mut any = false;
    for fact in facts {
        if apply_fact(b, index, event, id.as_str(), fact) {
            any = true;
        } else {
            outcome.stale += 1;
        }
    }
    if !any {
        return Ok("stale");
    }
    outcome.applied += 1;
    if let Some((household_id, _)) = household {
        b.affected.entry(household_id).or_insert_with(|| (event.ce_id.clone(), event.recorded_at.clone()));
    }
    Ok("applied")
}

fn apply_household(
    b: &mut Batch,
    ctx: &Context,
    index: usize,
    event: &Inbound,
    record: &HouseholdRecord,
    outcome: &mut BatchOutcome,
) -> Result<&'static str, ApplyError> {
    let registration = |m: &super::facts::RegisteredMember| PersonFact {
        field: format!("registration:{}", record.household_id),
        value: json!({"household_id": record.household_id, "relation": m.relation}),
        effective: Some(record.as_of),
    };
    if b.households.get(&record.household_id).is_some_and(|h| record.as_of < h.as_of) {
        for m in &record.members {
            push_fact(b, index, m.id.as_str(), &registration(m), "stale");
        }
        outcome.stale += 1;
        return Ok("stale");
    }
    for m in &record.members {
        if let Identity::RegistryCorrected = ensure_person(b, &m.id, m.name.as_deref(), &event.topic, true) {
            raise_identity_conflict(b, ctx, &m.id, Some(&record.household_id), &record.region, record.as_of, event, outcome)?;
        }
    }
    let (version, summary, reevaluated_on, next_review_on) = b
        .households
        .get(&record.household_id)
        .map_or((0, None, None, None), |h| (h.version, h.summary.clone(), h.reevaluated_on, h.next_review_on));
    b.households.insert(
        record.household_id.clone(),
        HouseholdRow {
            region: record.region.clone(),
            as_of: record.as_of,
            base: record.base.to_string(),
            version,
            summary,
            reevaluated_on,
            next_review_on,
            dirty: Dirty::Record,
        },
    );
    let as_of = record.as_of.to_string();
    // Current members that stay exactly as they were keep their row; the others are closed.
    let mut kept = BTreeSet::new();
    for i in 0..b.members.len() {
        let row = &b.members[i];
        if row.household_id != record.household_id || row.valid_to.is_some() {
            continue;
        }
        let same = record.members.iter().any(|m| m.id.as_str() == row.id_number && m.relation == row.relation && m.record == row.record);
        if same {
            kept.insert(row.id_number.clone());
        } else {
            let id_number = row.id_number.clone();
            b.members[i].valid_to = Some(as_of.clone());
            if b.membership.get(&id_number) == Some(&i) {
                b.membership.remove(&id_number);
            }
        }
    }
    for m in &record.members {
        let fact = registration(m);
        apply_fact(b, index, event, m.id.as_str(), &fact);
        if kept.contains(m.id.as_str()) {
            continue;
        }
        // A person registered here leaves any other household they were in.
        if let Some(&i) = b.membership.get(m.id.as_str())
            && b.members[i].household_id != record.household_id
        {
            b.members[i].valid_to = Some(as_of.clone());
            let other = b.members[i].household_id.clone();
            b.affected.entry(other).or_insert_with(|| (event.ce_id.clone(), event.recorded_at.clone()));
        }
        b.membership.insert(m.id.as_str().to_string(), b.members.len());
        b.members.push(MemberRow {
            db_id: None,
            household_id: record.household_id.clone(),
            id_number: m.id.as_str().to_string(),
            relation: m.relation.clone(),
            record: m.record.clone(),
            valid_from: as_of.clone(),
            valid_to: None,
            ce_id: event.ce_id.clone(),
        });
    }
    outcome.applied += 1;
    b.affected.entry(record.household_id.clone()).or_insert_with(|| (event.ce_id.clone(), event.recorded_at.clone()));
    Ok("applied")
}

#[allow(clippy::too_many_arguments)]
fn raise_identity_conflict(
    b: &mut Batch,
    ctx: &Context,
    id: &IdNumber,
    household_id: Option<&str>,
    region: &str,
    on: NaiveDate,
    trigger: &Inbound,
    outcome: &mut BatchOutcome,
) -> Result<(), ApplyError> {
    if !b.open_conflicts.insert(id.as_str().to_string()) {
        return Ok(());
    }
    let identity = format!("identity_conflict/{}/{}", ctx.keys.key(id), trigger.ce_id);
    raise_task(b, ctx, "identity_conflict", Some(id), household_id, region, on, None, &identity, &trigger.recorded_at, outcome)
}

#[allow(clippy::too_many_arguments)]
fn raise_task(
    b: &mut Batch,
    ctx: &Context,
    kind: &str,
    person: Option<&IdNumber>,
    household_id: Option<&str>,
    region: &str,
    on: NaiveDate,
    rule: Option<&str>,
    identity: &str,
    source_time: &str,
    outcome: &mut BatchOutcome,
) -> Result<(), ApplyError> {
    let detail = task_detail(kind, &person.map(IdNumber::masked).unwrap_or_default());
    let mut payload = json!({"kind": kind, "region": region, "created_on": on, "detail": detail});
    if let Some(obj) = payload.as_object_mut() {
        if let Some(p) = person {
            obj.insert("id_number".into(), json!(p.as_str()));
        }
        if let Some(h) = household_id {
            obj.insert("household_id".into(), json!(h));
        }
        if let Some(r) = rule {
            obj.insert("rule".into(), json!(r));
        }
    }
    let key = person.map(|p| ctx.keys.key(p)).unwrap_or_default();
    let task_id = write_outbox(b, ctx, REVIEW_TOPIC, "task_id", &key, identity, payload, household_id, source_time)?;
    b.tasks.push(NewTask {
        task_id,
        kind: kind.to_string(),
        id_number: person.map(|p| p.as_str().to_string()),
        household_id: household_id.map(str::to_string),
        region: region.to_string(),
        created_on: on,
        rule: rule.map(str::to_string),
        detail,
    });
    outcome.review_tasks += 1;
    outcome.outbox += 1;
    metrics::counter!("doudi_matcher_review_tasks_total", "kind" => kind.to_string()).increment(1);
    Ok(())
}

/// Queues one outbox row: the payload gets its deterministic id under `id_field` and is checked
/// against the schema of `catalogue_topic`. Returns the id.
#[allow(clippy::too_many_arguments)]
fn write_outbox(
    b: &mut Batch,
    ctx: &Context,
    catalogue_topic: &str,
    id_field: &str,
    key: &str,
    identity: &str,
    mut payload: Value,
    household_id: Option<&str>,
    source_time: &str,
) -> Result<String, ApplyError> {
    let ce_id = event_id(MATCHER_SOURCE, identity, &payload);
    if let Some(obj) = payload.as_object_mut() {
        obj.insert(id_field.into(), json!(ce_id));
    }
    let schema = ctx
        .registry
        .for_topic(catalogue_topic)
        .map_err(|e| ApplyError::InvalidOutbound { topic: catalogue_topic.into(), reason: e.to_string() })?;
    if let Some(v) = schema.violations(&payload).first() {
        return Err(ApplyError::InvalidOutbound { topic: catalogue_topic.into(), reason: format!("{} at {}", v.message, v.pointer) });
    }
    if catalogue_topic.starts_with(ENTITLEMENT_TOPIC_PREFIX) {
        let field = |name: &str| payload.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        let now = chrono::Utc::now();
        let at = crate::db::rfc3339(now);
        b.deliveries.push(vec![
            t(&ce_id),
            t(field("agency")),
            t(field("kind")),
            t(field("change")),
            t(field("household_id")),
            t(field("id_number")),
            ot(payload.get("yearly_amount").and_then(Value::as_str)),
            t(field("effective_date")),
            t(&at),
            t(crate::db::china_date(now).to_string()),
            t("pending"),
            t(&at),
        ]);
    }
    b.outbox.push(vec![
        t(ctx.outbound.actual(catalogue_topic)),
        t(key),
        t(&ce_id),
        t(event_type(catalogue_topic)),
        t(&schema.id),
        t(payload.to_string()),
        ot(household_id),
        t(source_time),
        t(now_rfc3339()),
    ]);
    Ok(ce_id)
}

/// Writes what the events changed: persons, facts, households and memberships.
async fn flush_events(conn: &mut Conn<'_>, ctx: &Context, b: &mut Batch, events: &[Inbound]) -> Result<(), ApplyError> {
    let now = now_rfc3339();
    let mut new_persons = Vec::new();
    for (id_number, p) in &b.persons {
        if p.new {
            let Ok(id) = IdNumber::parse(id_number) else { continue };
            new_persons.push(vec![
                t(id_number),
                t(ctx.keys.key(&id)),
                ot(p.name.clone()),
                ot(p.name_source.clone()),
                t(id.birth_date().to_string()),
                t(match id.sex() {
                    crate::idnum::Sex::Male => "male",
                    crate::idnum::Sex::Female => "female",
                }),
                t(&now),
            ]);
        } else if p.renamed {
            conn.execute(
                "UPDATE persons SET name = $1, name_source = $2 WHERE id_number = $3".into(),
                vec![ot(p.name.clone()), ot(p.name_source.clone()), t(id_number)],
            )
            .await?;
        }
    }
    insert_rows(
        conn,
        "persons",
        &["id_number", "person_key", "name", "name_source", "birth_date", "sex", "first_seen_at"],
        new_persons,
        "",
    )
    .await?;
    execute_in(
        conn,
        "UPDATE facts SET state = 'superseded' WHERE id IN",
        &[],
        &b.superseded.iter().map(|i| Bind::Int(*i)).collect::<Vec<_>>(),
    )
    .await?;
    let facts: Vec<Vec<Bind>> = b
        .new_facts
        .iter()
        .map(|f| {
            let e = &events[f.event];
            vec![
                t(&f.id_number),
                t(e.feed.topic()),
                t(&f.fact.field),
                t(f.fact.value.to_string()),
                ot(f.fact.effective.map(|d| d.to_string())),
                t(&e.recorded_at),
                t(f.state),
                t(&e.topic),
                Bind::Int(i64::from(e.partition)),
                Bind::Int(e.offset),
                t(&e.ce_id),
                ot(e.source_file.clone()),
                ot(e.source_row.clone()),
                t(&now),
            ]
        })
        .collect();
    insert_rows(
        conn,
        "facts",
        &[
            "id_number",
            "source",
            "field",
            "value",
            "effective_date",
            "recorded_at",
            "state",
            "topic",
            "kafka_partition",
            "kafka_offset",
            "ce_id",
            "source_file",
            "source_row",
            "applied_at",
        ],
        facts,
        "",
    )
    .await?;
    flush_households(conn, b).await?;
    let mut closes: BTreeMap<String, Vec<Bind>> = BTreeMap::new();
    let mut inserts = Vec::new();
    for m in &b.members {
        match (m.db_id, &m.valid_to) {
            (Some(id), Some(to)) => closes.entry(to.clone()).or_default().push(Bind::Int(id)),
            (Some(_), None) => {}
            (None, to) => inserts.push(vec![
                t(&m.household_id),
                t(&m.id_number),
                t(&m.relation),
                t(m.record.to_string()),
                t(&m.valid_from),
                ot(to.clone()),
                t(&m.ce_id),
            ]),
        }
    }
    for (to, ids) in &closes {
        execute_in(conn, "UPDATE household_members SET valid_to = $1 WHERE id IN", &[t(to)], ids).await?;
    }
    insert_rows(
        conn,
        "household_members",
        &["household_id", "id_number", "relation", "member", "valid_from", "valid_to", "ce_id"],
        inserts,
        "",
    )
    .await?;
    b.persons.values_mut().for_each(|p| {
        p.new = false;
        p.renamed = false;
    });
    Ok(())
}

async fn flush_households(conn: &mut Conn<'_>, b: &mut Batch) -> Result<(), ApplyError> {
    let now = now_rfc3339();
    // On PostgreSQL an existing row whose decision alone moved is updated in those columns only
    // (a re-evaluation touches every household of a region); elsewhere every dirty row is upserted.
    let narrow = conn.is_postgres();
    let mut whole = Vec::new();
    let mut decided = Vec::new();
    for (id, h) in &b.households {
        let decision = || {
            [
                Bind::Int(h.version),
                ot(h.summary.as_ref().and_then(|summary| serde_json::to_string(&StoredSummary { version: h.version, summary }).ok())),
                ot(h.reevaluated_on.map(|d| d.to_string())),
                ot(h.next_review_on.map(|d| d.to_string())),
                t(&now),
            ]
        };
        match h.dirty {
            Dirty::Clean => {}
            Dirty::Decision if narrow => decided.push([t(id)].into_iter().chain(decision()).collect()),
            _ => whole.push([t(id), t(&h.region), t(h.as_of.to_string()), t(&h.base)].into_iter().chain(decision()).collect()),
        }
    }
    insert_rows(
        conn,
        "households",
        &[
            "household_id",
            "region",
            "as_of",
            "base",
            "decision_version",
            "decision_summary",
            "reevaluated_on",
            "next_review_on",
            "updated_at",
        ],
        whole,
        "ON CONFLICT (household_id) DO UPDATE SET region = excluded.region, as_of = excluded.as_of, base = excluded.base, \
         decision_version = excluded.decision_version, decision_summary = excluded.decision_summary, \
         reevaluated_on = excluded.reevaluated_on, next_review_on = excluded.next_review_on, updated_at = excluded.updated_at",
    )
    .await?;
    execute_values(conn, 6, decided, |values| {
        format!(
            "UPDATE households h SET decision_version = r.decision_version, decision_summary = r.decision_summary, \
             reevaluated_on = r.reevaluated_on, next_review_on = r.next_review_on, updated_at = r.updated_at \
             FROM ({values}) AS r (household_id, decision_version, decision_summary, reevaluated_on, next_review_on, updated_at) \
             WHERE h.household_id = r.household_id"
        )
    })
    .await?;
    b.households.values_mut().for_each(|h| h.dirty = Dirty::Clean);
    Ok(())
}

/// Writes decisions' consequences: households' versions, review tasks, the outbox and the
/// processed ids.
async fn flush_derived(conn: &mut Conn<'_>, b: &mut Batch) -> Result<(), ApplyError> {
    flush_households(conn, b).await?;
    let now = now_rfc3339();
    let tasks: Vec<Vec<Bind>> = b
        .tasks
        .iter()
        .map(|k| {
            vec![
                t(&k.task_id),
                t(&k.kind),
                ot(k.id_number.clone()),
                ot(k.household_id.clone()),
                t(&k.region),
                t(k.created_on.to_string()),
                ot(k.rule.clone()),
                t(&k.detail),
                t("open"),
                t(&now),
            ]
        })
        .collect();
    insert_rows(
        conn,
        "review_tasks",
        &["task_id", "kind", "id_number", "household_id", "region", "created_on", "rule", "detail", "state", "created_at"],
        tasks,
        "ON CONFLICT (task_id) DO NOTHING",
    )
    .await?;
    insert_rows(
        conn,
        "outbox",
        &["topic", "message_key", "ce_id", "ce_type", "dataschema", "payload", "household_id", "source_time", "created_at"],
        std::mem::take(&mut b.outbox),
        // PostgreSQL checks an event id beside its household (migration 0007), SQLite on its own.
        if conn.is_postgres() { "ON CONFLICT (household_id, ce_id) DO NOTHING" } else { "ON CONFLICT (ce_id) DO NOTHING" },
    )
    .await?;
    insert_rows(
        conn,
        "deliveries",
        &[
            "ce_id",
            "agency",
            "kind",
            "change",
            "household_id",
            "id_number",
            "amount",
            "effective_date",
            "created_at",
            "created_on",
            "state",
            "updated_at",
        ],
        std::mem::take(&mut b.deliveries),
        "ON CONFLICT (ce_id) DO NOTHING",
    )
    .await?;
    insert_rows(
        conn,
        "processed_events",
        &["ce_id", "topic", "kafka_partition", "kafka_offset", "outcome", "processed_at"],
        std::mem::take(&mut b.processed),
        "",
    )
    .await?;
    Ok(())
}

/// The current members of a household and their current facts (registrations left out), in a
/// stable order.
pub async fn household_state(conn: &mut Conn<'_>, household_id: &str) -> Result<(Vec<StoredMember>, Vec<StoredFact>), ApplyError> {
    let mut state = households_state(conn, None, &[household_id.to_string()]).await?;
    Ok(state.remove(household_id).unwrap_or_default())
}

/// Current members and their current facts of each household.
type HouseholdStates = BTreeMap<String, (Vec<StoredMember>, Vec<StoredFact>)>;

/// As [`household_state`], for many households in one statement.
async fn households_state(conn: &mut Conn<'_>, span: Option<&Span>, household_ids: &[String]) -> Result<HouseholdStates, ApplyError> {
    let mut out: HouseholdStates = BTreeMap::new();
    // One row per current member and current fact (registrations left out), or per member without
    // facts: the memberships are read once for both.
    //
    // On PostgreSQL the facts are looked up member by member (a lateral subquery the planner may
    // not flatten, `OFFSET 0`). As a plain join the plan depended on the estimated number of
    // members: above about 3,000 for a chunk of 1,000 households it hashed the members and read
    // every current fact of the database (120,000 at 120,000 households, 150 ms instead of 10).
    let facts = if conn.is_postgres() {
        "LEFT JOIN LATERAL (SELECT f.id, f.field, f.value, f.effective_date FROM facts f \
         WHERE f.id_number = m.id_number AND f.state = 'current' AND f.field NOT LIKE 'registration:%' OFFSET 0) f ON true"
    } else {
        "LEFT JOIN facts f ON f.id_number = m.id_number AND f.state = 'current' AND f.field NOT LIKE 'registration:%'"
    };
    let sql = format!(
        "SELECT m.id AS membership, m.household_id, m.id_number, m.member, f.field, f.value, f.effective_date \
         FROM household_members m {facts} WHERE m.valid_to IS NULL AND m.household_id IN"
    );
    let mut last_membership = None;
    for r in select_households(conn, span, &sql, "ORDER BY m.id, f.field, f.id", household_ids).await? {
        let membership: i64 = r.try_get("membership")?;
        let household_id: String = r.try_get("household_id")?;
        let id_number: String = r.try_get("id_number")?;
        let state = out.entry(household_id).or_default();
        if last_membership != Some(membership) {
            last_membership = Some(membership);
            state.0.push(StoredMember { id_number: id_number.clone(), record: r.try_get("member")? });
        }
        if let Some(field) = r.try_get::<Option<String>, _>("field")? {
            state.1.push(StoredFact {
                id_number,
                field,
                value: serde_json::from_str(r.try_get::<Option<&str>, _>("value")?.unwrap_or("null")).unwrap_or_default(),
                effective: r.try_get::<Option<String>, _>("effective_date")?.as_deref().and_then(crate::dates::ymd),
            });
        }
    }
    // Facts by person and field, each field's in id order (the sort is stable).
    for (_, facts) in out.values_mut() {
        facts.sort_by(|a, b| (&a.id_number, &a.field).cmp(&(&b.id_number, &b.field)));
    }
    Ok(out)
}

/// New attributes, rules, end date and ending version of entitlement rows.
type UpdateContent = (String, String, Option<String>, Option<i64>);

/// An entitlement change of a household's new decision, to be written to the outbox once the
/// names of the people concerned are read.
struct EntitlementEvent {
    change: Change,
    entitlement: EntitlementRow,
    household_id: String,
    region: String,
    date: NaiveDate,
    /// The decision version that made the change.
    version: i64,
    source_time: String,
}

/// A changed or ended entitlement, rewritten by id.
struct EntitlementUpdate {
    id: i64,
    attributes: String,
    rules: String,
    /// The end date and the decision version that ended it.
    ended: Option<(String, i64)>,
}

/// Re-assesses every affected household on its current facts and queues what changed.
async fn evaluate_households(conn: &mut Conn<'_>, ctx: &Context, b: &mut Batch, outcome: &mut BatchOutcome) -> Result<(), ApplyError> {
    let affected: Vec<String> = b.affected.keys().cloned().collect();
    if affected.is_empty() {
        return Ok(());
    }
    // Households not loaded yet (a person moved out of them) come in too.
    let missing: Vec<String> = affected.iter().filter(|h| !b.households.contains_key(*h)).cloned().collect();
    load_households(conn, b, &missing).await?;
    let mut state = households_state(conn, b.span.as_ref(), &affected).await?;
    // Each household's current decision summary is on its row; a row decided before the column
    // existed has its summary read from the decision, by (household, version).
    let unsummarised: Vec<(&str, i64)> = affected
        .iter()
        .filter_map(|h| b.households.get(h).filter(|row| row.version > 0 && row.summary.is_none()).map(|row| (h.as_str(), row.version)))
        .collect();
    let mut summaries: BTreeMap<(String, i64), Summary> = BTreeMap::new();
    let decided = if unsummarised.is_empty() {
        Vec::new()
    } else {
        let sql = format!(
            "SELECT d.household_id, d.version, d.category, d.basis, d.size, d.per_capita_income, d.monthly_payment, d.policy_version, d.rules \
             FROM decisions d WHERE (d.household_id, d.version) IN ({})",
            json_pairs(conn)
        );
        conn.fetch(sql, vec![t(serde_json::to_string(&unsummarised).unwrap_or_else(|_| "[]".into()))]).await?
    };
    for r in decided {
        summaries.insert(
            (r.try_get("household_id")?, r.try_get("version")?),
            Summary {
                category: r.try_get("category")?,
                basis: r.try_get("basis")?,
                size: r.try_get("size")?,
                per_capita_income: r.try_get("per_capita_income")?,
                monthly_payment: r.try_get("monthly_payment")?,
                policy_version: r.try_get("policy_version")?,
                rules: r.try_get("rules")?,
            },
        );
    }
    let mut in_force: BTreeMap<String, Vec<(i64, EntitlementRow)>> = BTreeMap::new();
    for r in select_households(
        conn,
        b.span.as_ref(),
        "SELECT id, household_id, agency, kind, id_number, attributes, rules FROM entitlements WHERE ended_on IS NULL AND household_id IN",
        "ORDER BY id",
        &affected,
    )
    .await?
    {
        in_force.entry(r.try_get("household_id")?).or_default().push((
            r.try_get("id")?,
            EntitlementRow {
                agency: r.try_get("agency")?,
                kind: r.try_get("kind")?,
                id_number: r.try_get("id_number")?,
                attributes: serde_json::from_str(&r.try_get::<String, _>("attributes")?).unwrap_or_default(),
                rules: serde_json::from_str(&r.try_get::<String, _>("rules")?).unwrap_or_default(),
            },
        ));
    }
    let mut open_tasks: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for r in select_households(
        conn,
        b.span.as_ref(),
        "SELECT household_id, kind, id_number FROM review_tasks WHERE state = 'open' AND kind NOT IN ('identity_conflict', 'periodic_review_due') AND household_id IN",
        "",
        &affected,
    )
    .await?
    {
        open_tasks
            .entry(r.try_get("household_id")?)
            .or_default()
            .insert((r.try_get::<String, _>("kind")?, r.try_get::<Option<String>, _>("id_number")?.unwrap_or_default()));
    }
    let mut decisions = Vec::new();
    // Entitlement events wait for the names of their people, read once after the loop: only the
    // people an event names are looked up, not every member of every household.
    let mut entitlement_events: Vec<EntitlementEvent> = Vec::new();
    let mut grants = Vec::new();
    let mut updates: Vec<EntitlementUpdate> = Vec::new();
    let mut cleared: Vec<(String, String, String)> = Vec::new();
    let mut problems = Vec::new();
    let mut solved = Vec::new();
    let now = now_rfc3339();
    for household_id in &affected {
        outcome.households_evaluated += 1;
        // The stored row's small fields; its registration (`base`) is read in place below.
        let Some(stored) = b.households.get(household_id) else { continue };
        let (region, as_of, version, reevaluated_on) = (stored.region.clone(), stored.as_of, stored.version, stored.reevaluated_on);
        let (trigger, source_time) = b.affected.get(household_id).cloned().unwrap_or_default();
        let (members, facts) = state.remove(household_id).unwrap_or_default();
        let old_summary: Option<Summary> = stored.summary.clone().or_else(|| summaries.remove(&(household_id.clone(), version)));
        let (summary, date, new_entitlements, raised_tasks, decision_json, members_status, head) = if members.is_empty() {
            let empty = String::from(r#"{"members":[]}"#);
            (Summary::empty(&ctx.params.policy.version), as_of, Vec::new(), Vec::new(), empty, json!([]), None)
        } else {
            let floor = reevaluated_on.map_or(as_of, |d| d.max(as_of));
            let assessed = assemble(household_id, &region, floor, &stored.base, &members, &facts)
                .and_then(|a| a.household.validate(a.date, &ctx.params.policy.province).map(|c| (c, a.date)))
                .map_err(|e| e.to_string())
                .and_then(|(c, date)| crate::policy::assess(&ctx.params, &c, date).map(|d| (c, d, date)).map_err(|e| e.to_string()));
            let (checked, mut decision, date) = match assessed {
                Ok(x) => x,
                Err(problem) => {
                    tracing::warn!(trigger_event = %trigger, "A household could not be assessed; its current decision stands until its facts are corrected: {problem}");
                    problems.push((household_id.clone(), problem, trigger.clone()));
                    outcome.assessment_problems += 1;
                    continue;
                }
            };
            solved.push(t(household_id));
            let entitlements = entitlements_of(&decision, &checked);
            let tasks: Vec<(String, String, String)> =
                decision.review_tasks.iter().map(|t| (t.kind.to_string(), t.person.as_str().to_string(), t.rule.to_string())).collect();
            let members_status: Vec<Value> =
                decision.members.iter().map(|m| json!({"id_number": m.person.as_str(), "status": m.status.as_str()})).collect();
            let head = checked.ids[checked.head].clone();
            // Stored without its explanation (recomputed when shown), written straight to text.
            decision.explanation.clear();
            let json = serde_json::to_string(&decision).unwrap_or_default();
            (Summary::of(&decision), date, entitlements, tasks, json, Value::Array(members_status), Some(head))
        };
        let before_rows = in_force.remove(household_id).unwrap_or_default();
        let before: Vec<EntitlementRow> = before_rows.iter().map(|r| r.1.clone()).collect();
        let changes = diff(&before, &new_entitlements);
        let open = open_tasks.remove(household_id).unwrap_or_default();
        let raised: BTreeSet<(String, String)> = raised_tasks.iter().map(|(k, p, _)| (k.clone(), p.clone())).collect();
        let new_tasks: Vec<_> = raised_tasks.iter().filter(|(k, p, _)| !open.contains(&(k.clone(), p.clone()))).cloned().collect();
        let gone: Vec<_> = open.difference(&raised).cloned().collect();

        let summary_changed = old_summary.as_ref() != Some(&summary);
        if !summary_changed && changes.is_empty() && new_tasks.is_empty() && gone.is_empty() {
            continue;
        }
        let new_version = version + 1;
        outcome.decisions += 1;
        decisions.push(vec![
            t(household_id),
            Bind::Int(new_version),
            t(date.to_string()),
            t(&summary.category),
            ot(summary.basis.clone()),
            Bind::Int(summary.size),
            t(&summary.per_capita_income),
            t(&summary.monthly_payment),
            t(&summary.policy_version),
            t(&summary.rules),
            t(decision_json),
            t(&trigger),
            t(&now),
        ]);
        if let Some(h) = b.households.get_mut(household_id) {
            h.version = new_version;
            h.summary = Some(summary.clone());
            h.touch();
        }
        let status_moved = match &old_summary {
            Some(o) => o.category != summary.category || o.monthly_payment != summary.monthly_payment,
            None => summary.category != "none",
        };
        if status_moved {
            let key = head.as_ref().map(|h| ctx.keys.key(h)).unwrap_or_default();
            let payload = status_payload(household_id, &region, date, &summary, old_summary.as_ref(), members_status);
            write_outbox(
                b,
                ctx,
                STATUS_TOPIC,
                "event_id",
                &key,
                &format!("{household_id}/v{new_version}/status"),
                payload,
                Some(household_id),
                &source_time,
            )?;
            outcome.outbox += 1;
        }
        for (change, e) in &changes {
            let existing = before_rows.iter().find(|r| r.1.key() == e.key());
            match (change, existing) {
                (Change::Granted, _) => grants.push(vec![
                    t(household_id),
                    t(&e.agency),
                    t(&e.kind),
                    t(&e.id_number),
                    t(e.attributes.to_string()),
                    t(json!(e.rules).to_string()),
                    t(date.to_string()),
                    Bind::Int(new_version),
                ]),
                (Change::Changed, Some((id, ..))) => updates.push(EntitlementUpdate {
                    id: *id,
                    attributes: e.attributes.to_string(),
                    rules: json!(e.rules).to_string(),
                    ended: None,
                }),
                (Change::Ended, Some((id, old, ..))) => updates.push(EntitlementUpdate {
                    id: *id,
                    attributes: old.attributes.to_string(),
                    rules: json!(old.rules).to_string(),
                    ended: Some((date.to_string(), new_version)),
                }),
                _ => {}
            }
            entitlement_events.push(EntitlementEvent {
                change: *change,
                entitlement: e.clone(),
                household_id: household_id.clone(),
                region: region.clone(),
                date,
                version: new_version,
                source_time: source_time.clone(),
            });
        }
        for (kind, person, rule) in &new_tasks {
            let id = IdNumber::parse(person).ok();
            let identity =
                format!("{household_id}/v{new_version}/task/{kind}/{}", id.as_ref().map(|p| ctx.keys.key(p)).unwrap_or_default());
            raise_task(b, ctx, kind, id.as_ref(), Some(household_id), &region, date, Some(rule), &identity, &source_time, outcome)?;
        }
        for (kind, person) in gone {
            cleared.push((household_id.clone(), kind, person));
        }
    }
    let mut names = BTreeMap::new();
    let named = sorted_unique(entitlement_events.iter().map(|x| x.entitlement.id_number.clone()));
    for r in select_in(conn, "SELECT id_number, name FROM persons WHERE id_number IN", "", &named).await? {
        if let Some(name) = r.try_get::<Option<String>, _>("name")? {
            names.insert(r.try_get::<String, _>("id_number")?, name);
        }
    }
    for x in entitlement_events {
        let e = &x.entitlement;
        let person = IdNumber::parse(&e.id_number).ok();
        let key = person.as_ref().map(|p| ctx.keys.key(p)).unwrap_or_default();
        let payload = entitlement_payload(x.change, e, names.get(&e.id_number).map(String::as_str), &x.household_id, &x.region, x.date);
        let identity = format!("{}/v{}/{}/{}/{key}", x.household_id, x.version, e.agency, e.kind);
        write_outbox(b, ctx, &agency_topic(&e.agency), "event_id", &key, &identity, payload, Some(&x.household_id), &x.source_time)?;
        outcome.outbox += 1;
        metrics::counter!("doudi_matcher_entitlement_changes_total", "agency" => e.agency.clone(), "change" => x.change.as_str())
            .increment(1);
    }
    insert_rows(
        conn,
        "decisions",
        &[
            "household_id",
            "version",
            "effective_date",
            "category",
            "basis",
            "size",
            "per_capita_income",
            "monthly_payment",
            "policy_version",
            "rules",
            "decision",
            "trigger_ce_id",
            "decided_at",
        ],
        decisions,
        "",
    )
    .await?;
    insert_rows(
        conn,
        "entitlements",
        &["household_id", "agency", "kind", "id_number", "attributes", "rules", "granted_on", "granted_version"],
        grants,
        "",
    )
    .await?;
    // Changed and ended rows are rewritten by id, one statement per distinct new content.
    let mut grouped: BTreeMap<UpdateContent, Vec<Bind>> = BTreeMap::new();
    for u in updates {
        let (ended_on, ended_version) = match u.ended {
            Some((on, version)) => (Some(on), Some(version)),
            None => (None, None),
        };
        grouped.entry((u.attributes, u.rules, ended_on, ended_version)).or_default().push(Bind::Int(u.id));
    }
    for ((attributes, rules, ended_on, ended_version), ids) in grouped {
        let version = Bind::OptInt(ended_version);
        execute_in(
            conn,
            "UPDATE entitlements SET attributes = $1, rules = $2, ended_on = $3, ended_version = $4 WHERE id IN",
            &[t(attributes), t(rules), ot(ended_on), version],
            &ids,
        )
        .await?;
    }
    for (household_id, kind, person) in &cleared {
        conn.execute(
            "UPDATE review_tasks SET state = 'cleared' WHERE household_id = $1 AND kind = $2 AND id_number = $3 AND state = 'open'".into(),
            vec![t(household_id), t(kind), t(person)],
        )
        .await?;
    }
    execute_in(conn, "DELETE FROM assessment_problems WHERE household_id IN", &[], &solved).await?;
    for (household_id, problem, trigger) in problems {
        conn.execute(
            "INSERT INTO assessment_problems (household_id, problem, ce_id, recorded_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (household_id) DO UPDATE SET problem = excluded.problem, ce_id = excluded.ce_id, recorded_at = excluded.recorded_at"
                .into(),
            vec![t(household_id), t(problem), t(trigger), t(&now)],
        )
        .await?;
    }
    Ok(())
}

/// A periodic review falling due: the task is raised for the head and the next review scheduled.
#[derive(Clone, Debug)]
pub struct ReviewDue {
    pub next_review_on: NaiveDate,
}

/// Re-evaluates `household_ids` without an inbound event (a policy change, the calendar), as of
/// no earlier than `on`, writing what changed exactly as an inbound event would: decisions,
/// entitlements, review tasks, outbox rows and deliveries. From then on each household is assessed
/// no earlier than `on`. `trigger` names the cause in `decisions.trigger_ce_id` and in the
/// outbound events' identities, so that running it twice derives the same `ce_id`s. Households in
/// `reviews` also get a `periodic_review_due` task and their next review date. `by_range`: the
/// households are likely every household between the first and the last (sorted ids of a policy
/// change), so their rows may be read by that range ([`Span`]).
pub async fn reevaluate(
    conn: &mut Conn<'_>,
    ctx: &Context,
    household_ids: &[String],
    on: Option<NaiveDate>,
    trigger: &str,
    reviews: &BTreeMap<String, ReviewDue>,
    by_range: bool,
) -> Result<BatchOutcome, ApplyError> {
    let mut outcome = BatchOutcome::default();
    let mut b = Batch::default();
    if by_range {
        b.span = load_households_by_range(conn, &mut b, household_ids).await?;
    } else {
        load_households(conn, &mut b, household_ids).await?;
    }
    let source_time = now_rfc3339();
    for (household_id, h) in &mut b.households {
        if let Some(on) = on
            && h.reevaluated_on.is_none_or(|d| d < on)
        {
            h.reevaluated_on = Some(on);
            h.touch();
        }
        if let Some(due) = reviews.get(household_id) {
            h.next_review_on = Some(due.next_review_on);
            h.touch();
        }
        b.affected.insert(household_id.clone(), (trigger.to_string(), source_time.clone()));
    }
    let due: Vec<String> = reviews.keys().filter(|h| b.households.contains_key(*h)).cloned().collect();
    if !due.is_empty() {
        let mut heads: BTreeMap<String, String> = BTreeMap::new();
        for r in select_in(
            conn,
            "SELECT household_id, id_number, relation FROM household_members WHERE valid_to IS NULL AND household_id IN",
            "ORDER BY id",
            &due,
        )
        .await?
        {
            let household_id: String = r.try_get("household_id")?;
            let relation: String = r.try_get("relation")?;
            if relation == "head" || !heads.contains_key(&household_id) {
                heads.insert(household_id, r.try_get("id_number")?);
            }
        }
        for household_id in &due {
            let Some(head) = heads.get(household_id).and_then(|h| IdNumber::parse(h).ok()) else { continue };
            let region = b.households.get(household_id).map(|h| h.region.clone()).unwrap_or_default();
            let identity = format!("{household_id}/{trigger}/periodic_review_due");
            let created_on = on.unwrap_or(ctx.today);
            raise_task(
                &mut b,
                ctx,
                "periodic_review_due",
                Some(&head),
                Some(household_id),
                &region,
                created_on,
                None,
                &identity,
                &source_time,
                &mut outcome,
            )?;
        }
    }
    evaluate_households(conn, ctx, &mut b, &mut outcome).await?;
    flush_derived(conn, &mut b).await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lists_number_their_placeholders_row_by_row() {
        assert_eq!(values_list(1, 1), "($1)");
        assert_eq!(values_list(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values_list(0, 3), "");
    }

    #[test]
    fn rows_go_to_postgres_as_one_array_per_column() {
        let rows = vec![vec![t("a"), Bind::Int(1), Bind::OptInt(None)], vec![ot(None::<String>), Bind::Int(2), Bind::OptInt(Some(3))]];
        let Ok((sql, columns)) = unnest(3, rows) else { panic!("the rows fit") };
        assert_eq!(sql, "SELECT * FROM UNNEST(CAST($1 AS text[]), CAST($2 AS bigint[]), CAST($3 AS bigint[]))");
        let [Column::Text(a), Column::Int(b), Column::Int(c)] = &columns[..] else { panic!("text, integer, integer") };
        assert_eq!(a, &[Some("a".to_string()), None]);
        assert_eq!(b, &[Some(1), Some(2)]);
        assert_eq!(c, &[None, Some(3)]);
        // A column of text and numbers, or a row of the wrong width, is refused, not sent.
        assert!(unnest(2, vec![vec![t("a"), Bind::Int(1)], vec![Bind::Int(1), t("a")]]).is_err());
        assert!(unnest(2, vec![vec![t("a")]]).is_err());
    }
}
