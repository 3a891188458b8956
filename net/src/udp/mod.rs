//! UDP I/O drivers: move datagrams between sockets and a sans-IO [`DatagramService`]
//! (the contract, with the receive and send metadata and the transmit queue, is in
//! [`crate::service`], on the sans-IO side of the crate).
//!
//! Two drivers implement the same contract:
//! - `uring`: io_uring with multishot receive into a provided-buffer ring and batched sends;
//! - `portable`: tokio readiness plus `recvmsg`/`sendmsg`, for kernels or sandboxes that
//!   refuse io_uring (Docker's default seccomp profile does).
//!
//! Both report, for every datagram, the local address it arrived on and the interface
//! (`IP_PKTINFO`), because a ProxyDHCP server must name itself (option 54) with the address
//! of the interface a broadcast came in on.
//!
//! Entry points: [`serve`] (or [`BoundSockets::open`] then [`serve_bound`]) with a
//! [`DriverKind`] and a [`Shutdown`] handle; [`io_uring_available`] to probe the kernel.
//! Both drivers open their sockets the same way, from [`BindSpec`]s.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use crate::service::{DatagramService, TxQueue};

mod gso;
mod pktinfo;
mod portable;
mod report;
mod shutdown;
mod socket;
mod uring;

pub use report::{ActiveDriver, DriverReport, DriverStats, UdpError};
pub use shutdown::Shutdown;
pub use socket::{BindSpec, BoundSockets, CappedBuffer, SocketError, capped_buffers};

/// Datagrams the drivers let a service queue before flushing, at least (more if the service
/// asks for more per event): enough to batch a round of replies into one submission, and a
/// bound on what one round holds.
pub(crate) const TX_BATCH: usize = 64;

/// The transmit queue a driver gives `service`: room for one event's worth of sends, and
/// at least a batch.
fn tx_queue_for(service: &impl DatagramService) -> TxQueue {
    TxQueue::with_capacity(service.max_sends_per_event().max(TX_BATCH))
}

/// Which UDP driver to run (the `--udp-driver` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DriverKind {
    /// io_uring where the kernel allows it, else the portable driver.
    #[default]
    Auto,
    /// io_uring, or fail.
    IoUring,
    /// The portable tokio driver.
    Portable,
}

impl DriverKind {
    /// The accepted flag values, for help texts.
    pub const VALUES: [&'static str; 3] = ["auto", "io-uring", "portable"];
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::Auto => "auto",
            DriverKind::IoUring => "io-uring",
            DriverKind::Portable => "portable",
        })
    }
}

/// A `--udp-driver` value that names no driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown UDP driver {input:?}: expected auto, io-uring or portable")]
pub struct ParseDriverKindError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for DriverKind {
    type Err = ParseDriverKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DriverKind::Auto),
            // `io_uring` is how the kernel spells it; accept both.
            "io-uring" | "io_uring" => Ok(DriverKind::IoUring),
            "portable" => Ok(DriverKind::Portable),
            _ => Err(ParseDriverKindError {
                input: s.to_owned(),
            }),
        }
    }
}

/// Whether the io_uring driver can run here: the ring can be created, the opcodes it uses
/// are supported, and a multishot receive into a provided-buffer ring is accepted. Costs a
/// few system calls. `Err` says what was refused.
pub fn io_uring_available() -> Result<(), IoUringUnavailable> {
    uring::probe().map_err(|reason| IoUringUnavailable { reason })
}

/// Why the io_uring driver cannot run here (the kernel, or a sandbox, refused a step).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct IoUringUnavailable {
    /// What was refused, as the fallback report gives it.
    pub reason: String,
}

/// Open a socket for every spec, then [`serve_bound`] them.
///
/// The sockets are opened when this is called, not when the future is first polled, so
/// the future borrows nothing (it can be spawned) and datagrams sent after this returns
/// are queued for the driver. Bind errors are reported by the future.
pub fn serve<S: DatagramService>(
    kind: DriverKind,
    binds: &[BindSpec],
    service: S,
    shutdown: Shutdown,
) -> impl Future<Output = Result<DriverReport<S>, UdpError>> + Send + 'static {
    let sockets = if binds.is_empty() {
        Err(UdpError::NoBinds)
    } else {
        BoundSockets::open(binds).map_err(UdpError::from)
    };
    async move { serve_bound(kind, sockets?, service, shutdown).await }
}

/// Serve `service` on `sockets` with the driver `kind` asks for, until `shutdown` is
/// triggered (or this future is dropped; the io_uring thread then stops on its own).
///
/// [`DriverKind::Auto`] tries io_uring and, if the kernel refuses it, logs one warning and
/// runs the portable driver on the same sockets. [`DriverKind::IoUring`] fails instead.
/// Must be called within a tokio runtime with I/O and time enabled.
pub async fn serve_bound<S: DatagramService>(
    kind: DriverKind,
    sockets: BoundSockets,
    service: S,
    shutdown: Shutdown,
) -> Result<DriverReport<S>, UdpError> {
    if sockets.is_empty() {
        return Err(UdpError::NoBinds);
    }
    let (sockets, service, fallback_reason) = match kind {
        DriverKind::Portable => (sockets, service, None),
        DriverKind::IoUring | DriverKind::Auto => {
            match uring::serve(sockets, service, &shutdown).await {
                uring::Outcome::Finished(result) => {
                    let (service, stats) = result?;
                    return Ok(DriverReport {
                        driver: ActiveDriver::IoUring,
                        fallback_reason: None,
                        stats,
                        service,
                    });
                }
                uring::Outcome::Refused { reason, .. } if kind == DriverKind::IoUring => {
                    return Err(UdpError::IoUringUnavailable { reason });
                }
                uring::Outcome::Refused {
                    reason,
                    sockets,
                    service,
                } => {
                    tracing::warn!(%reason, "io_uring refused; serving UDP with the portable driver");
                    (sockets, service, Some(reason))
                }
            }
        }
    };
    let (service, stats) = portable::run(sockets, service, &shutdown).await?;
    Ok(DriverReport {
        driver: ActiveDriver::Portable,
        fallback_reason,
        stats,
        service,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::service::{RecvMeta, SendMeta};

    /// Echoes every datagram back to its sender.
    #[derive(Debug)]
    struct Echo;

    impl DatagramService for Echo {
        fn on_datagram(&mut self, _: Instant, data: &[u8], meta: &RecvMeta, tx: &mut TxQueue) {
            tx.push_with(|buf| {
                buf[..data.len()].copy_from_slice(data);
                let dst = meta.src;
                let local_port = meta.local_port;
                Some((
                    data.len(),
                    SendMeta {
                        dst,
                        ifindex: None,
                        src_ip: None,
                        local_port,
                    },
                ))
            });
        }
    }

    /// Counts log events at INFO or above.
    struct CountEvents(Arc<AtomicUsize>);

    impl tracing::Subscriber for CountEvents {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() <= tracing::Level::INFO {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    fn loopback_sockets() -> (BoundSockets, SocketAddrV4) {
        let spec = BindSpec::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        let sockets = BoundSockets::open(&[spec]).unwrap();
        let addr = sockets.local_addrs()[0];
        (sockets, addr)
    }

    #[tokio::test]
    async fn auto_falls_back_with_one_log_line_when_io_uring_is_refused() {
        uring::REFUSE_FOR_TEST.set(Some("refused by the test"));
        let events = Arc::new(AtomicUsize::new(0));
        let _log = tracing::subscriber::set_default(CountEvents(events.clone()));
        let (sockets, addr) = loopback_sockets();
        let shutdown = Shutdown::new();
        let client = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();

        let exchange = async {
            client.send_to(b"fallback", addr).await.unwrap();
            let mut buf = [0u8; 16];
            let wait = Duration::from_secs(5);
            let (n, _) = tokio::time::timeout(wait, client.recv_from(&mut buf))
                .await
                .expect("the fallback driver answers")
                .unwrap();
            shutdown.trigger();
            buf[..n].to_vec()
        };
        let (report, echoed) = tokio::join!(
            serve_bound(DriverKind::Auto, sockets, Echo, shutdown.clone()),
            exchange
        );
        uring::REFUSE_FOR_TEST.set(None);

        let report = report.unwrap();
        assert_eq!(echoed, b"fallback");
        assert_eq!(report.driver, ActiveDriver::Portable);
        assert_eq!(
            report.fallback_reason.as_deref(),
            Some("refused by the test")
        );
        assert_eq!(
            events.load(Ordering::SeqCst),
            1,
            "exactly one log line says why"
        );
    }

    #[tokio::test]
    async fn explicit_io_uring_refused_is_an_error_naming_the_cause() {
        uring::REFUSE_FOR_TEST.set(Some("io_uring_setup: Operation not permitted"));
        let (sockets, _) = loopback_sockets();
        let result = serve_bound(DriverKind::IoUring, sockets, Echo, Shutdown::new()).await;
        uring::REFUSE_FOR_TEST.set(None);

        let err = result.unwrap_err();
        assert!(
            matches!(err, UdpError::IoUringUnavailable { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("Operation not permitted"), "{err}");
    }
}
