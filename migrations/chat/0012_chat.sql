-- Chat rooms, their members and their messages.
CREATE TABLE chat_rooms (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug            text        NOT NULL UNIQUE
                                CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND length(slug) <= 60),
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 80),
    -- Private rooms are open to their members only (the creator invites them); anyone
    -- signed in can join a public one.
    is_private      boolean     NOT NULL DEFAULT false,
    created_by      bigint      REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Touched by every new message, under the row lock that orders the room's messages.
    last_message_at timestamptz
);

CREATE TABLE chat_members (
    room_id    bigint      NOT NULL REFERENCES chat_rooms (id) ON DELETE CASCADE,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    invited_by bigint      REFERENCES users (id) ON DELETE SET NULL,
    joined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX chat_members_user_idx ON chat_members (user_id);

-- Messages. Within a room, ids grow in commit order: a sender takes the room's row lock
-- before inserting, so a client that resumes "after id N" never misses a message that got a
-- smaller id but committed later.
CREATE TABLE chat_messages (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id    bigint      NOT NULL REFERENCES chat_rooms (id) ON DELETE CASCADE,
    author_id  bigint      REFERENCES users (id) ON DELETE SET NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    edited_at  timestamptz,
    -- Deleted messages keep their place in the room (shown as deleted) and lose their text.
    deleted_at timestamptz,
    deleted_by bigint      REFERENCES users (id) ON DELETE SET NULL,
    CHECK (CASE WHEN deleted_at IS NULL THEN length(body) BETWEEN 1 AND 2000 ELSE body = '' END)
);
-- The last 50 on join, older pages on scroll, and "after id N" on resume.
CREATE INDEX chat_messages_room_idx ON chat_messages (room_id, id DESC);
-- The per-user send rate limit counts a user's recent messages.
CREATE INDEX chat_messages_author_idx ON chat_messages (author_id, created_at DESC);

-- Every instance starts with a public lobby.
INSERT INTO chat_rooms (slug, name) VALUES ('lobby', 'Lobby');
