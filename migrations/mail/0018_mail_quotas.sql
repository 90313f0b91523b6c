-- Mail rate limits (issue #30, hole 3). Shipped in one file with accounts' email verification
-- until the migrations were split per app (issue #29); a database migrated before the split
-- has this as part of its version 18.

-- Mail rate limits: how much of a budget (`scope`: 'to:<address>', 'verify:<user id>', ...)
-- was used in one hour-long window. Taken with one INSERT ... ON CONFLICT DO UPDATE ... WHERE
-- used < limit, so concurrent senders on any number of instances never exceed the limit.
CREATE TABLE mail_quotas (
    scope        text        NOT NULL CHECK (length(scope) <= 300),
    window_start timestamptz NOT NULL,
    used         integer     NOT NULL CHECK (used > 0),
    PRIMARY KEY (scope, window_start)
);
-- The sweeper deletes past windows by this index.
CREATE INDEX mail_quotas_window_idx ON mail_quotas (window_start);
