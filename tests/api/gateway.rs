//! The gateway: `GET /api/aggregate` against stub upstream servers on 127.0.0.1.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Body,
    http::{StatusCode, header},
    routing::get,
};
use hearth::gateway::Upstreams;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Barrier};

use crate::helpers::TestApp;

/// Serves `router` on an ephemeral port for the rest of the test; returns its base URL.
async fn stub(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

/// A stub answering `GET /` with `body`.
async fn answers(body: Value) -> String {
    stub(Router::new().route("/", get(move || async move { Json(body) }))).await
}

/// A stub answering `GET /` with `body` as it is, labelled JSON.
async fn answers_raw(body: impl Into<Body> + Clone + Send + Sync + 'static) -> String {
    stub(Router::new().route(
        "/",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], body.into()) }),
    ))
    .await
}

/// An app whose `HEARTH_UPSTREAMS` is `spec`, and a signed-in user's answer from it, unparsed.
async fn aggregate_text(spec: &str) -> String {
    let upstreams = Upstreams::parse(spec).expect("a valid spec");
    let app = TestApp::builder()
        .settings(|c: &mut hearth::gateway::GatewaySettings| c.upstreams = upstreams)
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let response = ada.get("/api/aggregate").await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// An app whose `HEARTH_UPSTREAMS` is `spec`, and a signed-in user's answer from it.
async fn aggregate(spec: &str) -> (Value, Duration) {
    let upstreams = Upstreams::parse(spec).expect("a valid spec");
    let app = TestApp::builder()
        .settings(|c: &mut hearth::gateway::GatewaySettings| c.upstreams = upstreams)
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let started = Instant::now();
    let response = ada.get("/api/aggregate").await;
    let took = started.elapsed();
    assert_eq!(response.status(), 200);
    (response.json().await.unwrap(), took)
}

fn by_name<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["upstreams"]
        .as_array()
        .expect("an upstream list")
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {answer}"))
}

#[tokio::test]
async fn every_upstream_answers_with_its_data_in_configuration_order() {
    let weather = answers(json!({"temp": 21})).await;
    let stocks = answers(json!({"acme": [1, 2, 3]})).await;

    let (answer, _) = aggregate(&format!("weather={weather}/@2s,stocks={stocks}/")).await;

    let names: Vec<_> = answer["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["weather", "stocks"]);
    let weather = by_name(&answer, "weather");
    assert_eq!(weather["ok"], true);
    assert_eq!(weather["status"], 200);
    assert_eq!(weather["data"], json!({"temp": 21}));
    assert_eq!(weather["error"], Value::Null);
    assert!(weather["elapsed_ms"].is_u64());
    assert_eq!(
        by_name(&answer, "stocks")["data"],
        json!({"acme": [1, 2, 3]})
    );
    assert!(answer["elapsed_ms"].is_u64());
}

/// Each stub answers only once all three have been asked: a gateway that called them one
/// after another would see its first call time out; a concurrent one gets all three.
#[tokio::test]
async fn upstreams_are_called_concurrently() {
    let barrier = Arc::new(Barrier::new(3));
    let mut spec = Vec::new();
    for name in ["a", "b", "c"] {
        let barrier = barrier.clone();
        let url = stub(Router::new().route(
            "/",
            get(move || async move {
                barrier.wait().await;
                Json(json!({ "from": name }))
            }),
        ))
        .await;
        spec.push(format!("{name}={url}/@5s"));
    }

    let (answer, _) = aggregate(&spec.join(",")).await;

    for name in ["a", "b", "c"] {
        let upstream = by_name(&answer, name);
        assert_eq!(upstream["ok"], true, "{answer}");
        assert_eq!(upstream["data"], json!({ "from": name }));
    }
}

#[tokio::test]
async fn a_slow_upstream_times_out_alone_and_does_not_hold_the_answer() {
    let slow = stub(Router::new().route(
        "/",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Json(json!({"late": true}))
        }),
    ))
    .await;
    let fast = answers(json!({"fast": true})).await;

    let (answer, took) = aggregate(&format!("slow={slow}/@300ms,fast={fast}/@5s")).await;

    assert!(took < Duration::from_secs(10), "took {took:?}");
    let slow = by_name(&answer, "slow");
    assert_eq!(slow["ok"], false);
    assert_eq!(slow["error"], "timeout after 300ms");
    assert_eq!(slow["status"], Value::Null);
    assert_eq!(slow["data"], Value::Null);
    assert!(slow["elapsed_ms"].as_u64().unwrap() >= 300);
    let fast = by_name(&answer, "fast");
    assert_eq!(fast["ok"], true);
    assert_eq!(fast["data"], json!({"fast": true}));
}

#[tokio::test]
async fn failing_unreachable_and_odd_upstreams_are_errors_in_a_200() {
    let failing = stub(Router::new().route(
        "/",
        get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
    ))
    .await;
    let text = stub(Router::new().route("/", get(|| async { "plain text" }))).await;
    // An endless body: the gateway must stop reading at its limit rather than buffer it.
    let endless = stub(Router::new().route(
        "/",
        get(|| async {
            let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
            Body::from_stream(futures::stream::repeat_with(move || {
                Ok::<_, std::io::Error>(chunk.clone())
            }))
        }),
    ))
    .await;
    let unreachable = {
        // A port that was free a moment ago, with nothing listening on it now.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let fine = answers(json!({"fine": true})).await;

    let (answer, took) = aggregate(&format!(
        "failing={failing}/,unreachable={unreachable}/,text={text}/,endless={endless}/@5s,fine={fine}/"
    ))
    .await;

    assert!(took < Duration::from_secs(10), "took {took:?}");
    let expect = [
        ("failing", json!(500), "upstream answered 500"),
        ("unreachable", Value::Null, "connection refused"),
        ("text", json!(200), "not JSON"),
        ("endless", json!(200), "body larger than 1 MiB"),
    ];
    for (name, status, error) in expect {
        let upstream = by_name(&answer, name);
        assert_eq!(upstream["ok"], false, "{name}: {upstream}");
        assert_eq!(upstream["status"], status, "{name}: {upstream}");
        assert_eq!(upstream["error"], error, "{name}: {upstream}");
        assert_eq!(upstream["data"], Value::Null, "{name}: {upstream}");
    }
    assert_eq!(by_name(&answer, "fine")["ok"], true);
}

/// An upstream's JSON reaches the answer byte for byte: key order, number spellings, escapes
/// and inner spaces as the upstream wrote them, however large (under the limit) or deep. A
/// gateway that parsed the body into a tree and encoded it again would sort the keys and write
/// `1.5` for `1.50`.
#[tokio::test]
async fn an_upstream_body_is_passed_through_verbatim() {
    let mut nested = String::from(r#"{"zeta": 1.50, "alpha": "caf\u00e9 \"quoted\"", "deep": "#);
    for _ in 0..60 {
        nested.push_str(r#"{"b": [1e3, -0, {"a": null}], "next": "#);
    }
    nested.push_str("true");
    for _ in 0..60 {
        nested.push('}');
    }
    nested.push_str(r#", "rows": ["#);
    let row = r#"{"id": 7, "name": "row", "tags": ["x", "y"], "score": 0.10}"#;
    while nested.len() < 900_000 {
        nested.push_str(row);
        nested.push(',');
    }
    nested.push_str(row);
    nested.push_str("]}");
    let small = r#"[3, 2, 1.0, {"z": {}, "y": []}]"#;
    let big = answers_raw(nested.clone()).await;
    let little = answers_raw(small).await;

    let text = aggregate_text(&format!("big={big}/@5s,little={little}/")).await;

    assert!(
        text.contains(&format!(r#""data":{nested},"error":null"#)),
        "the large body is not in the answer verbatim"
    );
    assert!(
        text.contains(&format!(r#""data":{small},"error":null"#)),
        "{text}"
    );
    let answer: Value = serde_json::from_str(&text).expect("the answer is JSON");
    assert_eq!(by_name(&answer, "big")["data"]["zeta"], json!(1.5));
}

/// Only one whole JSON value is data: a truncated value, one followed by more, and bytes that
/// are not UTF-8 inside a string are all "not JSON".
#[tokio::test]
async fn almost_json_is_not_json() {
    let truncated = answers_raw(r#"{"a": [1, 2"#).await;
    let trailing = answers_raw(r#"{"a": 1} {"b": 2}"#).await;
    let latin1 = answers_raw(&b"\"caf\xe9\""[..]).await;
    let empty = answers_raw("").await;

    let (answer, _) = aggregate(&format!(
        "truncated={truncated}/,trailing={trailing}/,latin1={latin1}/,empty={empty}/"
    ))
    .await;

    for name in ["truncated", "trailing", "latin1", "empty"] {
        let upstream = by_name(&answer, name);
        assert_eq!(upstream["ok"], false, "{name}: {upstream}");
        assert_eq!(upstream["status"], 200, "{name}: {upstream}");
        assert_eq!(upstream["error"], "not JSON", "{name}: {upstream}");
        assert_eq!(upstream["data"], Value::Null, "{name}: {upstream}");
    }
}

#[tokio::test]
async fn without_upstreams_the_list_is_empty() {
    let (answer, _) = aggregate("").await;
    assert_eq!(answer["upstreams"], json!([]));
}

#[tokio::test]
async fn anonymous_requests_get_401() {
    let app = TestApp::spawn().await;
    let response = app.get("/api/aggregate").await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], 401);
}
