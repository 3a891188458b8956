//! The Talos metal agent, seen from the provider.
//!
//! The agent (running in Talos "agent mode" on a machine being provisioned) dials the
//! provider's API port and opens a *reverse* gRPC tunnel
//! (`grpctunnel.v1.TunnelService/OpenReverseTunnel`, jhump/grpctunnel's protocol) with
//! its SMBIOS UUID in the `machine-id` metadata. The provider then plays the RPC client
//! over that stream and calls the agent's `management.AgentService`.
//!
//! - [`admission`]: which agent may speak for which machine (the machine must be known,
//!   and the agent must come from the address that loaded the machine's configuration);
//! - [`tunnel`]: the tunnel server (protocol revisions ZERO and ONE, flow control), the
//!   registry of open tunnels keyed by machine ID, connect/disconnect events;
//! - [`client`]: the typed `AgentService` client with the upstream timeouts, used by the
//!   control loop.
//!
//! The tunnel exists only in Omni mode: standalone ironboot mounts no tunnel route.

pub(crate) mod admission;
pub(crate) mod client;
pub(crate) mod tunnel;
