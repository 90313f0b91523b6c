//! Pipelined reads: a few connections that any number of requests share at the same time.
//!
//! The pool ([`sqlx::PgPool`]) lends a connection to one query at a time: every query costs a
//! round trip during which that connection and its server process do nothing else, and every
//! query wakes a server process of its own. A [`Pipeline`] keeps a handful of `tokio-postgres`
//! connections (one by default) and writes each caller's query onto one of them as soon as it
//! is asked for, without waiting for the answers to the queries before it. The server process
//! reads a batch of queries per wake-up and answers them in order. On the W1 page (one short
//! query per request, 64 concurrent clients) that took Hearth's CPU per request from about
//! 80 to 50 µs and PostgreSQL's from 37 to 20 µs (README, "What runs where").
//!
//! It is for short, independent reads outside a transaction: a query waits behind the queries
//! written before it on the same connection, so a slow report would hold up every page sharing
//! it. Writes, transactions and anything that takes long use the pool.
//!
//! Connections are opened lazily (a server that is down does not stop `hearth serve` from
//! starting) and reopened on the next query after one breaks, e.g. when PostgreSQL restarts; a
//! query that finds its (older) connection broken runs once more on a new one.
//! Each connection prepares a statement once, on first use, and keeps it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio_postgres::{Client, Row, Socket, Statement, tls::MakeTlsConnect, types::ToSql};

/// Why a pipelined query failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// No connection could be opened, or the one used broke while the query was in flight.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] tokio_postgres::Error),
    #[error("opening a database connection took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// The server refused or failed the statement (a syntax error, a type mismatch, ...).
    #[error("the query failed: {0}")]
    Query(#[source] tokio_postgres::Error),
}

/// Shared pipelined connections; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    tls: Tls,
    connect_timeout: Duration,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    // A std mutex: it is held only to clone or replace an `Arc`, never across an await.
    open: Mutex<Option<Arc<Connection>>>,
    // Serialises reconnecting, so a broken connection is replaced once, not by every query
    // that finds it broken.
    connecting: tokio::sync::Mutex<()>,
}

struct Connection {
    client: Client,
    statements: Mutex<HashMap<&'static str, Statement>>,
}

#[derive(Clone)]
enum Tls {
    Off,
    On(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Pipeline {
    /// `size` connections to the database `options` name (a pool's), with the same host,
    /// port or socket, user, database and TLS mode. The password is not readable from the
    /// options, so it comes from `database_url` (or `PGPASSWORD`).
    pub fn new(
        options: &PgConnectOptions,
        database_url: Option<&str>,
        size: usize,
        connect_timeout: Duration,
    ) -> Self {
        let mut config = tokio_postgres::Config::new();
        // A URL with several hosts: tokio-postgres tries them in order, as libpq does.
        let hosts = database_url
            .and_then(|url| super::failover::split(url).ok())
            .unwrap_or_default();
        let listed: Vec<PgConnectOptions> = hosts.iter().filter_map(|u| u.parse().ok()).collect();
        match options.get_socket() {
            Some(dir) => config.host_path(dir).port(options.get_port()),
            None if listed.len() > 1 => {
                for host in &listed {
                    config.host(host.get_host()).port(host.get_port());
                }
                &mut config
            }
            None => config.host(options.get_host()).port(options.get_port()),
        };
        config
            // Never a standby: after connecting, tokio-postgres asks `transaction_read_only`
            // and goes on to the next host (or fails) if it is on. See `super::failover`.
            .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite)
            .user(options.get_username())
            .application_name(options.get_application_name().unwrap_or("hearth"))
            .connect_timeout(connect_timeout);
        if let Some(database) = options.get_database() {
            config.dbname(database);
        }
        if let Some(extra) = options.get_options() {
            config.options(extra);
        }
        let url = hosts.first().and_then(|url| url::Url::parse(url).ok());
        let password = url
            .as_ref()
            .and_then(|url| url.password().map(percent_decoded))
            .or_else(|| std::env::var("PGPASSWORD").ok());
        if let Some(password) = password {
            config.password(password);
        }
        let tls = tls(&mut config, options.get_ssl_mode(), url.as_ref());
        Self {
            inner: Arc::new(Inner {
                config,
                tls,
                connect_timeout,
                slots: (0..size.max(1)).map(|_| Slot::default()).collect(),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// Runs `sql` (prepared once per connection) with `params` and returns every row.
    ///
    /// `sql` is `'static` because it is the statement cache's key: queries are written in the
    /// code, never assembled from input.
    pub async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PipelineError> {
        let inner = &*self.inner;
        let slot = &inner.slots[inner.next.fetch_add(1, Ordering::Relaxed) % inner.slots.len()];
        let (connection, opened) = self.connection(slot).await?;
        match connection.query(sql, params).await {
            // A connection that served earlier queries broke (the server restarted, or its
            // backends were terminated) before its reader noticed. The reads here are
            // idempotent, so the query runs once more on a fresh connection rather than fail a
            // request for a cut that is already over; one that breaks when just opened fails.
            Err(PipelineError::Unavailable(error)) if !opened => {
                tracing::info!(%error, "a pipelined connection was lost; retrying the read on a new one");
                slot.discard(&connection);
                let (connection, _) = self.connection(slot).await?;
                connection.query(sql, params).await
            }
            answered => answered,
        }
    }

    /// Closes the open connections (each ends its server session once the queries already
    /// written on it are answered). At shutdown, after the last request; a later query would
    /// open a connection again.
    pub fn close(&self) {
        for slot in &self.inner.slots {
            slot.open.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }

    /// `slot`'s connection, opened if it is not open; and whether it was opened for this call.
    async fn connection(&self, slot: &Slot) -> Result<(Arc<Connection>, bool), PipelineError> {
        let inner = &*self.inner;
        if let Some(open) = slot.current() {
            return Ok((open, false));
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(open) = slot.current() {
            return Ok((open, false));
        }
        let opened = tokio::time::timeout(inner.connect_timeout, inner.open())
            .await
            .map_err(|_| PipelineError::ConnectTimeout(inner.connect_timeout))??;
        *slot.open.lock().unwrap_or_else(|e| e.into_inner()) = Some(opened.clone());
        Ok((opened, true))
    }
}

impl Slot {
    /// Forgets `broken` if it is still this slot's connection (another caller may have
    /// replaced it already), so the next query opens a new one.
    fn discard(&self, broken: &Arc<Connection>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            open.take();
        }
    }

    fn current(&self) -> Option<Arc<Connection>> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.as_ref()
            .filter(|connection| !connection.client.is_closed())
            .cloned()
    }
}

impl Inner {
    async fn open(&self) -> Result<Arc<Connection>, PipelineError> {
        let client = match &self.tls {
            Tls::Off => connect(&self.config, tokio_postgres::NoTls).await?,
            Tls::On(tls) => connect(&self.config, tls.clone()).await?,
        };
        Ok(Arc::new(Connection {
            client,
            statements: Mutex::default(),
        }))
    }
}

/// Opens one connection with `tls` and spawns the future that does its socket's reading and
/// writing for every caller; that future ends when the client is dropped or the socket breaks.
async fn connect<T>(config: &tokio_postgres::Config, tls: T) -> Result<Client, PipelineError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, io) = config
        .connect(tls)
        .await
        .map_err(PipelineError::Unavailable)?;
    tokio::spawn(async move {
        if let Err(error) = io.await {
            tracing::warn!(%error, "a pipelined database connection closed; the next query reopens it");
        }
    });
    Ok(client)
}

impl Connection {
    async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PipelineError> {
        let statement = self.prepare(sql).await?;
        self.client
            .query(&statement, params)
            .await
            .map_err(classify)
    }

    async fn prepare(&self, sql: &'static str) -> Result<Statement, PipelineError> {
        let cached = self
            .statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sql)
            .cloned();
        if let Some(statement) = cached {
            return Ok(statement);
        }
        // Two first uses at once may both prepare; the second copy is dropped, which closes it
        // on the server.
        let statement = self.client.prepare(sql).await.map_err(classify)?;
        self.statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sql, statement.clone());
        Ok(statement)
    }
}

/// A broken socket, a closed connection or a server ending the session (a FATAL error, or a
/// code of class 08 "connection exception" or 57 "operator intervention", as on a restart) is
/// the database's unavailability; anything else is the query's own failure.
fn classify(error: tokio_postgres::Error) -> PipelineError {
    let io = std::error::Error::source(&error).is_some_and(|source| source.is::<std::io::Error>());
    let session_ended = error.as_db_error().is_some_and(|db| {
        db.parsed_severity().is_some_and(|severity| {
            matches!(
                severity,
                tokio_postgres::error::Severity::Fatal | tokio_postgres::error::Severity::Panic
            )
        }) || matches!(&db.code().code()[..2], "08" | "57")
    });
    if error.is_closed() || io || session_ended {
        PipelineError::Unavailable(error)
    } else {
        PipelineError::Query(error)
    }
}

fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The TLS the pool's mode asks for, with libpq's meanings: `disable` sends in the clear;
/// `allow`, `prefer` and `require` encrypt without checking the certificate (`require` refuses a
/// server without TLS); `verify-ca` and `verify-full` check it against the web PKI roots plus
/// the `sslrootcert` of the URL or `PGSSLROOTCERT`.
fn tls(config: &mut tokio_postgres::Config, mode: PgSslMode, url: Option<&url::Url>) -> Tls {
    use tokio_postgres::config::SslMode;
    let verified = match mode {
        PgSslMode::Disable => {
            config.ssl_mode(SslMode::Disable);
            return Tls::Off;
        }
        PgSslMode::Allow | PgSslMode::Prefer => {
            config.ssl_mode(SslMode::Prefer);
            false
        }
        PgSslMode::Require => {
            config.ssl_mode(SslMode::Require);
            false
        }
        PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
            config.ssl_mode(SslMode::Require);
            true
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let client = if verified {
        let mut roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let root_file = url
            .and_then(|url| {
                url.query_pairs()
                    .find(|(key, _)| key == "sslrootcert" || key == "ssl-root-cert")
                    .map(|(_, value)| value.into_owned())
            })
            .or_else(|| std::env::var("PGSSLROOTCERT").ok());
        if let Some(file) = root_file {
            add_root_file(&mut roots, &file);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(unverified::Encrypted(provider)))
            .with_no_client_auth()
    };
    Tls::On(tokio_postgres_rustls::MakeRustlsConnect::new(client))
}

fn add_root_file(roots: &mut rustls::RootCertStore, file: &str) {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    match CertificateDer::pem_file_iter(file) {
        Ok(certificates) => {
            let (added, ignored) = roots.add_parsable_certificates(certificates.flatten());
            tracing::debug!(
                file,
                added,
                ignored,
                "root certificates for pipelined connections"
            );
        }
        Err(error) => {
            tracing::warn!(file, %error, "cannot read the root certificate file; using the web PKI roots only");
        }
    }
}

/// libpq's `sslmode=require`: the channel is encrypted and the handshake's signatures are
/// checked, but the certificate's issuer and name are not.
mod unverified {
    use std::sync::Arc;

    use rustls::{
        DigitallySignedStruct, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
        pki_types::{CertificateDer, ServerName, UnixTime},
    };

    #[derive(Debug)]
    pub(super) struct Encrypted(pub(super) Arc<CryptoProvider>);

    impl ServerCertVerifier for Encrypted {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode;

    #[test]
    fn tls_follows_the_pools_mode() {
        let cases = [
            (PgSslMode::Disable, SslMode::Disable, false),
            (PgSslMode::Prefer, SslMode::Prefer, true),
            (PgSslMode::Require, SslMode::Require, true),
            (PgSslMode::VerifyFull, SslMode::Require, true),
        ];
        for (mode, expected, encrypted) in cases {
            let mut config = tokio_postgres::Config::new();
            let chosen = tls(&mut config, mode, None);
            assert_eq!(config.get_ssl_mode(), expected, "{mode:?}");
            assert_eq!(matches!(chosen, Tls::On(_)), encrypted, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn the_password_comes_from_the_url_percent_decoded() {
        let options = PgConnectOptions::new()
            .host("db.internal")
            .port(5433)
            .username("ada")
            .database("app");
        let pipeline = Pipeline::new(
            &options,
            Some("postgres://ada:p%40ss+w@db.internal:5433/app"),
            2,
            Duration::from_secs(1),
        );
        let config = &pipeline.inner.config;
        assert_eq!(config.get_password(), Some(&b"p@ss+w"[..]));
        assert_eq!(config.get_user(), Some("ada"));
        assert_eq!(config.get_dbname(), Some("app"));
        assert_eq!(config.get_ports(), &[5433]);
        assert_eq!(pipeline.inner.slots.len(), 2);
    }
}
