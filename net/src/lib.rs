//! ironboot's packet core.
//!
//! Two halves with a wall between them:
//! - sans-IO: [`wire`] (zero-copy views over `&[u8]` and validated representations of
//!   DHCPv4, PXE options and TFTP), [`proxy`] (the ProxyDHCP decision) and [`tftp`] (the
//!   TFTP server's sessions, driven with explicit time). No sockets, no clock reads, no
//!   allocation per packet: bytes, receive metadata and `now` go in, replies are written
//!   into buffers the caller owns. [`files`] holds the served boot files in memory;
//!   [`machine`] validates the identifiers iPXE sends with its boot-script request;
//!   [`cidr`] matches addresses against the allow lists of the flags.
//!   [`service`] is the contract between the two halves: a [`service::DatagramService`]
//!   takes datagrams with their [`service::RecvMeta`] and queues replies in a
//!   [`service::TxQueue`].
//! - I/O (feature `udp`, on by default): `udp` drivers (io_uring and a portable one) that
//!   move datagrams between sockets and a [`service::DatagramService`]. This is the only
//!   place for `unsafe`, and the only code that needs tokio, io-uring, nix, libc or
//!   socket2: without the feature the crate builds without them.
//!
//! Counters are read as plain snapshots ([`proxy::ProxySnapshot`],
//! [`tftp::TftpSnapshot`]); rendering them (Prometheus text) is the binary's job.
//!
//! Feature `fuzzing` adds the property checks the fuzz targets and the corpus replay tests
//! share (`proxy::fuzz`, `tftp::fuzz`, `machine::fuzz`).
#![warn(missing_docs)]

pub mod cidr;
pub mod files;
pub mod log_limit;
pub mod machine;
pub mod proxy;
pub mod service;
pub mod tftp;
#[cfg(feature = "udp")]
pub mod udp;
pub mod wire;
