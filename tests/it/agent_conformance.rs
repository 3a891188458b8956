//! The metal agent's reverse tunnel and the AgentService client, proven against the real
//! jhump/grpctunnel Go module: `tests/agent-harness` plays the agent (dials ironboot's
//! tunnel service with `machine-id` metadata, `grpctunnel.NewReverseTunnelServer`, serves
//! `management.AgentService`) and prints every call it serves, with the request as Go's
//! protobuf runtime decoded it.
//!
//! Needs Go (`go` on PATH or /usr/local/go/bin/go) and the harness's modules
//! (`tests/install-prereqs.sh` runs `go mod download`); the harness is built once into
//! `target/tmp/agent-harness/`. No root needed; everything listens on 127.0.0.1.

use ironboot::testing::agent;
use ironboot::testing::http::server;
use ironboot_test_support::go_harness;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agent::admission::{AgentGate, KnownMachines};
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

/// The machines' IDs (SMBIOS UUIDs, as the agent sends them).
const MACHINE_1: &str = "00000000-0000-4000-8000-000000000031";
const MACHINE_2: &str = "00000000-0000-4000-8000-000000000032";
const MACHINE_A: &str = "00000000-0000-4000-8000-000000000061";
const MACHINE_BIG: &str = "00000000-0000-4000-8000-000000626967";
const MACHINE_C: &str = "00000000-0000-4000-8000-000000000063";
const MACHINE_D: &str = "00000000-0000-4000-8000-000000000064";
const MACHINE_E: &str = "00000000-0000-4000-8000-000000000065";
const MACHINE_F: &str = "00000000-0000-4000-8000-000000000066";
const MACHINE_NOBODY: &str = "00000000-0000-4000-8000-6e6f626f6479";
const MACHINE_R: &str = "00000000-0000-4000-8000-000000000072";
const MACHINE_SLOW: &str = "00000000-0000-4000-8000-0000736c6f77";

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
        Self::start_with_limits(tunnels, server::Limits::default()).await
    }

    /// The binary's accept loop for --api-port (h2c beside HTTP/1) with `limits`.
    async fn start_with_limits(tunnels: Tunnels, limits: server::Limits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tunnels.mount(axum::Router::new());
        let gate = server::Gate::new(limits, std::sync::Arc::new(server::ConnCounters::default()));
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

    /// Sends the agent process `SIG<name>` (STOP freezes it, CONT wakes it).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} failed");
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
    let server = Server::start(Tunnels::new(AgentGate::open())).await;
    let mut events = server.tunnels.subscribe();
    let mut go = GoAgent::start(&server, MACHINE_A, "a", &[]);
    connected(&mut events, MACHINE_A).await;
    let tunnel = server.tunnels.get(MACHINE_A).expect("tunnel registered");
    assert_eq!(tunnel.revision(), ProtocolRevision::RevisionOne);
    assert_eq!(server.tunnels.connected(), [MACHINE_A]);
    let client = server.client(upstream_timeouts());

    client.hello(MACHINE_A).await.unwrap();
    let ev = go.next_call().await;
    assert_eq!(ev["method"], "Hello", "{ev}");
    assert_eq!(ev["request"], json!({}), "{ev}");
    assert_eq!(
        ev["grpc_timeout"], "30000m",
        "the 30 s agent call timeout: {ev}"
    );

    let got = client
        .get_power_management(
            MACHINE_A,
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
        .set_power_management(MACHINE_A, ipmi_creds("talos-agent", "s3cretPassw0rd16"))
        .await
        .unwrap();
    let ev = go.next_call().await;
    assert_eq!(ev["method"], "SetPowerManagement", "{ev}");
    assert_eq!(
        ev["request"],
        json!({"ipmi": {"username": "talos-agent", "password": "s3cretPassw0rd16"}, "api": null}),
        "{ev}"
    );

    client.wipe_disks(MACHINE_A, false).await.unwrap();
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
    client.wipe_disks(MACHINE_A, true).await.unwrap();
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
            machine_id: MACHINE_A.into(),
        },
    )
    .await;
    let err = client.hello(MACHINE_A).await.unwrap_err();
    assert!(matches!(err, AgentError::NotConnected { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_are_routed_by_machine_id() {
    let server = Server::start(Tunnels::new(AgentGate::open())).await;
    let mut events = server.tunnels.subscribe();
    let mut a = GoAgent::start(&server, MACHINE_1, "one", &["--ipmi-address", "10.1.1.1"]);
    let mut b = GoAgent::start(&server, MACHINE_2, "two", &["--ipmi-address", "10.2.2.2"]);
    connected(&mut events, MACHINE_1).await;
    let mut events2 = server.tunnels.subscribe();
    if server.tunnels.get(MACHINE_2).is_none() {
        connected(&mut events2, MACHINE_2).await;
    }
    let client = server.client(upstream_timeouts());
    for _ in 0..3 {
        for (id, want, go) in [
            (MACHINE_2, "10.2.2.2", &mut b),
            (MACHINE_1, "10.1.1.1", &mut a),
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
async fn a_second_tunnel_never_displaces_an_agent_that_answers() {
    let server = Server::start(Tunnels::new(AgentGate::open())).await;
    let mut events = server.tunnels.subscribe();
    let mut old = GoAgent::start(&server, MACHINE_R, "old", &[]);
    connected(&mut events, MACHINE_R).await;
    let client = server.client(upstream_timeouts());
    client.hello(MACHINE_R).await.unwrap();
    assert_eq!(old.next_call().await["agent"], "old");

    // The newcomer is refused: ironboot pinged the open tunnel and its agent answered.
    let mut new = GoAgent::start(&server, MACHINE_R, "new", &[]);
    let ping = old.next_call().await;
    assert_eq!(
        ping["method"], "Hello",
        "the ping reached the old agent: {ping}"
    );
    let ended = new.next_call().await;
    assert_eq!(ended["event"], "serve-ended", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap_or_default()
            .contains("already has a tunnel"),
        "{ended}"
    );
    // The old agent still serves the machine.
    client.hello(MACHINE_R).await.unwrap();
    assert_eq!(old.next_call().await["agent"], "old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_agent_replaces_a_tunnel_that_fails_its_ping() {
    let server = Server::start(Tunnels::new(AgentGate::open())).await;
    let mut events = server.tunnels.subscribe();
    let mut old = GoAgent::start(&server, MACHINE_R, "old", &[]);
    connected(&mut events, MACHINE_R).await;
    let client = server.client(upstream_timeouts());
    client.hello(MACHINE_R).await.unwrap();
    assert_eq!(old.next_call().await["agent"], "old");

    // The old agent hangs (its TCP connection stays up): it cannot answer the ping.
    old.signal("STOP");
    let mut new = GoAgent::start(&server, MACHINE_R, "new", &[]);
    connected(&mut events, MACHINE_R).await;
    assert_eq!(server.tunnels.connected(), [MACHINE_R]);
    client.hello(MACHINE_R).await.unwrap();
    let ev = new.next_call().await;
    assert_eq!(
        (&ev["agent"], &ev["method"]),
        (&json!("new"), &json!("Hello"))
    );
    // Woken, the old agent finds its tunnel closed; that end does not unregister the
    // new tunnel.
    old.signal("CONT");
    loop {
        let ev = old.next_call().await;
        if ev["event"] == "serve-ended" {
            break;
        }
    }
    client.hello(MACHINE_R).await.unwrap();
    assert_eq!(new.next_call().await["agent"], "new");
    assert!(client.is_connected(MACHINE_R));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tunnel_outlives_the_idle_deadline() {
    // The HTTP server closes connections with no request in flight after the idle
    // deadline; a tunnel is a request in flight for as long as the agent is there.
    let idle = Duration::from_secs(1);
    let limits = server::Limits {
        idle_timeout: idle,
        ..server::Limits::default()
    };
    let server = Server::start_with_limits(Tunnels::new(AgentGate::open()), limits).await;
    let mut events = server.tunnels.subscribe();
    let mut go = GoAgent::start(&server, MACHINE_A, "quiet", &[]);
    connected(&mut events, MACHINE_A).await;
    tokio::time::sleep(idle * 4).await;
    let client = server.client(upstream_timeouts());
    client.hello(MACHINE_A).await.unwrap();
    let ev = go.next_call().await;
    assert_eq!(
        (&ev["agent"], &ev["method"]),
        (&json!("quiet"), &json!("Hello")),
        "the same tunnel, still up after four idle deadlines"
    );
    assert!(
        events.try_recv().is_err(),
        "the tunnel was not closed and reopened meanwhile"
    );
}

/// Known machines for the address-bound gate.
struct Known(Vec<&'static str>);

impl KnownMachines for Known {
    fn is_known(&self, uuid: &str) -> bool {
        self.0.contains(&uuid)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_address_that_loaded_the_configuration_gets_the_machine() {
    let gate = AgentGate::bound(Arc::new(Known(vec![MACHINE_A])), None);
    let server = Server::start(Tunnels::new(gate.clone())).await;
    let mut events = server.tunnels.subscribe();
    let client = server.client(upstream_timeouts());
    let real: IpAddr = "127.0.0.1".parse().unwrap();
    let uuid = MACHINE_A.parse().unwrap();

    // Before the machine loaded its configuration, nobody is admitted.
    let mut early = GoAgent::start(&server, MACHINE_A, "early", &["--source-ip", "127.0.0.1"]);
    assert_refused(&mut early, "has not loaded its configuration").await;
    // The machine's Talos loads its configuration from 127.0.0.1.
    gate.config_fetch(&uuid, real);

    // An impostor from another address, and one claiming an unknown machine, are refused.
    let mut impostor = GoAgent::start(
        &server,
        MACHINE_A,
        "impostor",
        &["--source-ip", "127.0.0.2"],
    );
    assert_refused(&mut impostor, "bound to another address").await;
    let mut stranger = GoAgent::start(
        &server,
        MACHINE_NOBODY,
        "stranger",
        &["--source-ip", "127.0.0.2"],
    );
    assert_refused(&mut stranger, "unknown to this provider").await;
    let mut not_uuid = GoAgent::start(&server, "rack-4-node-2", "garbage", &[]);
    assert_refused(&mut not_uuid, "not a UUID").await;
    assert_eq!(server.tunnels.stats().refusals("other_address"), 1);
    assert_eq!(server.tunnels.stats().refusals("unknown_machine"), 1);
    assert_eq!(server.tunnels.stats().refusals("not_a_uuid"), 1);
    assert_eq!(server.tunnels.stats().refusals("not_bound"), 1);
    // So the credentials have nowhere to go.
    let err = client
        .set_power_management(MACHINE_A, ipmi_creds("talos-agent", "s3cretPassw0rd16"))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::NotConnected { .. }), "{err}");

    // The real agent, from the bound address, is admitted and gets the call.
    let mut agent = GoAgent::start(
        &server,
        MACHINE_A,
        "real",
        &["--source-ip", "127.0.0.1", "--reconnect"],
    );
    connected(&mut events, MACHINE_A).await;
    client
        .set_power_management(MACHINE_A, ipmi_creds("talos-agent", "s3cretPassw0rd16"))
        .await
        .unwrap();
    let ev = agent.next_call().await;
    assert_eq!(
        (&ev["agent"], &ev["method"]),
        (&json!("real"), &json!("SetPowerManagement"))
    );

    // Its tunnel breaks (ironboot restarts its side): the agent reconnects and is
    // admitted again from the same address.
    server.tunnels.close_unless_from(MACHINE_A, None);
    connected(&mut events, MACHINE_A).await;
    client.hello(MACHINE_A).await.unwrap();
    loop {
        let ev = agent.next_call().await;
        if ev["method"] == "Hello" {
            assert_eq!(ev["agent"], "real");
            break;
        }
    }
    // Nothing ever reached the refused agents.
    for refused in [&mut early, &mut impostor, &mut stranger, &mut not_uuid] {
        assert!(
            refused.events.try_recv().is_err(),
            "a refused agent got a call"
        );
    }
}

/// Waits for `agent`'s tunnel to be refused with a message containing `why`.
async fn assert_refused(agent: &mut GoAgent, why: &str) {
    let ended = agent.next_call().await;
    assert_eq!(ended["event"], "serve-ended", "{ended}");
    let error = ended["error"].as_str().unwrap_or_default();
    assert!(error.contains(why), "expected {why:?}: {ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_machine_and_what_failed() {
    let server = Server::start(Tunnels::new(AgentGate::open())).await;
    let mut events = server.tunnels.subscribe();
    let mut go = GoAgent::start(
        &server,
        MACHINE_SLOW,
        "slow",
        &["--wipe-delay", "60s", "--set-error", "no IPMI device"],
    );
    connected(&mut events, MACHINE_SLOW).await;
    let client = server.client(AgentTimeouts {
        fast_wipe: Duration::from_millis(700),
        ..upstream_timeouts()
    });

    let err = client.hello(MACHINE_NOBODY).await.unwrap_err();
    assert!(matches!(err, AgentError::NotConnected { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(MACHINE_NOBODY) && msg.contains("Hello") && msg.contains("not connected"),
        "{msg}"
    );

    let started = Instant::now();
    let err = client.wipe_disks(MACHINE_SLOW, false).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, AgentError::Timeout { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(MACHINE_SLOW) && msg.contains("WipeDisks") && msg.contains("timed out"),
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
        .set_power_management(MACHINE_SLOW, ipmi_creds("talos-agent", "sl0wAgentPassw0rd"))
        .await
        .unwrap_err();
    match &err {
        AgentError::Agent { code, message, .. } => {
            assert_eq!(*code, tonic::Code::PermissionDenied);
            assert_eq!(message, "no IPMI device");
        }
        other => panic!("expected the agent's status, got {other:?}"),
    }
    assert!(err.to_string().contains(MACHINE_SLOW), "{err}");
    assert!(
        !format!("{err:?} {err}").contains("sl0wAgentPassw0rd"),
        "no password in errors"
    );
    go.next_call().await;

    // The tunnel survived all that.
    client.hello(MACHINE_SLOW).await.unwrap();
    assert_eq!(go.next_call().await["method"], "Hello");
}

/// 1 MiB each way: in revision ONE both sides must wait for window updates (64 KiB
/// windows, 16 KiB chunks); in revision ZERO the same passes without flow control.
async fn large_messages(tunnels: Tunnels, want: ProtocolRevision) {
    const MIB: usize = 1024 * 1024;
    let server = Server::start(tunnels).await;
    let mut events = server.tunnels.subscribe();
    let mut go = GoAgent::start(&server, MACHINE_BIG, "big", &["--big-address", "1048576"]);
    connected(&mut events, MACHINE_BIG).await;
    assert_eq!(server.tunnels.get(MACHINE_BIG).unwrap().revision(), want);
    let client = server.client(upstream_timeouts());

    let got = client
        .get_power_management(MACHINE_BIG, GetPowerManagementRequest::default())
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
        .set_power_management(MACHINE_BIG, ipmi_creds("talos-agent", &password))
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
                    .get_power_management(MACHINE_BIG, GetPowerManagementRequest::default())
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
    large_messages(
        Tunnels::new(AgentGate::open()),
        ProtocolRevision::RevisionOne,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_zero_without_negotiation() {
    large_messages(
        Tunnels::with_negotiation(AgentGate::open(), false),
        ProtocolRevision::RevisionZero,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_agent_fails_its_call_and_shutdown_closes_tunnels() {
    let server = Server::start(Tunnels::new(AgentGate::open())).await;
    let mut events = server.tunnels.subscribe();
    let mut dying = GoAgent::start(&server, MACHINE_D, "dying", &["--wipe-delay", "60s"]);
    connected(&mut events, MACHINE_D).await;
    let client = server.client(upstream_timeouts());
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.wipe_disks(MACHINE_D, true).await }
    });
    assert_eq!(dying.next_call().await["method"], "WipeDisks");
    dying.kill();
    let err = tokio::time::timeout(WAIT, call)
        .await
        .expect("the call ended when its agent died")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, AgentError::Disconnected { .. }), "{err:?}");
    assert!(err.to_string().contains(MACHINE_D), "{err}");

    // Shutdown: open tunnels are closed (the agent's Serve returns cleanly), new ones
    // are refused.
    let mut go = GoAgent::start(&server, MACHINE_E, "e", &[]);
    connected(&mut events, MACHINE_E).await;
    server.tunnels.close_all();
    let ended = go.next_call().await;
    assert_eq!(ended["event"], "serve-ended", "{ended}");
    assert!(ended.get("error").is_none(), "closed cleanly: {ended}");
    assert!(server.tunnels.connected().is_empty());
    let mut late = GoAgent::start(&server, MACHINE_F, "late", &[]);
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
    let server = Server::start(Tunnels::new(AgentGate::open())).await;
    let mut events = server.tunnels.subscribe();
    let mut go = GoAgent::start(&server, MACHINE_C, "c", &[]);
    connected(&mut events, MACHINE_C).await;
    let client = server.client(upstream_timeouts());
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    client.hello(MACHINE_C).await
                } else {
                    client.wipe_disks(MACHINE_C, false).await
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
    assert!(client.is_connected(MACHINE_C), "the tunnel survived");
}
