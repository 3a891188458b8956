//! Opening the UDP sockets both drivers serve, from one description.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use nix::errno::Errno;
use nix::sys::socket::{SetSockOpt, setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

/// One UDP socket to open: where to bind it and how.
///
/// Build one with [`BindSpec::new`] (or [`Default`], `0.0.0.0:0`) and the `with_*`
/// methods, or as a literal ending in `..BindSpec::default()`, so fields added later do not
/// break callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    /// Local address and port (`0.0.0.0:67` to hear broadcasts; port 0 for an ephemeral one).
    pub addr: SocketAddrV4,
    /// Interface to bind to (`SO_BINDTODEVICE`), so the socket only hears that interface.
    pub device: Option<String>,
    /// Allow sending to broadcast addresses (`SO_BROADCAST`).
    pub broadcast: bool,
    /// Receive buffer size in bytes (`SO_RCVBUF`), to ride out PXE storms; `None` keeps
    /// the system default. The kernel doubles the value for its bookkeeping and caps it at
    /// `net.core.rmem_max` unless the process may use `SO_RCVBUFFORCE` (`CAP_NET_ADMIN`),
    /// which is tried first.
    pub recv_buffer: Option<usize>,
    /// Send buffer size in bytes (`SO_SNDBUF`); `None` keeps the system default. As for
    /// `recv_buffer`, with `SO_SNDBUFFORCE` tried first and `net.core.wmem_max` the cap.
    pub send_buffer: Option<usize>,
    /// Share the port (`SO_REUSEADDR` and `SO_REUSEPORT`, set before `bind`) with other
    /// sockets that set it too: a restarted server, or the other workers of this one. The
    /// kernel then spreads unicast datagrams among the group by a hash of their 4-tuple (a
    /// client keeps reaching the same socket), while every broadcast or multicast datagram
    /// reaches every socket of the group. On by default; only applied to a fixed port (an
    /// ephemeral port has one owner, and with the flags the kernel may hand out a port
    /// another reuse socket holds). Off, a second bind on the port fails.
    pub reuse_port: bool,
}

impl BindSpec {
    /// A spec for `addr` with no device, no broadcast, default buffer sizes, and the port
    /// shared with other `SO_REUSEPORT` sockets if it is a fixed one.
    pub fn new(addr: SocketAddrV4) -> Self {
        BindSpec {
            addr,
            device: None,
            broadcast: false,
            recv_buffer: None,
            send_buffer: None,
            reuse_port: true,
        }
    }

    /// Share the port with other sockets that ask for it (`SO_REUSEPORT`), or not; see
    /// [`BindSpec::reuse_port`].
    pub fn with_reuse_port(mut self, reuse_port: bool) -> Self {
        self.reuse_port = reuse_port;
        self
    }

    /// Bind to interface `device` (`SO_BINDTODEVICE`).
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// Allow (or not) sending to broadcast addresses (`SO_BROADCAST`).
    pub fn with_broadcast(mut self, broadcast: bool) -> Self {
        self.broadcast = broadcast;
        self
    }

    /// Ask for a receive buffer of `bytes` (`SO_RCVBUF`).
    pub fn with_recv_buffer(mut self, bytes: usize) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }

    /// Ask for a send buffer of `bytes` (`SO_SNDBUF`).
    pub fn with_send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = Some(bytes);
        self
    }
}

impl Default for BindSpec {
    /// `0.0.0.0:0`, as [`BindSpec::new`] makes it.
    fn default() -> Self {
        BindSpec::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// Why a socket could not be opened; each variant names the address or device involved.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// `socket(2)` failed.
    #[error("creating the UDP socket for {addr} failed")]
    Create {
        /// The address the socket was for.
        addr: SocketAddrV4,
        /// The OS error.
        source: io::Error,
    },
    /// A socket option could not be set.
    #[error("setting {option} on the UDP socket for {addr} failed")]
    SetOption {
        /// The address the socket was for.
        addr: SocketAddrV4,
        /// The option, e.g. `SO_REUSEPORT`.
        option: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// `SO_BINDTODEVICE` failed (unknown interface, or missing privilege).
    #[error("binding the UDP socket for {addr} to device {device:?} failed")]
    BindToDevice {
        /// The interface name.
        device: String,
        /// The address the socket was for.
        addr: SocketAddrV4,
        /// The OS error.
        source: io::Error,
    },
    /// `bind(2)` failed (address in use, not a local address, privileged port, ...).
    #[error("binding the UDP socket to {addr} failed")]
    Bind {
        /// The address.
        addr: SocketAddrV4,
        /// The OS error.
        source: io::Error,
    },
    /// The socket could not be duplicated (`dup`) to share it with another driver.
    #[error("duplicating the UDP socket bound to {addr} failed")]
    Duplicate {
        /// The address the socket is bound to.
        addr: SocketAddrV4,
        /// The OS error.
        source: io::Error,
    },
    /// The bound address could not be read back (needed for ephemeral ports).
    #[error("reading the local address of the UDP socket bound to {addr} failed")]
    LocalAddr {
        /// The address it was bound to.
        addr: SocketAddrV4,
        /// The OS error, or `InvalidData` when the address is not IPv4.
        source: io::Error,
    },
}

/// A buffer size the kernel cut short: `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE` was refused
/// (the process lacks `CAP_NET_ADMIN`), and the plain option is capped at
/// `net.core.rmem_max` / `wmem_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CappedBuffer {
    /// `SO_RCVBUF` or `SO_SNDBUF`.
    pub option: &'static str,
    /// Bytes asked for.
    pub requested: usize,
    /// Bytes granted: what the kernel reports, halved (it doubles the value it is given
    /// for its own bookkeeping), so comparable with `requested`.
    pub granted: usize,
}

/// One open socket, with what the drivers need to know about it.
pub(crate) struct BoundSocket {
    pub(crate) socket: Socket,
    /// The address actually bound (the ephemeral port resolved).
    pub(crate) local: SocketAddrV4,
    /// Index of the device the socket is bound to, if any.
    pub(crate) ifindex: Option<u32>,
    /// Buffer sizes the kernel capped when the socket was opened.
    pub(crate) capped: Vec<CappedBuffer>,
}

/// Sockets opened from [`BindSpec`]s, ready to hand to a driver.
///
/// Opening them before choosing a driver lets a caller learn ephemeral ports, and lets the
/// driver layer fall back from io_uring to the portable driver without rebinding.
pub struct BoundSockets {
    pub(crate) sockets: Vec<BoundSocket>,
}

impl fmt::Debug for BoundSockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.sockets.iter().map(|s| s.local))
            .finish()
    }
}

impl BoundSockets {
    /// Open and bind one socket per spec, in order. Fails on the first spec that cannot be
    /// opened; sockets already opened are closed.
    pub fn open(binds: &[BindSpec]) -> Result<Self, SocketError> {
        let sockets = binds.iter().map(open).collect::<Result<_, _>>()?;
        Ok(BoundSockets { sockets })
    }

    /// The local addresses, in the order of the specs (ephemeral ports resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddrV4> {
        self.sockets.iter().map(|s| s.local).collect()
    }

    /// What the kernel reports as each socket's receive and send buffer size
    /// (`SO_RCVBUF`, `SO_SNDBUF`), in the order of the specs: twice what was asked (the
    /// kernel's bookkeeping share), capped unless forced. For logging how much a PXE storm
    /// can queue.
    pub fn buffer_sizes(&self) -> io::Result<Vec<(usize, usize)>> {
        self.sockets
            .iter()
            .map(|s| Ok((s.socket.recv_buffer_size()?, s.socket.send_buffer_size()?)))
            .collect()
    }

    /// Duplicate every socket (`dup`): the copies share the originals' queues, so each
    /// datagram is read by exactly one of the drivers serving them. This is how several
    /// workers share a broadcast port: a broadcast reaches every socket bound to the
    /// port, one shared socket hands each one to a single worker. Both drivers tolerate
    /// another reader on their sockets (a wake-up that finds the queue empty is ignored).
    pub fn try_clone(&self) -> Result<Self, SocketError> {
        let sockets = self
            .sockets
            .iter()
            .map(|s| {
                Ok(BoundSocket {
                    socket: s
                        .socket
                        .try_clone()
                        .map_err(|source| SocketError::Duplicate {
                            addr: s.local,
                            source,
                        })?,
                    local: s.local,
                    ifindex: s.ifindex,
                    capped: s.capped.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(BoundSockets { sockets })
    }

    /// Append `other`'s sockets after these (for [`BoundSockets::local_addrs`] order).
    pub fn append(&mut self, other: BoundSockets) {
        self.sockets.extend(other.sockets);
    }

    /// Number of sockets.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether there are no sockets.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// Open one socket: non-blocking, with `IP_PKTINFO` so every datagram says where it
/// arrived, bound to its device (before `bind`, so the port is shared per device) and
/// address.
fn open(spec: &BindSpec) -> Result<BoundSocket, SocketError> {
    let addr = spec.addr;
    let opt = |option: &'static str| {
        move |source| SocketError::SetOption {
            addr,
            option,
            source,
        }
    };

    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|source| SocketError::Create { addr, source })?;
    // Reuse flags let several servers (or a restarted one, or several workers) share a
    // well-known port. An ephemeral port has a single owner by definition, and with the
    // flags set the kernel may hand out a port another reuse socket already holds, so they
    // are skipped there.
    if spec.reuse_port && addr.port() != 0 {
        socket
            .set_reuse_address(true)
            .map_err(opt("SO_REUSEADDR"))?;
        socket.set_reuse_port(true).map_err(opt("SO_REUSEPORT"))?;
    }
    if spec.broadcast {
        socket.set_broadcast(true).map_err(opt("SO_BROADCAST"))?;
    }
    let mut capped = Vec::new();
    if let Some(bytes) = spec.recv_buffer {
        let (force, plain, size) = (
            sockopt::RcvBufForce,
            sockopt::RcvBuf,
            Socket::recv_buffer_size,
        );
        capped.extend(
            set_buffer(&socket, bytes, "SO_RCVBUF", force, plain, size)
                .map_err(opt("SO_RCVBUF"))?,
        );
    }
    if let Some(bytes) = spec.send_buffer {
        let (force, plain, size) = (
            sockopt::SndBufForce,
            sockopt::SndBuf,
            Socket::send_buffer_size,
        );
        capped.extend(
            set_buffer(&socket, bytes, "SO_SNDBUF", force, plain, size)
                .map_err(opt("SO_SNDBUF"))?,
        );
    }
    setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)
        .map_err(|errno| opt("IP_PKTINFO")(io::Error::from(errno)))?;
    socket.set_nonblocking(true).map_err(opt("O_NONBLOCK"))?;

    let ifindex = match &spec.device {
        None => None,
        Some(device) => {
            let bind_err = |source| SocketError::BindToDevice {
                device: device.clone(),
                addr,
                source,
            };
            socket
                .bind_device(Some(device.as_bytes()))
                .map_err(bind_err)?;
            let index = nix::net::if_::if_nametoindex(device.as_str())
                .map_err(|errno| bind_err(io::Error::from(errno)))?;
            Some(index)
        }
    };

    socket
        .bind(&addr.into())
        .map_err(|source| SocketError::Bind { addr, source })?;
    let local = socket
        .local_addr()
        .and_then(|a| {
            a.as_socket_ipv4()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IPv4 address"))
        })
        .map_err(|source| SocketError::LocalAddr { addr, source })?;

    Ok(BoundSocket {
        socket,
        local,
        ifindex,
        capped,
    })
}

/// Set buffer `option` to `bytes` with its `*FORCE` variant, which passes the
/// `net.core.*mem_max` cap (needs `CAP_NET_ADMIN`), or else with the plain one, which the
/// kernel caps without a word. In that case the size granted is read back with `size`
/// (the kernel reports twice the usable size), and `Some` says so when it is below
/// `bytes`.
fn set_buffer<F, P>(
    socket: &Socket,
    bytes: usize,
    option: &'static str,
    force: F,
    plain: P,
    size: fn(&Socket) -> io::Result<usize>,
) -> io::Result<Option<CappedBuffer>>
where
    F: SetSockOpt<Val = usize>,
    P: SetSockOpt<Val = usize>,
{
    match setsockopt(socket, force, &bytes) {
        Ok(()) => return Ok(None),
        Err(Errno::EPERM) => setsockopt(socket, plain, &bytes).map_err(io::Error::from)?,
        Err(errno) => return Err(io::Error::from(errno)),
    }
    let granted = size(socket)? / 2;
    Ok((granted < bytes).then_some(CappedBuffer {
        option,
        requested: bytes,
        granted,
    }))
}

/// The buffer sizes the kernel capped on any of these sockets (a service's workers'
/// sets): one entry per option (`SO_RCVBUF`, `SO_SNDBUF`) with the smallest grant, in the
/// order the options first appear; empty when every request was met. A service logs it
/// once, whatever its number of workers and sockets.
pub fn capped_buffers<'a>(sets: impl IntoIterator<Item = &'a BoundSockets>) -> Vec<CappedBuffer> {
    let mut merged: Vec<CappedBuffer> = Vec::new();
    let all = sets
        .into_iter()
        .flat_map(|set| set.sockets.iter().flat_map(|s| s.capped.iter().copied()));
    for c in all {
        match merged.iter_mut().find(|m| m.option == c.option) {
            Some(m) => {
                m.requested = m.requested.max(c.requested);
                m.granted = m.granted.min(c.granted);
            }
            None => merged.push(c),
        }
    }
    merged
}

/// Which socket a reply leaves from: the one on the requested local port, preferring the
/// one bound to the requested interface when several share the port (one per device).
pub(crate) struct SocketTable {
    entries: Vec<(u16, Option<u32>)>,
}

impl SocketTable {
    pub(crate) fn new(sockets: &[BoundSocket]) -> Self {
        SocketTable {
            entries: sockets
                .iter()
                .map(|s| (s.local.port(), s.ifindex))
                .collect(),
        }
    }

    pub(crate) fn pick(&self, local_port: u16, ifindex: Option<u32>) -> Option<usize> {
        let mut fallback = None;
        for (i, &(port, bound_if)) in self.entries.iter().enumerate() {
            if port != local_port {
                continue;
            }
            if bound_if.is_some() && bound_if == ifindex {
                return Some(i);
            }
            // An unbound socket can send out of any interface; a socket bound to another
            // device is only a last resort (the kernel will send out of its device).
            let unbound = bound_if.is_none();
            match fallback {
                None => fallback = Some((i, unbound)),
                Some((_, false)) if unbound => fallback = Some((i, unbound)),
                _ => {}
            }
        }
        fallback.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(u16, Option<u32>)]) -> SocketTable {
        SocketTable {
            entries: entries.to_vec(),
        }
    }

    #[test]
    fn picks_by_port_then_interface() {
        let t = table(&[(67, Some(2)), (67, Some(3)), (4011, None)]);
        assert_eq!(t.pick(67, Some(3)), Some(1));
        assert_eq!(t.pick(67, Some(2)), Some(0));
        assert_eq!(t.pick(4011, Some(9)), Some(2));
        assert_eq!(t.pick(69, None), None);
        // Unknown interface on a port only device-bound sockets hold: first one.
        assert_eq!(t.pick(67, Some(9)), Some(0));
    }

    /// A fixed loopback port nobody holds right now (from an ephemeral bind, released).
    fn free_port() -> SocketAddrV4 {
        let probe = BoundSockets::open(&[BindSpec::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))])
            .unwrap();
        probe.local_addrs()[0]
    }

    #[test]
    fn reuse_port_shares_a_fixed_port_and_without_it_the_port_is_exclusive() {
        let addr = free_port();
        let spec = BindSpec::new(addr);
        assert!(spec.reuse_port, "on by default");
        let first = BoundSockets::open(&[spec.clone(), spec.clone()]).unwrap();
        assert_eq!(first.local_addrs(), [addr, addr]);
        // A socket without the flag cannot join the group.
        let err = BoundSockets::open(&[spec.clone().with_reuse_port(false)]).unwrap_err();
        assert!(
            matches!(err, SocketError::Bind { addr: a, .. } if a == addr),
            "{err}"
        );
        drop(first);

        let addr = free_port();
        let exclusive = BindSpec::new(addr).with_reuse_port(false);
        let _held = BoundSockets::open(std::slice::from_ref(&exclusive)).unwrap();
        let err = BoundSockets::open(&[BindSpec::new(addr)]).unwrap_err();
        assert!(matches!(err, SocketError::Bind { .. }), "{err}");
    }

    #[test]
    fn a_cloned_socket_shares_the_queue_so_each_datagram_is_read_once() {
        let mut original =
            BoundSockets::open(&[BindSpec::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))])
                .unwrap();
        let clone = original.try_clone().unwrap();
        assert_eq!(clone.local_addrs(), original.local_addrs());
        let to = original.local_addrs()[0];
        let client = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        client.send_to(b"one", to).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut buf = [std::mem::MaybeUninit::new(0u8); 16];
        assert_eq!(clone.sockets[0].socket.recv(&mut buf).unwrap(), 3);
        let again = original.sockets[0].socket.recv(&mut buf).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::WouldBlock, "read once only");

        let other = BoundSockets::open(&[BindSpec::default()]).unwrap();
        original.append(other);
        assert_eq!(original.len(), 2);
        assert_eq!(original.local_addrs()[0], to);
    }

    #[test]
    fn prefers_unbound_socket_for_foreign_interface() {
        let t = table(&[(67, Some(2)), (67, None)]);
        assert_eq!(t.pick(67, Some(5)), Some(1));
        assert_eq!(t.pick(67, None), Some(1));
    }
}
