//! baresip launch and control helpers for the interop tests (`tests/baresip_interop.rs` includes this module
//! with `#[path = "support/baresip.rs"] mod baresip;`).
//!
//! [`Baresip::start`] runs one `baresip` (1.0, Debian package `baresip-core`) on 127.0.0.1 in its own temporary
//! config folder, with its own SIP port, ctrl_tcp port and RTP port range (found free at start), one account that
//! answers calls at once (`answermode=auto`), a generated tone WAV as its microphone (`aufile`) and `sndfile`
//! recording what it sends (`*-enc.wav`) and what it receives and decodes (`*-dec.wav`). It needs no sound card:
//! baresip 1.0 decodes (and records) in its receive path whether or not a player exists.
//!
//! [`Ctrl`] speaks ctrl_tcp: JSON commands in netstrings (`{"command":"hangup","params":"","token":"1"}`), answered
//! by `{"response":true,"ok":..,"data":..,"token":..}`, with `{"event":true,"type":"CALL_CLOSED",..}` messages in
//! between. Dropping a [`Baresip`] kills and reaps the process by its PID; when the test failed, it prints the
//! phone's log first (with `BARESIP_TRACE` set in the environment, that log also has every SIP message).
#![allow(dead_code)]

use rappel::media::wav::{build_wav, Wav, WavFormat};
use serde_json::{json, Value};
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Upper bound of any one wait on a baresip (the machine is shared: generous, and only a bound).
pub const WAIT: Duration = Duration::from_secs(20);

/// Length of the tone file: baresip's `aufile` source ends the call when its file ends, so it outlasts any call.
const TONE_SECS: usize = 60;

/// How many times [`Baresip::start`] tries (new ports each time) when baresip exits at start.
const START_ATTEMPTS: usize = 5;

/// Largest ctrl_tcp message accepted (a listcalls answer is a few hundred bytes).
const MAX_MSG: usize = 1 << 20;

/// One running baresip, killed (by its PID) and reaped when dropped.
pub struct Baresip {
    child: Child,
    /// The account's user (`visitor`, `agent`).
    pub user: String,
    /// Its SIP port on 127.0.0.1 (UDP and TCP).
    pub sip_port: u16,
    ctrl_port: u16,
    /// Its config folder.
    root: PathBuf,
    /// The folder's owner (set once started), removed after the process is gone.
    _dir: Option<tempfile::TempDir>,
}

/// How one baresip is set up.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    /// The account's user part.
    pub user: &'a str,
    /// The frequency of the tone it sends (its `aufile` source).
    pub tone_hz: f64,
    /// Its `audio_codecs` account parameter (`PCMU`, `PCMA`, `PCMU,PCMA`).
    pub codecs: &'a str,
    /// Its `answermode` account parameter: `auto` (200 at once), `manual` (180, then 200 on ctrl_tcp `accept`),
    /// `early` (183 with SDP and its audio, then 200 on `accept`).
    pub answermode: &'a str,
}

impl Baresip {
    /// Starts baresip as [`Setup`] says and waits until its ctrl_tcp port accepts connections (SIP is bound
    /// before ctrl_tcp: the modules load in config order, after the SIP stack). Ports are found free just before
    /// the start, so another process may take one meanwhile: baresip then exits at once, and is started again
    /// on other ports (a few times). Panics with a clear message when `baresip` is not installed.
    pub async fn start(setup: Setup<'_>) -> Baresip {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let snd = root.join("snd");
        std::fs::create_dir(&snd).expect("snd dir");
        let tone = root.join("tone.wav");
        std::fs::write(&tone, tone_wav(setup.tone_hz, TONE_SECS)).expect("write tone");
        let mut b = None;
        for _ in 0..START_ATTEMPTS {
            // SIP on UDP and TCP, and SIP over TLS on the next port (baresip 1.0 always listens for it).
            let sip_port = free_port_pair();
            let ctrl_port = free_port();
            let (rtp_lo, rtp_hi) = free_range(20);
            let config = format!(
                "sip_listen 127.0.0.1:{sip_port}\n\
                 net_interface 127.0.0.1\n\
                 audio_source aufile,{tone}\n\
                 rtp_ports {rtp_lo}-{rtp_hi}\n\
                 module_path /usr/lib/baresip/modules\n\
                 module g711.so\n\
                 module aufile.so\n\
                 module sndfile.so\n\
                 module account.so\n\
                 module menu.so\n\
                 module ctrl_tcp.so\n\
                 ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n\
                 snd_path {snd}\n",
                tone = tone.display(),
                snd = snd.display(),
            );
            std::fs::write(root.join("config"), config).expect("write config");
            let accounts = format!(
                "<sip:{}@127.0.0.1:{sip_port}>;regint=0;answermode={};audio_codecs={}\n",
                setup.user, setup.answermode, setup.codecs
            );
            std::fs::write(root.join("accounts"), accounts).expect("write accounts");
            let log = std::fs::File::create(root.join("log")).expect("log file");
            let child = Command::new("baresip")
                .arg("-f")
                .arg(root)
                .arg("-v")
                .args(std::env::var_os("BARESIP_TRACE").map(|_| "-s")) // SIP trace in the log
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run `baresip` ({e}): install Debian's baresip-core (scripts/test.sh does)"
                    )
                });
            // Owned at once: killed and reaped if anything below panics.
            let mut started = Baresip {
                child,
                user: setup.user.to_owned(),
                sip_port,
                ctrl_port,
                root: root.to_owned(),
                _dir: None,
            };
            if started.wait_ready().await {
                b = Some(started);
                break;
            }
        }
        let mut b = b.unwrap_or_else(|| {
            let log = std::fs::read_to_string(root.join("log")).unwrap_or_default();
            panic!(
                "{}: baresip exited at start {START_ATTEMPTS} times\n{log}",
                setup.user
            )
        });
        b._dir = Some(dir);
        b
    }

    /// Waits (at most [`WAIT`]) until ctrl_tcp accepts a connection (true), or baresip exited (false).
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.ctrl_port))
                .await
                .is_ok()
            {
                // Someone listens there: it is our phone only if the phone is still running (another process
                // may have taken the port, and the phone exited on it).
                return self.child.try_wait().expect("wait baresip").is_none();
            }
            if self.child.try_wait().expect("wait baresip").is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "{}: ctrl_tcp not reachable\n{}",
                self.user,
                self.log()
            );
            // An outside process starting up: nothing to await but its port.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `sip:user@127.0.0.1:port`.
    pub fn uri(&self) -> String {
        format!("sip:{}@127.0.0.1:{}", self.user, self.sip_port)
    }

    /// A new ctrl_tcp connection, retried until baresip listens (at most [`WAIT`]).
    pub async fn ctrl(&self) -> Ctrl {
        let deadline = Instant::now() + WAIT;
        loop {
            match TcpStream::connect(("127.0.0.1", self.ctrl_port)).await {
                Ok(stream) => {
                    return Ctrl {
                        stream,
                        buf: Vec::new(),
                        events: Vec::new(),
                        token: 0,
                    }
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{}: ctrl_tcp not reachable: {e}\n{}",
                        self.user,
                        self.log()
                    );
                    // An outside process starting up: nothing to await but its port.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// baresip's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("log")).unwrap_or_default()
    }

    /// The DTMF digits the phone received (RFC 4733), in order, from its log lines `received event: '4' (end=0)`
    /// (its ctrl_tcp reports `CALL_DTMF_END` without the digit, and no `CALL_DTMF_START`, in 1.0).
    pub fn received_dtmf(&self) -> String {
        self.log()
            .split("received event: '")
            .skip(1)
            .filter_map(|rest| {
                let mut it = rest.chars();
                let digit = it.next()?;
                it.as_str().starts_with("' (end=0)").then_some(digit)
            })
            .collect()
    }

    /// The DTMF digits the phone received as SIP INFO, in order, from its log lines `call: received DTMF: '9'`.
    pub fn received_dtmf_info(&self) -> String {
        self.log()
            .split("call: received DTMF: '")
            .skip(1)
            .filter_map(|rest| rest.chars().next())
            .collect()
    }

    /// Waits (at most [`WAIT`]) until the phone received `n` DTMF digits (RFC 4733); returns them.
    pub async fn wait_dtmf(&self, n: usize) -> String {
        self.wait_digits(n, Self::received_dtmf).await
    }

    /// Waits (at most [`WAIT`]) until the phone received `n` DTMF digits as SIP INFO; returns them.
    pub async fn wait_dtmf_info(&self, n: usize) -> String {
        self.wait_digits(n, Self::received_dtmf_info).await
    }

    async fn wait_digits(&self, n: usize, read: fn(&Self) -> String) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = read(self);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{}: DTMF so far {got:?}",
                self.user
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // a log another process writes
        }
    }

    /// The path of the one `*-{kind}.wav` recording (`enc` or `dec`), once sndfile created it.
    fn recording_path(&self, kind: &str) -> Option<PathBuf> {
        let suffix = format!("-{kind}.wav");
        let dir = self.root.join("snd");
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(&suffix))
            .collect();
        assert!(
            found.len() <= 1,
            "{}: several recordings {found:?}",
            self.user
        );
        found.pop()
    }

    /// How many samples of received audio the `*-dec.wav` recording holds so far (0 before it exists), from the
    /// file's size: libsndfile writes the header first and the samples as they come.
    pub fn received_samples(&self) -> usize {
        self.recording_path("dec")
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| (m.len() as usize).saturating_sub(44) / 2)
    }

    /// Waits until the `*-dec.wav` recording holds `samples` samples (at most [`WAIT`]).
    pub async fn wait_received(&self, samples: usize) {
        let deadline = Instant::now() + WAIT;
        while self.received_samples() < samples {
            assert!(
                Instant::now() < deadline,
                "{}: received only {} of {samples} samples\n{}",
                self.user,
                self.received_samples(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // a file another process writes
        }
    }

    /// What the phone received and decoded during its call (`*-dec.wav`, 8 kHz mono), once libsndfile closed the
    /// file (its header's data size matches the file: after the call ended).
    pub async fn received(&self) -> Vec<i16> {
        self.finished_recording("dec").await
    }

    /// What the phone sent (`*-enc.wav`), once closed.
    pub async fn sent(&self) -> Vec<i16> {
        self.finished_recording("enc").await
    }

    async fn finished_recording(&self, kind: &str) -> Vec<i16> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(pcm) = self.recording_path(kind).and_then(|p| closed_wav(&p)) {
                return pcm;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no finished {kind} recording\n{}",
                self.user,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // a file another process finalises
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        // Our own child, by PID. It holds no registration, so nothing is lost by not letting it unregister.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- baresip {} log ---\n{}", self.user, self.log());
        }
    }
}

/// The samples of the WAV at `path` if its RIFF and data sizes match the file (libsndfile writes them when it
/// closes the file), 8 kHz mono 16-bit as configured.
fn closed_wav(path: &Path) -> Option<Vec<i16>> {
    let bytes = std::fs::read(path).ok()?;
    let riff = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
    if riff + 8 != bytes.len() {
        return None;
    }
    let wav = Wav::parse(&bytes).ok()?;
    assert_eq!(
        (wav.format, wav.channels, wav.sample_rate),
        (WavFormat::Pcm16, 1, 8000),
        "{path:?}"
    );
    Some(wav.to_pcm())
}

/// A ctrl_tcp connection to one baresip. Events that arrive while waiting for a response are kept in
/// [`Ctrl::events`].
pub struct Ctrl {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Events received so far (`{"event":true,"type":..}` objects), oldest first.
    pub events: Vec<Value>,
    token: u64,
}

impl Ctrl {
    /// Sends `command` with `params` and returns its response's `data` string; panics unless `ok`.
    pub async fn command(&mut self, command: &str, params: &str) -> String {
        self.token += 1;
        let token = self.token.to_string();
        let body = json!({"command": command, "params": params, "token": token}).to_string();
        let msg = format!("{}:{body},", body.len());
        self.stream
            .write_all(msg.as_bytes())
            .await
            .expect("ctrl_tcp write");
        loop {
            let v = self.read().await;
            if v["response"] == true && v["token"] == token.as_str() {
                assert_eq!(v["ok"], true, "{command} {params}: {v}");
                return v["data"].as_str().unwrap_or_default().to_owned();
            }
        }
    }

    /// The number of calls baresip has (`listcalls`: "--- Active calls (N) ---").
    pub async fn active_calls(&mut self) -> usize {
        let data = self.command("listcalls", "").await;
        let n = data
            .split("Active calls (")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|n| n.parse().ok());
        n.unwrap_or_else(|| panic!("unexpected listcalls answer {data:?}"))
    }

    /// Waits (at most [`WAIT`]) for an event of `kind` (`CALL_CLOSED`, `CALL_DTMF_START`...), looking first at
    /// the events already received; returns it and removes it from [`Ctrl::events`].
    pub async fn event(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["type"] == kind) {
                return self.events.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let v = tokio::time::timeout(left, self.read())
                .await
                .unwrap_or_else(|_| panic!("no {kind} event; saw {:?}", self.events));
            if v["response"] == true {
                panic!("unexpected response {v}");
            }
        }
    }

    /// Reads one message; events are also pushed to [`Ctrl::events`].
    async fn read(&mut self) -> Value {
        loop {
            if let Some((v, used)) = parse_netstring(&self.buf) {
                self.buf.drain(..used);
                if v["event"] == true {
                    self.events.push(v.clone());
                }
                return v;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("ctrl_tcp read timed out")
                .expect("ctrl_tcp read");
            assert!(n > 0, "ctrl_tcp closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One netstring (`LEN:JSON,`) at the start of `buf`: the JSON value and the bytes used; `None` when incomplete.
fn parse_netstring(buf: &[u8]) -> Option<(Value, usize)> {
    let colon = buf.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&buf[..colon])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad netstring length in {buf:?}"));
    assert!(len <= MAX_MSG, "ctrl_tcp message of {len} bytes");
    let end = colon + 1 + len;
    if buf.len() <= end {
        return None;
    }
    assert_eq!(buf[end], b',', "netstring not closed");
    let v = serde_json::from_slice(&buf[colon + 1..end]).expect("ctrl_tcp JSON");
    Some((v, end + 1))
}

/// A WAV file (8 kHz mono 16-bit PCM) of a `hz` sine for `secs` seconds.
pub fn tone_wav(hz: f64, secs: usize) -> Vec<u8> {
    let data: Vec<u8> = tone(hz, secs * 8000)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    build_wav(WavFormat::Pcm16, 1, 8000, &data)
}

/// `n` samples at 8 kHz of a `hz` sine (amplitude 8000).
pub fn tone(hz: f64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| ((i as f64 * 2.0 * std::f64::consts::PI * hz / 8000.0).sin() * 8000.0) as i16)
        .collect()
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// A port the OS picks, free for both UDP and TCP on 127.0.0.1 (baresip listens for SIP on both).
fn free_port() -> u16 {
    loop {
        let s = UdpSocket::bind((localhost(), 0)).expect("bind");
        let port = s.local_addr().expect("addr").port();
        if TcpListener::bind((localhost(), port)).is_ok() {
            return port;
        }
    }
}

/// A port free for UDP and TCP whose next port is free for TCP (baresip's SIP, and its SIP over TLS).
fn free_port_pair() -> u16 {
    loop {
        let p = free_port();
        if p < u16::MAX && TcpListener::bind((localhost(), p + 1)).is_ok() {
            return p;
        }
    }
}

/// `n` consecutive UDP ports free on 127.0.0.1 right now, starting at an even port the OS picked (baresip's
/// RTP range; it tries other ports of the range when one got taken meanwhile).
fn free_range(n: u16) -> (u16, u16) {
    loop {
        let s = UdpSocket::bind((localhost(), 0)).expect("bind");
        let lo = s.local_addr().expect("addr").port() & !1;
        drop(s);
        let Some(hi) = lo.checked_add(n - 1) else {
            continue;
        };
        if (lo..=hi).all(|p| UdpSocket::bind((localhost(), p)).is_ok()) {
            return (lo, hi);
        }
    }
}
