-- The outbox's duplicate check, kept beside the household (issue 7, BENCHMARKS.md "No parallel
-- workers, event ids beside their household, chunks read by range").
--
-- An outbox row's `ce_id` is derived from what caused it (its identity starts with the household
-- id) and its content, so that deriving the same event again gives the same id and the insert is
-- skipped. The check was a unique index on `ce_id` alone. Those ids are hashes: each insert went to
-- a random page of an index over every row the outbox keeps (a policy change over a million
-- households alone adds 632,450), which was seldom in memory and, after each checkpoint, was
-- written whole to the log again.
--
-- The same check on (household_id, ce_id) finds the same duplicates: an event is only ever derived
-- again for the same household, and rows without a household compare equal on the NULL
-- (NULLS NOT DISTINCT, PostgreSQL 15 or later). A chunk of a re-evaluation covers households that
-- are next to each other in id order, so its inserts now land on a few neighbouring pages.
ALTER TABLE outbox ALTER COLUMN household_id TYPE text COLLATE "C";
CREATE UNIQUE INDEX outbox_event_by_household ON outbox (household_id, ce_id) NULLS NOT DISTINCT;
ALTER TABLE outbox DROP CONSTRAINT outbox_ce_id_key;
ANALYZE outbox;
