//! What a driver run produced, and how it can fail.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;

use super::socket::SocketError;

/// The driver that actually served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActiveDriver {
    /// The io_uring driver.
    IoUring,
    /// The portable tokio driver.
    Portable,
}

impl fmt::Display for ActiveDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActiveDriver::IoUring => "io-uring",
            ActiveDriver::Portable => "portable",
        })
    }
}

/// Counters a driver keeps while serving (cheap, per datagram; never logged per packet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Datagrams handed to the service.
    pub received: u64,
    /// Datagrams dropped as too long for [`MAX_DATAGRAM`](crate::service::MAX_DATAGRAM).
    pub truncated: u64,
    /// Datagrams dropped for lack of packet info or an IPv4 source.
    pub no_packet_info: u64,
    /// Times the driver held received datagrams back because too few send slots were free
    /// for their replies (io_uring back-pressure; they are delivered once sends complete).
    pub recv_deferred: u64,
    /// Receive errors the driver survived (e.g. `ENOMEM`, ICMP-reported errors).
    pub recv_errors: u64,
    /// Datagrams the kernel accepted for sending.
    pub sent: u64,
    /// `sendmsg` calls that carried a run of datagrams for the kernel to segment
    /// (`UDP_SEGMENT`); their datagrams count in `sent` one by one.
    pub gso_sends: u64,
    /// Segmented sends the kernel refused (then sent one by one, or lost and retransmitted
    /// by the protocol); after one, that segment size is no longer grouped.
    pub gso_refused: u64,
    /// Sends the kernel refused (e.g. `EAGAIN` with a full send buffer, unreachable).
    pub send_errors: u64,
    /// Sends dropped before reaching the kernel: no socket on the requested local port, or
    /// no free send slot.
    pub send_dropped: u64,
}

/// How a [`serve`](super::serve) call ended.
#[derive(Debug)]
pub struct DriverReport<S> {
    /// The driver that ran.
    pub driver: ActiveDriver,
    /// Why io_uring was not used, when [`DriverKind::Auto`](super::DriverKind::Auto) fell
    /// back to the portable driver.
    pub fallback_reason: Option<String>,
    /// Counters for the run.
    pub stats: DriverStats,
    /// The service, handed back with whatever state it accumulated.
    pub service: S,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// There was nothing to serve.
    #[error("no UDP sockets to serve: the bind list is empty")]
    NoBinds,
    /// A socket could not be opened.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// io_uring was explicitly requested and the kernel (or a sandbox) refused it.
    #[error("the io_uring UDP driver was requested but is unavailable: {reason}")]
    IoUringUnavailable {
        /// What was refused, e.g. `io_uring_setup: Operation not permitted`.
        reason: String,
    },
    /// A driver hit an I/O error it cannot recover from.
    #[error("{driver} UDP driver: {op} failed")]
    Io {
        /// The driver.
        driver: ActiveDriver,
        /// The failed operation, e.g. `recvmsg`.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The io_uring driver thread could not be started.
    #[error("starting the io_uring UDP driver thread failed")]
    Spawn(#[source] io::Error),
    /// The io_uring driver thread panicked (a panic in the service, most likely).
    #[error("the io_uring UDP driver thread panicked")]
    DriverPanicked,
}
