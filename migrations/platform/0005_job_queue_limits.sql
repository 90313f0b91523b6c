-- Limits a queue obeys across all instances, set at run time with `hearth jobs limit`.
--   global_limit: at most this many jobs of the queue running at once, cluster-wide;
--   rate_limit / rate_period_s: at most rate_limit jobs started per fixed window of that length.
-- Fetches for a limited queue serialise on an advisory lock and read these counts afresh, so
-- the limits hold exactly; unlimited queues keep the lock-free fetch.
CREATE TABLE job_queue_limits (
    queue         text             PRIMARY KEY,
    global_limit  integer          CHECK (global_limit > 0),
    rate_limit    integer          CHECK (rate_limit > 0),
    rate_period_s double precision CHECK (rate_period_s > 0),
    window_start  timestamptz      NOT NULL DEFAULT now(),
    window_count  integer          NOT NULL DEFAULT 0,
    CHECK ((rate_limit IS NULL) = (rate_period_s IS NULL))
);

-- Counting a queue's running jobs for its global limit.
CREATE INDEX jobs_running_queue_idx ON jobs (queue) WHERE state = 'running';
