//! UDP generic segmentation offload (`UDP_SEGMENT`, Linux 4.18+), shared by both drivers.
//!
//! A TFTP window is several datagrams of one size to one client. Sent as one `sendmsg`
//! with a `UDP_SEGMENT` control message, the kernel walks its UDP/IP send path, the
//! qdisc and the device queue once for the whole window and cuts it into datagrams as
//! late as it can (in the NIC, where it offloads UDP segmentation). On the wire nothing
//! changes: the client sees the same datagrams. What gets grouped is decided here, on
//! the queue alone; the drivers only build the `sendmsg`.
//!
//! If the kernel refuses a segmented send (a route MTU below the segment size, a kernel
//! without `UDP_SEGMENT`, a device that cannot checksum) the driver lowers the largest
//! segment size it groups ([`GsoLimit::refused`]) and sends such datagrams one by one
//! from then on; the datagrams of the refused send are lost like any datagram, and the
//! protocol above retransmits them.
#![forbid(unsafe_code)]

use std::mem::size_of;

use crate::service::TxQueue;

/// Most datagrams in one segmented send. Linux accepts 64 (`UDP_MAX_SEGMENTS`, 128 since
/// 6.9); a TFTP window is at most 64 blocks anyway.
pub(crate) const MAX_SEGMENTS: usize = 64;

/// Most payload bytes in one segmented send: one IPv4 datagram's worth, minus the IP and
/// UDP headers, and a little slack the kernel may want for options.
const MAX_TOTAL: usize = 65_000;

/// Largest segment grouped until the kernel says otherwise: what a 1500-byte MTU carries
/// (TFTP's 1468-byte blocks plus their 4-byte header exactly).
const DEFAULT_MAX_SEGMENT: usize = 1472;

/// `CMSG_SPACE(sizeof(uint16_t))`: room for one `UDP_SEGMENT` control message.
pub(crate) const SEGMENT_CMSG_SPACE: usize = cmsg_align(CMSG_HDR_LEN) + cmsg_align(2);

const CMSG_HDR_LEN: usize = size_of::<libc::cmsghdr>();

const fn cmsg_align(len: usize) -> usize {
    let align = size_of::<usize>();
    (len + align - 1) & !(align - 1)
}

/// The segment size below which the driver still groups datagrams; lowered when the
/// kernel refuses a segmented send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GsoLimit {
    max_segment: usize,
}

impl Default for GsoLimit {
    fn default() -> Self {
        GsoLimit {
            max_segment: DEFAULT_MAX_SEGMENT,
        }
    }
}

impl GsoLimit {
    /// Whether the error a segmented send of `segment`-byte datagrams got means the kernel
    /// cannot segment it (as opposed to a reason any send could fail, like an ICMP error
    /// reported on the socket); if so, never group that size again.
    pub(crate) fn refused(&mut self, errno: i32, segment: usize) -> bool {
        let cannot_segment = matches!(
            errno,
            libc::EINVAL | libc::EIO | libc::EOPNOTSUPP | libc::ENOPROTOOPT | libc::EMSGSIZE
        );
        if cannot_segment {
            self.max_segment = self.max_segment.min(segment.saturating_sub(1));
        }
        cannot_segment
    }

    /// Split the queue into runs to send with one `sendmsg` each, appending their lengths
    /// (in queue order, summing to `tx.len()`) to `runs`, which is cleared first.
    ///
    /// A run of two or more is datagrams to the same destination from the same source,
    /// all of one size (the segment size) except the last, which may be shorter, as
    /// `UDP_SEGMENT` requires; at most [`MAX_SEGMENTS`] of them and [`MAX_TOTAL`] bytes.
    pub(crate) fn plan(&self, tx: &TxQueue, runs: &mut Vec<usize>) {
        runs.clear();
        let mut current: Option<(usize, usize, usize)> = None; // (count, segment, total)
        let mut prev_meta = None;
        for (meta, head, body) in tx.iter() {
            let len = head.len() + body.map_or(0, |b| b.len());
            let extends = match (current, prev_meta) {
                (Some((count, segment, total)), Some(prev)) => {
                    prev == meta
                        && segment > 0
                        && count < MAX_SEGMENTS
                        && len <= segment
                        && total + len <= MAX_TOTAL
                        // The previous datagram was full size (only the last may be short).
                        && total == count * segment
                }
                _ => false,
            };
            current = match current {
                Some((count, segment, total)) if extends => Some((count + 1, segment, total + len)),
                previous => {
                    if let Some((count, ..)) = previous {
                        runs.push(count);
                    }
                    // A datagram too big to group still goes out, alone: a segment size
                    // of 0 makes nothing extend its run.
                    let segment = if len <= self.max_segment && len > 0 {
                        len
                    } else {
                        0
                    };
                    Some((1, segment, len))
                }
            };
            prev_meta = Some(meta);
        }
        if let Some((count, ..)) = current {
            runs.push(count);
        }
    }
}

/// Encode the `UDP_SEGMENT` control message: the kernel cuts the payload into datagrams
/// of `segment` bytes (the last one shorter).
pub(crate) fn encode_segment_cmsg(segment: u16) -> [u8; SEGMENT_CMSG_SPACE] {
    let mut out = [0u8; SEGMENT_CMSG_SPACE];
    let cmsg_len = cmsg_align(CMSG_HDR_LEN) + 2; // CMSG_LEN(2)
    out[..size_of::<usize>()].copy_from_slice(&cmsg_len.to_ne_bytes());
    let level_at = size_of::<usize>();
    out[level_at..level_at + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    out[level_at + 4..level_at + 8].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    let data = cmsg_align(CMSG_HDR_LEN);
    out[data..data + 2].copy_from_slice(&segment.to_ne_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use bytes::Bytes;

    use super::*;
    use crate::service::SendMeta;

    fn to(port: u16) -> SendMeta {
        SendMeta {
            dst: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port),
            ifindex: None,
            src_ip: None,
            local_port: 7000,
        }
    }

    /// Queue datagrams of (destination port, body length), each with a 4-byte header.
    fn queue(datagrams: &[(u16, usize)]) -> TxQueue {
        let file = Bytes::from(vec![7u8; 70_000]);
        let mut tx = TxQueue::with_capacity(datagrams.len());
        for &(port, len) in datagrams {
            assert!(tx.push_with_body(file.slice(..len), |buf| {
                buf[..4].copy_from_slice(&[0, 3, 0, 1]);
                Some((4, to(port)))
            }));
        }
        tx
    }

    fn plan(limit: GsoLimit, datagrams: &[(u16, usize)]) -> Vec<usize> {
        let mut runs = vec![99];
        limit.plan(&queue(datagrams), &mut runs);
        runs
    }

    #[test]
    fn a_window_to_one_client_is_one_run_and_the_short_last_block_joins_it() {
        let window = [(1, 1468), (1, 1468), (1, 1468), (1, 100)];
        assert_eq!(plan(GsoLimit::default(), &window), [4]);
    }

    #[test]
    fn runs_break_at_another_client_or_another_size() {
        let queued = [
            (1, 1468),
            (1, 1468),
            (2, 1468), // another client
            (2, 1428), // shorter: ends the run it joins
            (2, 1428), // so this one starts a new one
            (3, 512),
            (3, 1000), // longer than the run's segment
        ];
        assert_eq!(plan(GsoLimit::default(), &queued), [2, 2, 1, 1, 1]);
    }

    #[test]
    fn runs_are_capped_by_segments_and_bytes() {
        let many = vec![(1, 508); 100];
        assert_eq!(plan(GsoLimit::default(), &many), [64, 36]);
        // 1472-byte datagrams: 44 fit 65,000 bytes.
        let big = vec![(1, 1468); 50];
        assert_eq!(plan(GsoLimit::default(), &big), [44, 6]);
    }

    #[test]
    fn oversized_segments_go_alone_and_a_refusal_lowers_the_limit() {
        let jumbo = [(1, 8188), (1, 8188)];
        assert_eq!(plan(GsoLimit::default(), &jumbo), [1, 1]);

        let mut limit = GsoLimit::default();
        // An ICMP error reported on the socket says nothing about segmentation.
        assert!(!limit.refused(libc::ECONNREFUSED, 1472));
        assert_eq!(plan(limit, &[(1, 1468), (1, 1468)]), [2]);
        // A route MTU below 1500: 1472-byte segments are refused, smaller still group.
        assert!(limit.refused(libc::EINVAL, 1472));
        assert_eq!(plan(limit, &[(1, 1468), (1, 1468)]), [1, 1]);
        assert_eq!(plan(limit, &[(1, 1428), (1, 1428)]), [2]);
    }

    #[test]
    fn datagrams_without_body_group_too_and_an_empty_queue_has_no_runs() {
        let mut tx = TxQueue::with_capacity(3);
        for _ in 0..3 {
            tx.push_with(|buf| {
                buf[..10].fill(1);
                Some((10, to(5)))
            });
        }
        let mut runs = Vec::new();
        GsoLimit::default().plan(&tx, &mut runs);
        assert_eq!(runs, [3]);
        GsoLimit::default().plan(&TxQueue::with_capacity(1), &mut runs);
        assert!(runs.is_empty());
    }

    #[test]
    fn segment_cmsg_layout() {
        let cmsg = encode_segment_cmsg(1472);
        let word = size_of::<usize>();
        assert_eq!(
            usize::from_ne_bytes(cmsg[..word].try_into().unwrap()),
            CMSG_HDR_LEN + 2
        );
        assert_eq!(
            i32::from_ne_bytes(cmsg[word..word + 4].try_into().unwrap()),
            libc::SOL_UDP
        );
        assert_eq!(
            i32::from_ne_bytes(cmsg[word + 4..word + 8].try_into().unwrap()),
            libc::UDP_SEGMENT
        );
        assert_eq!(
            u16::from_ne_bytes(cmsg[CMSG_HDR_LEN..CMSG_HDR_LEN + 2].try_into().unwrap()),
            1472
        );
    }
}
