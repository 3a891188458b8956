//! A started service as the supervisor sees it: its name and its task. Every service's
//! `start` takes a [`CancellationToken`] and returns one of these; the task ends once the
//! token is cancelled and the service has finished what it was doing (a service is never
//! aborted: it checks the token at its await points).

use std::future::Future;

use tokio::task::JoinHandle;
pub(crate) use tokio_util::sync::CancellationToken;

/// A running service: its name (in logs) and its task.
#[derive(Debug)]
pub(crate) struct ServiceHandle {
    /// Names the service in logs ("ProxyDHCP", "HTTP API", ...).
    pub(crate) name: &'static str,
    /// Resolves when the service has stopped, with how it ended.
    pub(crate) task: JoinHandle<anyhow::Result<()>>,
}

impl ServiceHandle {
    /// Spawns `run` as the service `name`.
    pub(crate) fn spawn(
        name: &'static str,
        run: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Self {
        Self {
            name,
            task: tokio::spawn(run),
        }
    }
}
