//! `hearth-bench bench http-floor`: the least an HTTP server can do for W1, W2 and W3 on this
//! machine, measured beside Hearth in the same rounds (as `ws-floor` is for W5).
//!
//! A bare hyper server, HTTP/1.1 with keep-alive, one task per connection, no router, no
//! middleware, no logging, no templates:
//!
//! * `GET /bench/page` (W1): runs W1's query over one tokio-postgres connection that every
//!   request shares (tokio-postgres pipelines concurrent queries on it), waits for its rows and
//!   writes the page rendered once at start from the same rows with the same template;
//! * `GET /bench/cached` (W2): writes those same stored bytes;
//! * `GET /bench/gather` (W3): makes the three upstream calls at once over one keep-alive hyper
//!   client and writes `{"count":3,"results":[...]}` from their bodies as they are, unparsed.
//!
//! What Hearth does beyond this (routing, sessions, security headers, compression checks,
//! request ids, the page cache's lookups, rendering, checking upstream JSON) is its own cost:
//! Hearth's figure as a percentage of this one says how much of what the machine allows it uses.

use std::{convert::Infallible, sync::Arc};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpListener;
use url::Url;

use crate::routes::{PAGE_QUERY, PostView, render_page};

#[derive(Debug, Clone, clap::Args)]
pub struct HttpFloorArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8200")]
    pub listen: String,
}

/// What every connection shares: the database connection, the stored page, the upstream client.
pub struct HttpFloor {
    db: tokio_postgres::Client,
    query: tokio_postgres::Statement,
    page: Bytes,
    upstream: Client<HttpConnector, Empty<Bytes>>,
    upstreams: [hyper::Uri; 3],
}

/// Serves until Ctrl-C or SIGTERM.
/// `database_url` holds `bench_posts`, seeded by `hearth-bench serve`; the upstream stub is
/// under `upstream` (`HEARTH_BENCH_UPSTREAM_URL`, as for Hearth's W3 route).
pub async fn run(
    args: HttpFloorArgs,
    database_url: Option<&str>,
    upstream: &Url,
) -> anyhow::Result<()> {
    let database_url = database_url
        .context("the floor reads W1's posts from the database DATABASE_URL names; set it")?;
    let floor = Arc::new(HttpFloor::connect(database_url, upstream).await?);
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("http-floor listening on http://{}/", listener.local_addr()?);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot wait for SIGTERM")?;
    tokio::select! {
        result = Arc::clone(&floor).serve(listener) => result,
        signal = tokio::signal::ctrl_c() => signal.context("cannot wait for Ctrl-C"),
        _ = terminate.recv() => Ok(()),
    }
}

impl HttpFloor {
    /// Connects to the database, renders the page once from W1's query, and readies the
    /// upstream client.
    pub async fn connect(database_url: &str, upstream_url: &Url) -> anyhow::Result<Self> {
        let (db, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
            .await
            .context("cannot connect to the database")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("http-floor: the database connection ended: {e}");
            }
        });
        let query = db.prepare(PAGE_QUERY).await?;
        let rows = db.query(&query, &[]).await?;
        anyhow::ensure!(
            rows.len() == 20,
            "bench_posts holds {} posts of 20: start `hearth-bench serve` once to seed it",
            rows.len()
        );
        let posts = rows
            .iter()
            .map(PostView::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let page = Bytes::from(render_page(&posts)?);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let upstream = Client::builder(TokioExecutor::new()).build(connector);
        let base = upstream_url.as_str().trim_end_matches('/');
        let upstreams = ["1", "2", "3"].map(|n| format!("{base}/upstream/{n}").parse());
        let [a, b, c] = upstreams;
        let upstreams = [a?, b?, c?];
        Ok(Self {
            db,
            query,
            page,
            upstream,
            upstreams,
        })
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let result = match request.uri().path() {
            "/bench/page" => self.page().await,
            "/bench/cached" => Ok(html(self.page.clone())),
            "/bench/gather" => self.gather().await,
            _ => Ok(status(StatusCode::NOT_FOUND)),
        };
        result.unwrap_or_else(|e| {
            eprintln!("http-floor: {e:#}");
            status(StatusCode::BAD_GATEWAY)
        })
    }

    async fn page(&self) -> anyhow::Result<Response<Full<Bytes>>> {
        let rows = self.db.query(&self.query, &[]).await?;
        anyhow::ensure!(rows.len() == 20, "the query returned {} rows", rows.len());
        Ok(html(self.page.clone()))
    }

    async fn gather(&self) -> anyhow::Result<Response<Full<Bytes>>> {
        let [a, b, c] = &self.upstreams;
        let (a, b, c) = tokio::try_join!(self.fetch(a), self.fetch(b), self.fetch(c))?;
        let mut body = Vec::with_capacity(a.len() + b.len() + c.len() + 32);
        body.extend_from_slice(br#"{"count":3,"results":["#);
        for (i, part) in [a, b, c].iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(part);
        }
        body.extend_from_slice(b"]}");
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }

    async fn fetch(&self, uri: &hyper::Uri) -> anyhow::Result<Bytes> {
        let response = self.upstream.get(uri.clone()).await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{uri}: {}",
            response.status()
        );
        Ok(response.into_body().collect().await?.to_bytes())
    }

    /// Answers connections from `listener` until it fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (stream, _) = listener.accept().await.context("accept failed")?;
            stream.set_nodelay(true)?;
            let floor = Arc::clone(&self);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let floor = Arc::clone(&floor);
                    async move { Ok::<_, Infallible>(floor.answer(request).await) }
                });
                // A load client closing its connections at the end of a run is no error worth
                // a line.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

fn html(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}
