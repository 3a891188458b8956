//! The ProxyDHCP decision as a [`DatagramService`] for the UDP drivers.

use core::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use super::counters::ProxyCounters;
use super::decide::{Decision, Ignored, decide};
use super::guard::Refusal;
use super::policy::BootPolicy;
use super::ratelimit::{REFUSAL_LOG_INTERVAL, RefusalLog};
use crate::service::{DatagramService, DriverDrop, RecvMeta, SendMeta, TxQueue};
use crate::wire::{Packet, Repr};

/// A refused reply: why, and where it would have gone (the relay's `giaddr` and port 67,
/// or a 4011 request's source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The reason.
    pub reason: Refusal,
    /// The destination refused.
    pub to: SocketAddrV4,
}

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
    handle_datagram_refused(data, meta, policy, counters, out).0
}

/// [`handle_datagram`], also telling a refused reply apart (for the rate-limited log).
pub fn handle_datagram_refused(
    data: &[u8],
    meta: &RecvMeta,
    policy: &BootPolicy,
    counters: &ProxyCounters,
    out: &mut [u8],
) -> (Option<(usize, SendMeta)>, Option<Refused>) {
    let parsed = Packet::new_checked(data).and_then(|p| Repr::parse(&p));
    let request = match parsed {
        Ok(r) => r,
        Err(e) => {
            counters.malformed(&e);
            return (None, None);
        }
    };
    counters.request(request.message_type);
    match decide(&request, meta, policy, out) {
        Ok(Decision::Reply(reply)) => {
            counters.boot_client(reply.client.firmware, reply.client.ipxe);
            counters.reply(reply.message_type);
            (Some((reply.len, reply.send)), None)
        }
        Ok(Decision::Ignore(why)) => {
            counters.ignored(why);
            let refused = match why {
                Ignored::Refused(reason @ (Refusal::SourceNotUnicast | Refusal::SourcePort)) => {
                    Some(Refused {
                        reason,
                        to: meta.src,
                    })
                }
                Ignored::Refused(reason) => Some(Refused {
                    reason,
                    to: SocketAddrV4::new(request.giaddr, policy.ports().server),
                }),
                _ => None,
            };
            (None, refused)
        }
        Err(e) => {
            counters.malformed(&e);
            (None, None)
        }
    }
}

/// ProxyDHCP on the ports of a [`BootPolicy`], for a UDP driver.
#[derive(Debug, Clone)]
pub struct ProxyService {
    policy: Arc<BootPolicy>,
    counters: Arc<ProxyCounters>,
    refusals: Arc<RefusalLog>,
}

impl ProxyService {
    /// A service answering by `policy` and counting into `counters`, logging refusals at
    /// most once per reason per [`REFUSAL_LOG_INTERVAL`].
    pub fn new(policy: Arc<BootPolicy>, counters: Arc<ProxyCounters>) -> Self {
        let refusals = Arc::new(RefusalLog::new(Instant::now(), REFUSAL_LOG_INTERVAL));
        ProxyService {
            policy,
            counters,
            refusals,
        }
    }

    /// Share this refusal log (give every worker of a service the same one, so the bound
    /// on log lines holds for the service as a whole).
    pub fn with_refusal_log(mut self, refusals: Arc<RefusalLog>) -> Self {
        self.refusals = refusals;
        self
    }
}

impl DatagramService for ProxyService {
    fn on_datagram(&mut self, now: Instant, data: &[u8], meta: &RecvMeta, tx: &mut TxQueue) {
        let (policy, counters) = (&*self.policy, &*self.counters);
        let mut refused = None;
        let queued = tx.push_with(|out| {
            let (answer, why) = handle_datagram_refused(data, meta, policy, counters, out);
            refused = why;
            answer
        });
        if !queued {
            counters.driver_drop(None);
        }
        if let Some(r) = refused
            && let Some(suppressed) = self.refusals.admit(r.reason, now)
        {
            warn!(
                reason = r.reason.label(),
                to = %r.to,
                from = %meta.src,
                suppressed,
                "ProxyDHCP reply refused for its destination"
            );
        }
    }

    fn on_dropped(&mut self, reason: DriverDrop) {
        self.counters.driver_drop(Some(reason));
    }
}
