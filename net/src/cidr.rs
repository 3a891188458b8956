//! Address ranges in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or a bare address for a
//! single host), for the allow lists of ironboot's flags.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, as a dual-stack socket reports an IPv4
//! peer) are matched as the IPv4 address they carry.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One address range: the network address (host bits cleared) and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a CIDR did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("{0:?} is not an IP address")]
    Address(String),
    /// The prefix length is not a number, or too long for the address family.
    #[error("{text:?}: the prefix length must be a number from 0 to {max}")]
    Prefix {
        /// The whole range as written.
        text: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
}

/// `ip` as the IPv4 address it carries, if it is IPv4-mapped IPv6.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    /// The range of `prefix` leading bits of `addr` (`None` if `prefix` is too long).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let addr = canonical(addr);
        let network = match addr {
            IpAddr::V4(a) if prefix <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) if prefix <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
            _ => return None,
        };
        Some(Self { network, prefix })
    }

    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Cidr::new(canonical(ip), self.prefix).is_some_and(|c| c.network == self.network)
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Parses a comma-separated list (`10.0.0.0/8, 192.168.1.0/24`); empty items are
    /// skipped, so an empty string is an empty list.
    pub fn parse_list(text: &str) -> Result<Vec<Cidr>, CidrError> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect()
    }

    /// Whether `ip` is in any range of `list`; an empty list allows every address.
    pub fn allows(list: &[Cidr], ip: IpAddr) -> bool {
        list.is_empty() || list.iter().any(|c| c.contains(ip))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(addr.to_owned()))?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                p.parse::<u8>()
                    .ok()
                    .filter(|&p| p <= max)
                    .ok_or_else(|| CidrError::Prefix {
                        text: text.to_owned(),
                        max,
                    })?
            }
        };
        Cidr::new(addr, prefix).ok_or(CidrError::Prefix {
            text: text.to_owned(),
            max,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        let net: Cidr = "10.1.2.3/16".parse().unwrap();
        assert_eq!(net.to_string(), "10.1.0.0/16");
        assert!(net.contains(ip("10.1.255.255")));
        assert!(!net.contains(ip("10.2.0.0")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped IPv6");
        assert!(!net.contains(ip("fd00::1")));
        let host: Cidr = "192.168.0.7".parse().unwrap();
        assert_eq!(host.prefix(), 32);
        assert!(host.contains(ip("192.168.0.7")) && !host.contains(ip("192.168.0.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        let v6: Cidr = "fd98::/64".parse().unwrap();
        assert!(v6.contains(ip("fd98::42")) && !v6.contains(ip("fd99::42")));
    }

    #[test]
    fn lists_parse_and_refuse_bad_items() {
        let list = Cidr::parse_list(" 10.0.0.0/8 ,, 127.0.0.1 ").unwrap();
        assert_eq!(list.len(), 2);
        assert!(Cidr::allows(&list, ip("127.0.0.1")));
        assert!(!Cidr::allows(&list, ip("127.0.0.2")));
        assert!(Cidr::allows(&[], ip("203.0.113.9")), "empty = any");
        assert_eq!(
            Cidr::parse_list("10.0.0.0/33"),
            Err(CidrError::Prefix {
                text: "10.0.0.0/33".into(),
                max: 32
            })
        );
        assert!(matches!(
            Cidr::parse_list("rack-a"),
            Err(CidrError::Address(_))
        ));
        assert!(Cidr::parse_list("10.0.0.0/x").is_err());
        assert!(Cidr::parse_list("").unwrap().is_empty());
    }
}
