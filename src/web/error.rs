//! Errors of the web layer and the pages they become.
//!
//! Handlers return [`WebError`]. Its `IntoResponse` logs internal causes inside the request
//! span and produces a bare status carrying a public message; the [`error_pages`] middleware then
//! renders every error status — ours, axum's extractor rejections, 404s, 405s, timeouts, oversized
//! bodies, caught panics — as the `error.html` page, or as JSON under `/api/`. One mechanism, so
//! no error path can leak a stack trace or SQL text to the client.

use askama::Template;
use axum::{
    Json,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{Html, IntoResponse, Response},
};

use super::templates::ErrorPage;
use crate::db::PipelineError;

/// Errors a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("page not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("you need to log in first")]
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
            Self::NotFound => StatusCode::NOT_FOUND,
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
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => Self::Unavailable(e.into()),
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

/// Renders error statuses that do not already carry an HTML or JSON body.
pub async fn error_pages(request: Request, next: Next) -> Response {
    let wants_json = request.uri().path().starts_with("/api/")
        || request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.starts_with("application/json"));
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if content_type.starts_with("text/html") || content_type.starts_with("application/json") {
        return response;
    }

    let (mut parts, body) = response.into_parts();
    let message = match parts.extensions.get::<PublicMessage>() {
        Some(PublicMessage(message)) => message.clone(),
        None => match known_message(status) {
            Some(message) => message.to_string(),
            // axum's extractor rejections explain the problem with the request in plain text
            // ("missing field `username`"); that is about the client's input, so it is safe to show.
            None if status.is_client_error() && content_type.starts_with("text/plain") => {
                let bytes = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                if text.is_empty() {
                    generic_message(status)
                } else {
                    text
                }
            }
            None => generic_message(status),
        },
    };
    parts.headers.remove(header::CONTENT_LENGTH);

    let mut rendered = if wants_json {
        Json(serde_json::json!({ "error": { "status": status.as_u16(), "message": message } }))
            .into_response()
    } else {
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message,
        };
        match page.render() {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "cannot render the error page");
                (status, "error").into_response()
            }
        }
    };
    *rendered.status_mut() = status;
    // Keep meaningful headers of the original (Allow, Retry-After, Set-Cookie, ...).
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
    } else {
        status
            .canonical_reason()
            .unwrap_or("The request could not be handled.")
            .into()
    }
}
