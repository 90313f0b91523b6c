-- Collaborative documents: a Yjs/yrs CRDT per document, stored as a compacted snapshot plus
-- the updates that arrived since.
CREATE TABLE documents (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title        text        NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    owner_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The whole CRDT state (a Yjs v1 update) as of the last compaction; empty for a new
    -- document. The body is the Y.Text named "body".
    snapshot     bytea       NOT NULL DEFAULT '\x0000',
    -- The body's plain text as of the last compaction, for lists and previews.
    body_text    text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    compacted_at timestamptz
);
CREATE INDEX documents_owner_idx ON documents (owner_id);

-- Who else may open a document: editors change it, readers only watch. The owner is not
-- listed here; owning implies editing and managing members.
CREATE TABLE document_members (
    document_id bigint      NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    can_edit    boolean     NOT NULL,
    added_by    bigint      REFERENCES users (id) ON DELETE SET NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, user_id)
);
CREATE INDEX document_members_user_idx ON document_members (user_id);

-- Updates as they arrive, one row per client update. CRDT updates commute and are
-- idempotent, so their order here does not matter: a reader applies the snapshot and every
-- row it sees. Compaction folds the rows it read into the snapshot and deletes exactly those
-- rows (by id, never "id <= n", so a row whose transaction commits late is never lost).
CREATE TABLE document_updates (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id bigint      NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    author_id   bigint      REFERENCES users (id) ON DELETE SET NULL,
    data        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX document_updates_document_idx ON document_updates (document_id, id);

-- Named versions: the whole state when it was saved, and its text for the list.
CREATE TABLE document_versions (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id bigint      NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    state       bytea       NOT NULL,
    body_text   text        NOT NULL,
    created_by  bigint      REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX document_versions_document_idx ON document_versions (document_id, id DESC);
