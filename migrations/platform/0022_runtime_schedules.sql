-- Schedules managed at run time (issue #33), as django-celery-beat keeps them: added, changed,
-- paused, resumed and removed from `/ops` and `hearth schedules ...` while instances run,
-- beside the schedules declared in code (`App::schedules`) and in `HEARTH_SCHEDULES`.
--
-- `job_schedules` (0002) already holds one row per schedule with the last occurrence it
-- enqueued; the maintenance leader locks that row to enqueue each occurrence once across
-- instances. A schedule defined at run time keeps its definition in the same row, so the same
-- lock covers it: a row whose `kind` is set is a run-time schedule, a row without one only
-- keeps the state of a schedule declared in code.
--
-- Forward-only, like every migration here.

ALTER TABLE job_schedules
    -- Paused schedules enqueue nothing; resuming starts counting again from that moment
    -- (occurrences skipped while paused are not caught up). Applies to both sources.
    ADD COLUMN paused        boolean     NOT NULL DEFAULT false,
    -- When the schedule last enqueued a job (an occurrence or "Run now") and which job. Not
    -- `last_occurrence`: that starts as the moment the schedule was first seen, which is not a
    -- run.
    ADD COLUMN last_fired_at timestamptz,
    ADD COLUMN last_job_id   bigint,
    -- The definition of a run-time schedule; all NULL for a schedule declared in code.
    ADD COLUMN kind          text,
    -- Exactly one of a cron expression (with its IANA time zone) and an interval.
    ADD COLUMN cron          text,
    ADD COLUMN time_zone     text,
    ADD COLUMN interval_ms   bigint      CHECK (interval_ms >= 1000),
    ADD COLUMN args          jsonb,
    ADD COLUMN queue         text,
    ADD COLUMN priority      smallint,
    ADD COLUMN max_attempts  integer     CHECK (max_attempts >= 1),
    -- The hard timeout of each run, NULL for none (the kind's default is copied when added).
    ADD COLUMN timeout_ms    integer     CHECK (timeout_ms >= 1),
    -- What to do with occurrences missed while no instance ran: 'all' (each of them, at most
    -- the latest 100), 'latest' (the latest one only) or 'none'.
    ADD COLUMN catch_up      text        CHECK (catch_up IN ('all', 'latest', 'none')),
    ADD COLUMN updated_at    timestamptz,
    ADD CONSTRAINT job_schedules_definition_whole CHECK (
        kind IS NULL
        OR (args IS NOT NULL AND queue IS NOT NULL AND priority IS NOT NULL
            AND max_attempts IS NOT NULL AND catch_up IS NOT NULL
            AND (cron IS NULL) <> (interval_ms IS NULL)
            AND (cron IS NULL) = (time_zone IS NULL))
    );
