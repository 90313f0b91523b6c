//! The mailer against a real SMTP conversation: a minimal SMTP server on a local port that
//! records what it is sent, or refuses recipients, in front of a real PostgreSQL outbox.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hearth::mail::{MailError, Mailer, Message, Purpose, Sent};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    sync::mpsc,
};

use crate::helpers::TestApp;

/// How the test server behaves.
#[derive(Clone, Copy, PartialEq)]
enum Server {
    Accept,
    /// Every recipient gets `550`.
    Refuse,
    /// Reads the whole message, then hangs up without answering: did it go out?
    HangUpAfterData,
}

/// Serves SMTP on a free port; each message's DATA arrives on the channel.
async fn smtp_server(mode: Server) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 test ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(body) = data.as_mut() {
                        if line == "." {
                            tx.send(data.take().unwrap()).unwrap();
                            if mode == Server::HangUpAfterData {
                                return;
                            }
                            write.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            body.push_str(&line);
                            body.push('\n');
                        }
                        continue;
                    }
                    let verb = line
                        .split(' ')
                        .next()
                        .unwrap_or_default()
                        .to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 test\r\n",
                        "RCPT" if mode == Server::Refuse => b"550 no such user\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            write.write_all(b"221 bye\r\n").await.unwrap();
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (url, rx)
}

/// A user whose address, ada@example.com, is verified: mail may go to it.
async fn verified_user(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO users (username, password_hash, email, email_verified_at)
         VALUES ('ada', 'not a hash', 'ada@example.com', now()) RETURNING id",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

fn message(key: &str, user_id: i64) -> Message {
    Message {
        key: key.into(),
        user_id,
        to: "ada@example.com".into(),
        purpose: Purpose::Notice,
        subject: "Hello from Hearth".into(),
        body: "Line one.\nLine two.".into(),
    }
}

#[tokio::test]
async fn smtp_delivery_sends_each_message_once() {
    let app = TestApp::spawn().await;
    let ada = verified_user(&app).await;
    let (url, mut received) = smtp_server(Server::Accept).await;
    let mailer = Mailer::new(Some(&url), "Hearth <hearth@example.com>").unwrap();

    assert_eq!(
        mailer
            .send_once(&app.pool, &message("k1", ada))
            .await
            .unwrap(),
        Sent::Now
    );
    assert_eq!(
        mailer
            .send_once(&app.pool, &message("k1", ada))
            .await
            .unwrap(),
        Sent::Before
    );

    let data = received.recv().await.unwrap();
    assert!(data.contains("Subject: Hello from Hearth"), "{data}");
    assert!(data.contains("To: ada@example.com"), "{data}");
    assert!(data.contains("Line two."), "{data}");
    assert!(received.try_recv().is_err(), "sent once");
    let transport: String =
        sqlx::query_scalar("SELECT transport FROM outbox WHERE idempotency_key = 'k1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(transport, "smtp");
}

#[tokio::test]
async fn a_refused_message_is_released_for_the_retry_and_a_crash_mid_send_is_not_resent() {
    let app = TestApp::spawn().await;
    let ada = verified_user(&app).await;
    let (refusing, _) = smtp_server(Server::Refuse).await;
    let mailer = Mailer::new(Some(&refusing), "hearth@example.com").unwrap();

    let error = mailer
        .send_once(&app.pool, &message("k2", ada))
        .await
        .unwrap_err();
    assert!(matches!(error, MailError::Smtp(_)), "{error}");
    let (claimed, last_error): (bool, Option<String>) = sqlx::query_as(
        "SELECT claimed_at IS NOT NULL, last_error FROM outbox WHERE idempotency_key = 'k2'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(!claimed, "released for the retry");
    assert!(last_error.unwrap().contains("no such user"));

    // The retry, once the server accepts: sent.
    let (url, mut received) = smtp_server(Server::Accept).await;
    let mailer = Mailer::new(Some(&url), "hearth@example.com").unwrap();
    assert_eq!(
        mailer
            .send_once(&app.pool, &message("k2", ada))
            .await
            .unwrap(),
        Sent::Now
    );
    assert!(received.recv().await.is_some());

    // A message claimed by an attempt that died mid-send is never sent again.
    sqlx::query(
        "INSERT INTO outbox (idempotency_key, to_address, subject, body, claimed_at)
         VALUES ('k3', 'ada@example.com', 's', 'b', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        mailer
            .send_once(&app.pool, &message("k3", ada))
            .await
            .unwrap(),
        Sent::InDoubt
    );
    assert!(received.try_recv().is_err());
}

#[tokio::test]
async fn bad_addresses_and_settings_are_clear_errors() {
    let app = TestApp::spawn().await;
    let ada = verified_user(&app).await;
    let mailer = Mailer::new(None, "hearth@example.com").unwrap();
    assert!(mailer.is_dev());
    let mut bad = message("k4", ada);
    bad.to = "not an address".into();
    assert!(matches!(
        mailer.send_once(&app.pool, &bad).await,
        Err(MailError::Address(_))
    ));
    assert!(Mailer::new(None, "nobody").is_err());
    assert!(Mailer::new(Some("ftp://x"), "hearth@example.com").is_err());
}

#[tokio::test]
async fn a_connection_lost_after_the_message_was_sent_is_not_sent_again() {
    let app = TestApp::spawn().await;
    let ada = verified_user(&app).await;
    let (url, mut received) = smtp_server(Server::HangUpAfterData).await;
    let mailer = Mailer::new(Some(&url), "hearth@example.com").unwrap();

    assert!(
        mailer
            .send_once(&app.pool, &message("k5", ada))
            .await
            .is_err()
    );
    assert!(
        received.recv().await.is_some(),
        "the server got the message"
    );
    // The retry: the server may have taken it, so it is in doubt, not sent twice.
    let (url, mut again) = smtp_server(Server::Accept).await;
    let mailer = Mailer::new(Some(&url), "hearth@example.com").unwrap();
    assert_eq!(
        mailer
            .send_once(&app.pool, &message("k5", ada))
            .await
            .unwrap(),
        Sent::InDoubt
    );
    assert!(again.try_recv().is_err());
}

/// The parts of a multipart message as `(content type, decoded body)`, undoing
/// quoted-printable and base64 (lettre picks the encoding by the text).
fn parts(data: &str) -> Vec<(String, String)> {
    let boundary = data
        .split("boundary=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("not multipart: {data}"));
    data.split(&format!("--{boundary}"))
        .skip(1)
        .filter_map(|part| {
            let (head, body) = part.split_once("\n\n")?;
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_ascii_lowercase())
                    .unwrap_or_default()
            };
            let bytes = match header("Content-Transfer-Encoding:").as_str() {
                "quoted-printable" => quoted_printable(body),
                "base64" => BASE64
                    .decode(body.split_whitespace().collect::<String>())
                    .unwrap(),
                _ => body.as_bytes().to_vec(),
            };
            Some((header("Content-Type:"), String::from_utf8(bytes).unwrap()))
        })
        .collect()
}

fn quoted_printable(body: &str) -> Vec<u8> {
    let joined = body.replace("=\n", "");
    let mut out = Vec::new();
    let mut bytes = joined.bytes();
    while let Some(b) = bytes.next() {
        if b == b'=' {
            let hex: String = [bytes.next().unwrap(), bytes.next().unwrap()]
                .iter()
                .map(|&c| c as char)
                .collect();
            out.push(u8::from_str_radix(&hex, 16).unwrap());
        } else {
            out.push(b);
        }
    }
    out
}

#[tokio::test]
async fn the_published_mail_has_its_address_as_a_link_in_an_html_part() {
    let (url, mut received) = smtp_server(Server::Accept).await;
    let app = TestApp::builder()
        .settings(|c: &mut hearth::mail::MailSettings| c.smtp_url = Some(url.clone()))
        .spawn()
        .await;
    let ada = app.user("ada").await;
    ada.set_email("ada@example.com").await;
    let slug = ada.write("A <b>bold</b> “title”", "body", true).await;
    app.drain("mail").await;

    let mut data = received.recv().await.unwrap();
    while !data.contains("is published") {
        data = received.recv().await.unwrap();
    }
    assert!(data.contains("multipart/alternative"), "{data}");
    let parts = parts(&data);
    let text = &parts
        .iter()
        .find(|(kind, _)| kind.starts_with("text/plain"))
        .unwrap_or_else(|| panic!("no text part: {data}"))
        .1;
    let html = &parts
        .iter()
        .find(|(kind, _)| kind.starts_with("text/html"))
        .unwrap_or_else(|| panic!("no HTML part: {data}"))
        .1;
    let address = format!("{}/posts/{slug}", app.state.config.site_url());
    // The text keeps the plain address; the HTML links it, and escapes the title.
    assert!(text.contains(&format!("\n{address}\n")), "{text}");
    assert!(!text.contains("<a "), "{text}");
    assert!(
        html.contains(&format!("<a href=\"{address}\">{address}</a>")),
        "{html}"
    );
    assert!(html.contains("A &lt;b&gt;bold&lt;/b&gt; “title”"), "{html}");
}
