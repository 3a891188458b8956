//! Preallocated `sendmsg` requests. Each slot owns a header, two iovecs, a name, a control
//! buffer and a datagram buffer, all at fixed addresses, plus the shared body of the
//! datagram if it has one, and stays untouched from submission until its completion is
//! reaped.

use std::ptr;

use bytes::Bytes;

use super::mem::KernelMem;
use crate::service::{MAX_DATAGRAM, SendMeta};
use crate::udp::pktinfo::{
    PKTINFO_CMSG_SPACE, SOCKADDR_IN_LEN, encode_pktinfo_cmsg, encode_sockaddr_in, send_pktinfo,
};

struct SendSlot {
    hdr: libc::msghdr,
    /// The slot's buffer (the datagram, or its header), then the body if there is one.
    iov: [libc::iovec; 2],
    name: [u8; SOCKADDR_IN_LEN],
    control: [u8; PKTINFO_CMSG_SPACE],
    buf: Box<[u8]>,
    /// Keeps the memory `iov[1]` points at alive while the kernel may read it: set when
    /// the request is prepared, dropped when its completion is reaped (`complete`).
    body: Option<Bytes>,
}

const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: ptr::null_mut(),
    iov_len: 0,
};

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
                iov: [EMPTY_IOVEC; 2],
                name: [0; SOCKADDR_IN_LEN],
                control: [0; PKTINFO_CMSG_SPACE],
                buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
                body: None,
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
    /// already sent, buffer goes back to the caller's queue), keep its body in the slot,
    /// and fill in its header: one iovec for the buffer's first `len` bytes, a second one
    /// for the body. Returns the slot index and the header to submit, or `None` if all are
    /// in flight (the body is then dropped).
    pub(super) fn prepare(
        &mut self,
        meta: &SendMeta,
        buf: &mut Box<[u8]>,
        len: usize,
        body: Option<Bytes>,
    ) -> Option<(u32, *const libc::msghdr)> {
        let index = self.free.pop()?;
        self.busy[index as usize] = true;
        // SAFETY: indices in `free` are below the slot count, so the pointer is in bounds.
        // The slot is not busy: no submitted request reads it, and `&mut self` rules out
        // any other Rust reference, so this exclusive reference to one slot is sound.
        let slot = unsafe { &mut *self.slots.as_ptr().cast::<SendSlot>().add(index as usize) };
        std::mem::swap(&mut slot.buf, buf);
        slot.name = encode_sockaddr_in(meta.dst);
        slot.iov[0] = libc::iovec {
            iov_base: slot.buf.as_mut_ptr().cast(),
            iov_len: len.min(slot.buf.len()),
        };
        // The body's bytes live in the `Bytes`' shared allocation (or static memory), not
        // in the handle, so moving the handle into the slot leaves the pointer valid; the
        // slot then owns one reference until `complete`. The kernel only reads through
        // this iovec (sendmsg), so the `*mut` never writes shared memory.
        slot.body = body;
        let iovlen = match &slot.body {
            Some(body) => {
                slot.iov[1] = libc::iovec {
                    iov_base: body.as_ptr().cast_mut().cast(),
                    iov_len: body.len(),
                };
                2
            }
            None => {
                slot.iov[1] = EMPTY_IOVEC;
                1
            }
        };
        slot.hdr.msg_name = slot.name.as_mut_ptr().cast();
        slot.hdr.msg_namelen = SOCKADDR_IN_LEN as _;
        slot.hdr.msg_iov = slot.iov.as_mut_ptr();
        slot.hdr.msg_iovlen = iovlen;
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

    /// The request in slot `index` completed, or was never submitted: drop its body
    /// (releasing the reference to the served file) and free the slot. False if the slot
    /// was not in flight.
    pub(super) fn complete(&mut self, index: u32) -> bool {
        match self.busy.get_mut(index as usize) {
            Some(busy) if *busy => {
                *busy = false;
                // SAFETY: `index` was busy, so it is below the slot count and the pointer
                // is in bounds. Its request has posted its completion (or was never
                // submitted), so the kernel no longer reads the slot, and `&mut self`
                // rules out any other Rust reference: this exclusive access is sound, and
                // the body's memory may be released now.
                let slot =
                    unsafe { &mut *self.slots.as_ptr().cast::<SendSlot>().add(index as usize) };
                slot.body = None;
                self.free.push(index);
                true
            }
            _ => false,
        }
    }

    /// Slots ready for a new request.
    pub(super) fn free(&self) -> usize {
        self.free.len()
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn meta() -> SendMeta {
        SendMeta {
            dst: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6969),
            ifindex: None,
            src_ip: None,
            local_port: 69,
        }
    }

    /// The (iov_base, iov_len) pairs a prepared header names.
    fn iovecs(hdr: *const libc::msghdr) -> Vec<(*const u8, usize)> {
        // SAFETY: `hdr` was just returned by `prepare` and points into a slot that stays
        // busy (untouched) until `complete`, which the caller has not called yet; the
        // header's `msg_iov` points at that slot's `msg_iovlen` iovecs. Nothing here was
        // submitted to a kernel, and all accesses are reads.
        unsafe {
            let hdr = &*hdr;
            std::slice::from_raw_parts(hdr.msg_iov, hdr.msg_iovlen as _)
                .iter()
                .map(|iov| (iov.iov_base.cast_const().cast::<u8>(), iov.iov_len))
                .collect()
        }
    }

    #[test]
    fn a_body_is_a_second_iovec_on_its_own_memory_held_until_complete() {
        let mut slots = SendSlots::new(2);
        let file = Bytes::from(vec![7u8; 4096]);
        let body = file.slice(100..1600);
        let body_ptr = body.as_ptr();

        let mut buf = vec![0u8; MAX_DATAGRAM].into_boxed_slice();
        buf[..4].copy_from_slice(&[0, 3, 0, 1]);
        let header_ptr = buf.as_ptr();
        let (index, hdr) = slots.prepare(&meta(), &mut buf, 4, Some(body)).unwrap();
        assert_eq!(
            iovecs(hdr),
            [(header_ptr, 4), (body_ptr, 1500)],
            "header in the swapped-in buffer, body in place: nothing copied"
        );
        assert!(!file.is_unique(), "the slot holds the body");

        // A datagram without a body has one iovec.
        let mut plain = vec![0u8; MAX_DATAGRAM].into_boxed_slice();
        let (other, hdr) = slots.prepare(&meta(), &mut plain, 9, None).unwrap();
        assert_eq!(iovecs(hdr).len(), 1);
        assert!(
            slots.prepare(&meta(), &mut plain, 9, None).is_none(),
            "all busy"
        );

        assert!(slots.complete(index));
        assert!(file.is_unique(), "completion dropped the body");
        assert!(!slots.complete(index), "already free");
        assert!(slots.complete(other));
        // SAFETY: nothing was submitted to a kernel.
        unsafe { slots.release() };
    }
}
