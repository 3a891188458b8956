//! A typed client of the metal agent's `management.AgentService`, called over the
//! agent's reverse tunnel ([`super::tunnel`]).

use std::time::Duration;

use ironboot_proto::agent::{
    GetPowerManagementRequest, GetPowerManagementResponse, SetPowerManagementRequest,
    SetPowerManagementResponse, WipeDisksRequest, WipeDisksResponse,
};
use prost::Message;

use super::tunnel::{CallError, Tunnels};

/// Metal agent call settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AgentSettings {
    /// Per-call timeouts.
    pub(crate) timeouts: AgentTimeouts,
    /// Wipe with zeroes instead of a fast wipe.
    pub(crate) wipe_with_zeroes: bool,
}

const SERVICE: &str = "management.AgentService";

/// How long each kind of agent call may take: `--agent-call-timeout`,
/// `--agent-fast-wipe-timeout`, `--agent-zeroes-wipe-timeout` (validated in the binary's
/// `config` module; no defaults here, so they live in one place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentTimeouts {
    /// Hello, GetPowerManagement, SetPowerManagement.
    pub call: Duration,
    /// A FAST wipe.
    pub fast_wipe: Duration,
    /// A ZEROES wipe.
    pub zeroes_wipe: Duration,
}

/// A failed agent call, naming the machine and the RPC.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No tunnel from that machine's agent.
    #[error(
        "metal agent of machine {machine_id}: {method}: not connected (no reverse tunnel open)"
    )]
    NotConnected {
        /// The machine.
        machine_id: String,
        /// The RPC, e.g. `WipeDisks`.
        method: &'static str,
    },
    /// The call took longer than its timeout (it was cancelled on the agent).
    #[error("metal agent of machine {machine_id}: {method}: timed out after {timeout:?}")]
    Timeout {
        /// The machine.
        machine_id: String,
        /// The RPC.
        method: &'static str,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The tunnel closed during the call (agent gone, or replaced by a newer tunnel).
    #[error("metal agent of machine {machine_id}: {method}: the tunnel closed during the call")]
    Disconnected {
        /// The machine.
        machine_id: String,
        /// The RPC.
        method: &'static str,
    },
    /// The agent answered with an error status.
    #[error("metal agent of machine {machine_id}: {method} failed: {code:?}: {message}")]
    Agent {
        /// The machine.
        machine_id: String,
        /// The RPC.
        method: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The agent's status message.
        message: String,
    },
    /// The agent broke the tunnel protocol or sent an undecodable answer.
    #[error("metal agent of machine {machine_id}: {method}: {detail}")]
    Protocol {
        /// The machine.
        machine_id: String,
        /// The RPC.
        method: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Calls metal agents through their tunnels. Cheap to clone.
#[derive(Clone)]
pub struct AgentClient {
    tunnels: Tunnels,
    timeouts: AgentTimeouts,
}

impl AgentClient {
    /// A client over `tunnels` with `timeouts`.
    pub fn new(tunnels: Tunnels, timeouts: AgentTimeouts) -> Self {
        Self { tunnels, timeouts }
    }

    /// Whether `machine_id`'s agent has a tunnel open.
    pub fn is_connected(&self, machine_id: &str) -> bool {
        self.tunnels.get(machine_id).is_some()
    }

    /// Liveness check.
    #[cfg(feature = "test-support")]
    pub async fn hello(&self, machine_id: &str) -> Result<(), AgentError> {
        use ironboot_proto::agent::{HelloRequest, HelloResponse};
        let _: HelloResponse = self
            .call(machine_id, "Hello", &HelloRequest {}, self.timeouts.call)
            .await?;
        Ok(())
    }

    /// The machine's in-band IPMI address and port (as the provider, with an empty
    /// request), or `api` in the agent's test mode.
    pub async fn get_power_management(
        &self,
        machine_id: &str,
        request: GetPowerManagementRequest,
    ) -> Result<GetPowerManagementResponse, AgentError> {
        self.call(
            machine_id,
            "GetPowerManagement",
            &request,
            self.timeouts.call,
        )
        .await
    }

    /// Sets up the IPMI user (username and password) through the agent.
    pub async fn set_power_management(
        &self,
        machine_id: &str,
        request: SetPowerManagementRequest,
    ) -> Result<(), AgentError> {
        let _: SetPowerManagementResponse = self
            .call(
                machine_id,
                "SetPowerManagement",
                &request,
                self.timeouts.call,
            )
            .await?;
        Ok(())
    }

    /// Wipes the machine's disks: FAST, or ZEROES with `zeroes` (longer timeout).
    pub async fn wipe_disks(&self, machine_id: &str, zeroes: bool) -> Result<(), AgentError> {
        let timeout = if zeroes {
            self.timeouts.zeroes_wipe
        } else {
            self.timeouts.fast_wipe
        };
        let _: WipeDisksResponse = self
            .call(
                machine_id,
                "WipeDisks",
                &WipeDisksRequest { zeroes },
                timeout,
            )
            .await?;
        Ok(())
    }

    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        machine_id: &str,
        method: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, AgentError> {
        let Some(tunnel) = self.tunnels.get(machine_id) else {
            return Err(AgentError::NotConnected {
                machine_id: machine_id.to_owned(),
                method,
            });
        };
        let path = format!("/{SERVICE}/{method}");
        let started = std::time::Instant::now();
        let answer = tunnel
            .unary(&path, &request.encode_to_vec(), timeout)
            .await
            .map_err(|e| {
                let machine_id = machine_id.to_owned();
                match e {
                    CallError::Closed => AgentError::Disconnected { machine_id, method },
                    CallError::Timeout(timeout) => AgentError::Timeout {
                        machine_id,
                        method,
                        timeout,
                    },
                    CallError::Status { code, message } => AgentError::Agent {
                        machine_id,
                        method,
                        code,
                        message,
                    },
                    CallError::Protocol(detail) => AgentError::Protocol {
                        machine_id,
                        method,
                        detail,
                    },
                }
            })?;
        tracing::debug!(machine_id, method, elapsed = ?started.elapsed(), "agent call done");
        Resp::decode(answer.as_slice()).map_err(|e| AgentError::Protocol {
            machine_id: machine_id.to_owned(),
            method,
            detail: format!("undecodable response: {e}"),
        })
    }
}
