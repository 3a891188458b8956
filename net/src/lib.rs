//! ironboot's packet core.
//!
//! Two halves with a wall between them:
//! - sans-IO: [`wire`] (zero-copy views over `&[u8]` and validated representations of
//!   DHCPv4 and PXE options) and [`proxy`] (the ProxyDHCP decision). No sockets, no clock
//!   reads, no allocation per packet: bytes and receive metadata go in, a reply is written
//!   into a buffer the caller owns. [`files`] holds the served boot files in memory.
//! - I/O: [`udp`] drivers (io_uring and a portable one) that move datagrams between
//!   sockets and a [`udp::DatagramService`]. This is the only place for `unsafe`.
#![warn(missing_docs)]

pub mod files;
pub mod proxy;
pub mod udp;
pub mod wire;
