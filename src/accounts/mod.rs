//! Accounts app: sign up, log in, log out, change password and settings (mail address and
//! how the user hears about new posts).
//!
//! Pages are plain HTML forms (see `templates/accounts/`). Users, sessions and password
//! hashing come from the platform ([`crate::web::auth`], [`crate::web::session`]); what this app
//! adds is the forms, their validation messages, [`throttle`], which slows failed logins with a
//! growing delay counted in the database (so all instances share one limit), [`device`], the
//! cookie that keeps the owner's known browsers out of strangers' delays, [`email`] (verifying
//! mail addresses before Hearth mails them) and [`links`] (a sign-in link mailed to the verified
//! address: the owner's way in from a new browser).

pub mod device;
mod email;
mod links;
mod pages;
pub mod throttle;
mod tokens;

pub use email::VERIFICATIONS_PER_USER_PER_HOUR;
pub use links::{LINKS_PER_ACCOUNT_PER_HOUR, REQUESTS_PER_CLIENT_PER_HOUR, SignInLink};

use std::{fmt, sync::Arc, time::Duration};

use axum::{
    Extension,
    routing::{get, post},
};

use crate::{
    App, Routes,
    mail::{MailSettings, Mailer, Mailing},
};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/accounts");

/// The accounts app. Needs the mail app's settings (verification and sign-in links).
pub fn app() -> App {
    App::new("accounts")
        .migrations(&MIGRATIONS)
        .settings::<AccountsSettings>()
        .routes(|ctx| {
            let deps = Deps {
                policy: throttle::Policy::from_settings(ctx.settings::<AccountsSettings>()?),
                mailer: ctx.settings::<MailSettings>()?.mailer()?,
            };
            Ok(routes().layer(Extension(Arc::new(deps))))
        })
        .job_with::<SignInLink>(Mailing::build)
        .every(
            "login throttle",
            Duration::from_secs(600),
            |state| async move {
                throttle::sweep(&state.db).await?;
                Ok(())
            },
        )
        .every("mail links", Duration::from_secs(600), |state| async move {
            tokens::sweep(&state.db).await?;
            Ok(())
        })
}

/// What the accounts pages need besides the platform, built once at start.
pub(crate) struct Deps {
    policy: throttle::Policy,
    mailer: Mailer,
}

/// The accounts app's settings: how failed logins are slowed down.
#[derive(Debug, Clone, clap::Args)]
pub struct AccountsSettings {
    /// Failed logins one client may make against one account before each further attempt
    /// waits (429 with `Retry-After`): a client is an address, or a browser holding a device
    /// cookie for the account from an earlier successful login.
    #[arg(
        long,
        env = "HEARTH_LOGIN_LIMIT_PER_ACCOUNT",
        default_value_t = 5,
        global = true
    )]
    pub login_limit_per_account: i64,

    /// Failed logins allowed against one account from all addresses together, counting only
    /// browsers without a device cookie for it (strangers); past it strangers wait, while the
    /// owner's known devices are judged by their own failures alone.
    #[arg(
        long,
        env = "HEARTH_LOGIN_LIMIT_PER_ACCOUNT_STRANGERS",
        default_value_t = 20,
        global = true
    )]
    pub login_limit_per_account_strangers: i64,

    /// Failed logins allowed per client address, whatever the accounts.
    #[arg(
        long,
        env = "HEARTH_LOGIN_LIMIT_PER_ADDRESS",
        default_value_t = 50,
        global = true
    )]
    pub login_limit_per_address: i64,

    /// The first wait once a limit is reached; it doubles with each further failure, up to
    /// the window.
    #[arg(long, env = "HEARTH_LOGIN_BACKOFF", default_value = "1m", value_parser = humantime::parse_duration, global = true)]
    pub login_backoff: Duration,

    /// The longest wait between failed logins, and how long after a wait ends without a new
    /// failure the count starts again from zero.
    #[arg(long, env = "HEARTH_LOGIN_LIMIT_WINDOW", default_value = "15m", value_parser = humantime::parse_duration, global = true)]
    pub login_limit_window: Duration,
}

impl fmt::Display for AccountsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = humantime::format_duration;
        write!(
            f,
            "  login limits        {} per account and client / {} per account from strangers / {} per address / wait {} doubling up to {}",
            self.login_limit_per_account,
            self.login_limit_per_account_strangers,
            self.login_limit_per_address,
            d(self.login_backoff),
            d(self.login_limit_window)
        )
    }
}

fn routes() -> Routes {
    Routes::new()
        .route("/signup", get(pages::signup_form).post(pages::signup))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/login/link", get(links::request_form).post(links::request))
        .route(
            "/login/link/{token}",
            get(links::confirm_form).post(links::confirm),
        )
        .route("/logout", post(pages::logout))
        .route(
            "/account/password",
            get(pages::password_form).post(pages::change_password),
        )
        .route(
            "/account/settings",
            get(pages::settings_form).post(pages::settings),
        )
        .route("/account/email/resend", post(email::resend))
        .route(
            "/account/email/verify/{token}",
            get(email::verify_form).post(email::verify),
        )
        .route("/api/me", get(pages::me))
}

/// A mail address: trimmed, at most 254 characters, one `@` between a non-empty local part
/// and a domain with a dot, no spaces. Deliverability is the mail server's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim();
        let valid = email.len() <= 254
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            });
        if valid {
            Ok(Self(email.to_owned()))
        } else {
            Err(format!("{email:?} is not a mail address."))
        }
    }

    /// An empty field is "no address".
    pub fn parse_optional(raw: &str) -> Result<Option<Self>, String> {
        if raw.trim().is_empty() {
            Ok(None)
        } else {
            Self::parse(raw).map(Some)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn emails_are_parsed() {
        assert_eq!(
            Email::parse(" ada@example.com ").unwrap().as_str(),
            "ada@example.com"
        );
        for bad in [
            "ada",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "a@b@c.com",
            "ada@.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Email::parse_optional("  ").unwrap(), None);
    }
}
