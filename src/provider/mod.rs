//! The Omni infrastructure provider: the COSI client, what each machine boots from its
//! state in Omni, the pure lifecycle and the executor that carries out its actions, the
//! metal agents' reverse tunnel (and its TLS), BMC power through the agents' credentials,
//! and the Image Factory with its caching proxy.

// The agent, executor, lifecycle, Omni client and TLS items `ironboot::testing` re-exports
// are `pub`; without that feature nothing outside the crate can reach them.
#![cfg_attr(
    not(feature = "test-support"),
    allow(
        unreachable_pub,
        reason = "what `ironboot::testing` re-exports is `pub`"
    )
)]

pub(crate) mod agent;
pub(crate) mod boot_plan;
pub(crate) mod executor;
pub(crate) mod factory_proxy;
pub(crate) mod image_factory;
pub(crate) mod lifecycle;
pub(crate) mod mode;
pub(crate) mod omni;
pub(crate) mod power_mgmt_dir;
pub(crate) mod tls;
