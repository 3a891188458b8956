//! Several instances of a UDP driver serving one service (`--udp-workers`).
//!
//! Each worker is an independent driver with its own sockets and its own service
//! instance; the services share only their `Arc` counters. Unicast ports are opened by
//! every worker with `SO_REUSEPORT`, so the kernel spreads clients among the workers by a
//! hash of the 4-tuple (a client keeps reaching the same worker). A broadcast, though,
//! reaches every socket of a reuse-port group (Linux picks one socket of the group for
//! unicast only), so the broadcast port is one socket duplicated into every worker: each
//! datagram on it is read by exactly one worker.

use ironboot_net::service::DatagramService;
use ironboot_net::udp::{self, BoundSockets, DriverKind, Shutdown};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

/// The UDP drivers' own stop signal, triggered when `token` is cancelled: the drivers
/// check it between batches of datagrams, so none is cut off mid-reply.
pub(crate) fn shutdown_on(token: CancellationToken) -> Shutdown {
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        trigger.trigger();
    });
    shutdown
}

/// One worker's sockets and service instance.
pub(crate) struct Worker<S> {
    pub(crate) sockets: BoundSockets,
    pub(crate) service: S,
}

/// Run every worker with driver `kind` until `shutdown`; each logs its end (driver and
/// counters) naming `service_name` and its index. Resolves with the first worker's
/// failure, or once all have stopped.
pub(crate) async fn run<S: DatagramService>(
    service_name: &'static str,
    kind: DriverKind,
    workers: Vec<Worker<S>>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for (index, worker) in workers.into_iter().enumerate() {
        let span = info_span!("udp_worker", service = service_name, worker = index);
        let shutdown = shutdown.clone();
        tasks.spawn(
            async move {
                let report = udp::serve_bound(kind, worker.sockets, worker.service, shutdown)
                    .await
                    .map_err(|e| {
                        anyhow::Error::new(e)
                            .context(format!("{service_name} UDP driver (worker {index})"))
                    })?;
                info!(
                    worker = index,
                    driver = ?report.driver,
                    stats = ?report.stats,
                    "{service_name} stopped"
                );
                Ok::<_, anyhow::Error>(())
            }
            .instrument(span),
        );
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => result?,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("{service_name} worker"))),
        }
    }
    Ok(())
}
