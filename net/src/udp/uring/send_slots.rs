//! Preallocated `sendmsg` requests. Each slot owns a header, an iovec, a name, a control
//! buffer and a datagram buffer, all at fixed addresses, and stays untouched from
//! submission until its completion is reaped.

use std::ptr;

use super::mem::KernelMem;
use crate::udp::pktinfo::{
    PKTINFO_CMSG_SPACE, SOCKADDR_IN_LEN, encode_pktinfo_cmsg, encode_sockaddr_in, send_pktinfo,
};
use crate::udp::{MAX_DATAGRAM, SendMeta};

struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: [u8; SOCKADDR_IN_LEN],
    control: [u8; PKTINFO_CMSG_SPACE],
    buf: Box<[u8]>,
}

/// A fixed set of send slots.
pub(super) struct SendSlots {
    slots: KernelMem<[SendSlot]>,
    free: Vec<u32>,
    busy: Vec<bool>,
}

impl SendSlots {
    pub(super) fn new(count: usize) -> Self {
        let slots: Box<[SendSlot]> = (0..count)
            .map(|_| SendSlot {
                // SAFETY: `msghdr` is plain pointers and integers; all zero is a valid,
                // empty header (and the only portable way to build one: musl pads it).
                hdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0,
                },
                name: [0; SOCKADDR_IN_LEN],
                control: [0; PKTINFO_CMSG_SPACE],
                buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
            })
            .collect();
        let last = u32::try_from(count).expect("send slot count fits u32");
        SendSlots {
            slots: KernelMem::new(slots),
            free: (0..last).rev().collect(),
            busy: vec![false; count],
        }
    }

    /// Move a queued datagram into a free slot, swapping buffers (the slot's previous,
    /// already sent, buffer goes back to the caller's queue), and fill in its header.
    /// Returns the slot index and the header to submit, or `None` if all are in flight.
    pub(super) fn prepare(
        &mut self,
        meta: &SendMeta,
        buf: &mut Box<[u8]>,
        len: usize,
    ) -> Option<(u32, *const libc::msghdr)> {
        let index = self.free.pop()?;
        self.busy[index as usize] = true;
        // SAFETY: indices in `free` are below the slot count, so the pointer is in bounds.
        // The slot is not busy: no submitted request reads it, and `&mut self` rules out
        // any other Rust reference, so this exclusive reference to one slot is sound.
        let slot = unsafe { &mut *self.slots.as_ptr().cast::<SendSlot>().add(index as usize) };
        std::mem::swap(&mut slot.buf, buf);
        slot.name = encode_sockaddr_in(meta.dst);
        slot.iov = libc::iovec {
            iov_base: slot.buf.as_mut_ptr().cast(),
            iov_len: len.min(slot.buf.len()),
        };
        slot.hdr.msg_name = slot.name.as_mut_ptr().cast();
        slot.hdr.msg_namelen = SOCKADDR_IN_LEN as _;
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        match send_pktinfo(meta) {
            Some(info) => {
                slot.control = encode_pktinfo_cmsg(info);
                slot.hdr.msg_control = slot.control.as_mut_ptr().cast();
                slot.hdr.msg_controllen = PKTINFO_CMSG_SPACE as _;
            }
            None => {
                slot.hdr.msg_control = ptr::null_mut();
                slot.hdr.msg_controllen = 0;
            }
        }
        slot.hdr.msg_flags = 0;
        Some((index, &slot.hdr))
    }

    /// The request in slot `index` completed, or was never submitted: free the slot.
    /// False if the slot was not in flight.
    pub(super) fn complete(&mut self, index: u32) -> bool {
        match self.busy.get_mut(index as usize) {
            Some(busy) if *busy => {
                *busy = false;
                self.free.push(index);
                true
            }
            _ => false,
        }
    }

    /// Slots whose request has not completed.
    pub(super) fn in_flight(&self) -> usize {
        self.busy.len() - self.free.len()
    }

    /// Let drop free the slots.
    ///
    /// # Safety
    /// No send request is in flight.
    pub(super) unsafe fn release(&mut self) {
        // SAFETY: forwarded from the caller.
        unsafe { self.slots.release() }
    }
}
