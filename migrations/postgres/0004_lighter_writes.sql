-- Cheaper writes for re-evaluating many households (issue 7, BENCHMARKS.md "Lighter writes").

-- The relay's queue: the id of every outbox row the broker has not acknowledged yet. An outbox row
-- is queued by the trigger below in the statement that inserts it; the relay reads the queue in id
-- order and deletes what the broker acknowledged. Marking a row sent used to rewrite the whole
-- outbox row (a new version of it and two index entries) to set `sent_at`; deleting a queue entry
-- touches a few bytes.
CREATE TABLE outbox_pending (
    id BIGINT PRIMARY KEY
);
INSERT INTO outbox_pending (id) SELECT id FROM outbox WHERE sent_at IS NULL;
DROP INDEX outbox_unsent;
ALTER TABLE outbox DROP COLUMN sent_at;

CREATE FUNCTION outbox_queue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_pending (id) SELECT id FROM queued;
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_queue AFTER INSERT ON outbox REFERENCING NEW TABLE AS queued
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_queue();

-- A decision is only written for a household read and updated in the same transaction, so its
-- foreign key was checked on every row (a lookup per decision, doubling the cost of writing one)
-- for nothing. What it also guarded, a household deleted under its decisions, is refused instead:
-- households are never deleted.
ALTER TABLE decisions DROP CONSTRAINT decisions_household_id_fkey;
CREATE FUNCTION households_are_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'households are never deleted: their decisions refer to them';
END
$$;
CREATE TRIGGER households_are_kept BEFORE DELETE OR TRUNCATE ON households
    FOR EACH STATEMENT EXECUTE FUNCTION households_are_kept();

-- The summary of each household's current decision (category, basis, size, per-capita income,
-- payment, policy version, rules: what the next decision is compared with), kept on the household
-- row that is read and updated anyway, instead of looking the decision up again.
ALTER TABLE households ADD COLUMN decision_summary TEXT;
UPDATE households h SET decision_summary = json_build_object('version', d.version,
        'category', d.category, 'basis', d.basis, 'size', d.size, 'per_capita_income', d.per_capita_income,
        'monthly_payment', d.monthly_payment, 'policy_version', d.policy_version, 'rules', d.rules)::text
    FROM decisions d WHERE d.household_id = h.household_id AND d.version = h.decision_version;
