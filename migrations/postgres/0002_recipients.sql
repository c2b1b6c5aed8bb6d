-- The shared recipient database (issue #6). Dates are ISO 8601 text (YYYY-MM-DD), times RFC 3339 UTC
-- text, money decimal text, structured values JSON text: the same on SQLite and PostgreSQL.

-- One row per person ever seen, by normalised ID number. `name_source` is the topic that gave the
-- name; civil affairs (the registry) overrides any department's.
CREATE TABLE persons (
    id_number     TEXT PRIMARY KEY,
    person_key    TEXT NOT NULL UNIQUE,
    name          TEXT,
    name_source   TEXT,
    birth_date    TEXT NOT NULL,
    sex           TEXT NOT NULL,
    first_seen_at TEXT NOT NULL
);

-- A household as civil affairs registered it last (its composition is in household_members).
-- `base` is the registered record without members (assets, declared medical costs, housing).
CREATE TABLE households (
    household_id     TEXT PRIMARY KEY,
    region           TEXT NOT NULL,
    as_of            TEXT NOT NULL,
    base             TEXT NOT NULL,
    decision_version BIGINT NOT NULL DEFAULT 0,
    updated_at       TEXT NOT NULL
);

-- Membership with history: `valid_to` is NULL while the person is a member.
CREATE TABLE household_members (
    id           BIGSERIAL PRIMARY KEY,
    household_id TEXT NOT NULL REFERENCES households (household_id),
    id_number    TEXT NOT NULL REFERENCES persons (id_number),
    relation     TEXT NOT NULL,
    member       TEXT NOT NULL,
    valid_from   TEXT NOT NULL,
    valid_to     TEXT,
    ce_id        TEXT NOT NULL
);
CREATE INDEX household_members_current ON household_members (id_number) WHERE valid_to IS NULL;
CREATE INDEX household_members_by_household ON household_members (household_id, valid_to);

-- Every fact doudi was told, with where it came from. For one person, source and field exactly one
-- fact is `current`; an older one that arrives late is `stale` and changes nothing; a fact whose
-- name conflicts with the registry is `held` until a caseworker resolves the identity.
CREATE TABLE facts (
    id              BIGSERIAL PRIMARY KEY,
    id_number       TEXT NOT NULL,
    source          TEXT NOT NULL,
    field           TEXT NOT NULL,
    value           TEXT NOT NULL,
    effective_date  TEXT,
    recorded_at     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('current', 'superseded', 'stale', 'held')),
    topic           TEXT NOT NULL,
    kafka_partition BIGINT NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    ce_id           TEXT NOT NULL,
    source_file     TEXT,
    source_row      TEXT,
    applied_at      TEXT NOT NULL
);
CREATE INDEX facts_by_person ON facts (id_number, state);
CREATE INDEX facts_current ON facts (id_number, source, field) WHERE state = 'current';

-- Every decision, versioned per household; households.decision_version names the current one.
CREATE TABLE decisions (
    household_id      TEXT NOT NULL REFERENCES households (household_id),
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

-- Entitlements per agency: `ended_on` is NULL while in force.
CREATE TABLE entitlements (
    id              BIGSERIAL PRIMARY KEY,
    household_id    TEXT NOT NULL,
    agency          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    id_number       TEXT NOT NULL,
    attributes      TEXT NOT NULL,
    rules           TEXT NOT NULL,
    granted_on      TEXT NOT NULL,
    granted_version BIGINT NOT NULL,
    ended_on        TEXT,
    ended_version   BIGINT
);
CREATE UNIQUE INDEX entitlements_in_force ON entitlements (household_id, agency, kind, id_number) WHERE ended_on IS NULL;

-- Work for caseworkers. A task stays `open` until a caseworker closes it, or `cleared` when the data
-- no longer raises it.
CREATE TABLE review_tasks (
    task_id      TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    id_number    TEXT,
    household_id TEXT,
    region       TEXT NOT NULL,
    created_on   TEXT NOT NULL,
    rule         TEXT,
    detail       TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('open', 'cleared', 'closed')),
    created_at   TEXT NOT NULL
);
CREATE INDEX review_tasks_open ON review_tasks (household_id, kind, id_number) WHERE state = 'open';

-- Inbound events already applied (by ce_id): a redelivered or replayed event changes nothing.
CREATE TABLE processed_events (
    ce_id           TEXT PRIMARY KEY,
    topic           TEXT NOT NULL,
    kafka_partition BIGINT NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    outcome         TEXT NOT NULL,
    processed_at    TEXT NOT NULL
);

-- Where the matcher is in each partition, stored in the same transaction as the effects.
-- `epoch` fences owners: an instance that claimed the partition earlier can no longer write.
CREATE TABLE consumer_offsets (
    consumer_group  TEXT NOT NULL,
    topic           TEXT NOT NULL,
    kafka_partition BIGINT NOT NULL,
    next_offset     BIGINT NOT NULL,
    epoch           BIGINT NOT NULL,
    owner           TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

-- Derived events waiting for the relay; `sent_at` is set once the broker acknowledged them.
-- `source_time` is the time of the source record that caused it, for end-to-end latency.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    topic        TEXT NOT NULL,
    message_key  TEXT NOT NULL,
    ce_id        TEXT NOT NULL UNIQUE,
    ce_type      TEXT NOT NULL,
    dataschema   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    household_id TEXT,
    source_time  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    sent_at      TEXT
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

-- A household the policy engine could not assess (the reason names the field; no data).
CREATE TABLE assessment_problems (
    household_id TEXT PRIMARY KEY,
    problem      TEXT NOT NULL,
    ce_id        TEXT NOT NULL,
    recorded_at  TEXT NOT NULL
);

-- Who looked at unmasked personal data, and when.
CREATE TABLE access_log (
    id        BIGSERIAL PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    person    TEXT NOT NULL
);
