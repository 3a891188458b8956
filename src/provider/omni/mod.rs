//! The Omni client: the service-account key and signed requests ([`auth`]), the
//! connection ([`transport`]), typed COSI State calls ([`client`]) and watches
//! ([`watch`]), the resource types ([`resources`]) and provider registration and
//! heartbeat ([`provider`]). `ironboot omni check` ([`crate::tools::omni_check`]) drives
//! them against a live
//! Omni; the control loop builds on them.
//!
//! Proven against the real upstream Go modules by `tests/it/omni_conformance.rs` and its
//! harness in `tests/omni-harness`.

pub(crate) mod auth;
pub(crate) mod client;
pub(crate) mod provider;
pub(crate) mod resources;
pub(crate) mod transport;
pub(crate) mod watch;
