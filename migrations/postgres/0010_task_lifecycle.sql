-- The caseworker's loop (issue #32). A review task is open, in_progress once assigned, resolved with
-- an outcome, or cancelled when a later event supersedes it; every transition is kept in
-- review_task_transitions. The states of 0002 map over: cleared → cancelled, closed → resolved.
ALTER TABLE review_tasks DROP CONSTRAINT IF EXISTS review_tasks_state_check;
UPDATE review_tasks SET state = 'cancelled' WHERE state = 'cleared';
UPDATE review_tasks SET state = 'resolved' WHERE state = 'closed';
ALTER TABLE review_tasks ADD CONSTRAINT review_tasks_state_check
    CHECK (state IN ('open', 'in_progress', 'resolved', 'cancelled'));
ALTER TABLE review_tasks
    ADD COLUMN assignee    TEXT,
    ADD COLUMN outcome     TEXT,
    ADD COLUMN resolved_by TEXT,
    ADD COLUMN resolved_at TEXT,
    ADD COLUMN due_on      TEXT,
    ADD COLUMN updated_at  TEXT;
DROP INDEX IF EXISTS review_tasks_open;
CREATE INDEX review_tasks_open ON review_tasks (household_id, kind, id_number) WHERE state IN ('open', 'in_progress');
CREATE INDEX review_tasks_queue ON review_tasks (created_on, task_id) WHERE state IN ('open', 'in_progress');
-- A reviewed death is not raised again: the re-assessment reads these beside the open tasks.
CREATE INDEX review_tasks_settled ON review_tasks (household_id) WHERE state = 'resolved' AND kind = 'deceased_member';

-- Every transition: who (an authenticated actor), through which door (cli, workbench, topic,
-- matcher), the outcome and the caseworker's reason. The reason is free text and may name people:
-- it stays here and on the caseworkers' topic, never in the audit log's detail or in logs.
CREATE TABLE review_task_transitions (
    id          BIGSERIAL PRIMARY KEY,
    task_id     TEXT COLLATE "C" NOT NULL,
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    actor       TEXT NOT NULL,
    via         TEXT NOT NULL,
    assignee    TEXT,
    outcome     TEXT,
    reason      TEXT,
    ce_id       TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX review_task_transitions_by_task ON review_task_transitions (task_id, id);

-- A fact whose identity a caseworker rejected ("different person") is `rejected`: kept with its
-- provenance, never applied.
ALTER TABLE facts DROP CONSTRAINT IF EXISTS facts_state_check;
ALTER TABLE facts ADD CONSTRAINT facts_state_check CHECK (state IN ('current', 'superseded', 'stale', 'held', 'rejected'));
CREATE INDEX facts_held ON facts (id_number) WHERE state = 'held';

-- Names departments use for a person. A name that differs from the registry is `held` with the
-- facts it came with; a caseworker makes it `known` ("same person": the next record under that
-- name is not held again) or `rejected`.
CREATE TABLE name_variants (
    id_number  TEXT COLLATE "C" NOT NULL,
    source     TEXT NOT NULL,
    name       TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('held', 'known', 'rejected')),
    task_id    TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (id_number, source, name)
);
