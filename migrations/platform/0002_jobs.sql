-- Background jobs: a SKIP LOCKED queue worked by in-process workers.
--
-- Two tables keep the hot path small. `jobs` holds only live jobs (waiting or running), so the
-- fetch query scans a partial index over a few rows however many million jobs have passed
-- through. A job that finishes (completed, discarded, cancelled) is moved to `jobs_done` in the
-- same statement that records its outcome; pruning deletes old rows there.

CREATE SEQUENCE jobs_id_seq AS bigint;

CREATE TABLE jobs (
    -- Ids come from the sequence explicitly so a bulk insert can know them before inserting
    -- (its unique-key rows point at them).
    id               bigint      PRIMARY KEY DEFAULT nextval('jobs_id_seq'),
    kind             text        NOT NULL,
    queue            text        NOT NULL,
    args             jsonb       NOT NULL,
    -- Lower runs first; 0 is the default.
    priority         smallint    NOT NULL DEFAULT 0,
    -- 'available': waiting for run_at; 'running': leased by a worker until lease_until.
    state            text        NOT NULL DEFAULT 'available' CHECK (state IN ('available', 'running')),
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- A job not started by then is discarded rather than run late.
    expires_at       timestamptz,
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL CHECK (max_attempts > 0),
    timeout_ms       integer     CHECK (timeout_ms > 0),
    unique_key       text,
    tags             text[]      NOT NULL DEFAULT '{}',
    -- One object per failed attempt: {attempt, error, at, instance}.
    errors           jsonb       NOT NULL DEFAULT '[]',
    progress_percent smallint,
    progress_message text,
    lease_until      timestamptz,
    locked_by        text,
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempted_at     timestamptz
);
ALTER SEQUENCE jobs_id_seq OWNED BY jobs.id;

-- The fetch path: the next available jobs of a queue by priority then time.
CREATE INDEX jobs_fetch_idx ON jobs (queue, priority, run_at, id) WHERE state = 'available';
-- The rescuer: running jobs whose lease ran out.
CREATE INDEX jobs_lease_idx ON jobs (lease_until) WHERE state = 'running';
-- Status queries by kind ("is such a job enqueued?").
CREATE INDEX jobs_kind_idx ON jobs (kind);

-- Finished jobs, kept for status queries until pruned.
CREATE TABLE jobs_done (
    id               bigint      PRIMARY KEY,
    kind             text        NOT NULL,
    queue            text        NOT NULL,
    args             jsonb       NOT NULL,
    priority         smallint    NOT NULL,
    state            text        NOT NULL CHECK (state IN ('completed', 'discarded', 'cancelled')),
    attempt          integer     NOT NULL,
    max_attempts     integer     NOT NULL,
    unique_key       text,
    tags             text[]      NOT NULL,
    errors           jsonb       NOT NULL,
    result           jsonb,
    progress_percent smallint,
    progress_message text,
    created_at       timestamptz NOT NULL,
    attempted_at     timestamptz,
    finished_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_done_finished_idx ON jobs_done (state, finished_at);
CREATE INDEX jobs_done_kind_idx ON jobs_done (kind);

-- Unique keys in force. A row exists while the job is in one of the states the key is unique
-- across; `until` (when a period is set) is when the key may be used again.
CREATE TABLE job_unique_keys (
    key        text        PRIMARY KEY,
    job_id     bigint      NOT NULL,
    -- Finished states in which the key stays taken (live states always hold it).
    holds_in   text[]      NOT NULL DEFAULT '{}',
    until      timestamptz
);
CREATE INDEX job_unique_keys_job_idx ON job_unique_keys (job_id);

-- Paused queues; every instance checks before fetching and hears changes through NOTIFY.
CREATE TABLE job_queues_paused (
    queue     text        PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);

-- The last occurrence each schedule enqueued; the row lock makes one instance enqueue it.
CREATE TABLE job_schedules (
    name            text        PRIMARY KEY,
    last_occurrence timestamptz NOT NULL
);
