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

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
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
}

/// A data frame from the server.
enum Data {
    Text(String),
    Binary(Vec<u8>),
}

/// Options of a connection: the session cookie and the `Origin` to send.
pub struct WsClientBuilder {
    url: String,
    cookie: Option<String>,
    origin: Option<String>,
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

    pub async fn connect(self) -> Result<WsClient, WsTestError> {
        let mut request = self.url.as_str().into_client_request()?;
        let headers = request.headers_mut();
        for (name, value) in [("cookie", self.cookie), ("origin", self.origin)] {
            if let Some(value) = value {
                let value = HeaderValue::from_str(&value).map_err(|e| WsTestError::Unexpected {
                    expected: "a valid header value",
                    got: e.to_string(),
                })?;
                headers.insert(name, value);
            }
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(WsClient { stream }),
            Err(tungstenite::Error::Http(response)) => {
                Err(WsTestError::Refused(response.status().as_u16()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A connected test client.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub fn build(url: impl Into<String>) -> WsClientBuilder {
        WsClientBuilder {
            url: url.into(),
            cookie: None,
            origin: None,
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
