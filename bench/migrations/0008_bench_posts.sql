-- Data of the benchmark routes (src/bench/routes.rs, served only with HEARTH_BENCH_ROUTES=1):
-- the protocol's 10,000 deterministic posts, filled in by the server when those routes are on.
-- Empty, and never read, in production.
CREATE TABLE bench_posts (
    id integer PRIMARY KEY,
    title text NOT NULL,
    author_name text NOT NULL,
    body text NOT NULL,
    published_at timestamptz NOT NULL
);
CREATE INDEX bench_posts_published_at_idx ON bench_posts (published_at DESC);
