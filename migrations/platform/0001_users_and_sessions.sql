-- Accounts, server-side sessions and login throttling.
--
-- Users sign in with a username; uniqueness is case-insensitive (so "Ada" and "ada" are one
-- account) through an index on lower(username) rather than the citext extension, which keeps
-- the schema working on servers without contrib modules installed.
CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text        NOT NULL CHECK (username ~ '^[A-Za-z0-9_.-]{3,32}$'),
    -- An argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash).
    password_hash text        NOT NULL,
    is_admin      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));

-- A signed-in browser. The cookie holds a random token; only its SHA-256 is stored, so a leaked
-- copy of this table cannot be replayed as cookies.
CREATE TABLE sessions (
    token_hash   bytea       PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    user_agent   text
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
-- The periodic sweeper deletes expired rows by this index.
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

-- Failed login attempts, one row each. Kept in the database rather than in process memory so
-- that every instance sharing the database enforces one limit per account and per address.
CREATE TABLE login_failures (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- lower(username) as typed, whether or not such an account exists.
    username     text        NOT NULL,
    client_addr  inet        NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_username_idx ON login_failures (username, failed_at);
CREATE INDEX login_failures_client_addr_idx ON login_failures (client_addr, failed_at);
