-- Cheaper reads and updates for re-evaluating many households (issue 7, BENCHMARKS.md "Publishing
-- beside the re-evaluation, fewer reads and in-place updates").

-- The facts an assessment reads: a person's current facts other than the registration (which is
-- read with the household). Looked up through `facts_by_person`, every member's registration row
-- was fetched from the table and then thrown away: most members have no other current fact, so
-- that fetch was most of the lookup's cost. This index holds only the rows the assessment keeps.
CREATE INDEX facts_assessed ON facts (id_number) WHERE state = 'current' AND field NOT LIKE 'registration:%';

-- A re-evaluation rewrites every household row it decides (decision version and summary, dates),
-- none of them indexed. With room left on its page the new row version stays there (a HOT update)
-- and the primary key is not touched; on a full page each update also wrote a new primary-key
-- entry. Half of each page is kept free for that. Pages written before this migration keep their
-- fill until rewritten (VACUUM FULL households, docs/runbook.md).
ALTER TABLE households SET (fillfactor = 50);
