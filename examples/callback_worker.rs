//! A callback service process on a SQLite file, with simulated phones or real SIP: the subject of the kill -9 test
//! (`tests/callback_service_kill.rs`), and a small demo.
//!
//! ```text
//! cargo run --example callback_worker -- --db /tmp/cb.db --submit --answer-ms 300 --talk-ms 60000
//! ```
//!
//! - `--db PATH`: the SQLite file (recovered at start).
//! - `--submit`: submit the demo requests: three due now, one due in an hour, one whose phone is busy on the
//!   first call made by this process.
//! - `--answer-ms N`: visitors answer after N ms (default 300). Agents answer after 200 ms.
//! - `--talk-ms N`: once bridged, the visitor hangs up after N ms (default 1000).
//! - `--backoff-ms N`: wait before calling a busy visitor again (default 3000).
//! - `--sip-trunk IP:PORT --sip-agent IP:PORT [--rtp-ports MIN-MAX]`: real SIP calls through rappel's engine
//!   instead of simulated phones (visitors at `sip:<number>@trunk`, the agent at `sip:alice@agent`); `--submit`
//!   then submits two requests due now and one in an hour.
//! - `--exit-when-settled`: exit 0 once every stored request is final or scheduled more than 10 minutes ahead
//!   (exit 2 after 60 s otherwise).
//!
//! Every event is printed on stdout after it was stored, one per line: `EVENT <id> <state> <kind as JSON>`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rappel::callback::agents::AgentsPolicy;
use rappel::callback::calls::{CallControl, EngineCalls, PhoneScript, SimulatedCalls};
use rappel::callback::service::{CallbackService, Clock, ServiceConfig, SystemClock};
use rappel::callback::store::{ListFilter, SqliteStore};
use rappel::callback::{AgentConfig, CallFailure, NewRequest, State, WishedTime};
use rappel::{CallOptions, Engine};

/// The demo requests' numbers.
const NOW: [&str; 3] = ["+33610000001", "+33610000002", "+33610000003"];
const LATER: &str = "+33610000004";
const BUSY: &str = "+33610000005";

struct Args {
    db: String,
    submit: bool,
    answer: Duration,
    talk: Duration,
    backoff: Duration,
    exit_when_settled: bool,
    /// Visitor trunk, agent phone, RTP port range.
    sip: Option<(SocketAddr, SocketAddr, (u16, u16))>,
}

fn parse(argv: Vec<String>) -> Result<Args, String> {
    let mut a = Args {
        db: String::new(),
        submit: false,
        answer: Duration::from_millis(300),
        talk: Duration::from_millis(1000),
        backoff: Duration::from_millis(3000),
        exit_when_settled: false,
        sip: None,
    };
    let (mut trunk, mut agent, mut rtp) = (None, None, (30_000, 39_999));
    let mut it = argv.into_iter();
    let ms = |v: Option<String>| -> Result<Duration, String> {
        v.and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| "expected milliseconds".to_owned())
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--db" => a.db = it.next().ok_or("--db needs a path")?,
            "--submit" => a.submit = true,
            "--answer-ms" => a.answer = ms(it.next())?,
            "--talk-ms" => a.talk = ms(it.next())?,
            "--backoff-ms" => a.backoff = ms(it.next())?,
            "--exit-when-settled" => a.exit_when_settled = true,
            "--sip-trunk" => trunk = it.next().and_then(|v| v.parse().ok()),
            "--sip-agent" => agent = it.next().and_then(|v| v.parse().ok()),
            "--rtp-ports" => {
                rtp = it
                    .next()
                    .and_then(|v| {
                        let (a, b) = v.split_once('-')?;
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .ok_or("--rtp-ports needs MIN-MAX")?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.db.is_empty() {
        return Err("--db is required".into());
    }
    a.sip = match (trunk, agent) {
        (Some(t), Some(g)) => Some((t, g, rtp)),
        (None, None) => None,
        _ => return Err("--sip-trunk and --sip-agent go together (IP:port each)".into()),
    };
    Ok(a)
}

fn main() {
    std::process::exit(run(std::env::args().skip(1).collect()));
}

/// Runs the worker with these arguments (without the program name); returns the exit code.
pub fn run(argv: Vec<String>) -> i32 {
    let args = match parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("callback_worker: {e}");
            return 64;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callback_worker: runtime: {e}");
            return 1;
        }
    };
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> i32 {
    match args.sip {
        Some((trunk, agent, rtp)) => {
            let engine = match Engine::builder().rtp_ports(rtp.0, rtp.1).start().await {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("callback_worker: engine: {e}");
                    return 1;
                }
            };
            let calls = EngineCalls::new(engine, CallOptions::default(), None);
            let uris = (
                format!("sip:{{number}}@{trunk}"),
                format!("sip:alice@{agent}"),
            );
            let submit = [NOW[0], NOW[1]];
            serve_with(args, calls, uris, &submit).await
        }
        None => {
            let calls = simulated(args.answer, args.talk);
            let uris = (
                "sip:{number}@trunk.example".to_owned(),
                "sip:alice@agents.example".to_owned(),
            );
            let submit = [NOW[0], NOW[1], NOW[2], BUSY];
            serve_with(args, calls, uris, &submit).await
        }
    }
}

/// The simulated phones: alice answers after 200 ms; visitors after `answer` and hang up `talk` after the bridge;
/// [`BUSY`] is busy on the first call.
fn simulated(answer: Duration, talk: Duration) -> SimulatedCalls {
    let mut busy_once: BTreeSet<String> = BTreeSet::from([BUSY.to_owned()]);
    SimulatedCalls::new(move |dial| {
        if dial.target.starts_with("sip:alice@") {
            PhoneScript::answers(Duration::from_millis(200), Duration::from_secs(3600))
        } else if busy_once.iter().any(|n| dial.target.contains(n.as_str())) {
            busy_once.clear();
            PhoneScript::fails(Duration::from_millis(100), CallFailure::Busy)
        } else {
            PhoneScript::answers(answer, talk)
        }
    })
}

/// Runs the service over `calls`; `uris` are the visitor URI template and the agent's URI; with `--submit`,
/// submits `now` (due now) and [`LATER`].
async fn serve_with(
    args: Args,
    calls: impl CallControl,
    uris: (String, String),
    now: &[&str],
) -> i32 {
    let mut config = ServiceConfig {
        agents: vec![AgentConfig::new("alice", &uris.1, &[])],
        visitor_uri: uris.0,
        ..ServiceConfig::default()
    };
    config.callback.flow.caller_id = "+33100000000".into();
    config.callback.flow.max_attempts = 5;
    config.callback.flow.retry_backoff = args.backoff;
    config.callback.flow.max_hold = Duration::from_secs(600);
    config.callback.agents = AgentsPolicy {
        wrap_up: Duration::ZERO,
        max_consecutive_misses: None,
    };
    let store = match SqliteStore::open(&args.db) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("callback_worker: {e}");
            return 1;
        }
    };
    let clock = Arc::new(SystemClock);
    let svc = match CallbackService::start(config, store, calls, clock.clone()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("callback_worker: {e}");
            return 1;
        }
    };
    let mut sub = svc.subscribe();
    if args.submit {
        let later = clock.now() + chrono::Duration::hours(1);
        let mut requests: Vec<NewRequest> = now
            .iter()
            .map(|p| NewRequest {
                phone: (*p).to_owned(),
                ..NewRequest::default()
            })
            .collect();
        requests.push(NewRequest {
            phone: LATER.to_owned(),
            wished: Some(WishedTime::At(later)),
            ..NewRequest::default()
        });
        for r in requests {
            if let Err(e) = svc.submit(r).await {
                eprintln!("callback_worker: submit: {e}");
                return 1;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if args.exit_when_settled && settled(&svc, clock.as_ref()).await {
            svc.shutdown().await;
            println!("SETTLED");
            return 0;
        }
        let ev = if args.exit_when_settled {
            match tokio::time::timeout_at(deadline, sub.recv()).await {
                Ok(ev) => ev,
                Err(_) => {
                    eprintln!("callback_worker: not settled in time");
                    return 2;
                }
            }
        } else {
            sub.recv().await
        };
        match ev {
            Ok((id, ev)) => {
                let kind = serde_json::to_string(&ev.kind).unwrap_or_default();
                println!("EVENT {id} {} {kind}", ev.state.as_str());
            }
            Err(e) => {
                eprintln!("callback_worker: subscription: {e}");
                return 1;
            }
        }
    }
}

/// Every request final, or scheduled more than 10 minutes ahead.
async fn settled(svc: &CallbackService, clock: &dyn Clock) -> bool {
    let horizon = clock.now() + chrono::Duration::minutes(10);
    match svc.list(ListFilter::default()).await {
        Ok(all) => all
            .iter()
            .all(|v| v.state.is_final() || (v.state == State::Scheduled && v.due > horizon)),
        Err(_) => false,
    }
}
