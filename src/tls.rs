//! HTTPS: the certificate and key given by `HEARTH_TLS_CERT`/`HEARTH_TLS_KEY` (PEM files),
//! offered with ALPN `h2` then `http/1.1`, so a client gets HTTP/2 when it speaks it.
//!
//! Refused at start, with a message naming the file: a file without a certificate or a key, a
//! key that does not belong to the certificate, a certificate that has expired or is not valid
//! yet. [`Tls::reload`] (on SIGHUP in `hearth serve`) reads both files again; new handshakes use
//! the new pair while open connections keep theirs. A pair that fails the same checks is not
//! used: the old one stays and the error is logged with the paths, so a half-written renewal
//! never takes the site down.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use anyhow::Context;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio_rustls::TlsAcceptor;

/// A certificate and key read from files, reloadable. Clones share the same current pair.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.inner.cert)
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the pair; an error says which file is wrong and why.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let config = server_config(cert, key)?;
        Ok(Tls {
            inner: Arc::new(Inner {
                cert: cert.to_owned(),
                key: key.to_owned(),
                current: RwLock::new(Arc::new(config)),
            }),
        })
    }

    /// Reads the files again. On success new handshakes use the new pair; on error the pair in
    /// use stays and the error is logged (and returned).
    pub fn reload(&self) -> anyhow::Result<()> {
        let (cert, key) = (&self.inner.cert, &self.inner.key);
        match server_config(cert, key) {
            Ok(config) => {
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                tracing::info!(cert = %cert.display(), key = %key.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    cert = %cert.display(), key = %key.display(), error = format!("{e:#}"),
                    "cannot reload the TLS certificate; the one in use stays"
                );
                Err(e)
            }
        }
    }

    /// Reloads on every SIGHUP until `stop` is cancelled.
    pub async fn reload_on_sighup(self, stop: tokio_util::sync::CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return tracing::error!(
                "cannot listen for SIGHUP; the TLS certificate is not reloaded"
            );
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = hangup.recv() => { let _ = self.reload(); }
            }
        }
    }

    /// An acceptor for one handshake, with the pair current now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let config = self.inner.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(config.clone())
    }
}

fn server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", cert_path.display()))?;
    let leaf = certs.first().with_context(|| {
        format!(
            "{} holds no PEM certificate (BEGIN CERTIFICATE)",
            cert_path.display()
        )
    })?;
    check_validity(leaf, SystemTime::now())
        .with_context(|| format!("the certificate in {} cannot be used", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("cannot read a PEM private key from {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no protocol version")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the key in {} does not go with the certificate in {}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// An expired certificate (or one not valid yet) is refused rather than served: every client
/// would reject it, and a renewal that installed an old file should be loud.
fn check_validity(cert: &CertificateDer<'_>, now: SystemTime) -> anyhow::Result<()> {
    use x509_cert::{Certificate, der::Decode};
    let cert = Certificate::from_der(cert).context("not a valid X.509 certificate")?;
    let validity = &cert.tbs_certificate.validity;
    let (from, until) = (
        validity.not_before.to_system_time(),
        validity.not_after.to_system_time(),
    );
    anyhow::ensure!(
        now <= until,
        "it expired on {}",
        humantime::format_rfc3339_seconds(until)
    );
    anyhow::ensure!(
        now >= from,
        "it is not valid before {}",
        humantime::format_rfc3339_seconds(from)
    );
    Ok(())
}
