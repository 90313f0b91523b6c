//! Template rendering and the context every page's base layout needs.

use std::sync::Arc;

use askama::Template;
use axum::{extract::FromRequestParts, http::request::Parts, response::Html};

use super::{
    AppState, WebError,
    auth::{CurrentUser, User},
    csrf::CsrfToken,
    flash::Flash,
};

/// What `base.html` shows on every page: the signed-in user, a flash message, the CSRF token
/// for forms and the static asset version.
#[derive(Debug, Clone)]
pub struct Layout {
    pub user: Option<User>,
    pub flash: Option<String>,
    pub csrf_token: String,
    pub static_version: Arc<str>,
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
        Ok(Self {
            user,
            flash,
            csrf_token,
            static_version: state.static_version.clone(),
        })
    }
}

/// Renders a template to an HTML response; a template error is an internal error.
pub fn render(template: &impl Template) -> Result<Html<String>, WebError> {
    template
        .render()
        .map(Html)
        .map_err(|e| WebError::Internal(anyhow::Error::new(e).context("rendering a template")))
}

/// The page for every error status (see [`super::error::error_pages`]).
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
}
