-- The caseworker's loop (issue #32); as migrations/postgres/0010. SQLite cannot change a CHECK
-- constraint, so review_tasks and facts are rebuilt with their indexes.
CREATE TABLE review_tasks_new (
    task_id      TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    id_number    TEXT,
    household_id TEXT,
    region       TEXT NOT NULL,
    created_on   TEXT NOT NULL,
    rule         TEXT,
    detail       TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('open', 'in_progress', 'resolved', 'cancelled')),
    created_at   TEXT NOT NULL,
    assignee     TEXT,
    outcome      TEXT,
    resolved_by  TEXT,
    resolved_at  TEXT,
    due_on       TEXT,
    updated_at   TEXT
);
INSERT INTO review_tasks_new (task_id, kind, id_number, household_id, region, created_on, rule, detail, state, created_at)
    SELECT task_id, kind, id_number, household_id, region, created_on, rule, detail,
           CASE state WHEN 'cleared' THEN 'cancelled' WHEN 'closed' THEN 'resolved' ELSE state END, created_at
    FROM review_tasks;
DROP TABLE review_tasks;
ALTER TABLE review_tasks_new RENAME TO review_tasks;
CREATE INDEX review_tasks_open ON review_tasks (household_id, kind, id_number) WHERE state IN ('open', 'in_progress');
CREATE INDEX review_tasks_queue ON review_tasks (created_on, task_id) WHERE state IN ('open', 'in_progress');
-- A reviewed death is not raised again: the re-assessment reads these beside the open tasks.
CREATE INDEX review_tasks_settled ON review_tasks (household_id) WHERE state = 'resolved' AND kind = 'deceased_member';

CREATE TABLE review_task_transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     TEXT NOT NULL,
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

CREATE TABLE facts_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    id_number       TEXT NOT NULL,
    source          TEXT NOT NULL,
    field           TEXT NOT NULL,
    value           TEXT NOT NULL,
    effective_date  TEXT,
    recorded_at     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('current', 'superseded', 'stale', 'held', 'rejected')),
    topic           TEXT NOT NULL,
    kafka_partition BIGINT NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    ce_id           TEXT NOT NULL,
    source_file     TEXT,
    source_row      TEXT,
    applied_at      TEXT NOT NULL
);
INSERT INTO facts_new SELECT id, id_number, source, field, value, effective_date, recorded_at, state, topic, kafka_partition,
    kafka_offset, ce_id, source_file, source_row, applied_at FROM facts;
DROP TABLE facts;
ALTER TABLE facts_new RENAME TO facts;
CREATE INDEX facts_by_person ON facts (id_number, state);
CREATE INDEX facts_current ON facts (id_number, source, field) WHERE state = 'current';
CREATE INDEX facts_current_by_date ON facts (effective_date) WHERE state = 'current';
CREATE INDEX facts_assessed ON facts (id_number) WHERE state = 'current' AND field NOT LIKE 'registration:%';
CREATE INDEX facts_held ON facts (id_number) WHERE state = 'held';

CREATE TABLE name_variants (
    id_number  TEXT NOT NULL,
    source     TEXT NOT NULL,
    name       TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('held', 'known', 'rejected')),
    task_id    TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (id_number, source, name)
);
