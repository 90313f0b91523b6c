//! Template rendering and the context every page's base layout needs.

use std::sync::Arc;

use askama::Template;
use axum::{extract::FromRequestParts, http::request::Parts, response::Html};

use crate::cache::page::Personal;

use super::{
    AppState, WebError,
    auth::{CurrentUser, User},
    csrf::CsrfToken,
    flash::Flash,
};

/// What `base.html` shows on every page: the signed-in user, a flash message, the CSRF token
/// for forms and the URLs of static files ([`Layout::asset`]).
///
/// A layout with a user or a flash message marks its request [`Personal`] as it is built, and
/// one whose CSRF token is rendered ([`Layout::csrf_token`]) marks it then: the page cache
/// never shares such a page, whatever the request looked like.
#[derive(Debug, Clone)]
pub struct Layout {
    pub user: Option<User>,
    pub flash: Option<String>,
    csrf_token: String,
    personal: Personal,
    composed: Arc<super::state::Composed>,
}

/// A link of the site's navigation, declared by an app (`App::nav`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NavLink {
    pub label: &'static str,
    pub href: &'static str,
    pub show: Show,
    /// A tool for running the site (`/ops`, the dashboard, the mailbox) rather than a part of
    /// it: the layout lists those apart, in a "Tools" menu, so members' navigation stays short.
    pub tool: bool,
}

/// Who sees a navigation link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Everyone,
    SignedIn,
    Admins,
}

impl NavLink {
    pub fn new(label: &'static str, href: &'static str, show: Show) -> Self {
        Self {
            label,
            href,
            show,
            tool: false,
        }
    }

    /// Lists the link among the tools (see [`NavLink::tool`]).
    pub fn tool(self) -> Self {
        Self { tool: true, ..self }
    }
}

impl FromRequestParts<AppState> for Layout {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let CurrentUser(user) = CurrentUser::from_request_parts(parts, state).await?;
        let flash = parts.extensions.get::<Flash>().and_then(|f| f.0.clone());
        let csrf_token = parts
            .extensions
            .get::<CsrfToken>()
            .map(|t| t.0.clone())
            .unwrap_or_default();
        let personal = Personal::of(&mut parts.extensions);
        if user.is_some() || flash.is_some() {
            personal.mark();
        }
        Ok(Self {
            user,
            flash,
            csrf_token,
            personal,
            composed: state.composed.clone(),
        })
    }
}

impl Layout {
    /// The layout of a page the shared page cache may store for every anonymous visitor: its
    /// forms get no CSRF token, so rendering it does not make the page personal. (A user or a
    /// flash message still does: they marked the request when the layout was built.)
    pub fn for_shared_cache(self) -> Self {
        Self {
            csrf_token: String::new(),
            ..self
        }
    }

    /// The navigation links this page's visitor may see, in the order the apps declared them.
    pub fn nav(&self) -> impl Iterator<Item = &NavLink> {
        let (signed_in, admin) = match &self.user {
            Some(user) => (true, user.is_admin),
            None => (false, false),
        };
        self.composed
            .nav
            .iter()
            .filter(move |link| match link.show {
                Show::Everyone => true,
                Show::SignedIn => signed_in,
                Show::Admins => admin,
            })
    }

    /// The site's own links this visitor may see: the main navigation.
    pub fn nav_main(&self) -> impl Iterator<Item = &NavLink> {
        self.nav().filter(|link| !link.tool)
    }

    /// The tools this visitor may use (see [`NavLink::tool`]), listed apart from the rest.
    pub fn nav_tools(&self) -> impl Iterator<Item = &NavLink> {
        self.nav().filter(|link| link.tool)
    }

    /// Whether this visitor has any tool to list.
    pub fn has_tools(&self) -> bool {
        self.nav_tools().next().is_some()
    }

    /// The URL of the static file at `path` (`{{ layout.asset("js/chat.js") }}`): one with a
    /// hash of the file's content, cached for a year (see `web::assets`).
    pub fn asset(&self, path: &str) -> String {
        self.composed.assets.url(path)
    }

    /// The CSRF token for the page's forms and scripts. Rendering it marks the page personal:
    /// the token belongs to this browser.
    pub fn csrf_token(&self) -> &str {
        if !self.csrf_token.is_empty() {
            self.personal.mark();
        }
        &self.csrf_token
    }
}

/// Renders a template to an HTML response; a template error is an internal error.
pub fn render(template: &impl Template) -> Result<Html<String>, WebError> {
    template
        .render()
        .map(Html)
        .map_err(|e| WebError::Internal(anyhow::Error::new(e).context("rendering a template")))
}

/// The page for an error status of the site's routes, inside the layout (see
/// [`super::error::site_error_pages`]).
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub layout: Layout,
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
}

/// The page for an error outside the routes (a timeout, a caught panic), which needs nothing
/// but the status: see [`super::error::error_pages`].
#[derive(Template)]
#[template(path = "bare/error.html")]
pub struct BareErrorPage {
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
}

/// "just now", "5 min ago", "3 h ago", "2 days ago", then the date: how pages show times.
pub fn ago(at: time::OffsetDateTime) -> String {
    let seconds = (time::OffsetDateTime::now_utc() - at)
        .whole_seconds()
        .max(0);
    match seconds {
        0..60 => "just now".into(),
        60..3600 => format!("{} min ago", seconds / 60),
        3600..86_400 => format!("{} h ago", seconds / 3600),
        86_400..604_800 => match seconds / 86_400 {
            1 => "yesterday".into(),
            days => format!("{days} days ago"),
        },
        _ => date(at),
    }
}

/// An instant as operations pages show it: `2026-11-22 08:43:07 UTC`.
pub fn timestamp(at: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::FormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    at.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_default()
}

/// A date as pages show it: `22 Nov 2026`.
pub fn date(at: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::FormatItem<'_>] =
        time::macros::format_description!("[day padding:none] [month repr:short] [year]");
    at.format(FORMAT).unwrap_or_default()
}
