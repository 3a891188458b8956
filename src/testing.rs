//! The internals the integration tests (`tests/it`) drive directly, re-exported for them
//! alone: compiled only with the `test-support` feature, which the root package's
//! dev-dependency on itself turns on, and hidden from the documentation. The layout
//! follows the modules they come from, so a test names `agent::client::AgentClient` as
//! the code does.
//!
//! Only what a test uses is here; the binary never enables the feature.

/// The metal agents' reverse tunnel, their admission and the AgentService client.
pub mod agent {
    /// Which machines' agents may open a tunnel.
    pub mod admission {
        pub use crate::provider::agent::admission::{AgentGate, KnownMachines};
    }
    /// AgentService calls through a machine's tunnel.
    pub mod client {
        pub use crate::provider::agent::client::{AgentClient, AgentError, AgentTimeouts};
    }
    /// The tunnel service and the registry of open tunnels.
    pub mod tunnel {
        pub use crate::provider::agent::tunnel::{TunnelEvent, Tunnels};
    }
}

/// The control loop's executor, started against real peers.
pub mod executor {
    pub use crate::provider::executor::Settings;
    /// The executor wired to Omni, the fleet's BMCs and the agents.
    pub mod real {
        pub use crate::provider::executor::real::{FleetPower, Running, start};
    }

    /// The control loop over `client` as the tests run it: BMCs over IPMI (Redfish never
    /// probed) through a fresh fleet, the agents of `tunnels` with 5 s bounds on calls and
    /// wipes, and `settings`.
    pub fn start_for_test(
        client: &crate::provider::omni::client::Client,
        tunnels: &crate::provider::agent::tunnel::Tunnels,
        settings: Settings,
    ) -> real::Running {
        use crate::provider::agent::client::{AgentClient, AgentTimeouts};
        use ironboot_bmc::fleet::{Fleet, FleetOptions};
        use ironboot_bmc::{Selector, SelectorOptions};
        use std::time::Duration;
        let power = real::FleetPower::new(
            Selector::new(SelectorOptions {
                redfish_use_when_available: false,
                ..SelectorOptions::default()
            }),
            Fleet::new(FleetOptions::default()),
        );
        let bound = Duration::from_secs(5);
        let agents = AgentClient::new(
            tunnels.clone(),
            AgentTimeouts {
                call: bound,
                fast_wipe: bound,
                zeroes_wipe: bound,
            },
        );
        real::start(client, power, agents, tunnels.subscribe(), settings)
    }
}

/// The API port's accept loop and its limits.
pub mod http {
    /// Connections, per-connection deadlines and caps.
    pub mod server {
        pub use crate::boot::http::server::{ConnCounters, Gate, Limits, Listener, Plain, serve};
    }
}

/// The lifecycle's policy settings.
pub mod lifecycle {
    pub use crate::provider::lifecycle::Policy;
}

/// The Omni client: signing, transport, resources, watches, registration.
pub mod omni {
    /// The service-account key that signs every call.
    pub mod auth {
        pub use crate::provider::omni::auth::{KeyError, ServiceAccountKey};
    }
    /// The COSI State client.
    pub mod client {
        pub use crate::provider::omni::client::{Client, LabelQuery, OmniError, Phase};
    }
    /// The provider's registration and heartbeat.
    pub mod provider {
        pub use crate::provider::omni::provider::{
            ProviderInfo, heartbeat, register, register_with_retry, run_heartbeat,
        };
    }
    /// Resource labels and specs.
    pub mod resources {
        pub use crate::provider::omni::resources::{
            LABEL_INFRA_PROVIDER_ID, LABEL_IS_STATIC_PROVIDER, Spec,
        };
    }
    /// The signed gRPC channel to Omni.
    pub mod transport {
        pub use crate::provider::omni::transport::{OmniEndpoint, SignedChannel};
    }

    /// A client of the Omni at `url` (plain h2c, or TLS without verification) for
    /// provider `provider_id`, signing with the service-account key `key` (its base64
    /// text). Panics on a bad key or URL: the tests make both.
    pub fn signed_client(url: &str, key: &str, provider_id: &str) -> client::Client {
        let key = auth::ServiceAccountKey::parse(key, provider_id, std::time::SystemTime::now())
            .expect("a valid service-account key");
        let endpoint = transport::OmniEndpoint::parse(url, true).expect("an Omni endpoint URL");
        let channel = endpoint.channel().expect("a channel to Omni");
        client::Client::from_signed(
            transport::SignedChannel::new(channel, std::sync::Arc::new(key)),
            provider_id.to_owned(),
            url.to_owned(),
        )
    }
    /// COSI watches.
    pub mod watch {
        pub use crate::provider::omni::watch::{Event, Watch};
    }
}

/// The agents' TLS listener: its CA, certificates and their record in Omni.
pub mod tls {
    pub use crate::provider::tls::{
        AgentTls, Ca, CertSource, TLS_CONFIG_ID, TlsError, UserFiles, provider,
    };
}
