//! The boot server, the part every mode shares: ProxyDHCP and TFTP on the UDP workers,
//! the HTTP API (boot scripts, iPXE binaries, boot assets, the machine list, `/metrics`),
//! the boot-script decision for inventory machines, and the machine store.

pub(crate) mod assets;
pub(crate) mod boot_files;
pub(crate) mod boot_script;
pub(crate) mod config;
pub(crate) mod http;
pub(crate) mod inventory;
pub(crate) mod machine;
pub(crate) mod metrics;
pub(crate) mod net_metrics;
pub(crate) mod netif;
pub(crate) mod proxy_dhcp;
pub(crate) mod service;
pub(crate) mod store;
pub(crate) mod tftp_service;
pub(crate) mod udp_workers;
