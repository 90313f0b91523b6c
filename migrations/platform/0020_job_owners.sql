-- Job owners: the user a job was enqueued for, so that `GET /api/jobs/{id}` shows a job only
-- to its owner (and administrators) instead of to anyone signed in who guesses its id. NULL is
-- a system job (schedules, compaction, the CLI): administrators only.
--
-- A plain nullable column, set at enqueue and carried along when a job finishes (`jobs_done`)
-- or is retried (back to `jobs`). Adding it rewrites nothing (no default), and it needs no
-- index: the status API looks jobs up by id, and the fetch and lease paths never read it (the
-- finish path copies it with the row it already reads). No foreign key either: the jobs platform knows nothing of the accounts app's users, a
-- check would cost every enqueue, and user ids are never reused.
ALTER TABLE jobs ADD COLUMN owner_id bigint;
ALTER TABLE jobs_done ADD COLUMN owner_id bigint;

-- The status view (0004) with the owner; a replaced view may only add columns at the end.
CREATE OR REPLACE VIEW job_statuses AS
SELECT id, kind, queue, args,
       CASE WHEN state = 'available' AND run_at > now() THEN 'scheduled' ELSE state END AS state,
       attempt, max_attempts, errors, NULL::jsonb AS result, progress_percent, progress_message,
       tags, created_at, run_at, NULL::timestamptz AS finished_at, owner_id
  FROM jobs
UNION ALL
SELECT id, kind, queue, args, state, attempt, max_attempts, errors, result, progress_percent,
       progress_message, tags, created_at, NULL, finished_at, owner_id
  FROM jobs_done;
