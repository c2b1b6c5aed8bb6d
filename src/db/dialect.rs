//! Where SQLite and PostgreSQL differ, decided once: key sets, pairs, row locks, conflict targets,
//! narrow updates and how many writers may run at once. Every statement that differs between the
//! two servers takes its differing part from here.

/// Which database server is behind a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names (`sqlite:` or else PostgreSQL; the configuration refuses
    /// any other scheme).
    pub fn of_url(url: &str) -> Self {
        if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres }
    }

    /// The set of a JSON array of strings (or integers) bound as the parameter `$n`, for
    /// `… IN (set)`: one statement of fixed text whatever the number of keys, so it is prepared
    /// once per connection (an `IN` list of thousands of parameters is planned again at every
    /// execution).
    pub fn key_set(self, n: usize, integers: bool) -> String {
        match (self, integers) {
            (Backend::Postgres, false) => format!("SELECT json_array_elements_text(CAST(${n} AS json))"),
            (Backend::Postgres, true) => format!("SELECT CAST(json_array_elements_text(CAST(${n} AS json)) AS BIGINT)"),
            (Backend::Sqlite, _) => format!("SELECT value FROM json_each(${n})"),
        }
    }

    /// The (text, integer) pairs of a JSON array of two-element arrays bound as `$1`, for
    /// `(a, b) IN (pairs)`.
    pub fn key_pairs(self) -> &'static str {
        match self {
            Backend::Postgres => "SELECT k->>0, CAST(k->>1 AS BIGINT) FROM json_array_elements(CAST($1 AS json)) k",
            Backend::Sqlite => "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each($1)",
        }
    }

    /// `id IN (subquery)` for a subquery of row ids. On PostgreSQL an array of the ids: joined, or
    /// as `IN (subquery)`, it planned a merge join walking every row of the outer table
    /// (BENCHMARKS.md, the relay's rounds); an array of ids is one index scan.
    pub fn ids_from(self, column: &str, subquery: &str) -> String {
        match self {
            Backend::Postgres => format!("{column} = ANY(ARRAY({subquery}))"),
            Backend::Sqlite => format!("{column} IN ({subquery})"),
        }
    }

    /// What a `SELECT` ends with to lock the rows it reads until the transaction ends. SQLite
    /// has one writer at a time, so its transactions need none.
    pub fn row_lock(self) -> &'static str {
        match self {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    /// The conflict clause of an outbox insert: PostgreSQL checks an event id beside its household
    /// (migration 0007), SQLite on its own.
    pub fn outbox_conflict(self) -> &'static str {
        match self {
            Backend::Postgres => "ON CONFLICT (household_id, ce_id) DO NOTHING",
            Backend::Sqlite => "ON CONFLICT (ce_id) DO NOTHING",
        }
    }

    /// The current facts of a member `m` (registrations left out) as a join. On PostgreSQL they are
    /// looked up member by member (a lateral subquery the planner may not flatten, `OFFSET 0`): as a
    /// plain join the plan depended on the estimated number of members, and above about 3,000 for a
    /// chunk of 1,000 households it hashed the members and read every current fact of the database.
    pub fn current_facts_join(self) -> &'static str {
        match self {
            Backend::Postgres => {
                "LEFT JOIN LATERAL (SELECT f.id, f.field, f.value, f.effective_date FROM facts f \
                 WHERE f.id_number = m.id_number AND f.state = 'current' AND f.field NOT LIKE 'registration:%' OFFSET 0) f ON true"
            }
            Backend::Sqlite => {
                "LEFT JOIN facts f ON f.id_number = m.id_number AND f.state = 'current' AND f.field NOT LIKE 'registration:%'"
            }
        }
    }

    /// Whether an existing row whose decision alone moved is updated in those columns only; else
    /// every changed row is upserted whole. On PostgreSQL a whole-row upsert of every household of
    /// a region rewrites its large registration for nothing.
    pub fn narrow_updates(self) -> bool {
        self == Backend::Postgres
    }

    /// How many transactions may write at once. SQLite has one writer.
    pub fn writers(self, wanted: usize) -> usize {
        match self {
            Backend::Postgres => wanted.max(1),
            Backend::Sqlite => 1,
        }
    }

    /// Whether the server has advisory locks (one relay at a time across processes); on SQLite
    /// the single writer serialises the relays.
    pub fn has_advisory_locks(self) -> bool {
        self == Backend::Postgres
    }
}
