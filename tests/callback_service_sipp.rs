//! The callback service over the real SIP call layer ([`EngineCalls`] on an [`Engine`]) against SIPp peers on
//! loopback: one SIPp plays the visitor's trunk, another the agent's phone.
//!
//! Each SIPp exits 0 only when its scenario ran to the end (it saw exactly the requests it expected: the ACKs,
//! the agent's BYE from us...). Time is the wall clock here (real SIP timers on real sockets); every wait is
//! bounded.
//!
//! Needs the `sipp` binary (Debian package `sip-tester`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rappel::callback::calls::EngineCalls;
use rappel::callback::service::{CallbackService, ServiceConfig, SystemClock};
use rappel::callback::store::SqliteStore;
use rappel::callback::{AgentConfig, CallFailure, EventKind, NewRequest, RequestId, State};
use rappel::{CallOptions, Engine};
use tokio::sync::broadcast;

#[path = "support/sipp.rs"]
mod sipp;

use sipp::{band_port, local, Sipp};

/// Upper bound for any one wait.
const WAIT: Duration = Duration::from_secs(30);

/// SIPp as UAS with `tests/sipp/{name}` on a free loopback port.
fn uas(name: &str, extra: &[&str]) -> Sipp {
    let addr = local(free_port());
    let media = free_port().to_string();
    let args = [&["-timeout", "60s", "-mp", &media][..], extra].concat();
    Sipp::uas(&Sipp::scenario(name), addr, false, &args)
}

/// Ports in a band per test process, away from the other SIPp tests' bands.
fn free_port() -> u16 {
    band_port(30_000, 40, 8_000)
}

/// The service on a fresh SQLite file, calling visitors at `trunk` and the one agent at `agent`.
async fn service(
    trunk: SocketAddr,
    agent: SocketAddr,
    rtp: (u16, u16),
    dir: &tempfile::TempDir,
) -> CallbackService {
    let engine = Engine::builder()
        .rtp_ports(rtp.0, rtp.1)
        .start()
        .await
        .expect("engine");
    let calls = EngineCalls::new(engine, CallOptions::default(), None);
    let mut config = ServiceConfig {
        agents: vec![AgentConfig::new(
            "alice",
            &format!("sip:alice@{agent}"),
            &[],
        )],
        visitor_uri: format!("sip:{{number}}@{trunk}"),
        ..ServiceConfig::default()
    };
    config.callback.flow.caller_id = "+33100000000".into();
    config.callback.flow.max_attempts = 2;
    config.callback.flow.retry_backoff = Duration::from_secs(1);
    let store = SqliteStore::open(dir.path().join("callbacks.db")).expect("store");
    CallbackService::start(config, store, calls, Arc::new(SystemClock))
        .await
        .expect("service")
}

/// Reads events of `id` until it is final; returns their kinds.
async fn until_final(
    sub: &mut broadcast::Receiver<(RequestId, rappel::callback::RequestEvent)>,
    id: RequestId,
) -> Vec<EventKind> {
    let mut kinds = Vec::new();
    loop {
        let (rid, ev) = tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("request not final in time; saw {kinds:?}"))
            .expect("subscription");
        if rid == id {
            kinds.push(ev.kind);
            if ev.state.is_final() {
                return kinds;
            }
        }
    }
}

#[tokio::test]
async fn visitor_then_agent_bridged_until_the_visitor_hangs_up() {
    let visitor = uas("callback_visitor_answer.xml", &["-m", "1"]);
    let agent = uas("call_peer_echo.xml", &["-m", "1", "-rtp_echo"]);
    let dir = tempfile::tempdir().unwrap();
    let svc = service(visitor.addr, agent.addr, (43_000, 43_499), &dir).await;
    let mut sub = svc.subscribe();
    let id = svc
        .submit(NewRequest {
            phone: "+33 6 12 34 56 78".into(),
            topic: Some("billing".into()),
            ..NewRequest::default()
        })
        .await
        .expect("submit")
        .id;
    let kinds = until_final(&mut sub, id).await;
    let view = svc.status(id).await.unwrap().expect("stored");
    assert_eq!(view.state, State::Completed, "{kinds:?}");
    assert!(kinds.contains(&EventKind::VisitorAnswered));
    assert!(kinds
        .iter()
        .any(|k| matches!(k, EventKind::AgentAnswered { agent } if agent == "alice")));
    let talk = kinds.iter().find_map(|k| match k {
        EventKind::Completed { talk } => Some(*talk),
        _ => None,
    });
    // The visitor hangs up 3 s after answering; the bridge came after the greeting-time agent call and whisper.
    assert!(
        talk.is_some_and(|t| t > Duration::from_millis(500) && t < Duration::from_secs(3)),
        "{talk:?}"
    );
    assert_eq!(visitor.finish().await, 0, "visitor scenario completed");
    assert_eq!(
        agent.finish().await,
        0,
        "agent got our BYE after the visitor left"
    );
    assert_eq!(svc.live_calls(), 0);
    svc.shutdown().await;
}

#[tokio::test]
async fn busy_visitor_is_called_again_and_connected() {
    let visitor = uas("callback_visitor_busy_then_answer.xml", &["-m", "2"]);
    let agent = uas("call_peer_echo.xml", &["-m", "1", "-rtp_echo"]);
    let dir = tempfile::tempdir().unwrap();
    let svc = service(visitor.addr, agent.addr, (43_500, 43_999), &dir).await;
    let mut sub = svc.subscribe();
    let id = svc
        .submit(NewRequest {
            phone: "+33 6 98 76 54 32".into(),
            ..NewRequest::default()
        })
        .await
        .expect("submit")
        .id;
    let kinds = until_final(&mut sub, id).await;
    assert_eq!(
        kinds
            .iter()
            .find(|k| matches!(k, EventKind::AttemptFailed { .. })),
        Some(&EventKind::AttemptFailed {
            attempt: 1,
            reason: CallFailure::Busy
        }),
        "{kinds:?}"
    );
    assert!(kinds.contains(&EventKind::CallingVisitor { attempt: 2 }));
    assert!(
        matches!(kinds.last(), Some(EventKind::Completed { .. })),
        "{kinds:?}"
    );
    let view = svc.status(id).await.unwrap().unwrap();
    assert_eq!(view.state, State::Completed);
    assert_eq!(
        visitor.finish().await,
        0,
        "visitor scenario: 486, then answer and BYE"
    );
    assert_eq!(agent.finish().await, 0);
    svc.shutdown().await;
}
