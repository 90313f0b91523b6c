-- The guestbook's entries. Each one waits for the moderation job ('pending'), which approves
-- it (shown on /guestbook) or rejects it (deleted by the guestbook-purge schedule a day later).
CREATE TABLE guestbook_entries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 60),
    message text NOT NULL CHECK (char_length(message) BETWEEN 1 AND 2000),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    created_at timestamptz NOT NULL DEFAULT now(),
    moderated_at timestamptz
);

-- The page lists the newest approved entries; the purge finds old rejected ones.
CREATE INDEX guestbook_entries_approved ON guestbook_entries (id DESC) WHERE status = 'approved';
CREATE INDEX guestbook_entries_rejected ON guestbook_entries (moderated_at) WHERE status = 'rejected';
