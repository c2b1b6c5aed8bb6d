//! The statements of the matcher, the relay, the policy change and delivery, over either driver.
//!
//! Guarantees: the same SQL text runs on SQLite (through sqlx's `Any` driver) and on PostgreSQL
//! (through its native driver where the database has one); what differs between them (key sets,
//! bulk inserts, range reads) is decided here and in [`super::dialect`], nowhere else. A multi-row
//! statement binds every row's values or fails whole; nothing is sent half-bound.

use sqlx::{AnyConnection, Row};

use super::{Backend, DbError};

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

pub fn t(s: impl Into<String>) -> Bind {
    Bind::Text(Some(s.into()))
}

pub fn ot(s: Option<impl Into<String>>) -> Bind {
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
    /// The server behind the connection. sqlx names the PostgreSQL driver behind an `Any`
    /// connection "PostgreSQL".
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Any(c) if c.backend_name().eq_ignore_ascii_case("postgresql") => Backend::Postgres,
            Conn::Any(_) => Backend::Sqlite,
            Conn::Pg(_) => Backend::Postgres,
        }
    }

    /// The rows of `sql` with `binds`.
    pub async fn fetch(&mut self, sql: String, binds: Vec<Bind>) -> Result<Vec<Record>, DbError> {
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
    pub async fn execute(&mut self, sql: String, binds: Vec<Bind>) -> Result<u64, DbError> {
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

/// Text of a JSON array of strings.
pub fn json_array(keys: &[String]) -> String {
    serde_json::to_string(keys).unwrap_or_else(|_| "[]".into())
}

/// A JSON array of `items`, each written by `write`; `what` names the rows in the (impossible)
/// error of a text that is not UTF-8.
fn json_list<T>(items: impl IntoIterator<Item = T>, what: &str, mut write: impl FnMut(&mut Vec<u8>, T)) -> Result<String, DbError> {
    let mut out = vec![b'['];
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(&mut out, item);
    }
    out.push(b']');
    String::from_utf8(out).map_err(|_| DbError::Encoding(what.to_string()))
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
fn unnest(width: usize, rows: Vec<Vec<Bind>>) -> Result<(String, Vec<Column>), DbError> {
    let n = rows.len();
    let mut columns: Vec<Option<Column>> = (0..width).map(|_| None).collect();
    let misfit = || DbError::Encoding("a multi-row statement's column".to_string());
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
pub async fn execute_values(
    conn: &mut Conn<'_>,
    width: usize,
    rows: Vec<Vec<Bind>>,
    statement: impl Fn(&str) -> String,
) -> Result<(), DbError> {
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
pub async fn insert_rows(conn: &mut Conn<'_>, table: &str, cols: &[&str], rows: Vec<Vec<Bind>>, suffix: &str) -> Result<(), DbError> {
    let list = cols.join(", ");
    execute_values(conn, cols.len(), rows, |source| format!("INSERT INTO {table} ({list}) {source} {suffix}")).await
}

/// Rows of `sql_prefix (keys) sql_suffix`, where the prefix ends in `… IN`.
pub async fn select_in(conn: &mut Conn<'_>, sql_prefix: &str, sql_suffix: &str, keys: &[String]) -> Result<Vec<Record>, DbError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    // Planned at each execution (not kept as a prepared statement): a plan kept from a
    // connection's first executions, made while the tables were small, would be kept as they grow
    // (BENCHMARKS.md).
    if let Conn::Pg(c) = conn
        && let Some(column) = sql_prefix.strip_suffix(" IN")
    {
        let sql = format!("{column} = ANY(CAST($1 AS text[])) {sql_suffix}");
        let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(keys).persistent(false);
        return Ok(q.fetch_all(&mut **c).await?.into_iter().map(Record::Pg).collect());
    }
    let sql = format!("{sql_prefix} ({}) {sql_suffix}", conn.backend().key_set(1, false));
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
pub async fn execute_in(conn: &mut Conn<'_>, sql_prefix: &str, leading: &[Bind], keys: &[Bind]) -> Result<(), DbError> {
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
    let sql = format!("{sql_prefix} ({})", conn.backend().key_set(leading.len() + 1, integers));
    let mut binds = leading.to_vec();
    binds.push(t(set));
    conn.execute(sql, binds).await?;
    Ok(())
}

/// Rows of `{sql_prefix} BETWEEN first AND last {sql_suffix}`, the prefix ending in the compared
/// column, in byte order (`COLLATE "C"`), planned at each execution as the key sets in
/// [`select_in`]. Only on PostgreSQL's own driver, where one range scan of an index replaces an
/// index descent per key; `None` elsewhere, and the caller reads by its keys.
pub async fn select_range(
    conn: &mut Conn<'_>,
    sql_prefix: &str,
    first: &str,
    last: &str,
    sql_suffix: &str,
) -> Result<Option<Vec<Record>>, DbError> {
    let Conn::Pg(c) = conn else { return Ok(None) };
    let sql = format!("{sql_prefix} BETWEEN ($1 COLLATE \"C\") AND ($2 COLLATE \"C\") {sql_suffix}");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(first).bind(last).persistent(false).fetch_all(&mut **c).await?;
    Ok(Some(rows.into_iter().map(Record::Pg).collect()))
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
