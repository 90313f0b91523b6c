//! The publishing pages: the public list and post pages, the editor, author pages and
//! subscriptions.

use askama::Template;
use axum::{
    Form,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
};
use axum_extra::extract::SignedCookieJar;
use serde::Deserialize;
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;

use super::{
    LIST_TAG, author_tag,
    images::ImageSigner,
    insert_with_free_slug,
    jobs::{NotifySubscribers, PostPublished},
    markdown,
    post::{Body, Title},
    post_tag,
};
use crate::{
    cache::page::TAGS,
    jobs::Enqueue,
    web::{
        AppState, Layout, WebError,
        auth::{CurrentUser, RequireLogin, User},
        conditional::Conditional,
        flash, render,
        replicas::LagTolerant,
        templates::{ago, date},
    },
};

const LIST_PAGE: i64 = 20;

/// A post as pages show it.
#[derive(sqlx::FromRow)]
pub(super) struct PostView {
    id: i64,
    slug: String,
    title: String,
    body: String,
    body_html: String,
    author_id: i64,
    author: String,
    published_at: Option<OffsetDateTime>,
    updated_at: OffsetDateTime,
}

impl PostView {
    fn is_published(&self) -> bool {
        self.published_at.is_some()
    }

    fn published(&self) -> String {
        self.published_at.map(date).unwrap_or_default()
    }

    fn updated(&self) -> String {
        ago(self.updated_at)
    }

    fn excerpt(&self) -> String {
        markdown::excerpt(&self.body, 220)
    }
}

async fn find(db: &PgPool, slug: &str) -> Result<PostView, WebError> {
    sqlx::query_as!(
        PostView,
        "SELECT p.id, p.slug, p.title, p.body, p.body_html, p.author_id, u.username AS author,
                p.published_at, p.updated_at
           FROM posts p JOIN users u ON u.id = p.author_id
          WHERE p.slug = $1",
        slug
    )
    .fetch_optional(db)
    .await?
    .ok_or(WebError::NotFound)
}

/// The post at `slug` if `user` wrote it: 404 if there is none or it is someone else's draft
/// (as on its page: a 403 would tell that the draft exists), 403 if it is someone else's
/// published post.
async fn own(state: &AppState, slug: &str, user: &User) -> Result<PostView, WebError> {
    let post = find(&state.db, slug).await?;
    if post.author_id != user.id && !post.is_published() {
        return Err(WebError::NotFound);
    }
    if post.author_id != user.id {
        return Err(WebError::Forbidden(
            "Only its author can change a post.".into(),
        ));
    }
    Ok(post)
}

/// `Layout` for a page the page cache may share between anonymous visitors.
fn shared_layout(layout: Layout) -> Layout {
    if layout.user.is_some() {
        layout
    } else {
        layout.for_shared_cache()
    }
}

fn with_tags(html: Html<String>, tags: &[String]) -> Response {
    let mut response = html.into_response();
    if let Ok(value) = HeaderValue::from_str(&tags.join(",")) {
        response.headers_mut().insert(TAGS, value);
    }
    response
}

#[derive(Template)]
#[template(path = "posts/list.html")]
struct ListPage {
    layout: Layout,
    posts: Vec<PostView>,
    page: i64,
    more: bool,
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    page: Option<String>,
}

/// Most pages the post list has.
const MAX_PAGE: i64 = 10_000;

/// A page number as a link writes it (`1` to [`MAX_PAGE`], no sign, no leading zero), or
/// `None`. Anything else is a 404 rather than a page: the list is page-cached by its URL, and
/// `page=02` or `page=+2` would be other URLs for the same page, each a new cache entry.
fn page_number(raw: Option<&str>) -> Option<i64> {
    let Some(raw) = raw else {
        return Some(1);
    };
    if raw.starts_with('0') || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse()
        .ok()
        .filter(|page| (1..=MAX_PAGE).contains(page))
}

/// What a list's page past its last answers: a 404 that says so (a page of a list that is
/// shorter than that, not "nothing published"), with the way back.
fn past_the_end(page: i64) -> WebError {
    WebError::Missing(format!(
        "This list has fewer than {page} pages: there is nothing on this one. Its first page is \
         the place to start."
    ))
}

/// The version of a page of the list: which posts it shows, and when each last changed (from
/// the published-posts index and 21 rows, without their bodies). A page past the last is a 404
/// here already, so that no precondition (`If-None-Match: *`) turns it into a `304`.
async fn list_version(db: &PgPool, page: i64) -> Result<String, WebError> {
    let rows = sqlx::query!(
        "SELECT id, updated_at FROM posts
          WHERE published_at IS NOT NULL
          ORDER BY published_at DESC, id DESC
          LIMIT $1 OFFSET $2",
        LIST_PAGE + 1,
        (page - 1) * LIST_PAGE
    )
    .fetch_all(db)
    .await?;
    if rows.is_empty() && page > 1 {
        return Err(past_the_end(page));
    }
    let mut version = format!("posts page {page}:");
    for row in rows {
        version.push_str(&format!(
            " {}@{}",
            row.id,
            row.updated_at.unix_timestamp_nanos()
        ));
    }
    Ok(version)
}

/// The published posts, newest first, 20 to a page. A page past the last is a 404. A
/// revalidation of an unchanged page is a `304` before the posts are read. Read from a
/// replica when one may serve (`LagTolerant`).
#[tracing::instrument(skip_all)]
pub(super) async fn list(
    LagTolerant(db): LagTolerant,
    conditional: Conditional,
    layout: Layout,
    Query(query): Query<PageQuery>,
) -> Result<Response, WebError> {
    let page = page_number(query.page.as_deref()).ok_or(WebError::NotFound)?;
    let conditional = conditional.etag(list_version(&db, page).await?);
    if let Some(answer) = conditional.precondition() {
        return Ok(answer);
    }
    let mut posts = sqlx::query_as!(
        PostView,
        "SELECT p.id, p.slug, p.title, p.body, p.body_html, p.author_id, u.username AS author,
                p.published_at, p.updated_at
           FROM posts p JOIN users u ON u.id = p.author_id
          WHERE p.published_at IS NOT NULL
          ORDER BY p.published_at DESC, p.id DESC
          LIMIT $1 OFFSET $2",
        LIST_PAGE + 1,
        (page - 1) * LIST_PAGE
    )
    .fetch_all(&db)
    .await?;
    if posts.is_empty() && page > 1 {
        return Err(past_the_end(page));
    }
    let more = posts.len() as i64 > LIST_PAGE;
    posts.truncate(LIST_PAGE as usize);
    let html = render(&ListPage {
        layout: shared_layout(layout),
        posts,
        page,
        more,
    })?;
    Ok(conditional.stamp(html.into_response()))
}

#[derive(Template)]
#[template(path = "posts/show.html")]
struct ShowPage {
    layout: Layout,
    post: PostView,
    is_author: bool,
    subscribed: bool,
}

/// The validators of a post's page, from its row without the body: its version is its
/// `updated_at` (every edit, publication and withdrawal sets it) and, for a signed-in reader,
/// whether they follow its author. None for a missing post or someone else's draft: the view
/// answers those.
async fn post_validators(
    db: &PgPool,
    slug: &str,
    viewer: Option<i64>,
    conditional: Conditional,
) -> Result<Conditional, WebError> {
    let Some(row) = sqlx::query!(
        r#"SELECT id, author_id, published_at IS NOT NULL AS "published!", updated_at
             FROM posts WHERE slug = $1"#,
        slug
    )
    .fetch_optional(db)
    .await?
    else {
        return Ok(conditional);
    };
    let is_author = viewer == Some(row.author_id);
    if !row.published && !is_author {
        return Ok(conditional);
    }
    let subscribed = match viewer.filter(|_| !is_author) {
        Some(user_id) => is_subscribed(db, user_id, row.author_id).await?,
        None => false,
    };
    let version = format!(
        "post {} {} {subscribed}",
        row.id,
        row.updated_at.unix_timestamp_nanos()
    );
    Ok(conditional.etag(version).last_modified(row.updated_at))
}

/// One post. Drafts are shown to their author only (404 to anyone else). A signed-in reader's
/// visit is recorded (on the primary), so the daily digest leaves the post out (a
/// revalidation, answered `304` before the post is read, follows a visit already recorded).
/// The post is read from a replica when one may serve (`LagTolerant`): an edit or a
/// withdrawal reaches readers served by one within the lag bound, its author at once.
#[tracing::instrument(skip_all, fields(slug = %slug))]
pub(super) async fn show(
    State(state): State<AppState>,
    LagTolerant(db): LagTolerant,
    conditional: Conditional,
    layout: Layout,
    Path(slug): Path<String>,
) -> Result<Response, WebError> {
    let viewer = layout.user.as_ref().map(|u| u.id);
    let conditional = post_validators(&db, &slug, viewer, conditional).await?;
    if let Some(answer) = conditional.precondition() {
        return Ok(answer);
    }
    let post = find(&db, &slug).await?;
    let is_author = viewer == Some(post.author_id);
    if !post.is_published() && !is_author {
        return Err(WebError::NotFound);
    }
    let mut subscribed = false;
    if let Some(user_id) = viewer.filter(|_| !is_author) {
        sqlx::query!(
            "INSERT INTO post_reads (user_id, post_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            user_id,
            post.id
        )
        .execute(&state.db)
        .await?;
        subscribed = is_subscribed(&db, user_id, post.author_id).await?;
    }
    let tags = [post_tag(post.id)];
    let html = render(&ShowPage {
        layout: shared_layout(layout),
        post,
        is_author,
        subscribed,
    })?;
    Ok(conditional.stamp(with_tags(html, &tags)))
}

async fn is_subscribed(db: &PgPool, user_id: i64, author_id: i64) -> Result<bool, WebError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM subscriptions WHERE subscriber_id = $1 AND author_id = $2) AS "e!""#,
        user_id,
        author_id
    )
    .fetch_one(db)
    .await?)
}

#[derive(Template)]
#[template(path = "posts/edit.html")]
struct EditPage {
    layout: Layout,
    /// `None` for a new post.
    slug: Option<String>,
    title: String,
    body: String,
    is_published: bool,
    error: Option<String>,
}

impl EditPage {
    fn action(&self) -> String {
        match &self.slug {
            Some(slug) => format!("/posts/{slug}/edit"),
            None => "/posts".into(),
        }
    }
}

fn form_error(status: StatusCode, page: &EditPage) -> Response {
    match render(page) {
        Ok(html) => (status, html).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn new_form(_login: RequireLogin, layout: Layout) -> Result<Response, WebError> {
    Ok(render(&EditPage {
        layout,
        slug: None,
        title: String::new(),
        body: String::new(),
        is_published: false,
        error: None,
    })?
    .into_response())
}

#[derive(Deserialize)]
pub(super) struct PostForm {
    title: String,
    body: String,
    /// `save` (keep the state it has: a draft stays a draft) or `publish`.
    #[serde(default)]
    action: String,
}

fn parse_form(form: &PostForm) -> Result<(Title, Body), String> {
    Ok((Title::parse(&form.title)?, Body::parse(&form.body)?))
}

/// Creates a post (a draft, or published at once with the "Publish" button).
#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn create(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    jar: SignedCookieJar,
    Form(form): Form<PostForm>,
) -> Result<Response, WebError> {
    let (title, body) = match parse_form(&form) {
        Ok(parsed) => parsed,
        Err(error) => {
            return Ok(form_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &EditPage {
                    layout,
                    slug: None,
                    title: form.title,
                    body: form.body,
                    is_published: false,
                    error: Some(error),
                },
            ));
        }
    };
    let html = markdown::render(body.as_str(), &ImageSigner::from_state(&state));
    let mut tx = state.db.begin().await?;
    let (id, slug) = insert_with_free_slug(&mut tx, login.user.id, &title, &body, &html)
        .await?
        .ok_or_else(|| {
            WebError::Conflict("Too many posts have this title; choose another one.".into())
        })?;
    let published = form.action == "publish" && publish_in(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(post_id = id, published, "post created");
    if published {
        invalidate(&state, id, login.user.id).await;
    }
    let message = if published {
        "Your post is published."
    } else {
        "Draft saved."
    };
    Ok(back_to_post(jar, &slug, message))
}

/// Publishes a draft in `tx` and enqueues, in the same transaction, the author's mail and the
/// subscribers' notifications: they exist only if the publication commits. `false` if the
/// post was already published. The jobs are the author's: only they (and administrators) can
/// read their status.
async fn publish_in(tx: &mut Transaction<'_, Postgres>, post_id: i64) -> Result<bool, WebError> {
    let Some(author_id) = sqlx::query_scalar!(
        "UPDATE posts SET published_at = now(), publish_count = publish_count + 1, updated_at = now(),
                          published_by_import = false
          WHERE id = $1 AND published_at IS NULL
          RETURNING author_id",
        post_id
    )
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(false);
    };
    let mail = PostPublished { post_id };
    let notify = NotifySubscribers { post_id };
    for job in [Enqueue::new(&mail), Enqueue::new(&notify)] {
        job.map_err(anyhow::Error::new)?
            .owner(author_id)
            .enqueue_on(tx)
            .await
            .map_err(anyhow::Error::new)?;
    }
    Ok(true)
}

/// Drops the cached pages that show this post: its own, the list, its author's page.
/// Called after commit, so that no request can store the old version again afterwards.
async fn invalidate(state: &AppState, post_id: i64, author_id: i64) {
    for tag in [
        LIST_TAG.to_owned(),
        post_tag(post_id),
        author_tag(author_id),
    ] {
        if let Err(e) = state.cache.invalidate_tag(&tag).await {
            tracing::warn!(error = %e, tag, "cannot invalidate cached pages; they expire by themselves");
        }
    }
}

pub(super) async fn edit_form(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    Path(slug): Path<String>,
) -> Result<Response, WebError> {
    let post = own(&state, &slug, &login.user).await?;
    Ok(render(&EditPage {
        layout,
        is_published: post.is_published(),
        slug: Some(post.slug),
        title: post.title,
        body: post.body,
        error: None,
    })?
    .into_response())
}

/// Saves an edit (and publishes a draft with the "Publish" button).
#[tracing::instrument(skip_all, fields(user_id = login.user.id, slug = %slug))]
pub(super) async fn update(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    jar: SignedCookieJar,
    Path(slug): Path<String>,
    Form(form): Form<PostForm>,
) -> Result<Response, WebError> {
    let post = own(&state, &slug, &login.user).await?;
    let (title, body) = match parse_form(&form) {
        Ok(parsed) => parsed,
        Err(error) => {
            return Ok(form_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &EditPage {
                    layout,
                    is_published: post.is_published(),
                    slug: Some(post.slug),
                    title: form.title,
                    body: form.body,
                    error: Some(error),
                },
            ));
        }
    };
    let html = markdown::render(body.as_str(), &ImageSigner::from_state(&state));
    let mut tx = state.db.begin().await?;
    sqlx::query!(
        "UPDATE posts SET title = $2, body = $3, body_html = $4, updated_at = now() WHERE id = $1",
        post.id,
        title.as_str(),
        body.as_str(),
        html
    )
    .execute(&mut *tx)
    .await?;
    let published = form.action == "publish" && publish_in(&mut tx, post.id).await?;
    tx.commit().await?;
    if post.is_published() || published {
        invalidate(&state, post.id, post.author_id).await;
    }
    let message = if published {
        "Your post is published."
    } else {
        "Saved."
    };
    Ok(back_to_post(jar, &slug, message))
}

#[tracing::instrument(skip_all, fields(user_id = login.user.id, slug = %slug))]
pub(super) async fn publish(
    State(state): State<AppState>,
    login: RequireLogin,
    jar: SignedCookieJar,
    Path(slug): Path<String>,
) -> Result<Response, WebError> {
    let post = own(&state, &slug, &login.user).await?;
    let mut tx = state.db.begin().await?;
    let published = publish_in(&mut tx, post.id).await?;
    tx.commit().await?;
    let message = if published {
        invalidate(&state, post.id, post.author_id).await;
        "Your post is published."
    } else {
        "That post was already published."
    };
    Ok(back_to_post(jar, &slug, message))
}

#[tracing::instrument(skip_all, fields(user_id = login.user.id, slug = %slug))]
pub(super) async fn unpublish(
    State(state): State<AppState>,
    login: RequireLogin,
    jar: SignedCookieJar,
    Path(slug): Path<String>,
) -> Result<Response, WebError> {
    let post = own(&state, &slug, &login.user).await?;
    let changed = sqlx::query!(
        "UPDATE posts SET published_at = NULL, updated_at = now()
          WHERE id = $1 AND published_at IS NOT NULL",
        post.id
    )
    .execute(&state.db)
    .await?
    .rows_affected();
    if changed > 0 {
        invalidate(&state, post.id, post.author_id).await;
    }
    Ok(back_to_post(jar, &slug, "The post is a draft again."))
}

/// To the post's page, with `message` shown there.
fn back_to_post(jar: SignedCookieJar, slug: &str, message: &str) -> Response {
    (
        flash::set(jar, message),
        Redirect::to(&format!("/posts/{slug}")),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct PreviewForm {
    body: String,
}

/// The editor's preview: the body rendered exactly as it will be shown.
pub(super) async fn preview(
    State(state): State<AppState>,
    _login: RequireLogin,
    Form(form): Form<PreviewForm>,
) -> Result<Html<String>, WebError> {
    let body = Body::parse(&form.body).map_err(WebError::Unprocessable)?;
    Ok(Html(markdown::render(
        body.as_str(),
        &ImageSigner::from_state(&state),
    )))
}

#[derive(Template)]
#[template(path = "posts/mine.html")]
struct MinePage {
    layout: Layout,
    posts: Vec<PostView>,
    page: i64,
    more: bool,
}

/// The signed-in author's posts, drafts included, last edited first, 20 to a page. A page
/// past the last is a 404 that says so. From a replica when one may serve: after the author's
/// own edit, only one that has replayed it (`LagTolerant`'s read-your-writes).
pub(super) async fn mine(
    LagTolerant(db): LagTolerant,
    login: RequireLogin,
    layout: Layout,
    Query(query): Query<PageQuery>,
) -> Result<Response, WebError> {
    let page = page_number(query.page.as_deref()).ok_or(WebError::NotFound)?;
    let mut posts = sqlx::query_as(
        "SELECT p.id, p.slug, p.title, p.body, p.body_html, p.author_id, u.username AS author,
                p.published_at, p.updated_at
           FROM posts p JOIN users u ON u.id = p.author_id
          WHERE p.author_id = $1
          ORDER BY p.updated_at DESC, p.id DESC
          LIMIT $2 OFFSET $3",
    )
    .bind(login.user.id)
    .bind(LIST_PAGE + 1)
    .bind((page - 1) * LIST_PAGE)
    .fetch_all(&db)
    .await?;
    if posts.is_empty() && page > 1 {
        return Err(past_the_end(page));
    }
    let more = posts.len() as i64 > LIST_PAGE;
    posts.truncate(LIST_PAGE as usize);
    Ok(render(&MinePage {
        layout,
        posts,
        page,
        more,
    })?
    .into_response())
}

#[derive(Template)]
#[template(path = "posts/author.html")]
struct AuthorPage {
    layout: Layout,
    author: String,
    is_self: bool,
    subscribed: bool,
    subscribers: i64,
    posts: Vec<PostView>,
    page: i64,
    more: bool,
}

async fn author_id(db: &PgPool, username: &str) -> Result<(i64, String), WebError> {
    let row = sqlx::query!(
        "SELECT id, username FROM users WHERE lower(username) = lower($1)",
        username
    )
    .fetch_optional(db)
    .await?
    .ok_or(WebError::NotFound)?;
    Ok((row.id, row.username))
}

/// The version of an author's page: when their newest change to a post was (any edit,
/// publication or withdrawal; from the author index), their subscriber count and whether the
/// signed-in viewer is one of them. No date: a subscription changes the page without one.
async fn author_version(
    db: &PgPool,
    author_id: i64,
    viewer: Option<&User>,
) -> Result<String, WebError> {
    let row = sqlx::query!(
        r#"SELECT (SELECT max(updated_at) FROM posts WHERE author_id = $1) AS last_change,
                  (SELECT count(*) FROM subscriptions WHERE author_id = $1) AS "subscribers!""#,
        author_id
    )
    .fetch_one(db)
    .await?;
    let subscribed = match viewer {
        Some(user) if user.id != author_id => is_subscribed(db, user.id, author_id).await?,
        _ => false,
    };
    let last_change = row.last_change.map(|at| at.unix_timestamp_nanos());
    Ok(format!(
        "author {author_id} {last_change:?} {} {subscribed}",
        row.subscribers
    ))
}

/// An author's published posts, with a subscribe button. A revalidation of an unchanged page
/// is a `304` before the posts are read. From a replica when one may serve (`LagTolerant`).
pub(super) async fn author(
    LagTolerant(db): LagTolerant,
    CurrentUser(viewer): CurrentUser,
    conditional: Conditional,
    layout: Layout,
    Path(username): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, WebError> {
    let page = page_number(query.page.as_deref()).ok_or(WebError::NotFound)?;
    let (id, author) = author_id(&db, &username).await?;
    if author != username {
        // One URL per author (`/authors/ADA` is Ada's page too): each spelling would be
        // another page-cache entry. A username needs no escaping in a path.
        return Ok(Redirect::permanent(&format!("/authors/{author}")).into_response());
    }
    let version = author_version(&db, id, viewer.as_ref()).await?;
    let conditional = conditional.etag(format!("{version} page {page}"));
    if let Some(answer) = conditional.precondition() {
        return Ok(answer);
    }
    let mut posts = sqlx::query_as(
        "SELECT p.id, p.slug, p.title, p.body, p.body_html, p.author_id, u.username AS author,
                p.published_at, p.updated_at
           FROM posts p JOIN users u ON u.id = p.author_id
          WHERE p.author_id = $1 AND p.published_at IS NOT NULL
          ORDER BY p.published_at DESC, p.id DESC
          LIMIT $2 OFFSET $3",
    )
    .bind(id)
    .bind(LIST_PAGE + 1)
    .bind((page - 1) * LIST_PAGE)
    .fetch_all(&db)
    .await?;
    if posts.is_empty() && page > 1 {
        return Err(past_the_end(page));
    }
    let more = posts.len() as i64 > LIST_PAGE;
    posts.truncate(LIST_PAGE as usize);
    let subscribers = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM subscriptions WHERE author_id = $1"#,
        id
    )
    .fetch_one(&db)
    .await?;
    let subscribed = match &viewer {
        Some(user) if user.id != id => is_subscribed(&db, user.id, id).await?,
        _ => false,
    };
    let html = render(&AuthorPage {
        layout: shared_layout(layout),
        is_self: viewer.as_ref().is_some_and(|u| u.id == id),
        author,
        subscribed,
        subscribers,
        posts,
        page,
        more,
    })?;
    Ok(conditional.stamp(with_tags(html, &[author_tag(id)])))
}

#[derive(Deserialize)]
pub(super) struct NextForm {
    next: Option<String>,
}

#[tracing::instrument(skip_all, fields(user_id = login.user.id, author = %username))]
pub(super) async fn subscribe(
    State(state): State<AppState>,
    login: RequireLogin,
    jar: SignedCookieJar,
    Path(username): Path<String>,
    Form(form): Form<NextForm>,
) -> Result<Response, WebError> {
    let (id, author) = author_id(&state.db, &username).await?;
    if id == login.user.id {
        return Err(WebError::Unprocessable(
            "You cannot subscribe to yourself.".into(),
        ));
    }
    sqlx::query!(
        "INSERT INTO subscriptions (subscriber_id, author_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        login.user.id,
        id
    )
    .execute(&state.db)
    .await?;
    let message = format!("You will hear about {author}'s new posts.");
    Ok(after_subscription(&state, id, jar, message, form).await)
}

#[tracing::instrument(skip_all, fields(user_id = login.user.id, author = %username))]
pub(super) async fn unsubscribe(
    State(state): State<AppState>,
    login: RequireLogin,
    jar: SignedCookieJar,
    Path(username): Path<String>,
    Form(form): Form<NextForm>,
) -> Result<Response, WebError> {
    let (id, author) = author_id(&state.db, &username).await?;
    sqlx::query!(
        "DELETE FROM subscriptions WHERE subscriber_id = $1 AND author_id = $2",
        login.user.id,
        id
    )
    .execute(&state.db)
    .await?;
    let message = format!("Unsubscribed from {author}.");
    Ok(after_subscription(&state, id, jar, message, form).await)
}

/// Drops the author page's cached copies (it shows the subscriber count), then goes back
/// where the form came from with `message`.
async fn after_subscription(
    state: &AppState,
    author_id: i64,
    jar: SignedCookieJar,
    message: String,
    form: NextForm,
) -> Response {
    if let Err(e) = state.cache.invalidate_tag(&author_tag(author_id)).await {
        tracing::warn!(error = %e, "cannot invalidate the author page");
    }
    let next = crate::web::safe_next(form.next.as_deref());
    (flash::set(jar, message), Redirect::to(&next)).into_response()
}

#[cfg(test)]
mod tests {
    use super::page_number;

    #[test]
    fn page_numbers_are_read_only_as_links_write_them() {
        assert_eq!(page_number(None), Some(1));
        assert_eq!(page_number(Some("2")), Some(2));
        assert_eq!(page_number(Some("10000")), Some(10_000));
        for bad in [
            "",
            "0",
            "02",
            "+2",
            "-1",
            "abc",
            "10001",
            "99999999999999999999",
        ] {
            assert_eq!(page_number(Some(bad)), None, "{bad}");
        }
    }
}
