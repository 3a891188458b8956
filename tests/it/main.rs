//! ironboot's integration tests, one module per suite, in one test binary (one link, and
//! the suites' shared helpers compiled once): `cargo test --test it <suite>::` runs one
//! suite, e.g. `cargo test --test it agent_conformance::`.
//!
//! What the suites share lives in the `ironboot-test-support` crate (`tests/support/`);
//! the library's internals they drive come from `ironboot::testing` (feature
//! `test-support`, enabled for these tests only). The real-peer suites fail, never skip,
//! when a prerequisite is missing (`tests/install-prereqs.sh` installs them all).

mod agent_conformance;
mod agent_tls;
mod bmc_cli;
mod container;
mod executor_omni;
mod http_limits;
mod inventory_reload;
mod lifecycle_scenario;
mod log_secrets_check;
mod omni_conformance;
mod real_firmware;
mod shutdown_order;
mod store_faults;
mod storm_pxe;
mod systemd_unit;
mod tftp_conformance;
mod udp_workers;
