//! The HTTP server: a router served on a listener, HTTP/1.1 and HTTP/2 (h2c, or over TLS
//! through ALPN) with bounds on slow and idle clients, until a shutdown signal; then in-flight
//! requests finish. What is served is the application's business (`application`).

use std::{future::Future, net::SocketAddr, time::Duration};

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::config::Config;

/// Serves `router` on `listener` until `shutdown` completes, then waits for in-flight requests.
/// Never fails: accept errors are logged and retried.
///
/// HTTP/1.1 and HTTP/2 on one port: hyper-util's auto builder reads the first bytes and serves
/// h2c (prior knowledge, as proxies speak it) when they are the HTTP/2 preface. A client gets
/// `config.http.header_read_timeout` to send a request's headers, and a kept-alive connection may
/// stay idle that long between requests. Without it (axum sets no timer) a client that sends
/// nothing, or one header byte now and then, holds a connection and a task forever. hyper's
/// header timer is HTTP/1.1 only, so [`Activity`] gives every connection the same bound on
/// idleness whatever the protocol: no request in flight for that long and it is shut down
/// gracefully (on HTTP/2 a GOAWAY; streams already open, such as event streams and WebSockets
/// over HTTP/2, finish). Bodies are bounded by the request timeout and body limit layers, on
/// both protocols; WebSockets (an HTTP/1.1 upgrade, or an RFC 8441 extended CONNECT stream on
/// HTTP/2) by their own ping and idle timeouts.
pub fn serve(
    listener: TcpListener,
    router: Router,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    serve_with(listener, router, config, None, shutdown)
}

/// [`serve`] over TLS: HTTPS with HTTP/2 or HTTP/1.1 as ALPN chooses. Each handshake uses the
/// certificate current when it starts (see [`Tls::reload`](crate::tls::Tls::reload)) and must
/// finish within the header read timeout.
pub fn serve_tls(
    listener: TcpListener,
    router: Router,
    config: &Config,
    tls: crate::tls::Tls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    serve_with(listener, router, config, Some(tls), shutdown)
}

fn serve_with(
    listener: TcpListener,
    router: Router,
    config: &Config,
    tls: Option<crate::tls::Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    // Zero turns the bounds off (hyper's `None`).
    let idle = Some(config.http.header_read_timeout).filter(|d| !d.is_zero());
    let http = std::sync::Arc::new(http_builder(idle));
    async move {
        let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
        // One token for the accept loop and every connection: a future can only be awaited once.
        let stopping = CancellationToken::new();
        tokio::spawn({
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                stopping.cancel();
            }
        });
        let connections = TaskTracker::new();
        loop {
            let (tcp, remote) = tokio::select! {
                () = stopping.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        backoff_after_accept_error(&e, &stopping).await;
                        continue;
                    }
                },
            };
            // No Nagle delay: WebSocket and event-stream frames are small and must leave at once.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            // Adds `ConnectInfo<SocketAddr>` to every request (the WebSocket per-address limit).
            let Ok(service) = tower::ServiceExt::oneshot(&mut make_service, remote).await;
            let connection = Connection {
                http: http.clone(),
                stopping: stopping.clone(),
                idle,
                remote,
            };
            match &tls {
                None => connections.spawn(connection.serve(tcp, service)),
                Some(tls) => connections.spawn(connection.serve_tls(tls.acceptor(), tcp, service)),
            };
        }
        drop(listener);
        connections.close();
        connections.wait().await;
    }
}

/// HTTP/1.1 with the header timer, and HTTP/2 with bounds on what one connection may ask for.
fn http_builder(
    idle: Option<Duration>,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle);
    http.http2()
        .timer(TokioTimer::new())
        // Streams open at once on one connection; more wait for the client's turn (RFC 9113
        // SETTINGS_MAX_CONCURRENT_STREAMS), so one connection is never more than 100 tasks.
        .max_concurrent_streams(H2_MAX_STREAMS)
        // Rapid reset (CVE-2023-44487): a client that opens and cancels streams faster than
        // they are served gets GOAWAY (ENHANCE_YOUR_CALM) past 20 pending ones...
        .max_pending_accept_reset_streams(20)
        // ...and one whose streams keep making the server reset them (bad frames), past 256.
        .max_local_error_reset_streams(256)
        // The HTTP/1.1 parser's limit on a request head is about this size too.
        .max_header_list_size(64 * 1024)
        // WebSockets over HTTP/2 (RFC 8441): SETTINGS_ENABLE_CONNECT_PROTOCOL, so browsers send
        // an extended CONNECT to the socket routes on the connection they already have.
        .enable_connect_protocol()
        // A peer that stops answering pings is dropped; idleness is `Activity`'s.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    http
}

/// Most HTTP/2 streams one connection may have open at once.
pub const H2_MAX_STREAMS: u32 = 100;

/// One accepted connection, before its protocol is known.
struct Connection {
    http: std::sync::Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    stopping: CancellationToken,
    idle: Option<Duration>,
    remote: SocketAddr,
}

type AppService = axum::middleware::AddExtension<Router, axum::extract::ConnectInfo<SocketAddr>>;

impl Connection {
    /// The TLS handshake gets the same bound as a request's headers.
    async fn serve_tls(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: tokio::net::TcpStream,
        service: AppService,
    ) {
        let handshake = acceptor.accept(tcp);
        let stream = match self.idle {
            Some(limit) => match tokio::time::timeout(limit, handshake).await {
                Ok(stream) => stream,
                Err(_) => {
                    return tracing::debug!(remote = %self.remote, "TLS handshake timed out");
                }
            },
            None => handshake.await,
        };
        match stream {
            Ok(stream) => self.serve(stream, service).await,
            Err(e) => tracing::debug!(error = %e, remote = %self.remote, "TLS handshake failed"),
        }
    }

    async fn serve<I>(self, io: I, service: AppService)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = std::sync::Arc::new(Activity::default());
        let service = hyper::service::service_fn({
            let activity = activity.clone();
            move |request| {
                let (service, busy) = (service.clone(), activity.start());
                async move {
                    let response = tower::ServiceExt::oneshot(service, request).await;
                    drop(busy);
                    response
                }
            }
        });
        let connection = self
            .http
            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = self.stopping.cancelled() => {
                // Finishes the requests in flight, if any, then closes.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            () = activity.idle_for(self.idle) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, remote = %self.remote, "connection ended with an error");
        }
    }
}

/// Requests in flight on one connection, to close it once it has been idle too long on any
/// protocol (hyper's own timer covers only HTTP/1.1 heads): an HTTP/2 client that opens a
/// connection, or half a preface, and then sends nothing would hold it forever.
#[derive(Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

/// Held while a request is being answered.
struct Busy(std::sync::Arc<Activity>);

impl Activity {
    fn start(self: &std::sync::Arc<Self>) -> Busy {
        // Only a change between idle and busy matters to `idle_for`.
        if self
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            self.changed.notify_waiters();
        }
        Busy(self.clone())
    }

    /// Completes once no request has been in flight for `limit`; never without a limit.
    async fn idle_for(&self, limit: Option<Duration>) {
        let Some(limit) = limit else {
            return std::future::pending().await;
        };
        loop {
            // Created before the check, so a change between the two is not missed.
            let changed = self.changed.notified();
            if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                changed.await;
            } else if tokio::time::timeout(limit, changed).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self
            .0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.changed.notify_waiters();
        }
    }
}

/// After a failed `accept`: a client that gave up before it was accepted is nothing; anything
/// else (EMFILE: out of file descriptors) is logged and retried after a pause, as `axum::serve`
/// does, rather than ending the server or spinning.
async fn backoff_after_accept_error(e: &std::io::Error, stopping: &CancellationToken) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection; retrying in 1s");
    tokio::select! {
        () = stopping.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}
