//! The ProxyDHCP server: a pure decision ([`decide`]), the boot policy it reads, counters,
//! and the [`ProxyService`] that plugs them into a UDP driver.

mod counters;
mod decide;
mod policy;
mod service;

pub use counters::ProxyCounters;
pub use decide::{Client, Decision, Firmware, Ignored, Reply, classify, decide};
pub use policy::{
    BootPolicy, DEFAULT_BIOS_FILE, DEFAULT_EFI_ARM64_FILE, DEFAULT_EFI_X64_FILE, MENU_DESCRIPTION,
    Ports,
};
pub use service::{ProxyService, handle_datagram};
