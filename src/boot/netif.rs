//! Local network interfaces: what the host's addresses are, for picking the advertise
//! address and the interface the ProxyDHCP sockets bind to.

use std::net::Ipv4Addr;

/// One IPv4 address on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterfaceAddr {
    /// Interface name (`eth0`).
    pub(crate) name: String,
    /// Interface index.
    pub(crate) index: u32,
    /// The address.
    pub(crate) addr: Ipv4Addr,
    /// Whether the interface is a loopback.
    pub(crate) loopback: bool,
    /// Whether the interface is up.
    pub(crate) up: bool,
}

impl InterfaceAddr {
    /// Whether machines on a LAN could reach us at this address: an up, non-loopback
    /// interface with a unicast address that is not link-local.
    pub(crate) fn is_routable(&self) -> bool {
        let a = self.addr;
        self.up
            && !self.loopback
            && !a.is_loopback()
            && !a.is_link_local()
            && !a.is_unspecified()
            && !a.is_broadcast()
            && !a.is_multicast()
    }
}

/// Every IPv4 address of every interface on this host.
pub(crate) fn host_interfaces() -> std::io::Result<Vec<InterfaceAddr>> {
    use nix::net::if_::InterfaceFlags;
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        let index = nix::net::if_::if_nametoindex(ifa.interface_name.as_str()).unwrap_or(0);
        out.push(InterfaceAddr {
            name: ifa.interface_name.clone(),
            index,
            addr: addr.ip(),
            loopback: ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK),
            up: ifa.flags.contains(InterfaceFlags::IFF_UP),
        });
    }
    Ok(out)
}

/// The IPv4 subnets (address and prefix length) configured on interface `name`.
pub(crate) fn ipv4_subnets(name: &str) -> std::io::Result<Vec<(Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        if ifa.interface_name != name {
            continue;
        }
        let addr = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in());
        let mask = ifa.netmask.as_ref().and_then(|a| a.as_sockaddr_in());
        if let (Some(addr), Some(mask)) = (addr, mask) {
            let prefix = mask.ip().to_bits().leading_ones();
            out.push((addr.ip(), u8::try_from(prefix).unwrap_or(32)));
        }
    }
    Ok(out)
}
