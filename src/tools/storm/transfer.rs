//! One transfer over one socket: moves a [`TftpClient`]'s datagrams and wakes it for its
//! timer. All protocol decisions are the client's.
//!
//! Cost per datagram is at most one `recvmsg` and, at the end of a window, one `sendto`:
//! every readiness event drains the socket before going back to the runtime, the receive
//! buffer belongs to the worker, and the timer is re-armed only when it fires (the
//! client's deadline only ever moves later, so an early wake-up just re-arms), not per
//! block. Sockets have `UDP_GRO` on, so a window the server sent as one segmented send
//! arrives as one read, cut back into its datagrams here: the server cannot tell.

use std::io::{self, IoSliceMut};
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::time::Duration;

use ironboot_net::tftp::client::{Status, TftpClient};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Why a transfer ended without the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The client gave up or was refused; its reason label.
    Client(&'static str),
    /// The bytes differ from the --verify file.
    Verify,
    /// A socket call failed.
    Io(io::ErrorKind),
}

impl Failure {
    /// The label failures are counted under.
    pub(crate) fn reason(self) -> String {
        match self {
            Failure::Client(r) => r.to_owned(),
            Failure::Verify => "verify_mismatch".to_owned(),
            Failure::Io(kind) => format!("io_{kind:?}").to_lowercase(),
        }
    }
}

/// Receive buffer size: the largest read `UDP_GRO` can deliver (one IPv4 datagram's worth
/// of coalesced segments).
pub(crate) const GRO_BUFFER: usize = 65_536;

/// One read: `len` bytes from `src`, made of datagrams of `segment` bytes (the last one
/// shorter) when the kernel coalesced several.
struct Read {
    len: usize,
    src: SocketAddrV4,
    segment: Option<usize>,
}

/// `recvmsg` with room for the `UDP_GRO` control message. The control buffer is on the
/// stack: no allocation per read.
fn read(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Read> {
    socket.try_io(Interest::READABLE, || {
        let mut control = [0u8; 64];
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrIn>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut control[..]),
            MsgFlags::empty(),
        )?;
        let segment = msg.cmsgs().ok().and_then(|mut cmsgs| {
            cmsgs.find_map(|c| match c {
                ControlMessageOwned::UdpGroSegments(size) => usize::try_from(size).ok(),
                _ => None,
            })
        });
        let src = msg
            .address
            .map(SocketAddrV4::from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        Ok(Read {
            len: msg.bytes,
            src,
            segment: segment.filter(|&s| s > 0),
        })
    })
}

/// Far enough to mean "never" for a timer that must exist.
const NEVER: Duration = Duration::from_secs(3600);

fn deadline(client: &TftpClient) -> Instant {
    client
        .deadline()
        .map_or_else(|| Instant::now() + NEVER, Instant::from_std)
}

fn client_failure(client: &TftpClient) -> Failure {
    Failure::Client(client.error().map_or("unknown", |e| e.reason()))
}

async fn send(socket: &UdpSocket, dst: SocketAddrV4, bytes: &[u8]) -> Result<(), Failure> {
    socket
        .send_to(bytes, dst)
        .await
        .map(|_| ())
        .map_err(|e| Failure::Io(e.kind()))
}

/// Run `client` to its end on `socket`, handing each run of new bytes to `sink` (which
/// returns false to fail the transfer as [`Failure::Verify`]). `buf` must hold the
/// largest datagram expected (block size + 4); a longer one arrives truncated and the
/// client refuses it as an over-long block.
pub(crate) async fn drive(
    socket: &UdpSocket,
    client: &mut TftpClient,
    buf: &mut [u8],
    mut sink: impl FnMut(u64, &[u8]) -> bool,
) -> Result<(), Failure> {
    let request = client.request();
    send(socket, request.dst, request.bytes).await?;
    let sleep = tokio::time::sleep_until(deadline(client));
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            ready = socket.readable() => {
                ready.map_err(|e| Failure::Io(e.kind()))?;
                // One clock read per batch: the client only needs it for its deadline.
                let now = Instant::now().into_std();
                loop {
                    let got = match read(socket, buf) {
                        Ok(got) => got,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => continue,
                        Err(e) => return Err(Failure::Io(e.kind())),
                    };
                    let segment = got.segment.unwrap_or(got.len).max(1);
                    for datagram in buf[..got.len].chunks(segment) {
                        let step = client.on_datagram(now, got.src, datagram);
                        if !step.data.is_empty() && !sink(step.offset, step.data) {
                            return Err(Failure::Verify);
                        }
                        let status = step.status;
                        if let Some(t) = step.transmit {
                            send(socket, t.dst, t.bytes).await?;
                        }
                        match status {
                            Status::Running => {}
                            Status::Done => return Ok(()),
                            Status::Failed => return Err(client_failure(client)),
                        }
                    }
                }
            }
            () = &mut sleep => {
                if let Some(t) = client.on_timeout(Instant::now().into_std()) {
                    send(socket, t.dst, t.bytes).await?;
                }
                if client.status() == Status::Failed {
                    return Err(client_failure(client));
                }
                sleep.as_mut().reset(deadline(client));
            }
        }
    }
}
