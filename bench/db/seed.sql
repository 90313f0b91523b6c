-- Copied unchanged from the reference peer (../shared/peers, benchmark protocol v1) so bench/ is self-contained.
SET client_min_messages = warning;
-- Deterministic seed for the peer benchmark: 10,000 blog posts.
-- Pure SQL (no RNG): every value is a function of the row id, so any
-- implementation that runs this file gets byte-identical data.
CREATE TABLE IF NOT EXISTS bench_posts (
    id           integer PRIMARY KEY,
    title        text        NOT NULL,
    author_name  text        NOT NULL,
    body         text        NOT NULL,
    published_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS bench_posts_published_at_idx ON bench_posts (published_at DESC);

DO $$
BEGIN
  IF (SELECT count(*) FROM bench_posts) <> 10000 THEN
    TRUNCATE bench_posts;
    WITH w AS (
      SELECT ARRAY['async','buffer','cache','daemon','engine','fiber','graph','heap','index','journal',
                   'kernel','lambda','mutex','node','object','packet','queue','router','socket','thread',
                   'vector','worker','yield','zero','batch','commit','driver','event','frame','gateway',
                   'header','latency','module','network','parser','runtime','schema','stream','token','upstream'] AS a,
             ARRAY['Ada Lovelace','Alan Turing','Grace Hopper','Edsger Dijkstra','Barbara Liskov',
                   'Donald Knuth','Margaret Hamilton','Ken Thompson','Dennis Ritchie','Frances Allen',
                   'John McCarthy','Leslie Lamport','Radia Perlman','Tony Hoare','Niklaus Wirth',
                   'Adele Goldberg','Butler Lampson','Shafi Goldwasser','Robin Milner','Sophie Wilson'] AS authors
    )
    INSERT INTO bench_posts (id, title, author_name, body, published_at)
    SELECT i,
           initcap(a[1 + (i * 7) % 40]) || ' ' || a[1 + (i * 13) % 40] || ' and the ' || a[1 + (i * 31) % 40] || ' #' || i,
           authors[1 + (i * 17) % 20],
           left((SELECT string_agg(a[1 + ((i * 31 + j * 17 + j * j) % 40)], ' ' ORDER BY j)
                   FROM generate_series(0, 99) AS j), 500),
           timestamptz '2024-01-01 00:00:00+00' + i * interval '53 minutes' + ((i * 7919) % 1800) * interval '1 second'
    FROM generate_series(1, 10000) AS i, w;
    ANALYZE bench_posts;
  END IF;
END $$;
