//! The one module with `unsafe`: thin, safe wrappers over the Linux calls the RTP driver batches with
//! (`epoll`, `recvmmsg`, `sendmmsg`), thread pinning (`sched_setaffinity`), timer slack and per-thread CPU time.
//!
//! Every pointer handed to the kernel points into buffers owned by `Batch`, which never resizes after
//! construction; lengths passed are the lengths of those buffers. Nothing here outlives a call.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::UdpSocket;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Size of each packet buffer: a full Ethernet-MTU UDP payload fits.
pub(crate) const BUF_LEN: usize = 1536;

/// An epoll instance.
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub(crate) fn new(max_events: usize) -> io::Result<Self> {
        // SAFETY: plain syscall, no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: epoll_event is plain data; all-zero is valid.
        let events = vec![unsafe { zeroed::<libc::epoll_event>() }; max_events.max(1)];
        Ok(Self { fd, events })
    }

    /// Register `fd` edge-triggered: the driver always drains a socket it is told about (every read loop runs
    /// until the kernel reports it empty), and each new datagram raises a new edge, so nothing is stranded.
    pub(crate) fn add(&self, fd: RawFd, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: data,
        };
        // SAFETY: `ev` lives across the call.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait up to `timeout` (ms resolution, rounded up) and return the ready tokens.
    pub(crate) fn wait(&mut self, timeout: Duration, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let max = i32::try_from(self.events.len()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `max` events into our buffer of that length.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(self.events.iter().take(n as usize).map(|e| e.u64));
        Ok(())
    }
}

/// Fixed-size packet buffers with the `mmsghdr`/`iovec`/`sockaddr` arrays to receive into and send from them.
pub(crate) struct Batch {
    bufs: Box<[[u8; BUF_LEN]]>,
    lens: Box<[usize]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    send_hdrs: Box<[libc::mmsghdr; SEND_MAX]>,
    send_iovs: Box<[libc::iovec; SEND_MAX]>,
    send_names: Box<[libc::sockaddr_in6; SEND_MAX]>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("slots", &self.bufs.len())
            .finish()
    }
}

impl Batch {
    pub(crate) fn new(slots: usize) -> Self {
        // SAFETY: these libc structs are plain data; all-zero is a valid value for each.
        let (addr, iov, hdr) = unsafe {
            (
                zeroed::<libc::sockaddr_storage>(),
                zeroed::<libc::iovec>(),
                zeroed::<libc::mmsghdr>(),
            )
        };
        Self {
            bufs: vec![[0u8; BUF_LEN]; slots].into_boxed_slice(),
            lens: vec![0; slots].into_boxed_slice(),
            addrs: vec![addr; slots].into_boxed_slice(),
            iovs: vec![iov; slots].into_boxed_slice(),
            hdrs: vec![hdr; slots].into_boxed_slice(),
            send_hdrs: Box::new([hdr; SEND_MAX]),
            send_iovs: Box::new([iov; SEND_MAX]),
            // SAFETY: plain data, all-zero valid.
            send_names: Box::new(unsafe { zeroed() }),
        }
    }

    pub(crate) fn slots(&self) -> usize {
        self.bufs.len()
    }

    /// Receive up to `max` datagrams from `fd` into slots `start..`, without blocking. Returns how many.
    pub(crate) fn recv(&mut self, fd: RawFd, start: usize, max: usize) -> io::Result<usize> {
        let end = start.saturating_add(max).min(self.bufs.len());
        if start >= end {
            return Ok(0);
        }
        for i in start..end {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let vlen = (end - start) as libc::c_uint;
        // SAFETY: hdrs[start..end] point to live buffers/iovecs/addresses of this Batch with their true sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs[start..].as_mut_ptr(),
                vlen,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        for i in start..start + n {
            let truncated = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // A truncated datagram is reported with length 0: callers treat it as malformed.
            self.lens[i] = if truncated {
                0
            } else {
                (self.hdrs[i].msg_len as usize).min(BUF_LEN)
            };
        }
        Ok(n)
    }

    /// The packet in slot `i` and its source address.
    pub(crate) fn packet(&mut self, i: usize) -> Option<(&mut [u8], Option<SocketAddr>)> {
        let len = *self.lens.get(i)?;
        let from = self.addrs.get(i).and_then(from_storage);
        Some((self.bufs.get_mut(i)?.get_mut(..len)?, from))
    }

    /// Mutable buffer of slot `i` (to build a packet in).
    pub(crate) fn buf_mut(&mut self, i: usize) -> Option<&mut [u8; BUF_LEN]> {
        self.bufs.get_mut(i)
    }

    /// Send the packets in `items` (slot, length, destination) from `fd` with as few `sendmmsg` calls as it
    /// takes (one unless the kernel sends partially). Returns how many were sent; the rest failed (e.g. buffer
    /// full) and are dropped.
    pub(crate) fn send(
        &mut self,
        fd: RawFd,
        items: &[(usize, usize, Option<SocketAddr>)],
    ) -> (usize, usize) {
        let Self {
            bufs,
            send_hdrs: hdrs,
            send_iovs: iovs,
            send_names: names,
            ..
        } = self;
        let mut sent = 0usize;
        let mut calls = 0usize;
        for chunk in items.chunks(SEND_MAX) {
            let mut built = 0usize;
            for &(slot, len, to) in chunk {
                let k = built;
                let Some(buf) = bufs.get_mut(slot) else {
                    continue;
                };
                iovs[k] = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: len.min(BUF_LEN),
                };
                let h = &mut hdrs[k].msg_hdr;
                if let Some(to) = to {
                    h.msg_namelen = to_sockaddr(to, &mut names[k]);
                    h.msg_name = (&mut names[k] as *mut libc::sockaddr_in6).cast();
                } else {
                    // Connected socket: no destination, the kernel uses the connected peer and its cached route.
                    h.msg_namelen = 0;
                    h.msg_name = std::ptr::null_mut();
                }
                h.msg_iov = &mut iovs[k];
                h.msg_iovlen = 1;
                built += 1;
            }
            let mut off = 0usize;
            while off < built {
                calls += 1;
                // SAFETY: hdrs[off..built] point to live iovecs/addresses and slot buffers owned by this Batch.
                let n = unsafe {
                    libc::sendmmsg(
                        fd,
                        hdrs[off..].as_mut_ptr(),
                        (built - off) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if n <= 0 {
                    // Skip the packet that failed and go on with the rest.
                    off += 1;
                    continue;
                }
                sent += n as usize;
                off += n as usize;
            }
        }
        (sent, calls)
    }
}

const SEND_MAX: usize = 64;

/// Write `addr` into `out` (large enough for both families); return the length to pass to the kernel.
pub(crate) fn to_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_in6) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in is smaller than sockaddr_in6 and both are plain data.
            unsafe {
                std::ptr::write(
                    (out as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            *out = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Parse a `sockaddr_in`/`sockaddr_in6` from raw bytes as the kernel wrote them (e.g. the name field of an
/// io_uring multishot receive). Safe code: fixed offsets of the Linux layouts.
pub(crate) fn sockaddr_from_bytes(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(*b.first_chunk::<2>()?));
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_ne_bytes(b.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: family says the storage holds a sockaddr_in; storage is larger and suitably aligned.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Set the Don't Fragment bit on an IPv4 UDP socket's datagrams (`IP_PMTUDISC_DO`). RTP datagrams are far
/// below any path MTU; with DF set the kernel writes IP ID 0 instead of hashing into its shared ID table for every
/// datagram of an unconnected socket (`__ip_select_ident`, ~2 % of the relay thread in a profile).
pub(crate) fn set_dont_fragment(fd: RawFd) -> io::Result<()> {
    let v: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: `v` lives across the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_reuse_addr(fd: RawFd, on: bool) -> io::Result<()> {
    let v: libc::c_int = on.into();
    // SAFETY: `v` lives across the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A second UDP socket on `catch_all`'s local address, `connect()`ed to `peer`, non-blocking, close-on-exec.
///
/// The kernel delivers a datagram to the socket whose binding matches it best: the twin (a full 4-tuple
/// match) takes `peer`'s datagrams, `catch_all` everything else. Binding a second socket to a port needs
/// `SO_REUSEADDR` on both; it is set only for the twin's `bind` and cleared again on both right after, so the
/// port stays exclusive: any later `bind` to it, by this process or another, fails with `AddrInUse` as before.
pub(crate) fn connected_twin(catch_all: &UdpSocket, peer: SocketAddr) -> io::Result<UdpSocket> {
    let local = catch_all.local_addr()?;
    let family = match local {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain call; the descriptor is owned by `OwnedFd` at once.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let twin = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    set_reuse_addr(twin.as_raw_fd(), true)?;
    set_reuse_addr(catch_all.as_raw_fd(), true)?;
    // SAFETY: plain data, all-zero valid.
    let mut name: libc::sockaddr_in6 = unsafe { zeroed() };
    let len = to_sockaddr(local, &mut name);
    // SAFETY: `name` lives across the call and `len` is its used size.
    let bound = unsafe {
        libc::bind(
            twin.as_raw_fd(),
            (&name as *const libc::sockaddr_in6).cast(),
            len,
        )
    };
    let bound = if bound < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    let cleared =
        set_reuse_addr(catch_all.as_raw_fd(), false).and(set_reuse_addr(twin.as_raw_fd(), false));
    bound?;
    cleared?;
    if local.is_ipv4() {
        set_dont_fragment(twin.as_raw_fd())?;
    }
    twin.connect(peer)?;
    Ok(twin)
}

/// Raise the soft limit on open descriptors to the hard limit (at most `cap`), for the whole process. Returns
/// the soft limit now in force. Each relay leg holds two or three sockets; the usual soft limit of 1,024 would
/// stop a relay near 150 bridges.
pub(crate) fn raise_nofile_limit(cap: u64) -> io::Result<u64> {
    // SAFETY: plain data, all-zero valid; getrlimit writes into it.
    let mut r: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `r` lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let want = r.rlim_max.min(cap);
    if r.rlim_cur >= want {
        return Ok(r.rlim_cur);
    }
    r.rlim_cur = want;
    // SAFETY: `r` lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(want)
}

/// Pin the calling thread to one CPU.
pub(crate) fn pin_current_thread(core: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against its size; pid 0 = calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Set the calling thread's timer slack (how late the kernel may wake a sleeper), for precise pacing sleeps.
pub(crate) fn set_timer_slack(nanos: u64) {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, nanos as libc::c_ulong, 0, 0, 0);
    }
}

/// CPU time consumed by the calling thread (user + system).
pub(crate) fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime writes into `ts`, which lives across the call.
    let mut ts: libc::timespec = unsafe { zeroed() };
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r < 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Linux thread id of the calling thread (for `/proc/self/task/TID/stat`).
pub(crate) fn thread_id() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_bytes_round_trip() {
        for a in ["192.0.2.7:4000", "[2001:db8::5]:6000"] {
            let a: SocketAddr = a.parse().unwrap();
            // SAFETY: plain data, all-zero valid.
            let mut raw: libc::sockaddr_in6 = unsafe { zeroed() };
            let len = to_sockaddr(a, &mut raw) as usize;
            // SAFETY: reading the bytes of a plain-data struct we own.
            let bytes = unsafe {
                std::slice::from_raw_parts((&raw as *const libc::sockaddr_in6).cast::<u8>(), len)
            };
            assert_eq!(sockaddr_from_bytes(bytes), Some(a));
        }
        assert_eq!(sockaddr_from_bytes(&[2, 0, 0]), None, "short");
        assert_eq!(sockaddr_from_bytes(&[0u8; 28]), None, "family 0");
    }
}
