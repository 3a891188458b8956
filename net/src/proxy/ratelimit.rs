//! A bound on refusal log lines: at most one line per [`Refusal`] reason per interval,
//! with the refusals left unlogged meanwhile counted and reported on the next line.
//!
//! Sans-IO: the caller passes `now`, so tests step time by hand. Shared by every UDP
//! worker (atomics, no lock), so the bound holds for the whole service.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use core::time::Duration;
use std::time::Instant;

use super::guard::Refusal;

/// How often each refusal reason may be logged by default.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Slot {
    /// Nanoseconds since `start` before which this reason stays quiet; 0 before the first
    /// line.
    quiet_until: AtomicU64,
    /// Refusals not logged since the last line.
    suppressed: AtomicU64,
}

/// Decides which refusals get a log line.
#[derive(Debug)]
pub struct RefusalLog {
    start: Instant,
    interval: u64,
    slots: [Slot; Refusal::ALL.len()],
}

impl RefusalLog {
    /// At most one line per reason per `interval`, counting time from `start`.
    pub fn new(start: Instant, interval: Duration) -> Self {
        RefusalLog {
            start,
            interval: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            slots: Default::default(),
        }
    }

    /// A refusal for `reason` happened at `now`: `Some(n)` if it is to be logged, `n`
    /// being how many refusals of that reason went unlogged since its previous line;
    /// `None` if it is to stay quiet (it is then counted for the next line).
    pub fn admit(&self, reason: Refusal, now: Instant) -> Option<u64> {
        let slot = &self.slots[reason.index()];
        let t =
            u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        let quiet_until = slot.quiet_until.load(Relaxed);
        let open = t >= quiet_until
            && slot
                .quiet_until
                .compare_exchange(
                    quiet_until,
                    t.saturating_add(self.interval).max(1),
                    Relaxed,
                    Relaxed,
                )
                .is_ok();
        if open {
            Some(slot.suppressed.swap(0, Relaxed))
        } else {
            slot.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}
