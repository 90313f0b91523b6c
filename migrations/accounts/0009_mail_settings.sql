-- A user's mail settings, edited on the accounts app's settings page. Shipped in publishing's
-- file of the same version until the migrations were split per app (issue #29); a database
-- migrated before the split has this as part of its version 9.

-- Where a user's mail goes (optional: without one, notifications stay in the app), and their
-- preference: in-app notifications only, or also the daily digest by mail.
ALTER TABLE users
    ADD COLUMN email          text CHECK (email IS NULL OR (length(email) <= 254 AND email ~ '^[^@\s]+@[^@\s]+$')),
    ADD COLUMN digest_by_mail boolean NOT NULL DEFAULT true;
