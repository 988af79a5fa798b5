//! kill -9: a process running the callback service on a SQLite file is killed with SIGKILL mid-flow, restarted on
//! the same file, killed again, restarted, and every request ends final or scheduled with its history intact.
//!
//! The process is this test binary re-executed (`RAPPEL_WORKER_ARGS` set) running `examples/callback_worker.rs`
//! with simulated phones: it prints each event after the store has it. Phases:
//! 1. submit five requests; kill when one is connected, two hold, one waits for its retry (busy at first) and one
//!    is scheduled in an hour;
//! 2. restart (visitors now slow to answer); kill when the requeued ones are being called again;
//! 3. restart until settled (every request final, or scheduled more than 10 minutes ahead).
//!
//! Checks, on the file: every event printed before a kill is stored, in order (the printed events of a phase are
//! a subsequence of the stored history, and phase 1's are a prefix); each `recovered` event names the state the
//! previous stored event left; nothing follows a final event; the row's state is the last event's; the scheduled
//! request kept its due time; the interrupted requests were requeued and completed (or, connected, marked missed).
//!
//! `kill_during_sip_calls` does the same over real SIP: rappel's engine calling SIPp peers (a visitor trunk and
//! the agent's phone), killed while one request is bridged and another holds (needs `sipp`).
//!
//! Custom harness (`harness = false`): the same binary is both the test and the worker. Wall-clock time: the
//! waits are for events the killed process printed, each bounded.

#[path = "support/sipp.rs"]
mod sipp;

#[path = "../examples/callback_worker.rs"]
#[allow(dead_code)]
mod worker;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rappel::callback::event::{MissReason, RecoveryAction};
use rappel::callback::store::{SqliteStore, Store};
use rappel::callback::{EventKind, RequestId, State};
use sipp::{band_port, local, Sipp};

const ENV: &str = "RAPPEL_WORKER_ARGS";
const WAIT: Duration = Duration::from_secs(60);

/// A printed event: request, state after, kind as JSON.
type Printed = (u64, String, String);

struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
    printed: Vec<Printed>,
}

impl Worker {
    fn start(args: &str) -> Worker {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(ENV, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("re-exec");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Worker {
            child,
            lines,
            printed: Vec::new(),
        }
    }

    /// Reads lines until `done` holds for the events seen so far.
    fn until(&mut self, what: &str, done: impl Fn(&[Printed]) -> bool) {
        let deadline = std::time::Instant::now() + WAIT;
        while !done(&self.printed) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("worker: {what} not seen; printed {:#?}", self.printed));
            if let Some(p) = parse(&line) {
                self.printed.push(p);
            }
        }
    }

    /// SIGKILL, by the PID we started.
    fn kill(mut self) -> Vec<Printed> {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
        // Lines already written before the kill are still in the pipe.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            if let Some(p) = parse(&line) {
                self.printed.push(p);
            }
        }
        self.printed
    }

    /// Waits for a clean exit; returns the code and the events.
    fn exit(mut self) -> (i32, Vec<Printed>, bool) {
        let deadline = std::time::Instant::now() + WAIT + Duration::from_secs(30);
        let mut settled = false;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == "SETTLED" => settled = true,
                Ok(line) => {
                    if let Some(p) = parse(&line) {
                        self.printed.push(p);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("worker did not exit in time");
                }
            }
        }
        let code = self.child.wait().expect("reap").code().unwrap_or(-1);
        (code, self.printed, settled)
    }
}

fn parse(line: &str) -> Option<Printed> {
    let rest = line.strip_prefix("EVENT ")?;
    let mut it = rest.splitn(3, ' ');
    let id = it.next()?.parse().ok()?;
    let state = it.next()?.to_owned();
    let kind = it.next()?.to_owned();
    Some((id, state, kind))
}

fn seen(p: &[Printed], id: u64, state: &str) -> bool {
    p.iter().any(|(i, s, _)| *i == id && s == state)
}

/// The stored history of every request, as (state, kind JSON) pairs.
fn stored(db: &std::path::Path, n: u64) -> BTreeMap<u64, Vec<(String, String)>> {
    let store = SqliteStore::open(db).expect("open store");
    let mut out = BTreeMap::new();
    for id in 1..=n {
        let rec = store
            .load(RequestId(id))
            .expect("load")
            .expect("request stored");
        out.insert(
            id,
            rec.events
                .iter()
                .map(|e| {
                    (
                        e.state.as_str().to_owned(),
                        serde_json::to_string(&e.kind).expect("json"),
                    )
                })
                .collect(),
        );
    }
    out
}

/// Every printed event of `id` is in `history`, in order; if `prefix`, they are its first events.
fn check_printed(
    history: &BTreeMap<u64, Vec<(String, String)>>,
    printed: &[Printed],
    prefix: bool,
) {
    for (id, events) in history {
        let mine: Vec<(String, String)> = printed
            .iter()
            .filter(|(i, _, _)| i == id)
            .map(|(_, s, k)| (s.clone(), k.clone()))
            .collect();
        if prefix {
            assert!(
                events.starts_with(&mine),
                "request {id}: printed {mine:#?} is not a prefix of stored {events:#?}"
            );
        } else {
            let mut it = events.iter();
            for m in &mine {
                assert!(
                    it.any(|e| e == m),
                    "request {id}: printed {m:?} missing or out of order in {events:#?}"
                );
            }
        }
    }
}

fn check_history(db: &std::path::Path, n: u64) {
    let store = SqliteStore::open(db).expect("open store");
    for id in 1..=n {
        let rec = store.load(RequestId(id)).expect("load").expect("stored");
        let ev = &rec.events;
        assert_eq!(
            ev.first().map(|e| &e.kind),
            Some(&EventKind::Submitted),
            "request {id}"
        );
        assert_eq!(
            ev.last().map(|e| e.state),
            Some(rec.summary.state),
            "request {id}"
        );
        for w in ev.windows(2) {
            assert!(
                !w[0].state.is_final(),
                "request {id}: event after a final one: {ev:#?}"
            );
            if let EventKind::Recovered { from, .. } = w[1].kind {
                assert_eq!(
                    from, w[0].state,
                    "request {id}: recovery read another state: {ev:#?}"
                );
            }
        }
    }
}

fn recovered(db: &std::path::Path, id: u64) -> Vec<(State, RecoveryAction)> {
    let store = SqliteStore::open(db).expect("open store");
    let rec = store.load(RequestId(id)).expect("load").expect("stored");
    rec.events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Recovered { from, action } => Some((from, action)),
            _ => None,
        })
        .collect()
}

fn state_of(db: &std::path::Path, id: u64) -> (State, chrono::DateTime<chrono::Utc>) {
    let store = SqliteStore::open(db).expect("open store");
    let s = store
        .load(RequestId(id))
        .expect("load")
        .expect("stored")
        .summary;
    (s.state, s.due)
}

fn kill_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("callbacks.db");
    let base = format!("--db {}", db.display());
    // Ids: 1-3 due now, 4 busy at first, 5 in an hour (submission order in the worker).

    // Phase 1: one connected, two holding, the busy one waiting for its retry, one scheduled.
    let mut w = Worker::start(&format!(
        "{base} --submit --answer-ms 300 --talk-ms 60000 --backoff-ms 8000"
    ));
    w.until("connected/holding/retry wait", |p| {
        seen(p, 1, "connected")
            && seen(p, 2, "holding")
            && seen(p, 3, "holding")
            && p.iter()
                .any(|(i, s, k)| *i == 4 && s == "scheduled" && k.contains("retry"))
            && seen(p, 5, "scheduled")
    });
    let printed1 = w.kill();
    let at_kill: Vec<State> = (1..=5).map(|id| state_of(&db, id).0).collect();
    assert_eq!(
        at_kill,
        vec![
            State::Connected,
            State::Holding,
            State::Holding,
            State::Scheduled,
            State::Scheduled
        ],
        "states stored at the first kill"
    );
    let due5 = state_of(&db, 5).1;
    check_printed(&stored(&db, 5), &printed1, true);

    // Phase 2: visitors slow to answer; kill while the requeued requests are being called again.
    let w = {
        let mut w = Worker::start(&format!("{base} --answer-ms 5000 --talk-ms 60000"));
        w.until("requeued calls", |p| {
            p.iter()
                .filter(|(i, s, _)| (*i == 2 || *i == 3) && s == "calling_visitor")
                .count()
                == 2
        });
        w
    };
    let printed2 = w.kill();
    assert_eq!(state_of(&db, 2).0, State::CallingVisitor);
    check_printed(&stored(&db, 5), &printed2, false);
    check_history(&db, 5);

    // Phase 3: run until settled.
    let (code, printed3, settled) = Worker::start(&format!(
        "{base} --answer-ms 100 --talk-ms 300 --exit-when-settled"
    ))
    .exit();
    assert_eq!(code, 0, "worker settled and exited cleanly");
    assert!(settled);
    let history = stored(&db, 5);
    check_printed(&history, &printed3, false);
    check_history(&db, 5);

    // Outcomes.
    assert_eq!(
        state_of(&db, 1).0,
        State::Missed,
        "connected at the kill: missed"
    );
    assert_eq!(
        recovered(&db, 1),
        vec![(State::Connected, RecoveryAction::MarkedMissed)]
    );
    let store = SqliteStore::open(&db).expect("open");
    let ev1 = store.load(RequestId(1)).unwrap().unwrap().events;
    assert_eq!(
        ev1.last().map(|e| &e.kind),
        Some(&EventKind::Missed {
            reason: MissReason::Interrupted
        })
    );
    for id in [2, 3] {
        assert_eq!(state_of(&db, id).0, State::Completed, "request {id}");
        assert_eq!(
            recovered(&db, id),
            vec![
                (State::Holding, RecoveryAction::Requeued),
                (State::CallingVisitor, RecoveryAction::Requeued)
            ],
            "request {id}"
        );
    }
    assert_eq!(state_of(&db, 4).0, State::Completed);
    assert_eq!(
        recovered(&db, 4).first(),
        Some(&(State::Scheduled, RecoveryAction::Kept)),
        "the retry wait survived the kill"
    );
    let (s5, d5) = state_of(&db, 5);
    assert_eq!(s5, State::Scheduled);
    assert_eq!(d5, due5, "the scheduled request kept its due time");
    assert_eq!(
        recovered(&db, 5),
        vec![
            (State::Scheduled, RecoveryAction::Kept),
            (State::Scheduled, RecoveryAction::Kept)
        ],
        "kept at each of the two restarts"
    );
}

/// SIPp as UAS with `tests/sipp/{name}` on a free loopback port (any number of calls).
fn uas(name: &str, extra: &[&str]) -> Sipp {
    let addr = local(free_port());
    let media = free_port().to_string();
    let args = [&["-timeout", "90s", "-mp", &media][..], extra].concat();
    Sipp::uas(&Sipp::scenario(name), addr, false, &args)
}

/// Ports in a band per test process, away from the other SIPp tests' bands and the engines' RTP ranges.
fn free_port() -> u16 {
    band_port(46_000, 20, 4_000)
}

/// The same over real SIP (rappel's engine, SIPp as the visitor trunk and the agent's phone): kill -9 while one
/// request is bridged and another holds, restart until settled.
fn kill_during_sip_calls() {
    let visitor = uas("callback_visitor_talk8s.xml", &[]);
    let agent = uas("call_peer_echo.xml", &["-rtp_echo"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("callbacks.db");
    let base = format!(
        "--db {} --sip-trunk {} --sip-agent {} --rtp-ports 44000-44499",
        db.display(),
        visitor.addr,
        agent.addr
    );
    // Ids: 1 and 2 due now, 3 in an hour.
    let mut w = Worker::start(&format!("{base} --submit"));
    // Which of 1 and 2 answers first and gets the one agent depends on SIPp's timing: `b` is the bridged one, `h`
    // the held one. Both are read off the same printed lines the kill cuts.
    let bridged_held = |p: &[Printed]| {
        [(1, 2), (2, 1)].into_iter().find(|&(b, h)| {
            seen(p, b, "connected") && seen(p, h, "holding") && !seen(p, h, "connected")
        })
    };
    w.until("a bridged call and a held visitor", |p| {
        bridged_held(p).is_some() && seen(p, 3, "scheduled")
    });
    let (b, h) = bridged_held(&w.printed).expect("seen above");
    let printed1 = w.kill();
    assert_eq!(state_of(&db, b).0, State::Connected);
    assert_eq!(state_of(&db, h).0, State::Holding);
    let due3 = state_of(&db, 3).1;
    check_printed(&stored(&db, 3), &printed1, true);

    let (code, printed2, settled) = Worker::start(&format!("{base} --exit-when-settled")).exit();
    assert_eq!(code, 0, "worker settled and exited cleanly");
    assert!(settled);
    check_printed(&stored(&db, 3), &printed2, false);
    check_history(&db, 3);
    assert_eq!(state_of(&db, b).0, State::Missed);
    assert_eq!(
        recovered(&db, b),
        vec![(State::Connected, RecoveryAction::MarkedMissed)]
    );
    assert_eq!(state_of(&db, h).0, State::Completed);
    assert_eq!(
        recovered(&db, h),
        vec![(State::Holding, RecoveryAction::Requeued)]
    );
    // After its recovery, the held request was called again over SIP, bridged to the agent and completed.
    let kinds2: Vec<&str> = printed2
        .iter()
        .filter(|(i, _, _)| *i == h)
        .map(|(_, s, _)| s.as_str())
        .collect();
    assert!(kinds2.contains(&"connected"), "{kinds2:?}");
    assert_eq!(kinds2.last(), Some(&"completed"));
    assert_eq!(state_of(&db, 3), (State::Scheduled, due3));
}

fn main() {
    if let Ok(args) = std::env::var(ENV) {
        let argv = args.split_whitespace().map(str::to_owned).collect();
        std::process::exit(worker::run(argv));
    }
    // `cargo test -- --list` and name filters, as libtest would.
    let tests: [(&str, fn()); 2] = [
        ("kill_and_restart", kill_and_restart),
        ("kill_during_sip_calls", kill_during_sip_calls),
    ];
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let filter = argv.iter().find(|a| !a.starts_with('-'));
    let chosen: Vec<_> = tests
        .into_iter()
        .filter(|(name, _)| filter.is_none_or(|f| name.contains(f.as_str())))
        .collect();
    println!("running {} tests", chosen.len());
    let started = std::time::Instant::now();
    let n = chosen.len();
    for (name, test) in chosen {
        test();
        println!("test {name} ... ok");
    }
    println!(
        "\ntest result: ok. {n} passed; 0 failed; finished in {:.2}s",
        started.elapsed().as_secs_f64()
    );
}
