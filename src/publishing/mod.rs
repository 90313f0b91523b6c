//! Publishing app: posts written in Markdown with a draft/published state, readers'
//! subscriptions to authors, the mail and notifications publishing sets off, and the daily
//! digest.
//!
//! * [`post`]: titles, bodies and slugs, parsed at the edge; [`markdown`]: safe rendering.
//! * `pages`: the public list and post pages (page-cached for anonymous readers, tagged so an
//!   edit drops exactly the pages that show it; answering revalidations with `304` before
//!   their expensive part), the editor, author pages and subscriptions.
//! * [`images`]: external images in posts, signed when rendered and fetched through Hearth's
//!   image proxy (`/img/…`), which refuses private addresses, non-images and large files.
//! * [`jobs`]: what publishing enqueues in its own transaction — the "your post was
//!   published" mail and the subscribers' notifications — and the daily digest.

pub mod images;
pub mod jobs;
pub mod markdown;
mod pages;
pub mod post;

use std::{fmt, sync::Arc, time::Duration};

use axum::{
    Extension,
    handler::Handler,
    routing::{get, post},
};
use sqlx::{Postgres, Transaction};

use crate::{
    App, Routes,
    cache::{
        headers::{CacheControl, cache_control},
        page::cache_page,
    },
    jobs::{Enqueue, Every, Schedule},
    mail::Mailing,
    web::{
        self, AppState,
        conditional::conditional_get,
        templates::{NavLink, Show},
    },
};
use post::{Body, Slug, Title};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/publishing");

/// The publishing app. Its jobs mail through the mail app's settings.
pub fn app() -> App {
    App::new("publishing")
        .migrations(&MIGRATIONS)
        .settings::<PublishingSettings>()
        .routes(|ctx| Ok(routes(ctx.state())))
        // The image proxy needs no session, and keeps its images in the cache itself.
        .api_routes(|ctx| {
            let settings = ctx.settings::<PublishingSettings>()?;
            let proxy = images::ImageProxy {
                signer: images::ImageSigner::from_state(ctx.state()),
                fetcher: images::Fetcher::new(
                    images::Allowed::parse(&settings.image_proxy_allow_hosts),
                    settings.image_proxy_max_bytes,
                    settings.image_proxy_timeout,
                )?,
            };
            Ok(Routes::new()
                .route("/img/{signature}/{url}", get(images::serve))
                .layer(Extension(Arc::new(proxy))))
        })
        .job_with::<jobs::PostPublished>(Mailing::build)
        .job_with::<jobs::NotifySubscribers>(|ctx| Ok(ctx.state().channels.clone()))
        .job_with::<jobs::DailyDigest>(|ctx| {
            Ok(jobs::Digest {
                mailing: Mailing::build(ctx)?,
                zone: ctx.settings::<PublishingSettings>()?.zone()?,
            })
        })
        .schedules(|sections| {
            let settings = crate::application::section::<PublishingSettings>(sections)?;
            let every = Every::cron(
                &format!("0 {} * * *", settings.digest_hour),
                &settings.digest_time_zone,
            )?;
            Ok(vec![Schedule::new(
                "daily-digest",
                every,
                Enqueue::new(&jobs::DailyDigest::default())?,
            )?])
        })
        .nav(|_| Ok(NavLink::new("Posts", "/posts", Show::Everyone)))
        .nav(|_| Ok(NavLink::new("Write", "/posts/new", Show::SignedIn)))
}

/// The publishing app's settings: when the daily digest goes out, and the image proxy's limits.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishingSettings {
    /// The hour (0-23) the daily digest goes out.
    #[arg(long, env = "HEARTH_DIGEST_HOUR", default_value_t = 7, value_parser = clap::value_parser!(u8).range(0..24), global = true)]
    pub digest_hour: u8,

    /// The time zone of the digest hour (an IANA name such as `Europe/Paris`).
    #[arg(
        long,
        env = "HEARTH_DIGEST_TIME_ZONE",
        default_value = "UTC",
        global = true
    )]
    pub digest_time_zone: String,

    /// The largest image the image proxy fetches, in bytes.
    #[arg(long, env = "HEARTH_IMAGE_PROXY_MAX_BYTES", default_value_t = 5 * 1024 * 1024, global = true)]
    pub image_proxy_max_bytes: usize,

    /// How long the image proxy waits for an image, connection and body included.
    #[arg(long, env = "HEARTH_IMAGE_PROXY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub image_proxy_timeout: Duration,

    /// Hosts the image proxy may fetch from although they are on a private or local network
    /// (host names or addresses as written in URLs, comma-separated): for tests and intranets.
    #[arg(
        long,
        env = "HEARTH_IMAGE_PROXY_ALLOW_HOSTS",
        default_value = "",
        global = true
    )]
    pub image_proxy_allow_hosts: String,
}

impl PublishingSettings {
    /// The digest's time zone, or an error naming the setting.
    pub fn zone(&self) -> anyhow::Result<chrono_tz::Tz> {
        self.digest_time_zone.parse().map_err(|_| {
            anyhow::anyhow!(
                "HEARTH_DIGEST_TIME_ZONE {:?} is not a time zone name such as Europe/Paris",
                self.digest_time_zone
            )
        })
    }
}

impl fmt::Display for PublishingSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  daily digest        at {}:00 {}",
            self.digest_hour, self.digest_time_zone
        )?;
        write!(
            f,
            "  image proxy         {} bytes, {:?}, private hosts allowed: {}",
            self.image_proxy_max_bytes,
            self.image_proxy_timeout,
            if self.image_proxy_allow_hosts.is_empty() {
                "none"
            } else {
                &self.image_proxy_allow_hosts
            }
        )
    }
}

/// How long anonymous readers are served a stored page. Edits drop the pages they change at
/// once (by tag), so this only bounds how stale a page can get if an invalidation is lost.
const PAGE_TTL: Duration = Duration::from_secs(300);

/// The page-cache tag of the public list of posts.
pub const LIST_TAG: &str = "posts";

/// The page-cache tag of one post's page.
pub fn post_tag(post_id: i64) -> String {
    format!("post-{post_id}")
}

/// The page-cache tag of an author's page.
pub fn author_tag(author_id: i64) -> String {
    format!("author-{author_id}")
}

/// Inserts a draft under the first free slug among `title`, `title-2`, `title-3`... up to
/// `title-50`. Returns its id and slug, or `None` when all of those are taken.
pub async fn insert_with_free_slug(
    tx: &mut Transaction<'_, Postgres>,
    author_id: i64,
    title: &Title,
    body: &Body,
    html: &str,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let base = Slug::from_title(title);
    for n in 1..=50 {
        let slug = if n == 1 {
            base.clone()
        } else {
            base.numbered(n)
        };
        let id = sqlx::query_scalar!(
            "INSERT INTO posts (author_id, slug, title, body, body_html)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (slug) DO NOTHING RETURNING id",
            author_id,
            slug.as_str(),
            title.as_str(),
            body.as_str(),
            html
        )
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(id) = id {
            return Ok(Some((id, slug.as_str().to_owned())));
        }
    }
    Ok(None)
}

fn routes(state: &AppState) -> Routes {
    let shared = cache_page(&state.cache, PAGE_TTL).bypass(web::is_personal);
    // Shared caches keep these pages for PAGE_TTL; browsers revalidate every time (a 304 from
    // the page cache, or from the view's validators), so a page kept from before signing in is
    // never shown after it.
    let revalidate = cache_control(
        CacheControl::new()
            .max_age(0)
            .s_maxage(PAGE_TTL.as_secs() as u32),
    );
    Routes::new()
        // The page cache passes POSTs through untouched.
        .route(
            "/posts",
            get(pages::list.layer(revalidate.clone()))
                .post(pages::create)
                .layer(shared.clone().query(&["page"]).tag(LIST_TAG)),
        )
        .route(
            "/posts/{slug}",
            get(pages::show.layer(revalidate.clone())).layer(shared.clone()),
        )
        .route(
            "/authors/{username}",
            get(pages::author.layer(revalidate)).layer(shared),
        )
        .route("/posts/new", get(pages::new_form))
        .route("/posts/preview", post(pages::preview))
        .route(
            "/posts/{slug}/edit",
            get(pages::edit_form).post(pages::update),
        )
        .route("/posts/{slug}/publish", post(pages::publish))
        .route("/posts/{slug}/unpublish", post(pages::unpublish))
        // Personal, so never page-cached; a reload that finds it unchanged costs no bytes.
        .route(
            "/me/posts",
            get(pages::mine).layer(axum::middleware::from_fn(conditional_get)),
        )
        .route("/authors/{username}/subscribe", post(pages::subscribe))
        .route("/authors/{username}/unsubscribe", post(pages::unsubscribe))
}
