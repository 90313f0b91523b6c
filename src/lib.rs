//! Hearth: a web platform in one binary with PostgreSQL as its only service.
//!
//! The crate has two floors.
//!
//! The platform, which knows nothing about any particular feature:
//!
//! * [`config`]: the one [`Config`](config::Config) type, read from flags and environment.
//! * [`telemetry`]: structured logging with `tracing` (text or JSON).
//! * [`db`]: the connection pool, the embedded PostgreSQL cluster used when no `DATABASE_URL` is
//!   given, and the SQL migrations in `migrations/`.
//! * [`web`]: the HTTP shell: router layers, error pages, sessions, CSRF, flash messages, the
//!   signed-in user extractors and health checks.
//! * [`jobs`]: background jobs and schedules on a `SKIP LOCKED` table, worked in-process.
//! * [`cache`]: the cache framework — a Postgres shared tier behind an in-process tier, the
//!   page cache with tags, fragments.
//! * [`channels`]: the channel layer — groups, messages, history and presence across
//!   instances over LISTEN/NOTIFY and a message table.
//!
//! The apps, one folder per feature, built on the platform:
//!
//! * [`accounts`]: sign up, log in, log out, change password, settings, login throttling, mail
//!   address verification and sign-in links.
//! * [`home`]: the home page.
//! * [`publishing`]: posts in Markdown, drafts and publishing, subscriptions to authors, the
//!   daily digest.
//! * [`mail`]: the outbox, SMTP or dev-mailbox delivery at most once and only to verified
//!   addresses within their hourly limits, the mailbox pages.
//! * [`notifications`]: per-user notifications with a live unread count.
//! * [`chat`]: rooms, a WebSocket consumer with presence, typing, mentions and moderation.
//! * [`documents`]: collaborative documents — a Yjs/yrs CRDT over a WebSocket consumer, carets,
//!   offline edits, named versions.
//! * [`dashboard`]: live charts of this instance over server-sent events.
//! * [`ops`]: operations endpoints (job status).
//! * [`uploads`]: CSV imports of posts, run as a job, with live progress.
//! * [`gateway`]: `/api/aggregate`, concurrent calls to the configured upstream services.
//!
//! [`server`] wires the floors together into a running process with graceful shutdown, and
//! [`cli`] is the `hearth` command line on top of it.

pub mod accounts;
pub mod application;
pub mod bundled;
pub mod cache;
pub mod channels;
pub mod chat;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod documents;
pub mod gateway;
pub mod home;
pub mod jobs;
pub mod mail;
pub mod notifications;
pub mod ops;
pub mod publishing;
pub mod server;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod uploads;
pub mod web;

pub use application::{App, Application, Routes};
pub use web::AppState;
