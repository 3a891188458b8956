//! The boot server's settings: what every mode serves with (addresses, ports, ProxyDHCP,
//! TFTP, the UDP drivers, the iPXE binaries, the machine store, the HTTP ports' caps).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ironboot_net::udp::DriverKind;

use crate::boot::boot_script::BootFromDiskMethod;
use crate::boot::http::server::Limits;
use crate::boot::proxy_dhcp::DhcpProxyConfig;
use crate::boot::store::StoreCaps;
use crate::boot::tftp_service::TftpSettings;

/// The boot server's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerConfig {
    /// Listen address of the API and TFTP (None: all).
    pub(crate) api_listen_address: Option<Ipv4Addr>,
    /// Address advertised to machines.
    pub(crate) advertise_address: Ipv4Addr,
    /// API port.
    pub(crate) api_port: u16,
    /// `--tls-custom-ipxe-ca-cert-file`: the CA iPXE trusts instead of its own.
    pub(crate) ipxe_ca_cert: Option<PathBuf>,
    /// ProxyDHCP, unless disabled.
    pub(crate) dhcp_proxy: Option<DhcpProxyConfig>,
    /// UDP driver choice.
    pub(crate) udp_driver: DriverKind,
    /// Driver instances per UDP service (`--udp-workers`, `auto` resolved), at least 1.
    pub(crate) udp_workers: usize,
    /// Where the iPXE binaries are looked for.
    pub(crate) ipxe_dirs: Vec<PathBuf>,
    /// The state directory.
    pub(crate) state_dir: PathBuf,
    /// `--store-max-machines`, `--store-new-machines-per-source`.
    pub(crate) store: StoreCaps,
    /// Boot-from-disk answer.
    pub(crate) boot_from_disk_method: BootFromDiskMethod,
    /// TFTP settings.
    pub(crate) tftp: TftpSettings,
    /// The HTTP ports' caps and deadlines (`--http-*`, `--tls-handshake-timeout`,
    /// `--api-allow-cidr`).
    pub(crate) http: Limits,
}
