-- Cheaper reads for re-evaluating many households (issue 7; kept equivalent to
-- migrations/postgres/0005_assessment_reads.sql).

-- The facts an assessment reads: a person's current facts other than the registration.
CREATE INDEX facts_assessed ON facts (id_number) WHERE state = 'current' AND field NOT LIKE 'registration:%';

-- PostgreSQL also keeps half of each households page free for in-place updates; SQLite has no
-- such setting.
