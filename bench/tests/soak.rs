//! The soak benchmark in its short mode: the same `hearth-bench bench soak` run, for a few seconds at
//! small rates, against the real binary as a child process on a fresh database. It proves the
//! mix works end to end — nothing errs, every chat message, stream event, job and notification
//! arrives, the server's memory and descriptors are sampled. Growth is not judged here (too
//! short to mean anything): the long mode reports it (`hearth-bench bench soak --duration 10m`).

use std::time::Duration;

use hearth::application::testing::{self, TestDatabase};
use hearth_bench::soak::{self, SoakArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_loses_nothing_errs_nowhere_and_samples_the_server() {
    let application = hearth::bundled::application().app(hearth_bench::app());
    let mut config = testing::config();
    let sections = application.sections_from_env().unwrap();
    let plan = application.plan(&config, &sections).unwrap();
    let database = TestDatabase::migrated(&plan.migrations).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    config.db.database_url = Some(database.url());
    config.db.data_dir = dir.path().to_owned();
    let args = SoakArgs {
        duration: Duration::from_secs(15),
        rate: 8.0,
        rooms: 2,
        chatters: 3,
        chat_rate: 0.5,
        sse_clients: 3,
        event_rate: 4.0,
        job_rate: 0.5,
        ws_churn: 1.0,
        // Short enough that every listener resumes with Last-Event-ID at least once.
        reconnect_every: Duration::from_secs(4),
        sample_every: Duration::from_secs(1),
        warmup: Duration::from_secs(3),
        drain: Duration::from_secs(20),
        server: Some(env!("CARGO_BIN_EXE_hearth-bench").into()),
        out: dir.path().join("results"),
    };

    let report = tokio::time::timeout(Duration::from_secs(180), soak::soak(&config, &args))
        .await
        .expect("the soak does not hang")
        .expect("the soak runs");

    let summary = report.summary();
    assert_eq!(
        report.error_count, 0,
        "{:#?}\n{summary}",
        report.error_samples
    );
    assert_eq!(report.lost(), 0, "{summary}");
    // Every part of the mix ran.
    assert!(report.chat.received > 0 && report.chat.received == report.chat.expected);
    assert!(report.events.received > 0 && report.events.received == report.events.expected);
    assert!(report.jobs.completed > 0 && report.jobs.completed == report.jobs.enqueued);
    assert!(report.notifications.received >= report.jobs.completed);
    for kind in [
        "page.anonymous",
        "page.signed_in",
        "page.bench_uncached",
        "page.bench_cached",
        "chat.delivery",
        "sse.event_delivery",
        "job.enqueue_to_done",
        "ws.churn_round_trip",
    ] {
        assert!(
            report.latency.get(kind).is_some_and(|p| p.n > 0),
            "no {kind} measured: {summary}"
        );
    }
    // The server was sampled, and stopped cleanly at SIGTERM.
    assert!(
        report.samples.len() >= 10,
        "{} samples",
        report.samples.len()
    );
    assert!(report.samples.iter().all(|s| s.rss_kib > 0 && s.fds > 0));
    assert!(
        report.server.exit.contains("exit status: 0"),
        "{}",
        report.server.exit
    );
    assert_eq!(
        report.server.log.errors, 0,
        "{:#?}",
        report.server.log.samples
    );

    // The files the long mode leaves behind.
    let (json, svg) = soak::write(&report, &args.out).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(written["error_count"], 0);
    assert!(std::fs::read_to_string(svg).unwrap().starts_with("<svg"));
}
