-- Every job writes each index of `jobs` twice (at enqueue, and again when leasing makes a new
-- row version: the state change defeats HOT updates) and each index of `jobs_done` once. The
-- two `kind` indexes served no query: the admin search (`hearth jobs list --kind`, the ops
-- pages) reads newest first along the primary key with `LIMIT`, and its optional filters
-- (`$3 IS NULL OR kind = $3`) keep the planner from using a `kind` index anyway. Dropping them
-- saves three index insertions per job on the hot path.
DROP INDEX jobs_kind_idx;
DROP INDEX jobs_done_kind_idx;

-- Never truncate `jobs` when vacuuming. Truncating the empty tail takes an ACCESS EXCLUSIVE
-- lock, which stops every worker's fetch while it is held or waited for (seen in
-- `hearth bench jobs`: VACUUM waiting on `VacuumTruncate` for seconds between bursts). A queue
-- table empties and refills all day; the pages it would give back are needed again at once.
ALTER TABLE jobs SET (vacuum_truncate = false);
