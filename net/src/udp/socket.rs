//! Opening the UDP sockets both drivers serve, from one description.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::SocketAddrV4;

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

/// One UDP socket to open: where to bind it and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    /// Local address and port (`0.0.0.0:67` to hear broadcasts; port 0 for an ephemeral one).
    pub addr: SocketAddrV4,
    /// Interface to bind to (`SO_BINDTODEVICE`), so the socket only hears that interface.
    pub device: Option<String>,
    /// Allow sending to broadcast addresses (`SO_BROADCAST`).
    pub broadcast: bool,
}

impl BindSpec {
    /// A spec for `addr` with no device and no broadcast.
    pub fn new(addr: SocketAddrV4) -> Self {
        BindSpec {
            addr,
            device: None,
            broadcast: false,
        }
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
    /// The bound address could not be read back (needed for ephemeral ports).
    #[error("reading the local address of the UDP socket bound to {addr} failed")]
    LocalAddr {
        /// The address it was bound to.
        addr: SocketAddrV4,
        /// The OS error, or `InvalidData` when the address is not IPv4.
        source: io::Error,
    },
}

/// One open socket, with what the drivers need to know about it.
pub(crate) struct BoundSocket {
    pub(crate) socket: Socket,
    /// The address actually bound (the ephemeral port resolved).
    pub(crate) local: SocketAddrV4,
    /// Index of the device the socket is bound to, if any.
    pub(crate) ifindex: Option<u32>,
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
    // Reuse flags let several servers (or a restarted one) share a well-known port. An
    // ephemeral port has a single owner by definition, and with the flags set the kernel
    // may hand out a port another reuse socket already holds, so they are skipped there.
    if addr.port() != 0 {
        socket
            .set_reuse_address(true)
            .map_err(opt("SO_REUSEADDR"))?;
        socket.set_reuse_port(true).map_err(opt("SO_REUSEPORT"))?;
    }
    if spec.broadcast {
        socket.set_broadcast(true).map_err(opt("SO_BROADCAST"))?;
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
    })
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

    #[test]
    fn prefers_unbound_socket_for_foreign_interface() {
        let t = table(&[(67, Some(2)), (67, None)]);
        assert_eq!(t.pick(67, Some(5)), Some(1));
        assert_eq!(t.pick(67, None), Some(1));
    }
}
