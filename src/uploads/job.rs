//! The import job: checks an upload whole, imports it in one transaction, and reports how far
//! it got.
//!
//! Under the upload's row lock: read the file and check every row (on the blocking pool: it
//! is CPU work); if anything is wrong, record the rejection. Otherwise insert the posts, a batch
//! of [`BATCH`] at a time, reporting progress after each batch to the job's status and to the
//! upload's group (outside the transaction, so the page sees it at once); a title whose slugs
//! are all taken rolls the inserts back and rejects the file like any invalid row. The upload's
//! summary, the user's notification and the `import.done` message commit with the posts, or
//! not at all. An attempt that fails leaves nothing behind, so a retry starts over from the
//! stored file (when the last one fails, the page is told); an attempt that finds the upload
//! finished does nothing.
//!
//! Imported posts are published without the publishing mail, subscriber notifications or a
//! place in the daily digest (`posts.published_by_import`): an import brings existing writing
//! over, and announcing each of thousands of posts would flood every subscriber. The user gets
//! one notification for the import instead.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{Acquire, Postgres, Transaction};

use super::{
    ERRORS_KEPT, Status, Summary, Update, count, group,
    import::{self, PostRow, Rejection, RowError, shorten},
};
use crate::{
    cache::Cache,
    channels::{ChannelLayer, GroupName},
    jobs::{Defaults, Job, JobContext, Outcome},
    notifications::{self, Kind, NewNotification},
    publishing::{self, images::ImageSigner, markdown},
};

/// Rows inserted between two progress reports.
pub const BATCH: usize = 100;

/// Imports the posts of an upload.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImportCsv {
    pub upload_id: i64,
}

impl Job for ImportCsv {
    const KIND: &'static str = "uploads.import_csv";
    type Deps = ImportDeps;

    fn defaults() -> Defaults {
        Defaults {
            max_attempts: 5,
            // 10,000 rows take seconds; an attempt stuck far longer is stopped and retried.
            timeout: Some(Duration::from_secs(600)),
            ..Defaults::default()
        }
    }

    #[tracing::instrument(skip_all, fields(upload_id = self.upload_id, attempt = ctx.attempt))]
    async fn perform(self, ctx: JobContext<ImportDeps>) -> anyhow::Result<Outcome> {
        let channels = &ctx.deps.channels;
        let progress = Progress {
            ctx: &ctx,
            channels,
            group: group(self.upload_id),
        };
        let result = self.import(&progress).await;
        if result.is_err() && ctx.attempt >= ctx.max_attempts {
            progress.gave_up().await;
        }
        result
    }
}

impl ImportCsv {
    async fn import(&self, progress: &Progress<'_>) -> anyhow::Result<Outcome> {
        let (ctx, channels) = (progress.ctx, progress.channels);
        let mut tx = ctx.pool.begin().await?;
        // A second attempt (after a worker lost its lease) waits here until the first one
        // commits, then finds the upload finished.
        let Some(upload) = sqlx::query!(
            "SELECT user_id, filename, content, status FROM uploads WHERE id = $1 FOR UPDATE",
            self.upload_id
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Outcome::with_result("the upload was deleted");
        };
        let (Some(content), "pending") = (upload.content, upload.status.as_str()) else {
            return Outcome::with_result("the upload is already finished");
        };
        progress.report(0, "Checking the file…".into()).await?;
        let images = ctx.deps.images.clone();
        let checked = tokio::task::spawn_blocking(move || prepare(&content, &images)).await?;

        let mut cache = None;
        let (status, summary) = match checked {
            Err(rejection) => (Status::Rejected, rejected(rejection)),
            Ok(posts) => {
                // Only an import that publishes changes cached pages.
                if posts.iter().any(|p| p.row.publish) {
                    cache = Some(&ctx.deps.cache);
                }
                // A savepoint, so that rows rejected while inserting undo the others and
                // leave the upload locked for the rejection.
                let mut inserts = Acquire::begin(&mut tx).await?;
                match insert(&mut inserts, progress, upload.user_id, &posts).await? {
                    Ok(published) => {
                        inserts.commit().await?;
                        (Status::Imported, imported(posts.len(), published))
                    }
                    Err(errors) => {
                        inserts.rollback().await?;
                        let rows = posts.len();
                        (Status::Rejected, rejected(Rejection::Rows { rows, errors }))
                    }
                }
            }
        };
        let finished = Finished {
            upload_id: self.upload_id,
            user_id: upload.user_id,
            filename: &upload.filename,
            attempt: ctx.attempt,
        };
        finished.record(&mut tx, channels, status, &summary).await?;
        tx.commit().await?;
        tracing::info!(
            status = status.as_str(),
            imported = summary.imported,
            published = summary.published,
            errors = summary.error_count,
            "import finished"
        );
        if let Some(cache) = cache.filter(|_| summary.published > 0) {
            drop_cached_pages(cache, upload.user_id).await;
        }
        // Committed: a failure to say so must not fail the attempt (its retry would find the
        // upload finished and lose the counts from the job's result).
        let done = match status {
            Status::Imported => "Imported",
            _ => "Not imported",
        };
        if let Err(e) = ctx.progress(100, done).await {
            tracing::warn!(error = %e, "cannot record the import's progress");
        }
        Outcome::with_result(JobResult {
            upload_id: self.upload_id,
            status,
            rows: summary.rows,
            imported: summary.imported,
            published: summary.published,
            error_count: summary.error_count,
        })
    }
}

/// The job's result, read by the uploader (the job's owner) and administrators through
/// `GET /api/jobs/{id}`. It holds counts only all the same: messages can quote the file, and
/// they stay on the upload's own page (`/api/uploads/{id}`), which has one access rule.
#[derive(Debug, Serialize)]
struct JobResult {
    upload_id: i64,
    status: Status,
    rows: usize,
    imported: usize,
    published: usize,
    error_count: usize,
}

/// What an import needs: the channel layer for its progress, the cache to drop the pages
/// its published posts change.
#[derive(Clone)]
pub struct ImportDeps {
    pub channels: ChannelLayer,
    pub cache: Cache,
    /// Signs the posts' external images for the image proxy.
    pub images: ImageSigner,
}

/// Where the job says how far it got: its status, and the upload's group.
struct Progress<'a> {
    ctx: &'a JobContext<ImportDeps>,
    channels: &'a ChannelLayer,
    group: GroupName,
}

impl Progress<'_> {
    /// Tells the page that the last attempt failed, so that it says so rather than wait: the
    /// upload reads as failed once the job is discarded, right after. Best effort: the error
    /// that made the attempt fail is what the job reports.
    async fn gave_up(&self) {
        let update = Update {
            kind: "import.done",
            status: Status::Failed,
            attempt: self.ctx.attempt,
            percent: 100,
            message: super::FAILED.to_owned(),
            summary: None,
        };
        if let Err(e) = self.channels.group_send(&self.group, &update).await {
            tracing::warn!(error = %e, "cannot tell the upload page that the import failed");
        }
    }

    async fn report(&self, percent: u8, message: String) -> anyhow::Result<()> {
        self.ctx.progress(percent, &message).await?;
        let update = Update {
            kind: "import.progress",
            status: Status::Pending,
            attempt: self.ctx.attempt,
            percent,
            message,
            summary: None,
        };
        self.channels.group_send(&self.group, &update).await?;
        Ok(())
    }
}

/// A valid row with its body rendered.
struct Ready {
    row: PostRow,
    html: String,
}

fn prepare(content: &[u8], images: &ImageSigner) -> Result<Vec<Ready>, Rejection> {
    let rows = import::read(content)?;
    Ok(rows
        .into_iter()
        .map(|row| Ready {
            html: markdown::render(row.body.as_str(), images),
            row,
        })
        .collect())
}

/// Inserts `posts` in `tx`, reporting progress after each batch. Returns how many were
/// published, or the rows that could not be inserted (the caller rolls back).
async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    progress: &Progress<'_>,
    user_id: i64,
    posts: &[Ready],
) -> anyhow::Result<Result<usize, Vec<RowError>>> {
    let (mut published, mut errors, mut done) = (0, Vec::new(), 0);
    for batch in posts.chunks(BATCH) {
        for Ready { row, html } in batch {
            let inserted =
                publishing::insert_with_free_slug(tx, user_id, &row.title, &row.body, html).await?;
            let Some((post_id, _)) = inserted else {
                errors.push(RowError {
                    row: row.row,
                    line: row.line,
                    message: "Too many posts have this title already; change it.".into(),
                });
                continue;
            };
            if row.publish {
                // Published once, as if with the Publish button, but not announced (see the
                // module doc): marked so that the daily digest leaves it out too.
                sqlx::query!(
                    "UPDATE posts SET published_at = now(), publish_count = 1,
                                      published_by_import = true
                      WHERE id = $1",
                    post_id
                )
                .execute(&mut **tx)
                .await?;
                published += 1;
            }
        }
        done += batch.len();
        // 100 % once committed, not before.
        let percent = (done * 100 / posts.len()).min(99) as u8;
        let message = format!(
            "Importing… {} of {}",
            super::thousands(done),
            count(posts.len(), "row")
        );
        progress.report(percent, message).await?;
    }
    Ok(if errors.is_empty() {
        Ok(published)
    } else {
        Err(errors)
    })
}

fn imported(rows: usize, published: usize) -> Summary {
    let headline = match published {
        0 if rows == 1 => "Imported 1 post as a draft.".to_owned(),
        0 => format!("Imported {} as drafts.", count(rows, "post")),
        _ if published == rows => format!("Imported and published {}.", count(rows, "post")),
        _ => format!(
            "Imported {}: {} published, {}.",
            count(rows, "post"),
            super::thousands(published),
            count(rows - published, "draft")
        ),
    };
    Summary {
        headline,
        rows,
        imported: rows,
        published,
        errors: Vec::new(),
        error_count: 0,
    }
}

fn rejected(rejection: Rejection) -> Summary {
    let (headline, rows, errors, error_count) = match rejection {
        Rejection::File(e) => (format!("Nothing was imported. {e}"), 0, Vec::new(), 0),
        Rejection::Rows { rows, mut errors } => {
            let n = errors.len();
            let (verb, them) = if n == 1 {
                ("has a problem", "it")
            } else {
                ("have problems", "them")
            };
            let headline = format!(
                "Nothing was imported: {} of {} {verb}. Fix {them} and upload the whole file again.",
                super::thousands(n),
                count(rows, "row")
            );
            errors.truncate(ERRORS_KEPT);
            (headline, rows, errors, n)
        }
    };
    Summary {
        headline,
        rows,
        imported: 0,
        published: 0,
        errors,
        error_count,
    }
}

/// An upload the job is done with.
struct Finished<'a> {
    upload_id: i64,
    user_id: i64,
    filename: &'a str,
    attempt: i32,
}

impl Finished<'_> {
    /// Records the outcome in `tx`: the upload's status and summary (its file is dropped), the
    /// user's notification and the page's `import.done` message.
    async fn record(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        channels: &ChannelLayer,
        status: Status,
        summary: &Summary,
    ) -> anyhow::Result<()> {
        sqlx::query!(
            "UPDATE uploads SET status = $2, summary = $3, content = NULL, finished_at = now()
              WHERE id = $1",
            self.upload_id,
            status.as_str(),
            serde_json::to_value(summary)?
        )
        .execute(&mut **tx)
        .await?;
        let name = shorten(self.filename, 80);
        let title = match status {
            Status::Imported => {
                format!("Imported {} from “{name}”", count(summary.imported, "post"))
            }
            _ => format!("“{name}” was not imported: see what to fix"),
        };
        let url = format!("/uploads/{}", self.upload_id);
        let notification = NewNotification {
            user_id: self.user_id,
            kind: Kind::Import,
            title: &title,
            url: &url,
            dedupe_key: &format!("upload:{}", self.upload_id),
        };
        notifications::notify(tx, channels, &notification).await?;
        let done = Update {
            kind: "import.done",
            status,
            attempt: self.attempt,
            percent: 100,
            message: summary.headline.clone(),
            summary: Some(summary.clone()),
        };
        channels
            .group_send_in(tx, &group(self.upload_id), &done)
            .await?;
        Ok(())
    }
}

/// Drops the cached pages that list the new published posts: the public list and the
/// author's page. After commit, so that no request stores the old list again.
async fn drop_cached_pages(cache: &Cache, author_id: i64) {
    for tag in [
        publishing::LIST_TAG.to_owned(),
        publishing::author_tag(author_id),
    ] {
        if let Err(e) = cache.invalidate_tag(&tag).await {
            tracing::warn!(error = %e, tag, "cannot invalidate cached pages; they expire by themselves");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headlines_say_what_happened() {
        assert_eq!(imported(1, 0).headline, "Imported 1 post as a draft.");
        assert_eq!(
            imported(2000, 0).headline,
            "Imported 2,000 posts as drafts."
        );
        assert_eq!(imported(3, 3).headline, "Imported and published 3 posts.");
        assert_eq!(
            imported(3, 1).headline,
            "Imported 3 posts: 1 published, 2 drafts."
        );
        let row = |row| RowError {
            row,
            line: row,
            message: "bad".into(),
        };
        let one = rejected(Rejection::Rows {
            rows: 10,
            errors: vec![row(2)],
        });
        assert_eq!(
            one.headline,
            "Nothing was imported: 1 of 10 rows has a problem. Fix it and upload the whole file again."
        );
        let many = rejected(Rejection::Rows {
            rows: 500,
            errors: (2..302).map(row).collect(),
        });
        assert_eq!((many.errors.len(), many.error_count), (ERRORS_KEPT, 300));
        let file = rejected(Rejection::File(import::FileError::NoRows));
        assert_eq!(
            file.headline,
            "Nothing was imported. The file has a header but no rows."
        );
    }
}
