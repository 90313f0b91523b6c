-- Email verification and single-use mail links (issue #30, hole 3 and the owner's way in for
-- hole 4). The mail rate limits of the same change are the mail app's own file
-- (mail/0018_mail_quotas.sql). Also: posts.publish_count no longer keys the "your post is
-- published" mail; a post is announced once (see publishing::jobs::PostPublished).

-- When the user's current address was verified; NULL while it is not. Changing the address
-- sets it back to NULL. Hearth mails nothing but the verification link to an address until
-- it is verified (see `mail::Mailer::send_once`), so existing addresses, never verified, get
-- no mail until their owners follow a link.
ALTER TABLE users
    ADD COLUMN email_verified_at timestamptz,
    ADD CONSTRAINT users_verified_email_check CHECK (email_verified_at IS NULL OR email IS NOT NULL);

-- Links sent by mail: "verify this address" and "sign me in". The link holds a random token;
-- only its SHA-256 is stored, so a leaked copy of this table opens nothing. A link works once
-- (used_at) and until expires_at; used and expired rows are kept a day so that following one
-- again gets a clear "already used" / "expired" answer rather than "unknown".
CREATE TABLE email_tokens (
    token_hash bytea       PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    text        NOT NULL CHECK (purpose IN ('verify', 'sign_in')),
    -- The address the link was sent to: a verification link verifies this address only, and
    -- a sign-in link works only while this is still the account's verified address.
    email      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
-- The sweeper deletes old rows by this index.
CREATE INDEX email_tokens_expires_idx ON email_tokens (expires_at);
