-- The mail outbox: every message the app sends, whether through SMTP or into the dev mailbox.
--
-- Jobs insert a message with an idempotency key (ON CONFLICT DO NOTHING), so a retried job
-- finds the row it wrote before instead of writing a second one. Delivery claims the row
-- (claimed_at) before handing it to the transport and marks it sent afterwards: a message is
-- sent at most once, even if the process dies between the two (it then stays claimed and
-- unsent, visible to admins, rather than being sent twice).
CREATE TABLE outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE CHECK (length(idempotency_key) <= 200),
    user_id         bigint      REFERENCES users (id) ON DELETE SET NULL,
    to_address      text        NOT NULL,
    subject         text        NOT NULL,
    body            text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    claimed_at      timestamptz,
    sent_at         timestamptz,
    -- 'smtp' or 'dev' (the in-app dev mailbox), set when sent.
    transport       text        CHECK (transport IN ('smtp', 'dev')),
    last_error      text
);
-- The mailbox page, newest first.
CREATE INDEX outbox_created_idx ON outbox (created_at DESC, id DESC);
