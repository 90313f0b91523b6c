//! Cross-site request forgery protection for every state-changing request.
//!
//! Double-submit token, as Django does it: each browser gets a random token in a signed,
//! HttpOnly, SameSite=Lax cookie; pages put the same token in their forms (`csrf_token` field)
//! and scripts send it in the `X-CSRF-Token` header (the layout exposes it in a `<meta>` tag).
//! A POST, PUT, PATCH or DELETE whose submitted token does not match the cookie is refused with
//! 403 before any handler runs. A forged cross-site form cannot read the cookie, so it cannot
//! submit the token; the signature stops a sibling subdomain from planting a cookie of its own.
//!
//! A WebSocket handshake carries no token on either protocol: on HTTP/1.1 it is a `GET`, and on
//! HTTP/2 an extended `CONNECT` with `:protocol = websocket` (RFC 8441), which browsers send for
//! `new WebSocket(...)` only and never let a page send otherwise. Both are checked by their
//! `Origin` instead ([`super::ws`]), so the second is let through here like the first.

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use axum_extra::extract::cookie::{Cookie, SameSite, SignedCookieJar};

use super::{AppState, WebError};

pub const COOKIE: &str = "hearth_csrf";
pub const FIELD: &str = "csrf_token";
pub const HEADER: &str = "x-csrf-token";

/// The token for this request, placed in the request extensions for templates.
#[derive(Debug, Clone)]
pub struct CsrfToken(pub String);

/// A fresh random token.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The cookie carrying `token`.
pub fn cookie(token: String, secure: bool) -> Cookie<'static> {
    Cookie::build((COOKIE, token))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .build()
}

/// The middleware: issues a token to browsers without one and checks unsafe methods.
pub async fn protect(
    State(state): State<AppState>,
    jar: SignedCookieJar,
    request: Request,
    next: Next,
) -> Response {
    let existing = jar.get(COOKIE).map(|c| c.value().to_owned());
    let mut request = request;
    if !request.method().is_safe() && !is_websocket_connect(&request) {
        let (submitted, rebuilt) =
            match submitted_token(request, state.config.http.body_limit).await {
                Ok(found) => found,
                Err(response) => return response,
            };
        request = rebuilt;
        let valid = matches!((&existing, &submitted), (Some(expected), Some(got)) if constant_time_eq(expected.as_bytes(), got.as_bytes()));
        if !valid {
            tracing::warn!(
                cookie = existing.is_some(),
                submitted = submitted.is_some(),
                "CSRF check failed"
            );
            return WebError::Forbidden(
                "The form's security token is missing or out of date. Reload the page and try again.".into(),
            )
            .into_response();
        }
    }

    let token = existing.clone().unwrap_or_else(new_token);
    request.extensions_mut().insert(CsrfToken(token.clone()));
    let mut response = next.run(request).await;
    if existing.is_none() {
        let jar = jar.add(cookie(token, state.config.sessions.secure_cookies));
        for set_cookie in jar.into_response().headers().get_all(header::SET_COOKIE) {
            response
                .headers_mut()
                .append(header::SET_COOKIE, set_cookie.clone());
        }
    }
    response
}

/// An HTTP/2 extended CONNECT that opens a WebSocket (RFC 8441). A plain `CONNECT`, or one for
/// another protocol, still needs the token (and no route serves it: 405).
fn is_websocket_connect(request: &Request) -> bool {
    request.method() == axum::http::Method::CONNECT
        && request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str() == "websocket")
}

/// The token sent with the request: the header, or the `csrf_token` field of a urlencoded form
/// (the body is read, bounded by the body limit, and put back for the handler).
async fn submitted_token(
    request: Request,
    limit: usize,
) -> Result<(Option<String>, Request), Response> {
    if let Some(value) = request.headers().get(HEADER).and_then(|v| v.to_str().ok()) {
        return Ok((Some(value.to_owned()), request));
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok((None, request));
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response())?;
    let token = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == FIELD)
        .map(|(_, v)| v.into_owned());
    Ok((token, Request::from_parts(parts, Body::from(bytes))))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::{Request, constant_time_eq, is_websocket_connect};
    use axum::{body::Body, http::Method};

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    fn request(method: Method, protocol: Option<&'static str>) -> Request {
        let mut request = Request::builder().method(method).uri("/ws/rooms/lobby");
        if let Some(protocol) = protocol {
            request = request.extension(hyper::ext::Protocol::from_static(protocol));
        }
        request.body(Body::empty()).unwrap()
    }

    #[test]
    fn only_an_extended_connect_for_a_websocket_goes_without_a_token() {
        assert!(is_websocket_connect(&request(
            Method::CONNECT,
            Some("websocket")
        )));
        assert!(!is_websocket_connect(&request(Method::CONNECT, None)));
        assert!(!is_websocket_connect(&request(
            Method::CONNECT,
            Some("webtransport")
        )));
        assert!(!is_websocket_connect(&request(
            Method::POST,
            Some("websocket")
        )));
    }
}
