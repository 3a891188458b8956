//! The Talos metal agent, seen from the provider.
//!
//! The agent (running in Talos "agent mode" on a machine being provisioned) dials the
//! provider's API port and opens a *reverse* gRPC tunnel
//! (`grpctunnel.v1.TunnelService/OpenReverseTunnel`, jhump/grpctunnel's protocol) with
//! its SMBIOS UUID in the `machine-id` metadata. The provider then plays the RPC client
//! over that stream and calls the agent's `management.AgentService`.
//!
//! - [`tunnel`]: the tunnel server (protocol revisions ZERO and ONE, flow control), the
//!   registry of open tunnels keyed by machine ID, connect/disconnect events;
//! - [`client`]: the typed `AgentService` client with the upstream timeouts.
//!
//! The control loop (issue 6, part 2) is the user of [`client`]; until it lands, only
//! `tests/agent_conformance.rs` calls it.

pub(crate) mod client;
pub(crate) mod tunnel;
