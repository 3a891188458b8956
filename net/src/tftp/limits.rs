//! Transfer limits shared by the servers of several UDP workers.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, PoisonError};

use super::counters::RequestOutcome;

/// The transfers in progress across several [`TftpServer`](super::TftpServer)s, so that
/// [`TftpConfig::max_transfers`](super::TftpConfig::max_transfers) and
/// [`TftpConfig::max_per_client`](super::TftpConfig::max_per_client) bound them together.
///
/// Several UDP workers each run a server of their own; the kernel spreads a client's
/// requests among them, so limits kept per server would multiply by the worker count.
/// Give every worker's server the same `Arc<SharedLimits>` with
/// [`TftpServer::with_shared_limits`](super::TftpServer::with_shared_limits). It is taken
/// when a request is checked, when its client proves it receives and when the transfer
/// ends, never per packet.
#[derive(Debug, Default)]
pub struct SharedLimits {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    active: usize,
    per_ip: HashMap<Ipv4Addr, u32>,
}

impl SharedLimits {
    /// No transfers yet.
    pub fn new() -> Self {
        SharedLimits::default()
    }

    /// Transfers in progress, all servers together.
    pub fn active(&self) -> usize {
        self.lock().active
    }

    /// Transfers in progress for `ip`, all servers together.
    pub fn transfers_of(&self, ip: Ipv4Addr) -> usize {
        self.lock().per_ip.get(&ip).map_or(0, |&n| n as usize)
    }

    /// Whether a new transfer for `ip` would be admitted now; counts nothing.
    pub(crate) fn check(
        &self,
        ip: Ipv4Addr,
        max_transfers: usize,
        max_per_client: usize,
    ) -> Result<(), RequestOutcome> {
        let state = self.lock();
        if state.active >= max_transfers {
            return Err(RequestOutcome::ServerBusy);
        }
        if state.per_ip.get(&ip).map_or(0, |&n| n as usize) >= max_per_client {
            return Err(RequestOutcome::ClientBusy);
        }
        Ok(())
    }

    /// Count a new transfer for `ip` if both limits allow it; else say which refused.
    pub(crate) fn admit(
        &self,
        ip: Ipv4Addr,
        max_transfers: usize,
        max_per_client: usize,
    ) -> Result<(), RequestOutcome> {
        let mut state = self.lock();
        if state.active >= max_transfers {
            return Err(RequestOutcome::ServerBusy);
        }
        let of_ip = state.per_ip.get(&ip).map_or(0, |&n| n as usize);
        if of_ip >= max_per_client {
            return Err(RequestOutcome::ClientBusy);
        }
        state.active += 1;
        *state.per_ip.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    /// A transfer of `ip` admitted by [`SharedLimits::admit`] ended.
    pub(crate) fn release(&self, ip: Ipv4Addr) {
        let mut state = self.lock();
        state.active = state.active.saturating_sub(1);
        if let Some(n) = state.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                state.per_ip.remove(&ip);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two counters updated together: still consistent after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
