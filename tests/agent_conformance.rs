//! The metal agent's reverse tunnel and the AgentService client, proven against the real
//! jhump/grpctunnel Go module: `tests/agent-harness` plays the agent (dials ironboot's
//! tunnel service with `machine-id` metadata, `grpctunnel.NewReverseTunnelServer`, serves
//! `management.AgentService`) and prints every call it serves, with the request as Go's
//! protobuf runtime decoded it.
//!
//! Needs Go (`go` on PATH or /usr/local/go/bin/go) and the harness's modules
//! (`tests/install-prereqs.sh` runs `go mod download`); the harness is built once into
//! `target/tmp/agent-harness/`. No root needed; everything listens on 127.0.0.1.

// The agent module is compiled into this test as it is in the binary.
#[allow(dead_code, unreachable_pub)]
#[path = "../src/agent/mod.rs"]
mod agent;
#[path = "common/go_harness.rs"]
mod go_harness;
#[allow(dead_code, unreachable_pub)]
#[path = "../src/http/server.rs"]
mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agent::client::{AgentClient, AgentError, AgentTimeouts};
use agent::tunnel::{TunnelEvent, Tunnels};
use ironboot_proto::agent::{
    GetPowerManagementRequest, SetPowerManagementRequest, get_power_management_request,
    set_power_management_request,
};
use ironboot_proto::grpctunnel::v1::ProtocolRevision;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/proto");
const WAIT: Duration = Duration::from_secs(20);

/// Builds the harness once per test run (and only if a source is newer than the binary).
fn harness_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        go_harness::build(
            "the agent conformance test",
            "agent-harness",
            "agentharness",
        )
    })
}

/// The defaults of the Go provider's `--agent-*-timeout` flags (30s, 5m, 24h).
fn upstream_timeouts() -> AgentTimeouts {
    AgentTimeouts {
        call: Duration::from_secs(30),
        fast_wipe: Duration::from_secs(5 * 60),
        zeroes_wipe: Duration::from_secs(24 * 3600),
    }
}

/// ironboot's tunnel service on a loopback port, as the binary mounts and serves it.
struct Server {
    addr: SocketAddr,
    tunnels: Tunnels,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(tunnels: Tunnels) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tunnels.mount(axum::Router::new());
        // The binary's accept loop for --api-port (h2c beside HTTP/1), at its defaults.
        let gate = server::Gate::new(
            server::Limits::default(),
            std::sync::Arc::new(server::ConnCounters::default()),
        );
        let task = tokio::spawn(async move {
            let forever = std::future::pending::<()>();
            server::serve(
                listener,
                server::Listener::Api,
                gate,
                router,
                server::Plain,
                forever,
            )
            .await
            .unwrap();
        });
        Self {
            addr,
            tunnels,
            task,
        }
    }

    fn client(&self, timeouts: AgentTimeouts) -> AgentClient {
        AgentClient::new(self.tunnels.clone(), timeouts)
    }
}

impl Drop for Server {
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
    fn start(server: &Server, machine_id: &str, name: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(harness_binary())
            .arg("--addr")
            .arg(server.addr.to_string())
            .args([
                "--machine-id",
                machine_id,
                "--name",
                name,
                "--proto-dir",
                PROTO_DIR,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the agent harness");
        let events = go_harness::json_lines(child.stdout.take().unwrap());
        Self { child, events }
    }

    /// The next event the agent printed.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("no event from the Go agent in time")
            .expect("the Go agent's output ended")
    }

    /// The next event other than "serving".
    async fn next_call(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if v["event"] != "serving" {
                return v;
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GoAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn connected(events: &mut broadcast::Receiver<TunnelEvent>, machine_id: &str) {
    wait_event(
        events,
        TunnelEvent::Connected {
            machine_id: machine_id.to_owned(),
        },
    )
    .await;
}

async fn wait_event(events: &mut broadcast::Receiver<TunnelEvent>, want: TunnelEvent) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = tokio::time::timeout(left, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within {WAIT:?}"))
            .expect("tunnel events");
        if got == want {
            return;
        }
    }
}

/// FNV-1a 64, as the Go agent prints for big strings.
fn fnv64(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn ipmi_creds(username: &str, password: &str) -> SetPowerManagementRequest {
    SetPowerManagementRequest {
        ipmi: Some(set_power_management_request::Ipmi {
            username: username.into(),
            password: password.into(),
        }),
        api: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_reaches_the_go_agent_with_exact_fields() {
    let server = Server::start(Tunnels::new()).await;
    let mut events = server.tunnels.subscribe();
    let mut go = GoAgent::start(&server, "uuid-a", "a", &[]);
    connected(&mut events, "uuid-a").await;
    let tunnel = server.tunnels.get("uuid-a").expect("tunnel registered");
    assert_eq!(tunnel.revision(), ProtocolRevision::RevisionOne);
    assert_eq!(server.tunnels.connected(), ["uuid-a"]);
    let client = server.client(upstream_timeouts());

    client.hello("uuid-a").await.unwrap();
    let ev = go.next_call().await;
    assert_eq!(ev["method"], "Hello", "{ev}");
    assert_eq!(ev["request"], json!({}), "{ev}");
    assert_eq!(
        ev["grpc_timeout"], "30000m",
        "the 30 s agent call timeout: {ev}"
    );

    let got = client
        .get_power_management(
            "uuid-a",
            GetPowerManagementRequest {
                ipmi: Some(get_power_management_request::Ipmi {
                    check_username: "talos-agent".into(),
                }),
                api: None,
            },
        )
        .await
        .unwrap();
    let ipmi = got.ipmi.expect("ipmi answer");
    assert_eq!(
        (ipmi.address.as_str(), ipmi.port, ipmi.user_exists),
        ("10.0.0.42", 623, true)
    );
    assert!(got.api.is_none());
    let ev = go.next_call().await;
    assert_eq!(ev["method"], "GetPowerManagement", "{ev}");
    assert_eq!(
        ev["request"],
        json!({"ipmi": {"check_username": "talos-agent"}, "api": null}),
        "{ev}"
    );

    client
        .set_power_management("uuid-a", ipmi_creds("talos-agent", "s3cretPassw0rd16"))
        .await
        .unwrap();
    let ev = go.next_call().await;
    assert_eq!(ev["method"], "SetPowerManagement", "{ev}");
    assert_eq!(
        ev["request"],
        json!({"ipmi": {"username": "talos-agent", "password": "s3cretPassw0rd16"}, "api": null}),
        "{ev}"
    );

    client.wipe_disks("uuid-a", false).await.unwrap();
    let ev = go.next_call().await;
    assert_eq!(
        (&ev["method"], &ev["request"], &ev["grpc_timeout"]),
        (
            &json!("WipeDisks"),
            &json!({"zeroes": false}),
            &json!("300000m")
        ),
        "FAST wipe with the 5 min timeout: {ev}"
    );
    client.wipe_disks("uuid-a", true).await.unwrap();
    let ev = go.next_call().await;
    assert_eq!(
        (&ev["method"], &ev["request"], &ev["grpc_timeout"]),
        (
            &json!("WipeDisks"),
            &json!({"zeroes": true}),
            &json!("86400000m")
        ),
        "ZEROES wipe with the 24 h timeout: {ev}"
    );

    // The agent goes away: noticed at once, and calls then say "not connected".
    go.kill();
    wait_event(
        &mut events,
        TunnelEvent::Disconnected {
            machine_id: "uuid-a".into(),
        },
    )
    .await;
    let err = client.hello("uuid-a").await.unwrap_err();
    assert!(matches!(err, AgentError::NotConnected { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_are_routed_by_machine_id() {
    let server = Server::start(Tunnels::new()).await;
    let mut events = server.tunnels.subscribe();
    let mut a = GoAgent::start(&server, "uuid-1", "one", &["--ipmi-address", "10.1.1.1"]);
    let mut b = GoAgent::start(&server, "uuid-2", "two", &["--ipmi-address", "10.2.2.2"]);
    connected(&mut events, "uuid-1").await;
    let mut events2 = server.tunnels.subscribe();
    if server.tunnels.get("uuid-2").is_none() {
        connected(&mut events2, "uuid-2").await;
    }
    let client = server.client(upstream_timeouts());
    for _ in 0..3 {
        for (id, want, go) in [
            ("uuid-2", "10.2.2.2", &mut b),
            ("uuid-1", "10.1.1.1", &mut a),
        ] {
            let got = client
                .get_power_management(id, GetPowerManagementRequest::default())
                .await
                .unwrap();
            assert_eq!(got.ipmi.unwrap().address, want, "answer for {id}");
            let ev = go.next_call().await;
            assert_eq!(ev["method"], "GetPowerManagement", "{id}: {ev}");
            // The provider's empty request.
            assert_eq!(ev["request"], json!({"ipmi": null, "api": null}), "{ev}");
        }
    }
    // Nothing strayed to the other agent.
    assert!(a.events.try_recv().is_err() && b.events.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_agent_replaces_its_old_tunnel() {
    let server = Server::start(Tunnels::new()).await;
    let mut events = server.tunnels.subscribe();
    let mut old = GoAgent::start(&server, "uuid-r", "old", &[]);
    connected(&mut events, "uuid-r").await;
    let client = server.client(upstream_timeouts());
    client.hello("uuid-r").await.unwrap();
    assert_eq!(old.next_call().await["agent"], "old");

    let mut new = GoAgent::start(&server, "uuid-r", "new", &[]);
    connected(&mut events, "uuid-r").await;
    // ironboot closed the old tunnel: the old agent's Serve returned without error.
    let ended = old.next_call().await;
    assert_eq!(ended["event"], "serve-ended", "{ended}");
    assert_eq!(ended["started"], true, "{ended}");
    assert!(ended.get("error").is_none(), "closed cleanly: {ended}");
    assert_eq!(server.tunnels.connected(), ["uuid-r"]);

    client.hello("uuid-r").await.unwrap();
    let ev = new.next_call().await;
    assert_eq!(
        (&ev["agent"], &ev["method"]),
        (&json!("new"), &json!("Hello"))
    );
    // The end of the replaced tunnel (its agent has exited) did not unregister the new one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        events.try_recv().is_err(),
        "no Disconnected for a replaced tunnel"
    );
    assert!(client.is_connected("uuid-r"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_machine_and_what_failed() {
    let server = Server::start(Tunnels::new()).await;
    let mut events = server.tunnels.subscribe();
    let mut go = GoAgent::start(
        &server,
        "uuid-slow",
        "slow",
        &["--wipe-delay", "60s", "--set-error", "no IPMI device"],
    );
    connected(&mut events, "uuid-slow").await;
    let client = server.client(AgentTimeouts {
        fast_wipe: Duration::from_millis(700),
        ..upstream_timeouts()
    });

    let err = client.hello("uuid-nobody").await.unwrap_err();
    assert!(matches!(err, AgentError::NotConnected { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("uuid-nobody") && msg.contains("Hello") && msg.contains("not connected"),
        "{msg}"
    );

    let started = Instant::now();
    let err = client.wipe_disks("uuid-slow", false).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, AgentError::Timeout { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("uuid-slow") && msg.contains("WipeDisks") && msg.contains("timed out"),
        "{msg}"
    );
    let ev = go.next_call().await;
    assert_eq!(ev["method"], "WipeDisks", "{ev}");
    assert_eq!(ev["grpc_timeout"], "700m", "{ev}");
    // The agent's handler was cancelled, not left running.
    let ev = go.next_call().await;
    assert_eq!(
        (&ev["event"], &ev["method"]),
        (&json!("cancelled"), &json!("WipeDisks")),
        "{ev}"
    );

    let err = client
        .set_power_management("uuid-slow", ipmi_creds("talos-agent", "pw"))
        .await
        .unwrap_err();
    match &err {
        AgentError::Agent { code, message, .. } => {
            assert_eq!(*code, tonic::Code::PermissionDenied);
            assert_eq!(message, "no IPMI device");
        }
        other => panic!("expected the agent's status, got {other:?}"),
    }
    assert!(err.to_string().contains("uuid-slow"), "{err}");
    assert!(
        !format!("{err:?} {err}").contains("\"pw\""),
        "no password in errors"
    );
    go.next_call().await;

    // The tunnel survived all that.
    client.hello("uuid-slow").await.unwrap();
    assert_eq!(go.next_call().await["method"], "Hello");
}

/// 1 MiB each way: in revision ONE both sides must wait for window updates (64 KiB
/// windows, 16 KiB chunks); in revision ZERO the same passes without flow control.
async fn large_messages(tunnels: Tunnels, want: ProtocolRevision) {
    const MIB: usize = 1024 * 1024;
    let server = Server::start(tunnels).await;
    let mut events = server.tunnels.subscribe();
    let mut go = GoAgent::start(&server, "uuid-big", "big", &["--big-address", "1048576"]);
    connected(&mut events, "uuid-big").await;
    assert_eq!(server.tunnels.get("uuid-big").unwrap().revision(), want);
    let client = server.client(upstream_timeouts());

    let got = client
        .get_power_management("uuid-big", GetPowerManagementRequest::default())
        .await
        .unwrap();
    let address = got.ipmi.unwrap().address;
    assert_eq!(address.len(), MIB);
    let ev = go.next_call().await;
    assert_eq!(ev["answer_fnv"], fnv64(&address), "{ev}");

    let password: String = (0..MIB)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    client
        .set_power_management("uuid-big", ipmi_creds("talos-agent", &password))
        .await
        .unwrap();
    let ev = go.next_call().await;
    assert_eq!(ev["method"], "SetPowerManagement");
    assert_eq!(ev["password_len"], MIB, "{ev}");
    assert_eq!(ev["password_fnv"], fnv64(&password), "{ev}");

    // Concurrent calls share the tunnel.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .get_power_management("uuid-big", GetPowerManagementRequest::default())
                    .await
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().ipmi.unwrap().address, address);
    }
    for _ in 0..4 {
        assert_eq!(go.next_call().await["method"], "GetPowerManagement");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_pass_flow_control_in_revision_one() {
    large_messages(Tunnels::new(), ProtocolRevision::RevisionOne).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_zero_without_negotiation() {
    large_messages(
        Tunnels::with_negotiation(false),
        ProtocolRevision::RevisionZero,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_agent_fails_its_call_and_shutdown_closes_tunnels() {
    let server = Server::start(Tunnels::new()).await;
    let mut events = server.tunnels.subscribe();
    let mut dying = GoAgent::start(&server, "uuid-d", "dying", &["--wipe-delay", "60s"]);
    connected(&mut events, "uuid-d").await;
    let client = server.client(upstream_timeouts());
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.wipe_disks("uuid-d", true).await }
    });
    assert_eq!(dying.next_call().await["method"], "WipeDisks");
    dying.kill();
    let err = tokio::time::timeout(WAIT, call)
        .await
        .expect("the call ended when its agent died")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, AgentError::Disconnected { .. }), "{err:?}");
    assert!(err.to_string().contains("uuid-d"), "{err}");

    // Shutdown: open tunnels are closed (the agent's Serve returns cleanly), new ones
    // are refused.
    let mut go = GoAgent::start(&server, "uuid-e", "e", &[]);
    connected(&mut events, "uuid-e").await;
    server.tunnels.close_all();
    let ended = go.next_call().await;
    assert_eq!(ended["event"], "serve-ended", "{ended}");
    assert!(ended.get("error").is_none(), "closed cleanly: {ended}");
    assert!(server.tunnels.connected().is_empty());
    let mut late = GoAgent::start(&server, "uuid-f", "late", &[]);
    let ended = late.next_call().await;
    assert_eq!(ended["event"], "serve-ended", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap_or("")
            .contains("shutting down"),
        "{ended}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_share_one_tunnel() {
    let server = Server::start(Tunnels::new()).await;
    let mut events = server.tunnels.subscribe();
    let mut go = GoAgent::start(&server, "uuid-c", "c", &[]);
    connected(&mut events, "uuid-c").await;
    let client = server.client(upstream_timeouts());
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    client.hello("uuid-c").await
                } else {
                    client.wipe_disks("uuid-c", false).await
                }
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..64 {
        *seen
            .entry(go.next_call().await["method"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        [("Hello".to_owned(), 32), ("WipeDisks".to_owned(), 32)].into()
    );
    assert!(client.is_connected("uuid-c"), "the tunnel survived");
}
