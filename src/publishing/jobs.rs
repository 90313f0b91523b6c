//! The jobs publishing sets off, and the daily digest.
//!
//! Their args carry ids only; each job re-reads the rows, so it acts on what the database
//! says when it runs (a post unpublished meanwhile is not announced). Each is safe to run
//! again: mail goes through the outbox's idempotency keys, notifications through their dedupe
//! keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    channels::ChannelLayer,
    jobs::{Defaults, Job, JobContext, Outcome},
    mail::{Mailing, Message, Purpose, Sent},
    notifications::{self, Kind, NewNotification},
};

/// What the daily digest needs: mail, and the time zone that names the day it covers.
#[derive(Clone)]
pub struct Digest {
    pub mailing: Mailing,
    pub zone: chrono_tz::Tz,
}

/// Mails the author that their post was published: once per post, however often it is
/// unpublished and published again (each publication enqueues this job; the outbox key, which
/// names the post only, lets the first mail through). Otherwise every publish cycle would put
/// a title of the author's choosing in another mail.
#[derive(Debug, Serialize, Deserialize)]
pub struct PostPublished {
    pub post_id: i64,
}

impl Job for PostPublished {
    const KIND: &'static str = "publishing.post_published";
    type Deps = Mailing;

    fn defaults() -> Defaults {
        Defaults {
            queue: "mail",
            max_attempts: 10,
            ..Defaults::default()
        }
    }

    #[tracing::instrument(skip_all, fields(post_id = self.post_id))]
    async fn perform(self, ctx: JobContext<Mailing>) -> anyhow::Result<Outcome> {
        let Mailing { mailer, site } = &*ctx.deps;
        let Some(post) = sqlx::query!(
            "SELECT p.title, p.slug, p.published_at IS NOT NULL AS \"published!\",
                    u.id AS author_id, u.username, u.email
               FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1",
            self.post_id
        )
        .fetch_optional(&ctx.pool)
        .await?
        else {
            return Outcome::with_result("the post was deleted");
        };
        if !post.published {
            return Outcome::with_result("the post is no longer published");
        }
        let Some(email) = post.email else {
            return Outcome::with_result("the author has no mail address");
        };
        let message = Message {
            key: format!("post-published:{}", self.post_id),
            user_id: post.author_id,
            to: email,
            purpose: Purpose::Notice,
            subject: format!("Your post “{}” is published", post.title),
            body: format!(
                "Hello {},\n\nyour post “{}” is published:\n{site}/posts/{}\n\n— Hearth\n",
                post.username, post.title, post.slug
            ),
        };
        let sent = mailer.send_once(&ctx.pool, &message).await?;
        Outcome::with_result(format!("{sent:?}"))
    }
}

/// Notifies an author's subscribers of a newly published post, in the app and live.
#[derive(Debug, Serialize, Deserialize)]
pub struct NotifySubscribers {
    pub post_id: i64,
}

impl Job for NotifySubscribers {
    const KIND: &'static str = "publishing.notify_subscribers";
    type Deps = ChannelLayer;

    #[tracing::instrument(skip_all, fields(post_id = self.post_id))]
    async fn perform(self, ctx: JobContext<ChannelLayer>) -> anyhow::Result<Outcome> {
        let channels = &*ctx.deps;
        let mut tx = ctx.pool.begin().await?;
        let Some(post) = sqlx::query!(
            "SELECT p.title, p.slug, p.author_id, u.username
               FROM posts p JOIN users u ON u.id = p.author_id
              WHERE p.id = $1 AND p.published_at IS NOT NULL",
            self.post_id
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Outcome::with_result("the post is no longer published");
        };
        let subscribers = sqlx::query_scalar!(
            "SELECT subscriber_id FROM subscriptions WHERE author_id = $1 ORDER BY subscriber_id",
            post.author_id
        )
        .fetch_all(&mut *tx)
        .await?;
        let title = format!("{} published “{}”", post.username, post.title);
        let url = format!("/posts/{}", post.slug);
        let key = format!("post:{}", self.post_id);
        let mut notified = 0;
        for user_id in subscribers {
            let notification = NewNotification {
                user_id,
                kind: Kind::PostPublished,
                title: &title,
                url: &url,
                dedupe_key: &key,
            };
            if notifications::notify(&mut tx, channels, &notification)
                .await?
                .is_some()
            {
                notified += 1;
            }
        }
        tx.commit().await?;
        Outcome::with_result(serde_json::json!({ "notified": notified }))
    }
}

/// Mails every subscriber who asked for it the posts of the last day, by the authors they
/// follow, that they have not opened yet (at most [`DIGEST_POSTS`], none an import published).
/// At most one digest per user and day: the outbox key holds the date, so a second run (a
/// retry, or the schedule firing on two instances) sends nothing new.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DailyDigest {}

impl Job for DailyDigest {
    const KIND: &'static str = "publishing.daily_digest";
    type Deps = Digest;

    fn defaults() -> Defaults {
        Defaults {
            queue: "mail",
            max_attempts: 5,
            ..Defaults::default()
        }
    }

    #[tracing::instrument(skip_all)]
    async fn perform(self, ctx: JobContext<Digest>) -> anyhow::Result<Outcome> {
        let Digest {
            mailing: Mailing { mailer, site },
            zone,
        } = &*ctx.deps;
        // The day the job was enqueued for (its occurrence), not the day it runs: a retry
        // after midnight must reuse the same outbox keys.
        let enqueued_at = sqlx::query_scalar!("SELECT created_at FROM jobs WHERE id = $1", ctx.id)
            .fetch_optional(&ctx.pool)
            .await?
            .map_or_else(chrono::Utc::now, |at| {
                chrono::DateTime::from_timestamp(at.unix_timestamp(), 0)
                    .unwrap_or_else(chrono::Utc::now)
            });
        let day = enqueued_at.with_timezone(zone).date_naive();
        let digests = digests(&ctx.pool, site).await?;
        let (mut sent, mut failed) = (0, 0);
        for (user_id, digest) in digests {
            let message = Message {
                key: format!("digest:{user_id}:{day}"),
                user_id,
                to: digest.email,
                purpose: Purpose::Notice,
                subject: format!("Your Hearth digest for {day}"),
                body: digest.body,
            };
            match mailer.send_once(&ctx.pool, &message).await {
                Ok(Sent::Now) => sent += 1,
                Ok(_) => {}
                Err(e) => {
                    // The others still go out; the retry sends the ones that failed.
                    tracing::warn!(error = %e, user_id, "cannot send a digest");
                    failed += 1;
                }
            }
        }
        anyhow::ensure!(
            failed == 0,
            "{failed} digests could not be sent ({sent} were)"
        );
        Outcome::with_result(serde_json::json!({ "day": day.to_string(), "sent": sent }))
    }
}

/// The most posts one digest lists; the rest are counted, with a link to all posts. A day of
/// many posts (say, 200 brought over by someone's import and published by hand) would otherwise
/// make a mail no one reads to the end.
pub const DIGEST_POSTS: i64 = 20;

/// One subscriber's digest: where it goes and what it says.
struct UserDigest {
    email: String,
    body: String,
}

/// Every digest due, by user: the posts of the last day by the authors each follows that they
/// have not opened, newest first, at most [`DIGEST_POSTS`] each. Posts an import published are
/// left out: imports are not announced (`posts.published_by_import`).
async fn digests(pool: &sqlx::PgPool, site: &str) -> sqlx::Result<BTreeMap<i64, UserDigest>> {
    let rows = sqlx::query!(
        r#"SELECT user_id AS "user_id!", username AS "username!", email AS "email!",
                  title AS "title!", slug AS "slug!", author AS "author!", total AS "total!"
             FROM (SELECT u.id AS user_id, u.username, u.email, p.title, p.slug,
                          a.username AS author,
                          row_number() OVER (PARTITION BY u.id
                                             ORDER BY p.published_at DESC, p.id DESC) AS n,
                          count(*) OVER (PARTITION BY u.id) AS total
                     FROM users u
                     JOIN subscriptions s ON s.subscriber_id = u.id
                     JOIN posts p ON p.author_id = s.author_id
                                 AND p.published_at > now() - interval '1 day'
                                 AND NOT p.published_by_import
                     JOIN users a ON a.id = p.author_id
                    WHERE u.digest_by_mail AND u.email IS NOT NULL
                      AND u.email_verified_at IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM post_reads r
                                       WHERE r.user_id = u.id AND r.post_id = p.id)) d
            WHERE n <= $1
            ORDER BY user_id, n"#,
        DIGEST_POSTS
    )
    .fetch_all(pool)
    .await?;
    let mut lines: BTreeMap<i64, (String, String, i64, Vec<String>)> = BTreeMap::new();
    for row in rows {
        let entry = lines
            .entry(row.user_id)
            .or_insert_with(|| (row.username, row.email, row.total, Vec::new()));
        entry.3.push(format!(
            "• {} — by {}\n  {site}/posts/{}",
            row.title, row.author, row.slug
        ));
    }
    Ok(lines
        .into_iter()
        .map(|(user_id, (username, email, total, lines))| {
            let more = match total - lines.len() as i64 {
                0 => String::new(),
                1 => format!("\n\n…and 1 more: {site}/posts"),
                n => format!("\n\n…and {n} more: {site}/posts"),
            };
            let body = format!(
                "Hello {username},\n\nnew posts from the authors you follow, newest first:\n\n{}{more}\n\nChange how you hear from us: {site}/account/settings\n",
                lines.join("\n\n")
            );
            (user_id, UserDigest { email, body })
        })
        .collect())
}
