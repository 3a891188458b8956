//! Heap memory shared with the kernel.
//!
//! The kernel reads and writes this memory on its own schedule while requests are in
//! flight, so it must outlive every request that names it, whatever Rust does meanwhile
//! (including unwinding from a panicking service). It is freed only once the driver has
//! proved the kernel is done with it; otherwise it is leaked, which is safe.

use std::ptr::NonNull;

/// A heap allocation handed to the kernel: freed on drop only after [`KernelMem::release`].
pub(super) struct KernelMem<T: ?Sized> {
    ptr: NonNull<T>,
    released: bool,
}

impl<T: ?Sized> KernelMem<T> {
    pub(super) fn new(value: Box<T>) -> Self {
        KernelMem {
            ptr: NonNull::from(Box::leak(value)),
            released: false,
        }
    }

    /// Base pointer, valid until drop (and forever if never released).
    pub(super) fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }

    /// Allow drop to free the memory.
    ///
    /// # Safety
    /// No request the kernel may still act on refers to this memory: every request that
    /// named it has posted its final completion, and no registration points at it.
    pub(super) unsafe fn release(&mut self) {
        self.released = true;
    }
}

impl<T: ?Sized> Drop for KernelMem<T> {
    fn drop(&mut self) {
        if self.released {
            // SAFETY: `ptr` came from `Box::leak` in `new` and is turned back into a box
            // only here, once; `release`'s contract says the kernel no longer uses it.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
        }
    }
}
