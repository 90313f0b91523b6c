-- The shared tier of the cache (src/cache/): one row per key, shared by every instance.
--
-- UNLOGGED: writes cost no WAL and the table survives process restarts; after a Postgres crash
-- it comes back empty, which is what a cache may do.
CREATE UNLOGGED TABLE cache_entries (
    -- The full key: `<prefix>:<version>:<key>`.
    key text PRIMARY KEY,
    -- serde_json bytes for values, or a stored HTTP response for the page cache.
    value bytea NOT NULL,
    -- NULL: never expires.
    expires_at timestamptz,
    -- Tags for invalidating many entries at once (the page cache's `posts`, ...).
    tags text[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The sweeper: expired entries first, then the oldest while the table is over its size.
CREATE INDEX cache_entries_expires ON cache_entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX cache_entries_updated ON cache_entries (updated_at);
-- `invalidate_tag`.
CREATE INDEX cache_entries_tags ON cache_entries USING gin (tags);
