//! Operations: `/metrics` for scrapers and admins, the live dashboard's event stream, and
//! the operations console under `/ops`.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, TestUser, read_events};

async fn admin<'a>(app: &'a TestApp, name: &str) -> TestUser<'a> {
    let user = app.user(name).await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(user.id)
        .execute(&app.pool)
        .await
        .unwrap();
    user
}

/// Checks the Prometheus text format line by line; returns the sample names.
fn parse_prometheus(text: &str) -> HashSet<String> {
    let mut typed = HashSet::new();
    let mut names = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad value in {line:?}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(!value.trim_end_matches('"').contains('\n'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(
            typed.contains(family),
            "{name} has no # TYPE line before it"
        );
        names.insert(name.to_owned());
    }
    names
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_for_admins_and_token_holders_only() {
    let app = TestApp::builder()
        .config(|c| c.metrics_token = Some("scrape-me-please-0123456789".into()))
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let root = admin(&app, "root").await;
    app.get("/").await;

    assert_eq!(app.get("/metrics").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(ada.get("/metrics").await.status(), StatusCode::FORBIDDEN);
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let scraped = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me-please-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(
        scraped.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = scraped.text().await.unwrap();
    let names = parse_prometheus(&text);
    for expected in [
        "hearth_http_requests_total",
        "hearth_http_request_duration_seconds_bucket",
        "hearth_jobs_total",
        "hearth_ws_open",
        "hearth_channel_messages_published_total",
        "hearth_cache_hits_total",
        "hearth_db_pool_connections",
    ] {
        assert!(names.contains(expected), "{expected} missing from:\n{text}");
    }
    let requests: f64 = text
        .lines()
        .find(|l| l.starts_with("hearth_http_requests_total{class=\"2xx\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(requests >= 1.0, "the home page was counted");
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("hearth_http_request_duration_seconds_bucket"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative buckets"
    );

    assert_eq!(root.get("/metrics").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_dashboard_streams_its_history_then_a_sample_a_second() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    assert!(app.get("/dashboard").await.status().is_redirection());
    assert_eq!(ada.get("/dashboard").await.status(), StatusCode::OK);

    let mut stream = ada
        .browser
        .client
        .get(app.url("/dashboard/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let events = read_events(&mut stream, &mut buffer, 3).await;
    assert_eq!(events[0].kind.as_deref(), Some("history"));
    assert!(
        serde_json::from_str::<Value>(&events[0].data)
            .unwrap()
            .is_array()
    );
    for event in &events[1..] {
        assert_eq!(event.kind.as_deref(), Some("sample"));
        let sample: Value = serde_json::from_str(&event.data).unwrap();
        for field in [
            "t",
            "requests_per_s",
            "websockets",
            "event_streams",
            "jobs_completed_per_s",
        ] {
            assert!(sample[field].is_number(), "{field} in {sample}");
        }
        assert!(
            sample["event_streams"].as_i64().unwrap() >= 1,
            "this stream is open"
        );
    }
}
