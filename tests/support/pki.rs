//! Throwaway certificates for the TLS tests, made with the `openssl` CLI in a scratch directory:
//! a CA, server certificates it signs for loopback, and rustls configurations trusting or
//! showing them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::scratch_dir;

/// The names every server certificate carries: both loopback addresses clients use here, and
/// `localhost`.
const SERVER_EXTENSIONS: &str = "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost\n\
     basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n";
/// `openssl req` arguments for a new P-256 key without a passphrase.
const NEW_EC_KEY: [&str; 6] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
];

/// A throwaway CA in a directory, issuing server certificates for loopback.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A new CA (`ca.pem`, `ca.key`) in a fresh directory; `None` without the `openssl` CLI.
    pub fn new() -> Option<Pki> {
        if Command::new("openssl").arg("version").output().is_err() {
            return switchyard_testkit::skip_or_fail("the openssl CLI is not installed");
        }
        let dir = scratch_dir();
        openssl(
            &dir,
            &[
                &["req", "-x509"][..],
                &NEW_EC_KEY,
                &["ca.key", "-out", "ca.pem", "-days", "2"],
                &["-subj", "/CN=switchyard test CA"],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ]
            .concat(),
        );
        Some(Pki { dir })
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for 127.0.0.1, 127.0.0.2 and localhost with common name `cn`, signed by
    /// the CA: (`<name>.pem`, `<name>.key`).
    pub fn issue(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let ext = format!("{name}.ext");
        std::fs::write(self.dir.join(&ext), SERVER_EXTENSIONS).expect("write extensions");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subject = format!("/CN={cn}");
        openssl(
            &self.dir,
            &[
                &["req"][..],
                &NEW_EC_KEY,
                &[&key, "-out", &csr, "-subj", &subject],
            ]
            .concat(),
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                // a serial of its own, not `-CAcreateserial`: tests issue certificates in
                // parallel, and a shared `ca.srl` is read half-written ("Unable to load number")
                "-set_serial",
                &unique_serial(),
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        (self.dir.join(pem), self.dir.join(key))
    }
}

/// A certificate serial number no other certificate of this test process has.
fn unique_serial() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("0x{nanos:016x}{n:04x}")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration trusting only the CA certificate in `ca`.
pub fn rustls_client(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA certificate")).expect("add CA");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A rustls server configuration showing the certificate chain `cert` with its key `key`.
pub fn rustls_server(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate chain");
    let key = PrivateKeyDer::from_pem_file(key).expect("key file");
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("certificate and key"),
    )
}
