//! The guestbook's WebSocket, `/ws/guestbook/`: every open page joins the group [`group`] and
//! hears each verdict as a [`Moderated`] frame (an approved entry with its words, a rejected
//! one by its id alone: its words are not for everyone's screen).
//!
//! A page that has just posted an entry sends `{"watch": <id>}` once connected and gets the
//! entry's status at once: the job may have decided before the socket was open, and since the
//! socket joined the group before reading the status, no verdict falls between the two.
//!
//! [`group`]: crate::group

use hearth::web::ws::{Connection, Consumer, ConsumerError};
use serde::{Deserialize, Serialize, de::IgnoredAny};

use crate::{
    entry::{NewEntry, Status},
    group,
};

/// The frame every page gets for a verdict (and a watching page for its entry's status).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "guestbook.moderated")]
pub struct Moderated {
    pub id: i64,
    pub status: Status,
    /// An approved entry's name and message; nothing of another one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Moderated {
    pub fn new(id: i64, status: Status, entry: &NewEntry) -> Self {
        let shown = status == Status::Approved;
        Self {
            id,
            status,
            name: shown.then(|| entry.name.clone()),
            message: shown.then(|| entry.message.clone()),
        }
    }
}

/// A frame from a page: the entry it posted.
#[derive(Debug, Deserialize)]
pub struct Watch {
    pub watch: i64,
}

/// One open guestbook page.
pub struct Live {
    /// Whether the page asked for an entry's status already: once per socket, so that a
    /// client cannot make it query the database without bound.
    watched: bool,
}

/// What a page is told when it breaks the rules of the socket (the socket stays open).
#[derive(Serialize)]
struct Refused<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: &'a str,
}

impl Consumer for Live {
    /// No route parameters.
    type Params = IgnoredAny;
    type Incoming = Watch;
    /// Verdicts are forwarded to the page as they were sent.
    type Event = IgnoredAny;

    async fn connect(ctx: &mut Connection, _: IgnoredAny) -> Result<Self, ConsumerError> {
        ctx.subscription().join(&group());
        Ok(Self { watched: false })
    }

    async fn receive(&mut self, ctx: &mut Connection, frame: Watch) -> Result<(), ConsumerError> {
        if std::mem::replace(&mut self.watched, true) {
            ctx.send_json(&Refused {
                kind: "error",
                error: "a page watches one entry",
            });
            return Ok(());
        }
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT name, message, status FROM guestbook_entries WHERE id = $1")
                .bind(frame.watch)
                .fetch_optional(&ctx.state().db)
                .await?;
        let Some((name, message, stored)) = row else {
            ctx.send_json(&Refused {
                kind: "error",
                error: "there is no such entry",
            });
            return Ok(());
        };
        let status = Status::parse(&stored)
            .ok_or_else(|| anyhow::anyhow!("entry {} has status {stored:?}", frame.watch))?;
        ctx.send_json(&Moderated::new(
            frame.watch,
            status,
            &NewEntry { name, message },
        ));
        Ok(())
    }
}
