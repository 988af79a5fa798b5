//! Seeded random call-layer behaviour against the dispatcher: no panic, no agent slot leaked, no request lost, and
//! nothing happens to a request after its final state.

use std::collections::BTreeMap;

use chrono::{TimeDelta, TimeZone, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rappel::callback::{
    AgentConfig, AgentStatus, CallFailure, CallbackConfig, Dispatcher, Input, Leg, NewRequest,
    RequestEvent, RequestId, State, Strategy,
};

fn random_input(rng: &mut SmallRng) -> Input {
    let failure = [
        CallFailure::Busy,
        CallFailure::NoAnswer,
        CallFailure::Rejected,
        CallFailure::Failed,
    ][rng.random_range(0..4)];
    match rng.random_range(0..10) {
        0 => Input::VisitorRinging,
        1 => Input::VisitorAnswered,
        2 => Input::VisitorFailed(failure),
        3 => Input::VisitorHungUp,
        4 => Input::AgentAnswered,
        5 => Input::AgentFailed(failure),
        6 => Input::AgentHungUp,
        7 => Input::DtmfReceived(['1', '2', '#'][rng.random_range(0..3)]),
        8 => Input::PlaybackFinished(Leg::Visitor),
        _ => Input::PlaybackFinished(Leg::Agent),
    }
}

/// An input that moves the request forward from `state`.
fn likely_input(rng: &mut SmallRng, state: Option<State>) -> Input {
    let pick = |rng: &mut SmallRng, v: &[Input]| v[rng.random_range(0..v.len())].clone();
    match state {
        Some(State::CallingVisitor) => Input::VisitorAnswered,
        Some(State::Confirming) => Input::DtmfReceived('1'),
        Some(State::CallingAgent) => pick(
            rng,
            &[
                Input::AgentAnswered,
                Input::PlaybackFinished(Leg::Agent),
                Input::VisitorAnswered,
            ],
        ),
        Some(State::Connected) => pick(rng, &[Input::AgentHungUp, Input::VisitorHungUp]),
        _ => Input::PlaybackFinished(Leg::Visitor),
    }
}

fn run(seed: u64) -> BTreeMap<State, usize> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut now = Utc
        .with_ymd_and_hms(2026, 6, 9, 10, 0, 0)
        .single()
        .expect("valid");
    let cfg = CallbackConfig {
        max_concurrent: 4,
        ..CallbackConfig::default()
    };
    let names = ["alice", "bob", "carol"];
    let agents = names
        .iter()
        .map(|n| AgentConfig::new(n, &format!("sip:{n}@x"), &[]))
        .collect();
    let mut d = Dispatcher::new(cfg, agents, 1, now).expect("agents");
    let mut history: BTreeMap<RequestId, Vec<RequestEvent>> = BTreeMap::new();
    let mut submitted = Vec::new();
    for step in 0..3000 {
        match rng.random_range(0..40) {
            0..=1 if submitted.len() < 40 => {
                let strategy = [
                    Strategy::VisitorFirst,
                    Strategy::Confirmation,
                    Strategy::AgentFirst,
                ][rng.random_range(0..3)];
                let r = NewRequest {
                    phone: "0612345678".into(),
                    strategy: Some(strategy),
                    ..NewRequest::default()
                };
                submitted.push(d.submit(r, now).expect("valid request").id);
            }
            2..=4 => now += TimeDelta::seconds(rng.random_range(1..120)),
            5 => {
                let n = names[rng.random_range(0..3)];
                let r = match rng.random_range(0..4) {
                    0 => d.sign_in(n, now),
                    1 => d.sign_out(n, now),
                    2 => d.pause(n, now),
                    _ => d.resume(n, now),
                };
                r.expect("known agent");
            }
            6 => {
                if let Some(id) = d.live().first().copied() {
                    d.cancel(id, now).ok();
                }
            }
            _ => {
                let live = d.live();
                if !live.is_empty() {
                    let id = live[rng.random_range(0..live.len())];
                    let state = d.status(id, now).map(|s| s.state);
                    let input = if rng.random_bool(0.6) {
                        likely_input(&mut rng, state)
                    } else {
                        random_input(&mut rng)
                    };
                    d.handle_input(id, input, now).expect("live");
                }
            }
        }
        if let Some(t) = d.poll_timeout().filter(|t| *t <= now) {
            d.handle_timeout(t.max(now));
        }
        while let Some((id, ev)) = d.poll_event() {
            history.entry(id).or_default().push(ev);
        }
        while d.poll_command().is_some() {}
        assert!(step < 3000);
    }
    // Sign everyone back in, then let every timer run out and cancel what is left.
    for n in names {
        d.sign_in(n, now).expect("known");
        d.resume(n, now).expect("known");
    }
    for id in d.live() {
        d.cancel(id, now).ok();
        // A request in its apology is already final: finish it.
        d.handle_input(id, Input::PlaybackFinished(Leg::Visitor), now)
            .ok();
    }
    while let Some((id, ev)) = d.poll_event() {
        history.entry(id).or_default().push(ev);
    }
    assert!(d.live().is_empty(), "seed {seed}: {:?}", d.live());
    for n in names {
        let s = d.agents().status(n, now + TimeDelta::hours(1));
        assert_eq!(
            s,
            Some(AgentStatus::Available),
            "seed {seed}: agent {n} leaked a call slot"
        );
    }
    for id in &submitted {
        let h = history.get(id).expect("every request has a history");
        let first_final = h
            .iter()
            .position(|e| e.state.is_final())
            .expect("ends final");
        assert!(
            h[first_final..]
                .iter()
                .all(|e| e.state == h[first_final].state),
            "seed {seed}: request {id} changed after its final state: {h:?}"
        );
        assert_eq!(h.first().map(|e| e.state), Some(State::Queued));
    }
    let mut finals = BTreeMap::new();
    for h in history.values() {
        if let Some(e) = h.last() {
            *finals.entry(e.state).or_insert(0) += 1;
        }
    }
    finals
}

#[test]
fn random_call_layer_behaviour_keeps_invariants() {
    let mut total: BTreeMap<State, usize> = BTreeMap::new();
    for seed in 0..40 {
        for (s, n) in run(seed) {
            *total.entry(s).or_insert(0) += n;
        }
    }
    // The walk reaches every ending, so the invariants above were checked on all of them.
    println!("{total:?}");
    for s in [State::Completed, State::Missed, State::Cancelled] {
        assert!(
            total.get(&s).copied().unwrap_or(0) > 10,
            "{s:?} rarely reached: {total:?}"
        );
    }
}
