//! Load harness for the RTP relay: N bridges, each with two synthetic G.711 endpoints sending 172-byte RTP at
//! 50 packets/s each way, through rappel's relay (in-process driver thread) or rtpengine (child process, ng
//! protocol). Measures loss, added latency (kernel receive timestamp − send timestamp carried in the payload),
//! relay CPU, generator CPU and userspace memory per bridge. The last line printed is one JSON object.
//!
//! ```text
//! cargo run --release --example relay_load -- --bridges 1000 --seconds 10 [--peer rtpengine] \
//!     [--relay-core 0 --gen-core 1] [--pace-us 0] [--gen-sockets 4] [--gen-tick-us 250] [--nice -20] [--rt] \
//!     [--backend uring|epoll] [--uring-buffers 1024] [--connect 1|0]
//! ```
//!
//! The generator is one thread with a handful of sockets (each stands in for many endpoints): once per tick
//! (250 µs) it sends every packet that is due with `sendmmsg` (batches of 8, so the send timestamp is at most a
//! batch early) and reads what arrived with `recvmmsg`, taking the kernel's SO_TIMESTAMPNS receive time so its
//! own polling delay does not count as relay latency. Each tick's packets leave as a burst (N/40 packets per
//! tick at N bridges), which the relay sees as a queue: that burst queueing is part of the measured latency. It reports its own CPU and whether it fell behind schedule (`gen_saturated`: over 90 % CPU, or over 1 % of its
//! ticks starting more than 2 ticks + 2 ms late), and `limited_by`: `generator`, `relay` (loss, relay CPU over 90 %
//! or p99 over 1 ms while the generator kept up) or `none`.
#![allow(unsafe_code)]

use std::io::Write as _;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rappel::media::relay::{LegConfig, RelayConfig};
use rappel::net::rtp_io::{Backend, DriverConfig, RelayDriver};

const PKT: usize = 172;
const PTIME: Duration = Duration::from_millis(20);
const SEND_BATCH: usize = 8;
const RECV_BATCH: usize = 64;

struct Args {
    bridges: usize,
    seconds: f64,
    peer: String,
    relay_core: Option<usize>,
    gen_core: Option<usize>,
    pace_us: u64,
    gen_sockets: usize,
    gen_tick_us: u64,
    nice: i32,
    rt: bool,
    backend: Backend,
    uring_buffers: u16,
    connect: bool,
}

fn args() -> Args {
    let mut a = Args {
        bridges: 100,
        seconds: 10.0,
        peer: "rappel".into(),
        relay_core: None,
        gen_core: None,
        pace_us: 0,
        gen_sockets: 4,
        gen_tick_us: 250,
        nice: -20,
        rt: false,
        backend: Backend::default(),
        uring_buffers: DriverConfig::default().uring_buffers,
        connect: DriverConfig::default().connect_latched,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--bridges" => a.bridges = val.parse().expect("--bridges N"),
            "--seconds" => a.seconds = val.parse().expect("--seconds S"),
            "--peer" => a.peer = val,
            "--relay-core" => a.relay_core = Some(val.parse().expect("--relay-core C")),
            "--gen-core" => a.gen_core = Some(val.parse().expect("--gen-core C")),
            "--pace-us" => a.pace_us = val.parse().expect("--pace-us U"),
            "--gen-sockets" => a.gen_sockets = val.parse().expect("--gen-sockets K"),
            "--gen-tick-us" => a.gen_tick_us = val.parse().expect("--gen-tick-us U"),
            "--nice" => a.nice = val.parse().expect("--nice N"),
            "--uring-buffers" => a.uring_buffers = val.parse().expect("--uring-buffers N"),
            "--connect" => a.connect = val == "1" || val == "true",
            "--backend" => {
                a.backend = match val.as_str() {
                    "uring" | "io_uring" => Backend::IoUring,
                    "epoll" => Backend::Epoll,
                    _ => panic!("--backend uring|epoll"),
                }
            }
            "--rt" => {
                a.rt = true;
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    assert!(
        a.seconds > 0.0 && a.seconds <= 600.0,
        "--seconds must be in (0, 600]"
    );
    assert!(
        a.bridges > 0 && a.bridges <= 20_000,
        "--bridges must be in 1..=20000"
    );
    a
}

fn pin(core: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn raise_nofile() {
    let lim = libc::rlimit {
        rlim_cur: 200_000,
        rlim_max: 200_000,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

fn thread_cpu() -> Duration {
    let mut ts: libc::timespec = unsafe { zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn rss_bytes(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// utime + stime of a process, from /proc/PID/stat (clock ticks of 10 ms).
fn proc_cpu(pid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn sockaddr(a: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(a) = a else {
        panic!("IPv4 only")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

// ---------------------------------------------------------------- rtpengine over the ng protocol

struct Rtpengine {
    child: Child,
    ng: UdpSocket,
    cookie: u64,
}

fn bstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(format!("{}:", s.len()).as_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

impl Rtpengine {
    fn start(core: Option<usize>) -> Self {
        let mut cmd = Command::new(if core.is_some() {
            "taskset"
        } else {
            "rtpengine"
        });
        if let Some(c) = core {
            cmd.args(["-c", &c.to_string(), "rtpengine"]);
        }
        cmd.args([
            "--config-file=none",
            "--interface=127.0.0.1",
            "--listen-ng=127.0.0.1:2223",
            "--table=-1",
            "--foreground",
            "--port-min=30000",
            "--port-max=39999",
            "--delete-delay=0",
            "--num-threads=1",
            "--log-level=3",
        ]);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rtpengine");
        let ng = UdpSocket::bind("127.0.0.1:0").unwrap();
        ng.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut r = Self {
            child,
            ng,
            cookie: 0,
        };
        for _ in 0..40 {
            if r.call(&[("command", "ping")]).is_some() {
                return r;
            }
        }
        r.stop();
        panic!("rtpengine did not answer ping");
    }

    fn call(&mut self, kv: &[(&str, &str)]) -> Option<Vec<u8>> {
        self.cookie += 1;
        let mut msg = format!("{} d", self.cookie).into_bytes();
        let mut kv = kv.to_vec();
        kv.sort();
        for (k, v) in kv {
            bstr(&mut msg, k);
            bstr(&mut msg, v);
        }
        msg.push(b'e');
        self.ng.send_to(&msg, "127.0.0.1:2223").ok()?;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = self.ng.recv(&mut buf).ok()?;
            let prefix = format!("{} ", self.cookie);
            if buf[..n].starts_with(prefix.as_bytes()) {
                return Some(buf[prefix.len()..n].to_vec());
            }
        }
    }

    /// Offer/answer one call; returns the rtpengine ports A and B must send to.
    fn bridge(&mut self, i: usize, a: u16, b: u16) -> (u16, u16) {
        let call_id = format!("load-{i}");
        let (ft, tt) = (format!("a{i}"), format!("b{i}"));
        let offer = self
            .call(&[
                ("command", "offer"),
                ("call-id", &call_id),
                ("from-tag", &ft),
                ("sdp", &sdp(a)),
            ])
            .expect("offer answered");
        let port_for_b = media_port(&offer).unwrap_or_else(|| {
            panic!(
                "no port in offer reply: {}",
                String::from_utf8_lossy(&offer[..offer.len().min(300)])
            )
        });
        let answer = self
            .call(&[
                ("command", "answer"),
                ("call-id", &call_id),
                ("from-tag", &ft),
                ("to-tag", &tt),
                ("sdp", &sdp(b)),
            ])
            .expect("answer answered");
        let port_for_a = media_port(&answer).expect("port in answer reply");
        (port_for_a, port_for_b)
    }

    fn stop(&mut self) {
        // Killed by the PID we started, never by name; not again once reaped (the PID may be reused).
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Rtpengine {
    fn drop(&mut self) {
        // Also on a panic while setting up calls: never leave an rtpengine behind.
        self.stop();
    }
}

fn media_port(reply: &[u8]) -> Option<u16> {
    let s = String::from_utf8_lossy(reply);
    let m = s.find("m=audio ")?;
    s[m + 8..].split(' ').next()?.parse().ok()
}

// ---------------------------------------------------------------- generator

struct Gen {
    socks: Vec<UdpSocket>,
    /// Per leg (endpoint): generator socket index and the relay address it sends to.
    legs: Vec<(usize, libc::sockaddr_in)>,
    sent: Vec<u32>,
    received: Vec<u32>,
    hist: Vec<u32>,
    behind_max: Duration,
    late_rounds: u64,
    rounds: u64,
    /// Generator loop period: it sends what is due and reads what arrived once per tick.
    tick: Duration,
    /// Measurement epoch carried in the payload: replies from an earlier phase are not counted.
    epoch: u32,
}

const HIST_US: usize = 200_000;

impl Gen {
    fn new(k: usize) -> Self {
        let socks: Vec<UdpSocket> = (0..k)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for s in &socks {
            s.set_nonblocking(true).unwrap();
            let fd = s.as_raw_fd();
            let one: libc::c_int = 1;
            let big: libc::c_int = 16 << 20;
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    (&one as *const libc::c_int).cast(),
                    4,
                );
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&big as *const libc::c_int).cast(),
                    4,
                );
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUFFORCE,
                    (&big as *const libc::c_int).cast(),
                    4,
                );
            }
        }
        Self {
            socks,
            legs: Vec::new(),
            sent: Vec::new(),
            received: Vec::new(),
            hist: vec![0; HIST_US + 1],
            behind_max: Duration::ZERO,
            late_rounds: 0,
            rounds: 0,
            tick: Duration::from_micros(250),
            epoch: 0,
        }
    }

    fn addr(&self, leg: usize) -> SocketAddr {
        self.socks[leg % self.socks.len()].local_addr().unwrap()
    }

    fn add_leg(&mut self, leg: usize, relay: SocketAddr) {
        self.legs.push((leg % self.socks.len(), sockaddr(relay)));
        self.sent.push(0);
        self.received.push(0);
    }

    fn send_batch(&mut self, sock: usize, batch: &[(usize, u32)]) {
        let mut bufs = [[0u8; PKT]; SEND_BATCH];
        let mut iovs: [libc::iovec; SEND_BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { zeroed() };
        let mut names: [libc::sockaddr_in; SEND_BATCH] = unsafe { zeroed() };
        let now = realtime_ns();
        for (k, &(leg, seq)) in batch.iter().enumerate() {
            let b = &mut bufs[k];
            b[0] = 0x80;
            b[1] = 0;
            b[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
            b[4..8].copy_from_slice(&(seq * 160).to_be_bytes());
            b[8..12].copy_from_slice(&(leg as u32 + 1).to_be_bytes());
            b[12..16].copy_from_slice(&(leg as u32).to_be_bytes());
            b[16..24].copy_from_slice(&now.to_be_bytes());
            b[24..28].copy_from_slice(&self.epoch.to_be_bytes());
            names[k] = self.legs[leg].1;
            iovs[k] = libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: PKT,
            };
            hdrs[k].msg_hdr.msg_name = (&mut names[k] as *mut libc::sockaddr_in).cast();
            hdrs[k].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            hdrs[k].msg_hdr.msg_iov = &mut iovs[k];
            hdrs[k].msg_hdr.msg_iovlen = 1;
        }
        let fd = self.socks[sock].as_raw_fd();
        let mut off = 0;
        while off < batch.len() {
            let n = unsafe {
                libc::sendmmsg(fd, hdrs[off..].as_mut_ptr(), (batch.len() - off) as u32, 0)
            };
            if n <= 0 {
                off += 1;
                continue;
            }
            for &(leg, _) in &batch[off..off + n as usize] {
                self.sent[leg] += 1;
            }
            off += n as usize;
        }
    }

    fn drain(&mut self, count: bool) {
        let mut bufs = vec![[0u8; 256]; RECV_BATCH];
        let mut ctrl = vec![[0u64; 8]; RECV_BATCH];
        let mut iovs: Vec<libc::iovec> = vec![unsafe { zeroed() }; RECV_BATCH];
        let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; RECV_BATCH];
        for s in 0..self.socks.len() {
            let fd = self.socks[s].as_raw_fd();
            loop {
                for k in 0..RECV_BATCH {
                    iovs[k] = libc::iovec {
                        iov_base: bufs[k].as_mut_ptr().cast(),
                        iov_len: 256,
                    };
                    let h = &mut hdrs[k].msg_hdr;
                    h.msg_name = std::ptr::null_mut();
                    h.msg_namelen = 0;
                    h.msg_iov = &mut iovs[k];
                    h.msg_iovlen = 1;
                    h.msg_control = ctrl[k].as_mut_ptr().cast();
                    h.msg_controllen = 64;
                    h.msg_flags = 0;
                }
                let n = unsafe {
                    libc::recvmmsg(
                        fd,
                        hdrs.as_mut_ptr(),
                        RECV_BATCH as u32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if n <= 0 {
                    break;
                }
                for k in 0..n as usize {
                    let len = hdrs[k].msg_len as usize;
                    if len != PKT {
                        continue;
                    }
                    let b = &bufs[k];
                    let leg = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
                    let sent_ns = u64::from_be_bytes(b[16..24].try_into().unwrap());
                    if u32::from_be_bytes(b[24..28].try_into().unwrap()) != self.epoch {
                        continue;
                    }
                    let rx_ns =
                        unsafe { rx_timestamp(&hdrs[k].msg_hdr) }.unwrap_or_else(realtime_ns);
                    if let Some(r) = self.received.get_mut(leg) {
                        *r += 1;
                    }
                    if count {
                        let us = (rx_ns.saturating_sub(sent_ns) / 1000) as usize;
                        self.hist[us.min(HIST_US)] += 1;
                    }
                }
                if (n as usize) < RECV_BATCH {
                    break;
                }
            }
        }
    }

    fn percentile(&self, p: f64) -> u64 {
        let total: u64 = self.hist.iter().map(|&c| u64::from(c)).sum();
        let target = ((total as f64) * p).ceil() as u64;
        let mut acc = 0u64;
        for (us, &c) in self.hist.iter().enumerate() {
            acc += u64::from(c);
            if acc >= target.max(1) {
                return us as u64;
            }
        }
        HIST_US as u64
    }

    fn max_us(&self) -> u64 {
        self.hist.iter().rposition(|&c| c > 0).unwrap_or(0) as u64
    }

    /// Send every leg's packets on schedule for `dur`, reading replies as they come.
    fn run(&mut self, dur: Duration) -> Instant {
        let n = self.legs.len();
        let start = Instant::now();
        let end = start + dur;
        let mut cycle: u32 = 0;
        let mut cursor = 0usize;
        let k = self.socks.len();
        let mut pending: Vec<Vec<(usize, u32)>> = vec![Vec::with_capacity(SEND_BATCH); k];
        let due = |cycle: u32, i: usize| start + PTIME * cycle + PTIME.mul_f64(i as f64 / n as f64);
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            self.rounds += 1;
            let mut late = Duration::ZERO;
            while due(cycle, cursor) <= now {
                late = late.max(now - due(cycle, cursor));
                let s = self.legs[cursor].0;
                pending[s].push((cursor, cycle));
                if pending[s].len() == SEND_BATCH {
                    self.send_batch(s, &pending[s]);
                    pending[s].clear();
                }
                cursor += 1;
                if cursor == n {
                    cursor = 0;
                    cycle += 1;
                }
            }
            for (s, p) in pending.iter_mut().enumerate() {
                if !p.is_empty() {
                    self.send_batch(s, p);
                    p.clear();
                }
            }

            if late > self.tick * 2 + Duration::from_millis(2) {
                self.late_rounds += 1;
            }
            self.behind_max = self.behind_max.max(late);
            self.drain(true);
            let next = Instant::now() + self.tick;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        start
    }
}

unsafe fn rx_timestamp(h: &libc::msghdr) -> Option<u64> {
    let mut c = libc::CMSG_FIRSTHDR(h);
    while !c.is_null() {
        if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
            let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
            return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
        }
        c = libc::CMSG_NXTHDR(h, c);
    }
    None
}

// ---------------------------------------------------------------- main

fn main() {
    let a = args();
    raise_nofile();
    // The machine is shared with builds: run the relay thread, the generator and rtpengine (which inherits it)
    // at nice -20 so a compiler on the same core does not stand in for the relay's latency. Same for both peers.
    // With sched_autogroup (on here) nice only ranks threads inside a session, so first move into a session of
    // our own (re-running under setsid(1) if we lead a process group) and set that session's autogroup nice.
    if a.nice != 0 {
        let own_session = unsafe { libc::getsid(0) == libc::getpid() || libc::setsid() >= 0 };
        if !own_session && std::env::var_os("RELAY_LOAD_SETSID").is_none() {
            // We lead a process group, so setsid() is refused: run once more under setsid(1), which forks.
            // The environment marker makes sure this happens at most once.
            let exe = std::env::current_exe().expect("current exe");
            let status = Command::new("setsid")
                .arg("-w")
                .arg(exe)
                .args(std::env::args().skip(1))
                .env("RELAY_LOAD_SETSID", "1")
                .status()
                .expect("setsid");
            std::process::exit(status.code().unwrap_or(1));
        }
        if own_session {
            let _ = std::fs::write("/proc/self/autogroup", a.nice.to_string());
        }
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, a.nice) };
    }
    // --rt: SCHED_FIFO (priority 10) for the generator, the relay thread and rtpengine (all inherit it), so
    // builds running on the same cores cannot delay them. Bounded runs only; the kernel's RT throttling still
    // leaves others 5% of each core.
    if a.rt {
        let p = libc::sched_param { sched_priority: 10 };
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } < 0 {
            eprintln!("SCHED_FIFO refused: {}", std::io::Error::last_os_error());
        }
    }
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
    if let Some(c) = a.gen_core {
        pin(c);
    }
    let mut gen = Gen::new(a.gen_sockets);
    gen.tick = Duration::from_micros(a.gen_tick_us);
    let n_legs = 2 * a.bridges;
    let setup = Instant::now();

    // Set up bridges on the chosen relay.
    let mut rtpengine = None;
    let mut driver = None;
    let (mem_before, mem_after);
    if a.peer == "rtpengine" {
        let mut r = Rtpengine::start(a.relay_core);
        let pid = r.child.id().to_string();
        mem_before = rss_bytes(&pid);
        for b in 0..a.bridges {
            let (pa, pb) = r.bridge(b, gen.addr(2 * b).port(), gen.addr(2 * b + 1).port());
            gen.add_leg(
                2 * b,
                SocketAddr::V4(SocketAddrV4::new([127, 0, 0, 1].into(), pa)),
            );
            gen.add_leg(
                2 * b + 1,
                SocketAddr::V4(SocketAddrV4::new([127, 0, 0, 1].into(), pb)),
            );
        }
        mem_after = rss_bytes(&pid);
        rtpengine = Some(r);
    } else {
        let cfg = DriverConfig {
            relay: RelayConfig {
                port_min: 16000,
                port_max: 32767,
                ..Default::default()
            },
            core: a.relay_core,
            pace: Duration::from_micros(a.pace_us),
            backend: a.backend,
            uring_buffers: a.uring_buffers,
            connect_latched: a.connect,
            ..Default::default()
        };
        let (d, _events) = RelayDriver::spawn(cfg).expect("spawn driver");
        d.with_relay(move |r, _| r.reserve(n_legs)).wait().unwrap();
        mem_before = rss_bytes("self");
        for b in 0..a.bridges {
            // The machine is shared: another process may hold a run of ports in our range, so retry (each
            // attempt moves on to further port pairs). A run started right after another still finds the
            // previous process's sockets bound for a moment (its io_uring is torn down by a kernel worker after
            // the exit), so keep trying for a few seconds before giving up.
            let add = |addr: SocketAddr| {
                let mut last = None;
                for attempt in 0..80 {
                    match d.add_leg(LegConfig::g711(Some(addr))).wait().unwrap() {
                        Ok(l) => return l,
                        Err(e) => last = Some(e),
                    }
                    if attempt >= 8 {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                panic!("add leg: {last:?}");
            };
            let la = add(gen.addr(2 * b));
            let lb = add(gen.addr(2 * b + 1));
            d.connect(la.id, lb.id).wait().unwrap().unwrap();
            gen.add_leg(2 * b, la.rtp);
            gen.add_leg(2 * b + 1, lb.rtp);
        }
        mem_after = rss_bytes("self");
        driver = Some((d, _events));
    }
    let setup_s = setup.elapsed().as_secs_f64();
    eprintln!(
        "set up {} bridges through {} in {setup_s:.1} s",
        a.bridges, a.peer
    );

    // Warm-up second (latching, caches), then the measured window.
    gen.run(Duration::from_secs(1));
    gen.drain(false);
    gen.hist.iter_mut().for_each(|c| *c = 0);
    gen.sent.iter_mut().for_each(|c| *c = 0);
    gen.received.iter_mut().for_each(|c| *c = 0);
    gen.behind_max = Duration::ZERO;
    gen.late_rounds = 0;
    gen.rounds = 0;
    gen.epoch = 1;

    let relay_cpu =
        |driver: &Option<(RelayDriver, _)>, rtpengine: &Option<Rtpengine>| -> (Duration, u64) {
            match (driver, rtpengine) {
                (Some((d, _)), _) => {
                    let s = d.stats().wait().unwrap();
                    (s.thread_cpu, s.packets_in)
                }
                (_, Some(r)) => (proc_cpu(r.child.id()), 0),
                _ => (Duration::ZERO, 0),
            }
        };
    let (cpu0, pk0) = relay_cpu(&driver, &rtpengine);
    let gcpu0 = thread_cpu();
    let t0 = Instant::now();
    gen.run(Duration::from_secs_f64(a.seconds));
    let wall = t0.elapsed();
    let gcpu = thread_cpu() - gcpu0;
    let (cpu1, pk1) = relay_cpu(&driver, &rtpengine);
    // Let in-flight packets land.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        gen.drain(true);
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent: u64 = gen.sent.iter().map(|&x| u64::from(x)).sum();
    let recv: u64 = gen.received.iter().map(|&x| u64::from(x)).sum();
    let loss = if sent == 0 {
        0.0
    } else {
        100.0 * (sent.saturating_sub(recv)) as f64 / sent as f64
    };
    let relay_cpu_s = (cpu1 - cpu0).as_secs_f64();
    let relayed = if pk1 > pk0 { pk1 - pk0 } else { recv };
    let gen_cpu_pct = 100.0 * gcpu.as_secs_f64() / wall.as_secs_f64();
    // Saturated: busy over 90% of the time, or more than 1% of its rounds started over 2 ticks + 2 ms behind
    // schedule (a late send only shifts the source's timing: latency is measured from the actual send time).
    let gen_saturated = gen_cpu_pct > 90.0 || gen.late_rounds * 100 > gen.rounds;
    let relay_cpu_pct = 100.0 * relay_cpu_s / wall.as_secs_f64();
    // Which side limited the run: the generator when it flagged itself, the relay when it lost packets, ran
    // its core over 90 % or the p99 exceeded 1 ms without the generator being behind, else neither.
    let limited_by = if gen_saturated {
        "generator"
    } else if loss > 0.0 || relay_cpu_pct > 90.0 || gen.percentile(0.99) > 1000 {
        "relay"
    } else {
        "none"
    };

    if let Some(mut r) = rtpengine {
        r.stop();
    }
    let driver_stats = driver.as_ref().map(|(d, _)| d.stats().wait().unwrap());
    if let Some((d, _)) = driver {
        d.shutdown().unwrap();
    }
    if let Some(s) = driver_stats {
        eprintln!(
            "driver: backend {:?} rounds {} enters {} recv_calls {} send_calls {} packets_in {} packets_out {} send_failures {} max_busy_gap_us {}",
            s.backend,
            s.rounds,
            s.enters,
            s.recv_calls,
            s.send_calls,
            s.packets_in,
            s.packets_out,
            s.send_failures,
            s.max_busy_gap.as_micros()
        );
    }
    let json = format!(
        concat!(
            "{{\"peer\":\"{}\",\"bridges\":{},\"seconds\":{:.1},\"pps\":{:.0},\"sent\":{},\"received\":{},",
            "\"loss_pct\":{:.4},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"relay_cpu_pct\":{:.1},",
            "\"cpu_us_per_pkt\":{:.2},\"gen_cpu_pct\":{:.1},\"gen_saturated\":{},\"gen_max_behind_us\":{},",
            "\"bytes_per_bridge\":{},\"pace_us\":{},\"backend\":\"{}\",\"connect\":{},\"limited_by\":\"{}\",",
            "\"gen_late_rounds\":{},\"gen_rounds\":{}}}"
        ),
        a.peer,
        a.bridges,
        wall.as_secs_f64(),
        relayed as f64 / wall.as_secs_f64(),
        sent,
        recv,
        loss,
        gen.percentile(0.50),
        gen.percentile(0.99),
        gen.max_us(),
        relay_cpu_pct,
        if relayed == 0 { 0.0 } else { relay_cpu_s * 1e6 / relayed as f64 },
        gen_cpu_pct,
        gen_saturated,
        gen.behind_max.as_micros(),
        mem_after.saturating_sub(mem_before) / a.bridges as u64,
        if a.peer == "rtpengine" { 0 } else { a.pace_us },
        match (a.peer.as_str(), driver_stats.map(|s| s.backend)) {
            ("rtpengine", _) => "-",
            (_, Some(Backend::IoUring)) => "uring",
            _ => "epoll",
        },
        a.peer != "rtpengine" && a.connect,
        limited_by,
        gen.late_rounds,
        gen.rounds,
    );
    let _ = std::io::stderr().flush();
    println!("{json}");
}
