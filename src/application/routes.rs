//! [`Routes`]: an app's HTTP routes, with the paths they claim, so that two apps claiming the
//! same path are an error at start naming both rather than a panic deep inside axum (or, for
//! different methods on one path, one app silently answering for the other).

use axum::{Router, routing::MethodRouter};

use crate::web::AppState;

/// An app's routes: an axum router plus the paths it claims.
#[derive(Default)]
pub struct Routes {
    pub(super) router: Router<AppState>,
    pub(super) paths: Vec<String>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `path` to `handler`, as [`Router::route`] does.
    pub fn route(mut self, path: &str, handler: MethodRouter<AppState>) -> Self {
        self.router = self.router.route(path, handler);
        self.paths.push(path.to_owned());
        self
    }

    /// Adds routes built elsewhere (a group sharing a layer, say).
    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    /// Wraps every route added so far in `layer`, as [`Router::layer`] does.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<axum::extract::Request> + Clone + Send + Sync + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Response:
            axum::response::IntoResponse + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Error:
            Into<std::convert::Infallible> + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Future: Send + 'static,
    {
        self.router = self.router.layer(layer);
        self
    }

    /// The paths claimed, in the order they were added.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }
}
