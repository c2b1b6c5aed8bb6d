-- Reconciliation's index of deliveries by day as a block-range index (issue 7; BENCHMARKS.md,
-- "Fewer lookups and copies per row"). Deliveries are inserted in time order, so a day's rows sit
-- in neighbouring blocks, and `doudi reconcile --date D` reads those blocks. As a B-tree, every
-- delivery inserted took a descent and an entry in it: about 3 µs of the 20 µs a delivery row cost
-- a policy change. A block-range index keeps a summary per 32 blocks, updated only when a row falls
-- outside it. Rows rewritten later (a state change) may land in later blocks and widen their
-- ranges: the report then reads a few more blocks, never different rows.
DROP INDEX deliveries_by_day;
CREATE INDEX deliveries_by_day ON deliveries USING brin (created_on) WITH (pages_per_range = 32, autosummarize = on);
