-- The audit log (src/audit.rs): unmasked access to personal data and administrative actions,
-- hash-chained and sealed with a MAC whose key the database does not hold. `seq` numbers the
-- entries 1, 2, 3, …; the primary key makes two writers race for the next number, never share it.
-- The plain access_log of 0002 is no longer written.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    person    TEXT,
    purpose   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    mac       TEXT NOT NULL
);
CREATE INDEX audit_log_by_person ON audit_log (person);
