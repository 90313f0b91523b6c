//! Documents as rows: who may open one and with what rights, reading the CRDT state back
//! from its snapshot and updates, and storing an update.

use sqlx::{PgConnection, PgExecutor, PgPool};

use super::crdt::{CrdtError, State};
use crate::{channels::GroupName, web::auth::User};

/// A document as pages and sockets see it.
#[derive(Debug, Clone)]
pub struct Document {
    pub id: i64,
    pub title: String,
    pub owner_id: i64,
}

impl Document {
    /// The channel-layer group of the document's open sockets.
    pub fn group(&self) -> GroupName {
        group(self.id)
    }
}

pub fn group(document_id: i64) -> GroupName {
    GroupName::parse(format!("docs.{document_id}"))
        .expect("a group name made of a prefix and a number is valid")
}

/// What a user may do with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Edit,
    /// Edit, and manage members, rename and delete.
    Own,
}

impl Access {
    pub fn can_edit(self) -> bool {
        self != Self::Read
    }

    pub fn is_owner(self) -> bool {
        self == Self::Own
    }
}

/// The document `id` and what `user` may do with it; `None` when it does not exist or the
/// user is neither its owner nor a member (outsiders are not told which).
pub async fn open(
    db: &PgPool,
    id: i64,
    user: &User,
) -> Result<Option<(Document, Access)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT d.id, d.title, d.owner_id, m.can_edit AS "can_edit?"
             FROM documents d
             LEFT JOIN document_members m ON m.document_id = d.id AND m.user_id = $2
            WHERE d.id = $1"#,
        id,
        user.id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|row| {
        let access = if row.owner_id == user.id {
            Access::Own
        } else {
            match row.can_edit {
                Some(true) => Access::Edit,
                Some(false) => Access::Read,
                None => return None,
            }
        };
        let document = Document {
            id: row.id,
            title: row.title,
            owner_id: row.owner_id,
        };
        Some((document, access))
    }))
}

/// Why a stored document cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("document {id} holds data that is not a Yjs update")]
    Corrupt {
        id: i64,
        #[source]
        source: CrdtError,
    },
}

/// The document's whole state: its snapshot and every update stored since.
pub async fn load(db: impl PgExecutor<'_>, id: i64) -> Result<State, LoadError> {
    // One statement, so it sees one snapshot of both tables: a compaction that commits
    // meanwhile (new snapshot, its updates deleted) is seen entirely or not at all. The
    // snapshot first, then the updates by id: the order they were checked in, one at a time
    // under the document's lock (`State::from_updates` says why the order matters). Heap
    // order is not it once a compaction's deletes free space for new rows.
    let parts = sqlx::query_scalar!(
        r#"SELECT data AS "data!" FROM (
               SELECT snapshot AS data, 0::bigint AS ord FROM documents WHERE id = $1
               UNION ALL
               SELECT data, id FROM document_updates WHERE document_id = $1
           ) parts
           ORDER BY ord"#,
        id
    )
    .fetch_all(db)
    .await?;
    State::from_updates(parts.iter().map(Vec::as_slice))
        .map_err(|source| LoadError::Corrupt { id, source })
}

/// Takes the document's write lock until the caller's transaction ends, so that the state an
/// update from a client is checked against (`load` after this) is the one it joins: two
/// updates checked at once could each pass alone and break the document together. A
/// compaction (it updates the row) waits for it too. `NO KEY UPDATE` because the updates'
/// foreign key takes `KEY SHARE`, which it lets through. Returns false when the document is
/// gone.
pub async fn lock_for_append(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    let found = sqlx::query_scalar!(
        "SELECT id FROM documents WHERE id = $1 FOR NO KEY UPDATE",
        id
    )
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

/// Stores one update (already checked to decode) in the caller's transaction.
pub async fn append(
    conn: &mut PgConnection,
    document_id: i64,
    author_id: i64,
    data: &[u8],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "INSERT INTO document_updates (document_id, author_id, data) VALUES ($1, $2, $3)
         RETURNING id",
        document_id,
        author_id,
        data
    )
    .fetch_one(conn)
    .await
}

/// A user's colour for carets and the editor list: fixed per user, distinct for neighbours.
pub fn colour(user_id: i64) -> &'static str {
    const PALETTE: [&str; 10] = [
        "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#f032e6", "#9a6324",
        "#800000", "#000075",
    ];
    PALETTE[user_id.rem_euclid(PALETTE.len() as i64) as usize]
}
