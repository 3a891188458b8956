//! The gRPC connection to Omni: `http://` (plaintext HTTP/2) or `https://` (TLS with the
//! system's roots, or none with `--insecure-skip-tls-verify`), and a layer that signs
//! every call with the service-account key (see [`super::auth`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};

use super::auth::{self, ServiceAccountKey};

/// How long to wait for TCP + TLS + HTTP/2 set-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keepalive pings, as the Go client (1 minute).
const KEEPALIVE: Duration = Duration::from_secs(60);

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the endpoint or its TLS set-up was refused.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("--omni-api-endpoint {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("--omni-api-endpoint {url:?}: TLS set-up: {source}")]
    Tls {
        url: String,
        #[source]
        source: BoxError,
    },
}

/// A validated Omni endpoint.
#[derive(Clone, Debug)]
pub struct OmniEndpoint {
    url: String,
    uri: Uri,
    host: String,
    port: u16,
    tls: bool,
    insecure_skip_verify: bool,
}

impl OmniEndpoint {
    /// Parses `http://host[:port]` or `https://host[:port]` (a path is ignored, as gRPC
    /// uses its own).
    pub fn parse(url: &str, insecure_skip_verify: bool) -> Result<Self, EndpointError> {
        let bad = |why| EndpointError::BadUrl {
            url: url.to_owned(),
            why,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http:// or https://")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let origin: Uri = format!(
            "{}://{}:{port}",
            if tls { "https" } else { "http" },
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            }
        )
        .parse()
        .map_err(|_| bad("not a URL"))?;
        Ok(Self {
            url: url.to_owned(),
            uri: origin,
            host,
            port,
            tls,
            insecure_skip_verify,
        })
    }

    /// The URL as given.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A lazily connecting channel: the first call (and every call after a broken
    /// connection) connects; errors surface as `Unavailable` on calls.
    pub fn channel(&self) -> Result<Channel, EndpointError> {
        let tls = if self.tls {
            Some(
                tls_config(self.insecure_skip_verify).map_err(|source| EndpointError::Tls {
                    url: self.url.clone(),
                    source,
                })?,
            )
        } else {
            None
        };
        let connector = Connector {
            host: self.host.clone(),
            port: self.port,
            tls: tls.map(|c| TlsConnector::from(Arc::new(c))),
        };
        Ok(Endpoint::from(self.uri.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector))
    }
}

fn tls_config(insecure_skip_verify: bool) -> Result<ClientConfig, BoxError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // A bad system certificate is skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err("no usable CA certificates in the system store".into());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// `--insecure-skip-tls-verify`: accepts any server certificate (the handshake
/// signatures are still checked).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Opens TCP (and TLS) to the endpoint's host and port.
#[derive(Clone)]
struct Connector {
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((this.host.as_str(), this.port)).await?;
            tcp.set_nodelay(true)?;
            let io: Box<dyn Io> = match &this.tls {
                None => Box::new(tcp),
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(this.host.clone())?;
                    Box::new(tls.connect(name, tcp).await?)
                }
            };
            Ok(TokioIo::new(io))
        })
    }
}

/// The channel with every request signed.
#[derive(Clone)]
pub struct SignedChannel {
    inner: Channel,
    key: Arc<ServiceAccountKey>,
    /// Seconds added to the clock when signing (tests prove old timestamps are refused).
    clock_offset_secs: i64,
    /// Alter the payload after signing (tests prove tampering is refused).
    tamper: bool,
}

impl SignedChannel {
    pub fn new(inner: Channel, key: Arc<ServiceAccountKey>) -> Self {
        Self {
            inner,
            key,
            clock_offset_secs: 0,
            tamper: false,
        }
    }

    /// Signs with a clock shifted by `secs` (a skewed clock, for tests).
    #[cfg(any(test, feature = "test-support"))]
    pub fn with_clock_offset(mut self, secs: i64) -> Self {
        self.clock_offset_secs = secs;
        self
    }

    /// Sends a payload that differs from the signed one by a space (for tests).
    #[cfg(any(test, feature = "test-support"))]
    pub fn with_tampered_payload(mut self) -> Self {
        self.tamper = true;
        self
    }
}

#[derive(Debug, thiserror::Error)]
#[error("signing the request to {method}: {source}")]
struct SignError {
    method: String,
    #[source]
    source: pgp::errors::Error,
}

impl tower::Service<http::Request<Body>> for SignedChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let now = now.saturating_add_signed(self.clock_offset_secs);
        let method = req.uri().path().to_owned();
        let tamper = self.tamper;
        let signed = self.key.sign_call(&method, now).map(|mut h| {
            if tamper {
                h.payload = h.payload.replacen('{', "{ ", 1);
            }
            h
        });
        // tower: the clone is not ready, the ready one is `self.inner`; swap them.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let h = signed.map_err(|source| SignError { method, source })?;
            let headers = req.headers_mut();
            headers.insert(auth::TIMESTAMP_HEADER, HeaderValue::from_str(&h.timestamp)?);
            headers.insert(auth::PAYLOAD_HEADER, HeaderValue::from_str(&h.payload)?);
            headers.insert(auth::SIGNATURE_HEADER, HeaderValue::from_str(&h.signature)?);
            inner.call(req).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = OmniEndpoint::parse("https://omni.example.org", false).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("omni.example.org", 443, true)
        );
        let e = OmniEndpoint::parse("http://127.0.0.1:8099/", false).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 8099, false));
        let e = OmniEndpoint::parse("http://[::1]:9", false).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9));
        for bad in ["omni.example.org", "ftp://x", "https://", ""] {
            let err = OmniEndpoint::parse(bad, false).unwrap_err();
            assert!(err.to_string().contains("--omni-api-endpoint"), "{err}");
        }
    }
}
