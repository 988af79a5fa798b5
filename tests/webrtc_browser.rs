//! Calls from the browser, end to end: the click-to-call application in process (real engine, relay, callback
//! service, HTTP), a headless Chromium with a fake microphone (`--use-fake-device-for-media-stream
//! --use-fake-ui-for-media-stream`, a beep) clicking the widget's "Call from my browser", and in-process
//! [`DemoPhone`] agents answering over SIP and counting the RTP they receive.
//!
//! One test, in order (one Chromium, one application):
//! 1. hang-up from the browser: the call connects; the agent receives RTP from the browser (≥ 100 packets after
//!    `connected`, more than any prompt sent to it); the browser's `getStats()` inbound-rtp `packetsReceived`
//!    grows (the agent's tone); the codec is G.711; the widget's keypad buttons `1` and `#` reach the agent as
//!    RFC 4733 DTMF (its own payload type); the widget's hang-up ends both legs and the request completes;
//! 2. hang-up from the agent (a phone that rings 2 s, while the browser hears the greeting and hold music, and
//!    sends BYE after 4 s): the request completes and the widget closes its peer connection;
//! 3. ten calls in a row: open fds (`/proc/self/fd`), tokio's alive tasks and RSS (`/proc/self/statm`) before and
//!    after are printed and must not grow with the number of calls;
//! 4. a dead tab (`Page.crash`: the renderer dies without a goodbye): the server ends the browser leg by itself
//!    (ICE failure or RTP inactivity) and hangs up the agent.
//!
//! Needs `chromium` (`apt-get install -y chromium`); without it the test says so and passes vacuously.

#[path = "web_support/browser.rs"]
mod browser;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use browser::{chromium, launch_with, Cdp};
use rappel::app::App;
use rappel::config::Config;
use rappel::demo::{Behaviour, DemoPhone};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` until it is true (20 ms apart, at most [`WAIT`]).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The current browser call's audio counters from `getStats()`.
async fn stats(cdp: &mut Cdp) -> Value {
    cdp.eval(
        "(async () => {
            const pc = window.rappelPeer;
            if (!pc) return null;
            const r = { received: 0, sent: 0, codecs: [] };
            (await pc.getStats()).forEach(s => {
                if (s.type === 'inbound-rtp' && s.kind === 'audio') r.received = s.packetsReceived;
                if (s.type === 'outbound-rtp' && s.kind === 'audio') r.sent = s.packetsSent;
                if (s.type === 'codec') r.codecs.push(s.mimeType);
            });
            return r;
        })()",
    )
    .await
}

async fn received(cdp: &mut Cdp) -> u64 {
    stats(cdp).await["received"].as_u64().unwrap_or(0)
}

/// Waits until the browser's inbound packet count exceeds `n`.
async fn received_above(cdp: &mut Cdp, n: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = received(cdp).await;
        if r > n {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "browser inbound-rtp stuck at {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const STATUS: &str = "document.querySelector('[data-rappel=\"status\"]').textContent";

/// Clicks "Call from my browser" with `topic` (which picks the agent) and waits for `connected`.
async fn call(cdp: &mut Cdp, topic: &str) {
    cdp.wait_for(
        "(() => { const b = document.querySelector('[data-rappel=\"call-browser\"]');
                  return !!b && !b.hidden && !b.disabled; })()",
    )
    .await;
    cdp.eval(&format!(
        "(() => {{
            document.querySelector('[data-rappel=\"topic\"]').value = '{topic}';
            document.querySelector('[data-rappel=\"call-browser\"]').click();
            return true;
        }})()"
    ))
    .await;
    cdp.wait_for(&format!("{STATUS}.includes('(connected)')"))
        .await;
}

async fn hang_up(cdp: &mut Cdp) {
    cdp.eval(
        "(() => { document.querySelector('[data-rappel=\"hangup\"]').click(); return true; })()",
    )
    .await;
    // The visitor hung up a conversation: completed, not cancelled.
    cdp.wait_for(&format!("{STATUS}.includes('(completed)')"))
        .await;
    cdp.wait_for("window.rappelPeer === null").await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// UDP sockets open in this process (the relay's, the glue's and the peer connections' sockets; the demo
/// phones'): socket fds whose inode is in `/proc/self/net/udp{,6}`.
fn udp_sockets() -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|l| inodes.contains(&l.to_string_lossy().into_owned()))
            .count()
    })
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

fn config(alice: &DemoPhone, bob: &DemoPhone, db: &std::path::Path) -> Config {
    let rtp_base = 24000 + (std::process::id() % 20) * 200;
    let text = format!(
        r#"
[sip]
listen = "127.0.0.1:0"
[trunk]
uri = "sip:127.0.0.1:9"
caller_id = "+33100000000"
[[agents]]
name = "alice"
uri = "{alice}"
skills = ["stay"]
[[agents]]
name = "bob"
uri = "{bob}"
skills = ["short"]
[http]
listen = "127.0.0.1:0"
ip_burst = 50
ip_refill_s = 1
topics = ["stay", "short"]
[media]
rtp_ports = "{lo_port}-{hi_port}"
[store]
path = {db:?}
[callback]
max_attempts = 1
wrap_up_s = 0
"#,
        // Away from the default range other test processes on the machine may be using.
        lo_port = rtp_base,
        hi_port = rtp_base + 199,
        alice = alice.uri(),
        bob = bob.uri(),
        db = db.display().to_string(),
    );
    Config::parse(&text).expect("test configuration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_calls_reach_the_agent_and_end_from_either_side() {
    let Some(exe) = chromium() else {
        eprintln!("chromium not installed: browser test not run (apt-get install -y chromium)");
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let agent = |ring, talk| Behaviour::Answer {
        ring,
        talk,
        tone_hz: 523.0,
    };
    let alice = DemoPhone::start("alice", lo, agent(Duration::from_millis(200), None))
        .await
        .unwrap();
    // Bob rings 2 s: the browser hears the greeting and hold music meanwhile.
    let bob = DemoPhone::start(
        "bob",
        lo,
        agent(Duration::from_secs(2), Some(Duration::from_secs(4))),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(&config(&alice, &bob, &dir.path().join("c.db")))
        .await
        .expect("app starts");
    let (_browser, mut cdp) = launch_with(
        &exe,
        &[
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
        ],
    )
    .await;
    let url = format!("http://{}/", app.http_addr());
    cdp.call("Page.navigate", json!({ "url": url })).await;

    // 1. Hang-up from the browser.
    call(&mut cdp, "stay").await;
    let at_connect = alice.stats().rtp_received.load(Relaxed);
    until("RTP from the browser at the agent", || {
        alice.stats().rtp_received.load(Relaxed) >= at_connect + 100
    })
    .await;
    let first = received_above(&mut cdp, 20).await;
    let later = received_above(&mut cdp, first + 50).await;
    let s = stats(&mut cdp).await;
    eprintln!("browser call 1: agent received {} RTP packets, browser inbound-rtp {first} then {later}, stats {s}",
        alice.stats().rtp_received.load(Relaxed));
    let codecs = s["codecs"].to_string();
    assert!(
        codecs.contains("audio/PCMU") || codecs.contains("audio/PCMA"),
        "{codecs}"
    );
    assert!(!codecs.contains("opus"), "{codecs}");
    assert!(s["sent"].as_u64().unwrap_or(0) > 0, "{s}");
    cdp.screenshot("webrtc_browser_connected.png").await;
    cdp.eval(
        "(() => { for (const d of ['1', '#']) {
                    document.querySelector(`[data-rappel=\"dtmf\"][data-digit=\"${d}\"]`).click(); }
                  return true; })()",
    )
    .await;
    until("the keypad's digits at the agent", || {
        alice.stats().digits() == "1#"
    })
    .await;
    hang_up(&mut cdp).await;
    until("the agent's leg ended", || {
        alice.stats().ended.load(Relaxed) == 1
    })
    .await;
    until("no call left", || app.service().live_calls() == 0).await;

    // 2. Hang-up from the agent: bob rings 2 s (the browser hears the greeting and hold music: 100 frames),
    // then sends BYE after 4 s of conversation.
    call(&mut cdp, "short").await;
    let before_agent = received(&mut cdp).await;
    eprintln!("browser call 2: {before_agent} packets received when the page showed connected (bob rang 2 s)");
    assert!(
        before_agent >= 40,
        "greeting and hold music: {before_agent} packets"
    );
    received_above(&mut cdp, before_agent + 20).await;
    until("bob hung up", || bob.stats().ended.load(Relaxed) == 1).await;
    cdp.wait_for(&format!("{STATUS}.includes('(completed)')"))
        .await;
    cdp.wait_for("window.rappelPeer === null").await;
    until("no call left", || app.service().live_calls() == 0).await;
    assert!(bob.stats().rtp_received.load(Relaxed) >= 100);

    // 3. Ten calls in a row: nothing may grow with the number of calls.
    let (fds0, udp0, tasks0, rss0) = (open_fds(), udp_sockets(), alive_tasks(), rss_kib());
    let mut during = 0;
    for i in 0..10 {
        call(&mut cdp, "stay").await;
        received_above(&mut cdp, 10).await;
        during = during.max(udp_sockets());
        hang_up(&mut cdp).await;
        until("the agent's leg ended", || {
            alice.stats().ended.load(Relaxed) == 2 + i
        })
        .await;
        until("no call left", || app.service().live_calls() == 0).await;
    }
    // A leg's sockets close when its peer connection's task is over, just after the leg ends: let them settle.
    let deadline = Instant::now() + Duration::from_secs(10);
    while udp_sockets() > udp0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (fds1, udp1, tasks1, rss1) = (open_fds(), udp_sockets(), alive_tasks(), rss_kib());
    eprintln!(
        "ten browser calls: UDP sockets {udp0} -> {udp1} ({during} during a call), open fds {fds0} -> {fds1}, tokio alive tasks {tasks0} -> \
         {tasks1}, RSS {rss0} KiB -> {rss1} KiB"
    );
    // Each call opens 4 UDP sockets here (peer connection, glue, relay RTP and RTCP) and ~5 tasks: a leak would
    // grow by at least 10. Chromium's keep-alive HTTP connections and event streams (a TCP fd and a task each)
    // come and go: a few of those are noise.
    assert!(
        during >= udp0 + 4,
        "the count sees a call's sockets: {during}"
    );
    assert!(udp1 <= udp0, "UDP sockets left behind: {udp0} -> {udp1}");
    assert!(fds1 <= fds0 + 4, "fds grew: {fds0} -> {fds1}");
    assert!(tasks1 <= tasks0 + 4, "tasks grew: {tasks0} -> {tasks1}");
    assert!(
        rss1 < rss0 + 32 * 1024,
        "RSS grew by more than 32 MiB: {rss0} -> {rss1} KiB"
    );

    // 4. A dead tab: the renderer crashes mid-call.
    call(&mut cdp, "stay").await;
    received_above(&mut cdp, 10).await;
    let ended = alice.stats().ended.load(Relaxed);
    let t0 = Instant::now();
    cdp.fire("Page.crash", json!({})).await;
    until("the server ended the dead tab's call", || {
        alice.stats().ended.load(Relaxed) == ended + 1
    })
    .await;
    until("no call left", || app.service().live_calls() == 0).await;
    eprintln!(
        "dead tab: both legs ended {} ms after the crash",
        t0.elapsed().as_millis()
    );
    app.shutdown().await;
}
