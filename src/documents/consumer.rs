//! The document socket, `/ws/docs/{id}`: the Yjs sync protocol over JSON frames, on the
//! channel layer.
//!
//! A client connects and gets `hello` (the document, its rights, who is editing). It then
//! sends `sync` with its state vector; the server rebuilds the document from the database and
//! answers with what the client lacks and its own vector, from which the client sends back
//! what the server lacks — the edits it made offline. After that each local edit is an
//! `update`: stored and broadcast to the document's group in one transaction (delivered only
//! if stored), acknowledged with its `seq`. Editors on other instances get it through the
//! channel layer. Binary Yjs data travels as base64.
//!
//! The socket joins the group before the client syncs, so an update stored between the sync's
//! read and the join cannot be missed; one that arrives both ways is applied twice, which a
//! CRDT ignores.
//!
//! Carets (`awareness`) go to the group without being stored, from editors only, in the typed
//! and bounded shape of [`super::awareness`]; presence join and leave events tell clients when
//! an editor arrives or goes. When the owner changes someone's rights, the
//! group gets `doc.access` and that user's sockets re-read their rights: a removed member is
//! closed, a demoted one can no longer send updates.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{
    awareness::{self, Cursor},
    compact::{COMPACT_EVERY, CompactDocument},
    document::{self, Access, Document},
};
use crate::{
    channels::{Delivery, PresenceUser},
    web::{
        auth::User,
        ws::{Connection, Consumer, ConsumerError, close_code},
    },
};

/// The largest update one frame may carry, decoded. A paste of a long text is one update.
pub const MAX_UPDATE: usize = 512 * 1024;
/// Awareness frames a socket may send per second; more are dropped (carets only).
const AWARENESS_PER_SECOND: u32 = 20;

pub struct DocConsumer {
    document: Document,
    access: Access,
    user: User,
    /// Updates stored since this socket last asked for a compaction.
    stored: u32,
    awareness_window: (Instant, u32),
}

#[derive(Deserialize)]
pub struct Params {
    id: String,
}

/// Frames from the client.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Incoming {
    Sync {
        sv: String,
    },
    Update {
        update: String,
        seq: u64,
    },
    /// The caret, parsed into [`Cursor`] before anything is passed on (`null`: none).
    Awareness {
        #[serde(default)]
        cursor: serde_json::Value,
    },
}

/// Channel-layer messages to the document's group.
#[derive(Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "doc.update")]
    Update { from: String },
    #[serde(rename = "doc.awareness")]
    Awareness { channel: String },
    /// Someone's rights changed (`user_id`), or everyone's (`None`: the document was deleted).
    #[serde(rename = "doc.access")]
    Access { user_id: Option<i64> },
    #[serde(rename = "doc.title")]
    Title {},
    #[serde(rename = "doc.restored")]
    Restored {},
    #[serde(rename = "presence.join")]
    PresenceJoin {},
    #[serde(rename = "presence.leave")]
    PresenceLeave {},
}

/// Broadcasts to the document's group, also sent by the pages (title, restore, access).
#[derive(Serialize)]
#[serde(tag = "type")]
pub enum Broadcast<'a> {
    #[serde(rename = "doc.update")]
    Update { update: &'a str, from: &'a str },
    #[serde(rename = "doc.awareness")]
    Awareness {
        channel: &'a str,
        user_id: i64,
        username: &'a str,
        color: &'a str,
        cursor: Option<&'a Cursor>,
    },
    #[serde(rename = "doc.access")]
    Access { user_id: Option<i64> },
    #[serde(rename = "doc.title")]
    Title { title: &'a str },
    #[serde(rename = "doc.restored")]
    Restored { version: &'a str, by: &'a str },
}

/// Frames to one client.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outgoing<'a> {
    Hello {
        doc: DocInfo<'a>,
        you: Me<'a>,
        presence: Vec<Present>,
    },
    Sync {
        update: String,
        sv: String,
    },
    Ack {
        seq: u64,
    },
    /// Rights changed while connected.
    Access {
        can_edit: bool,
    },
    Error {
        code: &'a str,
        message: String,
    },
}

#[derive(Serialize)]
struct DocInfo<'a> {
    id: i64,
    title: &'a str,
}

#[derive(Serialize)]
struct Me<'a> {
    id: i64,
    username: &'a str,
    color: &'a str,
    can_edit: bool,
}

#[derive(Serialize)]
struct Present {
    channel: String,
    user_id: Option<i64>,
    username: Option<String>,
    color: Option<String>,
}

fn error(ctx: &mut Connection, code: &str, message: impl Into<String>) {
    ctx.send_json(&Outgoing::Error {
        code,
        message: message.into(),
    });
}

fn load_failed(e: document::LoadError) -> ConsumerError {
    ConsumerError::Internal(e.into())
}

impl Consumer for DocConsumer {
    type Params = Params;
    type Incoming = Incoming;
    type Event = Event;

    #[tracing::instrument(skip_all, fields(document = %params.id))]
    async fn connect(ctx: &mut Connection, params: Params) -> Result<Self, ConsumerError> {
        let user = ctx
            .user()
            .cloned()
            .ok_or_else(ConsumerError::unauthorized)?;
        let not_found = || ConsumerError::close(close_code::NOT_FOUND, "no such document");
        let id: i64 = params.id.parse().map_err(|_| not_found())?;
        let db = ctx.state().db.clone();
        let (document, access) = document::open(&db, id, &user)
            .await?
            .ok_or_else(not_found)?;
        let group = document.group();
        let color = document::colour(user.id);
        let me = PresenceUser {
            id: user.id,
            username: user.username.clone(),
        };
        ctx.subscription()
            .join_with_presence(&group, Some(me), serde_json::json!({ "color": color }))
            .await
            .map_err(|e| ConsumerError::Internal(e.into()))?;
        let presence = ctx
            .channels()
            .presence(&group)
            .await
            .map_err(|e| ConsumerError::Internal(e.into()))?
            .into_iter()
            .map(|p| Present {
                color: p.meta.get("color").and_then(|c| c.as_str()).map(Into::into),
                channel: p.channel,
                user_id: p.user_id,
                username: p.username,
            })
            .collect();
        ctx.send_json(&Outgoing::Hello {
            doc: DocInfo {
                id: document.id,
                title: &document.title,
            },
            you: Me {
                id: user.id,
                username: &user.username,
                color,
                can_edit: access.can_edit(),
            },
            presence,
        });
        Ok(Self {
            document,
            access,
            user,
            stored: 0,
            awareness_window: (Instant::now(), 0),
        })
    }

    #[tracing::instrument(skip_all, fields(document = self.document.id, user_id = self.user.id))]
    async fn receive(
        &mut self,
        ctx: &mut Connection,
        message: Incoming,
    ) -> Result<(), ConsumerError> {
        match message {
            Incoming::Sync { sv } => self.sync(ctx, &sv).await,
            Incoming::Update { update, seq } => self.update(ctx, update, seq).await,
            Incoming::Awareness { cursor } => self.awareness(ctx, cursor).await,
        }
    }

    async fn event(
        &mut self,
        ctx: &mut Connection,
        event: Event,
        delivery: &Delivery,
    ) -> Result<(), ConsumerError> {
        let mine = ctx.channel_name().as_str();
        match event {
            // A client is never sent its own edits or caret back.
            Event::Update { from } | Event::Awareness { channel: from } if from == mine => {}
            Event::Access { user_id } => {
                if user_id.is_none_or(|id| id == self.user.id) {
                    self.recheck_access(ctx).await?;
                }
            }
            _ => ctx.forward(delivery),
        }
        Ok(())
    }

    async fn disconnect(&mut self, ctx: &mut Connection) {
        if self.stored > 0 {
            self.request_compaction(ctx).await;
        }
    }
}

impl DocConsumer {
    /// Answers a client's state vector with what it lacks and the server's own vector.
    async fn sync(&mut self, ctx: &mut Connection, sv: &str) -> Result<(), ConsumerError> {
        let Ok(vector) = BASE64.decode(sv) else {
            error(
                ctx,
                "invalid_state_vector",
                "The state vector is not base64.",
            );
            return Ok(());
        };
        let state = document::load(&ctx.state().db, self.document.id)
            .await
            .map_err(load_failed)?;
        match state.diff(&vector) {
            Ok(update) => ctx.send_json(&Outgoing::Sync {
                update: BASE64.encode(update),
                sv: BASE64.encode(state.vector()),
            }),
            Err(e) => error(ctx, "invalid_state_vector", e.to_string()),
        }
        Ok(())
    }

    /// Stores a client's edit and passes it on, in one transaction.
    async fn update(
        &mut self,
        ctx: &mut Connection,
        encoded: String,
        seq: u64,
    ) -> Result<(), ConsumerError> {
        if !self.access.can_edit() {
            error(
                ctx,
                "read_only",
                "You can read this document but not edit it.",
            );
            return Ok(());
        }
        let Ok(data) = BASE64.decode(&encoded) else {
            error(ctx, "invalid_update", "The update is not base64.");
            return Ok(());
        };
        if data.len() > MAX_UPDATE {
            error(
                ctx,
                "too_large",
                format!(
                    "The update is {} bytes; the limit is {MAX_UPDATE}.",
                    data.len()
                ),
            );
            return Ok(());
        }
        if let Err(e) = super::crdt::check_update(&data) {
            error(ctx, "invalid_update", e.to_string());
            return Ok(());
        }
        let db = ctx.state().db.clone();
        let mut tx = db.begin().await?;
        if !document::lock_for_append(&mut tx, self.document.id).await? {
            return Err(ConsumerError::close(
                close_code::NOT_FOUND,
                "no such document",
            ));
        }
        let current = document::load(&mut *tx, self.document.id)
            .await
            .map_err(load_failed)?;
        if let Err(e) = current.accepts(&data) {
            error(ctx, "invalid_update", e.to_string());
            return Ok(());
        }
        document::append(&mut tx, self.document.id, self.user.id, &data).await?;
        let from = ctx.channel_name().as_str().to_owned();
        ctx.channels()
            .group_send_in(
                &mut tx,
                &self.document.group(),
                &Broadcast::Update {
                    update: &encoded,
                    from: &from,
                },
            )
            .await?;
        tx.commit().await?;
        ctx.send_json(&Outgoing::Ack { seq });
        self.stored += 1;
        if self.stored >= COMPACT_EVERY {
            self.request_compaction(ctx).await;
        }
        Ok(())
    }

    /// Passes an editor's caret and selection on to the other editors. A reader's caret is
    /// not passed on: readers watch, and a caret is a broadcast to everyone in the document.
    async fn awareness(
        &mut self,
        ctx: &mut Connection,
        cursor: serde_json::Value,
    ) -> Result<(), ConsumerError> {
        if !self.access.can_edit() {
            error(
                ctx,
                "read_only",
                "You can read this document but not edit it: your caret is not shown.",
            );
            return Ok(());
        }
        let cursor = match awareness::parse(cursor) {
            Ok(cursor) => cursor,
            Err(e) => {
                error(ctx, "invalid_awareness", e);
                return Ok(());
            }
        };
        let (since, count) = &mut self.awareness_window;
        if since.elapsed().as_secs() >= 1 {
            *since = Instant::now();
            *count = 0;
        }
        *count += 1;
        if *count > AWARENESS_PER_SECOND {
            return Ok(());
        }
        self.send_caret(ctx, cursor.as_ref()).await
    }

    async fn send_caret(
        &self,
        ctx: &mut Connection,
        cursor: Option<&Cursor>,
    ) -> Result<(), ConsumerError> {
        let channel = ctx.channel_name().as_str().to_owned();
        let caret = Broadcast::Awareness {
            channel: &channel,
            user_id: self.user.id,
            username: &self.user.username,
            color: document::colour(self.user.id),
            cursor,
        };
        ctx.channels()
            .group_send(&self.document.group(), &caret)
            .await?;
        Ok(())
    }

    /// Re-reads this user's rights after the owner changed them.
    async fn recheck_access(&mut self, ctx: &mut Connection) -> Result<(), ConsumerError> {
        let db = ctx.state().db.clone();
        match document::open(&db, self.document.id, &self.user).await? {
            None => ctx.close(
                close_code::FORBIDDEN,
                "you no longer have access to this document",
            ),
            Some((_, access)) => {
                if access != self.access {
                    self.access = access;
                    ctx.send_json(&Outgoing::Access {
                        can_edit: access.can_edit(),
                    });
                    if !access.can_edit() {
                        // Now a reader: the others stop showing this socket's last caret.
                        self.send_caret(ctx, None).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn request_compaction(&mut self, ctx: &mut Connection) {
        match CompactDocument::request(&ctx.state().db, self.document.id).await {
            Ok(_) => self.stored = 0,
            Err(e) => {
                tracing::warn!(error = %e, document = self.document.id, "cannot enqueue a compaction")
            }
        }
    }
}
