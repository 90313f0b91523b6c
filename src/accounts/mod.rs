//! Accounts app: sign up, log in, log out and change password.
//!
//! Pages are plain HTML forms (see `templates/accounts/`). Users, sessions and password
//! hashing come from the platform ([`crate::web::auth`], [`crate::web::session`]); what this app
//! adds is the forms, their validation messages and [`throttle`], which rate-limits failed
//! logins per account and per client address in the database so all instances share one limit.

mod pages;
pub mod throttle;

use axum::{Router, routing::get};

use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/signup", get(pages::signup_form).post(pages::signup))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", axum::routing::post(pages::logout))
        .route(
            "/account/password",
            get(pages::password_form).post(pages::change_password),
        )
        .route("/api/me", get(pages::me))
}
