//! A guestbook, built on Hearth's public API and nothing else (`docs/building-an-app.md` builds
//! it step by step).
//!
//! * `GET /guestbook`: the approved entries, page-cached for anonymous visitors under the tag
//!   [`PAGE_TAG`], which an approval drops; `GET /guestbook/sign`: the form (its own page: a
//!   form carries its visitor's CSRF token, and a shared cached page cannot).
//! * `POST /guestbook`: stores an entry in `guestbook_entries` (the app's own migration) and
//!   enqueues its [`Moderate`] job in the same transaction.
//! * [`Moderate`] checks the entry against the banned words of [`GuestbookSettings`], marks it
//!   approved or rejected, and pushes the verdict to the group the page's WebSocket
//!   ([`live::Live`], `/ws/guestbook/`) joined.
//! * The `guestbook-purge` schedule runs [`PurgeRejected`] every hour: rejected entries go a
//!   day after their verdict.

pub mod entry;
pub mod jobs;
pub mod live;
mod pages;

use std::{fmt, time::Duration};

use hearth::{
    App,
    channels::GroupName,
    jobs::{Enqueue, Every, Schedule},
    web::templates::{NavLink, Show},
};

pub use entry::Status;
pub use jobs::{Moderate, Moderation, PurgeRejected};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/guestbook");

/// The page-cache tag of `GET /guestbook`.
pub const PAGE_TAG: &str = "guestbook";

/// The schedule that deletes old rejected entries.
pub const PURGE_SCHEDULE: &str = "guestbook-purge";

/// How often the purge runs.
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// The guestbook app: add it to an application with `.app(guestbook::app())`.
pub fn app() -> App {
    App::new("guestbook")
        .migrations(&MIGRATIONS)
        .settings::<GuestbookSettings>()
        .routes(|ctx| Ok(pages::routes(ctx.state())))
        .job_with::<Moderate>(|ctx| {
            Ok(Moderation {
                banned_words: ctx.settings::<GuestbookSettings>()?.banned_words.clone(),
                channels: ctx.state().channels.clone(),
                cache: ctx.state().cache.clone(),
            })
        })
        .job::<PurgeRejected>()
        .schedules(|_| {
            Ok(vec![Schedule::new(
                PURGE_SCHEDULE,
                Every::interval(PURGE_EVERY)?,
                Enqueue::new(&PurgeRejected {})?,
            )?])
        })
        .nav(|_| Ok(NavLink::new("Guestbook", "/guestbook", Show::Everyone)))
}

/// The guestbook's settings: its flags and environment variables join the command line's.
#[derive(Debug, Clone, clap::Args)]
pub struct GuestbookSettings {
    /// Words that get an entry rejected, comma-separated; matched as whole words, whatever
    /// their case.
    #[arg(
        long = "guestbook-banned-words",
        env = "GUESTBOOK_BANNED_WORDS",
        value_delimiter = ',',
        value_parser = entry::banned_word,
        default_value = "spam",
        global = true
    )]
    pub banned_words: Vec<String>,
}

impl fmt::Display for GuestbookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  guestbook           {} banned words",
            self.banned_words.len()
        )
    }
}

/// The channel-layer group every guestbook page's socket joins.
pub fn group() -> GroupName {
    GroupName::parse("guestbook").expect("a plain word is a valid group name")
}
