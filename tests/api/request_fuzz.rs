//! Randomised raw HTTP/1.1 requests against a running server (issue #9, the bad input suite).
//!
//! `hostile.rs` sends a fixed list of malformed requests; this generates them: garbage methods,
//! the real routes mutated (traversal, `%00`, overlong UTF-8, bad escapes, huge segments),
//! random headers (invalid bytes, control bytes, huge values, Content-Length and
//! Transfer-Encoding games) and bodies (random bytes, invalid UTF-8 forms, deeply nested JSON,
//! huge numbers, wrong lengths), as an anonymous visitor and as a signed-in administrator whose
//! requests carry a valid CSRF token, so they reach the handlers.
//!
//! Every answer is a well-formed status line (or a clean close of a request the server could
//! not parse), never a 5xx, never a hang; a refused request writes nothing; and the server
//! still serves afterwards. Short by default; `HEARTH_FUZZ_REQUESTS=N` for a long run,
//! `HEARTH_FUZZ_SEED=S` to replay one (the seed is printed, and named in every failure).

use std::{collections::BTreeMap, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::TestApp;

/// Longest any one exchange may take (the server's timeouts are 2 s) before it is a hang.
const BOUND: Duration = Duration::from_secs(15);
const SHORT_RUN: usize = 300;

/// xorshift64*: small, seedable, the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// 1 to `max` random bytes.
    fn up_to(&mut self, max: usize) -> Vec<u8> {
        let n = 1 + self.below(max);
        self.bytes(n)
    }
}

/// Real objects for route parameters, so some requests reach rows that exist.
struct Targets {
    post: String,
    room: String,
    doc: String,
    job: String,
    username: String,
    other_id: String,
}

/// A client's cookies (the CSRF cookie, and the session when signed in) and its CSRF token.
struct Session {
    cookie: String,
    csrf: String,
    /// Never sent to `/logout`: the rest of the run would no longer be signed in.
    signed_in: bool,
}

struct Case {
    bytes: Vec<u8>,
    /// Request line and headers are valid HTTP/1.1 (the body may be anything): the server
    /// must answer with a status, not just close.
    well_formed: bool,
}

/// Every route of the app (`src/*/mod.rs`) with the methods it answers, `{params}` to fill.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET POST", "/signup"),
    ("GET POST", "/login"),
    ("GET POST", "/login/link"),
    ("GET POST", "/login/link/{n}"),
    ("POST", "/account/email/resend"),
    ("GET POST", "/account/email/verify/{n}"),
    ("POST", "/logout"),
    ("GET POST", "/account/password"),
    ("GET POST", "/account/settings"),
    ("GET", "/api/me"),
    ("GET POST", "/chat"),
    ("GET", "/chat/{room}"),
    ("POST", "/chat/{room}/invite"),
    ("GET", "/ws/rooms/{room}"),
    ("GET", "/dashboard"),
    ("GET", "/dashboard/stream"),
    ("GET POST", "/docs"),
    ("GET", "/docs/{doc}"),
    ("GET", "/docs/{doc}/text"),
    ("POST", "/docs/{doc}/title"),
    ("POST", "/docs/{doc}/members"),
    ("POST", "/docs/{doc}/members/{user}/remove"),
    ("POST", "/docs/{doc}/versions"),
    ("POST", "/docs/{doc}/versions/{n}/restore"),
    ("POST", "/docs/{doc}/delete"),
    ("GET", "/ws/docs/{doc}"),
    ("GET", "/api/aggregate"),
    ("GET", "/mailbox"),
    ("GET", "/mailbox/{n}"),
    ("GET", "/notifications"),
    ("GET", "/notifications/stream"),
    ("POST", "/notifications/read-all"),
    ("POST", "/notifications/{n}/read"),
    ("GET", "/api/notifications/unread"),
    ("GET", "/api/jobs/{job}"),
    ("GET", "/ops"),
    ("GET", "/ops/api/counts"),
    ("GET", "/ops/jobs"),
    ("POST", "/ops/jobs/bulk"),
    ("GET", "/ops/jobs/{job}"),
    ("POST", "/ops/jobs/{job}/{action}"),
    ("POST", "/ops/queues/{queue}/{action}"),
    ("POST", "/ops/schedules/{schedule}/run"),
    ("GET", "/ops/realtime"),
    ("GET POST", "/ops/cache"),
    ("GET", "/ops/db"),
    ("GET", "/ops/audit"),
    ("GET POST", "/posts"),
    ("GET", "/posts/{post}"),
    ("GET", "/authors/{username}"),
    ("GET", "/posts/new"),
    ("POST", "/posts/preview"),
    ("GET POST", "/posts/{post}/edit"),
    ("POST", "/posts/{post}/publish"),
    ("POST", "/posts/{post}/unpublish"),
    ("GET", "/me/posts"),
    ("POST", "/authors/{username}/subscribe"),
    ("POST", "/authors/{username}/unsubscribe"),
    ("GET POST", "/uploads"),
    ("GET", "/uploads/{n}"),
    ("GET", "/uploads/{n}/events"),
    ("GET", "/api/uploads/{n}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/static/app.css"),
    ("GET", "/nowhere"),
];

/// Form fields the handlers read (their `Deserialize` structs), plus the CSRF field.
const FIELDS: &[&str] = &[
    "title",
    "body",
    "action",
    "username",
    "password",
    "password_confirm",
    "current_password",
    "new_password",
    "new_password_confirm",
    "email",
    "digest_by_mail",
    "name",
    "private",
    "role",
    "message",
    "queue",
    "kind",
    "state",
    "value",
    "headline",
    "next",
    "ids",
    "id",
    "page",
    "before",
];

/// Numbers and words that break parsers: overflow, negatives, floats, NaN, empty.
const ODD_VALUES: &[&str] = &[
    "",
    "0",
    "-1",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999999999999",
    "1e999999",
    "NaN",
    "-0",
    "0x10",
    "1.5",
    "true",
    "publish",
    "save",
    "retry",
    "cancel",
    "delete",
    "pause",
    "resume",
    "clear",
    "default",
    "editor",
    "viewer",
    "owner",
    "on",
    "null",
    "//evil.example",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "%ff%fe",
    "%00",
    "\u{202e}\u{0000}\u{ffff}",
];

fn seed() -> u64 {
    match std::env::var("HEARTH_FUZZ_SEED") {
        Ok(seed) => seed.parse().expect("HEARTH_FUZZ_SEED is a number"),
        Err(_) => rand::random(),
    }
}

fn requests() -> usize {
    std::env::var("HEARTH_FUZZ_REQUESTS")
        .map(|n| n.parse().expect("HEARTH_FUZZ_REQUESTS is a number"))
        .unwrap_or(SHORT_RUN)
}

/// A method: mostly one the route answers (`allowed`), or with `hostile` a token the router
/// does not know or bytes that are not a token.
fn method(rng: &mut Rng, allowed: &str, hostile: bool) -> (Vec<u8>, bool) {
    if !hostile && rng.chance(85) {
        let allowed: Vec<&str> = allowed.split(' ').collect();
        return (rng.pick(&allowed).as_bytes().to_vec(), true);
    }
    if !hostile || rng.chance(30) {
        let method = rng.pick(&[
            "GET", "GET", "GET", "POST", "POST", "POST", "PUT", "PATCH", "DELETE", "HEAD",
            "OPTIONS",
        ]);
        return (method.as_bytes().to_vec(), true);
    }
    // Valid tokens the router does not know, then bytes that are not a token at all.
    match rng.below(4) {
        0 => (
            rng.pick(&["CONNECT", "TRACE", "PROPFIND", "get", "FOO", "M-SEARCH"])
                .as_bytes()
                .to_vec(),
            true,
        ),
        1 => ("X".repeat(1 + rng.below(5000)).into_bytes(), true),
        2 => (rng.up_to(8), false),
        _ => (
            rng.pick(&["", "G ET", "GET\x00", "P\u{f6}ST"])
                .as_bytes()
                .to_vec(),
            false,
        ),
    }
}

fn param(rng: &mut Rng, real: &str) -> String {
    if rng.chance(60) {
        return real.to_owned();
    }
    rng.pick(&[
        "0",
        "-1",
        "99999999999999999999999",
        "abc",
        "%ff",
        "..",
        "%2e%2e",
        "%00",
        "%c0%ae",
        "a%2fb",
        "x%20y",
    ])
    .to_owned()
}

/// A real route with its parameters filled, then mutated. Returns raw bytes (a request
/// target may carry bytes that are not UTF-8) and whether it is still a valid target.
fn path(rng: &mut Rng, template: &str, targets: &Targets, hostile: bool) -> (Vec<u8>, bool) {
    let mut path = template
        .replace("{post}", &param(rng, &targets.post))
        .replace("{room}", &param(rng, &targets.room))
        .replace("{doc}", &param(rng, &targets.doc))
        .replace("{job}", &param(rng, &targets.job))
        .replace("{username}", &param(rng, &targets.username))
        .replace("{user}", &param(rng, &targets.other_id))
        .replace("{n}", &param(rng, "1"))
        .replace(
            "{action}",
            rng.pick(&["retry", "cancel", "delete", "pause", "resume", "x"]),
        )
        .replace("{queue}", rng.pick(&["default", "mail", "nope"]))
        .replace(
            "{schedule}",
            rng.pick(&["daily-digest", "documents-compact", "nope"]),
        );
    let mut valid = true;
    let mutations = if hostile { 1 + rng.below(3) } else { 0 };
    for _ in 0..mutations {
        match rng.below(11) {
            0 => path.insert_str(0, &"/..".repeat(1 + rng.below(4))),
            1 => path.push_str("/%2e%2e/%2e%2e/Cargo.toml"),
            2 => path.push_str("%00"),
            3 => path.push_str(rng.pick(&[
                "/%c0%ae%c0%ae/",
                "/%e0%80%ae",
                "/%ed%a0%80",
                "/%f8%80%80%80%80",
            ])),
            4 => path.push_str(rng.pick(&["%zz", "%", "%f", "%%30"])),
            5 => {
                let len = *rng.pick(&[&300usize, &5000, &70_000]);
                path.push('/');
                path.push_str(&"a".repeat(len));
            }
            6 => path = path.replacen('/', "//", 1 + rng.below(3)),
            7 => path.push_str(rng.pick(&["\\..\\..\\", "/.", "/./", "/..;/", ";jsessionid=1"])),
            8 => path.push_str(rng.pick(&[
                "?page=-1",
                "?page=99999999999999999999",
                "?before=abc",
                "?next=//evil.example",
                "?q=%ff%fe",
                "?page=1&page=2",
                "?=&&=",
                "?state=nope&queue=%00",
            ])),
            9 => {
                // Raw bytes above 0x7f: not UTF-8, not percent-encoded.
                let mut bytes = path.into_bytes();
                bytes.extend([0xff, 0xc0, 0xae]);
                return (bytes, false);
            }
            _ => {
                // A control byte or a space inside the target: not a request line.
                path.push(*rng.pick(&[&'\x01', &' ', &'\x7f', &'\t']));
                valid = false;
            }
        }
    }
    (path.into_bytes(), valid)
}

fn version(rng: &mut Rng, hostile: bool) -> (&'static str, bool) {
    if !hostile || rng.chance(50) {
        ("HTTP/1.1", true)
    } else if rng.chance(50) {
        ("HTTP/1.0", true)
    } else {
        (
            rng.pick(&["HTTP/2.0", "HTTP/9.9", "HTTP/1.1x", "http/1.1", ""]),
            false,
        )
    }
}

/// A header value; only `hostile` ones may be invalid on the wire or huge.
fn header_value(rng: &mut Rng, hostile: bool) -> (Vec<u8>, bool) {
    let kind = rng.below(8);
    match if hostile {
        kind
    } else {
        [0, 1, 5, 6, 7][kind % 5]
    } {
        0 => (rng.pick(ODD_VALUES).as_bytes().to_vec(), true),
        // obs-text: valid on the wire, not UTF-8 for `to_str`.
        1 => (rng.up_to(40).into_iter().map(|b| b | 0x80).collect(), true),
        2 => (vec![b'\x01', b'a', b'\x7f', b'\x00'], false),
        3 => (
            "v".repeat(*rng.pick(&[&1000usize, &9000, &70_000, &500_000]))
                .into_bytes(),
            true,
        ),
        4 => (b"a\nb".to_vec(), false),
        5 => (
            "hearth_session=garbage; hearth_csrf=garbage; a=%ff"
                .as_bytes()
                .to_vec(),
            true,
        ),
        6 => (
            format!("bytes={}-{}", rng.next(), rng.below(10)).into_bytes(),
            true,
        ),
        _ => (
            (0..1 + rng.below(30))
                .map(|_| b"abcxyz019 ,;=/\"-_."[rng.below(18)])
                .collect(),
            true,
        ),
    }
}

/// Extra headers with odd values; with `hostile`, also invalid names and values, or too many.
fn headers(rng: &mut Rng, hostile: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut valid = true;
    let n = if hostile && rng.chance(15) {
        150 // past hyper's header count limit: 431
    } else {
        rng.below(5)
    };
    for _ in 0..n {
        let name: Vec<u8> = match rng.below(if hostile { 10 } else { 8 }) {
            0..=6 => rng
                .pick(&[
                    "Content-Type",
                    "Accept",
                    "Accept-Encoding",
                    "Cookie",
                    "Origin",
                    "Upgrade",
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Version",
                    "Range",
                    "If-None-Match",
                    "If-Modified-Since",
                    "Authorization",
                    "X-Forwarded-For",
                    "Referer",
                    "X-CSRF-Token",
                    "X-Request-Id",
                    "Last-Event-ID",
                    "Expect",
                    "Host",
                ])
                .as_bytes()
                .to_vec(),
            7 => b"X-Fuzz".to_vec(),
            8 => {
                valid = false;
                rng.up_to(10)
                    .into_iter()
                    .map(|b| {
                        if b == b':' || b == b'\r' || b == b'\n' {
                            b'_'
                        } else {
                            b
                        }
                    })
                    .collect()
            }
            _ => {
                valid = false;
                rng.pick(&["Bad Name", "", "X:Y", "X-\u{e9}"])
                    .as_bytes()
                    .to_vec()
            }
        };
        let (value, value_valid) = header_value(rng, hostile);
        valid &= value_valid;
        out.extend_from_slice(&name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&value);
        out.extend_from_slice(b"\r\n");
    }
    (out, valid)
}

fn percent_encode(bytes: &[u8]) -> String {
    form_urlencoded::byte_serialize(bytes).collect()
}

fn form_value(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => percent_encode(rng.pick(ODD_VALUES).as_bytes()).into_bytes(),
        // Invalid UTF-8, percent-encoded and raw.
        1 => percent_encode(&rng.up_to(20)).into_bytes(),
        2 => rng.up_to(20),
        3 => "x"
            .repeat(*rng.pick(&[&300usize, &70_000, &1_000_000]))
            .into_bytes(),
        4 => b"%zz%%&&==+%2".to_vec(),
        _ => b"Hello+world".to_vec(),
    }
}

/// A content type and a body for it.
fn body(rng: &mut Rng, csrf: Option<&str>) -> (Option<&'static str>, Vec<u8>) {
    match rng.below(7) {
        0..=2 => {
            let mut body = Vec::new();
            for i in 0..rng.below(6) {
                if i > 0 {
                    body.push(b'&');
                }
                body.extend_from_slice(rng.pick(FIELDS).as_bytes());
                body.push(b'=');
                body.extend(form_value(rng));
            }
            if let Some(token) = csrf {
                body.extend_from_slice(format!("&csrf_token={token}").as_bytes());
            }
            (Some("application/x-www-form-urlencoded"), body)
        }
        3 => {
            let body = match rng.below(6) {
                0 => "[".repeat(100_000),
                1 => "{\"a\":".repeat(50_000),
                2 => "{\"n\": 1e999999, \"m\": 123456789012345678901234567890}".into(),
                3 => "{\"title\": \"\\ud800\", \"body\": null}".into(),
                4 => "{\"title\":".into(),
                _ => String::from_utf8_lossy(&rng.bytes(64)).into_owned(),
            };
            (Some("application/json"), body.into_bytes())
        }
        4 => {
            let boundary = if rng.chance(70) { "XyZ" } else { "" };
            let mut body = format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"../../a.csv\"\r\n\
                 Content-Type: text/csv\r\n\r\ntitle,body\r\n",
                rng.pick(&["file", "csv", "title", ""]),
            )
            .into_bytes();
            body.extend(rng.up_to(200));
            if rng.chance(50) {
                body.extend_from_slice(b"\r\n--XyZ--\r\n");
            }
            let content_type = if boundary.is_empty() {
                "multipart/form-data"
            } else {
                "multipart/form-data; boundary=XyZ"
            };
            (Some(content_type), body)
        }
        5 => (
            Some(rng.pick(&["text/plain", "application/octet-stream", "garbage", ";;;"])),
            rng.up_to(300),
        ),
        _ => (None, Vec::new()),
    }
}

/// How the body is framed: its length or chunked, or with `hostile`, a wrong length, two of
/// them, or Transfer-Encoding games.
fn framing(rng: &mut Rng, body: &[u8], hostile: bool) -> (Vec<u8>, Vec<u8>, bool) {
    let len = body.len();
    let cl = |n: String| format!("Content-Length: {n}\r\n").into_bytes();
    let kind = if hostile {
        rng.below(8)
    } else {
        *rng.pick(&[&4usize, &8, &9, &9, &9])
    };
    match kind {
        0 => (
            cl((len + 1 + rng.below(100)).to_string()),
            body.to_vec(),
            true,
        ),
        1 => (cl(len.saturating_sub(1).to_string()), body.to_vec(), true),
        2 => {
            let mut h = cl(len.to_string());
            h.extend(cl((len + 5).to_string()));
            (h, body.to_vec(), false)
        }
        3 => (
            cl(rng
                .pick(&["-1", "99999999999999999999", "1e3", "0x10", " 5", "5,5"])
                .into()),
            body.to_vec(),
            false,
        ),
        4 => {
            let mut chunked = format!("{len:x}\r\n").into_bytes();
            chunked.extend_from_slice(body);
            chunked.extend_from_slice(b"\r\n0\r\n\r\n");
            (b"Transfer-Encoding: chunked\r\n".to_vec(), chunked, true)
        }
        5 => {
            let mut h = b"Transfer-Encoding: chunked\r\n".to_vec();
            h.extend(cl(len.to_string()));
            (h, body.to_vec(), false)
        }
        6 => (
            format!(
                "Transfer-Encoding: {}\r\n",
                rng.pick(&[
                    "gzip, chunked",
                    "chunked, gzip",
                    "identity",
                    "chunked\x0b",
                    "xchunked"
                ])
            )
            .into_bytes(),
            body.to_vec(),
            false,
        ),
        7 => (
            b"Transfer-Encoding: chunked\r\n".to_vec(),
            rng.pick(&[
                "zz\r\nabc\r\n0\r\n\r\n",
                "ffffffffffffffffff\r\n",
                "5\r\nab\r\n0\r\n\r\n",
                "-1\r\n",
            ])
            .as_bytes()
            .to_vec(),
            false,
        ),
        8 if len == 0 => (Vec::new(), Vec::new(), true),
        8 => (Vec::new(), body.to_vec(), true),
        _ => (cl(len.to_string()), body.to_vec(), true),
    }
}

/// What a case attacks; the rest of it is valid, so that most cases get past the parser and
/// the router and reach a handler with a hostile body or parameter.
#[derive(Clone, Copy, PartialEq)]
enum Focus {
    Body,
    Path,
    Headers,
    Framing,
    RequestLine,
}

fn generate(rng: &mut Rng, targets: &Targets, session: &Session) -> Case {
    let focus = match rng.below(100) {
        0..50 => Focus::Body,
        50..70 => Focus::Path,
        70..83 => Focus::Headers,
        83..93 => Focus::Framing,
        _ => Focus::RequestLine,
    };
    let (allowed, template) = loop {
        let route = ROUTES[rng.below(ROUTES.len())];
        if !(session.signed_in && route.1 == "/logout") {
            break route;
        }
    };
    let (method, mut well_formed) = method(rng, allowed, focus == Focus::RequestLine);
    let (target, target_valid) = path(rng, template, targets, focus == Focus::Path);
    let (version, version_valid) = version(rng, focus == Focus::RequestLine);
    well_formed &= target_valid && version_valid;
    let mut bytes = method;
    bytes.push(b' ');
    bytes.extend(target);
    bytes.push(b' ');
    bytes.extend_from_slice(version.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    if focus != Focus::Headers || rng.chance(80) {
        bytes.extend_from_slice(b"Host: x\r\n");
    }
    // Always: the server closes after one answer, so nothing waits on a kept-alive socket.
    bytes.extend_from_slice(b"Connection: close\r\n");
    // Mostly with the client's cookies and token, so requests get past the CSRF check.
    let mut form_token = None;
    if rng.chance(90) {
        bytes.extend_from_slice(format!("Cookie: {}\r\n", session.cookie).as_bytes());
        if rng.chance(70) {
            bytes.extend_from_slice(format!("X-CSRF-Token: {}\r\n", session.csrf).as_bytes());
        } else {
            form_token = Some(session.csrf.as_str());
        }
    }
    let (extra, extra_valid) = headers(rng, focus == Focus::Headers);
    well_formed &= extra_valid;
    bytes.extend(extra);
    let (content_type, body) = body(rng, form_token);
    if let Some(content_type) = content_type {
        bytes.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
    }
    let (framing_headers, body, framing_valid) = framing(rng, &body, focus == Focus::Framing);
    well_formed &= framing_valid;
    bytes.extend(framing_headers);
    bytes.extend_from_slice(b"\r\n");
    bytes.extend(body);
    Case { bytes, well_formed }
}

/// Sends `request` and reads the answer's head (up to the blank line), or whatever came
/// before the server closed. `None`: no answer and no close within `BOUND`.
async fn exchange(address: &str, request: Vec<u8>) -> Option<Vec<u8>> {
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Written beside the read: a server may answer (413, 431) before it reads everything.
    let write = tokio::spawn(async move {
        // A write error is the server closing early; the read below sees how.
        let _ = writer.write_all(&request).await;
        writer
    });
    let read = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return answer,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                return answer;
            }
        }
    };
    let answer = tokio::time::timeout(BOUND, read).await.ok();
    write.abort();
    answer
}

/// The status of an answer's status line; `Err` if it is not one.
fn status(answer: &[u8]) -> Result<u16, String> {
    let line = answer.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let code = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..600).contains(code));
    code.ok_or_else(|| format!("not a status line: {line:?}"))
}

/// Rows of the tables that hold what users create or change, in a fixed order.
async fn row_counts(app: &TestApp) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT ARRAY[
            (SELECT count(*) FROM users), (SELECT count(*) FROM sessions),
            (SELECT count(*) FROM posts), (SELECT count(*) FROM subscriptions),
            (SELECT count(*) FROM chat_rooms), (SELECT count(*) FROM chat_members),
            (SELECT count(*) FROM chat_messages), (SELECT count(*) FROM uploads),
            (SELECT count(*) FROM jobs), (SELECT count(*) FROM documents),
            (SELECT count(*) FROM document_members), (SELECT count(*) FROM document_versions),
            (SELECT count(*) FROM notifications), (SELECT count(*) FROM outbox),
            (SELECT count(*) FROM ops_audit)
        ]::bigint[]",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// What the test prints of a request: its start, readable.
fn show(bytes: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(&bytes[..bytes.len().min(600)]).into_owned();
    format!("{shown:?} ({} bytes)", bytes.len())
}

/// A visitor who is not signed in but has loaded a page: a CSRF cookie and its token.
async fn anonymous(app: &TestApp) -> Session {
    let response = reqwest::get(app.url("/login")).await.unwrap();
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = response.text().await.unwrap();
    let marker = r#"name="csrf-token" content=""#;
    let start = page.find(marker).expect("csrf meta tag") + marker.len();
    Session {
        cookie,
        csrf: page[start..start + 64].to_owned(),
        signed_in: false,
    }
}

async fn targets(app: &TestApp) -> (Targets, Session) {
    let user = app.user("fuzz").await;
    let other = app.user("other").await;
    // An administrator, so the ops pages run their handlers too.
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(user.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let post = user.write("Fuzz target", "A *body*.", true).await;
    let created = |response: reqwest::Response, prefix: &str| {
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        location.trim_start_matches(prefix).to_owned()
    };
    let room = created(
        user.post_form("/chat", &[("name", "Fuzz room")]).await,
        "/chat/",
    );
    let doc = created(
        user.post_form("/docs", &[("title", "Fuzz doc")]).await,
        "/docs/",
    );
    let job: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 1) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let session = Session {
        csrf: user.browser.csrf_token().await,
        cookie: user.cookie.clone(),
        signed_in: true,
    };
    let targets = Targets {
        post,
        room,
        doc,
        job: job.to_string(),
        username: "other".into(),
        other_id: other.id.to_string(),
    };
    (targets, session)
}

#[tokio::test]
async fn random_requests_never_get_a_5xx_or_hang_or_write_half_way() {
    let seed = seed();
    let total = requests();
    eprintln!("request fuzz: HEARTH_FUZZ_SEED={seed} HEARTH_FUZZ_REQUESTS={total}");
    let app = TestApp::builder()
        .config(|c| {
            c.http.request_timeout = Duration::from_secs(2);
            c.http.header_read_timeout = Duration::from_secs(2);
        })
        .spawn()
        .await;
    let (targets, signed_in_session) = targets(&app).await;
    let anonymous = anonymous(&app).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut rng = Rng::new(seed);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut rows = row_counts(&app).await;
    for n in 0..total {
        let signed_in = rng.chance(50);
        let session = if signed_in {
            &signed_in_session
        } else {
            &anonymous
        };
        let case = generate(&mut rng, &targets, session);
        let context = || {
            format!(
                "seed {seed}, case {n} ({}): {}",
                if signed_in { "signed in" } else { "anonymous" },
                show(&case.bytes)
            )
        };
        let answer = exchange(&address, case.bytes.clone())
            .await
            .unwrap_or_else(|| panic!("no answer and no close within {BOUND:?}: {}", context()));
        let refused = if answer.is_empty() {
            assert!(
                !case.well_formed,
                "a well-formed request got no answer: {}",
                context()
            );
            *seen.entry("closed".into()).or_default() += 1;
            true
        } else {
            let code = status(&answer).unwrap_or_else(|e| panic!("{e}: {}", context()));
            assert!(
                code < 500,
                "{code}: {}\n{}",
                context(),
                String::from_utf8_lossy(&answer)
            );
            *seen.entry(code.to_string()).or_default() += 1;
            (400..500).contains(&code)
        };
        let after = row_counts(&app).await;
        if refused {
            assert_eq!(after, rows, "a refused request wrote rows: {}", context());
        }
        rows = after;
    }
    eprintln!("request fuzz: answers {seen:?}");

    // Still serving, reads and writes alike (the fuzz may have unpublished its own target).
    assert_eq!(app.get("/healthz").await.status(), 200);
    let user = app.user("afterwards").await;
    assert_eq!(user.get("/me/posts").await.status(), 200);
    let slug = user.write("Still here", "After the fuzz.", true).await;
    assert_eq!(user.get(&format!("/posts/{slug}")).await.status(), 200);
}

/// What the fuzzer found: a NUL byte (`%00`) in a path parameter or a form field reached
/// PostgreSQL, which refuses it in text, and the page answered 500.
#[tokio::test]
async fn a_nul_byte_in_a_parameter_or_a_field_is_a_4xx() {
    let app = TestApp::spawn().await;
    let user = app.user("ada").await;
    for path in [
        "/authors/ada%00",
        "/posts/x%00",
        "/chat/x%00",
        "/authors/ada%00/subscribe",
    ] {
        let status = if path.ends_with("subscribe") {
            user.post_form(path, &[]).await.status()
        } else {
            user.get(path).await.status()
        };
        assert!(status.is_client_error(), "{path}: {status}");
    }
    let before = row_counts(&app).await;
    for (path, fields) in [
        (
            "/posts",
            &[("title", "a\0b"), ("body", "b"), ("action", "publish")][..],
        ),
        ("/docs", &[("title", "a\0b")]),
        ("/chat", &[("name", "a\0b")]),
        ("/account/settings", &[("email", "a\0@b.example")]),
    ] {
        let status = user.post_form(path, fields).await.status();
        assert!(status.is_client_error(), "{path}: {status}");
    }
    assert_eq!(row_counts(&app).await, before, "a refused form wrote rows");
}
