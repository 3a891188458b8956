//! The portable driver: tokio readiness (epoll) with one `recvmsg` per datagram, drained
//! in batches, and one `sendmsg` per reply.
//!
//! Sockets are registered as `tokio::net::UdpSocket`s: tokio 1.54 made registering a raw
//! descriptor with `AsyncFd` an `unsafe` call, and `unsafe` belongs in the io_uring
//! driver only. `try_io` gives the same readiness handling for our own `recvmsg`.
//!
//! `recvmmsg`/`sendmmsg` through nix were not used: its `MultiHeaders` keeps the kernel's
//! shrunken `msg_controllen` between calls and its results cannot report a partial send
//! count without reading uninitialised addresses. nix's `sendmsg` allocates a control
//! buffer per call, so sends go through socket2 with a control message built on the stack.
#![forbid(unsafe_code)]

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::task::Poll;
use std::time::Instant;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg};
use socket2::{MsgHdr, SockAddr, SockRef};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::gso::{GsoLimit, MAX_SEGMENTS, SEGMENT_CMSG_SPACE, encode_segment_cmsg};
use super::pktinfo::{PKTINFO_CMSG_SPACE, encode_pktinfo_cmsg, send_pktinfo};
use super::socket::SocketTable;
use super::{ActiveDriver, BoundSockets, DriverStats, Shutdown, UdpError, tx_queue_for};
use crate::service::{DatagramService, DriverDrop, MAX_DATAGRAM, RecvMeta, SendMeta, TxQueue};

/// Most datagrams read from one socket before the others get a turn.
const RECV_BATCH: usize = 64;

/// Serve until `shutdown`; returns the service and the counters.
pub(crate) async fn run<S: DatagramService>(
    sockets: BoundSockets,
    mut service: S,
    shutdown: &Shutdown,
) -> Result<(S, DriverStats), UdpError> {
    let table = SocketTable::new(&sockets.sockets);
    let mut ports = Vec::with_capacity(sockets.len());
    let mut fds = Vec::with_capacity(sockets.len());
    for bound in sockets.sockets {
        ports.push(bound.local.port());
        let fd = UdpSocket::from_std(bound.socket.into())
            .map_err(io_error("registering a socket with tokio"))?;
        fds.push(fd);
    }
    let max_sends = service.max_sends_per_event();
    let mut rx = Receiver::new();
    let mut tx = tx_queue_for(&service);
    let mut sender = Sender::default();
    let mut stats = DriverStats::default();

    let mut stop = pin!(shutdown.wait());
    let mut sleep = pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    // Where the readiness scan starts, rotated so one busy socket cannot starve the others.
    let mut first = 0;
    loop {
        let deadline = service.next_timeout();
        if let Some(at) = deadline {
            sleep.as_mut().reset(at.into());
        }
        let wake = poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Shutdown);
            }
            for k in 0..fds.len() {
                let i = (first + k) % fds.len();
                match fds[i].poll_recv_ready(cx) {
                    Poll::Ready(Ok(_)) => return Poll::Ready(Wake::Readable(i)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Wake::Failed(e)),
                    Poll::Pending => {}
                }
            }
            if deadline.is_some() && sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            Poll::Pending
        })
        .await;

        match wake {
            Wake::Shutdown => break,
            Wake::Failed(e) => return Err(io_error("waiting for readiness")(e)),
            Wake::Timer => {}
            Wake::Readable(i) => {
                first = (i + 1) % fds.len();
                let fd = &fds[i];
                let now = Instant::now();
                for _ in 0..RECV_BATCH {
                    let received = match fd.try_io(Interest::READABLE, || rx.recv(fd, ports[i])) {
                        Ok(received) => received,
                        // Drained: tokio cleared the readiness, the next wait re-arms it.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if is_transient(&e) => {
                            stats.recv_errors += 1;
                            continue;
                        }
                        Err(e) => return Err(io_error("recvmsg")(e)),
                    };
                    match received {
                        Received::Dropped(reason) => {
                            match reason {
                                DriverDrop::Truncated => stats.truncated += 1,
                                DriverDrop::NoPacketInfo => stats.no_packet_info += 1,
                            }
                            service.on_dropped(reason);
                        }
                        Received::Datagram { len, meta } => {
                            if tx.remaining() < max_sends {
                                sender.flush(&mut tx, &fds, &table, &mut stats);
                            }
                            stats.received += 1;
                            service.on_datagram(now, &rx.buf[..len], &meta, &mut tx);
                        }
                    }
                }
            }
        }

        if let Some(at) = service.next_timeout() {
            let now = Instant::now();
            if at <= now {
                if tx.remaining() < max_sends {
                    sender.flush(&mut tx, &fds, &table, &mut stats);
                }
                service.on_timeout(now, &mut tx);
            }
        }
        sender.flush(&mut tx, &fds, &table, &mut stats);
    }
    Ok((service, stats))
}

/// What woke the loop.
enum Wake {
    Shutdown,
    Readable(usize),
    Timer,
    Failed(io::Error),
}

/// One `recvmsg`'s outcome.
enum Received {
    Datagram { len: usize, meta: RecvMeta },
    Dropped(DriverDrop),
}

/// The receive buffer and control-message space, allocated once.
struct Receiver {
    buf: Box<[u8]>,
    cmsg: Vec<u8>,
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
            cmsg: nix::cmsg_space!(libc::in_pktinfo),
        }
    }

    fn recv(&mut self, socket: &UdpSocket, local_port: u16) -> io::Result<Received> {
        let mut iov = [IoSliceMut::new(&mut self.buf)];
        let msg = recvmsg::<SockaddrIn>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut self.cmsg[..]),
            MsgFlags::empty(),
        )?;
        // Without MSG_TRUNC in the flags we pass, `bytes` is what fit; the flag on the
        // result says the datagram was longer than MAX_DATAGRAM.
        if msg.flags.contains(MsgFlags::MSG_TRUNC) {
            return Ok(Received::Dropped(DriverDrop::Truncated));
        }
        let info = msg.cmsgs().ok().and_then(|mut cmsgs| {
            cmsgs.find_map(|cmsg| match cmsg {
                ControlMessageOwned::Ipv4PacketInfo(info) => Some(info),
                _ => None,
            })
        });
        let (Some(src), Some(info)) = (msg.address, info) else {
            return Ok(Received::Dropped(DriverDrop::NoPacketInfo));
        };
        Ok(Received::Datagram {
            len: msg.bytes,
            meta: RecvMeta {
                src: SocketAddrV4::from(src),
                local_addr: Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr)),
                local_port,
                ifindex: u32::try_from(info.ipi_ifindex).unwrap_or(0),
            },
        })
    }
}

/// Sends the transmit queue: one `sendmsg` per run of datagrams [`GsoLimit::plan`] groups
/// (a `UDP_SEGMENT` send for a run of two or more), header and body of each datagram as
/// iovecs gathered by the kernel, so bodies are never copied here. A send the kernel
/// refuses (a full send buffer included) is counted and dropped: the bounded queue never
/// waits, and the protocols above retransmit.
#[derive(Default)]
struct Sender {
    gso: GsoLimit,
    /// Run lengths of the queue being flushed (kept to reuse its allocation).
    runs: Vec<usize>,
}

impl Sender {
    fn flush(
        &mut self,
        tx: &mut TxQueue,
        fds: &[UdpSocket],
        table: &SocketTable,
        stats: &mut DriverStats,
    ) {
        self.gso.plan(tx, &mut self.runs);
        let mut queued = tx.iter();
        for &count in &self.runs {
            let mut slices = [IoSlice::new(&[]); 2 * MAX_SEGMENTS];
            // How many of the slices each datagram has (1 or 2), to send them one by one.
            let mut parts = [0u8; MAX_SEGMENTS];
            let mut used = 0;
            let mut first = None;
            for ((meta, head, body), parts) in queued.by_ref().take(count).zip(&mut parts) {
                first.get_or_insert((meta, head.len() + body.map_or(0, |b| b.len())));
                slices[used] = IoSlice::new(head);
                used += 1;
                *parts = 1;
                if let Some(body) = body {
                    slices[used] = IoSlice::new(body);
                    used += 1;
                    *parts = 2;
                }
            }
            let Some((meta, segment)) = first else {
                continue;
            };
            let Some(i) = table.pick(meta.local_port, meta.ifindex) else {
                stats.send_dropped += count as u64;
                continue;
            };
            let socket = SockRef::from(&fds[i]);
            let segmented = (count > 1).then_some(segment);
            match send(&socket, meta, &slices[..used], segmented) {
                Ok(()) => {
                    stats.sent += count as u64;
                    stats.gso_sends += u64::from(count > 1);
                }
                Err(e) if count > 1 && self.gso.refused(e.raw_os_error().unwrap_or(0), segment) => {
                    // Not for the kernel to segment after all: send this run one by one now,
                    // and never group this size again.
                    stats.gso_refused += 1;
                    send_singly(&socket, meta, &slices[..used], &parts[..count], stats);
                }
                Err(_) => stats.send_errors += count as u64,
            }
        }
        drop(queued);
        tx.clear();
    }
}

/// Send a refused run's datagrams one by one; `parts` says how many of `slices` each has.
fn send_singly(
    socket: &SockRef<'_>,
    meta: &SendMeta,
    slices: &[IoSlice<'_>],
    parts: &[u8],
    stats: &mut DriverStats,
) {
    let mut at = 0;
    for &n in parts {
        let n = usize::from(n);
        match send(socket, meta, &slices[at..at + n], None) {
            Ok(()) => stats.sent += 1,
            Err(_) => stats.send_errors += 1,
        }
        at += n;
    }
}

/// One `sendmsg` of `slices` to `meta`'s destination, with its packet info, and cut into
/// `segment`-byte datagrams by the kernel when `segment` is given.
fn send(
    socket: &SockRef<'_>,
    meta: &SendMeta,
    slices: &[IoSlice<'_>],
    segment: Option<usize>,
) -> io::Result<()> {
    let dst = SockAddr::from(meta.dst);
    let mut control = [0u8; PKTINFO_CMSG_SPACE + SEGMENT_CMSG_SPACE];
    let mut control_len = 0;
    if let Some(info) = send_pktinfo(meta) {
        control[..PKTINFO_CMSG_SPACE].copy_from_slice(&encode_pktinfo_cmsg(info));
        control_len = PKTINFO_CMSG_SPACE;
    }
    if let Some(segment) = segment {
        let segment =
            u16::try_from(segment).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        control[control_len..control_len + SEGMENT_CMSG_SPACE]
            .copy_from_slice(&encode_segment_cmsg(segment));
        control_len += SEGMENT_CMSG_SPACE;
    }
    let mut msg = MsgHdr::new().with_addr(&dst).with_buffers(slices);
    if control_len > 0 {
        msg = msg.with_control(&control[..control_len]);
    }
    socket.sendmsg(&msg, 0).map(drop)
}

/// Receive errors that concern one datagram or a passing condition, not the socket.
fn is_transient(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
        || matches!(
            e.raw_os_error(),
            Some(
                libc::ECONNREFUSED
                    | libc::EHOSTUNREACH
                    | libc::ENETUNREACH
                    | libc::ENOBUFS
                    | libc::ENOMEM
            )
        )
}

fn io_error(op: &'static str) -> impl Fn(io::Error) -> UdpError {
    move |source| UdpError::Io {
        driver: ActiveDriver::Portable,
        op,
        source,
    }
}
