//! What the ProxyDHCP server hands out: boot file names, URLs and ports, rendered once at
//! start so the per-packet path only borrows them.

use core::net::Ipv4Addr;

use super::guard::Ipv4Subnet;

/// Default TFTP boot file for x86 BIOS PXE ROMs (iPXE's UNDI loader).
pub const DEFAULT_BIOS_FILE: &str = "undionly.kpxe";
/// Default TFTP boot file for x86-64 UEFI (iPXE snponly).
pub const DEFAULT_EFI_X64_FILE: &str = "snp.efi";
/// Default TFTP boot file for arm64 UEFI and arm64 U-Boot.
pub const DEFAULT_EFI_ARM64_FILE: &str = "snp-arm64.efi";
/// Text of the single PXE boot menu item.
pub const MENU_DESCRIPTION: &str = "ironboot";

/// UDP ports of the ProxyDHCP exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Where DHCP servers listen (67); offers leave from here.
    pub server: u16,
    /// Where DHCP clients listen (68); broadcast offers go there.
    pub client: u16,
    /// PXE boot server discovery (4011).
    pub pxe: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            server: 67,
            client: 68,
            pxe: 4011,
        }
    }
}

/// Boot files and URLs per client kind, rendered for one advertise address and API port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPolicy {
    pub(crate) advertise: Ipv4Addr,
    pub(crate) api_port: u16,
    pub(crate) ports: Ports,
    pub(crate) tftp_server_name: String,
    pub(crate) bios_file: String,
    pub(crate) efi_x64_file: String,
    pub(crate) efi_arm64_file: String,
    pub(crate) efi_ia32_file: Option<String>,
    pub(crate) ipxe_script_url: String,
    pub(crate) http_x64_url: String,
    pub(crate) http_arm64_url: String,
    pub(crate) http_ia32_url: Option<String>,
    pub(crate) relay_allow: Vec<Ipv4Subnet>,
    pub(crate) local_subnets: Vec<Ipv4Subnet>,
}

impl BootPolicy {
    /// The Go provider's files and URLs for `advertise` and the HTTP API on `api_port`.
    /// EFI IA32 clients get no reply until [`BootPolicy::with_efi_ia32_file`] names a file
    /// for them: handing them the x86-64 binary would only fail later, at load time.
    pub fn new(advertise: Ipv4Addr, api_port: u16) -> Self {
        let base = format!("http://{advertise}:{api_port}");
        BootPolicy {
            advertise,
            api_port,
            ports: Ports::default(),
            tftp_server_name: advertise.to_string(),
            bios_file: DEFAULT_BIOS_FILE.to_owned(),
            efi_x64_file: DEFAULT_EFI_X64_FILE.to_owned(),
            efi_arm64_file: DEFAULT_EFI_ARM64_FILE.to_owned(),
            efi_ia32_file: None,
            ipxe_script_url: format!("{base}/ipxe/init.ipxe"),
            http_x64_url: format!("{base}/tftp/amd64/snp.efi"),
            http_arm64_url: format!("{base}/tftp/arm64/snp.efi"),
            http_ia32_url: None,
            relay_allow: Vec::new(),
            local_subnets: Vec::new(),
        }
    }

    /// Answer relayed requests only when their `giaddr` lies in one of `subnets`, and not
    /// as the network or broadcast address of the most specific one; empty (the default):
    /// any unicast `giaddr`.
    pub fn with_relay_allow(mut self, subnets: Vec<Ipv4Subnet>) -> Self {
        self.relay_allow = subnets;
        self
    }

    /// The subnets of the served interface: no reply goes to their network or broadcast
    /// address, whether a `giaddr` or a 4011 request's source names it.
    pub fn with_local_subnets(mut self, subnets: Vec<Ipv4Subnet>) -> Self {
        self.local_subnets = subnets;
        self
    }

    /// Serve EFI IA32 clients this file over TFTP (and over HTTP at `/tftp/<file>` for
    /// IA32 HTTP boot), or nothing with `None`.
    pub fn with_efi_ia32_file(mut self, file: Option<String>) -> Self {
        let base = format!("http://{}:{}", self.advertise, self.api_port);
        self.http_ia32_url = file.as_ref().map(|f| format!("{base}/tftp/{f}"));
        self.efi_ia32_file = file;
        self
    }

    /// Use other UDP ports (tests run unprivileged on high ports).
    pub fn with_ports(mut self, ports: Ports) -> Self {
        self.ports = ports;
        self
    }

    /// The address machines are told to fetch from (TFTP `siaddr`, option 66, URLs).
    pub fn advertise(&self) -> Ipv4Addr {
        self.advertise
    }

    /// The UDP ports in use.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The URL iPXE clients are sent to.
    pub fn ipxe_script_url(&self) -> &str {
        &self.ipxe_script_url
    }
}
