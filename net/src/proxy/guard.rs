//! Where a ProxyDHCP reply may go. Anyone on a PXE network can put any address in a
//! request's `giaddr` or spoof its source, so before a reply leaves, its destination is
//! checked: it must be one unicast host (never a broadcast, multicast, loopback,
//! "this network" or reserved address, nor the network or broadcast address of a subnet
//! we know), and a relay must lie in the subnets the operator allowed, if any.

use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::str::FromStr;

/// Why a reply was not sent to where the request asked. Each is counted and logged at a
/// bounded rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `giaddr` in 0.0.0.0/8 ("this network", RFC 1122 3.2.1.3), other than 0.0.0.0.
    GiaddrThisNetwork,
    /// `giaddr` in 127.0.0.0/8.
    GiaddrLoopback,
    /// `giaddr` in 169.254.0.0/16: link-local addresses are never routed (RFC 3927), so
    /// no relay can be reached there.
    GiaddrLinkLocal,
    /// `giaddr` in 224.0.0.0/4.
    GiaddrMulticast,
    /// `giaddr` 255.255.255.255.
    GiaddrBroadcast,
    /// `giaddr` in 240.0.0.0/4 (reserved, "class E").
    GiaddrReserved,
    /// `giaddr` is the network or broadcast address of a known subnet.
    GiaddrSubnetEdge,
    /// `giaddr` outside every subnet of `--dhcp-relay-allow`.
    GiaddrNotAllowed,
    /// A 4011 request whose source address is not one unicast host (broadcast, multicast,
    /// reserved, "this network", loopback from off this host, or a known subnet's network
    /// or broadcast address).
    SourceNotUnicast,
    /// A 4011 request from a port PXE clients do not use: the ACK goes back to the source
    /// port, and clients send from 68 (iPXE) or 4011 (EDK2).
    SourcePort,
}

impl Refusal {
    /// Every refusal, for metrics and the log rate limiter.
    pub const ALL: [Refusal; 10] = [
        Refusal::GiaddrThisNetwork,
        Refusal::GiaddrLoopback,
        Refusal::GiaddrLinkLocal,
        Refusal::GiaddrMulticast,
        Refusal::GiaddrBroadcast,
        Refusal::GiaddrReserved,
        Refusal::GiaddrSubnetEdge,
        Refusal::GiaddrNotAllowed,
        Refusal::SourceNotUnicast,
        Refusal::SourcePort,
    ];

    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::GiaddrThisNetwork => "giaddr_this_network",
            Refusal::GiaddrLoopback => "giaddr_loopback",
            Refusal::GiaddrLinkLocal => "giaddr_link_local",
            Refusal::GiaddrMulticast => "giaddr_multicast",
            Refusal::GiaddrBroadcast => "giaddr_broadcast",
            Refusal::GiaddrReserved => "giaddr_reserved",
            Refusal::GiaddrSubnetEdge => "giaddr_subnet_edge",
            Refusal::GiaddrNotAllowed => "giaddr_not_allowed",
            Refusal::SourceNotUnicast => "source_not_unicast",
            Refusal::SourcePort => "source_port",
        }
    }

    /// Position in [`Refusal::ALL`].
    pub(crate) fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// An IPv4 subnet, `a.b.c.d/len`, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a subnet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// Not `address/prefix`.
    #[error("{0:?} is not of the form a.b.c.d/len")]
    Syntax(String),
    /// The prefix length is not 0 to 32.
    #[error("prefix length {0:?} is not a number from 0 to 32")]
    Prefix(String),
    /// Bits set past the prefix.
    #[error("{given} has host bits set; the subnet is {network}/{prefix}")]
    HostBits {
        /// What was given.
        given: String,
        /// The network address it lies in.
        network: Ipv4Addr,
        /// The prefix length.
        prefix: u8,
    },
    /// The whole subnet is in a block where no relay can be answered.
    #[error("{0} holds no unicast host address a relay could use")]
    NotUnicast(Ipv4Subnet),
}

impl Ipv4Subnet {
    /// The subnet of `addr` with a `prefix`-bit mask (host bits cleared); `None` for a
    /// prefix over 32.
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Ipv4Subnet {
            network: Ipv4Addr::from_bits(addr.to_bits() & mask(prefix)),
            prefix,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The subnet's broadcast address (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.network.to_bits() | !mask(self.prefix))
    }

    /// Whether `addr` lies in the subnet.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        addr.to_bits() & mask(self.prefix) == self.network.to_bits()
    }

    /// Whether `addr` is the subnet's network or broadcast address. /31 and /32 subnets
    /// have neither (RFC 3021): every address in them is a host.
    pub fn is_edge(&self, addr: Ipv4Addr) -> bool {
        self.prefix <= 30 && (addr == self.network || addr == self.broadcast())
    }

    /// Whether the whole subnet lies in one block of [`unicast_class`] refusals.
    fn within_refused_block(&self) -> bool {
        REFUSED_BLOCKS.iter().any(|&(net, prefix, _)| {
            self.prefix >= prefix && self.network.to_bits() & mask(prefix) == net.to_bits()
        })
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Subnet {
    type Err = SubnetError;

    /// `a.b.c.d/len`. A subnet with host bits set, or lying wholly in a block no relay can
    /// be answered in (multicast, loopback, ...), is refused.
    fn from_str(s: &str) -> Result<Self, SubnetError> {
        let s = s.trim();
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| SubnetError::Syntax(s.to_owned()))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| SubnetError::Syntax(s.to_owned()))?;
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| SubnetError::Prefix(prefix.to_owned()))?;
        let subnet = Ipv4Subnet::containing(addr, prefix)
            .ok_or_else(|| SubnetError::Prefix(prefix.to_string()))?;
        if subnet.network != addr {
            return Err(SubnetError::HostBits {
                given: s.to_owned(),
                network: subnet.network,
                prefix,
            });
        }
        if subnet.within_refused_block() {
            return Err(SubnetError::NotUnicast(subnet));
        }
        Ok(subnet)
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// Blocks no reply is ever sent into, with the refusal a `giaddr` there gets. 0.0.0.0
/// itself is not here: a zero `giaddr` means "not relayed".
const REFUSED_BLOCKS: [(Ipv4Addr, u8, Refusal); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, Refusal::GiaddrThisNetwork),
    (Ipv4Addr::new(127, 0, 0, 0), 8, Refusal::GiaddrLoopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, Refusal::GiaddrLinkLocal),
    (Ipv4Addr::new(224, 0, 0, 0), 4, Refusal::GiaddrMulticast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, Refusal::GiaddrReserved),
];

/// The refusal for an address that is not one unicast host by its class alone, reported
/// in `giaddr` terms. Link-local counts as refused here; callers that may answer on-link
/// link-local hosts check that themselves.
fn unicast_class(addr: Ipv4Addr) -> Result<(), Refusal> {
    if addr.is_broadcast() {
        return Err(Refusal::GiaddrBroadcast);
    }
    match REFUSED_BLOCKS
        .iter()
        .find(|&&(net, prefix, _)| addr.to_bits() & mask(prefix) == net.to_bits())
    {
        Some(&(_, _, why)) => Err(why),
        None => Ok(()),
    }
}

/// The most specific subnet of `subnets` holding `addr`.
fn longest_match(subnets: &[Ipv4Subnet], addr: Ipv4Addr) -> Option<&Ipv4Subnet> {
    subnets
        .iter()
        .filter(|s| s.contains(addr))
        .max_by_key(|s| s.prefix)
}

/// The longer-prefix subnet of two matches.
fn most_specific(found: [Option<&Ipv4Subnet>; 2]) -> Option<&Ipv4Subnet> {
    found.into_iter().flatten().max_by_key(|s| s.prefix)
}

/// Whether a relayed request's `giaddr` may be answered.
///
/// `local` are the subnets of the interface ProxyDHCP serves, `allowed` those of
/// `--dhcp-relay-allow` (empty: any unicast relay). The `giaddr` must be a unicast host
/// address, not the network or broadcast address of the most specific known subnet
/// holding it, and inside `allowed` when that is set.
pub fn check_giaddr(
    giaddr: Ipv4Addr,
    local: &[Ipv4Subnet],
    allowed: &[Ipv4Subnet],
) -> Result<(), Refusal> {
    unicast_class(giaddr)?;
    let allowed_match = longest_match(allowed, giaddr);
    if !allowed.is_empty() && allowed_match.is_none() {
        return Err(Refusal::GiaddrNotAllowed);
    }
    if most_specific([allowed_match, longest_match(local, giaddr)])
        .is_some_and(|s| s.is_edge(giaddr))
    {
        return Err(Refusal::GiaddrSubnetEdge);
    }
    Ok(())
}

/// Whether a 4011 ACK may go back to `src`, the request's source.
///
/// The source must be one unicast host: not broadcast, multicast, reserved or "this
/// network", not a known subnet's network or broadcast address, and loopback only when the
/// request arrived on a loopback address (the kernel never delivers a loopback source from
/// a real interface, so it is spoofed or a test on this host). Link-local sources are
/// answered: such a host can only be on the served link. The source port must be one a PXE
/// client sends from: `client_port` (68, iPXE) or `pxe_port` (4011, EDK2).
pub fn check_reply_source(
    src: SocketAddrV4,
    local_addr: Ipv4Addr,
    local: &[Ipv4Subnet],
    allowed: &[Ipv4Subnet],
    client_port: u16,
    pxe_port: u16,
) -> Result<(), Refusal> {
    let ip = *src.ip();
    match unicast_class(ip) {
        Ok(()) | Err(Refusal::GiaddrLinkLocal) => {}
        Err(Refusal::GiaddrLoopback) if local_addr.is_loopback() => {}
        Err(_) => return Err(Refusal::SourceNotUnicast),
    }
    if most_specific([longest_match(allowed, ip), longest_match(local, ip)])
        .is_some_and(|s| s.is_edge(ip))
    {
        return Err(Refusal::SourceNotUnicast);
    }
    if src.port() != client_port && src.port() != pxe_port {
        return Err(Refusal::SourcePort);
    }
    Ok(())
}
