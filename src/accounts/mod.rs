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
pub use tokens::sweep as sweep_tokens;

use axum::{
    Router,
    routing::{get, post},
};

use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
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
