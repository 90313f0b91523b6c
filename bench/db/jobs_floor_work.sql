-- The worker's two statements, each a transaction of its own with synchronous_commit off as
-- Hearth's are (set inside the statement, as worker::lease does, so each is one round trip):
-- lease up to :batch due jobs (worker::lease), then move those very jobs, found by id, to
-- jobs_done (a reduced worker::finish_batch: lock by id, check the lease, delete, insert); then
-- :gap microseconds' pause. pgbench -D sets both (jobs-sustained.sh, jobs-bulk.sh).
WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
leased AS (
  UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
         lease_until = now() + interval '30 s', locked_by = 'floor'
    FROM relaxed
   WHERE j.id = ANY (ARRAY(SELECT id FROM jobs WHERE state = 'available' AND queue = 'floor' AND run_at <= now()
                            ORDER BY priority, run_at, id LIMIT :batch FOR UPDATE SKIP LOCKED))
  RETURNING j.id)
SELECT coalesce(array_agg(id), '{}')::text AS ids FROM leased \gset
WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
locked AS (
  SELECT j.* FROM unnest(:ids::bigint[]) AS i(id),
         LATERAL (SELECT * FROM jobs j WHERE j.id = i.id OFFSET 0 FOR UPDATE) j
   WHERE j.state = 'running' AND j.locked_by = 'floor'),
gone AS (DELETE FROM jobs WHERE id = ANY (ARRAY(SELECT id FROM locked)))
INSERT INTO jobs_done (id, kind, queue, args, priority, state, attempt, max_attempts, unique_key, tags, errors,
                       created_at, attempted_at)
SELECT id, kind, queue, args, priority, 'completed', attempt, max_attempts, unique_key, tags, errors, created_at, attempted_at
  FROM locked, relaxed;
\sleep :gap us
