//! Retransmission deadlines of thousands of sessions, earliest first, without a scan.
//!
//! A binary heap of `(when, slot, generation)` with lazy deletion. Every window pushes
//! the deadline later, so pushing on every ACK would fill the heap with dead entries; instead
//! a session keeps at most one live entry (`armed`) and only records its real deadline.
//! When an entry comes due and the session's deadline has moved on, it is pushed again at
//! the new time: one heap operation per session per timeout interval, not per packet.
//! Entries of freed (or reused) slots are recognised by the generation and dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Identifies a session slot and its incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SlotId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// The per-session timer state the heap relies on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    /// When the session wants `on_timeout`.
    pub(crate) deadline: Instant,
    /// The time of the session's live heap entry, if it has one.
    armed: Option<Instant>,
}

impl Timer {
    pub(crate) fn new(deadline: Instant) -> Self {
        Timer {
            deadline,
            armed: None,
        }
    }
}

/// Where the heap finds a live session's timer.
pub(crate) trait TimerTable {
    /// The timer of the session `id` names, if that session still lives.
    fn timer_mut(&mut self, id: SlotId) -> Option<&mut Timer>;
}

/// The heap.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, SlotId)>>,
}

impl Timers {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Timers {
            heap: BinaryHeap::with_capacity(n),
        }
    }

    /// Make sure `timer` fires no later than its deadline. Pushes only if the session has
    /// no live entry or its deadline moved earlier than that entry.
    pub(crate) fn arm(&mut self, id: SlotId, timer: &mut Timer) {
        if timer.armed.is_none_or(|at| timer.deadline < at) {
            self.heap.push(Reverse((timer.deadline, id)));
            timer.armed = Some(timer.deadline);
        }
    }

    /// The earliest entry's time (possibly an entry that will turn out dead or early).
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Take the earliest entry due at `now`, if any. Dead entries are dropped, early ones
    /// (deadline moved on) re-pushed. Returns the id of a session whose deadline has
    /// passed; its entry is gone, so the caller must [`Timers::arm`] it again if it lives
    /// on.
    pub(crate) fn pop_due(&mut self, now: Instant, table: &mut impl TimerTable) -> Option<SlotId> {
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if at > now {
                return None;
            }
            self.heap.pop();
            let Some(timer) = table.timer_mut(id) else {
                continue;
            };
            if timer.armed != Some(at) {
                // A stale entry: the session has a newer live one.
                continue;
            }
            timer.armed = None;
            if timer.deadline <= now {
                return Some(id);
            }
            self.arm(id, timer);
        }
        None
    }

    /// Drop dead entries from the top, so [`Timers::next`] does not wake the driver for
    /// a session that is gone.
    pub(crate) fn prune(&mut self, table: &mut impl TimerTable) {
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if table.timer_mut(id).is_some_and(|t| t.armed == Some(at)) {
                return;
            }
            self.heap.pop();
        }
    }

    /// Entries in the heap, live or not.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    impl TimerTable for HashMap<SlotId, Timer> {
        fn timer_mut(&mut self, id: SlotId) -> Option<&mut Timer> {
            self.get_mut(&id)
        }
    }

    #[test]
    fn later_deadlines_do_not_grow_the_heap() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let id = SlotId {
            index: 0,
            generation: 0,
        };
        let mut timer = Timer::new(t0 + Duration::from_secs(1));
        timers.arm(id, &mut timer);
        for ms in 1..100 {
            timer.deadline = t0 + Duration::from_millis(1000 + ms);
            timers.arm(id, &mut timer);
        }
        assert_eq!(timers.len(), 1);
        // At the first entry's time the deadline has moved on: re-pushed, not fired.
        let mut map = HashMap::from([(id, timer)]);
        let fired = timers.pop_due(t0 + Duration::from_secs(1), &mut map);
        assert_eq!(fired, None);
        assert_eq!(timers.next(), Some(t0 + Duration::from_millis(1099)));
        let fired = timers.pop_due(t0 + Duration::from_secs(2), &mut map);
        assert_eq!(fired, Some(id));
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn earlier_deadline_pushes_and_stale_entry_is_skipped() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let id = SlotId {
            index: 3,
            generation: 1,
        };
        let mut timer = Timer::new(t0 + Duration::from_secs(5));
        timers.arm(id, &mut timer);
        timer.deadline = t0 + Duration::from_secs(1);
        timers.arm(id, &mut timer);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        let mut map = HashMap::from([(id, timer)]);
        let now = t0 + Duration::from_secs(1);
        assert_eq!(timers.pop_due(now, &mut map), Some(id));
        // The session was not re-armed (say it finished): the 5 s entry is dead.
        map.remove(&id);
        let later = t0 + Duration::from_secs(9);
        assert_eq!(timers.pop_due(later, &mut map), None);
        assert_eq!(timers.len(), 0);
    }
}
