//! The io_uring event loop: one ring, one multishot `recvmsg` per socket, a provided-buffer
//! pool, preallocated send slots, and a receive on a wake socket for shutdown.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};

use super::bufring::ProvidedBuffers;
use super::mem::KernelMem;
use super::recv_out;
use super::send_slots::SendSlots;
use crate::udp::pktinfo::{
    PKTINFO_CMSG_SPACE, SOCKADDR_IN_LEN, parse_pktinfo_cmsgs, parse_sockaddr_in,
};
use crate::udp::socket::{BoundSocket, SocketTable};
use crate::udp::{
    ActiveDriver, DatagramService, DriverDrop, DriverStats, MAX_DATAGRAM, RecvMeta, Shutdown,
    TxQueue, UdpError, tx_queue_for,
};

/// How big a ring to build.
pub(super) struct Sizes {
    sq_entries: u32,
    buf_entries: u16,
    payload: usize,
    send_slots: usize,
}

impl Sizes {
    /// For serving: 512 receive buffers (about 1 MiB) and 4096 sends in flight (about
    /// 8 MiB). One loop turn can deliver hundreds of ACKs that each release a TFTP window;
    /// with 512 slots a 500-client windowed storm dropped thousands of sends per run, each
    /// costing its transfer a retransmit timeout. Sends past the slots are still dropped
    /// and counted (`send_dropped`): real back-pressure (deferring receives until slots
    /// free up) is the lasting fix.
    pub(super) const SERVE: Sizes = Sizes {
        sq_entries: 256,
        buf_entries: 512,
        payload: MAX_DATAGRAM,
        send_slots: 4096,
    };
    /// For the availability probe: as small as the kernel accepts.
    pub(super) const PROBE: Sizes = Sizes {
        sq_entries: 8,
        buf_entries: 2,
        payload: 64,
        send_slots: 0,
    };

    /// Header, name, control and payload: see [`recv_out`].
    fn buf_size(&self) -> usize {
        recv_out::HEADER_LEN + SOCKADDR_IN_LEN + PKTINFO_CMSG_SPACE + self.payload
    }

    /// Room for every completion that can be pending at once (one per buffer, one per
    /// send slot, terminal receive, wake and cancel completions), so the CQ never
    /// overflows.
    fn cq_entries(&self) -> u32 {
        let most = 2 * (u32::from(self.buf_entries) + self.send_slots as u32) + 64;
        most.max(self.sq_entries)
    }
}

const BGID: u16 = 0;
const CQE_BATCH: usize = 256;
/// How long teardown waits for cancelled requests before leaking their memory instead.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// What a request was, packed into its `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Recv(u32),
    Send(u32),
    Wake,
    Cancel,
    Nop,
}

impl Op {
    fn encode(self) -> u64 {
        let (tag, index) = match self {
            Op::Recv(i) => (1u64, i),
            Op::Send(i) => (2, i),
            Op::Wake => (3, 0),
            Op::Cancel => (4, 0),
            Op::Nop => (5, 0),
        };
        (tag << 32) | u64::from(index)
    }

    fn decode(user_data: u64) -> Option<Op> {
        let index = user_data as u32;
        Some(match user_data >> 32 {
            1 => Op::Recv(index),
            2 => Op::Send(index),
            3 => Op::Wake,
            4 => Op::Cancel,
            5 => Op::Nop,
            _ => return None,
        })
    }
}

/// One ring serving a set of sockets. The sockets and the wake socket are owned by the
/// caller and must stay open until [`Uring::teardown`] returns.
pub(super) struct Uring {
    ring: IoUring,
    bufs: ProvidedBuffers,
    slots: SendSlots,
    /// The `msghdr` multishot receives are submitted with: only its name and control
    /// lengths matter, they fix the buffer layout.
    recv_hdr: KernelMem<libc::msghdr>,
    wake_buf: KernelMem<[u8; 8]>,
    fds: Vec<RawFd>,
    ports: Vec<u16>,
    table: SocketTable,
    wake_fd: RawFd,
    armed: Vec<bool>,
    wake_armed: bool,
    cancels: usize,
    stop: bool,
    /// The first unrecoverable error, reported once the batch in hand is accounted for.
    failure: Option<(&'static str, io::Error)>,
    cqes: Box<[MaybeUninit<cqueue::Entry>]>,
    pub(super) stats: DriverStats,
}

impl Uring {
    /// Build the ring. `Err` is the kernel's refusal, worded for a log line.
    pub(super) fn new(
        sockets: &[BoundSocket],
        wake_fd: RawFd,
        sizes: &Sizes,
    ) -> Result<Self, String> {
        let ring = IoUring::builder()
            .setup_cqsize(sizes.cq_entries())
            .build(sizes.sq_entries)
            .map_err(|e| format!("io_uring_setup: {e}"))?;
        check_support(&ring)?;
        let mut bufs = ProvidedBuffers::new(sizes.buf_entries, sizes.buf_size(), BGID);
        bufs.register(&ring.submitter())
            .map_err(|e| format!("registering a provided-buffer ring (Linux 5.19+): {e}"))?;

        // SAFETY: `msghdr` is plain pointers and integers; all zero is a valid header.
        let mut recv_hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        recv_hdr.msg_namelen = SOCKADDR_IN_LEN as _;
        recv_hdr.msg_controllen = PKTINFO_CMSG_SPACE as _;
        Ok(Uring {
            ring,
            bufs,
            slots: SendSlots::new(sizes.send_slots),
            recv_hdr: KernelMem::new(Box::new(recv_hdr)),
            wake_buf: KernelMem::new(Box::new([0u8; 8])),
            fds: sockets.iter().map(|s| s.socket.as_raw_fd()).collect(),
            ports: sockets.iter().map(|s| s.local.port()).collect(),
            table: SocketTable::new(sockets),
            wake_fd,
            armed: vec![false; sockets.len()],
            wake_armed: false,
            cancels: 0,
            stop: false,
            failure: None,
            cqes: (0..CQE_BATCH).map(|_| MaybeUninit::uninit()).collect(),
            stats: DriverStats::default(),
        })
    }

    /// Serve until the wake socket fires or `shutdown` is seen. Call
    /// [`Uring::teardown`] afterwards, whatever the result.
    pub(super) fn serve<S: DatagramService>(
        &mut self,
        service: &mut S,
        shutdown: &Shutdown,
    ) -> Result<(), UdpError> {
        let max_sends = service.max_sends_per_event();
        let mut tx = tx_queue_for(service);
        for i in 0..self.fds.len() {
            self.arm_recv(i)
                .map_err(io_error("arming multishot recvmsg"))?;
        }
        self.arm_wake()
            .map_err(io_error("arming the wake-up receive"))?;

        while !self.stop && !shutdown.is_triggered() {
            self.wait(service.next_timeout())
                .map_err(io_error("io_uring_enter"))?;
            let now = Instant::now();
            self.reap(|this, op, res, flags| {
                if let Some((i, bid)) = this.bookkeep(op, res, flags) {
                    this.deliver(i, bid, now, service, &mut tx, max_sends);
                    this.bufs.recycle(bid);
                }
            });
            if let Some(at) = service.next_timeout() {
                let now = Instant::now();
                if at <= now {
                    if tx.remaining() < max_sends {
                        self.flush(&mut tx);
                    }
                    service.on_timeout(now, &mut tx);
                }
            }
            // Queued sends go to the kernel with the next io_uring_enter: one submission
            // for the whole batch.
            self.flush(&mut tx);
            if let Some((op, e)) = self.failure.take() {
                return Err(io_error(op)(e));
            }
            self.bufs.publish();
            if self.stop {
                break;
            }
            // A multishot receive ends when it runs out of buffers (or on an error); the
            // buffers are back now, so start it again.
            for i in 0..self.armed.len() {
                if !self.armed[i] {
                    self.arm_recv(i)
                        .map_err(io_error("re-arming multishot recvmsg"))?;
                }
            }
            if !self.wake_armed {
                self.arm_wake()
                    .map_err(io_error("re-arming the wake-up receive"))?;
            }
        }
        Ok(())
    }

    /// Check that multishot `recvmsg` is accepted (Linux 6.0+): arm it on the first socket
    /// (which must never receive anything) behind a no-op, and see whether it failed.
    pub(super) fn check_multishot(&mut self) -> Result<(), String> {
        let arm = self.arm_recv(0).and_then(|()| {
            let nop = opcode::Nop::new().build().user_data(Op::Nop.encode());
            // SAFETY: a no-op carries no pointers.
            unsafe { self.push(&nop) }
        });
        arm.map_err(|e| format!("submitting a multishot recvmsg: {e}"))?;
        // A request the kernel rejects at preparation completes during the submit, before
        // the no-op that follows it; so once the no-op is reaped, the verdict is in.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut nop_seen = false;
        while !nop_seen && Instant::now() < deadline {
            self.wait(Some(deadline))
                .map_err(|e| format!("io_uring_enter: {e}"))?;
            self.reap(|this, op, res, flags| {
                nop_seen |= op == Some(Op::Nop);
                if let Some((_, bid)) = this.bookkeep(op, res, flags) {
                    this.bufs.recycle(bid);
                }
            });
        }
        if let Some((_, e)) = self.failure.take() {
            return Err(format!(
                "multishot recvmsg refused (Linux 6.0+ needed): {e}"
            ));
        }
        if !nop_seen {
            return Err("io_uring did not complete a no-op within a second".to_owned());
        }
        Ok(())
    }

    /// Cancel what is still armed, wait for every request to finish, and free the memory
    /// the kernel used. If requests do not finish in time the memory is leaked instead.
    pub(super) fn teardown(&mut self) {
        for i in 0..self.armed.len() {
            if self.armed[i] {
                self.cancel(Op::Recv(i as u32));
            }
        }
        if self.wake_armed {
            self.cancel(Op::Wake);
        }
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        while self.outstanding() > 0 && Instant::now() < deadline {
            // Errors here only mean another round; the deadline bounds the loop.
            let _ = self.wait(Some(deadline));
            self.reap(|this, op, res, flags| {
                if let Some((_, bid)) = this.bookkeep(op, res, flags) {
                    this.bufs.recycle(bid);
                }
            });
        }
        if self.outstanding() > 0 {
            tracing::warn!(
                outstanding = self.outstanding(),
                "io_uring requests did not finish at shutdown; leaking their buffers"
            );
            return;
        }
        if let Err(e) = self.bufs.unregister(&self.ring.submitter()) {
            tracing::warn!(error = %e, "unregistering the io_uring buffer ring failed; leaking it");
        }
        // SAFETY: `outstanding() == 0`: every request ever submitted has posted its final
        // completion (multishot receives ended without IORING_CQE_F_MORE, sends and
        // wake-ups completed, cancels answered), so no request refers to this memory.
        // The buffer ring frees itself only if it was unregistered above.
        unsafe {
            self.bufs.release();
            self.slots.release();
            self.recv_hdr.release();
            self.wake_buf.release();
        }
    }

    /// Requests whose final completion has not been reaped.
    fn outstanding(&self) -> usize {
        self.armed.iter().filter(|&&a| a).count()
            + usize::from(self.wake_armed)
            + self.slots.in_flight()
            + self.cancels
    }

    /// Push one request, submitting what is queued if the submission queue is full.
    ///
    /// # Safety
    /// Everything `entry` points at must stay valid until its final completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        submit_retrying(&self.ring)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))
    }

    fn arm_recv(&mut self, i: usize) -> io::Result<()> {
        let entry = opcode::RecvMsgMulti::new(types::Fd(self.fds[i]), self.recv_hdr.as_ptr(), BGID)
            .build()
            .user_data(Op::Recv(i as u32).encode());
        // SAFETY: the request reads `recv_hdr` and writes into buffers of group BGID; both
        // are `KernelMem` released only after teardown reaped its final completion. The
        // socket stays open until teardown returns (the caller owns it).
        unsafe { self.push(&entry) }?;
        self.armed[i] = true;
        Ok(())
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let len = std::mem::size_of::<[u8; 8]>() as u32;
        let entry = opcode::Recv::new(types::Fd(self.wake_fd), self.wake_buf.as_ptr().cast(), len)
            .build()
            .user_data(Op::Wake.encode());
        // SAFETY: the request writes into `wake_buf`, a `KernelMem` released only after
        // teardown reaped its completion; the wake socket outlives teardown.
        unsafe { self.push(&entry) }?;
        self.wake_armed = true;
        Ok(())
    }

    fn cancel(&mut self, target: Op) {
        let entry = opcode::AsyncCancel::new(target.encode())
            .build()
            .user_data(Op::Cancel.encode());
        // SAFETY: a cancel request carries no pointers.
        if unsafe { self.push(&entry) }.is_ok() {
            self.cancels += 1;
        }
    }

    /// Submit what is queued and wait for a completion or `deadline`.
    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let submitter = self.ring.submitter();
        let res = match deadline {
            None => submitter.submit_and_wait(1),
            Some(at) => match at.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => {
                    let ts = types::Timespec::from(left);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    submitter.submit_with_args(1, &args)
                }
                _ => submitter.submit(),
            },
        };
        match res {
            Ok(_) => Ok(()),
            // Timed out, interrupted by a signal, or completions pending: all mean "look".
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Hand every pending completion to `handle`, in order.
    fn reap(&mut self, mut handle: impl FnMut(&mut Self, Option<Op>, i32, u32)) {
        // Taken out so `handle` may borrow `self`; put back before returning.
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            let batch = self.ring.completion().fill(&mut cqes);
            if batch.is_empty() {
                break;
            }
            for cqe in batch.iter() {
                handle(self, Op::decode(cqe.user_data()), cqe.result(), cqe.flags());
            }
        }
        self.cqes = cqes;
    }

    /// Account for one completion. Returns a socket and a buffer holding a datagram to
    /// deliver (and then recycle).
    fn bookkeep(&mut self, op: Option<Op>, res: i32, flags: u32) -> Option<(usize, u16)> {
        match op? {
            Op::Recv(i) => {
                let i = i as usize;
                if !cqueue::more(flags) {
                    if let Some(armed) = self.armed.get_mut(i) {
                        *armed = false;
                    }
                }
                if res < 0 {
                    self.recv_failed(-res);
                }
                let bid = cqueue::buffer_select(flags)?;
                if !self.bufs.claim(bid) {
                    return None;
                }
                if res < 0 || i >= self.fds.len() {
                    self.bufs.recycle(bid);
                    return None;
                }
                Some((i, bid))
            }
            Op::Send(slot) => {
                if self.slots.complete(slot) {
                    if res < 0 {
                        self.stats.send_errors += 1;
                    } else {
                        self.stats.sent += 1;
                    }
                }
                None
            }
            Op::Wake => {
                self.wake_armed = false;
                // A byte from the shutdown handle or from the dropped `serve` future.
                if res >= 0 {
                    self.stop = true;
                }
                None
            }
            Op::Cancel => {
                self.cancels = self.cancels.saturating_sub(1);
                None
            }
            Op::Nop => None,
        }
    }

    fn recv_failed(&mut self, errno: i32) {
        match errno {
            // Out of buffers (re-armed once they are back) or cancelled at teardown.
            libc::ENOBUFS | libc::ECANCELED => {}
            libc::EINTR
            | libc::ENOMEM
            | libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH => self.stats.recv_errors += 1,
            _ => {
                if self.failure.is_none() {
                    let error = io::Error::from_raw_os_error(errno);
                    self.failure = Some(("multishot recvmsg", error));
                }
            }
        }
    }

    /// Parse the datagram in buffer `bid` and hand it to the service.
    fn deliver<S: DatagramService>(
        &mut self,
        i: usize,
        bid: u16,
        now: Instant,
        service: &mut S,
        tx: &mut TxQueue,
        max_sends: usize,
    ) {
        if tx.remaining() < max_sends {
            self.flush(tx);
        }
        let local_port = self.ports[i];
        let Some(buf) = self.bufs.data(bid) else {
            return;
        };
        let dropped = match recv_out::parse(buf, SOCKADDR_IN_LEN, PKTINFO_CMSG_SPACE) {
            None => Some(DriverDrop::NoPacketInfo),
            Some(out) if out.truncated => Some(DriverDrop::Truncated),
            Some(out) => match (
                parse_sockaddr_in(out.name),
                parse_pktinfo_cmsgs(out.control),
            ) {
                (Some(src), Some(info)) => {
                    let meta = RecvMeta {
                        src,
                        local_addr: info.local_addr,
                        local_port,
                        ifindex: info.ifindex,
                    };
                    self.stats.received += 1;
                    service.on_datagram(now, out.payload, &meta, tx);
                    None
                }
                _ => Some(DriverDrop::NoPacketInfo),
            },
        };
        if let Some(reason) = dropped {
            match reason {
                DriverDrop::Truncated => self.stats.truncated += 1,
                DriverDrop::NoPacketInfo => self.stats.no_packet_info += 1,
            }
            service.on_dropped(reason);
        }
    }

    /// Move every queued datagram into a send slot and queue its `sendmsg`. Nothing is
    /// copied: buffers are swapped between the queue and the slots, and a body's `Bytes`
    /// moves into the slot (no reference count change) and is dropped when the send
    /// completes.
    fn flush(&mut self, tx: &mut TxQueue) {
        tx.drain_swap(|meta, buf, len, body| {
            let Some(i) = self.table.pick(meta.local_port, meta.ifindex) else {
                self.stats.send_dropped += 1;
                return;
            };
            let fd = self.fds[i];
            let Some((slot, hdr)) = self.slots.prepare(meta, buf, len, body) else {
                self.stats.send_dropped += 1;
                return;
            };
            let entry = opcode::SendMsg::new(types::Fd(fd), hdr)
                .build()
                .user_data(Op::Send(slot).encode());
            // SAFETY: the header, and the iovecs, name, control bytes and buffer it points
            // at, live in send slot `slot`, which stays busy (neither rewritten nor freed)
            // until this request's completion is reaped. The body the second iovec points
            // at is kept alive by the `Bytes` the slot owns, dropped only in
            // `SendSlots::complete` once that completion is reaped (or leaked with the
            // slots if teardown times out). The socket outlives teardown.
            if let Err(e) = unsafe { self.push(&entry) } {
                self.slots.complete(slot);
                self.stats.send_dropped += 1;
                if self.failure.is_none() {
                    self.failure = Some(("submitting sendmsg", e));
                }
            }
        });
    }
}

/// Refuse kernels missing what the driver uses.
fn check_support(ring: &IoUring) -> Result<(), String> {
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE (Linux 5.6+): {e}"))?;
    let needed = [
        (opcode::RecvMsg::CODE, "IORING_OP_RECVMSG"),
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
        (opcode::Recv::CODE, "IORING_OP_RECV"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Nop::CODE, "IORING_OP_NOP"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(format!("the kernel's io_uring lacks {name}"));
        }
    }
    if !ring.params().is_feature_ext_arg() {
        return Err("the kernel's io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11+)".to_owned());
    }
    Ok(())
}

fn submit_retrying(ring: &IoUring) -> io::Result<usize> {
    loop {
        match ring.submit() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            res => return res,
        }
    }
}

fn io_error(op: &'static str) -> impl Fn(io::Error) -> UdpError {
    move |source| UdpError::Io {
        driver: ActiveDriver::IoUring,
        op,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_round_trips() {
        for op in [
            Op::Recv(0),
            Op::Recv(7),
            Op::Send(511),
            Op::Wake,
            Op::Cancel,
            Op::Nop,
        ] {
            assert_eq!(Op::decode(op.encode()), Some(op));
        }
        assert_eq!(Op::decode(0), None);
    }

    #[test]
    fn serve_buffers_fit_the_largest_datagram() {
        let out =
            Sizes::SERVE.buf_size() - recv_out::HEADER_LEN - SOCKADDR_IN_LEN - PKTINFO_CMSG_SPACE;
        assert_eq!(out, MAX_DATAGRAM);
    }
}
