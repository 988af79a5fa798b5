//! dnsmasq on loopback for the RFC 3263 tests: [`Dns::start`] serves only the records given (for `*.test`) on a
//! free port of 127.0.0.1 and waits until it is bound; dropping a [`Dns`] kills and reaps it by its PID.
//!
//! Include next to `support/sipp.rs` (it uses that module's port helpers):
//! `#[path = "support/dns.rs"] mod dns;`. Needs `dnsmasq` (Debian `dnsmasq-base`; `scripts/test.sh` installs it).
#![allow(dead_code)]

use super::sipp::{free_port, localhost, wait_bound};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// dnsmasq serving only the given records for `*.test`, on 127.0.0.1:port.
pub struct Dns {
    child: Child,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Dns {
    /// Starts dnsmasq with `records` (`--srv-host=...`, `--host-record=...`, `--naptr-record=...`).
    pub fn start(records: &[String]) -> Dns {
        let bin = ["/usr/sbin/dnsmasq", "/sbin/dnsmasq", "dnsmasq"]
            .into_iter()
            .find(|b| !b.starts_with('/') || std::path::Path::new(b).exists())
            .unwrap();
        let port = free_port(localhost());
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("dnsmasq.pid");
        let mut cmd = Command::new(bin);
        cmd.args(["-k", "--no-resolv", "--no-hosts", "--conf-file=/dev/null"])
            .arg(format!("--port={port}"))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .arg("--local=/test/")
            .arg(format!("--pid-file={}", pid.display()))
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if std::env::var("USER").is_ok_and(|u| u == "root") || std::env::var_os("USER").is_none() {
            cmd.arg("--user=root");
        }
        let child = cmd
            .spawn()
            .expect("dnsmasq not found: install Debian's dnsmasq-base (scripts/test.sh does)");
        // Owned at once: dropped (killed and reaped) if the wait below panics.
        let dns = Dns {
            child,
            addr: SocketAddr::new(localhost(), port),
            _dir: dir,
        };
        wait_bound(port, false);
        dns
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
