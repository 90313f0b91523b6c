//! Test helpers for code built on Hearth: a WebSocket client for consumer tests, what Django
//! Channels' `WebsocketCommunicator` gives — but over a real socket to a real server.
//!
//! ```no_run
//! # async fn example(address: &str, cookie: &str) -> Result<(), hearth::web::testing::WsTestError> {
//! use hearth::web::testing::WsClient;
//! let mut alice = WsClient::build(format!("ws://{address}/ws/chat/lobby"))
//!     .cookie(cookie)
//!     .connect()
//!     .await?;
//! alice.send_json(&serde_json::json!({"text": "hi"})).await?;
//! let frame = alice.recv_json().await?;
//! assert_eq!(frame["text"], "hi");
//! # Ok(()) }
//! ```
//!
//! Every wait has a timeout ([`DEFAULT_TIMEOUT`] unless given), so a test fails with a clear
//! error instead of hanging.
//!
//! The same client speaks HTTP/2 (RFC 8441, an extended `CONNECT` on a stream) with
//! [`WsClientBuilder::http2`], or on a connection of the caller's (e.g. TLS with ALPN `h2`)
//! with [`Http2Connection`] and [`WsClientBuilder::connect_on`]:
//!
//! ```no_run
//! # async fn example(address: &str) -> Result<(), hearth::web::testing::WsTestError> {
//! use hearth::web::testing::{Http2Connection, WsClient};
//! let url = format!("ws://{address}/ws/chat/lobby");
//! let alice = WsClient::build(url.clone()).http2().connect().await?; // h2c, a connection each
//! let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
//! let shared = Http2Connection::handshake(tcp, "http", address).await?;
//! let bob = WsClient::build(url.clone()).connect_on(&shared).await?; // two streams of one
//! let carol = WsClient::build(url).connect_on(&shared).await?; // connection
//! # Ok(()) }
//! ```

use std::{pin::Pin, time::Duration};

use axum::body::Body;
use futures::{SinkExt, StreamExt};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        client::IntoClientRequest,
        error::UrlError,
        http::{self, HeaderName, HeaderValue},
        protocol::Role,
    },
};

/// How long `recv_json` and `expect_close` wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WsTestError {
    /// The server refused the upgrade with this HTTP status.
    #[error("the server refused the WebSocket with HTTP {0}")]
    Refused(u16),
    #[error("nothing arrived within {0:?}")]
    Timeout(Duration),
    #[error("the socket was closed (code {code:?}, reason {reason:?})")]
    Closed { code: Option<u16>, reason: String },
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error(transparent)]
    Socket(#[from] tungstenite::Error),
    /// The HTTP/2 connection or the extended `CONNECT` failed.
    #[error("HTTP/2: {0}")]
    Http2(#[from] hyper::Error),
}

/// A data frame from the server.
enum Data {
    Text(String),
    Binary(Vec<u8>),
}

/// What a socket runs on: a TCP connection (HTTP/1.1 upgrade) or an HTTP/2 stream.
trait Io: AsyncRead + AsyncWrite + Send {}

impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

type Stream = Pin<Box<dyn Io>>;

/// Options of a connection: the session cookie and the `Origin` to send, and the protocol.
pub struct WsClientBuilder {
    url: String,
    cookie: Option<String>,
    origin: Option<String>,
    http2: bool,
}

impl WsClientBuilder {
    /// The `Cookie` header, e.g. the session cookie of a signed-in user.
    pub fn cookie(mut self, cookie: impl Into<String>) -> Self {
        self.cookie = Some(cookie.into());
        self
    }

    /// The `Origin` header a browser would send.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Opens the socket as a browser does on an HTTP/2 connection (RFC 8441): an extended
    /// `CONNECT` with `:protocol = websocket` on a new h2c connection (prior knowledge) to the
    /// `ws://` URL's host, instead of an HTTP/1.1 `GET` with `Upgrade: websocket`.
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// The cookie and origin headers to send.
    fn headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>, WsTestError> {
        let mut headers = Vec::new();
        for (name, value) in [
            (http::header::COOKIE, &self.cookie),
            (http::header::ORIGIN, &self.origin),
        ] {
            if let Some(value) = value {
                let value = HeaderValue::from_str(value).map_err(|e| WsTestError::Unexpected {
                    expected: "a valid header value",
                    got: e.to_string(),
                })?;
                headers.push((name, value));
            }
        }
        Ok(headers)
    }

    pub async fn connect(self) -> Result<WsClient, WsTestError> {
        let mut request = self.url.as_str().into_client_request()?;
        // `host:port`, an IPv6 host in brackets as the URL has it.
        let authority = match (request.uri().scheme_str(), request.uri().host()) {
            (Some("ws"), Some(host)) => {
                format!("{host}:{}", request.uri().port_u16().unwrap_or(80))
            }
            (Some("wss"), _) => {
                return Err(tungstenite::Error::Url(UrlError::TlsFeatureNotEnabled).into());
            }
            _ => return Err(tungstenite::Error::Url(UrlError::NoHostName).into()),
        };
        let tcp = TcpStream::connect(authority.as_str())
            .await
            .map_err(tungstenite::Error::Io)?;
        if self.http2 {
            let connection = Http2Connection::handshake(tcp, "http", &authority).await?;
            return self.connect_on(&connection).await;
        }
        for (name, value) in self.headers()? {
            request.headers_mut().insert(name, value);
        }
        match tokio_tungstenite::client_async(request, Box::pin(tcp) as Stream).await {
            Ok((stream, _)) => Ok(WsClient {
                stream,
                _connection: None,
            }),
            Err(tungstenite::Error::Http(response)) => {
                Err(WsTestError::Refused(response.status().as_u16()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the socket as a new stream of `connection` (RFC 8441): the URL's path and query
    /// on the connection's scheme and authority.
    pub async fn connect_on(self, connection: &Http2Connection) -> Result<WsClient, WsTestError> {
        let url = self.url.as_str().into_client_request()?;
        let path = url.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut request = http::Request::builder()
            .method(http::Method::CONNECT)
            .version(http::Version::HTTP_2)
            .uri(path)
            .extension(hyper::ext::Protocol::from_static("websocket"))
            .header(http::header::SEC_WEBSOCKET_VERSION, "13");
        for (name, value) in self.headers()? {
            request = request.header(name, value);
        }
        let request = request
            .body(Body::empty())
            .map_err(|e| WsTestError::Unexpected {
                expected: "a valid request",
                got: e.to_string(),
            })?;
        let mut response = connection.send(request).await?;
        // RFC 8441: 2xx accepts (no 101 and no key on HTTP/2).
        if !response.status().is_success() {
            return Err(WsTestError::Refused(response.status().as_u16()));
        }
        let stream = hyper::upgrade::on(&mut response).await?;
        let stream = WebSocketStream::from_raw_socket(
            Box::pin(TokioIo::new(stream)) as Stream,
            Role::Client,
            None,
        )
        .await;
        Ok(WsClient {
            stream,
            _connection: Some(connection.clone()),
        })
    }
}

/// A client HTTP/2 connection that WebSockets are opened on (RFC 8441), each a stream of it, as
/// a browser opens them on the connection it loaded the page with.
#[derive(Clone)]
pub struct Http2Connection {
    sender: SendRequest<Body>,
    scheme: &'static str,
    authority: String,
}

impl Http2Connection {
    /// Starts HTTP/2 on `io` (a TCP stream for h2c, or a TLS stream that negotiated `h2`) to a
    /// server known as `scheme` (`"http"` or `"https"`) and `authority` (`host:port`, sent as
    /// `:authority`), and waits, up to [`DEFAULT_TIMEOUT`], for the server's
    /// `SETTINGS_ENABLE_CONNECT_PROTOCOL`: a server without it cannot take a WebSocket on
    /// HTTP/2. The connection is driven by a task of its own until every clone is dropped.
    pub async fn handshake<S>(
        io: S,
        scheme: &'static str,
        authority: &str,
    ) -> Result<Self, WsTestError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Body>(TokioIo::new(io))
            .await?;
        // hyper reads the connection's frames in a task of its own (`connection` only hands it
        // our requests), and nothing wakes us when the server's SETTINGS arrive: the flag is read
        // every millisecond until it is set (an extended CONNECT sent before the server said yes
        // would be a protocol error), the connection ends, or time is up.
        let mut connection = Box::pin(connection);
        let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
        while !connection.is_extended_connect_protocol_enabled() {
            let unsupported = |got: String| WsTestError::Unexpected {
                expected: "SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)",
                got,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(unsupported(format!(
                    "no such setting within {DEFAULT_TIMEOUT:?}"
                )));
            }
            tokio::select! {
                ended = &mut connection => {
                    return Err(match ended {
                        Err(e) => e.into(),
                        Ok(()) => unsupported("the connection closed".into()),
                    });
                }
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "test HTTP/2 connection ended");
            }
        });
        Ok(Self {
            sender,
            scheme,
            authority: authority.to_owned(),
        })
    }

    /// Sends any request on this connection: a page load beside the sockets, or a hand-made
    /// `CONNECT`. A URI without a scheme is completed with the connection's scheme and
    /// authority.
    pub async fn send(
        &self,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, WsTestError> {
        if request.uri().scheme().is_none() {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let uri = format!("{}://{}{path}", self.scheme, self.authority);
            *request.uri_mut() =
                uri.parse()
                    .map_err(|e: http::uri::InvalidUri| WsTestError::Unexpected {
                        expected: "a valid URI",
                        got: e.to_string(),
                    })?;
        }
        let mut sender = self.sender.clone();
        sender.ready().await?;
        Ok(sender.send_request(request).await?)
    }
}

/// A connected test client.
pub struct WsClient {
    stream: WebSocketStream<Stream>,
    /// The HTTP/2 connection the socket is a stream of, kept open while the socket is.
    _connection: Option<Http2Connection>,
}

impl WsClient {
    pub fn build(url: impl Into<String>) -> WsClientBuilder {
        WsClientBuilder {
            url: url.into(),
            cookie: None,
            origin: None,
            http2: false,
        }
    }

    /// Connects without cookie or `Origin`.
    pub async fn connect(url: impl Into<String>) -> Result<Self, WsTestError> {
        Self::build(url).connect().await
    }

    pub async fn send_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WsTestError> {
        let text = serde_json::to_string(value).map_err(|e| WsTestError::Unexpected {
            expected: "a value that encodes as JSON",
            got: e.to_string(),
        })?;
        self.send_text(text).await
    }

    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), WsTestError> {
        Ok(self.stream.send(Message::text(text.into())).await?)
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), WsTestError> {
        Ok(self.stream.send(Message::binary(bytes)).await?)
    }

    /// The next JSON text frame, within [`DEFAULT_TIMEOUT`].
    pub async fn recv_json(&mut self) -> Result<serde_json::Value, WsTestError> {
        self.recv_json_within(DEFAULT_TIMEOUT).await
    }

    /// The next JSON frame whose `"type"` is `kind`, within [`DEFAULT_TIMEOUT`]; frames of
    /// other types (presence, typing...) are skipped.
    pub async fn recv_type(&mut self, kind: &str) -> Result<serde_json::Value, WsTestError> {
        self.recv_type_within(kind, DEFAULT_TIMEOUT).await
    }

    /// [`Self::recv_type`] within `wait`.
    pub async fn recv_type_within(
        &mut self,
        kind: &str,
        wait: Duration,
    ) -> Result<serde_json::Value, WsTestError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.recv_json_within(left).await?;
            if frame["type"] == kind {
                return Ok(frame);
            }
        }
    }

    /// The next JSON text frame, within `wait`. Pings and pongs are skipped; a close is
    /// [`WsTestError::Closed`].
    pub async fn recv_json_within(
        &mut self,
        wait: Duration,
    ) -> Result<serde_json::Value, WsTestError> {
        let text = self.recv_text(wait).await?;
        serde_json::from_str(&text).map_err(|_| WsTestError::Unexpected {
            expected: "a JSON text frame",
            got: text,
        })
    }

    /// The next binary frame, within [`DEFAULT_TIMEOUT`]. Pings and pongs are skipped.
    pub async fn recv_binary(&mut self) -> Result<Vec<u8>, WsTestError> {
        match self.recv_data(DEFAULT_TIMEOUT).await? {
            Data::Binary(bytes) => Ok(bytes),
            Data::Text(text) => Err(WsTestError::Unexpected {
                expected: "a binary frame",
                got: text,
            }),
        }
    }

    async fn recv_text(&mut self, wait: Duration) -> Result<String, WsTestError> {
        match self.recv_data(wait).await? {
            Data::Text(text) => Ok(text),
            Data::Binary(bytes) => Err(WsTestError::Unexpected {
                expected: "a text frame",
                got: format!("a binary frame of {} bytes", bytes.len()),
            }),
        }
    }

    /// The next text or binary frame within `wait`; a close is [`WsTestError::Closed`].
    async fn recv_data(&mut self, wait: Duration) -> Result<Data, WsTestError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| WsTestError::Timeout(wait))?;
            match next {
                None => {
                    return Err(WsTestError::Closed {
                        code: None,
                        reason: "connection ended without a close frame".into(),
                    });
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(text))) => return Ok(Data::Text(text.to_string())),
                Some(Ok(Message::Binary(bytes))) => return Ok(Data::Binary(bytes.to_vec())),
                Some(Ok(Message::Close(frame))) => {
                    return Err(WsTestError::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Waits for the server to close the socket, skipping frames sent before the close;
    /// returns the close code and reason.
    pub async fn expect_close(&mut self) -> Result<(u16, String), WsTestError> {
        self.expect_close_within(DEFAULT_TIMEOUT).await
    }

    pub async fn expect_close_within(
        &mut self,
        wait: Duration,
    ) -> Result<(u16, String), WsTestError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.recv_text(deadline - tokio::time::Instant::now()).await {
                Ok(_) => continue,
                Err(WsTestError::Closed {
                    code: Some(code),
                    reason,
                }) => return Ok((code, reason)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Asserts that no text frame arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) -> Result<(), WsTestError> {
        match self.recv_text(wait).await {
            Err(WsTestError::Timeout(_)) => Ok(()),
            Ok(text) => Err(WsTestError::Unexpected {
                expected: "no frame",
                got: text,
            }),
            Err(e) => Err(e),
        }
    }

    /// Closes the socket from the client side.
    pub async fn close(mut self) -> Result<(), WsTestError> {
        Ok(self.stream.close(None).await?)
    }
}
