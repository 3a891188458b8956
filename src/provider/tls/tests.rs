//! The CA's create/load/replace decisions and the serving certificate's renewal, with
//! injected time; your own certificates refused with the flag named; the listener's TLS
//! 1.3 + ALPN h2 policy and the renewed certificate reaching new handshakes, through a
//! real rustls client on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ironboot_proto::baremetal::TlsConfigSpec;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, Error as RustlsError, ProtocolVersion, RootCertStore, version,
};

use super::ca::{self, Ca, StoredCa, examine};
use super::user::{self, UserFiles};
use super::*;
use crate::boot::http::server::{ConnCounters, Gate, Limits, Listener, Reason};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A fixed start time (2030-01-01T00:00:00Z): certificates are checked against it, not
/// against the clock.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

/// A CA as the Go provider writes it (siderolabs/crypto: ECDSA P-256, key as SEC1
/// `EC PRIVATE KEY`, organisation siderolabs), made with openssl for this test only;
/// valid 2026-11-22 to 2126-10-29.
const GO_CA_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBsTCCAVigAwIBAgIUNT7pNRTbPSxPaA8lqxzibSbY9UcwCgYIKoZIzj0EAwIw
FTETMBEGA1UECgwKc2lkZXJvbGFiczAgFw0yNjExMjIwNzQ2MjFaGA8yMTI2MTAy
OTA3NDYyMVowFTETMBEGA1UECgwKc2lkZXJvbGFiczBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABA6/GHG65mHbLvFMyxRoh56pmNRPukj6KPqDKmP+ebqWE7OiGh7i
eERtExwrwfZhc+TdgI/59vp2OAg2usB4K4WjgYMwgYAwHQYDVR0OBBYEFDy0HVGD
O11/hd2GuttAwGELYJTEMB8GA1UdIwQYMBaAFDy0HVGDO11/hd2GuttAwGELYJTE
MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgKEMB0GA1UdJQQWMBQGCCsG
AQUFBwMBBggrBgEFBQcDAjAKBggqhkjOPQQDAgNHADBEAiBxncbZAYNSj5qQIzes
c6Sn7U0wcCR6A+57Ta9O73LzogIgetwFhqM+VunB1bgvtO49pHprJgy5Qgatt4um
LVFOIFE=
-----END CERTIFICATE-----
";
const GO_CA_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIBY1W9UyS+5xAU1XT6SkKrUouezg0vt4EXtQZWNW4uH2oAoGCCqGSM49
AwEHoUQDQgAEDr8YcbrmYdsu8UzLFGiHnqmY1E+6SPoo+oMqY/55upYTs6IaHuJ4
RG0THCvB9mFz5N2Aj/n2+nY4CDa6wHgrhQ==
-----END EC PRIVATE KEY-----
";

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap())
}

/// Verifies `cert` as a server certificate for `ip` at `at`, trusting `ca_pem`.
fn verify(
    ca_pem: &str,
    cert: &CertificateDer<'static>,
    ip: IpAddr,
    at: SystemTime,
) -> Result<(), RustlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca::first_cert(ca_pem).unwrap()).unwrap();
    let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    v.verify_server_cert(cert, &[], &ServerName::IpAddress(ip.into()), &[], unix(at))
        .map(|_| ())
}

fn leaf(issued: &Issued) -> CertificateDer<'static> {
    issued.key.cert[0].clone()
}

#[test]
fn a_generated_ca_has_upstreams_shape_and_round_trips_through_its_spec() {
    let ca = Ca::generate(t0(), 30 * 365 * DAY).unwrap();
    let spec = ca.to_spec();
    assert!(spec.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(spec.ca_key.starts_with("-----BEGIN PRIVATE KEY-----"));
    let der = ca::first_cert(&spec.ca_cert).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(x.is_ca());
    assert_eq!(x.subject().to_string(), "O=siderolabs");
    assert_eq!(x.issuer().to_string(), "O=siderolabs");
    assert_eq!(
        ca::validity(&der).unwrap(),
        (t0(), t0() + 30 * 365 * DAY),
        "valid from now for --tls-ca-ttl"
    );
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.digital_signature());
    // What Omni would hand back loads to the same CA.
    let again = Ca::from_pem(&spec.ca_cert, &spec.ca_key).unwrap();
    assert_eq!(again.cert_pem(), ca.cert_pem());
    assert_eq!(again.not_after(), ca.not_after());
    // Neither the key nor the certificate in Debug output.
    let dbg = format!("{ca:?}");
    assert!(!dbg.contains("PRIVATE") && !dbg.contains("BEGIN"), "{dbg}");
}

#[test]
fn the_stored_ca_is_created_used_or_replaced_by_time() {
    assert!(matches!(examine(None, t0()).unwrap(), StoredCa::Missing));
    let ca = Ca::generate(t0(), DAY).unwrap();
    let spec = ca.to_spec();
    match examine(Some(&spec), t0() + DAY - Duration::from_secs(1)).unwrap() {
        StoredCa::Valid(loaded) => assert_eq!(loaded.cert_pem(), ca.cert_pem()),
        other => panic!("expected the stored CA to be used, got {other:?}"),
    }
    match examine(Some(&spec), t0() + DAY).unwrap() {
        StoredCa::Expired { not_after } => assert_eq!(not_after, t0() + DAY),
        other => panic!("expected an ended CA to be replaced, got {other:?}"),
    }
}

#[test]
fn an_unusable_stored_ca_is_an_error_not_overwritten() {
    let a = Ca::generate(t0(), DAY).unwrap().to_spec();
    let b = Ca::generate(t0(), DAY).unwrap().to_spec();
    let cases = [
        (
            TlsConfigSpec {
                ca_cert: "garbage".into(),
                ca_key: a.ca_key.clone(),
            },
            "no PEM CERTIFICATE",
        ),
        (
            TlsConfigSpec {
                ca_cert: a.ca_cert.clone(),
                ca_key: "garbage".into(),
            },
            "ca_key",
        ),
        (
            TlsConfigSpec {
                ca_cert: a.ca_cert.clone(),
                ca_key: b.ca_key.clone(),
            },
            "ca_key is not the key of ca_cert",
        ),
    ];
    for (spec, want) in cases {
        let e = examine(Some(&spec), t0()).unwrap_err();
        assert!(matches!(e, TlsError::StoredCa { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(want) && msg.contains("tls-config"), "{msg}");
        assert!(!msg.contains("BEGIN"), "no key material in errors: {msg}");
    }
}

#[test]
fn a_ca_written_by_the_go_provider_loads_and_issues() {
    let spec = TlsConfigSpec {
        ca_cert: GO_CA_CERT.into(),
        ca_key: GO_CA_KEY.into(),
    };
    let StoredCa::Valid(ca) = examine(Some(&spec), t0()).unwrap() else {
        panic!("the Go provider's CA is valid in 2030");
    };
    let issued = ca.issue(IP, t0(), DAY, &provider()).unwrap();
    verify(GO_CA_CERT, &leaf(&issued), IP, t0() + HOUR).unwrap();
}

#[test]
fn serving_certificates_name_the_ip_and_end_with_their_ttl_or_the_ca() {
    let ca = Ca::generate(t0(), 30 * DAY).unwrap();
    let issued = ca.issue(IP, t0(), DAY, &provider()).unwrap();
    assert_eq!((issued.not_before, issued.not_after), (t0(), t0() + DAY));
    let der = leaf(&issued);
    assert_eq!(ca::validity(&der).unwrap(), (t0(), t0() + DAY));
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(!x.is_ca());
    assert_eq!(
        x.subject().to_string(),
        "O=siderolabs, CN=omni-infra-provider-bare-metal"
    );

    verify(ca.cert_pem(), &der, IP, t0() + HOUR).unwrap();
    let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    assert!(matches!(
        verify(ca.cert_pem(), &der, other, t0() + HOUR),
        Err(RustlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ))
    ));
    assert!(matches!(
        verify(ca.cert_pem(), &der, IP, t0() + DAY + Duration::from_secs(1)),
        Err(RustlsError::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ))
    ));
    // Another CA does not vouch for it.
    let stranger = Ca::generate(t0(), DAY).unwrap();
    assert!(verify(stranger.cert_pem(), &der, IP, t0() + HOUR).is_err());

    // Near the CA's end a certificate ends with it.
    let late = t0() + 30 * DAY - HOUR;
    let issued = ca.issue(IP, late, DAY, &provider()).unwrap();
    assert_eq!(issued.not_after, t0() + 30 * DAY);
}

#[test]
fn the_serving_certificate_is_renewed_when_a_tenth_of_its_life_is_left() {
    let ca = Ca::generate(t0(), 365 * DAY).unwrap();
    let r = Renewer::new(ca, IP, DAY, t0(), provider()).unwrap();
    let first = r.issued();
    let first_key = r.slot().current();
    // Due at 24h - 2h24m = 21h36m.
    let due = t0() + DAY - DAY / 10;
    assert_eq!(first.renew_at(), due);
    assert_eq!(r.sleep_before_next(t0()), HOUR, "long waits are capped");
    assert_eq!(
        r.sleep_before_next(due - Duration::from_secs(90)),
        Duration::from_secs(90)
    );
    assert_eq!(r.sleep_before_next(due), Duration::from_secs(1));

    for t in [t0(), t0() + 21 * HOUR, due - Duration::from_secs(1)] {
        assert!(!r.renew_if_due(t).unwrap(), "not due at {t:?}");
    }
    assert!(Arc::ptr_eq(&r.slot().current(), &first_key));
    assert!(r.renew_if_due(due).unwrap());
    let second = r.issued();
    assert_eq!(
        (second.not_before, second.not_after),
        (due, due + DAY),
        "a new full life from the renewal"
    );
    assert_ne!(leaf(&second), leaf(&first));
    assert!(
        Arc::ptr_eq(&r.slot().current(), &second.key),
        "new handshakes get the new certificate"
    );
    assert!(!r.renew_if_due(due + HOUR).unwrap());
}

#[test]
fn renewal_stops_with_an_error_once_the_ca_has_ended() {
    let ca = Ca::generate(t0(), DAY).unwrap();
    let r = Renewer::new(ca, IP, DAY, t0() + 12 * HOUR, provider()).unwrap();
    // The certificate was cut to the CA's end, so it is due before then.
    assert_eq!(r.issued().not_after, t0() + DAY);
    assert!(r.renew_if_due(t0() + DAY - HOUR).unwrap());
    let e = r.renew_if_due(t0() + DAY).unwrap_err();
    assert!(e.to_string().contains("restart ironboot"), "{e}");
    // And an ended CA is refused at start.
    let ca = Ca::generate(t0(), DAY).unwrap();
    assert!(Renewer::new(ca, IP, DAY, t0() + DAY, provider()).is_err());
}

// ---------------------------------------------------------------------------------------
// Your own certificates.

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// A CA (PEM) and a certificate for `ip` it issued, with the certificate's key (PEM).
fn user_set(ip: IpAddr, from: SystemTime, life: Duration) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
    };
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress(ip)];
    params.not_before = from.into();
    params.not_after = (from + life).into();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn load_user(f: &UserFiles, at: SystemTime) -> Result<user::Loaded, TlsError> {
    user::load(f, IP, at, &provider())
}

#[test]
fn your_own_certificates_are_checked_at_start() {
    let now = SystemTime::now();
    let (ca, cert, key) = user_set(IP, now - HOUR, DAY);
    let fs = Files::new();
    let files = UserFiles {
        ca_cert: fs.write("ca.pem", &ca),
        cert: fs.write("cert.pem", &cert),
        key: fs.write("key.pem", &key),
    };
    let loaded = load_user(&files, now).unwrap();
    assert_eq!(
        loaded.ca_pem, ca,
        "the CA file is what Talos is told to trust"
    );
    assert_eq!(
        loaded.key.cert[0],
        CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
    );

    // The wrong key.
    let (_, _, other_key) = user_set(IP, now - HOUR, DAY);
    let wrong = UserFiles {
        key: fs.write("other-key.pem", &other_key),
        ..files.clone()
    };
    let e = load_user(&wrong, now).unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("--tls-key-file")
            && msg.contains("other-key.pem")
            && msg.contains("--tls-cert-file"),
        "{msg}"
    );
    assert!(!msg.contains("BEGIN"), "{msg}");

    // A certificate for another address.
    let (ca2, cert2, key2) = user_set(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), now - HOUR, DAY);
    let elsewhere = UserFiles {
        ca_cert: fs.write("ca2.pem", &ca2),
        cert: fs.write("cert2.pem", &cert2),
        key: fs.write("key2.pem", &key2),
    };
    let e = load_user(&elsewhere, now).unwrap_err();
    assert!(matches!(e, TlsError::NotForAddress { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("--tls-cert-file")
            && msg.contains("10.0.0.1")
            && msg.contains("--api-advertise-address"),
        "{msg}"
    );

    // A certificate another CA issued.
    let stranger = UserFiles {
        ca_cert: files.ca_cert.clone(),
        ..elsewhere.clone()
    };
    let e = load_user(&stranger, now).unwrap_err();
    assert!(matches!(e, TlsError::NotIssuedByCa { .. }), "{e:?}");
    assert!(e.to_string().contains("--tls-ca-cert-file"), "{e}");

    // Expired.
    let e = load_user(&files, now + 2 * DAY).unwrap_err();
    assert!(
        e.to_string().starts_with("--tls-cert-file") && e.to_string().contains("not valid now"),
        "{e}"
    );

    // Unreadable or empty files name their flag.
    let missing = UserFiles {
        ca_cert: fs.dir.path().join("nope.pem"),
        ..files.clone()
    };
    let e = load_user(&missing, now).unwrap_err();
    assert!(e.to_string().starts_with("--tls-ca-cert-file"), "{e}");
    let empty = UserFiles {
        cert: fs.write("empty.pem", ""),
        ..files.clone()
    };
    let e = load_user(&empty, now).unwrap_err();
    assert!(
        e.to_string().starts_with("--tls-cert-file") && e.to_string().contains("no PEM"),
        "{e}"
    );
    let not_a_key = UserFiles {
        key: files.cert.clone(),
        ..files.clone()
    };
    let e = load_user(&not_a_key, now).unwrap_err();
    assert!(e.to_string().starts_with("--tls-key-file"), "{e}");
}

#[tokio::test]
async fn the_generated_mode_needs_omni() {
    let source = CertSource::Generated {
        ca_ttl: DAY,
        cert_ttl: HOUR,
    };
    let e = AgentTls::prepare(&source, IP, None).await.unwrap_err();
    assert!(matches!(e, TlsError::NoOmni), "{e:?}");
}

// ---------------------------------------------------------------------------------------
// The listener.

async fn handshake(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    versions: &[&'static tokio_rustls::rustls::SupportedProtocolVersion],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca::first_cert(ca_pem).unwrap()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

#[tokio::test]
async fn the_listener_speaks_tls13_h2_only_and_serves_renewed_certificates() {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let now = SystemTime::now();
    // Issued 23 hours ago for a day: still valid, and due for renewal.
    let issued_at = now - 23 * HOUR;
    let ca = Ca::generate(issued_at, 30 * DAY).unwrap();
    let tls = AgentTls::from_ca(ca, loopback, DAY, issued_at, provider()).unwrap();
    let listener = TcpListener::bind((loopback, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gate = Gate::new(Limits::default(), Arc::new(ConnCounters::default()));
    let server = tokio::spawn(tls.serve(listener, axum::Router::new(), gate, async move {
        let _ = stopped.await;
    }));

    let s = handshake(addr, tls.ca_pem(), &[&version::TLS13])
        .await
        .unwrap();
    let (_, conn) = s.get_ref();
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    let first = conn.peer_certificates().unwrap()[0].clone();
    assert_eq!(first, tls.current_cert().cert[0]);
    drop(s);

    assert!(
        handshake(addr, tls.ca_pem(), &[&version::TLS12])
            .await
            .is_err(),
        "TLS 1.2 is refused"
    );

    // A client that only speaks HTTP/1.1 gets no protocol: refused.
    let mut roots = RootCertStore::empty();
    roots.add(ca::first_cert(tls.ca_pem()).unwrap()).unwrap();
    let mut h1 = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(
        TlsConnector::from(Arc::new(h1))
            .connect(ServerName::IpAddress(loopback.into()), tcp)
            .await
            .is_err()
    );

    // Renewed: the next handshake gets the new certificate.
    let renewer = tls.renewer().unwrap();
    assert!(renewer.renew_if_due(SystemTime::now()).unwrap());
    let s = handshake(addr, tls.ca_pem(), &[&version::TLS13])
        .await
        .unwrap();
    let second = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(second, first);
    assert_eq!(second, renewer.issued().key.cert[0]);
    drop(s);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the listener stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let now = SystemTime::now();
    let ca = Ca::generate(now, 30 * DAY).unwrap();
    let tls = AgentTls::from_ca(ca, loopback, DAY, now, provider()).unwrap();
    let listener = TcpListener::bind((loopback, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(ConnCounters::default());
    let limits = Limits {
        handshake_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let gate = Gate::new(limits, counters.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tls.serve(listener, axum::Router::new(), gate, async move {
        let _ = stopped.await;
    }));
    // Half a ClientHello record header, then silence.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf))
        .await
        .expect("the server closes a stalled handshake by itself");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed, not answered: {read:?}"
    );
    assert_eq!(
        counters.ended_total(Listener::Tls, Reason::HandshakeTimeout),
        1
    );
    // The gauge drops as the task ends, just after the socket closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counters.open(Listener::Tls) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection is let go"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the listener stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_tls_client_that_sends_no_request_is_dropped_at_the_header_deadline() {
    use tokio::io::AsyncReadExt;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let now = SystemTime::now();
    let ca = Ca::generate(now, 30 * DAY).unwrap();
    let tls = AgentTls::from_ca(ca, loopback, DAY, now, provider()).unwrap();
    let listener = TcpListener::bind((loopback, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(ConnCounters::default());
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let gate = Gate::new(limits, counters.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tls.serve(listener, axum::Router::new(), gate, async move {
        let _ = stopped.await;
    }));
    // Handshaken, then not a byte of HTTP/2.
    let mut s = handshake(addr, tls.ca_pem(), &[&version::TLS13])
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                // The server's HTTP/2 settings, a GOAWAY, session tickets.
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server closes the silent connection by itself"
    );
    assert_eq!(
        counters.ended_total(Listener::Tls, Reason::HeaderTimeout),
        1
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the listener stops on shutdown")
        .unwrap()
        .unwrap();
}
