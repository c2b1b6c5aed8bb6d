-- Cheaper writes for re-evaluating many households (issue 7; the same as migrations/postgres).

-- The relay's queue: the id of every outbox row the broker has not acknowledged yet, queued by the
-- trigger below; the relay deletes what the broker acknowledged.
CREATE TABLE outbox_pending (
    id INTEGER PRIMARY KEY
);
INSERT INTO outbox_pending (id) SELECT id FROM outbox WHERE sent_at IS NULL;
DROP INDEX outbox_unsent;
ALTER TABLE outbox DROP COLUMN sent_at;

CREATE TRIGGER outbox_queue AFTER INSERT ON outbox
BEGIN
    INSERT INTO outbox_pending (id) VALUES (new.id);
END;

-- Decisions without the per-row foreign-key check (see migrations/postgres); households are never
-- deleted instead. SQLite drops a constraint by rebuilding the table.
CREATE TABLE decisions_rebuilt (
    household_id      TEXT NOT NULL,
    version           BIGINT NOT NULL,
    effective_date    TEXT NOT NULL,
    category          TEXT NOT NULL,
    basis             TEXT,
    size              BIGINT NOT NULL,
    per_capita_income TEXT NOT NULL,
    monthly_payment   TEXT NOT NULL,
    policy_version    TEXT NOT NULL,
    rules             TEXT NOT NULL,
    decision          TEXT NOT NULL,
    trigger_ce_id     TEXT NOT NULL,
    decided_at        TEXT NOT NULL,
    PRIMARY KEY (household_id, version)
);
INSERT INTO decisions_rebuilt SELECT household_id, version, effective_date, category, basis, size, per_capita_income,
    monthly_payment, policy_version, rules, decision, trigger_ce_id, decided_at FROM decisions;
DROP TABLE decisions;
ALTER TABLE decisions_rebuilt RENAME TO decisions;

CREATE TRIGGER households_are_kept BEFORE DELETE ON households
BEGIN
    SELECT RAISE(ABORT, 'households are never deleted: their decisions refer to them');
END;

-- The summary of each household's current decision, kept on its row (see migrations/postgres).
ALTER TABLE households ADD COLUMN decision_summary TEXT;
UPDATE households SET decision_summary = (
    SELECT json_object('version', d.version, 'category', d.category, 'basis', d.basis, 'size', d.size, 'per_capita_income', d.per_capita_income,
        'monthly_payment', d.monthly_payment, 'policy_version', d.policy_version, 'rules', d.rules)
    FROM decisions d WHERE d.household_id = households.household_id AND d.version = households.decision_version);
