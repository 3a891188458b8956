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
//! - I/O: [`udp`] drivers (io_uring and a portable one) that move datagrams between
//!   sockets and a [`udp::DatagramService`]. This is the only place for `unsafe`.
#![warn(missing_docs)]

pub mod cidr;
pub mod files;
pub mod machine;
pub mod proxy;
pub mod tftp;
pub mod udp;
pub mod wire;
