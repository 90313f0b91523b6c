-- The channel layer (src/channels/): Postgres carries messages between the `hearth`
-- instances that hold the sockets.
--
-- Every message is one row of `channel_messages`, whatever the number of members of its group;
-- NOTIFY only wakes the readers, which then read the rows after their cursor. So payloads of any
-- size arrive intact, and a reader that lost its connection catches up from its cursor.

-- Ids come from a sequence with CACHE 1, so they are handed out in time order across sessions.
-- The transaction id is assigned *before* the message id: a reader that sees id N committed and
-- id M < N missing then knows that M's transaction had an xid older than its snapshot's xmax,
-- and can tell "still in flight" from "rolled back" by waiting for the xmin horizon to pass that
-- xmax (see `channels::reader`). Without this order, a transaction could take its message id,
-- be descheduled, and get its xid only after the reader had given up on the gap.
CREATE SEQUENCE channel_messages_id_seq CACHE 1;

CREATE FUNCTION channel_next_message_id() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN nextval('channel_messages_id_seq');
END
$$;

CREATE TABLE channel_messages (
    id bigint PRIMARY KEY DEFAULT channel_next_message_id(),
    -- A group name (`is_group`) or the name of one connection's channel.
    target text NOT NULL,
    is_group boolean NOT NULL,
    -- The JSON message as sent, kept as text so that it is decoded once per instance at most.
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE channel_messages_id_seq OWNED BY channel_messages.id;

-- History of one group: `target = $1 AND is_group AND id > $2`.
CREATE INDEX channel_messages_target ON channel_messages (target, id);
-- Pruning by age.
CREATE INDEX channel_messages_created ON channel_messages (created_at);

-- Rows are inserted and deleted in bulk: vacuum early so the reader's index scans stay short.
ALTER TABLE channel_messages SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

-- Groups whose history is kept differently from the default retention
-- (`HEARTH_CHANNEL_RETENTION`): up to `max_messages` messages, none older than `max_age`.
CREATE TABLE channel_group_history (
    group_name text PRIMARY KEY,
    max_age interval NOT NULL CHECK (max_age > interval '0'),
    max_messages integer NOT NULL CHECK (max_messages > 0),
    -- Every message of the group with an id up to this one has been pruned: a client that
    -- resumes from an older id has a gap that cannot be filled.
    pruned_through bigint NOT NULL DEFAULT 0
);

-- The same mark for every other target, pruned by the default retention. One row.
CREATE TABLE channel_prune_mark (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    pruned_through bigint NOT NULL
);
INSERT INTO channel_prune_mark (pruned_through) VALUES (0);

-- Instances alive: each heartbeats its row; a row whose heartbeat stopped belongs to a dead
-- instance, and its presence entries are removed (with leave events) by whoever notices first.
CREATE TABLE channel_instances (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Who is connected to a group, across instances. One row per (group, connection).
CREATE TABLE channel_presence (
    group_name text NOT NULL,
    channel text NOT NULL,
    instance text NOT NULL,
    user_id bigint,
    username text,
    meta jsonb NOT NULL DEFAULT '{}',
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, channel)
);
CREATE INDEX channel_presence_instance ON channel_presence (instance);
