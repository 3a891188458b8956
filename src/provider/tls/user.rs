//! Your own certificates (`--tls-ca-cert-file`, `--tls-cert-file`, `--tls-key-file`),
//! checked once at start: the key is the certificate's, the certificate chains to the CA
//! and is valid now for the advertise address. Each refusal names the flag.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{CertificateError, Error as RustlsError, RootCertStore};

use super::TlsError;

/// The three files of your own certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFiles {
    /// `--tls-ca-cert-file`: the CA the agents are told to trust (PEM, one or more).
    pub ca_cert: PathBuf,
    /// `--tls-cert-file`: the serving certificate, then any intermediates (PEM).
    pub cert: PathBuf,
    /// `--tls-key-file`: its key (PEM).
    pub key: PathBuf,
}

/// Your certificates, checked.
pub(crate) struct Loaded {
    /// The CA file's text, for the agents' trusted roots.
    pub(crate) ca_pem: String,
    /// What is served.
    pub(crate) key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").finish_non_exhaustive()
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::UserFile {
        flag,
        path: path.to_owned(),
        why: e.to_string(),
    })
}

fn bad(flag: &'static str, path: &Path, why: impl Into<String>) -> TlsError {
    TlsError::UserFile {
        flag,
        path: path.to_owned(),
        why: why.into(),
    }
}

fn certs(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(flag, path, format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(flag, path, "no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

/// Load and check `files` for serving at `advertise`, at `now`.
pub(crate) fn load(
    files: &UserFiles,
    advertise: IpAddr,
    now: SystemTime,
    provider: &Arc<CryptoProvider>,
) -> Result<Loaded, TlsError> {
    let ca_pem = read("tls-ca-cert-file", &files.ca_cert)?;
    let cert_pem = read("tls-cert-file", &files.cert)?;
    let key_pem = read("tls-key-file", &files.key)?;

    let roots_der = certs("tls-ca-cert-file", &files.ca_cert, &ca_pem)?;
    let chain = certs("tls-cert-file", &files.cert, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        bad(
            "tls-key-file",
            &files.key,
            format!("no usable PEM private key: {e}"),
        )
    })?;

    let certified = CertifiedKey::from_der(chain.clone(), key, provider).map_err(|e| match e {
        RustlsError::InconsistentKeys(_) => TlsError::KeyMismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
        },
        other => bad("tls-key-file", &files.key, other.to_string()),
    })?;

    let mut roots = RootCertStore::empty();
    for der in roots_der {
        roots.add(der).map_err(|e| {
            bad(
                "tls-ca-cert-file",
                &files.ca_cert,
                format!("not a usable CA certificate: {e}"),
            )
        })?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad("tls-ca-cert-file", &files.ca_cert, e.to_string()))?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let verdict = verifier.verify_server_cert(
        &chain[0],
        &chain[1..],
        &ServerName::IpAddress(advertise.into()),
        &[],
        UnixTime::since_unix_epoch(since_epoch),
    );
    match verdict {
        Ok(_) => {}
        Err(RustlsError::InvalidCertificate(
            e @ (CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }),
        )) => {
            return Err(TlsError::NotForAddress {
                cert: files.cert.clone(),
                address: advertise,
                why: e.to_string(),
            });
        }
        Err(RustlsError::InvalidCertificate(
            e @ (CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. }),
        )) => {
            return Err(bad(
                "tls-cert-file",
                &files.cert,
                format!("not valid now: {e}"),
            ));
        }
        Err(e) => {
            return Err(TlsError::NotIssuedByCa {
                cert: files.cert.clone(),
                ca: files.ca_cert.clone(),
                why: e.to_string(),
            });
        }
    }
    let ca_pem = String::from_utf8(ca_pem)
        .map_err(|_| bad("tls-ca-cert-file", &files.ca_cert, "not UTF-8 text"))?;
    Ok(Loaded {
        ca_pem,
        key: Arc::new(certified),
    })
}
