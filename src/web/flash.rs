//! One-shot messages shown on the next page ("Welcome back", "Password changed").
//!
//! A handler sets one with [`set`] alongside a redirect; the middleware hands it to the next
//! request's [`Layout`](super::Layout) and clears the cookie once an HTML page has been served,
//! so a message survives redirects and asset requests and is shown exactly once.

use axum::{
    extract::{Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::Response,
};
use axum_extra::extract::cookie::{Cookie, SameSite, SignedCookieJar};

use super::AppState;
use crate::cache::page::Personal;

pub const COOKIE: &str = "hearth_flash";

/// The flash message of this request, if any.
#[derive(Debug, Clone)]
pub struct Flash(pub Option<String>);

/// Adds a flash message to the jar (signed, so nobody else can put words on our pages).
pub fn set(jar: SignedCookieJar, message: impl Into<String>) -> SignedCookieJar {
    jar.add(
        Cookie::build((COOKIE, message.into()))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .build(),
    )
}

/// Reads the flash cookie into the request and clears it after an HTML page is served.
pub async fn middleware(
    State(state): State<AppState>,
    jar: SignedCookieJar,
    mut request: Request,
    next: Next,
) -> Response {
    let message = jar.get(COOKIE).map(|c| c.value().to_owned());
    if message.is_some() {
        // The message is this visitor's: no page showing it may be shared.
        Personal::of(request.extensions_mut()).mark();
    }
    request.extensions_mut().insert(Flash(message.clone()));
    let mut response = next.run(request).await;
    if state.config.sessions.secure_cookies {
        mark_secure(&mut response);
    }
    if message.is_none() {
        return response;
    }
    let is_page = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/html"));
    let sets_new = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(format!("{COOKIE}=").as_bytes()));
    if is_page && !sets_new {
        let removal = Cookie::build((COOKIE, ""))
            .path("/")
            .secure(state.config.sessions.secure_cookies)
            .max_age(time::Duration::ZERO)
            .build();
        if let Ok(value) = removal.to_string().parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Adds `Secure` to the flash cookies a handler set: [`set`] is called from handlers that do
/// not have the configuration at hand, and the message (which can name the user) must not go
/// over plain HTTP when the site is served over HTTPS.
fn mark_secure(response: &mut Response) {
    let prefix = format!("{COOKIE}=");
    let headers = response.headers_mut();
    if !headers
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(prefix.as_bytes()))
    {
        return;
    }
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in cookies {
        let secured = value
            .to_str()
            .ok()
            .filter(|text| text.starts_with(&prefix) && !text.contains("; Secure"))
            .and_then(|text| HeaderValue::from_str(&format!("{text}; Secure")).ok());
        headers.append(header::SET_COOKIE, secured.unwrap_or(value));
    }
}
