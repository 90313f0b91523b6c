//! Reads that may lag, on the read replicas (`db::replicas`), with read-your-writes.
//!
//! * [`LagTolerant`] is the extractor a handler takes for reads that may be a little behind
//!   (public pages and lists, reports): a replica in use when there is one, else the primary.
//!   Never for what decides who someone is or what they may do (sessions, permissions): those
//!   read `state.db`.
//! * Read-your-writes: after a request that may have written (a method that is not safe,
//!   answered with a success or a redirect), [`remember_writes`] reads the primary's WAL insert
//!   position and gives it to the client in the short-lived [`COOKIE`]; that client's
//!   lag-tolerant reads then go only to a replica whose last check saw it past that position,
//!   else to the primary. It costs one query per such request, and only when replicas are
//!   configured (the layer is not installed otherwise). The cookie is not signed: a forged
//!   position can only send its own client to the primary (an unparseable one does too).
//! * The cache rule: a response rendered from a replica may predate the purge of the page
//!   cache that a write made, and stored it would be stale until its TTL. So a request a page
//!   cache layer will store the answer of ([`Filling`]) reads the primary, and a response that
//!   did read a replica is marked [`Personal`]: the page cache never stores it and it leaves
//!   `Cache-Control: private`, so no CDN keeps it either.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, HeaderValue, header, request::Parts},
    middleware::Next,
    response::Response,
};
use axum_extra::extract::{
    CookieJar,
    cookie::{Cookie, SameSite},
};
use sqlx::PgPool;

use super::AppState;
use crate::{
    cache::page::{Filling, Personal},
    db::{Lsn, replicas},
};

/// The cookie holding the primary's WAL position after the client's last write.
pub const COOKIE: &str = "hearth_lsn";

/// A pool for reads that may lag: a read replica in use (that has replayed the client's last
/// write, if it made one lately), else the primary. See the module documentation.
pub struct LagTolerant(pub PgPool);

impl FromRequestParts<AppState> for LagTolerant {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let replicas = &state.replicas;
        if !replicas.is_configured() {
            return Ok(Self(state.db.clone()));
        }
        if parts.extensions.get::<Filling>().is_some() {
            return Ok(Self(replicas.cache_fill().pool));
        }
        let reader = replicas.reader(written_at(&parts.headers));
        if reader.replica {
            Personal::of(&mut parts.extensions).mark();
        }
        Ok(Self(reader.pool))
    }
}

/// The position in the client's [`COOKIE`], if it has one: [`Lsn::MAX`] (the primary) for a
/// value that is not a position.
pub fn written_at(headers: &HeaderMap) -> Option<Lsn> {
    let jar = CookieJar::from_headers(headers);
    let value = jar.get(COOKIE)?.value();
    Some(value.parse().unwrap_or(Lsn::MAX))
}

/// How long the [`COOKIE`] lasts: the lag bound and two check intervals, whole seconds. Past
/// it, a replica in use is within the bound of the primary, which is the promise of every
/// lag-tolerant read.
fn cookie_lifetime(state: &AppState) -> Duration {
    let db = &state.config.db;
    let lifetime = db.read_max_lag + db.read_check_interval * 2;
    Duration::from_secs(lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0))
        .max(Duration::from_secs(1))
}

/// Middleware (installed when replicas are configured): after a request that may have
/// written, the primary's WAL position in the client's [`COOKIE`]. A failure to read it is
/// logged and gives [`Lsn::MAX`], so that the client reads the primary for the cookie's life.
pub async fn remember_writes(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let may_write = !request.method().is_safe();
    let mut response = next.run(request).await;
    let status = response.status();
    if !may_write || !(status.is_success() || status.is_redirection()) {
        return response;
    }
    let position = match replicas::write_position(&state.db).await {
        Ok(position) => position,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the primary's WAL position after a write; this client's reads go to the primary for a while");
            Lsn::MAX
        }
    };
    let lifetime = cookie_lifetime(&state);
    let cookie = Cookie::build((COOKIE, position.to_string()))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.config.sessions.secure_cookies)
        .max_age(time::Duration::seconds(lifetime.as_secs() as i64))
        .build();
    match HeaderValue::from_str(&cookie.to_string()) {
        Ok(value) => {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        Err(e) => tracing::error!(error = %e, "cannot write the read-your-writes cookie"),
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_gives_a_position_and_a_forged_one_the_primary() {
        let headers = |cookie: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
            headers
        };
        assert_eq!(written_at(&HeaderMap::new()), None);
        assert_eq!(
            written_at(&headers("a=b; hearth_lsn=1/A0")),
            Some("1/A0".parse().unwrap())
        );
        for forged in [
            "hearth_lsn=",
            "hearth_lsn=x",
            "hearth_lsn=1/2/3",
            "hearth_lsn=999999999/0",
        ] {
            assert_eq!(written_at(&headers(forged)), Some(Lsn::MAX), "{forged}");
        }
    }
}
