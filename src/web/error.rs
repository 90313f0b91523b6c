//! Errors of the web layer and the pages they become.
//!
//! Handlers return [`WebError`]. Its `IntoResponse` logs internal causes inside the request
//! span and produces a bare status carrying a public message. Two middlewares then render every
//! error status — ours, axum's extractor rejections, 404s, 405s, timeouts, oversized bodies,
//! caught panics — as a page, or as JSON under `/api/`:
//!
//! * [`site_error_pages`], around the site's routes, renders `error.html` inside the full
//!   layout (navigation, the signed-in user), so an error is a page of the site, not a dead end;
//! * [`error_pages`], the outermost, renders what is left (a timeout, a caught panic, a refused
//!   body: all happen outside the routes) as the bare `bare/error.html`.
//!
//! One mechanism, so no error path can leak a stack trace or SQL text to the client. axum's own
//! rejection texts ("Failed to deserialize query string: …") are parser output: they are never
//! shown either, but rewritten in the site's voice by [`rejection_message`].

use askama::Template;
use axum::{
    Json,
    extract::{FromRequestParts, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{Html, IntoResponse, Response},
};

use super::{
    AppState, Layout,
    csrf::{self, CsrfToken},
    templates::{BareErrorPage, ErrorPage},
};
use crate::db::PipelineError;

/// Errors a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("There is no page at this address.")]
    NotFound,
    /// A 404 that can say more than "no page here" (a list's page past its last).
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("You need to log in to see this.")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("the database is unavailable; try again shortly")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("something went wrong on our side")]
    Internal(#[from] anyhow::Error),
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound | Self::Missing(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for WebError {
    fn from(e: sqlx::Error) -> Self {
        // A lost connection (a broken socket, or the server ending the session as on a
        // restart: `57P01`, a FATAL) is the database's unavailability too, not our bug; noting
        // it makes the pool check its other idle connections (`db::lost`).
        if crate::db::lost::unavailable(&e) {
            return Self::Unavailable(e.into());
        }
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::Conflict("that already exists".into())
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                Self::Unprocessable("that refers to something that does not exist".into())
            }
            // Text PostgreSQL cannot hold (a NUL byte, from `%00` in a path or a form) is the
            // client's input, not our failure.
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("22021" | "22P05")) =>
            {
                Self::BadRequest("the text contains a character that cannot be stored".into())
            }
            _ => Self::Internal(anyhow::Error::new(e)),
        }
    }
}

impl From<PipelineError> for WebError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Unavailable(_) | PipelineError::ConnectTimeout(_) => {
                Self::Unavailable(e.into())
            }
            PipelineError::Query(_) => Self::Internal(anyhow::Error::new(e)),
        }
    }
}

/// The client-safe message of an error response, read by [`error_pages`].
#[derive(Debug, Clone)]
pub struct PublicMessage(pub String);

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) => tracing::error!(error = ?cause, "request failed"),
            Self::Unavailable(cause) => tracing::warn!(error = %cause, "database unavailable"),
            _ => {}
        }
        let mut response = self.status().into_response();
        response
            .extensions_mut()
            .insert(PublicMessage(self.to_string()));
        response
    }
}

/// Fallback for unknown routes.
pub async fn not_found() -> WebError {
    WebError::NotFound
}

/// Whether the client asked for JSON: a program under `/api/`, or an `Accept` saying so.
fn wants_json(request: &Request) -> bool {
    request.uri().path().starts_with("/api/")
        || request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.starts_with("application/json"))
}

/// An error response that has no HTML or JSON body yet: its parts and public message.
async fn unrendered(response: Response) -> Result<(axum::http::response::Parts, String), Response> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return Err(response);
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if content_type.starts_with("text/html") || content_type.starts_with("application/json") {
        return Err(response);
    }
    let (mut parts, body) = response.into_parts();
    let message = match parts.extensions.get::<PublicMessage>() {
        Some(PublicMessage(message)) => message.clone(),
        None => match known_message(status) {
            Some(message) => message.to_string(),
            // A plain-text client error is a message for the client: the platform's own ("The
            // page has changed since you loaded it") is shown as it is; an extractor rejection's
            // is in the parser's words, and is said again in ours.
            None if status.is_client_error() && content_type.starts_with("text/plain") => {
                let bytes = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                match rejection_message(&text) {
                    Some(message) => message,
                    None if text.is_empty() => generic_message(status),
                    None => text,
                }
            }
            None => generic_message(status),
        },
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok((parts, message))
}

/// Sets `status` on a rendered page and keeps the meaningful headers of the original response
/// (Allow, Retry-After, Set-Cookie, ...).
fn finish(mut rendered: Response, parts: &axum::http::response::Parts) -> Response {
    *rendered.status_mut() = parts.status;
    let content_type = rendered.headers().get(header::CONTENT_TYPE).cloned();
    for (name, value) in parts.headers.iter() {
        rendered.headers_mut().append(name.clone(), value.clone());
    }
    rendered.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("text/plain; charset=utf-8")),
    );
    rendered
}

fn json_error(status: StatusCode, message: &str) -> Response {
    Json(serde_json::json!({ "error": { "status": status.as_u16(), "message": message } }))
        .into_response()
}

fn html_or_plain(status: StatusCode, page: Result<String, askama::Error>) -> Response {
    match page {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the error page");
            (status, "error").into_response()
        }
    }
}

/// Renders the error statuses of the site's routes as pages of the site: `error.html`, inside
/// the layout of every page, with the visitor's navigation and name. (JSON requests are left to
/// [`error_pages`].) Only the session and CSRF cookies are kept from the request, and only an
/// error response costs anything more: the lookup of who is signed in.
pub async fn site_error_pages(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if wants_json(&request) {
        return next.run(request).await;
    }
    let cookies = request.headers().get(header::COOKIE).cloned();
    let (parts, message) = match unrendered(next.run(request).await).await {
        Ok(unrendered) => unrendered,
        Err(response) => return response,
    };
    let mut visitor = Request::new(());
    if let Some(cookies) = cookies {
        visitor.headers_mut().insert(header::COOKIE, cookies);
    }
    let (mut visitor, ()) = visitor.into_parts();
    // The nav's log-out form needs this browser's token; a browser without one has no session.
    let jar = axum_extra::extract::SignedCookieJar::from_headers(
        &visitor.headers,
        state.cookie_key.clone(),
    );
    if let Some(token) = jar.get(csrf::COOKIE) {
        visitor
            .extensions
            .insert(CsrfToken(token.value().to_owned()));
    }
    let layout = match Layout::from_request_parts(&mut visitor, &state).await {
        Ok(layout) => layout,
        // The database is what failed: the bare page, which needs nothing from it.
        Err(_) => return bare_page(parts, message),
    };
    let status = parts.status;
    let page = ErrorPage {
        layout,
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        message,
    };
    let mut response = finish(html_or_plain(status, page.render()), &parts);
    // Whoever is named in the nav, the page is theirs: never shared by a cache.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    response
}

fn bare_page(parts: axum::http::response::Parts, message: String) -> Response {
    let status = parts.status;
    let page = BareErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        message,
    };
    finish(html_or_plain(status, page.render()), &parts)
}

/// Renders error statuses that do not already carry an HTML or JSON body: JSON for programs,
/// the bare page for what happened outside the routes (see the module documentation).
pub async fn error_pages(request: Request, next: Next) -> Response {
    let wants_json = wants_json(&request);
    let (parts, message) = match unrendered(next.run(request).await).await {
        Ok(unrendered) => unrendered,
        Err(response) => return response,
    };
    if wants_json {
        let rendered = json_error(parts.status, &message);
        finish(rendered, &parts)
    } else {
        bare_page(parts, message)
    }
}

/// What an axum extractor rejection means, in the site's words: its text is the parser's
/// ("Failed to deserialize query string: page: invalid digit found in string"), which the
/// visitor should never have to read. The name of the field at fault is kept when the text has
/// one; `None` for a text that is not a rejection we know.
pub fn rejection_message(text: &str) -> Option<String> {
    let text = text.trim();
    let field = |rest: &str| -> Option<String> {
        // serde_path_to_error puts the path first: `page: invalid digit found in string`;
        // a missing field reads "missing field `password`".
        if let Some(name) = rest
            .split('`')
            .nth(1)
            .filter(|_| rest.contains("missing field"))
        {
            return Some(name.to_owned());
        }
        let (path, _) = rest.split_once(": ")?;
        let plain = !path.is_empty()
            && path.len() <= 64
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
        plain.then(|| path.to_owned())
    };
    let missing = |rest: &str| rest.contains("missing field");
    if let Some(rest) = text.strip_prefix("Failed to deserialize query string:") {
        return Some(match field(rest.trim()) {
            Some(name) if missing(rest) => format!("This address needs a value for “{name}”."),
            Some(name) => {
                format!("This address has a value for “{name}” that this page cannot use.")
            }
            None => "This address has a value that this page cannot use.".into(),
        });
    }
    let form = text
        .strip_prefix("Failed to deserialize form body:")
        .or_else(|| text.strip_prefix("Failed to deserialize form:"));
    if let Some(rest) = form {
        return Some(match field(rest.trim()) {
            Some(name) if missing(rest) => {
                format!("The form was sent without “{name}”. Fill it in and try again.")
            }
            Some(name) => format!("The form's “{name}” has a value that this page cannot use."),
            None => "The form has a value that this page cannot use.".into(),
        });
    }
    if text.starts_with("Invalid URL") || text.starts_with("Wrong number of path arguments") {
        return Some("There is no page at this address.".into());
    }
    if text.starts_with("Form requests must have") || text.starts_with("Expected request with") {
        return Some("This page expects a form, and the request was not one.".into());
    }
    const UNREADABLE: &[&str] = &[
        "Failed to parse the request body as JSON",
        "Failed to deserialize the JSON body",
        "Failed to buffer the request body",
        "Request body didn't contain valid UTF-8",
        "Invalid UTF-8",
    ];
    if UNREADABLE.iter().any(|prefix| text.starts_with(prefix)) {
        return Some("The request body could not be read.".into());
    }
    // The server's own mistakes in wiring a route, not the client's: nothing to tell them.
    const WIRING: &[&str] = &[
        "Missing request extension",
        "No paths parameters found",
        "No matched path found",
        "The matched route is not nested",
        "Unsupported type",
    ];
    if WIRING.iter().any(|prefix| text.starts_with(prefix)) {
        return Some("This request could not be handled.".into());
    }
    None
}

/// Messages for statuses the platform itself produces (routing, limits, timeouts).
fn known_message(status: StatusCode) -> Option<&'static str> {
    match status {
        StatusCode::NOT_FOUND => Some("There is no page at this address."),
        StatusCode::METHOD_NOT_ALLOWED => {
            Some("This address does not accept that kind of request.")
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            Some("The request body is larger than this server accepts.")
        }
        StatusCode::REQUEST_TIMEOUT => Some("The request took too long and was stopped."),
        _ => None,
    }
}

fn generic_message(status: StatusCode) -> String {
    if status.is_server_error() {
        "Something went wrong on our side. It has been logged.".into()
    } else if matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
    ) {
        "This request could not be understood. Go back and try again.".into()
    } else {
        status
            .canonical_reason()
            .unwrap_or("The request could not be handled.")
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::rejection_message;

    #[test]
    fn rejections_are_said_in_the_sites_words() {
        let said = |text: &str| rejection_message(text).unwrap();
        assert_eq!(
            said("Failed to deserialize query string: before: invalid digit found in string"),
            "This address has a value for “before” that this page cannot use."
        );
        assert_eq!(
            said("Failed to deserialize form body: missing field `password`"),
            "The form was sent without “password”. Fill it in and try again."
        );
        assert_eq!(
            said("Invalid URL: Cannot parse `abc` to a `i64`"),
            "There is no page at this address."
        );
        // A path the parser makes up is not echoed.
        assert_eq!(
            said("Failed to deserialize query string: <script>: nope"),
            "This address has a value that this page cannot use."
        );
        // The platform's own plain-text messages are not rejections.
        assert_eq!(
            rejection_message("The page has changed since you loaded it."),
            None
        );
    }
}
