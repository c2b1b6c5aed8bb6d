-- Identifiers compared byte by byte (issue 7, BENCHMARKS.md "Dates, masks and identifiers").
--
-- Household ids, ID numbers, event ids, task ids, person keys, agency and kind codes are codes,
-- not words: nothing sorts them for a reader, and the matcher keeps them in byte order (Rust's
-- `Ord` for strings). Under the database's default collation every index lookup and join on them
-- compared through the C library's locale rules (`strcoll`): cheap under C.UTF-8, several times
-- dearer under a language locale such as zh_CN.UTF-8. COLLATE "C" compares bytes, which gives the
-- same equality for every value and, for these columns, the order the code already assumes.
--
-- The tables are not rewritten; their indexes on these columns are rebuilt, holding writes to the
-- table meanwhile, and the tables are analysed again (below; docs/runbook.md, upgrades). A comparison of one of these columns with a column
-- or value of the default collation takes "C" (PostgreSQL prefers the explicit, non-default one),
-- so no query changes.
ALTER TABLE households ALTER COLUMN household_id TYPE text COLLATE "C";
ALTER TABLE household_members
    ALTER COLUMN household_id TYPE text COLLATE "C",
    ALTER COLUMN id_number TYPE text COLLATE "C";
ALTER TABLE persons
    ALTER COLUMN id_number TYPE text COLLATE "C",
    ALTER COLUMN person_key TYPE text COLLATE "C";
ALTER TABLE facts ALTER COLUMN id_number TYPE text COLLATE "C";
ALTER TABLE decisions ALTER COLUMN household_id TYPE text COLLATE "C";
ALTER TABLE entitlements
    ALTER COLUMN household_id TYPE text COLLATE "C",
    ALTER COLUMN agency TYPE text COLLATE "C",
    ALTER COLUMN kind TYPE text COLLATE "C",
    ALTER COLUMN id_number TYPE text COLLATE "C";
ALTER TABLE outbox ALTER COLUMN ce_id TYPE text COLLATE "C";
ALTER TABLE deliveries
    ALTER COLUMN ce_id TYPE text COLLATE "C",
    ALTER COLUMN agency TYPE text COLLATE "C",
    ALTER COLUMN created_on TYPE text COLLATE "C",
    ALTER COLUMN created_at TYPE text COLLATE "C";
ALTER TABLE processed_events ALTER COLUMN ce_id TYPE text COLLATE "C";
ALTER TABLE review_tasks
    ALTER COLUMN task_id TYPE text COLLATE "C",
    ALTER COLUMN household_id TYPE text COLLATE "C",
    ALTER COLUMN kind TYPE text COLLATE "C",
    ALTER COLUMN id_number TYPE text COLLATE "C";
ALTER TABLE assessment_problems ALTER COLUMN household_id TYPE text COLLATE "C";

-- Changing a column's collation drops its statistics. Without them the planner chose whole-table
-- scans for the re-evaluation's reads: 630 s instead of 12 s for 120,000 households, until
-- autovacuum would have analysed the tables again. Analysed here, in the same transaction.
ANALYZE households, household_members, persons, facts, decisions, entitlements, outbox, deliveries,
    processed_events, review_tasks, assessment_problems;
