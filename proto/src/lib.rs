//! Protocol definitions for ironboot, written here from the upstream wire facts (names,
//! field numbers, types) and proven against the real upstream Go modules by the Omni
//! conformance harness (`tests/omni-harness`):
//!
//! - [`cosi`]: the COSI resource envelope and the `cosi.resource.State` gRPC service
//!   (Get, List, Create, Update, Destroy, Watch, Teardown, TeardownAndDestroy);
//! - [`omni`]: Omni's infra-provider resource specs (package `specs`);
//! - [`baremetal`]: the bare-metal provider's private resource specs (package
//!   `baremetalproviderspecs`), with the Go provider's field numbers;
//! - [`grpctunnel`]: jhump/grpctunnel's tunnel protocol (package `grpctunnel.v1`), over
//!   which the metal agent serves [`agent`], its `management.AgentService` messages;
//!   [`google::rpc`] holds the status those tunnels carry.
//!
//! Messages that hold secrets print them as `<redacted>` in their `Debug` output.
#![warn(missing_docs)]

use std::fmt;

/// The COSI resource envelope and State service (package `cosi.resource`).
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod cosi {
    include!(concat!(env!("OUT_DIR"), "/cosi.resource.rs"));
}

/// Omni's infra-provider resource specs (package `specs`).
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod omni {
    include!(concat!(env!("OUT_DIR"), "/specs.rs"));
}

/// The bare-metal provider's private resource specs (package `baremetalproviderspecs`).
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod baremetal {
    include!(concat!(env!("OUT_DIR"), "/baremetalproviderspecs.rs"));
}

/// jhump/grpctunnel's tunnel protocol (package `grpctunnel.v1`).
pub mod grpctunnel {
    /// Version 1 of the protocol (revisions ZERO and ONE are negotiated inside it).
    #[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/grpctunnel.v1.rs"));
    }
}

/// Google's RPC types used by [`grpctunnel`].
pub mod google {
    /// `google.rpc.Status`.
    #[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// The Talos metal agent's management API messages (package `management`).
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/management.rs"));
}

/// Shown instead of a secret.
const REDACTED: &str = "<redacted>";

fn redacted(s: &str) -> &'static str {
    if s.is_empty() { "" } else { REDACTED }
}

/// `Debug` for a message with one secret field: the other fields as they are, the
/// secret [`redacted`].
macro_rules! debug_redacting {
    ($ty:ty, $name:literal, [$($field:ident),*], $secret:ident) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct($name)
                    $(.field(stringify!($field), &self.$field))*
                    .field(stringify!($secret), &redacted(&self.$secret))
                    .finish()
            }
        }
    };
}

debug_redacting!(
    baremetal::bmc_configuration_spec::Ipmi,
    "Ipmi",
    [address, port, username],
    password
);
debug_redacting!(
    omni::infra_machine_bmc_config_spec::Ipmi,
    "Ipmi",
    [address, port, username],
    password
);
debug_redacting!(
    agent::set_power_management_request::Ipmi,
    "Ipmi",
    [username],
    password
);
debug_redacting!(baremetal::TlsConfigSpec, "TlsConfigSpec", [ca_cert], ca_key);
debug_redacting!(
    omni::ProviderJoinConfigSpec,
    "ProviderJoinConfigSpec",
    [config],
    join_token
);

// Both the join token and the kernel arguments (which carry it) are secret.
impl fmt::Debug for omni::ConnectionParamsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionParamsSpec")
            .field("args", &redacted(&self.args))
            .field("api_endpoint", &self.api_endpoint)
            .field("wireguard_endpoint", &self.wireguard_endpoint)
            .field("join_token", &redacted(&self.join_token))
            .field("use_grpc_tunnel", &self.use_grpc_tunnel)
            .field("events_port", &self.events_port)
            .field("logs_port", &self.logs_port)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let bmc = baremetal::BmcConfigurationSpec {
            ipmi: Some(baremetal::bmc_configuration_spec::Ipmi {
                address: "10.0.0.5".into(),
                port: 623,
                username: "talos-agent".into(),
                password: "hunter2-secret".into(),
            }),
            api: None,
            manually_configured: true,
        };
        let tls = baremetal::TlsConfigSpec {
            ca_cert: "CERT".into(),
            ca_key: "PRIVATE-KEY-BYTES".into(),
        };
        let join = omni::ProviderJoinConfigSpec {
            config: None,
            join_token: "join-token-secret".into(),
        };
        let cfg = omni::BmcConfigSpec {
            config: Some(omni::InfraMachineBmcConfigSpec {
                ipmi: Some(omni::infra_machine_bmc_config_spec::Ipmi {
                    password: "admin-secret".into(),
                    ..Default::default()
                }),
                api: None,
            }),
        };
        let agent_ipmi = agent::SetPowerManagementRequest {
            ipmi: Some(agent::set_power_management_request::Ipmi {
                username: "talos-agent".into(),
                password: "agent-ipmi-secret".into(),
            }),
            api: None,
        };
        let legacy = omni::ConnectionParamsSpec {
            args: "siderolink.api=https://omni?jointoken=legacy-token-secret".into(),
            api_endpoint: "https://omni.example.org".into(),
            join_token: "legacy-token-secret".into(),
            ..Default::default()
        };
        let all = format!("{bmc:?} {tls:?} {join:?} {cfg:?} {agent_ipmi:?} {legacy:?}");
        for secret in [
            "hunter2-secret",
            "PRIVATE-KEY-BYTES",
            "join-token-secret",
            "admin-secret",
            "agent-ipmi-secret",
            "legacy-token-secret",
        ] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
        assert!(
            all.contains("10.0.0.5") && all.contains("CERT") && all.contains("omni.example.org"),
            "{all}"
        );
        assert_eq!(all.matches(REDACTED).count(), 7, "{all}");
    }

    /// Field numbers checked byte by byte against hand-encoded protobuf (tag = number << 3
    /// | wire type), independently of the Go harness.
    #[test]
    fn field_numbers_match_upstream() {
        let status = omni::InfraMachineStatusSpec {
            last_power_off_id: "p".into(),
            ..Default::default()
        };
        assert_eq!(status.encode_to_vec(), [7 << 3 | 2, 1, b'p']);
        let ms = baremetal::MachineStatusSpec {
            initialized: true,
            ..Default::default()
        };
        assert_eq!(ms.encode_to_vec(), [4 << 3, 1]);
        let term = cosi::LabelTerm {
            invert: true,
            ..Default::default()
        };
        assert_eq!(term.encode_to_vec(), [5 << 3, 1]);
        let upd = cosi::UpdateRequest {
            new_resource: Some(cosi::Resource::default()),
            options: None,
        };
        assert_eq!(upd.encode_to_vec(), [2 << 3 | 2, 0]);
        // Omni's ConnectionParamsSpec skips numbers 6 to 8.
        let params = omni::ConnectionParamsSpec {
            events_port: 1,
            logs_port: 2,
            ..Default::default()
        };
        assert_eq!(params.encode_to_vec(), [9 << 3, 1, 10 << 3, 2]);
        // Every field of the private specs (no Go module of the provider is served to
        // the harness, so these numbers are checked here, from its specs.proto).
        fn tag(n: u8, wire: u8) -> u8 {
            n << 3 | wire
        }
        let ts = Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        });
        let po = baremetal::PowerOperationSpec {
            last_power_operation: 2,
            last_power_on_timestamp: ts,
            last_power_off_id: "o".into(),
            wipe_id_at_power_off: "w".into(),
        };
        assert_eq!(
            po.encode_to_vec(),
            [
                tag(1, 0),
                2,
                tag(2, 2),
                2,
                tag(1, 0),
                1,
                tag(3, 2),
                1,
                b'o',
                tag(4, 2),
                1,
                b'w'
            ]
        );
        let bmc = baremetal::BmcConfigurationSpec {
            ipmi: Some(baremetal::bmc_configuration_spec::Ipmi {
                address: "a".into(),
                port: 7,
                username: "u".into(),
                password: "p".into(),
            }),
            api: Some(baremetal::bmc_configuration_spec::Api {
                address: "b".into(),
            }),
            manually_configured: true,
        };
        assert_eq!(
            bmc.encode_to_vec(),
            [
                tag(1, 2),
                11,
                tag(1, 2),
                1,
                b'a',
                tag(2, 0),
                7,
                tag(3, 2),
                1,
                b'u',
                tag(4, 2),
                1,
                b'p',
                tag(2, 2),
                3,
                tag(1, 2),
                1,
                b'b',
                tag(3, 0),
                1
            ]
        );
        let ms = baremetal::MachineStatusSpec {
            agent_accessible: true,
            power_state: 1,
            initialized: true,
        };
        assert_eq!(
            ms.encode_to_vec(),
            [tag(1, 0), 1, tag(2, 0), 1, tag(4, 0), 1]
        );
        let ws = baremetal::WipeStatusSpec {
            last_wipe_id: "i".into(),
            last_wipe_install_event_id: 3,
            initial_wipe_done: true,
            wiped_node_unique_token: "t".into(),
        };
        assert_eq!(
            ws.encode_to_vec(),
            [
                tag(1, 2),
                1,
                b'i',
                tag(2, 0),
                3,
                tag(3, 0),
                1,
                tag(4, 2),
                1,
                b't'
            ]
        );
        let rs = baremetal::RebootStatusSpec {
            last_reboot_id: "r".into(),
            last_reboot_timestamp: ts,
        };
        assert_eq!(
            rs.encode_to_vec(),
            [tag(1, 2), 1, b'r', tag(2, 2), 2, tag(1, 0), 1]
        );
        let tls = baremetal::TlsConfigSpec {
            ca_cert: "c".into(),
            ca_key: "k".into(),
        };
        assert_eq!(
            tls.encode_to_vec(),
            [tag(1, 2), 1, b'c', tag(2, 2), 1, b'k']
        );

        // The metal agent's messages and the tunnel frames (talos-metal-agent's
        // api/agent/agent.proto and grpctunnel's tunnel.proto).
        let gpm = agent::GetPowerManagementResponse {
            ipmi: Some(agent::get_power_management_response::Ipmi {
                address: "a".into(),
                port: 623,
                user_exists: true,
            }),
            api: Some(agent::get_power_management_response::Api {}),
        };
        assert_eq!(
            gpm.encode_to_vec(),
            [
                tag(1, 2),
                8,
                tag(1, 2),
                1,
                b'a',
                tag(2, 0),
                0xef,
                0x04,
                tag(3, 0),
                1,
                tag(2, 2),
                0
            ]
        );
        let spm = agent::SetPowerManagementRequest {
            ipmi: Some(agent::set_power_management_request::Ipmi {
                username: "u".into(),
                password: "p".into(),
            }),
            api: None,
        };
        assert_eq!(
            spm.encode_to_vec(),
            [tag(1, 2), 6, tag(1, 2), 1, b'u', tag(2, 2), 1, b'p']
        );
        let get = agent::GetPowerManagementRequest {
            ipmi: Some(agent::get_power_management_request::Ipmi {
                check_username: "c".into(),
            }),
            api: None,
        };
        assert_eq!(get.encode_to_vec(), [tag(1, 2), 3, tag(1, 2), 1, b'c']);
        let wipe = agent::WipeDisksRequest { zeroes: true };
        assert_eq!(wipe.encode_to_vec(), [tag(1, 0), 1]);
        use grpctunnel::v1::{ClientToServer, NewStream, client_to_server};
        let new_stream = ClientToServer {
            stream_id: 1,
            frame: Some(client_to_server::Frame::NewStream(NewStream {
                method_name: "m".into(),
                request_headers: None,
                initial_window_size: 2,
                protocol_revision: 1,
            })),
        };
        assert_eq!(
            new_stream.encode_to_vec(),
            [
                tag(1, 0),
                1,
                tag(2, 2),
                7,
                tag(1, 2),
                1,
                b'm',
                tag(3, 0),
                2,
                tag(4, 0),
                1
            ]
        );
        let update = ClientToServer {
            stream_id: 0,
            frame: Some(client_to_server::Frame::WindowUpdate(5)),
        };
        assert_eq!(update.encode_to_vec(), [tag(7, 0), 5]);
        let half_close = ClientToServer {
            stream_id: 0,
            frame: Some(client_to_server::Frame::HalfClose(())),
        };
        assert_eq!(half_close.encode_to_vec(), [tag(5, 2), 0]);

        let ps = omni::InfraProviderStatusSpec {
            version: "v".into(),
            ..Default::default()
        };
        assert_eq!(ps.encode_to_vec(), [5 << 3 | 2, 1, b'v']);
    }
}
