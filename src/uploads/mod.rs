//! Uploads app: import posts from a CSV file, with live progress.
//!
//! The request stores the file in `uploads` and enqueues an [`ImportCsv`] job in the same
//! transaction, then answers at once (202 with the job id for scripts, a redirect to the
//! upload's page for browsers). The job reads the whole file first — encoding, header, every
//! row — and imports **all or nothing**: if the file or any row is invalid, no post is written
//! and the summary lists the rows to fix; otherwise every post is inserted in one transaction,
//! with the upload's summary, the user's notification and the `import.done` message. A user
//! who fixes the listed rows uploads the same file again and gets each post exactly once; had
//! the valid rows been imported, a corrected re-upload would duplicate them.
//!
//! Progress goes to the job's status (`GET /api/jobs/{id}`, the uploader's and administrators':
//! percent and counts only) and, live, to the channel-layer group `upload.<id>`, which the
//! upload page follows over server-sent events; the summary, whose messages may quote the
//! file, is its owner's (`GET /api/uploads/{id}`).
//!
//! Posts are drafts unless the `publish` column says otherwise. Publishing ones drops the
//! cached public list and author page after commit, so the job is registered with the
//! [`Cache`] in its dependencies ([`job::ImportDeps`]).
//!
//! [`Cache`]: crate::cache::Cache
//!
//! * [`import`]: reading and checking a CSV file, with no I/O;
//! * [`job`]: the import job and the messages it sends;
//! * `pages`: the upload form and list, the upload page, its event stream and JSON state.

pub mod import;
pub mod job;
mod pages;

use std::fmt;

use axum::{Extension, extract::DefaultBodyLimit, routing::get};
use serde::{Deserialize, Serialize};

pub use import::RowError;
pub use job::ImportCsv;

use crate::{
    App, Routes,
    application::section,
    channels::GroupName,
    web::templates::{NavLink, Show},
};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/uploads");

/// The uploads app. Its imports publish posts through the publishing app's tables and tags.
pub fn app() -> App {
    App::new("uploads")
        .migrations(&MIGRATIONS)
        .settings::<UploadSettings>()
        .routes(|ctx| Ok(routes(ctx.settings::<UploadSettings>()?)))
        .job_with::<ImportCsv>(|ctx| {
            Ok(job::ImportDeps {
                channels: ctx.state().channels.clone(),
                cache: ctx.state().cache.clone(),
                images: crate::publishing::images::ImageSigner::from_state(ctx.state()),
            })
        })
        .body_limit(|sections| Ok(upload_request_limit(section::<UploadSettings>(sections)?)))
        .nav(|_| Ok(NavLink::new("Import", "/uploads", Show::SignedIn)))
}

/// The uploads app's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct UploadSettings {
    /// Largest CSV file an import accepts, in bytes (413 above it). The upload route reads a
    /// request this large (plus its multipart envelope) even past the body limit, which every
    /// other route keeps.
    #[arg(long, env = "HEARTH_UPLOAD_MAX_BYTES", default_value_t = 5 * 1024 * 1024, global = true)]
    pub upload_max_bytes: usize,
}

impl fmt::Display for UploadSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "  upload limit        {} bytes", self.upload_max_bytes)
    }
}

/// The largest file an import accepts (the handlers' copy of the setting).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxBytes(pub usize);

/// Bytes of a multipart request around the file: boundaries, part headers, other fields.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// Row problems kept in a summary; the count says how many there were in all.
pub const ERRORS_KEPT: usize = 100;

/// What pages say of an import the job gave up on (its errors are for operators).
const FAILED: &str =
    "The import failed on our side, and nothing was imported. Upload the file again later.";

fn routes(settings: &UploadSettings) -> Routes {
    Routes::new()
        .route(
            "/uploads",
            get(pages::list)
                .post(pages::create)
                .layer(DefaultBodyLimit::max(upload_request_limit(settings))),
        )
        .route("/uploads/{id}", get(pages::show))
        .route("/uploads/{id}/events", get(pages::events))
        .route("/api/uploads/{id}", get(pages::state))
        .layer(Extension(MaxBytes(settings.upload_max_bytes)))
}

/// The largest request the upload route reads: a file of `HEARTH_UPLOAD_MAX_BYTES` in its
/// multipart envelope. The handler checks the file itself against the limit, so a file just
/// over it gets a message that names the limit.
///
/// The server's hard limit on request bodies is raised to this (`App::body_limit`). Every
/// route but the upload keeps the body limit through its default (axum's `DefaultBodyLimit`,
/// which the upload route raises for itself); the outer limit (tower-http's
/// `RequestBodyLimit`) can only lower what the routes inside it allow, never raise it.
fn upload_request_limit(settings: &UploadSettings) -> usize {
    settings.upload_max_bytes.saturating_add(MULTIPART_OVERHEAD)
}

/// The channel-layer group of one upload's live progress.
pub fn group(upload_id: i64) -> GroupName {
    GroupName::parse(format!("upload.{upload_id}"))
        .expect("a group name made of a prefix and a number is valid")
}

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Stored; the job waits or runs.
    Pending,
    /// Every row became a post.
    Imported,
    /// Nothing was imported: the file or some of its rows are invalid.
    Rejected,
    /// Nothing was imported: the job gave up (our side failed), or was cancelled.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Imported => "imported",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        self != Self::Pending
    }
}

/// What an import found, stored with the upload once it finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// One sentence for people: what happened, and what to do about it.
    pub headline: String,
    /// Data rows in the file (0 when the file as a whole was refused).
    pub rows: usize,
    pub imported: usize,
    /// Imported posts that are published (the others are drafts).
    pub published: usize,
    /// The first [`ERRORS_KEPT`] row problems, in file order.
    pub errors: Vec<RowError>,
    /// Rows with problems, including those past [`ERRORS_KEPT`].
    pub error_count: usize,
}

/// The live state of an upload: the upload page's `import.state`, `import.progress` and
/// `import.done` events, and `GET /api/uploads/{id}`. Every update carries the whole state,
/// so a page that missed some still shows the right thing.
#[derive(Debug, Clone, Serialize)]
pub struct Update {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: Status,
    /// The job's attempt: a retry starts again from 0 %, and pages order updates by
    /// `(attempt, percent)`.
    pub attempt: i32,
    pub percent: u8,
    /// The step under way ("Importing… 200 of 2,000 rows"), or the summary's headline.
    pub message: String,
    pub summary: Option<Summary>,
}

/// `n` with thousands separators: `12,345`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 row`, `2,000 rows`.
pub fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        _ => format!("{} {noun}s", thousands(n)),
    }
}

/// A size as people read it: `812 bytes`, `3.4 KiB`, `5 MiB`.
pub fn human_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    let (value, unit) = match bytes {
        0..KIB => return count(bytes as usize, "byte"),
        KIB..MIB => (bytes as f64 / KIB as f64, "KiB"),
        _ => (bytes as f64 / MIB as f64, "MiB"),
    };
    let shown = format!("{value:.1}");
    format!("{} {unit}", shown.trim_end_matches(".0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(count(1, "row"), "1 row");
        assert_eq!(count(2000, "row"), "2,000 rows");
        assert_eq!(human_size(812), "812 bytes");
        assert_eq!(human_size(3 * 1024 + 400), "3.4 KiB");
        assert_eq!(human_size(5 * 1024 * 1024), "5 MiB");
    }

    #[test]
    fn upload_groups_are_valid_names() {
        assert_eq!(group(42).as_str(), "upload.42");
    }
}
