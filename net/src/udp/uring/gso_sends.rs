//! Segmented (`UDP_SEGMENT`) `sendmsg` requests that gather the datagrams of several send
//! slots into one.
//!
//! Each member datagram is prepared in its own send slot as usual (its header buffer and
//! its body stay owned there); a segmented request only holds a header whose iovecs point
//! at the members' memory, plus the control message. The members stay busy until the
//! segmented request completes, and are completed with it.

use std::ptr;

use super::mem::KernelMem;
use crate::service::SendMeta;
use crate::udp::gso::{MAX_SEGMENTS, SEGMENT_CMSG_SPACE, encode_segment_cmsg};
use crate::udp::pktinfo::{
    PKTINFO_CMSG_SPACE, SOCKADDR_IN_LEN, encode_pktinfo_cmsg, encode_sockaddr_in, send_pktinfo,
};

struct GsoSend {
    hdr: libc::msghdr,
    /// Header then body (when there is one) of each member, in order.
    iov: [libc::iovec; 2 * MAX_SEGMENTS],
    iov_used: usize,
    name: [u8; SOCKADDR_IN_LEN],
    control: [u8; PKTINFO_CMSG_SPACE + SEGMENT_CMSG_SPACE],
    pktinfo_len: usize,
    /// The send slots holding the members' memory.
    members: [u32; MAX_SEGMENTS],
    count: usize,
    /// Every member's length but the last one's (which may be shorter).
    segment: usize,
}

const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: ptr::null_mut(),
    iov_len: 0,
};

/// A fixed set of segmented requests.
pub(super) struct GsoSends {
    sends: KernelMem<[GsoSend]>,
    free: Vec<u32>,
    busy: Vec<bool>,
}

impl GsoSends {
    pub(super) fn new(count: usize) -> Self {
        let sends: Box<[GsoSend]> = (0..count)
            .map(|_| GsoSend {
                // SAFETY: `msghdr` is plain pointers and integers; all zero is a valid,
                // empty header.
                hdr: unsafe { std::mem::zeroed() },
                iov: [EMPTY_IOVEC; 2 * MAX_SEGMENTS],
                iov_used: 0,
                name: [0; SOCKADDR_IN_LEN],
                control: [0; PKTINFO_CMSG_SPACE + SEGMENT_CMSG_SPACE],
                pktinfo_len: 0,
                members: [0; MAX_SEGMENTS],
                count: 0,
                segment: 0,
            })
            .collect();
        let last = u32::try_from(count).expect("segmented send count fits u32");
        GsoSends {
            sends: KernelMem::new(sends),
            free: (0..last).rev().collect(),
            busy: vec![false; count],
        }
    }

    /// Exclusive access to request `index`, which must not be submitted.
    fn get(&mut self, index: u32) -> &mut GsoSend {
        assert!((index as usize) < self.busy.len(), "segmented send index");
        // SAFETY: the index is in bounds (checked above). Callers only reach requests
        // they took with `begin` and have not submitted, or whose completion was reaped,
        // so the kernel does not read it; `&mut self` rules out other Rust references.
        unsafe { &mut *self.sends.as_ptr().cast::<GsoSend>().add(index as usize) }
    }

    /// Take a free request for datagrams to `meta`'s destination, or `None` if all are in
    /// flight (the caller then sends the members one by one).
    pub(super) fn begin(&mut self, meta: &SendMeta) -> Option<u32> {
        let index = self.free.pop()?;
        self.busy[index as usize] = true;
        let send = self.get(index);
        send.name = encode_sockaddr_in(meta.dst);
        send.pktinfo_len = match send_pktinfo(meta) {
            Some(info) => {
                send.control[..PKTINFO_CMSG_SPACE].copy_from_slice(&encode_pktinfo_cmsg(info));
                PKTINFO_CMSG_SPACE
            }
            None => 0,
        };
        send.iov_used = 0;
        send.count = 0;
        send.segment = 0;
        Some(index)
    }

    /// Add the datagram prepared in send slot `slot` (its header `hdr`, as
    /// `SendSlots::prepare` returned it) as the next member. False when the request is
    /// full: the caller sends that datagram on its own.
    pub(super) fn add(&mut self, index: u32, slot: u32, hdr: *const libc::msghdr) -> bool {
        // SAFETY: `hdr` is the header of a slot prepared just now and not submitted: it
        // and the iovecs it points at (in the same slot) are only read here, and stay
        // untouched while the slot is busy.
        let member = unsafe { &*hdr };
        // SAFETY: as above; `msg_iov` points at the slot's `msg_iovlen` (1 or 2) iovecs.
        let iovs = unsafe { std::slice::from_raw_parts(member.msg_iov, member.msg_iovlen as _) };
        let send = self.get(index);
        if send.count == MAX_SEGMENTS || send.iov_used + iovs.len() > send.iov.len() {
            return false;
        }
        let len: usize = iovs.iter().map(|iov| iov.iov_len).sum();
        if send.count == 0 {
            send.segment = len;
        }
        send.iov[send.iov_used..send.iov_used + iovs.len()].copy_from_slice(iovs);
        send.iov_used += iovs.len();
        send.members[send.count] = slot;
        send.count += 1;
        true
    }

    /// Members added so far.
    pub(super) fn members(&mut self, index: u32) -> &[u32] {
        let send = self.get(index);
        &send.members[..send.count]
    }

    /// Finish the request: the header to submit and the segment size it carries.
    pub(super) fn finish(&mut self, index: u32) -> (*const libc::msghdr, usize) {
        let send = self.get(index);
        let segment = send.segment;
        let cmsg = encode_segment_cmsg(u16::try_from(segment).unwrap_or(u16::MAX));
        let at = send.pktinfo_len;
        send.control[at..at + SEGMENT_CMSG_SPACE].copy_from_slice(&cmsg);
        send.hdr.msg_name = send.name.as_mut_ptr().cast();
        send.hdr.msg_namelen = SOCKADDR_IN_LEN as _;
        send.hdr.msg_iov = send.iov.as_mut_ptr();
        send.hdr.msg_iovlen = send.iov_used as _;
        send.hdr.msg_control = send.control.as_mut_ptr().cast();
        send.hdr.msg_controllen = (at + SEGMENT_CMSG_SPACE) as _;
        send.hdr.msg_flags = 0;
        (&send.hdr, segment)
    }

    /// The request completed (or was never submitted): free it and hand its members and
    /// segment size to `each_member` / the caller, who completes the member slots.
    /// `None` if it was not in flight.
    pub(super) fn complete(
        &mut self,
        index: u32,
        mut each_member: impl FnMut(u32),
    ) -> Option<(usize, usize)> {
        match self.busy.get(index as usize) {
            Some(true) => {}
            _ => return None,
        }
        self.busy[index as usize] = false;
        let send = self.get(index);
        let (count, segment) = (send.count, send.segment);
        for &member in &send.members[..count] {
            each_member(member);
        }
        send.count = 0;
        self.free.push(index);
        Some((count, segment))
    }

    /// Requests whose completion has not been reaped.
    pub(super) fn in_flight(&self) -> usize {
        self.busy.len() - self.free.len()
    }

    /// Let drop free the requests.
    ///
    /// # Safety
    /// No segmented request is in flight.
    pub(super) unsafe fn release(&mut self) {
        // SAFETY: forwarded from the caller.
        unsafe { self.sends.release() }
    }
}
