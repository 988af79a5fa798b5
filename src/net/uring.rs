//! The io_uring backend of the RTP driver: the second module with `unsafe` (the first is [`super::sys`]).
//!
//! One ring per driver thread, set up `SINGLE_ISSUER | DEFER_TASKRUN` (completions are produced only when the
//! driver enters the kernel to wait, in its own context: no interrupts of the hot loop, no cross-thread wake-ups).
//! Every leg socket has one multishot `RecvMsg` armed on it, taking buffers from one shared provided-buffer ring;
//! each datagram arrives as a completion carrying `io_uring_recvmsg_out` + source address + payload. The driver
//! copies the payload into a send slot (a 172-byte copy costs less than tracking the buffer's lifetime through
//! the send), returns the receive buffer to the ring at once, relays in place and queues a `Send` SQE from the
//! slot; all SQEs of a round go to the kernel with the next wait, so a busy round costs one `io_uring_enter` for
//! all its receives and sends instead of a `recvmmsg` per ready socket, a `sendmmsg` per run and an `epoll_wait`.
//!
//! # Memory the kernel holds on to
//! The provided-buffer ring, the receive buffers, the shared receive `msghdr` and the send slots (buffer,
//! destination address) are heap allocations made once in [`Uring::new`] and never moved or resized; the
//! kernel reads or writes them only while requests are live. [`Drop`] cancels every request and waits for the
//! cancellations before the ring is closed and the memory freed.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, CancelBuilder, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, types, IoUring};

use crate::net::sys::{sockaddr_from_bytes, to_sockaddr, BUF_LEN};

/// user_data bit marking a send completion (the low bits are the slot). Driver tokens must leave it clear.
const SEND_BIT: u64 = 1 << 63;
/// user_data of cancellation requests (their completions are ignored).
const CANCEL_TOKEN: u64 = SEND_BIT - 1;
/// Buffer group id of the shared provided-buffer ring.
const BGID: u16 = 7;
/// Bytes reserved ahead of the payload in each receive buffer: `io_uring_recvmsg_out` (16) + name (28).
const RECV_HEAD: usize = 16 + size_of::<libc::sockaddr_in6>();
/// Size of each provided receive buffer.
const RECV_BUF: usize = 2048;
const _: () = assert!(RECV_HEAD + BUF_LEN <= RECV_BUF);

/// One completion, copied out of the completion queue (receive and poll completions; sends are handled here).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cqe {
    /// The token passed to [`Uring::arm_recv`] / [`Uring::arm_poll`].
    pub(crate) token: u64,
    /// Kernel result: bytes received, or a negative errno.
    pub(crate) result: i32,
    /// Completion flags (buffer id, `MORE`).
    pub(crate) flags: u32,
}

impl Cqe {
    /// The request stays armed (multishot): no need to re-arm.
    pub(crate) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// A socket as an SQE names it: a plain descriptor, or a slot of the ring's registered-file table (saves the
/// kernel a file-table lookup and reference count per request).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    Fd(RawFd),
    Fixed(u32),
}

/// Send/receive counters of one [`Uring::reap`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Reaped {
    pub(crate) sent: u64,
    pub(crate) send_failed: u64,
}

/// The provided-buffer ring: `n` entries (a power of two) in page-aligned memory plus the buffers.
struct BufRing {
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    bufs: Box<[u8]>,
    n: u16,
    tail: u16,
}

impl BufRing {
    fn new(n: u16) -> io::Result<Self> {
        let ring_bytes = usize::from(n) * size_of::<BufRingEntry>();
        // SAFETY: anonymous private mapping, no file; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut r = Self {
            ring: ptr.cast(),
            ring_bytes,
            bufs: vec![0u8; usize::from(n) * RECV_BUF].into_boxed_slice(),
            n,
            tail: 0,
        };
        for bid in 0..n {
            r.push(bid);
        }
        r.publish();
        Ok(r)
    }

    /// Put buffer `bid` back at the (local) tail; [`BufRing::publish`] makes it visible to the kernel.
    fn push(&mut self, bid: u16) {
        let mask = self.n - 1;
        let i = usize::from(self.tail & mask);
        let addr = self.bufs.as_ptr() as u64 + (usize::from(bid) * RECV_BUF) as u64;
        // SAFETY: `i < n`, the mapping holds `n` entries; the kernel reads entries only up to the published tail,
        // and this slot is past it until `publish`.
        let e = unsafe { &mut *self.ring.add(i) };
        e.set_addr(addr);
        e.set_len(RECV_BUF as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlaps entry 0's reserved field, inside the mapping; the kernel reads it
        // concurrently, so it is written with a release store.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn buf(&self, bid: u16) -> Option<&[u8]> {
        let start = usize::from(bid).checked_mul(RECV_BUF)?;
        self.bufs.get(start..start + RECV_BUF)
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping, after the ring that used it is gone (see `Uring`'s Drop).
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}

/// Send slots: each a buffer plus the destination address a `Send` SQE points to.
struct Slots {
    bufs: Box<[[u8; BUF_LEN]]>,
    names: Box<[libc::sockaddr_in6]>,
    free: Vec<u32>,
}

/// An io_uring instance with one shared provided-buffer ring and a pool of send slots.
pub(crate) struct Uring {
    // Field order matters for Drop: the ring (closed in `Uring::drop` after cancelling) goes before the memory.
    ring: IoUring,
    bufs: BufRing,
    recv_hdr: Box<libc::msghdr>,
    slots: Slots,
    enters: u64,
    /// Size of the registered-file table (0: none).
    fixed_cap: u32,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("buffers", &self.bufs.n)
            .field("slots", &self.slots.bufs.len())
            .finish()
    }
}

impl Uring {
    /// A ring of `entries` SQEs, `buffers` receive buffers (power of two ≤ 32768), `slots` send slots.
    pub(crate) fn new(entries: u32, buffers: u16, slots: u32) -> io::Result<Self> {
        if !buffers.is_power_of_two() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(entries.saturating_mul(8))
            .build(entries)?;
        let bufs = BufRing::new(buffers)?;
        // SAFETY: the ring memory and buffers live as long as `Uring`, which unregisters them on drop.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.ring as u64, buffers, BGID, 0)?;
        }
        // SAFETY: plain data; all-zero is valid.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
        recv_hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let n = slots as usize;
        // SAFETY: plain data; all-zero is valid.
        let name = unsafe { zeroed::<libc::sockaddr_in6>() };
        let s = Slots {
            bufs: vec![[0u8; BUF_LEN]; n].into_boxed_slice(),
            names: vec![name; n].into_boxed_slice(),
            free: (0..slots).rev().collect(),
        };
        // The registered-file table may not exceed RLIMIT_NOFILE; without one, SQEs name plain descriptors.
        let fixed_cap = nofile_soft_limit().min(65_536);
        let fixed_cap = if ring.submitter().register_files_sparse(fixed_cap).is_ok() {
            fixed_cap
        } else {
            0
        };
        Ok(Self {
            ring,
            bufs,
            recv_hdr,
            slots: s,
            enters: 0,
            fixed_cap,
        })
    }

    /// Put `fd` in registered-file slot `slot`; false when the table is too small (use [`Target::Fd`]).
    ///
    /// The table changes at once, but a queued SQE looks its fixed file up only when it is submitted: the
    /// queue is submitted first, so requests queued for the slot's previous file (a re-armed receive, a send)
    /// still reach that file.
    pub(crate) fn fix(&mut self, slot: u32, fd: RawFd) -> bool {
        if slot >= self.fixed_cap {
            return false;
        }
        self.submit();
        self.ring
            .submitter()
            .register_files_update(slot, &[fd])
            .is_ok()
    }

    /// Empty registered-file slot `slot` (the table holds a reference that keeps the socket open). Submits the
    /// queue first, as [`Self::fix`] does.
    pub(crate) fn unfix(&mut self, slot: u32) {
        if slot < self.fixed_cap {
            self.submit();
            let _ = self.ring.submitter().register_files_update(slot, &[-1]);
        }
    }

    /// `io_uring_enter` calls so far.
    pub(crate) fn enters(&self) -> u64 {
        self.enters
    }

    /// Queue an SQE; false if the queue stayed full (the kernel refused to take the queued ones).
    fn push(&mut self, e: &io_uring::squeue::Entry) -> bool {
        // SAFETY (for the callers' entries): every pointer in an SQE we build points into memory owned by `self`
        // that lives until the request completes or is cancelled in Drop.
        while unsafe { self.ring.submission().push(e) }.is_err() {
            // Queue full: hand what we have to the kernel and retry.
            self.enters += 1;
            if self.ring.submit().is_err() {
                return false;
            }
        }
        true
    }

    /// Arm a multishot receive on `fd`; its completions carry `token`.
    pub(crate) fn arm_recv(&mut self, target: Target, token: u64) {
        let e = match target {
            Target::Fd(fd) => {
                opcode::RecvMsgMulti::new(types::Fd(fd), &*self.recv_hdr, BGID).build()
            }
            Target::Fixed(i) => {
                opcode::RecvMsgMulti::new(types::Fixed(i), &*self.recv_hdr, BGID).build()
            }
        }
        .user_data(token & !SEND_BIT);
        self.push(&e);
    }

    /// Arm a multishot readability poll on `fd` (the driver's wake-up socket).
    pub(crate) fn arm_poll(&mut self, fd: RawFd, token: u64) {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token & !SEND_BIT);
        self.push(&e);
    }

    /// Cancel the request armed with `token` (its last completion says `ECANCELED`).
    pub(crate) fn cancel(&mut self, token: u64) {
        let e = opcode::AsyncCancel::new(token & !SEND_BIT)
            .build()
            .user_data(CANCEL_TOKEN);
        self.push(&e);
    }

    /// Submit queued SQEs and wait for at least one completion or `timeout`.
    pub(crate) fn enter(&mut self, timeout: Duration) -> io::Result<()> {
        self.enters += 1;
        let ts = Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Submit queued SQEs without waiting.
    pub(crate) fn submit(&mut self) {
        self.enters += 1;
        let _ = self.ring.submit();
    }

    /// Move every completion out of the queue: send completions free their slot and are counted; the rest are
    /// appended to `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<Cqe>) -> Reaped {
        let mut r = Reaped::default();
        let Self { ring, slots, .. } = self;
        for c in ring.completion() {
            let token = c.user_data();
            if token == CANCEL_TOKEN {
                continue;
            }
            if token & SEND_BIT != 0 {
                slots.free.push((token & !SEND_BIT) as u32);
                if c.result() >= 0 {
                    r.sent += 1;
                } else {
                    r.send_failed += 1;
                }
                continue;
            }
            out.push(Cqe {
                token,
                result: c.result(),
                flags: c.flags(),
            });
        }
        r
    }

    /// Take the datagram of a receive completion: copy it into a free send slot, give the receive buffer back to
    /// the kernel. Returns the slot, the datagram length and its source; `None` when the completion carries no
    /// datagram (error, truncated) or no slot is free (the datagram is then dropped). A completion that carries a
    /// buffer always gives it back.
    pub(crate) fn take(&mut self, c: &Cqe) -> Option<(u32, usize, SocketAddr)> {
        let bid = cqueue::buffer_select(c.flags)?;
        let got = self.copy_out(bid, c.result);
        self.bufs.push(bid);
        self.bufs.publish();
        got
    }

    fn copy_out(&mut self, bid: u16, result: i32) -> Option<(u32, usize, SocketAddr)> {
        let len = usize::try_from(result).ok()?;
        let buf = self.bufs.buf(bid)?.get(..len)?;
        let msg = types::RecvMsgOut::parse(buf, &self.recv_hdr).ok()?;
        if msg.is_payload_truncated() || msg.is_name_data_truncated() {
            return None;
        }
        let from = sockaddr_from_bytes(msg.name_data())?;
        let payload = msg.payload_data();
        let slot = self.slots.free.pop()?;
        let dst = self.slots.bufs.get_mut(slot as usize)?;
        let Some(d) = dst.get_mut(..payload.len()) else {
            self.slots.free.push(slot);
            return None;
        };
        d.copy_from_slice(payload);
        Some((slot, payload.len(), from))
    }

    /// Free send slots left.
    pub(crate) fn free_slots(&self) -> usize {
        self.slots.free.len()
    }

    /// The buffer of a send slot.
    pub(crate) fn slot_mut(&mut self, slot: u32) -> Option<&mut [u8; BUF_LEN]> {
        self.slots.bufs.get_mut(slot as usize)
    }

    /// Give a slot back unused.
    pub(crate) fn release(&mut self, slot: u32) {
        self.slots.free.push(slot);
    }

    /// Queue a send of the first `len` bytes of `slot` to `to` from `fd` (`None`: the socket's connected peer);
    /// the slot is freed on completion.
    pub(crate) fn send(&mut self, slot: u32, target: Target, len: usize, to: Option<SocketAddr>) {
        let i = slot as usize;
        let (Some(buf), Some(name)) = (self.slots.bufs.get(i), self.slots.names.get_mut(i)) else {
            return;
        };
        // `Send` (not `SendMsg`): the kernel has no msghdr/iovec to copy in, only the buffer and, for an
        // unconnected destination, the address (sendto semantics).
        let (ptr, len) = (buf.as_ptr(), len.min(BUF_LEN) as u32);
        let (addr, addr_len) = match to {
            Some(to) => {
                let l = to_sockaddr(to, name);
                (
                    (name as *const libc::sockaddr_in6).cast::<libc::sockaddr>(),
                    l,
                )
            }
            None => (std::ptr::null(), 0),
        };
        let flags = libc::MSG_DONTWAIT;
        let e = match target {
            Target::Fd(fd) => opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(flags)
                .dest_addr(addr)
                .dest_addr_len(addr_len)
                .build(),
            Target::Fixed(i) => opcode::Send::new(types::Fixed(i), ptr, len)
                .flags(flags)
                .dest_addr(addr)
                .dest_addr_len(addr_len)
                .build(),
        }
        .user_data(SEND_BIT | u64::from(slot));
        if !self.push(&e) {
            // Never queued, so no completion will free it.
            self.slots.free.push(slot);
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Cancel every request so the kernel stops touching our buffers, and wait (bounded) until it has.
        let e = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(CANCEL_TOKEN);
        self.push(&e);
        let _ = self.ring.submit_and_wait(1);
        for _ in 0..8 {
            let mut done = false;
            for c in self.ring.completion() {
                done |= c.user_data() == CANCEL_TOKEN;
            }
            if done {
                break;
            }
            let _ = self.ring.submit_and_wait(1);
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
    }
}

fn nofile_soft_limit() -> u32 {
    // SAFETY: plain data, all-zero valid; getrlimit writes into it.
    let mut r: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `r` lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } < 0 {
        return 0;
    }
    u32::try_from(r.rlim_cur).unwrap_or(u32::MAX)
}
