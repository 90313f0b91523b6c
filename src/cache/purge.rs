//! The purge hook: every [`super::Cache::invalidate_tag`] also tells a CDN or proxy in front
//! (`HEARTH_CACHE_PURGE_URL`) to drop what it keeps under the tag, as the page cache's
//! `Surrogate-Key`/`Cache-Tag` headers let it.
//!
//! Off the request path and bounded: an invalidation only queues its tag (at most [`QUEUE`]
//! waiting, past which a tag is dropped with a warning), and one task per instance sends
//! them, [`BATCH`] at a time, one request at a time, each within [`TIMEOUT`]. A CDN that is
//! down or slow costs warnings in the log, never a failed or delayed invalidation. Only the
//! instance that invalidates sends the purge, once.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use url::Url;

/// Tags waiting to be sent, at most.
const QUEUE: usize = 1024;
/// Tags in one purge request, at most.
const BATCH: usize = 100;
/// How long one purge request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A handle to the instance's purge task.
pub(super) struct Purger {
    tags: mpsc::Sender<String>,
}

impl Purger {
    /// Starts the task that sends queued tags to `url`, until `shutdown`.
    pub(super) fn start(url: Url, tracker: &TaskTracker, shutdown: CancellationToken) -> Self {
        let (tags, queued) = mpsc::channel(QUEUE);
        tracker.spawn(run(url, queued, shutdown));
        Self { tags }
    }

    /// Queues `tag` for the CDN, without waiting.
    pub(super) fn purge(&self, tag: &str) {
        if let Err(e) = self.tags.try_send(tag.to_owned()) {
            tracing::warn!(tag, error = %e, "cannot queue a CDN purge: the CDN may serve pages of this tag until they expire");
        }
    }
}

async fn run(url: Url, mut queued: mpsc::Receiver<String>, shutdown: CancellationToken) {
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client for CDN purges; none will be sent");
            return;
        }
    };
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            tag = queued.recv() => match tag {
                Some(tag) => tag,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queued.try_recv() {
                Ok(tag) => batch.push(tag),
                Err(_) => break,
            }
        }
        batch.sort();
        batch.dedup();
        send(&client, &url, &batch).await;
    }
}

/// `POST`s `{"tags": [...]}` to `url`, the tags also in `Surrogate-Key` (space-separated, for
/// CDNs that read the header) when they fit in one.
async fn send(client: &reqwest::Client, url: &Url, tags: &[String]) {
    let body = serde_json::json!({ "tags": tags }).to_string();
    let mut request = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(keys) = super::headers::surrogate_keys(tags) {
        request = request.header("surrogate-key", keys);
    }
    let host = url.host_str().unwrap_or_default();
    match request.send().await {
        Ok(response) if response.status().is_success() => {
            tracing::debug!(host, ?tags, "CDN purge sent");
        }
        Ok(response) => {
            tracing::warn!(host, ?tags, status = %response.status(), "the CDN refused a purge: it may serve these tags' pages until they expire");
        }
        Err(e) => {
            tracing::warn!(host, ?tags, error = %e, "cannot send a CDN purge: the CDN may serve these tags' pages until they expire");
        }
    }
}
