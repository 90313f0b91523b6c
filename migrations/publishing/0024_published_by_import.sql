-- Imported posts are not announced (issue #32): an import brings existing writing over, so
-- neither the "published" mail, nor subscribers' notifications, nor the daily digest tell anyone
-- about the posts it publishes. The digest finds the day's posts by `published_at`, which an
-- import sets like the Publish button does; this marks the publications an import made.
--
-- Set by the import, cleared by the editor's Publish: an imported draft published later by its
-- author is announced like any other post, and so is an imported post unpublished and published
-- again. A constant default: adding the column rewrites nothing.
--
-- Forward-only, like every migration here.

ALTER TABLE posts ADD COLUMN published_by_import boolean NOT NULL DEFAULT false;
