//! The contract between a sans-IO datagram service and whatever moves its datagrams.
//!
//! A [`DatagramService`] (the ProxyDHCP and TFTP servers) is handed each received datagram
//! with its [`RecvMeta`] and the current time, and writes its replies into a [`TxQueue`]
//! as datagrams with a [`SendMeta`]. The UDP drivers (`udp`, behind the `udp` feature)
//! drive it from sockets; tests, benches and fuzz targets drive it directly. Nothing here
//! does I/O.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use bytes::Bytes;

/// Largest datagram a driver hands to a service. Longer datagrams are dropped and counted
/// (they are truncated by the kernel, so parsing them would read a lie).
pub const MAX_DATAGRAM: usize = 2048;

/// What the kernel told us about one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Sender address and port.
    pub src: SocketAddrV4,
    /// Local address the datagram was addressed to or arrived on (`ipi_spec_dst`): for a
    /// broadcast this is the address of the receiving interface, not 255.255.255.255.
    pub local_addr: Ipv4Addr,
    /// Local UDP port of the socket that received it (67, 4011, ...).
    pub local_port: u16,
    /// Index of the interface the datagram arrived on.
    pub ifindex: u32,
}

/// Where and how to send one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendMeta {
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// Send out of this interface (needed for 255.255.255.255 on multi-homed hosts).
    pub ifindex: Option<u32>,
    /// Source address to use, if it must be pinned.
    pub src_ip: Option<Ipv4Addr>,
    /// Local port of the socket to send from (the reply leaves from the port the request
    /// arrived on).
    pub local_port: u16,
}

/// A sans-IO protocol endpoint driven by a UDP driver.
///
/// The driver calls it from one thread at a time; it must not block or do I/O. Replies go
/// into the [`TxQueue`], which the driver flushes in batches.
pub trait DatagramService: Send + 'static {
    /// Most datagrams one call to [`DatagramService::on_datagram`] or
    /// [`DatagramService::on_timeout`] may queue. The driver makes sure this many slots are
    /// free before each call.
    fn max_sends_per_event(&self) -> usize {
        1
    }

    /// Handle one received datagram.
    fn on_datagram(&mut self, now: Instant, data: &[u8], meta: &RecvMeta, tx: &mut TxQueue);

    /// Handle the deadline returned by [`DatagramService::next_timeout`] having passed.
    fn on_timeout(&mut self, _now: Instant, _tx: &mut TxQueue) {}

    /// The next moment the service wants [`DatagramService::on_timeout`] called, if any.
    fn next_timeout(&self) -> Option<Instant> {
        None
    }

    /// The driver dropped a datagram before the service saw it (too long for
    /// [`MAX_DATAGRAM`], or missing its packet info); services count these.
    fn on_dropped(&mut self, _reason: DriverDrop) {}
}

/// Why a driver dropped a datagram before handing it to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverDrop {
    /// The datagram was longer than [`MAX_DATAGRAM`] and arrived truncated.
    Truncated,
    /// The kernel gave no `IP_PKTINFO` (or a non-IPv4 source) for it.
    NoPacketInfo,
}

/// Largest UDP payload an IPv4 datagram can carry: 65535 minus the IPv4 (20) and UDP (8)
/// headers. [`TxQueue::push_with_body`] refuses anything longer.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Fixed-capacity queue of datagrams to send, with buffers allocated once.
///
/// Services write replies straight into the queue's buffers, so the steady state allocates
/// nothing per packet. A datagram may also carry a shared body ([`TxQueue::push_with_body`]):
/// the driver sends the slot's bytes then the body with one two-element `sendmsg`, so a
/// served file is never copied (the body is a [`Bytes`] slice of it: a reference count).
pub struct TxQueue {
    bufs: Vec<Box<[u8]>>,
    sends: Vec<Queued>,
}

/// One queued datagram: the first `len` bytes of its slot's buffer, then `body`.
struct Queued {
    meta: SendMeta,
    len: usize,
    body: Option<Bytes>,
}

impl TxQueue {
    /// A queue of `capacity` slots of [`MAX_DATAGRAM`] bytes each.
    pub fn with_capacity(capacity: usize) -> Self {
        TxQueue {
            bufs: (0..capacity)
                .map(|_| vec![0u8; MAX_DATAGRAM].into_boxed_slice())
                .collect(),
            sends: Vec::with_capacity(capacity),
        }
    }

    /// Slots still free.
    pub fn remaining(&self) -> usize {
        self.bufs.len() - self.sends.len()
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Offer the next free buffer to `write`, which returns the datagram's length and
    /// destination, or `None` to leave the slot unused. Returns false when the queue is
    /// full (the datagram is not sent; the caller counts it).
    pub fn push_with(
        &mut self,
        write: impl FnOnce(&mut [u8]) -> Option<(usize, SendMeta)>,
    ) -> bool {
        let slot = self.sends.len();
        let Some(buf) = self.bufs.get_mut(slot) else {
            return false;
        };
        if let Some((len, meta)) = write(buf) {
            debug_assert!(len <= MAX_DATAGRAM);
            self.sends.push(Queued {
                meta,
                len: len.min(MAX_DATAGRAM),
                body: None,
            });
        }
        true
    }

    /// Queue a datagram made of a header and a shared body: `write` writes the header into
    /// the next free buffer (at most [`MAX_DATAGRAM`] bytes) and returns its length and the
    /// destination, or `None` to leave the slot unused (`body` is then dropped). On the wire
    /// the datagram is the header bytes followed by `body`, which is never copied: the
    /// queue, then the driver, hold this `Bytes` (a reference, e.g. a [`Bytes::slice`] of a
    /// served file) until the kernel has sent it, and drop it after.
    ///
    /// Returns false, queueing nothing, when the queue is full or when header plus body
    /// would exceed [`MAX_UDP_PAYLOAD`] (65507 bytes; a 4-byte TFTP header leaves room for
    /// a body of up to 65503, more than the largest RFC 2348 block of 65464). An oversized
    /// body is refused before `write` is called; the caller counts both refusals.
    pub fn push_with_body(
        &mut self,
        body: Bytes,
        write: impl FnOnce(&mut [u8]) -> Option<(usize, SendMeta)>,
    ) -> bool {
        let slot = self.sends.len();
        let Some(buf) = self.bufs.get_mut(slot) else {
            return false;
        };
        if body.len() > MAX_UDP_PAYLOAD {
            return false;
        }
        if let Some((len, meta)) = write(buf) {
            debug_assert!(len <= MAX_DATAGRAM);
            let len = len.min(MAX_DATAGRAM);
            if len + body.len() > MAX_UDP_PAYLOAD {
                return false;
            }
            self.sends.push(Queued {
                meta,
                len,
                body: Some(body),
            });
        }
        true
    }

    /// The queued datagrams, in order: destination, the bytes written into the slot (the
    /// whole datagram, or the header when there is a body), and the body if any.
    pub fn iter(&self) -> impl Iterator<Item = (&SendMeta, &[u8], Option<&Bytes>)> {
        self.sends
            .iter()
            .zip(self.bufs.iter())
            .map(|(q, buf)| (&q.meta, &buf[..q.len], q.body.as_ref()))
    }

    /// Forget everything queued (after the driver sent it); drops the bodies.
    pub fn clear(&mut self) {
        self.sends.clear();
    }

    /// Hand every queued datagram to `send` with its buffer, the header length and its body
    /// (moved out), then empty the queue.
    ///
    /// `send` may swap the buffer for another one of [`MAX_DATAGRAM`] bytes: the io_uring
    /// driver trades it for the buffer of a free send slot, so the datagram stays where the
    /// service wrote it until the kernel is done with it, and nothing is copied. It keeps
    /// the body in the same slot for the same reason.
    #[cfg(feature = "udp")]
    pub(crate) fn drain_swap(
        &mut self,
        mut send: impl FnMut(&SendMeta, &mut Box<[u8]>, usize, Option<Bytes>),
    ) {
        for (q, buf) in self.sends.drain(..).zip(self.bufs.iter_mut()) {
            send(&q.meta, buf, q.len, q.body);
            debug_assert_eq!(
                buf.len(),
                MAX_DATAGRAM,
                "a swapped-in buffer must be full size"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn to(port: u16) -> SendMeta {
        SendMeta {
            dst: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            ifindex: None,
            src_ip: None,
            local_port: 69,
        }
    }

    /// A `Bytes` whose owner sets a flag when the last reference is dropped.
    fn tracked(len: usize) -> (Bytes, Arc<AtomicBool>) {
        struct Owner(Vec<u8>, Arc<AtomicBool>);
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl Drop for Owner {
            fn drop(&mut self) {
                self.1.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let data = (0..len).map(|i| i as u8).collect();
        (Bytes::from_owner(Owner(data, dropped.clone())), dropped)
    }

    fn header(buf: &mut [u8], block: u16, port: u16) -> Option<(usize, SendMeta)> {
        buf[..2].copy_from_slice(&3u16.to_be_bytes());
        buf[2..4].copy_from_slice(&block.to_be_bytes());
        Some((4, to(port)))
    }

    #[test]
    fn push_with_body_queues_header_and_shared_body() {
        let (file, dropped) = tracked(70_000);
        let mut tx = TxQueue::with_capacity(3);
        assert!(tx.push_with(|buf| {
            buf[0] = 9;
            Some((1, to(1)))
        }));
        assert!(tx.push_with_body(file.slice(10..522), |buf| header(buf, 1, 2)));
        assert!(tx.push_with_body(Bytes::new(), |buf| header(buf, 2, 3)));
        assert_eq!(tx.remaining(), 0);
        // Full: refused without calling `write`.
        assert!(!tx.push_with_body(file.slice(0..1), |_| unreachable!()));

        let queued: Vec<_> = tx.iter().collect();
        assert_eq!(queued.len(), 3);
        assert_eq!(
            (queued[0].0.dst.port(), queued[0].1, queued[0].2),
            (1, &[9u8][..], None)
        );
        assert_eq!(queued[1].1, [0, 3, 0, 1]);
        let body = queued[1].2.expect("a body");
        assert_eq!(body.as_ptr(), file[10..].as_ptr(), "the body is not copied");
        assert_eq!(&body[..], &file[10..522]);
        assert_eq!(queued[2].2.map(Bytes::len), Some(0));

        drop(file);
        assert!(
            !dropped.load(Ordering::SeqCst),
            "the queue holds a reference"
        );
        tx.clear();
        assert!(dropped.load(Ordering::SeqCst), "clear drops the bodies");
        assert_eq!(tx.remaining(), 3);
    }

    #[test]
    fn push_with_body_refuses_datagrams_over_the_udp_maximum() {
        let (file, dropped) = tracked(MAX_UDP_PAYLOAD + 10);
        let mut tx = TxQueue::with_capacity(4);
        // The body alone is too big: `write` is not even called.
        assert!(!tx.push_with_body(file.slice(..MAX_UDP_PAYLOAD + 1), |_| unreachable!()));
        // Header plus body one byte too many.
        assert!(!tx.push_with_body(file.slice(..MAX_UDP_PAYLOAD - 3), |buf| header(buf, 1, 1)));
        assert!(tx.is_empty(), "nothing was queued");
        // Exactly the maximum fits.
        assert!(tx.push_with_body(file.slice(..MAX_UDP_PAYLOAD - 4), |buf| header(buf, 1, 1)));
        // `write` declining leaves the slot unused and drops the body.
        assert!(tx.push_with_body(file.slice(..1), |_| None));
        assert_eq!(tx.len(), 1);
        let (_, head, body) = tx.iter().next().unwrap();
        assert_eq!(head.len() + body.unwrap().len(), MAX_UDP_PAYLOAD);

        drop(file);
        tx.clear();
        assert!(
            dropped.load(Ordering::SeqCst),
            "refused bodies were dropped too"
        );
    }

    #[cfg(feature = "udp")]
    #[test]
    fn drain_swap_moves_the_bodies_out() {
        let (file, dropped) = tracked(100);
        let mut tx = TxQueue::with_capacity(2);
        tx.push_with(|buf| {
            buf[0] = 1;
            Some((1, to(1)))
        });
        tx.push_with_body(file.slice(5..50), |buf| header(buf, 7, 2));
        drop(file);
        let mut bodies = Vec::new();
        tx.drain_swap(|_, buf, len, body| bodies.push((buf[..len].to_vec(), body)));
        assert!(tx.is_empty());
        assert_eq!(bodies[0], (vec![1], None));
        assert_eq!(bodies[1].0, [0, 3, 0, 7]);
        assert_eq!(
            bodies[1].1.as_deref(),
            Some(&(5..50).collect::<Vec<u8>>()[..])
        );
        assert!(
            !dropped.load(Ordering::SeqCst),
            "the driver now holds the body"
        );
        drop(bodies);
        assert!(dropped.load(Ordering::SeqCst));
    }
}
