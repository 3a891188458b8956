//! The agents' TLS listener (`--tls-enabled`) against real peers:
//!
//! - the Go agent harness (`tests/agent-harness`, the real jhump/grpctunnel module and Go's
//!   crypto/tls, dialing `https://…` as the metal agent does when `metal.provider.address`
//!   has that scheme) verifies ironboot's serving certificate against the CA Talos would
//!   be told to trust, opens the reverse tunnel over TLS, and ironboot calls AgentService
//!   through it; an agent trusting another CA, or dialing in plaintext, gets no tunnel;
//! - the generated CA is created in Omni's state (the Go harness on the upstream COSI
//!   modules, `tests/omni-harness`) as the Go provider creates it (`TLSConfig`
//!   `tls-config`, no owner), and a second start loads that CA instead of making another;
//! - your own certificates: served when they check out, refused at start, naming the
//!   flag, when the key is not the certificate's or the certificate does not name the
//!   advertise address.
//!
//! Needs Go and the harnesses' modules (`tests/install-prereqs.sh`); a missing one fails
//! the test naming it. Everything listens on 127.0.0.1.

use ironboot::testing::{agent, http, omni, tls};
use ironboot_test_support::{go_harness, omni_harness};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use ironboot_proto::agent::GetPowerManagementRequest;
use ironboot_proto::baremetal::TlsConfigSpec;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use agent::admission::AgentGate;
use agent::client::{AgentClient, AgentTimeouts};
use agent::tunnel::{TunnelEvent, Tunnels};
use omni::client::Client;
use tls::{AgentTls, CertSource, TlsError, UserFiles};

const ID: &str = "bare-metal";
const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/proto");
const WAIT: Duration = Duration::from_secs(20);
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const HOUR: Duration = Duration::from_secs(3600);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn agent_harness() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_harness::build("the agent TLS test", "agent-harness", "agentharness"))
}

fn omni_harness_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_harness::build("the agent TLS test", "omni-harness", "omniharness"))
}

fn timeouts() -> AgentTimeouts {
    AgentTimeouts {
        call: Duration::from_secs(30),
        fast_wipe: Duration::from_secs(300),
        zeroes_wipe: Duration::from_secs(3600),
    }
}

/// ironboot's TLS listener on a loopback port, serving the agent tunnel only (as the
/// binary mounts it); stopped on drop.
struct TlsServer {
    addr: SocketAddr,
    tunnels: Tunnels,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TlsServer {
    async fn start(tls: &AgentTls) -> Self {
        let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Tunnels::new(AgentGate::open());
        let (stop, stopped) = oneshot::channel::<()>();
        // The binary's caps and deadlines, at their defaults.
        let gate = http::server::Gate::new(
            http::server::Limits::default(),
            Arc::new(http::server::ConnCounters::default()),
        );
        let router = tunnels.mount(axum::Router::new());
        let task = tokio::spawn(tls.serve(listener, router, gate, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            tunnels,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Graceful shutdown: tunnels closed, then the listener's end awaited.
    async fn shutdown(mut self) {
        self.tunnels.close_all();
        let _ = self.stop.take().unwrap().send(());
        let task = &mut self.task;
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the TLS listener stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Go agent process; killed on drop.
struct GoAgent {
    child: Child,
    events: mpsc::UnboundedReceiver<Value>,
}

impl GoAgent {
    fn start(addr: &str, machine_id: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(agent_harness())
            .args(["--addr", addr, "--machine-id", machine_id])
            .args(["--name", machine_id, "--proto-dir", PROTO_DIR])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the agent harness");
        let events = go_harness::json_lines(child.stdout.take().unwrap());
        Self { child, events }
    }

    /// The next event other than "serving".
    async fn next_event(&mut self) -> Value {
        loop {
            let v = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("no event from the Go agent in time")
                .expect("the Go agent's output ended");
            if v["event"] != "serving" {
                return v;
            }
        }
    }
}

impl Drop for GoAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connected(events: &mut broadcast::Receiver<TunnelEvent>, machine_id: &str) {
    let want = TunnelEvent::Connected {
        machine_id: machine_id.to_owned(),
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within {WAIT:?}"))
            .expect("tunnel events");
        if got == want {
            return;
        }
    }
}

/// An agent dialing `server` with `extra` TLS flags opens its tunnel; ironboot's calls
/// reach it through the TLS connection.
async fn tunnel_works(server: &TlsServer, machine_id: &str, extra: &[&str]) {
    let mut events = server.tunnels.subscribe();
    let mut go = GoAgent::start(&server.url(), machine_id, extra);
    connected(&mut events, machine_id).await;
    let client = AgentClient::new(server.tunnels.clone(), timeouts());
    client.hello(machine_id).await.unwrap();
    let ev = go.next_event().await;
    assert_eq!(
        (&ev["method"], &ev["agent"]),
        (&json!("Hello"), &json!(machine_id)),
        "{ev}"
    );
    let got = client
        .get_power_management(machine_id, GetPowerManagementRequest::default())
        .await
        .unwrap();
    assert_eq!(got.ipmi.unwrap().address, "10.0.0.42");
    assert_eq!(go.next_event().await["method"], "GetPowerManagement");
}

/// An agent dialing `server` with `extra` flags gets no tunnel; its error.
async fn tunnel_refused(server: &TlsServer, addr: &str, extra: &[&str]) -> String {
    let mut go = GoAgent::start(addr, "00000000-0000-4000-8000-000000007101", extra);
    let ev = go.next_event().await;
    assert_eq!(ev["event"], "serve-ended", "{ev}");
    assert!(server.tunnels.connected().is_empty());
    ev["error"].as_str().unwrap_or("").to_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_agent_verifies_the_generated_ca_and_opens_its_tunnel_over_tls() {
    let ca = tls::Ca::generate(SystemTime::now() - HOUR, YEAR).unwrap();
    let tls = AgentTls::from_ca(ca, LOOPBACK, HOUR, SystemTime::now(), tls::provider()).unwrap();
    let server = TlsServer::start(&tls).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", tls.ca_pem());

    tunnel_works(
        &server,
        "00000000-0000-4000-8000-000000007102",
        &["--tls-ca-file", ca_file.to_str().unwrap()],
    )
    .await;
    // metal.provider.tls.skip.verify=1: no CA needed.
    tunnel_works(
        &server,
        "00000000-0000-4000-8000-000000007103",
        &["--tls-skip-verify"],
    )
    .await;

    // An agent trusting another CA refuses the certificate.
    let other = tls::Ca::generate(SystemTime::now() - HOUR, YEAR).unwrap();
    let other_file = write(dir.path(), "other.pem", other.cert_pem());
    let err = tunnel_refused(
        &server,
        &server.url(),
        &["--tls-ca-file", other_file.to_str().unwrap()],
    )
    .await;
    assert!(err.contains("certificate"), "{err}");
    // Plaintext h2c to the TLS port gets nowhere.
    let plain = server.addr.to_string();
    let err = tunnel_refused(&server, &plain, &[]).await;
    assert!(!err.is_empty());

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn your_own_certificates_are_served_or_refused_naming_the_flag() {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |ip: IpAddr| {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::IpAddress(ip)];
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    let (cert, key) = leaf(LOOPBACK);
    let (elsewhere, elsewhere_key) = leaf(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    let files = UserFiles {
        ca_cert: write(dir.path(), "ca.pem", &ca_cert.pem()),
        cert: write(dir.path(), "cert.pem", &cert),
        key: write(dir.path(), "key.pem", &key),
    };

    let tls = AgentTls::prepare(&CertSource::Files(files.clone()), LOOPBACK, None)
        .await
        .unwrap();
    assert_eq!(tls.ca_pem(), ca_cert.pem());
    assert!(
        tls.spawn_renewal(Default::default()).is_none(),
        "your files are never replaced"
    );
    let server = TlsServer::start(&tls).await;
    tunnel_works(
        &server,
        "00000000-0000-4000-8000-000000007104",
        &["--tls-ca-file", files.ca_cert.to_str().unwrap()],
    )
    .await;
    server.shutdown().await;

    // The key of another certificate.
    let wrong_key = UserFiles {
        key: write(dir.path(), "elsewhere-key.pem", &elsewhere_key),
        ..files.clone()
    };
    let e = AgentTls::prepare(&CertSource::Files(wrong_key), LOOPBACK, None)
        .await
        .unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
    assert!(e.to_string().starts_with("--tls-key-file"), "{e}");

    // A certificate for another address, with its own key.
    let not_here = UserFiles {
        cert: write(dir.path(), "elsewhere.pem", &elsewhere),
        key: write(dir.path(), "elsewhere-key.pem", &elsewhere_key),
        ..files.clone()
    };
    let e = AgentTls::prepare(&CertSource::Files(not_here), LOOPBACK, None)
        .await
        .unwrap_err();
    assert!(matches!(e, TlsError::NotForAddress { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("--tls-cert-file") && msg.contains("127.0.0.1"),
        "{msg}"
    );
}

/// A started Omni harness; killed on drop.
struct OmniHarness {
    serve: omni_harness::Serve,
}

impl OmniHarness {
    fn meta(&mut self, client: &Client) -> Value {
        let v = omni_harness::send(
            &mut self.serve.stdin,
            &mut self.serve.stdout,
            &json!({
                "cmd": "meta",
                "ns": client.namespace_of::<TlsConfigSpec>(),
                "type": client.type_of::<TlsConfigSpec>(),
                "id": tls::TLS_CONFIG_ID,
            }),
        );
        assert_eq!(v["ok"], true, "{v}");
        v
    }
}

impl Drop for OmniHarness {
    fn drop(&mut self) {
        let _ = self.serve.child.kill();
        let _ = self.serve.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_ca_lives_in_omni_and_a_second_start_reuses_it() {
    let bin = omni_harness_bin();
    let key_text = omni_harness::keygen(bin, &["--id", ID]);
    let mut omni = OmniHarness {
        serve: omni_harness::serve(bin, &key_text, &[]),
    };
    let url = format!("http://{}", omni.serve.addr);
    let client = omni::signed_client(&url, &key_text, ID);
    assert!(
        client
            .get_opt::<TlsConfigSpec>(tls::TLS_CONFIG_ID)
            .await
            .unwrap()
            .is_none()
    );

    let source = CertSource::Generated {
        ca_ttl: 10 * YEAR,
        cert_ttl: HOUR,
    };
    let first = AgentTls::prepare(&source, LOOPBACK, Some(&client))
        .await
        .unwrap();
    let stored = client
        .get::<TlsConfigSpec>(tls::TLS_CONFIG_ID)
        .await
        .unwrap();
    assert_eq!(stored.spec.ca_cert, first.ca_pem());
    assert!(stored.spec.ca_key.contains("PRIVATE KEY"));
    // As the Go provider writes it: provider-private type and namespace, no owner.
    assert_eq!(stored.metadata.namespace, "infra-provider:bare-metal");
    assert_eq!(
        stored.metadata.type_name,
        "TLSConfig.bare-metal.infraprovider.sidero.dev"
    );
    let meta = omni.meta(&client);
    assert_eq!(
        (&meta["owner"], &meta["version"]),
        (&json!(""), &json!("1")),
        "{meta}"
    );

    // A second start (a restart, or a second replica) loads the same CA: agents that
    // trust the first keep trusting the second.
    let second = AgentTls::prepare(&source, LOOPBACK, Some(&client))
        .await
        .unwrap();
    assert_eq!(second.ca_pem(), first.ca_pem());
    assert_ne!(
        second.current_cert().cert[0],
        first.current_cert().cert[0],
        "each start issues its own serving certificate"
    );
    let meta = omni.meta(&client);
    assert_eq!(
        meta["version"], "1",
        "the stored CA was not rewritten: {meta}"
    );

    // An agent trusting the CA from Omni reaches the second instance over TLS.
    let server = TlsServer::start(&second).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &stored.spec.ca_cert);
    tunnel_works(
        &server,
        "00000000-0000-4000-8000-000000007105",
        &["--tls-ca-file", ca_file.to_str().unwrap()],
    )
    .await;
    server.shutdown().await;
}
