//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the pool multishot receives pick
//! their buffers from.
//!
//! The application owns the ring's tail and writes entries; the kernel consumes entries
//! from its private head and hands each buffer back in a completion (by buffer id). A
//! buffer is then ours until we write it into the ring again and publish the tail.

use std::alloc::Layout;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;

use super::mem::KernelMem;

/// The kernel wants the ring page aligned; 64 KiB covers 4, 16 and 64 KiB pages.
const RING_ALIGN: usize = 65536;
/// Size of one `struct io_uring_buf { u64 addr; u32 len; u16 bid; u16 resv; }`.
const ENTRY_LEN: usize = 16;
/// The ring's tail is the `resv` field of entry 0.
const TAIL_OFFSET: usize = 14;
/// Most entries the ring memory holds.
pub(super) const MAX_ENTRIES: usize = RING_ALIGN / ENTRY_LEN;

const _: () = assert!(std::mem::size_of::<io_uring::types::BufRingEntry>() == ENTRY_LEN);

#[repr(C, align(65536))]
struct RingMem([u8; RING_ALIGN]);

/// A registered pool of equal-sized receive buffers.
pub(super) struct ProvidedBuffers {
    ring: KernelMem<RingMem>,
    data: KernelMem<[u8]>,
    entries: u16,
    buf_size: usize,
    bgid: u16,
    /// Our tail, published to the kernel by [`ProvidedBuffers::publish`].
    tail: u16,
    /// By buffer id: whether we hold the buffer (the kernel handed it over).
    owned: Vec<bool>,
    registered: bool,
}

impl ProvidedBuffers {
    /// `entries` buffers of `buf_size` bytes, all queued in the ring, for group `bgid`.
    pub(super) fn new(entries: u16, buf_size: usize, bgid: u16) -> Self {
        assert!(entries.is_power_of_two() && usize::from(entries) <= MAX_ENTRIES);
        // Allocated zeroed in place: 64 KiB is too much to build on a stack first.
        let layout = Layout::new::<RingMem>();
        // SAFETY: `RingMem` has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<RingMem>();
        if raw.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `raw` is a fresh global-allocator allocation with `RingMem`'s layout,
        // owned by nothing else, and all-zero bytes are a valid `RingMem`.
        let ring = unsafe { Box::from_raw(raw) };
        let count = usize::from(entries);
        let mut this = ProvidedBuffers {
            ring: KernelMem::new(ring),
            data: KernelMem::new(vec![0u8; count * buf_size].into_boxed_slice()),
            entries,
            buf_size,
            bgid,
            tail: 0,
            owned: vec![true; count],
            registered: false,
        };
        for bid in 0..entries {
            this.recycle(bid);
        }
        this.publish();
        this
    }

    /// Register the ring with `submitter`'s io_uring (Linux 5.19+).
    pub(super) fn register(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring memory is a live, page-aligned allocation with room for
        // `entries` entries; `KernelMem` keeps it (and the buffers it points at) alive
        // until `release`, which the driver calls only after unregistering.
        let res = unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                self.bgid,
                0,
            )
        };
        if res.is_err() {
            // SAFETY: the kernel refused the registration, so it holds no reference to
            // this memory and no request can pick from the group.
            unsafe {
                self.ring.release();
                self.data.release();
            }
        }
        res?;
        self.registered = true;
        Ok(())
    }

    /// Unregister the ring; call only once no request can pick a buffer from it.
    pub(super) fn unregister(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        submitter.unregister_buf_ring(self.bgid)?;
        self.registered = false;
        Ok(())
    }

    /// Take over buffer `bid`, which a completion just handed us. False for an id we do
    /// not know or already hold (a kernel bug; the buffer is then ignored).
    pub(super) fn claim(&mut self, bid: u16) -> bool {
        match self.owned.get_mut(usize::from(bid)) {
            Some(owned) if !*owned => {
                *owned = true;
                true
            }
            _ => false,
        }
    }

    /// The contents of buffer `bid`, if we hold it.
    pub(super) fn data(&self, bid: u16) -> Option<&[u8]> {
        if !*self.owned.get(usize::from(bid))? {
            return None;
        }
        // SAFETY: `bid < entries`, so the range lies inside `data`. We hold the buffer:
        // the kernel handed it over and gets it back only through `recycle`, which takes
        // `&mut self` and so cannot run while this borrow lives. No other reference to
        // these bytes exists (buffers are only reached through raw pointers).
        Some(unsafe {
            std::slice::from_raw_parts(
                self.data
                    .as_ptr()
                    .cast::<u8>()
                    .add(usize::from(bid) * self.buf_size),
                self.buf_size,
            )
        })
    }

    /// Give buffer `bid` back to the kernel (visible after the next `publish`).
    pub(super) fn recycle(&mut self, bid: u16) {
        match self.owned.get_mut(usize::from(bid)) {
            Some(owned) if *owned => *owned = false,
            _ => return,
        }
        let index = usize::from(self.tail & (self.entries - 1));
        let offset = usize::from(bid) * self.buf_size;
        // SAFETY: `offset` is inside `data` (bid < entries).
        let addr = unsafe { self.data.as_ptr().cast::<u8>().add(offset) } as u64;
        // The buffer size fits a u32: it is a few KiB by construction.
        let len = self.buf_size as u32;
        // SAFETY: entry `index` lies inside the ring memory (index < entries <=
        // MAX_ENTRIES) and is 16-byte aligned. It is at or past the published tail, so the
        // kernel does not read it before the next `publish`. The writes go through raw
        // pointers to the addr/len/bid fields only, never overlapping the tail word.
        unsafe {
            let entry = self.ring.as_ptr().cast::<u8>().add(index * ENTRY_LEN);
            entry.cast::<u64>().write(addr);
            entry.add(8).cast::<u32>().write(len);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make recycled buffers visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: the tail is a 2-byte-aligned u16 inside the ring memory, which outlives
        // `self`. The kernel reads it with acquire loads and never writes it; we only ever
        // access it through this atomic.
        let tail = unsafe {
            AtomicU16::from_ptr(
                self.ring
                    .as_ptr()
                    .cast::<u8>()
                    .add(TAIL_OFFSET)
                    .cast::<u16>(),
            )
        };
        // Release: the entry writes above become visible before the new tail.
        tail.store(self.tail, Ordering::Release);
    }

    /// Let drop free the memory, unless it is still registered (then it leaks).
    ///
    /// # Safety
    /// No request that may pick a buffer from this group, or that holds one, is in flight.
    pub(super) unsafe fn release(&mut self) {
        if self.registered {
            return;
        }
        // SAFETY: unregistered, and by the caller's promise no request uses the buffers.
        unsafe {
            self.ring.release();
            self.data.release();
        }
    }
}
