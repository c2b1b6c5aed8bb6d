-- Benefits follow status (issue 7): delivery state per entitlement event, recorded policy versions,
-- and the dates that re-evaluations without an inbound event (a policy change, the calendar) use.

-- A household re-evaluated by `doudi policy apply` or `doudi review` is assessed from then on no
-- earlier than this date, so a later event dated before it cannot bring back an older standard.
ALTER TABLE households ADD COLUMN reevaluated_on TEXT;
-- The date the household's next periodic review (national rules: yearly, or every six months for
-- households with able-bodied members) is due; NULL until its first review is scheduled.
ALTER TABLE households ADD COLUMN next_review_on TEXT;

-- One row per entitlement event (the outbox row with the same ce_id), written in the same
-- transaction. State: pending (not yet accepted by the agency or its sink), delivered (the sink
-- accepted it), applied (the agency acknowledged applying it), failed (rejected; see last_error).
CREATE TABLE deliveries (
    ce_id          TEXT PRIMARY KEY,
    agency         TEXT NOT NULL,
    kind           TEXT NOT NULL,
    change         TEXT NOT NULL,
    household_id   TEXT NOT NULL,
    id_number      TEXT NOT NULL,
    amount         TEXT,
    effective_date TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    -- The calendar day (China Standard Time, UTC+8) the change was recorded: reconciliation's day.
    created_on     TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'applied', 'failed')),
    sink           TEXT,
    attempts       BIGINT NOT NULL DEFAULT 0,
    last_error     TEXT,
    delivered_at   TEXT,
    applied_at     TEXT,
    updated_at     TEXT NOT NULL
);
CREATE INDEX deliveries_open ON deliveries (agency, created_at) WHERE state IN ('pending', 'delivered', 'failed');
CREATE INDEX deliveries_by_day ON deliveries (created_on, agency);

-- Every policy parameter version the exchange has applied, with what it changed. The last one
-- recorded is in force from the moment it is recorded (`applying`: its households are being
-- re-evaluated; `applied`: done).
CREATE TABLE policy_versions (
    version        TEXT PRIMARY KEY,
    state          TEXT NOT NULL CHECK (state IN ('applying', 'applied')),
    policy_id      TEXT NOT NULL,
    -- The earliest date from which a changed parameter applies; NULL for the first version.
    effective_date TEXT,
    -- JSON array of the region codes whose parameters changed (["220000"] = the whole province).
    regions        TEXT NOT NULL,
    parameters     TEXT NOT NULL,
    sha256         TEXT NOT NULL,
    households     BIGINT NOT NULL,
    decisions      BIGINT NOT NULL,
    applied_at     TEXT NOT NULL
);

-- `doudi review --date D` looks people up by birth date and facts by date.
CREATE INDEX persons_by_birth_date ON persons (birth_date);
CREATE INDEX facts_current_by_date ON facts (effective_date) WHERE state = 'current';
