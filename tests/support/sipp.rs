//! SIPp launch helpers shared by the SIPp test files (each file in `tests/` is its own crate and includes this
//! module with `#[path = "support/sipp.rs"] mod sipp;`).
//!
//! [`Sipp::uas`] starts one `sipp` process as UAS and waits until it has bound its SIP port; [`Sipp::finish`]
//! waits for its exit code (0 only when its scenario ran to the end); dropping a [`Sipp`] kills and reaps the
//! process by its PID. The port helpers find ports free for both UDP and TCP on loopback.
//!
//! Needs the `sipp` binary (Debian package `sip-tester`; `scripts/test.sh` installs it).
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::ops::Range;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// A running `sipp`, killed (by its PID) and reaped when dropped.
pub struct Sipp {
    child: Child,
    /// Where it listens for SIP.
    pub addr: SocketAddr,
    /// Files the scenario needs (generated scenario, audio), removed after the process is gone.
    _dir: Option<tempfile::TempDir>,
}

impl Sipp {
    /// The path of `name` in `tests/sipp/`, asserted to exist.
    pub fn scenario(name: &str) -> String {
        let path = format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"));
        assert!(std::path::Path::new(&path).exists(), "missing {path}");
        path
    }

    /// Starts `sipp -sf scenario_path` as UAS on `addr` over TCP when `tcp` (else UDP), with `extra` arguments
    /// (`-m 1`, `-timeout 60s`, `-mp PORT`, `-rtp_echo`...), and waits until it has bound its port. With
    /// `SIPP_TRACE` set in the environment, SIPp also writes its message and error traces.
    pub fn uas(scenario_path: &str, addr: SocketAddr, tcp: bool, extra: &[&str]) -> Sipp {
        let child = Command::new("sipp")
            .args(["-sf", scenario_path, "-i", &addr.ip().to_string()])
            .args(["-p", &addr.port().to_string()])
            .args(["-t", if tcp { "t1" } else { "u1" }, "-nostdin"])
            .args(extra)
            .args(if std::env::var_os("SIPP_TRACE").is_some() {
                &["-trace_msg", "-trace_err"][..]
            } else {
                &[][..]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp not found: install Debian's sip-tester (scripts/test.sh does)");
        // Owned at once: dropped (killed and reaped) if the wait below panics.
        let sipp = Sipp {
            child,
            addr,
            _dir: None,
        };
        wait_bound(addr.port(), tcp);
        sipp
    }

    /// Keeps `dir` (the scenario's files) until this SIPp is dropped.
    pub fn keep(mut self, dir: tempfile::TempDir) -> Sipp {
        self._dir = Some(dir);
        self
    }

    /// `sip:user@addr`.
    pub fn uri(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.addr)
    }

    /// Waits (30 s at most) for SIPp to finish; its exit code (0: the scenario ran to the end).
    pub async fn finish(self) -> i32 {
        self.finish_within(Duration::from_secs(30)).await
    }

    /// Waits `limit` at most for SIPp to finish; its exit code.
    pub async fn finish_within(mut self, limit: Duration) -> i32 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait sipp") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sipp did not finish its scenario"
            );
            tokio::time::sleep(Duration::from_millis(50)).await; // polling a child process: no event to await
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until some process has bound `port` (listening, for TCP), read from /proc/net: SIPp takes a moment to
/// start, and a TCP connect before it listens is refused.
pub fn wait_bound(port: u16, tcp: bool) {
    let needle = format!(":{port:04X} ");
    let files: &[&str] = if tcp {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        &["/proc/net/udp", "/proc/net/udp6"]
    };
    for _ in 0..500 {
        let bound = files.iter().any(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| {
                t.lines().skip(1).any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    // local_address is column 1; state 0A is LISTEN for TCP.
                    cols.get(1)
                        .is_some_and(|a| format!("{a} ").ends_with(&needle))
                        && (!tcp || cols.get(3) == Some(&"0A"))
                })
            })
        });
        if bound {
            return;
        }
        std::thread::sleep(Duration::from_millis(10)); // an outside process's start-up: nothing to await
    }
    panic!("nothing bound port {port}");
}

/// 127.0.0.1.
pub fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::new(localhost(), port)
}

/// Whether `port` on 127.0.0.1 is free for both UDP and TCP.
fn free_on_loopback(port: u16) -> bool {
    UdpSocket::bind((localhost(), port)).is_ok() && TcpListener::bind((localhost(), port)).is_ok()
}

/// A port the OS picks, free for both UDP and TCP on `ip` (SIPp listens on both numbers).
pub fn free_port(ip: IpAddr) -> u16 {
    loop {
        let s = UdpSocket::bind((ip, 0)).expect("bind");
        let port = s.local_addr().expect("addr").port();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// Ports in a band per test process, so that test binaries running at once do not collide: from
/// `base + (pid % processes) * 200`, in steps of 50 (SIPp takes a few consecutive ones for RTP), wrapping at `span`.
pub fn band_port(base: u16, processes: u32, span: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let start = base + (std::process::id() % processes) as u16 * 200;
        let p = start + NEXT.fetch_add(50, Ordering::Relaxed) % span;
        if free_on_loopback(p) {
            return p;
        }
    }
}

/// The first port in `range` free for both UDP and TCP on 127.0.0.1.
pub fn first_free_port(range: Range<u16>) -> u16 {
    range
        .into_iter()
        .find(|p| free_on_loopback(*p))
        .expect("free port")
}
