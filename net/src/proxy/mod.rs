//! The ProxyDHCP server: a pure decision ([`decide`]), the boot policy it reads, counters,
//! and the [`ProxyService`] that plugs them into a UDP driver.

mod counters;
mod decide;
/// Property check shared by the `dhcp_proxy` fuzz target and the corpus replay test.
pub mod fuzz;
mod policy;
mod service;

pub use counters::ProxyCounters;
pub use decide::{Client, Decision, Firmware, Ignored, Reply, classify, decide};
pub use policy::{
    BootPolicy, DEFAULT_BIOS_FILE, DEFAULT_EFI_ARM64_FILE, DEFAULT_EFI_X64_FILE, MENU_DESCRIPTION,
    Ports,
};
pub use service::{ProxyService, handle_datagram};
