//! The read-only TFTP server (RFC 1350, with RFC 2347 options: RFC 2348 `blksize`, RFC
//! 2349 `tsize` and `timeout`, RFC 7440 `windowsize`), sans-IO.
//!
//! [`TftpServer`] owns every transfer and implements [`crate::service::DatagramService`]; the
//! per-transfer state machine is in `session`, option negotiation in `negotiate`, the
//! retransmission timers in `timers`. Files come from a shared [`crate::files::FileSet`]
//! and are never copied per transfer; `netascii` requests get an encoding computed once
//! per file ([`netascii`]).
//!
//! Wiring it up (the binary's job):
//! ```no_run
//! # use std::sync::Arc;
//! # use std::net::{Ipv4Addr, SocketAddrV4};
//! use ironboot_net::files::FileSet;
//! use ironboot_net::tftp::{TftpConfig, TftpCounters, TftpServer};
//! use ironboot_net::udp::{BindSpec, BoundSockets};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = TftpConfig::default();
//! // Port 69 for requests, then a pool of ephemeral ports for transfers.
//! let mut binds = vec![BindSpec::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.port))];
//! binds.extend((0..4).map(|_| BindSpec::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))));
//! let sockets = BoundSockets::open(&binds)?;
//! let pool: Vec<u16> = sockets.local_addrs()[1..].iter().map(|a| a.port()).collect();
//! let counters = Arc::new(TftpCounters::default());
//! let server = TftpServer::new(config, Arc::new(FileSet::new()), &pool, counters)?;
//! // udp::serve_bound(kind, sockets, server, shutdown).await
//! # Ok(()) }
//! ```

pub mod client;
mod config;
mod counters;
/// Property check shared by the `tftp` fuzz target and the corpus replay test.
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod limits;
mod negotiate;
pub mod netascii;
mod server;
mod session;
mod timers;

pub use client::{ClientOptions, TftpClient};
pub use config::{
    ConfigError, DEFAULT_MAX_BLKSIZE, DEFAULT_MAX_PENDING, DEFAULT_MAX_PER_CLIENT,
    DEFAULT_MAX_TIMEOUT_SECS, DEFAULT_MAX_TRANSFERS, DEFAULT_MAX_WINDOWSIZE, DEFAULT_PORT,
    DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_WINDOWSIZE_LIMIT, TftpConfig,
};
pub use counters::{
    HistogramSnapshot, RequestOutcome, TftpCounters, TftpSnapshot, TransferFailure,
};
pub use limits::SharedLimits;
pub use server::TftpServer;
