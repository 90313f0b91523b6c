//! Device cookies: a browser that signed in to an account gets a signed, HttpOnly cookie naming
//! that account, and the login throttle judges its later attempts by its own failures alone
//! (OWASP's "device cookies"), so strangers guessing the password never keep the owner out of
//! a device they used before.
//!
//! The cookie holds `<user id>.<random device id>`, signed with the site's key (nobody can make
//! one for an account they never signed in to), and is sent to `/login` only: other pages never
//! see it, so it never makes a page personal.

use axum_extra::extract::{
    SignedCookieJar,
    cookie::{Cookie, SameSite},
};

pub const COOKIE: &str = "hearth_device";

/// How long a browser stays a known device without signing in again.
const LIFETIME: time::Duration = time::Duration::days(365);

/// A browser known to have signed in (random, 128 bits, hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId(String);

impl DeviceId {
    pub(super) fn new() -> Self {
        Self(hex::encode(rand::random::<[u8; 16]>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The device this browser proved for `user_id`, if its cookie names that user.
pub fn known(jar: &SignedCookieJar, user_id: i64) -> Option<DeviceId> {
    let cookie = jar.get(COOKIE)?;
    let (user, device) = cookie.value().split_once('.')?;
    let valid = user.parse::<i64>().ok() == Some(user_id)
        && device.len() == 32
        && device.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| DeviceId(device.to_owned()))
}

/// Marks this browser as a device of `user_id` after it proved who it is (a right password, or
/// an emailed sign-in link), keeping its device id if it already was one.
pub fn remember(jar: SignedCookieJar, user_id: i64, secure: bool) -> SignedCookieJar {
    let device = known(&jar, user_id).unwrap_or_else(DeviceId::new);
    jar.add(
        Cookie::build((COOKIE, format!("{user_id}.{}", device.0)))
            .path("/login")
            .http_only(true)
            .secure(secure)
            .same_site(SameSite::Lax)
            .max_age(LIFETIME)
            .build(),
    )
}
