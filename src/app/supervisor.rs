//! The one way ironboot stops: a tree of cancellation tokens, one per stage, and a
//! supervisor that cancels the stages in order, joining each stage's services with a
//! bounded grace before the next.
//!
//! The order, and why:
//! 1. [`Stage::Edges`]: the ProxyDHCP and TFTP drivers and the HTTP/TLS listeners stop
//!    taking new work (no new boot starts while ironboot winds down), and the inventory is
//!    no longer reloaded. The UDP services are joined here; the HTTP servers only stop
//!    accepting, and drain in [`Stage::Drain`].
//! 2. [`Stage::Provider`]: Omni mode's loops. The control loop finishes the lifecycle step
//!    in progress (a power change, a wipe through an agent's tunnel, a write to Omni) and
//!    starts no other; the watches and the heartbeat end at their next await point.
//! 3. [`Stage::Tunnels`]: the metal agents' tunnels close, now that no step needs them;
//!    they are long-lived requests the HTTP servers would otherwise wait for forever.
//! 4. [`Stage::Drain`]: the HTTP servers, which stopped accepting in stage 1, finish the
//!    requests in flight.
//! 5. [`Stage::Store`]: the machine store's writer flushes what it was given and ends,
//!    once the HTTP routes (the last recorders) are gone.
//!
//! No task is aborted: a service that outlives its grace is logged and left to end with
//! the process, never cut off mid-write.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::boot::service::ServiceHandle;

/// The stages of a shutdown, in the order they stop (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// ProxyDHCP, TFTP, the HTTP listeners' accept loops, and the inventory's reloads.
    Edges,
    /// Omni mode's control loop, watches, heartbeat and probes.
    Provider,
    /// The metal agents' tunnels.
    Tunnels,
    /// The HTTP servers' requests in flight.
    Drain,
    /// The machine store's writer.
    Store,
}

impl Stage {
    /// Every stage, in stopping order.
    const ALL: [Stage; 5] = [
        Stage::Edges,
        Stage::Provider,
        Stage::Tunnels,
        Stage::Drain,
        Stage::Store,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Services whose end, before a shutdown, stops ironboot: the boot path cannot run
    /// without them. Omni's loops log their own failures and leave the boot path serving.
    fn essential(self) -> bool {
        matches!(self, Stage::Edges | Stage::Drain)
    }
}

/// Why the supervisor's wait ended.
#[derive(Debug)]
pub(crate) enum Wake {
    /// A signal (its name) asked for the stop.
    Signal(&'static str),
    /// An essential service ended on its own (its name), with this outcome.
    Ended(&'static str, anyhow::Result<()>),
}

/// One service under supervision.
struct Supervised {
    name: &'static str,
    stage: Stage,
    /// The service's task, wrapped to report an essential service's end.
    task: JoinHandle<anyhow::Result<()>>,
}

/// The running services and the stop order.
pub(crate) struct Supervisor {
    root: CancellationToken,
    stages: [CancellationToken; 5],
    services: Vec<Supervised>,
    ended_tx: mpsc::UnboundedSender<usize>,
    ended_rx: mpsc::UnboundedReceiver<usize>,
    grace: Duration,
}

impl Supervisor {
    /// A supervisor granting each service `grace` to stop once its stage is cancelled.
    pub(crate) fn new(grace: Duration) -> Self {
        let root = CancellationToken::new();
        let stages = std::array::from_fn(|_| root.child_token());
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Self {
            root,
            stages,
            services: Vec::new(),
            ended_tx,
            ended_rx,
            grace,
        }
    }

    /// The token a service started now should stop on: cancelled when `stage` stops (or
    /// the whole tree is cancelled).
    pub(crate) fn token(&self, stage: Stage) -> CancellationToken {
        self.stages[stage.index()].child_token()
    }

    /// Supervises `service`, joined when `stage` stops.
    pub(crate) fn add(&mut self, stage: Stage, service: ServiceHandle) {
        let index = self.services.len();
        let ended = self.ended_tx.clone();
        let ServiceHandle { name, task } = service;
        let task = tokio::spawn(async move {
            let outcome = match task.await {
                Ok(outcome) => outcome,
                Err(e) => Err(anyhow::Error::new(e).context("task panicked")),
            };
            if stage.essential() {
                let _ = ended.send(index);
            } else if let Err(e) = &outcome {
                error!(service = name, error = %format!("{e:#}"), "service ended with an error");
            }
            outcome
        });
        self.services.push(Supervised { name, stage, task });
    }

    /// Waits for `signal` or for an essential service to end by itself.
    pub(crate) async fn wait(&mut self, signal: impl Future<Output = &'static str>) -> Wake {
        tokio::select! {
            name = signal => Wake::Signal(name),
            Some(index) = self.ended_rx.recv() => {
                let service = self.services.remove(index);
                // Indices past it moved down: the senders' indices are stale, and only
                // the first end matters.
                let outcome = match service.task.await {
                    Ok(outcome) => outcome,
                    Err(e) => Err(anyhow::Error::new(e).context("task panicked")),
                };
                Wake::Ended(service.name, outcome)
            }
        }
    }

    /// Stops every service, stage by stage: cancels the stage's token, then joins its
    /// services, each within the grace period, logging each one stopped.
    pub(crate) async fn shutdown(mut self) {
        let mut services = std::mem::take(&mut self.services);
        for stage in Stage::ALL {
            self.stages[stage.index()].cancel();
            let (now, later): (Vec<_>, Vec<_>) =
                services.into_iter().partition(|s| s.stage == stage);
            services = later;
            for service in now {
                join(service, self.grace).await;
            }
        }
        self.root.cancel();
    }
}

/// Joins `service` within `grace`, logging how it ended; past the grace it is left to end
/// with the process (not aborted).
async fn join(service: Supervised, grace: Duration) {
    let Supervised { name, stage, task } = service;
    let started = Instant::now();
    match tokio::time::timeout(grace, task).await {
        Ok(Ok(Ok(()))) => info!(
            service = name,
            stage = ?stage,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "service stopped"
        ),
        Ok(Ok(Err(e))) => error!(
            service = name,
            stage = ?stage,
            error = %format!("{e:#}"),
            "service stopped with an error"
        ),
        Ok(Err(e)) => error!(service = name, stage = ?stage, error = %e, "service task panicked"),
        Err(_) => warn!(
            service = name,
            stage = ?stage,
            grace_s = grace.as_secs(),
            "service still stopping after its grace period; left to end with the process"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// A service that, once told to stop, takes a while to finish a "write" and records
    /// that it did: the supervisor must wait for it, not abort it.
    #[tokio::test]
    async fn a_cancelled_service_mid_write_finishes_before_the_next_stage() {
        let mut supervisor = Supervisor::new(Duration::from_secs(30));
        let wrote = Arc::new(AtomicBool::new(false));
        let order = Arc::new(AtomicUsize::new(0));
        let token = supervisor.token(Stage::Provider);
        let (w, o) = (wrote.clone(), order.clone());
        supervisor.add(
            Stage::Provider,
            ServiceHandle::spawn("writer", async move {
                token.cancelled().await;
                // The write in progress when the token fired: not cut off.
                tokio::time::sleep(Duration::from_millis(300)).await;
                w.store(true, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        );
        let later = supervisor.token(Stage::Store);
        let (w, o) = (wrote.clone(), order.clone());
        let store_saw_write = Arc::new(AtomicBool::new(false));
        let saw = store_saw_write.clone();
        supervisor.add(
            Stage::Store,
            ServiceHandle::spawn("store", async move {
                later.cancelled().await;
                saw.store(w.load(Ordering::SeqCst), Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        );
        supervisor.shutdown().await;
        assert!(wrote.load(Ordering::SeqCst), "the write finished");
        assert!(
            store_saw_write.load(Ordering::SeqCst),
            "the later stage was cancelled only after the earlier one was joined"
        );
        assert_eq!(order.load(Ordering::SeqCst), 2);
    }

    /// An essential service that ends by itself wakes the supervisor with its outcome.
    #[tokio::test]
    async fn an_essential_service_ending_wakes_the_wait() {
        let mut supervisor = Supervisor::new(Duration::from_secs(1));
        supervisor.add(
            Stage::Provider,
            ServiceHandle::spawn("loop", async { Ok(()) }),
        );
        supervisor.add(
            Stage::Edges,
            ServiceHandle::spawn("TFTP", async { Err(anyhow::anyhow!("socket gone")) }),
        );
        match supervisor.wait(std::future::pending()).await {
            Wake::Ended(name, outcome) => {
                assert_eq!(name, "TFTP");
                assert!(outcome.is_err());
            }
            other => panic!("{other:?}"),
        }
        supervisor.shutdown().await;
    }
}
