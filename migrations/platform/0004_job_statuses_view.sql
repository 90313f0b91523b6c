-- One place that says what a job's status is, live or finished: waiting jobs whose run_at is
-- in the future read as 'scheduled'. Used by the status API, `hearth jobs` and the ops pages.
CREATE VIEW job_statuses AS
SELECT id, kind, queue, args,
       CASE WHEN state = 'available' AND run_at > now() THEN 'scheduled' ELSE state END AS state,
       attempt, max_attempts, errors, NULL::jsonb AS result, progress_percent, progress_message,
       tags, created_at, run_at, NULL::timestamptz AS finished_at
  FROM jobs
UNION ALL
SELECT id, kind, queue, args, state, attempt, max_attempts, errors, result, progress_percent,
       progress_message, tags, created_at, NULL, finished_at
  FROM jobs_done;
