//! The io_uring event loop: one ring, one multishot `recvmsg` per socket, a provided-buffer
//! pool, preallocated send slots, and a receive on a wake socket for shutdown.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};

use super::bufring::ProvidedBuffers;
use super::gso_sends::GsoSends;
use super::mem::KernelMem;
use super::recv_out;
use super::send_slots::SendSlots;
use crate::service::{DatagramService, DriverDrop, MAX_DATAGRAM, RecvMeta, TxQueue};
use crate::udp::gso::GsoLimit;
use crate::udp::pktinfo::{
    PKTINFO_CMSG_SPACE, SOCKADDR_IN_LEN, parse_pktinfo_cmsgs, parse_sockaddr_in,
};
use crate::udp::socket::{BoundSocket, SocketTable};
use crate::udp::{ActiveDriver, DriverStats, Shutdown, UdpError, tx_queue_for};

/// How big a ring to build.
pub(super) struct Sizes {
    sq_entries: u32,
    buf_entries: u16,
    payload: usize,
    send_slots: usize,
    gso_sends: usize,
}

impl Sizes {
    /// For serving: 512 receive buffers (about 1 MiB) and 1024 sends in flight (about
    /// 2 MiB). One loop turn can deliver hundreds of ACKs that each release a TFTP window;
    /// when the slots run short the driver stops delivering (back-pressure, see
    /// [`Uring::deliver_pending`]) instead of dropping sends.
    pub(super) const SERVE: Sizes = Sizes {
        sq_entries: 256,
        buf_entries: 512,
        payload: MAX_DATAGRAM,
        send_slots: 1024,
        // A segmented send spans at least two slots, so half as many never run out first
        // (with fewer, a storm's windows went out one datagram at a time once they did:
        // 64 measured a third of the windows segmented). About 1.2 MiB.
        gso_sends: 512,
    };
    /// For the availability probe: as small as the kernel accepts.
    pub(super) const PROBE: Sizes = Sizes {
        sq_entries: 8,
        buf_entries: 2,
        payload: 64,
        send_slots: 0,
        gso_sends: 0,
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
    /// A segmented send (several send slots' datagrams in one `sendmsg`).
    SendGso(u32),
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
            Op::SendGso(i) => (6, i),
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
            6 => Op::SendGso(index),
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
    gso_sends: GsoSends,
    /// Which datagrams go out as one segmented send.
    gso: GsoLimit,
    /// Run lengths of the queue being flushed (kept to reuse its allocation).
    runs: Vec<usize>,
    /// The `msghdr` multishot receives are submitted with: only its name and control
    /// lengths matter, they fix the buffer layout.
    recv_hdr: KernelMem<libc::msghdr>,
    wake_buf: KernelMem<[u8; 8]>,
    fds: Vec<RawFd>,
    ports: Vec<u16>,
    table: SocketTable,
    wake_fd: RawFd,
    armed: Vec<bool>,
    /// Received datagrams (socket index, buffer id) not yet handed to the service because
    /// too few send slots were free for its replies. Their buffers stay claimed, so a
    /// backlog also starves the multishot receive: the kernel then queues (and at worst
    /// drops) on the socket, as it would for any slow reader.
    pending: VecDeque<(usize, u16)>,
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
        // One thread creates, submits to and reaps this ring, so the kernel may run its
        // completion work only when that thread asks for completions (Linux 6.1+) instead
        // of interrupting it for every datagram that arrives. Older kernels refuse the
        // flags: build the ring without them.
        let ring = IoUring::builder()
            .setup_cqsize(sizes.cq_entries())
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(sizes.sq_entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(sizes.cq_entries())
                    .build(sizes.sq_entries)
            })
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
            gso_sends: GsoSends::new(sizes.gso_sends),
            gso: GsoLimit::default(),
            runs: Vec::with_capacity(crate::udp::TX_BATCH),
            recv_hdr: KernelMem::new(Box::new(recv_hdr)),
            wake_buf: KernelMem::new(Box::new([0u8; 8])),
            fds: sockets.iter().map(|s| s.socket.as_raw_fd()).collect(),
            ports: sockets.iter().map(|s| s.local.port()).collect(),
            table: SocketTable::new(sockets),
            wake_fd,
            armed: vec![false; sockets.len()],
            pending: VecDeque::with_capacity(usize::from(sizes.buf_entries)),
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
            // With a backlog, sleep until a send completes (one is in flight, or the
            // backlog would have drained): a deadline in the past would make this spin.
            let deadline = if self.pending.is_empty() {
                service.next_timeout()
            } else {
                None
            };
            self.wait(deadline).map_err(io_error("io_uring_enter"))?;
            self.reap(|this, op, res, flags| {
                if let Some(received) = this.bookkeep(op, res, flags) {
                    this.pending.push_back(received);
                }
            });
            self.deliver_pending(service, &mut tx, max_sends);
            if let Some(at) = service.next_timeout() {
                let now = Instant::now();
                if at <= now && self.make_room(&mut tx, max_sends) {
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
            // buffers are back now, so start it again. Not while a backlog holds buffers:
            // the receive would end again at once, and the loop would spin on it.
            if self.pending.is_empty() {
                for i in 0..self.armed.len() {
                    if !self.armed[i] {
                        self.arm_recv(i)
                            .map_err(io_error("re-arming multishot recvmsg"))?;
                    }
                }
            }
            if !self.wake_armed {
                self.arm_wake()
                    .map_err(io_error("re-arming the wake-up receive"))?;
            }
        }
        Ok(())
    }

    /// Hand received datagrams to the service, oldest first, while the send slots can
    /// take what each may queue. What is left waits for send completions: back-pressure
    /// from the kernel's send path to the receive side, instead of dropping replies.
    fn deliver_pending<S: DatagramService>(
        &mut self,
        service: &mut S,
        tx: &mut TxQueue,
        max_sends: usize,
    ) {
        let now = Instant::now();
        while let Some(&(i, bid)) = self.pending.front() {
            if !self.make_room(tx, max_sends) {
                self.stats.recv_deferred += 1;
                break;
            }
            self.pending.pop_front();
            self.deliver(i, bid, now, service, tx);
            self.bufs.recycle(bid);
        }
    }

    /// Make sure one more event's sends (`max_sends`) fit both the queue and the send
    /// slots behind it, flushing the queue into the slots if needed. False when the slots
    /// are too busy: the caller waits for completions.
    fn make_room(&mut self, tx: &mut TxQueue, max_sends: usize) -> bool {
        if tx.remaining() < max_sends {
            self.flush(tx);
        }
        // With nothing in flight there is nothing to wait for: go on (sends past the slots
        // are then dropped and counted, as they only can be when an event may queue more
        // than there are slots).
        self.slots.free() >= tx.len() + max_sends || self.slots.in_flight() == 0
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
        while let Some((_, bid)) = self.pending.pop_front() {
            self.bufs.recycle(bid);
        }
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
            self.gso_sends.release();
            self.recv_hdr.release();
            self.wake_buf.release();
        }
    }

    /// Requests whose final completion has not been reaped.
    fn outstanding(&self) -> usize {
        self.armed.iter().filter(|&&a| a).count()
            + usize::from(self.wake_armed)
            + self.slots.in_flight()
            + self.gso_sends.in_flight()
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
                // Past: do not sleep, but still ask for completions, so that deferred
                // completion work runs (a plain submit would leave it queued).
                _ => {
                    let ts = types::Timespec::new();
                    let args = types::SubmitArgs::new().timespec(&ts);
                    submitter.submit_with_args(1, &args)
                }
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
            Op::SendGso(index) => {
                let slots = &mut self.slots;
                let done = self.gso_sends.complete(index, |member| {
                    slots.complete(member);
                });
                if let Some((count, segment)) = done {
                    let count = count as u64;
                    if res >= 0 {
                        self.stats.sent += count;
                        self.stats.gso_sends += 1;
                    } else if self.gso.refused(-res, segment) {
                        // Lost: the protocol retransmits, one by one from now on.
                        self.stats.gso_refused += 1;
                        self.stats.send_errors += count;
                    } else {
                        self.stats.send_errors += count;
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
    ) {
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

    /// Move every queued datagram into a send slot and queue the `sendmsg`s: one per run
    /// of datagrams that [`GsoLimit::plan`] groups (a segmented send over the run's slots),
    /// else one per datagram. Nothing is copied: buffers are swapped between the queue
    /// and the slots, and a body's `Bytes` moves into the slot (no reference count change)
    /// and is dropped when the send completes.
    fn flush(&mut self, tx: &mut TxQueue) {
        if tx.is_empty() {
            return;
        }
        let mut runs = std::mem::take(&mut self.runs);
        self.gso.plan(tx, &mut runs);
        let mut runs_left = runs.iter();
        // Datagrams left in the current run, and its segmented send if it has one.
        let mut left = 0;
        let mut group = None;
        tx.drain_swap(|meta, buf, len, body| {
            if left == 0 {
                left = runs_left.next().copied().unwrap_or(1);
                group = if left > 1 {
                    self.gso_sends.begin(meta)
                } else {
                    None
                };
            }
            left -= 1;
            let last_of_run = left == 0;
            // One lookup serves the datagram and, at the end of a run, its segmented send:
            // every datagram of a run has the same `meta`.
            let socket = self.table.pick(meta.local_port, meta.ifindex);
            match socket {
                None => self.stats.send_dropped += 1,
                Some(i) => match self.slots.prepare(meta, buf, len, body) {
                    None => self.stats.send_dropped += 1,
                    Some((slot, hdr)) => {
                        let grouped = group.is_some_and(|g| self.gso_sends.add(g, slot, hdr));
                        if !grouped {
                            self.submit_single(self.fds[i], slot, hdr);
                        }
                    }
                },
            }
            if last_of_run && let Some(g) = group.take() {
                match socket {
                    Some(i) => self.submit_group(self.fds[i], g),
                    // Nothing was added (the same lookup failed for every member).
                    None => {
                        self.abandon_group(g);
                    }
                }
            }
        });
        self.runs = runs;
    }

    /// Queue the `sendmsg` of one prepared send slot.
    fn submit_single(&mut self, fd: RawFd, slot: u32, hdr: *const libc::msghdr) {
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
    }

    /// Queue a segmented send over the slots added to `group`.
    fn submit_group(&mut self, fd: RawFd, group: u32) {
        if self.gso_sends.members(group).is_empty() {
            self.abandon_group(group);
            return;
        }
        let (hdr, _segment) = self.gso_sends.finish(group);
        let entry = opcode::SendMsg::new(types::Fd(fd), hdr)
            .build()
            .user_data(Op::SendGso(group).encode());
        // SAFETY: the header, its iovec array, name and control bytes live in segmented
        // send `group`, busy (untouched) until this request's completion is reaped. Its
        // iovecs point at the buffers and bodies of its member send slots, which stay busy
        // (buffers not swapped, `Bytes` held) until the same completion completes them
        // (`GsoSends::complete`), or are leaked with the slots if teardown times out. The
        // socket outlives teardown.
        if let Err(e) = unsafe { self.push(&entry) } {
            let dropped = self.abandon_group(group);
            self.stats.send_dropped += dropped;
            if self.failure.is_none() {
                self.failure = Some(("submitting a segmented sendmsg", e));
            }
        }
    }

    /// Free a segmented send that will not be submitted, and its member slots; returns how
    /// many datagrams it held.
    fn abandon_group(&mut self, group: u32) -> u64 {
        let slots = &mut self.slots;
        let done = self.gso_sends.complete(group, |member| {
            slots.complete(member);
        });
        done.map_or(0, |(count, _)| count as u64)
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
