//! Mail app: the outbox every message goes through, its delivery over SMTP (lettre) or into
//! the dev mailbox, and the mailbox pages admins read.
//!
//! Jobs call [`Mailer::send_once`] with an idempotency key. The message is written to the
//! `outbox` table first (a retried job finds the row it wrote before), claimed, handed to the
//! transport and marked sent: each message is sent at most once however often the job runs
//! (see `migrations/0010_mail.sql`). Without `HEARTH_SMTP_URL` the transport is the dev
//! mailbox: messages are marked delivered there and admins read them at `/mailbox`. Messages
//! are written as plain text; SMTP sends it with an HTML rendition whose addresses are links
//! ([`html`]), which the mailbox shows too.
//!
//! `send_once` is also where Hearth decides whether an address may be mailed at all, so that no
//! app can forget it: a message goes only to its user's current address, and only once that
//! address is verified, except for the link that verifies it ([`Purpose::Verification`]); and
//! no address gets more than [`quota::PER_RECIPIENT_PER_HOUR`] messages an hour. A refused
//! message is not stored; it is logged and reported as [`Sent::Dropped`].

pub mod html;
mod pages;
pub mod quota;

use std::{fmt, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Extension, routing::get};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
    message::{Mailbox, MultiPart},
};
use sqlx::PgPool;

use crate::{
    App, Routes,
    application::Context as AppContext,
    config::mask_url,
    web::templates::{NavLink, Show},
};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/mail");

/// The mail app: the outbox, the mailbox pages, the hourly quotas' sweeper.
pub fn app() -> App {
    App::new("mail")
        .migrations(&MIGRATIONS)
        .settings::<MailSettings>()
        .routes(|ctx| {
            let dev = DevMailbox(ctx.settings::<MailSettings>()?.smtp_url.is_none());
            Ok(Routes::new()
                .route("/mailbox", get(pages::list))
                .route("/mailbox/{id}", get(pages::show))
                .layer(Extension(dev)))
        })
        // In dev mode every user reads their own mail there; otherwise only administrators.
        .nav(|sections| {
            let dev = crate::application::section::<MailSettings>(sections)?
                .smtp_url
                .is_none();
            let show = if dev { Show::SignedIn } else { Show::Admins };
            Ok(NavLink::new("Mailbox", "/mailbox", show).tool())
        })
        .every(
            "past mail quotas",
            Duration::from_secs(600),
            |state| async move {
                quota::sweep(&state.db).await?;
                Ok(())
            },
        )
}

/// The mail app's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct MailSettings {
    /// SMTP server for outgoing mail: `smtp://user:pass@host:587?tls=required` (STARTTLS),
    /// `smtps://user:pass@host` (TLS), `smtp://host:25` (plain, for a local relay only).
    /// Without it mail goes to the dev mailbox at `/mailbox`.
    #[arg(long, env = "HEARTH_SMTP_URL", global = true)]
    pub smtp_url: Option<String>,

    /// The sender of outgoing mail.
    #[arg(
        long,
        env = "HEARTH_MAIL_FROM",
        default_value = "Hearth <hearth@localhost>",
        global = true
    )]
    pub mail_from: String,
}

impl fmt::Display for MailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  mail                {} / from {}",
            self.smtp_url
                .as_deref()
                .map_or_else(|| "dev mailbox".to_string(), mask_url),
            self.mail_from
        )
    }
}

impl MailSettings {
    pub fn mailer(&self) -> anyhow::Result<Mailer> {
        Mailer::new(self.smtp_url.as_deref(), &self.mail_from)
    }
}

/// Whether mail goes to the dev mailbox (no SMTP server configured).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DevMailbox(pub bool);

/// What a job that mails needs: the mailer, and the site's public address for its links.
#[derive(Clone)]
pub struct Mailing {
    pub mailer: Mailer,
    /// `HEARTH_PUBLIC_URL`, or the bind address.
    pub site: String,
}

impl Mailing {
    /// From the mail settings, for any app's jobs (`App::job_with::<J>(Mailing::build)`).
    pub fn build(ctx: &AppContext) -> anyhow::Result<Self> {
        Ok(Self {
            mailer: ctx.settings::<MailSettings>()?.mailer()?,
            site: ctx.state().config.site_url(),
        })
    }
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Message {
    /// What makes it unique (`post-published:42`, `digest:7:2026-11-22`).
    pub key: String,
    /// Whose mail it is.
    pub user_id: i64,
    /// The user's current address; a message to any other address is dropped.
    pub to: String,
    pub purpose: Purpose,
    pub subject: String,
    pub body: String,
}

/// Why a message goes out, which decides whether an unverified address may get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Anything but the verification link: only to a verified address.
    Notice,
    /// The link that verifies the address it goes to.
    Verification,
}

/// Why a message was dropped rather than sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The address is not the user's, or not verified (and the message is no verification).
    Unverified,
    /// The address had its hourly share of mail.
    OverLimit,
}

/// What [`Mailer::send_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Sent now.
    Now,
    /// Sent before (by an earlier attempt, or another instance).
    Before,
    /// An earlier attempt claimed it and never said whether it went out (it died mid-send).
    /// Not sent again: at most once.
    InDoubt,
    /// Neither stored nor sent: the address may not get it (see [`Dropped`]).
    Dropped(Dropped),
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{0:?} is not a mail address")]
    Address(String),
    #[error("the SMTP server refused the message: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Dev,
}

/// Sends mail through the outbox. Cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    transport: Arc<Transport>,
    from: Mailbox,
}

impl Mailer {
    /// SMTP when `smtp_url` is given (`smtp://user:pass@host:587?tls=required`,
    /// `smtps://host`), otherwise the dev mailbox.
    pub fn new(smtp_url: Option<&str>, from: &str) -> anyhow::Result<Self> {
        let from: Mailbox = from
            .parse()
            .with_context(|| format!("HEARTH_MAIL_FROM {from:?} is not a mail address"))?;
        let transport = match smtp_url {
            Some(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .context("HEARTH_SMTP_URL is not a valid SMTP URL")?
                    .build(),
            ),
            None => Transport::Dev,
        };
        Ok(Self {
            transport: Arc::new(transport),
            from,
        })
    }

    /// Whether messages go to the dev mailbox rather than an SMTP server.
    pub fn is_dev(&self) -> bool {
        matches!(*self.transport, Transport::Dev)
    }

    /// Sends `message` unless a message with its key was sent (or claimed) before, or the
    /// address may not get it.
    #[tracing::instrument(skip_all, fields(key = %message.key, user_id = message.user_id))]
    pub async fn send_once(&self, pool: &PgPool, message: &Message) -> Result<Sent, MailError> {
        // Checked before anything is stored, so a bad address is a clear error, not a row.
        message
            .to
            .parse::<Mailbox>()
            .map_err(|_| MailError::Address(message.to.clone()))?;
        if let Some(dropped) = store(pool, message).await? {
            tracing::warn!(reason = ?dropped, purpose = ?message.purpose, "mail dropped");
            return Ok(Sent::Dropped(dropped));
        }
        // The stored row wins over `message`: a retry sends what the first attempt wrote.
        let claimed = sqlx::query!(
            "UPDATE outbox SET claimed_at = now()
              WHERE idempotency_key = $1 AND claimed_at IS NULL
              RETURNING id, to_address, subject, body",
            message.key
        )
        .fetch_optional(pool)
        .await?;
        let Some(row) = claimed else {
            let sent = sqlx::query_scalar!(
                r#"SELECT sent_at IS NOT NULL AS "sent!" FROM outbox WHERE idempotency_key = $1"#,
                message.key
            )
            .fetch_one(pool)
            .await?;
            if !sent {
                tracing::warn!("an earlier attempt died while sending; not sending again");
                return Ok(Sent::InDoubt);
            }
            return Ok(Sent::Before);
        };
        let to: Mailbox = row
            .to_address
            .parse()
            .map_err(|_| MailError::Address(row.to_address.clone()))?;
        let transport = match self.deliver(to, &row.subject, row.body).await {
            Ok(transport) => transport,
            Err(e) => {
                // Released for a retry only when it certainly did not go out: the message
                // could not be built, or the server answered with a refusal. A lost
                // connection or a timeout may come after the server took the message, so
                // it stays claimed: in doubt, never sent twice.
                let not_sent = match &e {
                    MailError::Smtp(smtp) => smtp.is_permanent() || smtp.is_transient(),
                    MailError::Build(_) | MailError::Address(_) => true,
                    MailError::Database(_) => false,
                };
                sqlx::query!(
                    "UPDATE outbox SET claimed_at = CASE WHEN $3 THEN NULL ELSE claimed_at END,
                            last_error = $2
                      WHERE id = $1",
                    row.id,
                    e.to_string(),
                    not_sent
                )
                .execute(pool)
                .await?;
                return Err(e);
            }
        };
        sqlx::query!(
            "UPDATE outbox SET sent_at = now(), transport = $2, last_error = NULL WHERE id = $1",
            row.id,
            transport
        )
        .execute(pool)
        .await?;
        tracing::info!(outbox_id = row.id, transport, "mail sent");
        Ok(Sent::Now)
    }

    async fn deliver(
        &self,
        to: Mailbox,
        subject: &str,
        body: String,
    ) -> Result<&'static str, MailError> {
        match &*self.transport {
            Transport::Dev => Ok("dev"),
            Transport::Smtp(smtp) => {
                // The text as written, and its HTML rendition, whose addresses are links.
                let html = html::document(&body);
                let email = lettre::Message::builder()
                    .from(self.from.clone())
                    .to(to)
                    .subject(subject)
                    .multipart(MultiPart::alternative_plain_html(body, html))?;
                smtp.send(email).await?;
                Ok("smtp")
            }
        }
    }
}

/// Writes `message` to the outbox unless its key is there already (a retry then sends the
/// stored row). Writes nothing, and says why, when the address is not the user's current one,
/// is not verified (unless the message verifies it), or had its hourly share of mail: the
/// address check and the row are one statement, the quota is spent in the same transaction.
async fn store(pool: &PgPool, message: &Message) -> Result<Option<Dropped>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query_scalar!(
        "INSERT INTO outbox (idempotency_key, user_id, to_address, subject, body)
         SELECT $1, u.id, $3, $4, $5 FROM users u
          WHERE u.id = $2 AND u.email = $3 AND (u.email_verified_at IS NOT NULL OR $6)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING id",
        message.key,
        message.user_id,
        message.to,
        message.subject,
        message.body,
        message.purpose == Purpose::Verification,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        let stored = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM outbox WHERE idempotency_key = $1) AS "stored!""#,
            message.key
        )
        .fetch_one(&mut *tx)
        .await?;
        return Ok((!stored).then_some(Dropped::Unverified));
    }
    let scope = format!("to:{}", message.to.to_lowercase());
    if !quota::take(&mut *tx, &scope, quota::PER_RECIPIENT_PER_HOUR).await? {
        tx.rollback().await?;
        return Ok(Some(Dropped::OverLimit));
    }
    tx.commit().await?;
    Ok(None)
}
