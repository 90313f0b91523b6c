//! Slow clients (slowloris): a connection that sends nothing, sends its headers a byte at a
//! time, stays idle after a request or dribbles its body is closed within a bound, and while
//! they hang on, other clients are served.
//!
//! The server is given a 1 s header read timeout and a 1 s request timeout; every bound below
//! is several times that, to prove "does not hang", not to measure.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::TestApp;

/// How long a slow client may hold a connection before the test calls it a hang.
const BOUND: Duration = Duration::from_secs(10);

async fn app() -> TestApp {
    TestApp::builder()
        .config(|c| {
            c.http.header_read_timeout = Duration::from_secs(1);
            c.http.request_timeout = Duration::from_secs(1);
        })
        .spawn()
        .await
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Writes `bytes` one at a time, `pause` apart, until the server closes the connection
/// (a read returns 0 or an error, or a write fails) or `BOUND` passes. Returns what the server
/// sent, or `None` if the connection was still open at `BOUND`.
async fn dribble(stream: &mut TcpStream, bytes: &[u8], pause: Duration) -> Option<Vec<u8>> {
    let start = tokio::time::Instant::now();
    let mut answer = Vec::new();
    let mut next = bytes.iter().cycle();
    while start.elapsed() < BOUND {
        let byte = *next.next().expect("cycle never ends");
        if stream.write_all(&[byte]).await.is_err() {
            return Some(answer);
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(pause, stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => return Some(answer),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
    None
}

/// Reads until the server closes the connection; `None` if it is still open at `BOUND`.
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read).await.ok()?;
    Some(answer)
}

/// A normal client is served. On a new connection each time: a pooled one may be closed by
/// the server's 1 s idle bound just as it is reused.
async fn assert_serving(app: &TestApp) {
    assert_page(app, "/healthz", None).await;
}

async fn assert_page(app: &TestApp, path: &str, cookie: Option<&str>) {
    let mut request = reqwest::Client::new().get(app.url(path));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = tokio::time::timeout(BOUND, request.send())
        .await
        .expect("a normal client is served while slow clients hang on")
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
}

#[tokio::test]
async fn headers_sent_a_byte_at_a_time_get_the_connection_closed() {
    let app = app().await;
    let mut slow = connect(&app).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A header that never ends: a byte every 200 ms, always less than the timeout apart.
    let (answer, ()) = tokio::join!(
        dribble(
            &mut slow,
            b"X-Slow: aaaaaaaaaaaaaaaa",
            Duration::from_millis(200)
        ),
        assert_serving(&app),
    );
    let answer = answer.expect("the server closes a connection whose headers never end");
    // hyper closes without an answer; whatever it sends, it is not a page.
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_serving(&app).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let app = app().await;
    let mut silent = connect(&app).await;
    let (answer, ()) = tokio::join!(read_until_closed(&mut silent), assert_serving(&app));
    assert!(
        answer
            .expect("the server closes a silent connection")
            .is_empty(),
        "nothing was asked, so nothing is answered"
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_its_request() {
    let app = app().await;
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle)
        .await
        .expect("an idle kept-alive connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_form_body_sent_a_byte_at_a_time_ends_in_408() {
    let app = app().await;
    let mut slow = connect(&app).await;
    // The CSRF check reads a form's body, under the request timeout.
    slow.write_all(
        b"POST /login HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n",
    )
    .await
    .unwrap();
    let (answer, ()) = tokio::join!(
        dribble(&mut slow, b"username=a", Duration::from_millis(200)),
        assert_serving(&app),
    );
    let answer = answer.expect("a dribbled body ends within the bound");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn a_body_nobody_reads_does_not_hold_the_connection() {
    let app = app().await;
    let mut slow = connect(&app).await;
    // /healthz answers without reading the body; the rest of it is not waited for.
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let answer = dribble(&mut slow, b"x", Duration::from_millis(200))
        .await
        .expect("the connection is closed within the bound");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn hundreds_of_slow_connections_do_not_stop_a_normal_client() {
    let app = app().await;
    let user = app.user("ada").await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = connect(&app).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    assert_serving(&app).await;
    assert_page(&app, "/me/posts", Some(&user.cookie)).await;
    // And every one of them is let go.
    let closed = futures::future::join_all(slow.iter_mut().map(read_until_closed)).await;
    let open = closed.iter().filter(|answer| answer.is_none()).count();
    assert_eq!(open, 0, "{open} of 200 slow connections are still open");
    assert_serving(&app).await;
}

/// `serve` drives hyper itself now; shutdown still lets the request in flight finish, and
/// stops accepting at once.
#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_stops_accepting() {
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let slow = axum::Router::new().route(
        "/slow",
        axum::routing::get({
            let started = started.clone();
            move || async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
                "done"
            }
        }),
    );
    let app = TestApp::builder().routes(slow).spawn().await;
    let (client, url) = (app.client.clone(), app.url("/slow"));
    let in_flight = tokio::spawn(async move { client.get(url).send().await?.text().await });
    started.notified().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    drop(app);

    let answer = tokio::time::timeout(BOUND, in_flight)
        .await
        .expect("the request in flight ends")
        .unwrap();
    assert_eq!(answer.unwrap(), "done");
    assert!(
        TcpStream::connect(&address).await.is_err(),
        "the listener is closed"
    );
}
