//! Call-rate benchmark: whole bridged flows per second against two SIPp UAS peers on loopback.
//!
//! ```text
//! cargo run --release --example call_rate -- --flows 5000 --rate 1000
//! ```
//! A flow: call the visitor, wait for the answer, play hold music to the visitor for `--hold-ms`, call the agent,
//! wait for the answer, bridge, stay bridged for `--talk-ms`, hang the visitor up (the bridge hangs the agent up),
//! wait for both legs' CDRs. A flow is ok when both legs were answered and bridged and both ended normally.
//! The example starts its own two SIPp peers (`tests/sipp/call_rate_uas.xml`) and stops them by PID.
//! Flows start at `--rate` per second, at most `--flows`; the run stops after `--max-secs` (default 120).
//! The last line printed is one JSON object: `flows`, `ok`, `failed`, `flows_per_s` (ok flows over the time from
//! the first start to the last end), plus latency and engine figures.

use rappel::media::player::{PlayItem, Playlist};
use rappel::media::tone::{Country, ToneSpec};
use rappel::{BridgeOptions, CallError, CallOptions, Engine};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    flows: u64,
    rate: f64,
    hold_ms: u64,
    talk_ms: u64,
    max_secs: u64,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        flows: 1000,
        rate: 200.0,
        hold_ms: 100,
        talk_ms: 200,
        max_secs: 120,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let bad = |_| format!("bad value for {k}");
        match k.as_str() {
            "--flows" => a.flows = v.parse().map_err(bad)?,
            "--rate" => a.rate = v.parse().map_err(|_| format!("bad value for {k}"))?,
            "--hold-ms" => a.hold_ms = v.parse().map_err(bad)?,
            "--talk-ms" => a.talk_ms = v.parse().map_err(bad)?,
            "--max-secs" => a.max_secs = v.parse().map_err(bad)?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(a)
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill(); // by the PID we started
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let p = s.local_addr().expect("addr").port();
        if p < 60_000 && UdpSocket::bind(("127.0.0.1", p + 2)).is_ok() {
            return p;
        }
    }
}

fn sipp_peer() -> (Peer, SocketAddr) {
    let port = free_port();
    let media = free_port();
    let sf = format!(
        "{}/tests/sipp/call_rate_uas.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    let child = Command::new("sipp")
        .args(["-sf", &sf, "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mp", &media.to_string(), "-nostdin", "-t", "u1"])
        .args([
            "-buff_size",
            "4194304",
            "-max_recv_loops",
            "10000",
            "-max_sched_loops",
            "10000",
        ])
        .args(["-timeout", "600s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp (Debian package sip-tester) must be installed");
    // Wait until it listens.
    let needle = format!(":{port:04X} ");
    for _ in 0..500 {
        let up = std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| t.contains(&needle));
        if up {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (Peer(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

#[derive(Debug)]
#[allow(dead_code)] // the fields are read through Debug in the error summary
enum FlowError {
    Call(&'static str, CallError),
    Cdr(&'static str),
}

async fn flow(
    engine: Engine,
    visitor: String,
    agent: String,
    music: Playlist,
    hold: Duration,
    talk: Duration,
) -> Result<Duration, FlowError> {
    let t0 = Instant::now();
    let opts = CallOptions::default().ring_timeout(Duration::from_secs(10));
    let mut v = engine
        .call(&visitor, opts.clone())
        .await
        .map_err(|e| FlowError::Call("call visitor", e))?;
    v.answered()
        .await
        .map_err(|e| FlowError::Call("visitor answer", e))?;
    v.play(music)
        .await
        .map_err(|e| FlowError::Call("play", e))?;
    tokio::time::sleep(hold).await;
    let mut a = engine
        .call(&agent, opts)
        .await
        .map_err(|e| FlowError::Call("call agent", e))?;
    a.answered()
        .await
        .map_err(|e| FlowError::Call("agent answer", e))?;
    let setup = t0.elapsed();
    let _bridge = engine
        .bridge(&v, &a, BridgeOptions::default())
        .await
        .map_err(|e| FlowError::Call("bridge", e))?;
    tokio::time::sleep(talk).await;
    v.hangup().await.map_err(|e| FlowError::Call("hangup", e))?;
    let vc = v.ended().await.ok_or(FlowError::Cdr("visitor cdr"))?;
    let ac = a.ended().await.ok_or(FlowError::Cdr("agent cdr"))?;
    use rappel::call::EndCause::Normal;
    if vc.end_cause != Normal || ac.end_cause != Normal {
        return Err(FlowError::Cdr("abnormal end"));
    }
    Ok(setup)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let (mut p1, visitor_addr) = sipp_peer();
    let (mut p2, agent_addr) = sipp_peer();
    // Away from the 30000-39999 that rtpengine and the relay benchmarks use on this shared machine; a pair the
    // kernel's ephemeral range (32768-60999) happens to hold is skipped by the relay driver.
    let engine = Engine::builder().rtp_ports(44_000, 65_534).start().await?;
    let music = Playlist::new().then(PlayItem::Loop {
        clip: ToneSpec::ringback(Country::Fr).render(),
        duration: None,
    });
    let visitor = format!("sip:visitor@{visitor_addr}");
    let agent = format!("sip:agent@{agent_addr}");
    let (hold, talk) = (
        Duration::from_millis(a.hold_ms),
        Duration::from_millis(a.talk_ms),
    );
    let interval = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.max_secs);
    let mut tasks = tokio::task::JoinSet::new();
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut started = 0u64;
    while started < a.flows && Instant::now() < deadline {
        let due = start + interval.mul_f64(started as f64);
        tokio::time::sleep_until(due.into()).await;
        let (e, v, ag, m, r) = (
            engine.clone(),
            visitor.clone(),
            agent.clone(),
            music.clone(),
            results.clone(),
        );
        tasks.spawn(async move {
            let res =
                tokio::time::timeout(Duration::from_secs(30), flow(e, v, ag, m, hold, talk)).await;
            let res = res.unwrap_or(Err(FlowError::Cdr("flow timed out")));
            if let Ok(mut g) = r.lock() {
                g.push((res, Instant::now()));
            }
        });
        started += 1;
    }
    let start_span = start.elapsed();
    while tasks.join_next().await.is_some() {}
    let results = std::mem::take(&mut *results.lock().map_err(|_| "poisoned")?);
    let mut setups: Vec<Duration> = Vec::new();
    let mut failed = 0u64;
    let mut last_end = start;
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for (r, end) in &results {
        last_end = last_end.max(*end);
        match r {
            Ok(s) => setups.push(*s),
            Err(e) => {
                failed += 1;
                *errors.entry(format!("{e:?}")).or_default() += 1;
            }
        }
    }
    setups.sort();
    let pct = |p: f64| {
        setups
            .get(((setups.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let ok = setups.len() as u64;
    let elapsed = last_end.duration_since(start).as_secs_f64();
    for (e, n) in &errors {
        eprintln!("{n} x {e}");
    }
    eprintln!(
        "started {started} flows in {:.2} s (target {:.0}/s); last ended after {elapsed:.2} s; \
         setup (visitor answer + hold + agent answer) p50 {:.1} ms p99 {:.1} ms",
        start_span.as_secs_f64(),
        a.rate,
        pct(0.5),
        pct(0.99)
    );
    engine.shutdown(rappel::ShutdownMode::HangUp).await;
    // A peer that exited during the run (crashed, or killed from outside) explains failures: say so.
    let peers_alive = [&mut p1, &mut p2]
        .iter_mut()
        .all(|p| matches!(p.0.try_wait(), Ok(None)));
    if !peers_alive {
        eprintln!("a SIPp peer exited during the run: failures are not the engine's");
    }
    println!(
        "{}",
        serde_json::json!({
            "flows": started,
            "ok": ok,
            "failed": failed,
            "flows_per_s": if elapsed > 0.0 { ok as f64 / elapsed } else { 0.0 },
            "rate": a.rate,
            "hold_ms": a.hold_ms,
            "talk_ms": a.talk_ms,
            "peers_alive": peers_alive,
            "setup_p50_ms": pct(0.5),
            "setup_p99_ms": pct(0.99),
        })
    );
    Ok(())
}
