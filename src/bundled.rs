//! The application the `hearth` binary runs: the platform with every bundled app.
//!
//! One composition among many: a team's own binary composes the apps it wants, its own among
//! them, the same way (`docs/building-an-app.md`). The order is the order of migrations and of
//! the navigation: accounts first, since the other apps' tables refer to its mail settings.

use crate::{
    Application, accounts, chat, dashboard, documents, gateway, home, mail, notifications, ops,
    publishing, uploads,
    web::assets::{Dir, include_dir},
};

/// The site's stylesheet and scripts (`static/`), compiled into the binary.
static SITE: Dir = include_dir!("$CARGO_MANIFEST_DIR/static");

/// Every bundled app on the platform.
pub fn application() -> Application {
    Application::new()
        .assets(&SITE)
        .app(accounts::app())
        .app(home::app())
        .app(publishing::app())
        .app(chat::app())
        .app(documents::app())
        .app(dashboard::app())
        .app(uploads::app())
        .app(ops::app())
        .app(mail::app())
        .app(notifications::app())
        .app(gateway::app())
}
