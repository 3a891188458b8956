//! The Omni infrastructure provider: the COSI client, what each machine boots from its
//! state in Omni, the pure lifecycle and the executor that carries out its actions, the
//! metal agents' reverse tunnel (and its TLS), BMC power through the agents' credentials,
//! and the Image Factory with its caching proxy.

#[cfg_attr(
    not(feature = "test-support"),
    allow(
        unreachable_pub,
        reason = "what `ironboot::testing` re-exports is `pub`"
    )
)]
pub(crate) mod agent;
pub(crate) mod boot_plan;
#[cfg_attr(
    not(feature = "test-support"),
    allow(
        unreachable_pub,
        reason = "what `ironboot::testing` re-exports is `pub`"
    )
)]
pub(crate) mod executor;
pub(crate) mod factory_proxy;
pub(crate) mod image_factory;
#[cfg_attr(
    not(feature = "test-support"),
    allow(
        unreachable_pub,
        reason = "what `ironboot::testing` re-exports is `pub`"
    )
)]
pub(crate) mod lifecycle;
pub(crate) mod mode;
#[cfg_attr(
    not(feature = "test-support"),
    allow(
        unreachable_pub,
        reason = "what `ironboot::testing` re-exports is `pub`"
    )
)]
pub(crate) mod omni;
pub(crate) mod power_mgmt_dir;
#[cfg_attr(
    not(feature = "test-support"),
    allow(
        unreachable_pub,
        reason = "what `ironboot::testing` re-exports is `pub`"
    )
)]
pub(crate) mod tls;
