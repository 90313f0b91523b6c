//! The upload form and the list of past imports, the upload page, its event stream and its
//! JSON state. An upload is its owner's only: anyone else gets 404, as if it did not exist.

use askama::Template;
use axum::{
    Extension, Json,
    extract::{
        Multipart, Path, State,
        multipart::{Field, MultipartError},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use serde::Serialize;
use time::OffsetDateTime;

use super::{
    ImportCsv, MaxBytes, RowError, Status, Summary, Update, group, human_size, import::MAX_ROWS,
    thousands,
};
use crate::{
    jobs::Enqueue,
    web::{
        AppState, Layout, WebError,
        auth::RequireLogin,
        error::PublicMessage,
        render,
        sse::{self, LastEventId, StreamSlot},
        templates::ago,
    },
};

/// Past imports the list shows.
const LIST_LIMIT: i64 = 50;

/// An upload with its job, as stored.
struct UploadRow {
    id: i64,
    filename: String,
    size: i64,
    status: String,
    summary: Option<serde_json::Value>,
    created_at: OffsetDateTime,
    job_id: Option<i64>,
    job_state: Option<String>,
    attempt: Option<i32>,
    progress_percent: Option<i16>,
    progress_message: Option<String>,
}

/// An upload as pages show it.
struct UploadView {
    id: i64,
    filename: String,
    size: i64,
    created_at: OffsetDateTime,
    job_id: Option<i64>,
    /// The state the page starts from (the event stream's `import.state`).
    update: Update,
}

impl TryFrom<UploadRow> for UploadView {
    type Error = WebError;

    fn try_from(row: UploadRow) -> Result<Self, WebError> {
        let summary: Option<Summary> = row
            .summary
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| WebError::Internal(anyhow::Error::new(e).context("an upload summary")))?;
        let status = match (row.status.as_str(), row.job_state.as_deref()) {
            ("imported", _) => Status::Imported,
            ("rejected", _) => Status::Rejected,
            (_, Some("available" | "scheduled" | "running")) => Status::Pending,
            // Pending, but the job was discarded, cancelled, or so long ago that it was pruned.
            _ => Status::Failed,
        };
        let (percent, message) = match (status, &summary) {
            (Status::Pending, _) => {
                let percent = row.progress_percent.unwrap_or(0).clamp(0, 100) as u8;
                let message = match (row.job_state.as_deref(), row.progress_message) {
                    (Some("running"), Some(message)) => message,
                    (Some("running"), None) => "Starting…".to_owned(),
                    _ => "Waiting for a worker…".to_owned(),
                };
                (percent, message)
            }
            (_, Some(summary)) => (100, summary.headline.clone()),
            (_, None) => (100, super::FAILED.to_owned()),
        };
        Ok(Self {
            id: row.id,
            filename: row.filename,
            size: row.size,
            created_at: row.created_at,
            job_id: row.job_id,
            update: Update {
                kind: "import.state",
                status,
                attempt: row.attempt.unwrap_or(0),
                percent,
                message,
                summary,
            },
        })
    }
}

impl UploadView {
    fn when(&self) -> String {
        ago(self.created_at)
    }

    fn size(&self) -> String {
        human_size(self.size.unsigned_abs())
    }

    fn status(&self) -> &'static str {
        self.update.status.as_str()
    }

    fn label(&self) -> &'static str {
        match self.update.status {
            Status::Pending => "importing",
            Status::Imported => "imported",
            Status::Rejected => "not imported",
            Status::Failed => "failed",
        }
    }

    fn errors(&self) -> &[RowError] {
        self.update.summary.as_ref().map_or(&[], |s| &s.errors)
    }

    /// Rows with problems beyond those listed.
    fn more_errors(&self) -> usize {
        self.update
            .summary
            .as_ref()
            .map_or(0, |s| s.error_count.saturating_sub(s.errors.len()))
    }
}

async fn find(state: &AppState, user_id: i64, id: i64) -> Result<UploadView, WebError> {
    let row = sqlx::query_as!(
        UploadRow,
        r#"SELECT u.id, u.filename, u.size, u.status, u.summary, u.created_at, u.job_id,
                  j.state AS "job_state?", j.attempt AS "attempt?",
                  j.progress_percent AS "progress_percent?", j.progress_message AS "progress_message?"
             FROM uploads u LEFT JOIN job_statuses j ON j.id = u.job_id
            WHERE u.id = $1 AND u.user_id = $2"#,
        id,
        user_id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or(WebError::NotFound)?;
    row.try_into()
}

#[derive(Template)]
#[template(path = "uploads/list.html")]
struct ListPage {
    layout: Layout,
    uploads: Vec<UploadView>,
    max_bytes: usize,
}

impl ListPage {
    fn max_size(&self) -> String {
        human_size(self.max_bytes as u64)
    }

    fn max_rows(&self) -> String {
        thousands(MAX_ROWS)
    }

    /// What the form says of a file over the limit, before sending it.
    fn too_large(&self) -> String {
        UploadError::TooLarge {
            max: self.max_bytes,
        }
        .to_string()
    }
}

/// The upload form and the user's past imports, newest first.
#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(max): Extension<MaxBytes>,
    login: RequireLogin,
    layout: Layout,
) -> Result<Response, WebError> {
    let rows = sqlx::query_as!(
        UploadRow,
        r#"SELECT u.id, u.filename, u.size, u.status, u.summary, u.created_at, u.job_id,
                  j.state AS "job_state?", j.attempt AS "attempt?",
                  j.progress_percent AS "progress_percent?", j.progress_message AS "progress_message?"
             FROM uploads u LEFT JOIN job_statuses j ON j.id = u.job_id
            WHERE u.user_id = $1
            ORDER BY u.id DESC LIMIT $2"#,
        login.user.id,
        LIST_LIMIT
    )
    .fetch_all(&state.db)
    .await?;
    let uploads = rows
        .into_iter()
        .map(UploadView::try_from)
        .collect::<Result<_, _>>()?;
    Ok(render(&ListPage {
        layout,
        uploads,
        max_bytes: max.0,
    })?
    .into_response())
}

/// Why an upload was refused before anything was stored.
#[derive(Debug, thiserror::Error)]
pub(super) enum UploadError {
    #[error("Choose a CSV file to import.")]
    NoFile,
    #[error("The file is empty.")]
    Empty,
    #[error("The file is larger than {}, the most an import takes.", human_size(*max as u64))]
    TooLarge { max: usize },
    #[error("The upload cannot be read: {0}")]
    Form(String),
    #[error(transparent)]
    Web(#[from] WebError),
}

impl From<sqlx::Error> for UploadError {
    fn from(e: sqlx::Error) -> Self {
        Self::Web(e.into())
    }
}

impl IntoResponse for UploadError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Web(e) => return e.into_response(),
            Self::NoFile | Self::Empty => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Form(_) => StatusCode::BAD_REQUEST,
        };
        // The error-pages middleware renders it as a page, or JSON for scripts.
        let mut response = status.into_response();
        response
            .extensions_mut()
            .insert(PublicMessage(self.to_string()));
        response
    }
}

/// The name of an uploaded file as pages show it: its last path component (some browsers
/// send a whole path), without control characters, at most 255 characters; `upload.csv` when
/// nothing is left.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileName(String);

impl FileName {
    fn parse(raw: &str) -> Self {
        let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
        let clean: String = last.chars().filter(|c| !c.is_control()).take(255).collect();
        match clean.trim() {
            "" => Self("upload.csv".into()),
            name => Self(name.to_owned()),
        }
    }
}

/// What a script gets back for an upload: where to follow it.
#[derive(Serialize)]
struct Accepted {
    upload_id: i64,
    job_id: i64,
    /// The upload's page; its JSON state is at `/api/uploads/{upload_id}`.
    url: String,
}

/// Stores the file and enqueues its import in one transaction, then answers at once: 202 with
/// the job id for `Accept: application/json`, else a redirect to the upload's page.
#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn create(
    State(state): State<AppState>,
    Extension(max): Extension<MaxBytes>,
    login: RequireLogin,
    headers: HeaderMap,
    multipart: Multipart,
) -> Result<Response, UploadError> {
    let (filename, content) = read_file(multipart, max.0).await?;
    let size = content.len() as i64;
    let mut tx = state.db.begin().await?;
    let upload_id = sqlx::query_scalar!(
        "INSERT INTO uploads (user_id, filename, size, content) VALUES ($1, $2, $3, $4)
         RETURNING id",
        login.user.id,
        filename.0,
        size,
        content
    )
    .fetch_one(&mut *tx)
    .await?;
    let job = Enqueue::new(&ImportCsv { upload_id })
        .map_err(internal)?
        .owner(login.user.id)
        .enqueue_on(&mut tx)
        .await
        .map_err(internal)?;
    sqlx::query!(
        "UPDATE uploads SET job_id = $2 WHERE id = $1",
        upload_id,
        job.id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        upload_id,
        job_id = job.id,
        size,
        "upload stored, import enqueued"
    );
    let url = format!("/uploads/{upload_id}");
    if !wants_json(&headers) {
        return Ok(Redirect::to(&url).into_response());
    }
    let body = Accepted {
        upload_id,
        job_id: job.id,
        url: url.clone(),
    };
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, url)], Json(body)).into_response())
}

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> WebError {
    WebError::Internal(anyhow::Error::new(e))
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.starts_with("application/json"))
}

/// The form's `file` part, at most `max` bytes (other parts are skipped).
async fn read_file(
    mut multipart: Multipart,
    max: usize,
) -> Result<(FileName, Vec<u8>), UploadError> {
    let bad = |e: MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => UploadError::TooLarge { max },
        _ => UploadError::Form(e.body_text()),
    };
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        if field.name() != Some("file") {
            continue;
        }
        let filename = FileName::parse(field.file_name().unwrap_or_default());
        let mut content = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if content.len() + chunk.len() > max {
                drain(field).await;
                return Err(UploadError::TooLarge { max });
            }
            content.extend_from_slice(&chunk);
        }
        if content.is_empty() {
            return Err(UploadError::Empty);
        }
        return Ok((filename, content));
    }
    Err(UploadError::NoFile)
}

/// Reads the rest of a file too large to keep, dropping it: a client still sending then reads
/// the 413 rather than a reset connection. The route's body limit bounds how much is read.
async fn drain(mut field: Field<'_>) {
    while let Ok(Some(_)) = field.chunk().await {}
}

#[derive(Template)]
#[template(path = "uploads/show.html")]
struct ShowPage {
    layout: Layout,
    upload: UploadView,
}

impl ShowPage {
    /// Whether the import's job is a link to its page in the console (`/ops/jobs/{id}`), which
    /// only administrators can open. Others see its number: this page shows its progress.
    fn links_job(&self) -> bool {
        self.layout.user.as_ref().is_some_and(|user| user.is_admin)
    }
}

/// An upload: its progress while the job runs (kept live by `upload.js`), then its summary.
#[tracing::instrument(skip_all, fields(user_id = login.user.id, upload_id = id))]
pub(super) async fn show(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    let upload = find(&state, login.user.id, id).await?;
    Ok(render(&ShowPage { layout, upload })?.into_response())
}

/// The upload's live progress as server-sent events: an `import.state` event with the state
/// in the database, then the job's `import.progress` and `import.done` messages.
#[tracing::instrument(skip_all, fields(user_id = login.user.id, upload_id = id))]
pub(super) async fn events(
    State(state): State<AppState>,
    login: RequireLogin,
    Path(id): Path<i64>,
    slot: StreamSlot,
    last_event_id: LastEventId,
) -> Result<Response, WebError> {
    let upload = find(&state, login.user.id, id).await?;
    let data = serde_json::to_string(&upload.update).map_err(internal)?;
    let prelude = format!("event: import.state\ndata: {data}\n\n");
    sse::stream_with_prelude(&state.channels, slot, &[group(id)], last_event_id, &prelude).await
}

/// `GET /api/uploads/{id}`.
#[derive(Serialize)]
pub(super) struct UploadState {
    id: i64,
    filename: String,
    size: i64,
    job_id: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(flatten)]
    update: Update,
}

/// `GET /api/uploads/{id}`: the upload, where its import stands and, once finished, its
/// summary. The upload page reads it too, to catch up after its event stream (re)connects.
#[tracing::instrument(skip_all, fields(user_id = login.user.id, upload_id = id))]
pub(super) async fn state(
    State(state): State<AppState>,
    login: RequireLogin,
    Path(id): Path<i64>,
) -> Result<Json<UploadState>, WebError> {
    let upload = find(&state, login.user.id, id).await?;
    Ok(Json(UploadState {
        id: upload.id,
        filename: upload.filename,
        size: upload.size,
        job_id: upload.job_id,
        created_at: upload.created_at,
        update: upload.update,
    }))
}

#[cfg(test)]
mod tests {
    use super::FileName;

    #[test]
    fn file_names_are_cleaned() {
        assert_eq!(FileName::parse("posts.csv").0, "posts.csv");
        assert_eq!(FileName::parse(r"C:\Users\ada\posts.csv").0, "posts.csv");
        assert_eq!(FileName::parse("../../etc/passwd").0, "passwd");
        assert_eq!(FileName::parse("a\u{0}b\r\n.csv").0, "ab.csv");
        assert_eq!(FileName::parse("  ").0, "upload.csv");
        assert_eq!(FileName::parse(&"x".repeat(300)).0.len(), 255);
    }
}
