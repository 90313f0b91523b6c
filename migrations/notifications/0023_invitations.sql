-- Invitations (issue #32): a user invited to a private chat room, or added to a document, is
-- told in the app, with a link to what they can now open. A new kind of notification, so the
-- kinds' CHECK (0011) is replaced by one that allows it; a CHECK cannot be changed in place.
--
-- Forward-only, like every migration here.

ALTER TABLE notifications DROP CONSTRAINT notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
    CHECK (kind IN ('post_published', 'mention', 'import', 'invitation'));
