//! The ProxyDHCP decision as a [`DatagramService`] for the UDP drivers.

use std::sync::Arc;
use std::time::Instant;

use super::counters::ProxyCounters;
use super::decide::{Decision, decide};
use super::policy::BootPolicy;
use crate::udp::{DatagramService, DriverDrop, RecvMeta, SendMeta, TxQueue};
use crate::wire::{Packet, Repr};

/// Parse, decide, count: the whole per-datagram path, writing any reply into `out`.
///
/// Allocation-free; this is what the benches and the fuzz target drive.
pub fn handle_datagram(
    data: &[u8],
    meta: &RecvMeta,
    policy: &BootPolicy,
    counters: &ProxyCounters,
    out: &mut [u8],
) -> Option<(usize, SendMeta)> {
    let parsed = Packet::new_checked(data).and_then(|p| Repr::parse(&p));
    let request = match parsed {
        Ok(r) => r,
        Err(e) => {
            counters.malformed(&e);
            return None;
        }
    };
    counters.request(request.message_type);
    match decide(&request, meta, policy, out) {
        Ok(Decision::Reply(reply)) => {
            counters.boot_client(reply.client.firmware, reply.client.ipxe);
            counters.reply(reply.message_type);
            Some((reply.len, reply.send))
        }
        Ok(Decision::Ignore(why)) => {
            counters.ignored(why);
            None
        }
        Err(e) => {
            counters.malformed(&e);
            None
        }
    }
}

/// ProxyDHCP on the ports of a [`BootPolicy`], for a UDP driver.
#[derive(Debug, Clone)]
pub struct ProxyService {
    policy: Arc<BootPolicy>,
    counters: Arc<ProxyCounters>,
}

impl ProxyService {
    /// A service answering by `policy` and counting into `counters`.
    pub fn new(policy: Arc<BootPolicy>, counters: Arc<ProxyCounters>) -> Self {
        ProxyService { policy, counters }
    }
}

impl DatagramService for ProxyService {
    fn on_datagram(&mut self, _now: Instant, data: &[u8], meta: &RecvMeta, tx: &mut TxQueue) {
        let (policy, counters) = (&*self.policy, &*self.counters);
        let queued = tx.push_with(|out| handle_datagram(data, meta, policy, counters, out));
        if !queued {
            counters.driver_drop(None);
        }
    }

    fn on_dropped(&mut self, reason: DriverDrop) {
        self.counters.driver_drop(Some(reason));
    }
}
