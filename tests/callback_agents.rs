//! The agents pool, webhook signing and metrics exposition.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use hmac::{Hmac, Mac};
use rappel::callback::agents::{AgentError, AgentsPolicy};
use rappel::callback::event::State;
use rappel::callback::metrics::Metrics;
use rappel::callback::webhook::{delivery, retry_delay, sign};
use rappel::callback::{
    AgentConfig, AgentStatus, Agents, EventKind, RequestEvent, RequestId, Time,
};
use sha2::Sha256;

fn t0() -> Time {
    Utc.with_ymd_and_hms(2026, 6, 9, 10, 0, 0)
        .single()
        .expect("valid")
}

fn skills(s: &[&str]) -> BTreeSet<String> {
    s.iter().map(|x| (*x).to_owned()).collect()
}

fn pool() -> Agents {
    let mut carol = AgentConfig::new("carol", "sip:carol@x", &["billing", "de"]);
    carol.max_concurrent = 2;
    let cfgs = vec![
        AgentConfig::new("alice", "sip:alice@x", &["billing"]),
        AgentConfig::new("bob", "sip:bob@x", &["billing", "fr"]),
        carol,
    ];
    Agents::new(
        cfgs,
        AgentsPolicy {
            wrap_up: Duration::from_secs(30),
            max_consecutive_misses: Some(2),
        },
        t0(),
    )
    .expect("pool")
}

#[test]
fn selection_by_skill_and_longest_idle() {
    let mut a = pool();
    let none = BTreeSet::new();
    let now = t0();
    assert_eq!(a.select(&skills(&["fr"]), &none, now), Some("bob"));
    assert_eq!(a.select(&skills(&["es"]), &none, now), None);
    assert_eq!(a.select(&skills(&["billing"]), &none, now), Some("alice"));
    // alice takes and finishes a call: she is now the most recently idle.
    a.reserve("alice").expect("known");
    assert_eq!(a.status("alice", now), Some(AgentStatus::Busy { calls: 1 }));
    a.released("alice", now, Some(Duration::from_secs(60)))
        .expect("known");
    let later = now + TimeDelta::seconds(31);
    assert_eq!(a.select(&skills(&["billing"]), &none, later), Some("bob"));
    a.sign_out("bob").expect("known");
    assert_eq!(a.select(&skills(&["billing"]), &none, later), Some("carol"));
    // carol has two slots.
    a.reserve("carol").expect("known");
    assert_eq!(a.status("carol", later), Some(AgentStatus::Available));
    a.reserve("carol").expect("known");
    assert_eq!(
        a.status("carol", later),
        Some(AgentStatus::Busy { calls: 2 })
    );
    assert_eq!(
        a.select(&skills(&["billing"]), &skills(&["alice"]), later),
        None
    );
    assert_eq!(a.status("bob", later), Some(AgentStatus::SignedOut));
    assert_eq!(a.pause("nobody"), Err(AgentError::Unknown("nobody".into())));
    assert!(Agents::new(
        vec![
            AgentConfig::new("x", "u", &[]),
            AgentConfig::new("x", "v", &[])
        ],
        AgentsPolicy::default(),
        t0()
    )
    .is_err());
}

#[test]
fn auto_pause_counts_consecutive_misses_only() {
    let mut a = pool();
    a.reserve("alice").expect("known");
    assert_eq!(a.missed("alice"), Ok(false));
    a.reserve("alice").expect("known");
    a.answered("alice").expect("known");
    a.released("alice", t0(), None).expect("known");
    a.reserve("alice").expect("known");
    assert_eq!(
        a.missed("alice"),
        Ok(false),
        "an answer in between resets the count"
    );
    a.reserve("alice").expect("known");
    assert_eq!(a.missed("alice"), Ok(true));
    assert_eq!(
        a.status("alice", t0()),
        Some(AgentStatus::Paused { auto: true })
    );
    a.resume("alice", t0()).expect("known");
    assert_eq!(
        a.status("alice", t0() + TimeDelta::seconds(31)),
        Some(AgentStatus::Available)
    );
}

#[test]
fn estimated_wait_from_capacity_and_recent_handling() {
    let mut a = pool();
    let billing = skills(&["billing"]);
    let now = t0();
    // 4 free slots (alice, bob, carol x2): the first four in line are served at once.
    assert_eq!(a.estimated_wait(&billing, 3, now), Some(Duration::ZERO));
    assert_eq!(
        a.estimated_wait(&billing, 4, now),
        Some(Duration::from_secs(180))
    );
    assert_eq!(
        a.estimated_wait(&billing, 8, now),
        Some(Duration::from_secs(360))
    );
    assert_eq!(
        a.estimated_wait(&skills(&["fr"]), 1, now),
        Some(Duration::from_secs(180))
    );
    assert_eq!(a.estimated_wait(&skills(&["es"]), 0, now), None);
    for talk in [60, 120] {
        a.reserve("alice").expect("known");
        a.released("alice", now, Some(Duration::from_secs(talk)))
            .expect("known");
    }
    // Mean of (60+30) and (120+30).
    assert_eq!(a.mean_handling(), Duration::from_secs(120));
    // alice is in wrap-up: 3 free slots, 4 in capacity.
    assert_eq!(
        a.estimated_wait(&billing, 3, now),
        Some(Duration::from_secs(120))
    );
    assert!((a.occupancy() - 0.0).abs() < f64::EPSILON);
    a.reserve("bob").expect("known");
    assert!((a.occupancy() - 0.25).abs() < f64::EPSILON);
}

#[test]
fn webhook_signature_is_hmac_sha256_over_timestamp_and_body() {
    let ev = RequestEvent {
        at: t0(),
        kind: EventKind::Queued,
        state: State::Queued,
    };
    let d = delivery(b"secret", RequestId(7), &ev, t0()).expect("json");
    assert_eq!(d.timestamp, t0().timestamp());
    assert!(
        d.body.contains("\"request\":7") && d.body.contains("\"state\":\"queued\""),
        "{}",
        d.body
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").expect("key");
    mac.update(format!("{}.{}", d.timestamp, d.body).as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(d.signature, format!("sha256={hex}"));
    assert_ne!(sign(b"other", d.timestamp, &d.body), d.signature);
    assert_eq!(retry_delay(1, 5), Some(Duration::from_secs(1)));
    assert_eq!(retry_delay(4, 5), Some(Duration::from_secs(8)));
    assert_eq!(retry_delay(6, 5), None);
    assert_eq!(retry_delay(40, 50), Some(Duration::from_secs(600)));
}

#[test]
fn metrics_text_format() {
    let mut m = Metrics::default();
    let at = t0();
    for kind in [
        EventKind::Submitted,
        EventKind::CallingVisitor { attempt: 1 },
        EventKind::VisitorAnswered,
        EventKind::Connected {
            agent: "alice".into(),
            hold: Duration::from_secs(12),
            time_to_connect: Duration::from_secs(40),
        },
        EventKind::Missed {
            reason: rappel::callback::MissReason::MaxHold,
        },
    ] {
        m.observe(&RequestEvent {
            at,
            kind,
            state: State::Queued,
        });
    }
    let mut a = pool();
    a.reserve("alice").expect("known");
    let text = m.render(&a, at);
    for line in [
        "# TYPE rappel_callback_requests_total counter",
        "rappel_callback_requests_total 1",
        "rappel_callback_visitors_reached_total 1",
        "rappel_callback_connected_total 1",
        "rappel_callback_missed_total{reason=\"max_hold\"} 1",
        "rappel_callback_missed_total{reason=\"retries_exhausted\"} 0",
        "rappel_callback_hold_seconds_bucket{le=\"10\"} 0",
        "rappel_callback_hold_seconds_bucket{le=\"20\"} 1",
        "rappel_callback_hold_seconds_bucket{le=\"+Inf\"} 1",
        "rappel_callback_hold_seconds_sum 12",
        "rappel_callback_time_to_connect_seconds_bucket{le=\"60\"} 1",
        "rappel_callback_agent_occupancy_ratio 0.25",
        "rappel_callback_agents{status=\"busy\"} 1",
        "rappel_callback_agents{status=\"available\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let v = l.rsplit(' ').next().expect("value");
        assert!(v.parse::<f64>().is_ok(), "{l}");
    }
}
