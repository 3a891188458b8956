//! A shutdown signal both drivers obey: an async wait for the tokio driver, and a datagram
//! on a socket pair for the io_uring thread, which sleeps in the kernel and can only be
//! woken by a completion.
#![forbid(unsafe_code)]

use std::fmt;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// Cloneable handle that stops every [`serve`](super::serve) it was given.
///
/// Triggering is sticky: a driver started after [`Shutdown::trigger`] returns at once.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    triggered: AtomicBool,
    watch: watch::Sender<bool>,
    /// Write ends of the wake sockets of running io_uring drivers, by registration id.
    wakers: Mutex<Vec<(u64, UnixDatagram)>>,
    next_id: AtomicU64,
}

impl Shutdown {
    /// A handle that has not been triggered.
    pub fn new() -> Self {
        Shutdown {
            inner: Arc::new(Inner {
                triggered: AtomicBool::new(false),
                watch: watch::Sender::new(false),
                wakers: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Ask every driver using this handle (or a clone) to stop. Drivers finish the batch in
    /// hand and return; queued datagrams may be dropped.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        self.inner.watch.send_replace(true);
        let wakers = self.lock_wakers();
        for (_, waker) in wakers.iter() {
            // A full or closed wake socket means the driver is already waking or gone.
            let _ = waker.send(&[1]);
        }
    }

    /// Whether [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Resolve once triggered.
    pub(crate) async fn wait(&self) {
        let mut rx = self.inner.watch.subscribe();
        // The sender lives in `inner`, which `self` keeps alive: this cannot fail.
        let _ = rx.wait_for(|triggered| *triggered).await;
    }

    /// Have `trigger` send a datagram to `waker` until the registration is dropped. If the
    /// handle is already triggered the datagram is sent now, so no trigger is ever missed.
    pub(crate) fn register_waker(&self, waker: UnixDatagram) -> WakerRegistration {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut wakers = self.lock_wakers();
        // `trigger` sets the flag before taking the lock: either it sees this waker, or
        // this load (made under the lock it released) sees the flag.
        if self.is_triggered() {
            let _ = waker.send(&[1]);
        }
        wakers.push((id, waker));
        WakerRegistration {
            shutdown: self.clone(),
            id,
        }
    }

    fn lock_wakers(&self) -> std::sync::MutexGuard<'_, Vec<(u64, UnixDatagram)>> {
        // The list stays consistent even if a holder panicked: push/retain only.
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

/// Keeps a waker registered with a [`Shutdown`]; unregisters on drop.
pub(crate) struct WakerRegistration {
    shutdown: Shutdown,
    id: u64,
}

impl Drop for WakerRegistration {
    fn drop(&mut self) {
        self.shutdown.lock_wakers().retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waker_registered_after_trigger_is_woken() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let (rx, tx) = UnixDatagram::pair().unwrap();
        let _reg = shutdown.register_waker(tx);
        rx.set_nonblocking(true).unwrap();
        assert_eq!(rx.recv(&mut [0u8; 4]).unwrap(), 1);
    }

    #[test]
    fn trigger_wakes_registered_and_skips_dropped() {
        let shutdown = Shutdown::new();
        let (rx1, tx1) = UnixDatagram::pair().unwrap();
        let (rx2, tx2) = UnixDatagram::pair().unwrap();
        let _reg1 = shutdown.register_waker(tx1);
        drop(shutdown.register_waker(tx2));
        shutdown.clone().trigger();
        rx1.set_nonblocking(true).unwrap();
        rx2.set_nonblocking(true).unwrap();
        assert_eq!(rx1.recv(&mut [0u8; 4]).unwrap(), 1);
        assert!(!matches!(rx2.recv(&mut [0u8; 4]), Ok(n) if n > 0));
        assert!(shutdown.is_triggered());
    }
}
