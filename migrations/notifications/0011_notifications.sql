-- In-app notifications, one row per user and event.
CREATE TABLE notifications (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       text        NOT NULL CHECK (kind IN ('post_published', 'mention', 'import')),
    title      text        NOT NULL CHECK (length(title) <= 300),
    url        text        NOT NULL CHECK (url LIKE '/%'),
    -- What the notification is about (e.g. 'post:42'): a retried job inserting it again
    -- conflicts with the first row instead of notifying twice.
    dedupe_key text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    read_at    timestamptz,
    UNIQUE (user_id, dedupe_key)
);
-- The notifications page, newest first.
CREATE INDEX notifications_user_idx ON notifications (user_id, id DESC);
-- The unread count in the nav, on every page view.
CREATE INDEX notifications_unread_idx ON notifications (user_id) WHERE read_at IS NULL;
