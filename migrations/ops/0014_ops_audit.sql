-- The operations console's audit log: who did what to which job, queue, schedule or cache
-- entry, and when. Written after each action; never updated.
CREATE TABLE ops_audit (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    -- Kept with the name: the log outlives accounts.
    user_id  bigint      REFERENCES users (id) ON DELETE SET NULL,
    username text        NOT NULL,
    -- e.g. 'job.retry', 'jobs.bulk_cancel', 'queue.pause', 'schedule.run', 'cache.clear_prefix'.
    action   text        NOT NULL,
    -- What it acted on: a job id, a queue or schedule name, a prefix or tag.
    target   text        NOT NULL,
    -- The outcome and, for bulk actions, the filter.
    detail   jsonb       NOT NULL DEFAULT '{}'
);
-- The console shows the newest first.
CREATE INDEX ops_audit_at_idx ON ops_audit (at DESC);
