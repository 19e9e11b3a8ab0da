//! HTTPS on the listener: `tls = { cert, key, client_ca }` in `wald.toml`.
//!
//! The certificate chain and key are PEM files; with `client_ca`, every client must
//! present a certificate signed by that CA (mutual TLS). The files are read again every
//! [`RELOAD_EVERY`]: when their content changed (cert-manager renewed the certificate,
//! a Kubernetes Secret volume swapped its files) new connections get the new ones,
//! while the open connections go on with what they began with. Files that fail to load
//! keep the last good ones in use, and the failure shows as the `tls` component's
//! error in health and `/metrics` until a good set arrives.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::component::Component;
use crate::service::TlsConfig;
use crate::shutdown::Stopping;

/// How often the certificate files are checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The TLS settings in use, swapped when the files change.
pub struct Tls {
    config: TlsConfig,
    current: RwLock<Loaded>,
}

struct Loaded {
    server: Arc<rustls::ServerConfig>,
    /// The files' content it was made from.
    files: Vec<Vec<u8>>,
}

impl Tls {
    /// Loads the files named by `config`; an error names the file and what is wrong.
    pub fn load(config: &TlsConfig) -> anyhow::Result<Arc<Self>> {
        let files = read_files(config)?;
        let server = server_config(config, &files)?;
        Ok(Arc::new(Self {
            config: config.clone(),
            current: RwLock::new(Loaded { server, files }),
        }))
    }

    /// An acceptor with the settings in use now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(current.server.clone())
    }

    /// Checks the files every [`RELOAD_EVERY`] until `stop`, and takes them when their
    /// content changed and loads; reports to `health` when they do not.
    pub fn spawn_reload(
        self: &Arc<Self>,
        health: Component,
        stop: Stopping,
    ) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(RELOAD_EVERY) => {}
                    () = stop.wait() => return,
                }
                let reloaded = tls.reload().map_err(|e| format!("{e:#}"));
                if reloaded == Ok(true) {
                    info!(cert = %tls.config.cert.display(), "TLS certificate files changed; new connections use them.");
                }
                health.report(&reloaded, false);
            }
        })
    }

    /// Takes the files if their content changed: true when it did and they loaded.
    fn reload(&self) -> anyhow::Result<bool> {
        let files = read_files(&self.config)?;
        if self.current.read().unwrap_or_else(|e| e.into_inner()).files == files {
            return Ok(false);
        }
        let server = server_config(&self.config, &files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Loaded { server, files };
        Ok(true)
    }
}

/// The content of the certificate, key and CA files, in that order.
fn read_files(config: &TlsConfig) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut paths = vec![&config.cert, &config.key];
    paths.extend(&config.client_ca);
    paths
        .into_iter()
        .map(|path| {
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read TLS file {}: {e}", path.display()))
        })
        .collect()
}

fn server_config(
    config: &TlsConfig,
    files: &[Vec<u8>],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = certificates(&config.cert, &files[0])?;
    let key = PrivateKeyDer::from_pem_slice(&files[1]).map_err(|e| {
        anyhow::anyhow!(
            "{}: no private key in PEM form ({e}); give the certificate's key in PEM (PKCS#8, PKCS#1 or SEC1)",
            config.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (&config.client_ca, files.get(2)) {
        (Some(path), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(path, pem)? {
                roots.add(cert).map_err(|e| {
                    anyhow::anyhow!("{}: not a usable CA certificate: {e}", path.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow::anyhow!(
            "{} and {} do not make a usable certificate: {e}",
            config.cert.display(),
            config.key.display()
        )
    })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

fn certificates(
    path: &std::path::Path,
    pem: &[u8],
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "{}: holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}
