//! TLS on both sides of the proxy, with rustls on ring: [`FrontTls`] accepts clients with the
//! certificate of `proxy.tls` (reloadable while sessions run), [`BackendTls`] connects to
//! backends as `backends.tls` says (verifying by default).
//!
//! The server configuration sits behind an `ArcSwap`: a reload (SIGHUP) builds a whole new one
//! from the files and swaps it in, so a handshake in progress keeps the one it started with, a
//! new client gets the new certificate, and a failed reload leaves the current one in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;

use crate::entry::stream::Stream;

/// The name a backend's certificate must carry (kept here too: the service's TLS in one place).
pub use switchyard::backend_tls::server_name;

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no PEM private key.
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A PEM section could not be decoded.
    #[error("{path}: bad PEM: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        detail: String,
    },
    /// The key does not belong to the certificate, or rustls refused them.
    #[error("certificate and key cannot be used together: {0}")]
    Mismatch(#[source] rustls::Error),
    /// A CA certificate was refused.
    #[error("{path}: bad CA certificate: {source}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// rustls could not build a configuration (e.g. no protocol version in common).
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The crypto provider of every TLS configuration here (ring).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_err(path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        detail: format!("{e:?}"),
    }
}

/// Every certificate in the PEM file at `path` (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        e => pem_err(path, e),
    })
}

/// The client side of the proxy: the certificate it shows clients, and whether a client must
/// use TLS. Cheap to clone (all clones see a reload).
#[derive(Clone)]
pub struct FrontTls {
    cert: PathBuf,
    key: PathBuf,
    required: bool,
    current: Arc<ArcSwap<ServerConfig>>,
}

impl std::fmt::Debug for FrontTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl FrontTls {
    /// Loads the PEM certificate chain at `cert` and its private key at `key`; `required`
    /// refuses clients that do not use TLS.
    pub fn load(cert: &Path, key: &Path, required: bool) -> Result<Self, TlsError> {
        let config = server_config(cert, key)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            required,
            current: Arc::new(ArcSwap::from_pointee(config)),
        })
    }

    /// Reads the files again and serves what they now hold to new clients. On an error the
    /// current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// A plain client is refused (`proxy.tls.required`).
    pub fn required(&self) -> bool {
        self.required
    }

    /// The certificate file, for logs.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// Runs the server side of a TLS handshake on `tcp` with the current certificate.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Stream> {
        self.accept_after(tcp, &[]).await
    }

    /// [`FrontTls::accept`] when the handshake's first bytes were already read from `tcp`
    /// (`early`: a MySQL client sends its ClientHello right behind its SSL request, and the
    /// packet reader may have taken both at once).
    pub async fn accept_after(&self, tcp: TcpStream, early: &[u8]) -> std::io::Result<Stream> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current.load_full());
        let mut early = early;
        let tls = acceptor
            .accept_with(tcp, |conn| {
                while !early.is_empty() {
                    match conn.read_tls(&mut early) {
                        Ok(n) if n > 0 => {
                            // an error stays in the connection: the handshake reports it
                            if conn.process_new_packets().is_err() {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
            })
            .await?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let chain = certificates(cert)?;
    let key = private_key(key)?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Mismatch)
}

/// The backend side: how the proxy verifies backends' certificates.
#[derive(Clone)]
pub struct BackendTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls").finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Verifies backends against the CA certificates in `ca` (PEM), or the public web roots
    /// when `None`; `insecure_skip_verify` accepts any certificate (still encrypted, not
    /// authenticated).
    pub fn new(ca: Option<&Path>, insecure_skip_verify: bool) -> Result<Self, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let config = if insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            match ca {
                Some(path) => {
                    for c in certificates(path)? {
                        roots.add(c).map_err(|source| TlsError::Ca {
                            path: path.to_path_buf(),
                            source,
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The rustls client configuration, for the health check's probe
    /// ([`switchyard::DefaultHealthCheck::with_backend_tls`]).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Runs the client side of a TLS handshake with the backend `addr` (`host:port`; the host
    /// is the name its certificate must carry) on `tcp`.
    pub async fn connect(&self, addr: &str, tcp: TcpStream) -> std::io::Result<Stream> {
        let name = server_name(addr)?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let tls = connector.connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }
}

/// `insecure_skip_verify`: any certificate is taken, but the handshake's signatures are still
/// checked (so the session is encrypted with the key the certificate names).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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

/// Throwaway certificates for the unit tests of this crate.
#[cfg(test)]
pub(crate) mod test_certs {
    use std::path::{Path, PathBuf};

    /// A self-signed certificate for 127.0.0.1 in `dir`, as `<name>.pem` and `<name>.key`;
    /// `None` (after saying so) without the openssl CLI.
    pub(crate) fn self_signed(dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args([
                "-subj",
                "/CN=unit",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .is_ok_and(|o| o.status.success());
        if !made {
            eprintln!("skipping: the openssl CLI is not installed");
            return None;
        }
        Some((cert, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_does_not_belong_to_the_certificate_is_refused_and_a_failed_reload_keeps_the_old()
    {
        let dir = std::env::temp_dir().join(format!("switchyard-tls-pair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let make = |name: &str| test_certs::self_signed(&dir, name).is_some();
        if !(make("a") && make("b")) {
            return;
        }
        let (a_pem, a_key, b_key) = (dir.join("a.pem"), dir.join("a.key"), dir.join("b.key"));
        let e = FrontTls::load(&a_pem, &b_key, false).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch(_)), "{e}");
        let tls = FrontTls::load(&a_pem, &a_key, true).expect("a matching pair");
        assert!(tls.required());
        let before = tls.current.load_full();
        std::fs::write(&a_pem, "garbage").unwrap();
        assert!(tls.reload().is_err());
        assert!(
            Arc::ptr_eq(&before, &tls.current.load_full()),
            "the old one stays"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unreadable_and_empty_files_are_named_in_the_error() {
        let e =
            FrontTls::load(Path::new("/nonexistent/c.pem"), Path::new("/x"), false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/c.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("switchyard-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let e = FrontTls::load(&empty, &empty, false).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = BackendTls::new(Some(&empty), false).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
