//! Rooms and who may open them; the message shape pages and sockets share.

use serde::Serialize;
use sqlx::PgExecutor;
use time::OffsetDateTime;

use crate::{channels::GroupName, web::auth::User};

/// A room, as its page and its socket see it.
#[derive(Debug, Clone)]
pub struct Room {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub is_private: bool,
}

impl Room {
    /// The channel-layer group of the room's open sockets.
    pub fn group(&self) -> GroupName {
        GroupName::parse(format!("chat.room.{}", self.id))
            .expect("a group name made of a prefix and a number is valid")
    }
}

/// The room at `slug` if `user` may open it: anyone signed in may open a public room; a
/// private one is for its members (and administrators, who moderate). `None` both when there
/// is no such room and when it is private to others: every route answers the two alike, so a
/// private room's name cannot be confirmed by asking for it. One statement either way: no
/// second round trip for the membership check sets a private room apart by its timing.
pub async fn open(db: &sqlx::PgPool, slug: &str, user: &User) -> Result<Option<Room>, sqlx::Error> {
    sqlx::query_as!(
        Room,
        "SELECT r.id, r.slug, r.name, r.is_private
           FROM chat_rooms r
          WHERE r.slug = $1
            AND (NOT r.is_private OR $2
                 OR EXISTS (SELECT 1 FROM chat_members m WHERE m.room_id = r.id AND m.user_id = $3))",
        slug,
        user.is_admin,
        user.id
    )
    .fetch_optional(db)
    .await
}

/// A message as clients receive it. Deleted messages keep their place without their text.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub id: i64,
    pub author_id: Option<i64>,
    pub author: Option<String>,
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub edited: bool,
    pub deleted: bool,
}

/// Up to `limit` messages of a room before message `before` (or the newest), oldest first.
pub async fn before<'e>(
    db: impl PgExecutor<'e>,
    room_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<ChatMessage>, sqlx::Error> {
    let mut messages = sqlx::query_as!(
        ChatMessage,
        r#"SELECT m.id, m.author_id, u.username AS "author?", m.body, m.created_at,
                  m.edited_at IS NOT NULL AS "edited!", m.deleted_at IS NOT NULL AS "deleted!"
             FROM chat_messages m LEFT JOIN users u ON u.id = m.author_id
            WHERE m.room_id = $1 AND m.id < coalesce($2, 9223372036854775807)
            ORDER BY m.id DESC LIMIT $3"#,
        room_id,
        before,
        limit
    )
    .fetch_all(db)
    .await?;
    messages.reverse();
    Ok(messages)
}

/// Up to `limit` messages of a room after message `after`, oldest first: what a client that
/// saw `after` missed.
pub async fn after<'e>(
    db: impl PgExecutor<'e>,
    room_id: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<ChatMessage>, sqlx::Error> {
    sqlx::query_as!(
        ChatMessage,
        r#"SELECT m.id, m.author_id, u.username AS "author?", m.body, m.created_at,
                  m.edited_at IS NOT NULL AS "edited!", m.deleted_at IS NOT NULL AS "deleted!"
             FROM chat_messages m LEFT JOIN users u ON u.id = m.author_id
            WHERE m.room_id = $1 AND m.id > $2
            ORDER BY m.id LIMIT $3"#,
        room_id,
        after,
        limit
    )
    .fetch_all(db)
    .await
}

/// The `@name` mentions in a message body, lower-cased, each once.
pub fn mentions(body: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (i, _) in body.match_indices('@') {
        // An @ inside a word (an address like a@b.c) is not a mention.
        if body[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric())
        {
            continue;
        }
        let name: String = body[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            .collect();
        let name = name.trim_end_matches(['.', '-']).to_ascii_lowercase();
        if (3..=32).contains(&name.len()) && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_found_once_and_not_in_addresses() {
        assert_eq!(
            mentions("hi @Ada and @bob.smith. @ada again, mail me at x@y.com, @no"),
            vec!["ada", "bob.smith"]
        );
        assert!(mentions("nobody here").is_empty());
    }
}
