//! The io_uring driver, on the `io-uring` crate directly.
//!
//! It runs on its own OS thread, blocked in `io_uring_enter` until a completion or the
//! service's next deadline. Each socket has one multishot `recvmsg` that picks buffers
//! from a registered provided-buffer ring; replies go out as `sendmsg` requests from
//! preallocated slots, all queued in a round submitted by one `io_uring_enter`. Nothing
//! is allocated per packet. Shutdown arrives as a datagram on a socket pair the ring
//! is receiving on.
//!
//! This module (with its children) is the only place in the project allowed `unsafe`:
//! the kernel reads and writes our memory asynchronously, and every block says why the
//! memory it hands over stays valid.

mod bufring;
mod gso_sends;
mod mem;
mod recv_out;
mod ring;
mod send_slots;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

use self::ring::{Sizes, Uring};
use super::socket::BoundSocket;
use super::{ActiveDriver, BoundSockets, DriverStats, Shutdown, UdpError};
use crate::service::DatagramService;

/// How an attempt to serve with io_uring ended.
pub(crate) enum Outcome<S> {
    /// The driver ran (and stopped, or failed).
    Finished(Result<(S, DriverStats), UdpError>),
    /// The kernel refused io_uring before anything was served; everything is handed back
    /// so the caller can fall back.
    Refused {
        reason: String,
        sockets: BoundSockets,
        service: S,
    },
}

/// Probe for io_uring support on a throwaway socket: ring setup, opcodes, buffer ring
/// registration and a multishot `recvmsg`, all torn down again.
pub(crate) fn probe() -> Result<(), String> {
    // Never bound, so nothing can arrive on it.
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| format!("creating a probe socket: {e}"))?;
    let (wake, _wake_tx) =
        UnixDatagram::pair().map_err(|e| format!("creating a probe socket pair: {e}"))?;
    let sockets = [BoundSocket {
        socket,
        local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        ifindex: None,
        capped: Vec::new(),
    }];
    let mut uring = Uring::new(&sockets, wake.as_raw_fd(), &Sizes::PROBE)?;
    let verdict = uring.check_multishot();
    uring.teardown();
    verdict
}

#[cfg(test)]
thread_local! {
    /// Makes [`serve`] on this thread report a refusal with this reason, so the fallback
    /// path can be tested on a kernel that allows io_uring.
    pub(crate) static REFUSE_FOR_TEST: std::cell::Cell<Option<&'static str>> =
        const { std::cell::Cell::new(None) };
}

/// Serve on a dedicated thread; resolves when it stops. If this future is dropped, the
/// thread is told to stop and finishes on its own.
pub(crate) async fn serve<S: DatagramService>(
    sockets: BoundSockets,
    service: S,
    shutdown: &Shutdown,
) -> Outcome<S> {
    #[cfg(test)]
    if let Some(reason) = REFUSE_FOR_TEST.get() {
        return Outcome::Refused {
            reason: reason.to_owned(),
            sockets,
            service,
        };
    }
    let io_err = |op| {
        move |source| {
            Outcome::Finished(Err(UdpError::Io {
                driver: ActiveDriver::IoUring,
                op,
                source,
            }))
        }
    };
    let (wake_rx, wake_tx) = match UnixDatagram::pair() {
        Ok(pair) => pair,
        Err(e) => return io_err("creating the wake-up socket pair")(e),
    };
    let registration = match wake_tx.try_clone() {
        Ok(waker) => shutdown.register_waker(waker),
        Err(e) => return io_err("cloning the wake-up socket")(e),
    };
    let stop_on_drop = StopOnDrop(wake_tx);

    let (done_tx, done_rx) = oneshot::channel();
    let thread_shutdown = shutdown.clone();
    let spawned = std::thread::Builder::new()
        .name("ironboot-uring".to_owned())
        .spawn(move || {
            let outcome = run(sockets, service, wake_rx, &thread_shutdown);
            // The receiver is gone only if `serve` was dropped; nobody wants the result.
            let _ = done_tx.send(outcome);
        });
    if let Err(e) = spawned {
        return Outcome::Finished(Err(UdpError::Spawn(e)));
    }
    // A dropped sender means the thread unwound: the service panicked.
    let outcome = done_rx
        .await
        .unwrap_or(Outcome::Finished(Err(UdpError::DriverPanicked)));
    drop(registration);
    drop(stop_on_drop);
    outcome
}

/// The thread's body: probe, build the ring, serve, tear down.
fn run<S: DatagramService>(
    sockets: BoundSockets,
    mut service: S,
    wake: UnixDatagram,
    shutdown: &Shutdown,
) -> Outcome<S> {
    if let Err(reason) = probe() {
        return Outcome::Refused {
            reason,
            sockets,
            service,
        };
    }
    let mut uring = match Uring::new(&sockets.sockets, wake.as_raw_fd(), &Sizes::SERVE) {
        Ok(uring) => uring,
        Err(reason) => {
            return Outcome::Refused {
                reason,
                sockets,
                service,
            };
        }
    };
    let result = uring.serve(&mut service, shutdown);
    uring.teardown();
    let stats = uring.stats;
    // The ring goes first; the sockets it used are closed after it.
    drop(uring);
    drop((sockets, wake));
    Outcome::Finished(result.map(|()| (service, stats)))
}

/// Wakes the driver thread when the `serve` future goes away, finished or not.
struct StopOnDrop(UnixDatagram);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // Fails harmlessly once the thread has closed its end.
        let _ = self.0.send(&[1]);
    }
}
