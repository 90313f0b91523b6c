//! The test harness: one PostgreSQL per test run, one fresh database per test, and a
//! `TestApp` that serves the real router on 127.0.0.1:0.
//!
//! With `DATABASE_URL` set, databases are created on that server. Without it (CI, a fresh
//! machine), the first test starts an embedded cluster in a temporary folder; it is stopped and
//! removed when the test process exits.

use std::{
    path::PathBuf,
    str::FromStr,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use axum::Router;
use hearth::{
    AppState,
    config::Config,
    db::{
        self,
        embedded::{EmbeddedOptions, EmbeddedPostgres},
        migrations,
    },
};
use reqwest::{Response, StatusCode, redirect};
use sqlx::{
    Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;

struct Cluster {
    admin: PgConnectOptions,
    /// `DATABASE_URL`, or the embedded cluster's socket folder.
    url: Option<String>,
    socket_dir: Option<PathBuf>,
    /// A database with every migration applied; test databases are cloned from it.
    template: String,
    embedded: Mutex<Option<(EmbeddedPostgres, PathBuf)>>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_cluster_at_exit() {
    if let Some(cluster) = CLUSTER.get()
        && let Ok(mut guard) = cluster.embedded.lock()
        && let Some((pg, dir)) = guard.take()
    {
        let _ = pg.stop();
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        // Runs on a thread of its own: it blocks (initdb, waiting for the server) and drives a
        // short-lived runtime of its own to build the template database.
        std::thread::spawn(|| {
            let (admin, embedded) = match std::env::var("DATABASE_URL") {
                Ok(url) => (
                    PgConnectOptions::from_str(&url).expect("DATABASE_URL parses"),
                    None,
                ),
                Err(_) => {
                    let dir = tempfile::Builder::new()
                        .prefix("hearth-test-")
                        .tempdir()
                        .expect("temp dir")
                        .keep();
                    let options = EmbeddedOptions {
                        durable: false,
                        ..Default::default()
                    };
                    let pg = EmbeddedPostgres::start(&dir, &options)
                        .expect("embedded PostgreSQL starts");
                    // SAFETY: registering a plain `extern "C" fn` with atexit has no preconditions.
                    unsafe { nix::libc::atexit(stop_cluster_at_exit) };
                    (pg.connect_options(), Some((pg, dir)))
                }
            };
            let template = format!("hearth_tpl_{}", uuid::Uuid::new_v4().simple());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                db::create_database_if_missing(&admin, &template)
                    .await
                    .expect("template database");
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(admin.clone().database(&template))
                    .await
                    .unwrap();
                migrations::run(&pool, &migration_sets())
                    .await
                    .expect("migrations apply");
                pool.close().await;
            });
            let url = std::env::var("DATABASE_URL").ok();
            let socket_dir = embedded
                .as_ref()
                .map(|(pg, _): &(EmbeddedPostgres, PathBuf)| pg.data_dir().join("postgres"));
            Cluster {
                admin,
                url,
                socket_dir,
                template,
                embedded: Mutex::new(embedded),
            }
        })
        .join()
        .expect("test cluster setup")
    })
}

/// Superuser options for the tests' server (`DATABASE_URL`'s, or the embedded cluster's).
pub fn admin_options() -> PgConnectOptions {
    cluster().admin.clone()
}

/// The application the tests serve: the `hearth` binary's.
pub fn application() -> hearth::Application {
    hearth::bundled::application()
}

/// The settings sections of [`application`] from the environment, as a bare `hearth` gets them.
pub fn test_sections() -> hearth::config::Sections {
    application().sections_from_env().expect("default settings")
}

/// Every migration set of [`application`], in order.
pub fn migration_sets() -> Vec<migrations::MigrationSet> {
    application()
        .plan(&test_config(), &test_sections())
        .expect("the bundled application's plan")
        .migrations
}

/// A new, empty database (no migrations) and options to connect to it.
pub async fn empty_database() -> (String, PgConnectOptions) {
    let cluster = cluster();
    let name = format!("hearth_test_{}", uuid::Uuid::new_v4().simple());
    db::create_database_if_missing(&cluster.admin, &name)
        .await
        .expect("create test database");
    (name.clone(), cluster.admin.clone().database(&name))
}

/// A URL for database `name`, for child processes (`hearth worker`).
pub fn database_url(name: &str) -> String {
    let cluster = cluster();
    match (&cluster.url, &cluster.socket_dir) {
        (Some(url), _) => {
            let mut url = url::Url::parse(url).expect("DATABASE_URL is a URL");
            url.set_path(name);
            url.to_string()
        }
        (None, Some(dir)) => format!(
            "postgres://{}@localhost/{name}?host={}",
            hearth::db::embedded::SUPERUSER,
            dir.display()
        ),
        (None, None) => unreachable!("the cluster is either DATABASE_URL or embedded"),
    }
}

/// With `HEARTH_TEST_VIA_PGBOUNCER` set (and `HEARTH_TEST_PGBOUNCER` naming a PgBouncer 1.21
/// or later), the options [`migrated_database`] returns go through one PgBouncer in transaction
/// mode, and apps built by [`Builder::spawn`] keep their sessions on the direct URL: the
/// suites' run through a pooler (docs/scaling.md, "Behind a pooler").
fn via_pgbouncer(name: &str, direct: PgConnectOptions) -> PgConnectOptions {
    static BOUNCER: OnceLock<Mutex<Option<crate::pgbouncer::PgBouncer>>> = OnceLock::new();
    extern "C" fn stop_bouncer_at_exit() {
        if let Some(bouncer) = BOUNCER.get()
            && let Ok(mut guard) = bouncer.lock()
        {
            guard.take();
        }
    }
    if std::env::var_os("HEARTH_TEST_VIA_PGBOUNCER").is_none() {
        return direct;
    }
    let bouncer = BOUNCER.get_or_init(|| {
        // SAFETY: registering a plain `extern "C" fn` with atexit has no preconditions.
        unsafe { nix::libc::atexit(stop_bouncer_at_exit) };
        Mutex::new(Some(crate::pgbouncer::PgBouncer::start_keeping_statements(
            "transaction",
        )))
    });
    let guard = bouncer.lock().unwrap();
    let Some(bouncer) = guard.as_ref() else {
        return direct;
    };
    BOUNCER_PORT.get_or_init(|| bouncer.port);
    bouncer.options(name)
}

/// `config` with its `session` on the direct URL when `pool` goes through
/// [`via_pgbouncer`]'s PgBouncer, as `serve` gives it from `HEARTH_DIRECT_DATABASE_URL`;
/// otherwise `config` as it is.
pub fn with_session(
    pool: &PgPool,
    config: hearth::jobs::WorkerConfig,
) -> hearth::jobs::WorkerConfig {
    match session_options(pool) {
        Some(session) => hearth::jobs::WorkerConfig {
            session: Some(session),
            ..config
        },
        None => config,
    }
}

/// The direct options for `pool`'s database when `pool` goes through [`via_pgbouncer`]'s
/// PgBouncer (what `HEARTH_DIRECT_DATABASE_URL` gives `serve`), for the `session` of a channel
/// layer or job workers a test starts on `pool`; `None` (the pool's own) otherwise.
pub fn session_options(pool: &PgPool) -> Option<PgConnectOptions> {
    bounced_database(pool).map(|name| cluster().admin.clone().database(&name))
}

/// Options for `pool`'s database straight on the server, for what needs a session of its own
/// (a test's `LISTEN`): `pool`'s options, or the direct ones when `pool` goes through
/// [`via_pgbouncer`]'s PgBouncer, where a LISTEN would hear nothing and break other clients.
pub fn direct_options(pool: &PgPool) -> PgConnectOptions {
    session_options(pool).unwrap_or_else(|| (*pool.connect_options()).clone())
}

/// The database `pool` reaches through [`via_pgbouncer`]'s PgBouncer, if it goes through it.
fn bounced_database(pool: &PgPool) -> Option<String> {
    let options = pool.connect_options();
    let name = options.get_database()?;
    (Some(options.get_port()) == BOUNCER_PORT.get().copied()).then(|| name.to_owned())
}

/// The port of [`via_pgbouncer`]'s PgBouncer, once it runs.
static BOUNCER_PORT: OnceLock<u16> = OnceLock::new();

/// A new database with every migration applied, cloned from the template.
pub async fn migrated_database() -> (String, PgConnectOptions) {
    let cluster = cluster();
    let name = format!("hearth_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect_with(&cluster.admin)
        .await
        .expect("admin connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {}",
        cluster.template
    )))
    .execute(&mut conn)
    .await
    .expect("clone the template database");
    let options = via_pgbouncer(&name, cluster.admin.clone().database(&name));
    (name, options)
}

pub fn test_config() -> Config {
    let mut config = Config::from_env().expect("default config");
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.sessions.secret_key = Some("a test secret key that is long enough to use".into());
    config.db.data_dir = std::env::temp_dir().join("hearth-test-unused");
    config.db.db_max_connections = 5;
    config.db.db_min_connections = 0;
    config
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub state: AppState,
    /// The test's database, for a second instance on it (`Builder::database`).
    pub db_options: PgConnectOptions,
    shutdown: CancellationToken,
    /// Job workers, when built `with_workers()`: the app then runs its jobs as `serve` does.
    _workers: Option<hearth::jobs::Workers>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Builder {
    config: Config,
    sections: hearth::config::Sections,
    routes: Router<AppState>,
    migrated: bool,
    database: Option<PgConnectOptions>,
    routes_with: Option<RoutesWith>,
    workers: bool,
    tls: Option<hearth::tls::Tls>,
}

/// Builds extra routes from the app's state.
type RoutesWith = Box<dyn FnOnce(&AppState) -> Router<AppState>>;

impl Builder {
    pub fn config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Changes an app's settings section (`|s: &mut UploadSettings| ...`).
    pub fn settings<S: Clone + Send + Sync + 'static>(
        mut self,
        change: impl FnOnce(&mut S),
    ) -> Self {
        assert!(
            self.sections.get::<S>().is_some(),
            "no app declares the settings section {}",
            std::any::type_name::<S>()
        );
        self.sections.update(change);
        self
    }

    /// Extra routes served next to the real ones (to exercise extractors and error paths).
    pub fn routes(mut self, routes: Router<AppState>) -> Self {
        self.routes = routes;
        self
    }

    /// Extra routes built from the app's state (e.g. layers that need its cache).
    pub fn routes_with(
        mut self,
        routes: impl FnOnce(&AppState) -> Router<AppState> + 'static,
    ) -> Self {
        self.routes_with = Some(Box::new(routes));
        self
    }

    /// Serves HTTPS with this certificate (`address` is then `https://...`).
    pub fn tls(mut self, tls: hearth::tls::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Runs the app's job workers (every queue, polling every 100 ms) beside the server.
    pub fn with_workers(mut self) -> Self {
        self.workers = true;
        self
    }

    pub fn unmigrated(mut self) -> Self {
        self.migrated = false;
        self
    }

    /// Serve from this (already migrated) database instead of a fresh one: a second instance.
    pub fn database(mut self, options: PgConnectOptions) -> Self {
        self.database = Some(options);
        self
    }

    pub async fn spawn(mut self) -> TestApp {
        let options = match self.database {
            Some(options) => options,
            None if self.migrated => migrated_database().await.1,
            None => empty_database().await.1,
        };
        if self.config.db.direct_database_url.is_none()
            && Some(options.get_port()) == BOUNCER_PORT.get().copied()
            && let Some(name) = options.get_database()
        {
            self.config.db.direct_database_url = Some(database_url(name));
        }
        let pool = db::pool_options(&self.config.db)
            .connect_with(options.clone())
            .await
            .expect("test pool");
        let application = application();
        let state = application
            .state(self.config.clone(), self.sections.clone(), pool.clone())
            .expect("state");
        if self.migrated {
            tokio::time::timeout(Duration::from_secs(10), state.channels.ready())
                .await
                .expect("the channel layer is ready");
        }
        let mut routes = self.routes;
        if let Some(build) = self.routes_with {
            routes = routes.merge(build(&state));
        }
        let workers = self.workers.then(|| {
            let config = hearth::jobs::WorkerConfig {
                poll_interval: Duration::from_millis(100),
                session: hearth::web::state::direct_options(&self.config),
                ..hearth::jobs::WorkerConfig::new(
                    hearth::jobs::parse_queues("default:4,mail:2").unwrap(),
                )
            };
            let registry = application.registry(&state).expect("job registry");
            // Their own pool, as `serve` gives them.
            let jobs = hearth::application::job_pool(&self.config, &pool);
            hearth::jobs::Workers::start(jobs, registry, config)
        });
        let router = application
            .router_with(&state, routes)
            .expect("the application's router");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let address = format!("{scheme}://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone().cancelled_owned();
        match self.tls {
            Some(tls) => tokio::spawn(hearth::server::serve_tls(
                listener,
                router,
                &self.config,
                tls,
                stop,
            )),
            None => tokio::spawn(hearth::server::serve(listener, router, &self.config, stop)),
        };
        TestApp {
            address,
            client: client(),
            pool,
            state,
            db_options: options,
            shutdown,
            _workers: workers,
        }
    }
}

/// A browser-like client: keeps cookies, does not follow redirects (tests assert them).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

impl TestApp {
    pub fn builder() -> Builder {
        Builder {
            config: test_config(),
            sections: test_sections(),
            routes: Router::new(),
            migrated: true,
            database: None,
            routes_with: None,
            workers: false,
            tls: None,
        }
    }

    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `ws://` URL of `path` on this app.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws{}{path}", self.address.trim_start_matches("http"))
    }

    /// Signs up `username` in a jar of its own and returns its `Cookie` header, for
    /// WebSocket and event-stream clients that connect as that user.
    pub async fn session_cookie(&self, username: &str) -> String {
        self.user(username).await.cookie
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// Signs up `name` (password `correct horse battery`) in a browser of its own.
    pub async fn user(&self, name: &str) -> TestUser<'_> {
        let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let browser = Browser {
            app: self,
            client: reqwest::Client::builder()
                .cookie_provider(jar.clone())
                .redirect(redirect::Policy::none())
                .build()
                .unwrap(),
        };
        let response = browser.signup(name, "correct horse battery").await;
        assert!(
            response.status().is_redirection(),
            "signup of {name} failed: {}",
            response.status()
        );
        let url = reqwest::Url::parse(&self.address).unwrap();
        let cookie = reqwest::cookie::CookieStore::cookies(&*jar, &url)
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_owned();
        let id = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        TestUser {
            id,
            cookie,
            browser,
        }
    }

    /// The app's jobs with what they need, as `serve` registers them.
    pub fn registry(&self) -> hearth::jobs::Registry {
        application().registry(&self.state).unwrap()
    }

    /// Runs every job waiting in `queue` now, in this task; returns how many ran.
    pub async fn drain(&self, queue: &str) -> usize {
        hearth::jobs::testing::drain(&self.pool, &self.registry(), queue)
            .await
            .expect("drain")
    }

    /// A client with its own cookie jar: a second browser.
    pub fn other_browser(&self) -> Browser<'_> {
        Browser {
            app: self,
            client: client(),
        }
    }

    /// A browser of its own connecting from `addr`, to play a client at another address: any
    /// address in 127.0.0.0/8 reaches the server, since the whole block is loopback.
    pub fn browser_from(&self, addr: std::net::IpAddr) -> Browser<'_> {
        Browser {
            app: self,
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(redirect::Policy::none())
                .local_address(addr)
                .build()
                .unwrap(),
        }
    }

    pub fn browser(&self) -> Browser<'_> {
        Browser {
            app: self,
            client: self.client.clone(),
        }
    }

    pub async fn signup(&self, username: &str, password: &str) -> Response {
        self.browser().signup(username, password).await
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.browser().login(username, password).await
    }

    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Response {
        self.browser().post_form(path, fields).await
    }

    pub async fn csrf_token(&self) -> String {
        self.browser().csrf_token().await
    }
}

/// A signed-up user and their browser.
pub struct TestUser<'a> {
    pub id: i64,
    /// The `Cookie` header of their session, for WebSocket and event-stream clients.
    pub cookie: String,
    pub browser: Browser<'a>,
}

impl TestUser<'_> {
    pub async fn get(&self, path: &str) -> Response {
        self.browser.get(path).await
    }

    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Response {
        self.browser.post_form(path, fields).await
    }

    /// Sets the user's mail address (and keeps the daily digest on) and verifies it by
    /// following the link mailed to it, so that mail reaches it.
    pub async fn set_email(&self, email: &str) {
        self.set_unverified_email(email).await;
        let link = self.verification_link().await;
        let response = self.post_form(&link, &[]).await;
        assert_redirect(&response, "/account/settings");
    }

    /// Sets the user's mail address without verifying it.
    pub async fn set_unverified_email(&self, email: &str) {
        let response = self
            .post_form(
                "/account/settings",
                &[("email", email), ("digest_by_mail", "on")],
            )
            .await;
        assert_redirect(&response, "/account/settings");
    }

    /// The path of the link in the newest verification mail sent to this user.
    pub async fn verification_link(&self) -> String {
        let body: String = sqlx::query_scalar(
            "SELECT body FROM outbox
              WHERE user_id = $1 AND idempotency_key LIKE 'verify-email:%'
              ORDER BY id DESC LIMIT 1",
        )
        .bind(self.id)
        .fetch_one(&self.browser.app.pool)
        .await
        .expect("a verification mail");
        link_in(&body, "/account/email/verify/")
    }

    /// Writes a post and returns its slug; `publish` publishes it at once.
    pub async fn write(&self, title: &str, body: &str, publish: bool) -> String {
        let action = if publish { "publish" } else { "save" };
        let response = self
            .post_form(
                "/posts",
                &[("title", title), ("body", body), ("action", action)],
            )
            .await;
        assert!(
            response.status().is_redirection(),
            "writing {title:?} failed: {}",
            response.status()
        );
        let location = response.headers()["location"].to_str().unwrap();
        location.trim_start_matches("/posts/").to_owned()
    }

    /// A WebSocket to `path` as this user.
    pub async fn socket(&self, path: &str) -> hearth::web::testing::WsClient {
        hearth::web::testing::WsClient::build(self.browser.app.ws_url(path))
            .cookie(self.cookie.clone())
            .connect()
            .await
            .expect("connect")
    }
}

/// One cookie jar talking to a `TestApp`.
pub struct Browser<'a> {
    app: &'a TestApp,
    pub client: reqwest::Client,
}

impl Browser<'_> {
    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.app.url(path))
            .send()
            .await
            .expect("GET")
    }

    /// The CSRF token the pages of this browser carry (from the layout's meta tag).
    pub async fn csrf_token(&self) -> String {
        // The login page for a visitor; someone signed in is sent on from it, so their
        // settings page, which every account has.
        let mut page = self.get("/login").await;
        if page.status().is_redirection() {
            page = self.get("/account/settings").await;
        }
        let page = page.text().await.unwrap();
        let start = page
            .find(r#"name="csrf-token" content=""#)
            .expect("csrf meta tag")
            + 27;
        page[start..start + 64].to_string()
    }

    /// Posts a form the way a browser does, with the page's CSRF token.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Response {
        let token = self.csrf_token().await;
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf_token", &token));
        self.client
            .post(self.app.url(path))
            .form(&form)
            .send()
            .await
            .expect("POST")
    }

    pub async fn signup(&self, username: &str, password: &str) -> Response {
        self.post_form(
            "/signup",
            &[
                ("username", username),
                ("password", password),
                ("password_confirm", password),
            ],
        )
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.post_form("/login", &[("username", username), ("password", password)])
            .await
    }

    pub async fn home(&self) -> String {
        let response = self.get("/").await;
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    }

    /// The username the layout shows as signed in, if any.
    pub async fn signed_in_as(&self) -> Option<String> {
        let page = self.home().await;
        let marker = r#"data-testid="signed-in-user">"#;
        let start = page.find(marker)? + marker.len();
        let end = page[start..].find('<')? + start;
        Some(page[start..end].trim().to_string())
    }
}

/// The path of the first link in a mail's `body` that starts with `prefix` (the site's
/// address before it is dropped).
pub fn link_in(body: &str, prefix: &str) -> String {
    let start = body.find(prefix).expect("a link in the mail");
    body[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Asserts a redirect to `to` and returns the response.
pub fn assert_redirect(response: &Response, to: &str) {
    assert!(
        response.status().is_redirection(),
        "expected a redirect, got {}",
        response.status()
    );
    assert_eq!(response.headers()["location"], to);
}

/// One server-sent event.
#[derive(Debug, PartialEq)]
pub struct Event {
    pub id: Option<i64>,
    pub kind: Option<String>,
    pub data: String,
}

/// Reads `n` events (comments skipped) from an event stream.
pub async fn read_events(
    response: &mut reqwest::Response,
    buffer: &mut String,
    n: usize,
) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < n {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = Event {
                id: None,
                kind: None,
                data: String::new(),
            };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    event.id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event.kind = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    event.data = v.to_owned();
                }
            }
            if !event.data.is_empty() {
                events.push(event);
            }
        }
        if events.len() >= n {
            break;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the stream is open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    events
}

/// The lines a child process writes to its stdout and stderr (both piped), as they come; the
/// channel ends when the process closes both.
pub fn output_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
    let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
    for stream in [stdout, stderr] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    lines
}

/// Log lines written while the guard lives, on this thread: a `#[tokio::test]` runs every task
/// it spawns (workers, the server) on its one thread, so they are the test's own.
#[derive(Clone, Default)]
pub struct Logs(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
