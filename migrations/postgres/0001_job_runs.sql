-- What each doudi job (connector run, matcher batch run, delivery, review) did and when.
-- Operators read the last successful run per job; summaries hold counts only, never personal data.
CREATE TABLE job_runs (
    id          BIGSERIAL PRIMARY KEY,
    component   TEXT NOT NULL,
    name        TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'ok', 'failed')),
    summary     TEXT NOT NULL
);
CREATE INDEX job_runs_by_name ON job_runs (component, name, outcome, id);
