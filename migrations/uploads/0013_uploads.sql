-- Uploads: CSV files users send to import posts. The request stores the file and enqueues the
-- import job in one transaction; the job reads the file from here, imports it and records what
-- it found.

CREATE TABLE uploads (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The name the browser gave the file (its last path component), for pages and messages
    -- only: the file is never written to disk.
    filename    text        NOT NULL CHECK (length(filename) BETWEEN 1 AND 255),
    -- The file's size in bytes, kept after `content` is dropped.
    size        bigint      NOT NULL CHECK (size > 0),
    -- The file itself, until the import has finished (imported or rejected): keeping every
    -- imported file would grow the table by up to HEARTH_UPLOAD_MAX_BYTES per import for
    -- nothing. An import that failed on our side keeps it, so `hearth jobs retry` can run it.
    content     bytea       CHECK (content IS NULL OR octet_length(content) = size),
    -- The import job. Not a foreign key: finished jobs move to jobs_done and are pruned after
    -- HEARTH_JOB_RETENTION, while the upload stays.
    job_id      bigint,
    -- pending: stored, the job waits or runs. imported: every row became a post. rejected:
    -- nothing was imported (the file or some rows are invalid; `summary` says why).
    status      text        NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'imported', 'rejected')),
    -- What the import found, once finished: counts, the headline, the first row errors
    -- (see uploads::Summary).
    summary     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CHECK ((status = 'pending') = (finished_at IS NULL)),
    CHECK ((status = 'pending') = (summary IS NULL)),
    CHECK (status = 'pending' OR content IS NULL)
);
-- A user's imports, newest first (the /uploads list).
CREATE INDEX uploads_user_idx ON uploads (user_id, id DESC);
