//! The ProxyDHCP server: a pure decision ([`decide`]), the boot policy it reads, counters,
//! and the [`ProxyService`] that plugs them into a UDP driver.

mod counters;
mod decide;
/// Property check shared by the `dhcp_proxy` fuzz target and the corpus replay test.
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod guard;
mod policy;
mod ratelimit;
mod service;

pub use counters::{BootClients, ProxyCounters, ProxySnapshot};
pub use decide::{Client, Decision, Firmware, Ignored, Reply, classify, decide};
pub use guard::{Ipv4Subnet, Refusal, SubnetError, check_giaddr, check_reply_source};
pub use policy::{
    BootPolicy, DEFAULT_BIOS_FILE, DEFAULT_EFI_ARM64_FILE, DEFAULT_EFI_X64_FILE, MENU_DESCRIPTION,
    Ports,
};
pub use ratelimit::{REFUSAL_LOG_INTERVAL, RefusalLog};
pub use service::{ProxyService, Refused, handle_datagram, handle_datagram_refused};
