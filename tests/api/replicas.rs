//! Read replicas against a real streaming standby ([`Pair`]: a primary and a hot standby made
//! with `pg_basebackup -R`): lag-tolerant pages read the standby, a client that wrote reads its
//! own writes, a standby past the lag bound or down is skipped, a read URL naming a primary is
//! skipped with a log line, `/metrics` and `/ops/db` show the lag, and no page rendered from a
//! lagging standby is stored in the page cache after a write purged it.
//!
//! The proof that a read went to the standby: its WAL replay is paused
//! (`pg_wal_replay_pause()`), a post is written on the primary, and a page that does not show
//! it was read on the standby (the primary has it).

use std::time::Duration;

use hearth::{
    config::Config,
    db::{
        Lsn, Replicas,
        replicas::{ReplicaState, ReplicaStatus, write_position},
    },
};
use sqlx::{PgPool, postgres::PgConnectOptions};

use crate::{
    helpers::{Logs, TestApp, database_url, migrated_database},
    pair::Pair,
};

const TOKEN: &str = "replica-metrics-token-0123456789";

/// An instance on the pair's primary with its standby as the read replica, checked every
/// 50 ms, with a lag bound of a minute unless `change` says otherwise.
async fn on_pair(pair: &Pair, change: impl FnOnce(&mut Config)) -> TestApp {
    let (primary, standby) = (pair.primary_url(), pair.standby_url());
    TestApp::builder()
        .database(pair.primary_options())
        .config(|c| {
            c.db.database_url = Some(primary);
            c.db.read_database_url = Some(standby);
            c.db.read_check_interval = Duration::from_millis(50);
            c.db.read_max_lag = Duration::from_secs(60);
            c.http.metrics_token = Some(TOKEN.into());
            change(c);
        })
        .spawn()
        .await
}

/// Waits, check round by check round, until the replicas' statuses pass `check`.
async fn until(app: &TestApp, what: &str, check: impl Fn(&[ReplicaStatus]) -> bool) {
    let replicas = &app.state.replicas;
    let wait = async {
        while !check(&replicas.statuses()) {
            replicas.checked().await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .is_err()
    {
        panic!("{what}: not within 30 s; {:?}", replicas.statuses());
    }
}

/// Waits until the replica is in use and its last check saw it past everything the primary
/// had written when this was called (so the clients' earlier writes are on it).
async fn caught_up(app: &TestApp) {
    let position = write_position(&app.pool).await.unwrap();
    until(app, "the replica is in use and caught up", |s| {
        s[0].state.in_use() && s[0].replayed.is_some_and(|r| r >= position)
    })
    .await;
}

/// The standby's replay, stopped and started by hand.
struct Replay(PgPool);

impl Replay {
    async fn on(options: PgConnectOptions) -> Self {
        Self(PgPool::connect_with(options).await.unwrap())
    }

    /// Pauses WAL replay and waits until it is paused: from then on the standby shows nothing
    /// newer. Returns the position it stopped at.
    async fn pause(&self) -> Lsn {
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&self.0)
            .await
            .unwrap();
        for _ in 0..200 {
            let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
                .fetch_one(&self.0)
                .await
                .unwrap();
            if state == "paused" {
                let at: String = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
                    .fetch_one(&self.0)
                    .await
                    .unwrap();
                return at.parse().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the standby's replay did not pause");
    }

    async fn resume(&self) {
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&self.0)
            .await
            .unwrap();
    }
}

async fn text(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200, "{}", response.url());
    response.text().await.unwrap()
}

/// `/metrics` as a scraper reads it.
async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of a sample of `/metrics` (`name{labels}`), if exported.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn make_admin(app: &TestApp, id: i64) {
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn lag_tolerant_pages_read_the_replica_and_a_writer_reads_its_own_writes() {
    let pair = Pair::start().await;
    let app = on_pair(&pair, |_| {}).await;
    let replay = Replay::on(pair.standby_options()).await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    caught_up(&app).await;
    replay.pause().await;

    // Written on the primary while the standby replays nothing.
    let slug = ada
        .write("Fresh from the primary", "Not on the standby yet.", true)
        .await;

    // Bob's lists come from the standby: no such post there.
    let page = text(bob.get("/posts").await).await;
    assert!(!page.contains("Fresh from the primary"), "{page}");
    let author = text(bob.get("/authors/ada").await).await;
    assert!(!author.contains("Fresh from the primary"));
    // Ada wrote it: her reads go only to a replica that has replayed it, so the primary.
    for path in [
        "/posts",
        "/me/posts",
        "/authors/ada",
        &format!("/posts/{slug}"),
    ] {
        let page = text(ada.get(path).await).await;
        assert!(page.contains("Fresh from the primary"), "{path}: {page}");
    }
    // An anonymous page served uncached (a query string the page cache does not key on) is
    // read on the standby too, and leaves `private`: no CDN may keep what may be stale.
    let response = app.other_browser().get("/posts?from=replica-test").await;
    let control = response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(control.contains("private"), "{control}");
    assert!(!text(response).await.contains("Fresh from the primary"));

    let metrics_text = metrics(&app).await;
    let name = &app.state.replicas.statuses()[0].name;
    let series = |family: &str| format!("{family}{{replica=\"{name}\"}}");
    assert_eq!(
        sample(&metrics_text, &series("hearth_db_replica_in_use")),
        Some(1.0)
    );
    assert!(sample(&metrics_text, &series("hearth_db_replica_reads_total")).unwrap() >= 3.0);
    assert!(
        sample(
            &metrics_text,
            "hearth_db_primary_reads_total{reason=\"own_write\"}"
        )
        .unwrap()
            >= 4.0,
        "{metrics_text}"
    );

    // Once the standby has replayed the post, Bob sees it too.
    replay.resume().await;
    caught_up(&app).await;
    let page = text(bob.get("/posts").await).await;
    assert!(page.contains("Fresh from the primary"));
}

#[tokio::test]
async fn a_page_cached_after_a_write_is_never_rendered_from_a_lagging_replica() {
    let pair = Pair::start().await;
    let app = on_pair(&pair, |_| {}).await;
    let replay = Replay::on(pair.standby_options()).await;
    let ada = app.user("ada").await;
    let visitor = app.other_browser();
    assert!(
        !text(visitor.get("/posts").await)
            .await
            .contains("After the purge")
    );
    caught_up(&app).await;
    replay.pause().await;

    // Publishing purges the cached list; the standby has not replayed the post.
    ada.write("After the purge", "The list must show this.", true)
        .await;

    // The page cache misses and stores the page: it is rendered from the primary.
    let response = visitor.get("/posts").await;
    assert_eq!(response.headers()["x-cache"], "MISS");
    assert!(text(response).await.contains("After the purge"));
    // And what it stored is that page, not one of the standby's.
    replay.resume().await;
    caught_up(&app).await;
    let response = visitor.get("/posts").await;
    assert_eq!(response.headers()["x-cache"], "HIT");
    assert!(text(response).await.contains("After the purge"));
    let fills = app.state.replicas.primary_reads().cache_fill;
    assert!(fills >= 1, "{fills}");
}

#[tokio::test]
async fn a_replica_past_the_lag_bound_is_skipped_then_taken_back() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let pair = Pair::start().await;
    let app = on_pair(&pair, |c| c.db.read_max_lag = Duration::from_secs(1)).await;
    let replay = Replay::on(pair.standby_options()).await;
    let ada = app.user("ada").await;
    let root = app.user("root").await;
    make_admin(&app, root.id).await;
    caught_up(&app).await;
    replay.pause().await;
    ada.write("While the standby sleeps", "On the primary only.", true)
        .await;

    until(&app, "the replica is skipped for its lag", |s| {
        s[0].state == ReplicaState::Lagging
    })
    .await;
    assert!(
        logs.text()
            .contains("read replica skipped: it lags past HEARTH_READ_MAX_LAG"),
        "{}",
        logs.text()
    );
    // Root's own writes are replayed there, but the standby is too far behind: the primary.
    let page = text(root.get("/posts").await).await;
    assert!(page.contains("While the standby sleeps"), "{page}");

    let metrics_text = metrics(&app).await;
    let name = app.state.replicas.statuses()[0].name.clone();
    let series = |family: &str| format!("{family}{{replica=\"{name}\"}}");
    assert_eq!(
        sample(&metrics_text, &series("hearth_db_replica_in_use")),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics_text, &series("hearth_db_replica_up")),
        Some(1.0)
    );
    let lag = sample(&metrics_text, &series("hearth_db_replica_lag_seconds")).unwrap();
    assert!(lag > 1.0, "{metrics_text}");
    assert!(sample(&metrics_text, &series("hearth_db_replica_lag_bytes")).unwrap() > 0.0);
    let ops = text(root.get("/ops/db").await).await;
    assert!(
        ops.contains(&name) && ops.contains("behind (bound 1.0 s)"),
        "{ops}"
    );
    // One line when the state changed, not one per check: none while it stays behind.
    let skipped = "read replica skipped: it lags past";
    let (lines, in_use) = (
        logs.text().matches(skipped).count(),
        logs.text().matches("read replica in use").count(),
    );
    for _ in 0..5 {
        app.state.replicas.checked().await;
    }
    assert_eq!(
        logs.text().matches(skipped).count(),
        lines,
        "{}",
        logs.text()
    );

    replay.resume().await;
    caught_up(&app).await;
    assert_eq!(
        logs.text().matches("read replica in use").count(),
        in_use + 1,
        "{}",
        logs.text()
    );
    let metrics_text = metrics(&app).await;
    let lag = sample(&metrics_text, &series("hearth_db_replica_lag_seconds")).unwrap();
    assert!(lag < 1.0, "{metrics_text}");
    let ops = text(root.get("/ops/db").await).await;
    assert!(ops.contains("in use"), "{ops}");
}

#[tokio::test]
async fn a_replica_that_is_down_is_skipped_and_pages_still_answer() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let mut pair = Pair::start().await;
    let app = on_pair(&pair, |_| {}).await;
    let ada = app.user("ada").await;
    ada.write("Still here", "With the standby gone.", true)
        .await;
    caught_up(&app).await;

    pair.stop_standby().await;
    until(&app, "the replica is down", |s| {
        matches!(s[0].state, ReplicaState::Down(_))
    })
    .await;
    // One line when it went down, none for each check that finds it still down.
    let down = "read replica skipped: it is down";
    let lines = logs.text().matches(down).count();
    assert!(lines >= 1);
    for _ in 0..5 {
        app.state.replicas.checked().await;
    }
    assert_eq!(logs.text().matches(down).count(), lines, "{}", logs.text());
    let bob = app.user("bob").await;
    assert!(text(bob.get("/posts").await).await.contains("Still here"));
    let anonymous = app.other_browser().get("/posts?from=down-test").await;
    assert!(text(anonymous).await.contains("Still here"));
    assert!(app.state.replicas.primary_reads().no_replica >= 2);
    let metrics_text = metrics(&app).await;
    let name = &app.state.replicas.statuses()[0].name;
    let up = format!("hearth_db_replica_up{{replica=\"{name}\"}}");
    assert_eq!(sample(&metrics_text, &up), Some(0.0));
}

#[tokio::test]
async fn a_read_url_naming_a_primary_is_skipped_with_a_log_line() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let (name, options) = migrated_database().await;
    let app = TestApp::builder()
        .database(options)
        .config(|c| {
            c.db.read_database_url = Some(database_url(&name));
            c.db.read_check_interval = Duration::from_millis(50);
        })
        .spawn()
        .await;
    until(&app, "the primary is refused as a replica", |s| {
        s[0].state == ReplicaState::NotAStandby
    })
    .await;
    assert!(
        logs.text()
            .contains("it is not in recovery, so HEARTH_READ_DATABASE_URL names a primary"),
        "{}",
        logs.text()
    );
    // Reads go to DATABASE_URL's server, and pages answer.
    assert_eq!(app.get("/posts?from=primary-test").await.status(), 200);
    assert!(app.state.replicas.primary_reads().no_replica >= 1);
    let root = app.user("root").await;
    make_admin(&app, root.id).await;
    let ops = text(root.get("/ops/db").await).await;
    assert!(ops.contains("skipped: not in recovery"), "{ops}");
}

#[tokio::test]
async fn a_standby_of_another_cluster_is_skipped_with_a_log_line() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let (ours, theirs) = tokio::join!(Pair::start(), Pair::start());
    let app = on_pair(&ours, |c| {
        c.db.read_database_url = Some(theirs.standby_url())
    })
    .await;
    until(&app, "the other cluster's standby is refused", |s| {
        s[0].state == ReplicaState::OtherCluster
    })
    .await;
    assert!(
        logs.text()
            .contains("it is a standby of another cluster than DATABASE_URL's"),
        "{}",
        logs.text()
    );
    let ada = app.user("ada").await;
    ada.write("Only on ours", "Not on theirs.", true).await;
    let bob = app.user("bob").await;
    assert!(text(bob.get("/posts").await).await.contains("Only on ours"));
}

#[tokio::test]
async fn a_read_url_that_does_not_parse_refuses_to_start() {
    let mut config = Config::from_env().unwrap();
    // Whitespace separates the URLs; a comma belongs to one (several hosts).
    config.db.read_database_url =
        Some("postgres://h1:5432,h2:5433/hearth\n  postgres://h3/hearth".into());
    assert_eq!(
        config.db.read_urls(),
        ["postgres://h1:5432,h2:5433/hearth", "postgres://h3/hearth"]
    );
    config.db.read_database_url = Some("postgres://h1/hearth postgres://[::1/broken".into());
    let pool = PgPool::connect_lazy("postgres://localhost/unused").unwrap();
    let refused = Replicas::start(&config.db, pool).err().expect("an error");
    let message = refused.to_string();
    assert!(
        message.contains("HEARTH_READ_DATABASE_URL's URL number 2"),
        "{message}"
    );
}
