//! Byte-level `IP_PKTINFO` control messages and `sockaddr_in` names, shared by both drivers.
//!
//! The io_uring driver receives these as raw bytes inside provided buffers, and both drivers
//! build the send-side control message into preallocated buffers. Doing it on byte arrays
//! keeps this code safe and allocation-free; the kernel copies control data and names into
//! its own memory, so the user-side buffers need no particular alignment.
#![forbid(unsafe_code)]

use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::service::SendMeta;

/// `CMSG_ALIGN`: control message headers and payloads are padded to `size_t` alignment.
const fn cmsg_align(len: usize) -> usize {
    let align = size_of::<usize>();
    (len + align - 1) & !(align - 1)
}

/// Size of a `struct cmsghdr` (`cmsg_len: size_t, cmsg_level: int, cmsg_type: int`).
const CMSG_HDR_LEN: usize = size_of::<libc::cmsghdr>();
/// Size of a `struct in_pktinfo` (`ipi_ifindex: int, ipi_spec_dst, ipi_addr: in_addr`).
const PKTINFO_LEN: usize = size_of::<libc::in_pktinfo>();

/// `CMSG_SPACE(sizeof(struct in_pktinfo))`: room for exactly one `IP_PKTINFO` message.
pub(crate) const PKTINFO_CMSG_SPACE: usize = cmsg_align(CMSG_HDR_LEN) + cmsg_align(PKTINFO_LEN);

/// Size of a `struct sockaddr_in`.
pub(crate) const SOCKADDR_IN_LEN: usize = size_of::<libc::sockaddr_in>();

/// What an `IP_PKTINFO` control message says about a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PacketInfo {
    /// `ipi_ifindex`: the interface it arrived on.
    pub(crate) ifindex: u32,
    /// `ipi_spec_dst`: the local address it was addressed to (the interface's address for
    /// a broadcast).
    pub(crate) local_addr: Ipv4Addr,
}

/// The `IP_PKTINFO` to attach to a send, if the reply must pin its interface or source.
pub(crate) fn send_pktinfo(meta: &SendMeta) -> Option<PacketInfo> {
    if meta.ifindex.is_none() && meta.src_ip.is_none() {
        return None;
    }
    Some(PacketInfo {
        ifindex: meta.ifindex.unwrap_or(0),
        local_addr: meta.src_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
    })
}

/// Encode one `IP_PKTINFO` control message for `sendmsg`: Linux takes `ipi_ifindex` as the
/// outgoing interface and `ipi_spec_dst` as the source address (0 = let routing decide).
pub(crate) fn encode_pktinfo_cmsg(info: PacketInfo) -> [u8; PKTINFO_CMSG_SPACE] {
    let mut out = [0u8; PKTINFO_CMSG_SPACE];
    let cmsg_len = cmsg_align(CMSG_HDR_LEN) + PKTINFO_LEN; // CMSG_LEN
    out[..size_of::<usize>()].copy_from_slice(&cmsg_len.to_ne_bytes());
    let level_at = size_of::<usize>();
    out[level_at..level_at + 4].copy_from_slice(&libc::IPPROTO_IP.to_ne_bytes());
    out[level_at + 4..level_at + 8].copy_from_slice(&libc::IP_PKTINFO.to_ne_bytes());
    let data = cmsg_align(CMSG_HDR_LEN);
    // ifindex fits an int: it came from the kernel or from if_nametoindex.
    out[data..data + 4].copy_from_slice(&(info.ifindex as i32).to_ne_bytes());
    out[data + 4..data + 8].copy_from_slice(&info.local_addr.octets());
    // ipi_addr is ignored on send; left zero.
    out
}

/// Find the `IP_PKTINFO` message in received control data (`controllen` bytes, as the
/// kernel filled them). Malformed or unrelated messages are skipped, never trusted.
pub(crate) fn parse_pktinfo_cmsgs(control: &[u8]) -> Option<PacketInfo> {
    let mut at = 0usize;
    while control.len().saturating_sub(at) >= CMSG_HDR_LEN {
        let hdr = &control[at..];
        let len = usize::from_ne_bytes(hdr[..size_of::<usize>()].try_into().ok()?);
        let level_at = size_of::<usize>();
        let level = i32::from_ne_bytes(hdr[level_at..level_at + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(hdr[level_at + 4..level_at + 8].try_into().ok()?);
        if len < CMSG_HDR_LEN || len > hdr.len() {
            return None;
        }
        let data = cmsg_align(CMSG_HDR_LEN);
        if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO && len >= data + PKTINFO_LEN {
            let ifindex = i32::from_ne_bytes(hdr[data..data + 4].try_into().ok()?);
            let spec_dst: [u8; 4] = hdr[data + 4..data + 8].try_into().ok()?;
            return Some(PacketInfo {
                ifindex: u32::try_from(ifindex).ok()?,
                local_addr: Ipv4Addr::from(spec_dst),
            });
        }
        at += cmsg_align(len);
    }
    None
}

/// Encode a `struct sockaddr_in` (family in host order, port and address in network order).
pub(crate) fn encode_sockaddr_in(addr: SocketAddrV4) -> [u8; SOCKADDR_IN_LEN] {
    let mut out = [0u8; SOCKADDR_IN_LEN];
    // sa_family_t is an unsigned short on Linux.
    out[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    out[4..8].copy_from_slice(&addr.ip().octets());
    out
}

/// Decode a `struct sockaddr_in`; `None` for anything that is not a complete IPv4 name.
pub(crate) fn parse_sockaddr_in(name: &[u8]) -> Option<SocketAddrV4> {
    if name.len() < 8 || u16::from_ne_bytes([name[0], name[1]]) != libc::AF_INET as u16 {
        return None;
    }
    let port = u16::from_be_bytes([name[2], name[3]]);
    let ip = Ipv4Addr::new(name[4], name[5], name[6], name[7]);
    Some(SocketAddrV4::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pktinfo_cmsg_round_trips() {
        let info = PacketInfo {
            ifindex: 7,
            local_addr: Ipv4Addr::new(10, 1, 2, 3),
        };
        assert_eq!(parse_pktinfo_cmsgs(&encode_pktinfo_cmsg(info)), Some(info));
    }

    #[test]
    fn cmsg_space_matches_libc() {
        assert_eq!(PKTINFO_CMSG_SPACE, nix::cmsg_space!(libc::in_pktinfo).len());
    }

    #[test]
    fn garbage_control_data_is_rejected() {
        assert_eq!(parse_pktinfo_cmsgs(&[]), None);
        assert_eq!(parse_pktinfo_cmsgs(&[0xff; 40]), None);
        let mut zero_len = encode_pktinfo_cmsg(PacketInfo {
            ifindex: 1,
            local_addr: Ipv4Addr::LOCALHOST,
        });
        zero_len[..size_of::<usize>()].fill(0);
        assert_eq!(parse_pktinfo_cmsgs(&zero_len), None);
    }

    #[test]
    fn sockaddr_round_trips() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 4011);
        assert_eq!(parse_sockaddr_in(&encode_sockaddr_in(addr)), Some(addr));
        assert_eq!(parse_sockaddr_in(&[0; 4]), None);
    }
}
