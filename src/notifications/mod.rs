//! Notifications app: per-user notifications stored in Postgres, an unread count that updates
//! live in the nav over server-sent events, and the notifications page.
//!
//! Other apps create notifications with [`notify`] inside their own transaction; the row and
//! its live `notification.new` message (sent with [`ChannelLayer::group_send_in`]) exist only
//! if that transaction commits. Every message carries the user's absolute unread count, so a
//! client that missed some, or sees them out of order, still ends on the right number. A
//! browser reconnecting with `Last-Event-ID` is replayed what it missed from the channel
//! layer's history; past the history it gets a `hearth.gap` event and reloads the count.

mod pages;

use axum::routing::{get, post};
use serde::Serialize;
use sqlx::{Postgres, Transaction};

use crate::channels::{ChannelError, ChannelLayer, GroupName};

use crate::{App, Routes};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/notifications");

/// The notifications app.
pub fn app() -> App {
    App::new("notifications")
        .migrations(&MIGRATIONS)
        .routes(|_| Ok(routes()))
}

fn routes() -> Routes {
    Routes::new()
        .route("/notifications", get(pages::list))
        .route("/notifications/stream", get(pages::stream))
        .route("/notifications/read-all", post(pages::mark_all_read))
        .route("/notifications/{id}/read", post(pages::mark_read))
        .route("/api/notifications/unread", get(pages::unread_count))
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PostPublished,
    Mention,
    Import,
    /// Invited to a private chat room, or added to a document.
    Invitation,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::PostPublished => "post_published",
            Self::Mention => "mention",
            Self::Import => "import",
            Self::Invitation => "invitation",
        }
    }
}

/// A notification to create.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    pub user_id: i64,
    pub kind: Kind,
    pub title: &'a str,
    /// Where clicking it leads: a path on this site.
    pub url: &'a str,
    /// What it is about (`post:42`); a second notification with the same key for the same
    /// user is not created, so retried jobs do not notify twice.
    pub dedupe_key: &'a str,
}

/// The live message a user's open pages receive.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
enum Live<'a> {
    #[serde(rename = "notification.new")]
    New {
        id: i64,
        kind: &'a str,
        title: &'a str,
        url: &'a str,
        unread: i64,
    },
    #[serde(rename = "notification.read")]
    Read { unread: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// The group a user's open pages listen on.
pub fn user_group(user_id: i64) -> GroupName {
    GroupName::parse(format!("notifications.user.{user_id}"))
        .expect("a group name made of a prefix and a number is valid")
}

/// Creates `notification` in `tx` and queues its live message for commit. Returns the new id,
/// or `None` when the user already has a notification with this dedupe key.
pub async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    channels: &ChannelLayer,
    notification: &NewNotification<'_>,
) -> Result<Option<i64>, NotifyError> {
    lock_user(tx, notification.user_id).await?;
    let Some(id) = sqlx::query_scalar!(
        "INSERT INTO notifications (user_id, kind, title, url, dedupe_key)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id, dedupe_key) DO NOTHING
         RETURNING id",
        notification.user_id,
        notification.kind.as_str(),
        notification.title,
        notification.url,
        notification.dedupe_key,
    )
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    let unread = unread(&mut **tx, notification.user_id).await?;
    let message = Live::New {
        id,
        kind: notification.kind.as_str(),
        title: notification.title,
        url: notification.url,
        unread,
    };
    channels
        .group_send_in(tx, &user_group(notification.user_id), &message)
        .await?;
    Ok(Some(id))
}

/// Serialises the transactions that change a user's notifications until `tx` ends, so that
/// the unread count each one sends is the count after it, not a count that misses another's
/// concurrent change. Callers that lock several users lock them in ascending id order.
pub(crate) async fn lock_user(
    tx: &mut Transaction<'_, Postgres>,
    user_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('hearth.notifications', $1))",
        user_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How many unread notifications `user_id` has.
pub async fn unread<'e>(db: impl sqlx::PgExecutor<'e>, user_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM notifications WHERE user_id = $1 AND read_at IS NULL"#,
        user_id
    )
    .fetch_one(db)
    .await
}
