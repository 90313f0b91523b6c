//! HTTP/2 and TLS: h2c with prior knowledge and HTTP/2 over TLS through ALPN (with curl), a
//! WebSocket over TLS, certificates refused at start or kept at a bad reload, and the bounds
//! that hold on HTTP/2 as on HTTP/1.1: idle connections, slow bodies, body limits, streams and
//! resets on one connection.
//!
//! Certificates are made here with rcgen. The server gets a 1 s header read timeout and a 1 s
//! request timeout where a bound is checked; `BOUND` is several times that, to prove "does not
//! hang", not to measure.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use hearth::tls::Tls;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::TestApp;

pub(crate) const BOUND: Duration = Duration::from_secs(10);

/// A self-signed certificate for `localhost` and its key, as PEM, valid from `from` for `days`.
fn certificate(from: time::OffsetDateTime, days: i64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = from;
    params.not_after = from + time::Duration::days(days);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub(crate) fn valid_certificate() -> (String, String) {
    certificate(
        time::OffsetDateTime::now_utc() - time::Duration::days(1),
        30,
    )
}

/// Writes a certificate and key into `dir` as cert.pem and key.pem; returns their paths.
pub(crate) fn write_pair(
    dir: &Path,
    (cert, key): &(String, String),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (cert_path, key_path)
}

fn app_config(c: &mut hearth::config::Config) {
    c.http.header_read_timeout = Duration::from_secs(1);
    c.http.request_timeout = Duration::from_secs(1);
    c.http.body_limit = 1024;
}

async fn plain_app() -> TestApp {
    TestApp::builder()
        .config(app_config)
        .routes(crate::echo::routes())
        .spawn()
        .await
}

pub(crate) async fn tls_app(tls: Tls) -> TestApp {
    TestApp::builder()
        .config(app_config)
        .routes(crate::echo::routes())
        .tls(tls)
        .spawn()
        .await
}

pub(crate) fn port(app: &TestApp) -> u16 {
    app.address.rsplit(':').next().unwrap().parse().unwrap()
}

/// `curl -s <args> -w '%{http_version} %{http_code}'` for `path`: "2 200", "1.1 200"... or
/// curl's error on stderr when it fails.
async fn curl(args: &[&str], url: String) -> Result<String, String> {
    let output = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-S",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .args(["--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl is installed");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// curl over TLS to `path`, trusting only `ca`, with `localhost` resolving to the test server.
async fn curl_tls(app: &TestApp, ca: &Path, args: &[&str], path: &str) -> Result<String, String> {
    let port = port(app);
    let resolve = format!("localhost:{port}:127.0.0.1");
    let ca = ca.to_str().unwrap();
    let mut all = vec!["--cacert", ca, "--resolve", resolve.as_str()];
    all.extend_from_slice(args);
    curl(&all, format!("https://localhost:{port}{path}")).await
}

#[tokio::test]
async fn curl_with_http2_prior_knowledge_is_served_http2_in_cleartext() {
    let app = plain_app().await;
    let answer = curl(&["--http2-prior-knowledge"], app.url("/healthz")).await;
    assert_eq!(answer.unwrap(), "2 200");
    // And HTTP/1.1 on the same port.
    let answer = curl(&["--http1.1"], app.url("/healthz")).await;
    assert_eq!(answer.unwrap(), "1.1 200");
}

#[tokio::test]
async fn https_offers_http2_through_alpn_and_http1_to_clients_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &valid_certificate());
    let app = tls_app(Tls::load(&cert, &key).unwrap()).await;
    assert!(app.address.starts_with("https://"));
    let answer = curl_tls(&app, &cert, &["--http2"], "/healthz").await;
    assert_eq!(answer.unwrap(), "2 200");
    let answer = curl_tls(&app, &cert, &["--http1.1"], "/healthz").await;
    assert_eq!(answer.unwrap(), "1.1 200");
    // Plain HTTP on the TLS port is not served.
    let plain = curl(&[], format!("http://127.0.0.1:{}/healthz", port(&app))).await;
    assert!(plain.is_err(), "{plain:?}");
}

/// A TLS client that trusts only the PEM certificate `ca` and offers `alpn`.
fn tls_connector(ca: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub(crate) async fn tls_connect(
    app: &TestApp,
    ca: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port(app))).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tls_connector(ca, alpn).connect(name, tcp).await.unwrap()
}

#[tokio::test]
async fn a_websocket_upgrades_over_https() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let pair = valid_certificate();
    let (cert, key) = write_pair(dir.path(), &pair);
    let app = tls_app(Tls::load(&cert, &key).unwrap()).await;
    // A WebSocket on an HTTP/1.1 connection of its own, as a browser opens one when the
    // page's connection is HTTP/1.1 (over HTTP/2 see ws_http2.rs).
    let stream = tls_connect(&app, &pair.0, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/ws/echo/tls/", port(&app));
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("the WebSocket handshake succeeds over TLS");
    assert_eq!(response.status(), 101);
    socket
        .send(Message::text(r#"{"message":"over tls"}"#))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(BOUND, socket.next())
        .await
        .expect("the room forwards the message")
        .unwrap()
        .unwrap();
    assert!(echoed.to_text().unwrap().contains("over tls"), "{echoed:?}");
}

#[tokio::test]
async fn an_expired_certificate_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let expired = certificate(
        time::OffsetDateTime::now_utc() - time::Duration::days(60),
        30,
    );
    let (cert, key) = write_pair(dir.path(), &expired);
    let error = format!("{:#}", Tls::load(&cert, &key).unwrap_err());
    assert!(error.contains("expired on"), "{error}");
    assert!(error.contains(&cert.display().to_string()), "{error}");
}

#[tokio::test]
async fn a_key_of_another_certificate_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = valid_certificate();
    let (_, other_key) = valid_certificate();
    let (cert, key) = write_pair(dir.path(), &(cert, other_key));
    let error = format!("{:#}", Tls::load(&cert, &key).unwrap_err());
    assert!(
        error.contains("does not go with the certificate"),
        "{error}"
    );
}

#[tokio::test]
async fn garbage_files_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &("garbage".into(), "more garbage".into()));
    let error = format!("{:#}", Tls::load(&cert, &key).unwrap_err());
    assert!(error.contains("holds no PEM certificate"), "{error}");
}

/// An HTTP/2 client over TLS; the connection is driven by a task of its own.
async fn h2_over_tls(app: &TestApp, ca: &str) -> h2::client::SendRequest<Bytes> {
    let stream = tls_connect(app, ca, &[b"h2"]).await;
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn get(client: &mut h2::client::SendRequest<Bytes>, uri: &str) -> axum::http::StatusCode {
    let mut ready = client.clone().ready().await.unwrap();
    let request = axum::http::Request::get(uri).body(()).unwrap();
    let (response, _) = ready.send_request(request, true).unwrap();
    let response = tokio::time::timeout(BOUND, response)
        .await
        .unwrap()
        .unwrap();
    *client = ready;
    response.status()
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_handshakes_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first = valid_certificate();
    let (cert, key) = write_pair(dir.path(), &first);
    let tls = Tls::load(&cert, &key).unwrap();
    let app = tls_app(tls.clone()).await;
    let uri = format!("https://localhost:{}/healthz", port(&app));
    let mut open = h2_over_tls(&app, &first.0).await;
    assert_eq!(get(&mut open, &uri).await, 200);

    // A renewal half written: the old pair stays, and the reload says what is wrong.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let error = format!("{:#}", tls.reload().unwrap_err());
    assert!(error.contains(&cert.display().to_string()), "{error}");
    let old_ca = dir.path().join("first.pem");
    std::fs::write(&old_ca, &first.0).unwrap();
    let answer = curl_tls(&app, &old_ca, &["--http2"], "/healthz").await;
    assert_eq!(
        answer.unwrap(),
        "2 200",
        "the old certificate is still served"
    );

    // A good renewal: new handshakes get it, the open connection goes on.
    let second = valid_certificate();
    write_pair(dir.path(), &second);
    tls.reload().unwrap();
    let answer = curl_tls(&app, &cert, &["--http2"], "/healthz").await;
    assert_eq!(answer.unwrap(), "2 200", "the new certificate is served");
    let stale = curl_tls(&app, &old_ca, &["--http2"], "/healthz").await;
    assert!(
        stale.is_err(),
        "the old certificate is no longer served: {stale:?}"
    );
    assert_eq!(
        get(&mut open, &uri).await,
        200,
        "the open connection is kept"
    );
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

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port(app))).await.unwrap()
}

#[tokio::test]
async fn half_an_http2_preface_then_nothing_gets_the_connection_closed() {
    let app = plain_app().await;
    let mut slow = connect(&app).await;
    slow.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(
        answer.is_some(),
        "the server closes a connection stuck in its preface"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let app = plain_app().await;
    let tcp = connect(&app).await;
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    assert_eq!(get(&mut client, &app.url("/healthz")).await, 200);
    // The client answers the server's pings, so only the idle bound can end this.
    tokio::time::timeout(BOUND, connection)
        .await
        .expect("the server closes an idle HTTP/2 connection")
        .unwrap()
        .unwrap();
}

/// Sends `POST /login` with a form body on HTTP/2, without a length.
async fn post_form(
    client: &mut h2::client::SendRequest<Bytes>,
    app: &TestApp,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut ready = client.clone().ready().await.unwrap();
    let request = axum::http::Request::post(app.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(())
        .unwrap();
    let sent = ready.send_request(request, false).unwrap();
    *client = ready;
    sent
}

#[tokio::test]
async fn an_http2_body_sent_a_byte_at_a_time_ends_in_408() {
    let app = plain_app().await;
    let (mut client, connection) = h2::client::handshake(connect(&app).await).await.unwrap();
    tokio::spawn(connection);
    let (response, mut body) = post_form(&mut client, &app).await;
    let dribble = async {
        for byte in b"username=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .iter()
            .cycle()
        {
            if body
                .send_data(Bytes::copy_from_slice(&[*byte]), false)
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // The server answers 408 and resets the stream: the next byte's send can fail before the
    // answer is read, so a dribble that stops still waits for it.
    let answered = async {
        tokio::pin!(response);
        tokio::select! {
            response = &mut response => response.unwrap(),
            () = dribble => response.await.expect("an answer came before the reset"),
        }
    };
    let response = tokio::time::timeout(BOUND, answered)
        .await
        .expect("a dribbled HTTP/2 body is bounded");
    assert_eq!(response.status(), 408);
}

#[tokio::test]
async fn an_http2_body_over_the_limit_without_a_length_is_413() {
    let app = plain_app().await;
    let (mut client, connection) = h2::client::handshake(connect(&app).await).await.unwrap();
    tokio::spawn(connection);
    let (response, mut body) = post_form(&mut client, &app).await;
    let big = format!("username={}&password=x", "a".repeat(4096));
    body.send_data(Bytes::from(big), true).unwrap();
    let response = tokio::time::timeout(BOUND, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn one_connection_may_open_only_so_many_streams_at_once() {
    let app = plain_app().await;
    let (mut client, connection) = h2::client::handshake(connect(&app).await).await.unwrap();
    tokio::spawn(connection);
    // After a request the client has the server's SETTINGS.
    assert_eq!(get(&mut client, &app.url("/healthz")).await, 200);
    assert_eq!(
        client.current_max_send_streams(),
        hearth::server::H2_MAX_STREAMS as usize
    );
}

#[tokio::test]
async fn a_flood_of_reset_streams_ends_that_connection_and_no_other() {
    let app = plain_app().await;
    let (mut client, connection) = h2::client::handshake(connect(&app).await).await.unwrap();
    let connection = tokio::spawn(connection);
    // Rapid reset (CVE-2023-44487): open streams and cancel them at once, as fast as possible.
    let flood = async {
        for _ in 0..10_000 {
            let Ok(mut ready) = client.clone().ready().await else {
                return;
            };
            let request = axum::http::Request::get(app.url("/healthz"))
                .body(())
                .unwrap();
            let Ok((_, mut stream)) = ready.send_request(request, false) else {
                return;
            };
            stream.send_reset(h2::Reason::CANCEL);
            client = ready;
        }
    };
    tokio::time::timeout(BOUND, flood)
        .await
        .expect("the flood is cut short");
    let ended = tokio::time::timeout(BOUND, connection)
        .await
        .expect("the server ends the flooding connection")
        .unwrap();
    let error = ended.expect_err("the server ends it with an error, not a clean close");
    assert_eq!(
        error.reason(),
        Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{error}"
    );
    // Everyone else is still served.
    let answer = curl(&["--http2-prior-knowledge"], app.url("/healthz")).await;
    assert_eq!(answer.unwrap(), "2 200");
}

/// `hearth serve` over TLS on a fresh database, logging at info; returns the child and a
/// channel of its output lines, which ends when the process does.
async fn serve_binary_tls(
    data_dir: &Path,
    cert: &Path,
    key: &Path,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let (name, _) = crate::helpers::migrated_database().await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .env("DATABASE_URL", crate::helpers::database_url(&name))
        .env("HEARTH_DATA_DIR", data_dir)
        .env("HEARTH_BIND", "127.0.0.1:0")
        .env("HEARTH_TLS_CERT", cert)
        .env("HEARTH_TLS_KEY", key)
        .env("RUST_LOG", "info")
        .arg("serve")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = crate::helpers::output_lines(&mut child);
    (child, lines)
}

/// The port `hearth serve` announces.
fn https_port(lines: &std::sync::mpsc::Receiver<String>) -> u16 {
    let line = wait_for(lines, "listening on https://").expect("hearth serves HTTPS");
    let at = line.find("https://").unwrap();
    let address = line[at + 8..].split_whitespace().next().unwrap();
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// The first output line containing `needle`; `None` when the output ends first.
fn wait_for(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> Option<String> {
    loop {
        let line = lines.recv_timeout(Duration::from_secs(120)).ok()?;
        if line.contains(needle) {
            return Some(line);
        }
    }
}

async fn curl_port(port: u16, ca: &Path) -> Result<String, String> {
    let resolve = format!("localhost:{port}:127.0.0.1");
    let args = [
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
    ];
    curl(&args, format!("https://localhost:{port}/healthz")).await
}

#[tokio::test]
async fn hearth_serve_reloads_its_certificate_on_sighup_and_keeps_it_on_garbage() {
    use nix::sys::signal::{Signal, kill};
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &valid_certificate());
    let first = dir.path().join("first.pem");
    std::fs::copy(&cert, &first).unwrap();
    let (mut server, lines) = serve_binary_tls(dir.path(), &cert, &key).await;
    let port = https_port(&lines);
    let pid = nix::unistd::Pid::from_raw(server.id() as i32);
    assert_eq!(curl_port(port, &first).await.unwrap(), "2 200");

    write_pair(dir.path(), &valid_certificate());
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for(&lines, "TLS certificate reloaded").expect("the reload is logged");
    assert_eq!(curl_port(port, &cert).await.unwrap(), "2 200");
    assert!(
        curl_port(port, &first).await.is_err(),
        "the old one is gone"
    );

    let second = dir.path().join("second.pem");
    std::fs::copy(&cert, &second).unwrap();
    std::fs::write(&cert, "not a certificate").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let error = wait_for(&lines, "cannot reload the TLS certificate").expect("an error is logged");
    assert!(error.contains(&cert.display().to_string()), "{error}");
    assert_eq!(
        curl_port(port, &second).await.unwrap(),
        "2 200",
        "the pair in use stays"
    );

    kill(pid, Signal::SIGTERM).unwrap();
    let exit = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert!(exit.unwrap().success());
}

#[tokio::test]
async fn hearth_serve_does_not_start_with_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let expired = certificate(
        time::OffsetDateTime::now_utc() - time::Duration::days(60),
        30,
    );
    let (cert, key) = write_pair(dir.path(), &expired);
    let (mut server, lines) = serve_binary_tls(dir.path(), &cert, &key).await;
    let exit = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert!(!exit.unwrap().success());
    let output: Vec<String> = lines.iter().collect();
    assert!(
        !output.iter().any(|line| line.contains("listening on")),
        "{output:#?}"
    );
    assert!(
        output.iter().any(|line| line.contains("expired on")),
        "{output:#?}"
    );
}
