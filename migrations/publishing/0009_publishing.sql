-- Publishing: posts with a draft/published state, readers' subscriptions to authors, and which
-- posts each reader has opened (so the daily digest leaves out what they have already seen).
-- The users' mail settings this change added are the accounts app's own file
-- (accounts/0009_mail_settings.sql) since the migrations were split per app (issue #29).

CREATE TABLE posts (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    author_id          bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The URL of the post, /posts/<slug>; lower-case words joined by hyphens.
    slug               text        NOT NULL UNIQUE
                                   CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND length(slug) <= 80),
    title              text        NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    -- The Markdown as written, and its HTML rendered and sanitised once at save time.
    body               text        NOT NULL CHECK (length(body) <= 100000),
    body_html          text        NOT NULL,
    -- NULL while a draft. Unpublishing sets it back to NULL.
    published_at       timestamptz,
    -- How many times the post was published: part of the idempotency key of the
    -- "your post was published" mail, so a republish mails again but a retried job does not.
    publish_count      integer     NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- The public list: published posts, newest first.
CREATE INDEX posts_published_idx ON posts (published_at DESC) WHERE published_at IS NOT NULL;
-- An author's own posts, drafts included.
CREATE INDEX posts_author_idx ON posts (author_id, updated_at DESC);

CREATE TABLE subscriptions (
    subscriber_id bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    author_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, author_id),
    CHECK (subscriber_id <> author_id)
);
-- Fan-out on publish: the subscribers of one author.
CREATE INDEX subscriptions_author_idx ON subscriptions (author_id);

-- A signed-in reader opened a post page.
CREATE TABLE post_reads (
    user_id bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    post_id bigint      NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    read_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, post_id)
);
