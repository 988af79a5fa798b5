//! The callback state machine driven through the dispatcher in simulated time: every branch of the flow.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::{America::New_York, Europe::Paris};
use rappel::callback::agents::AgentsPolicy;
use rappel::callback::event::{ScheduleReason, State};
use rappel::callback::schedule::BusinessHours;
use rappel::callback::{
    AgentConfig, AgentStatus, CallFailure, CallbackConfig, Command, Dispatcher, EventKind, Input,
    Leg, MissReason, NewRequest, Prompt, RequestEvent, RequestId, Strategy, Time, WishedTime,
};

/// A dispatcher, a simulated clock, and everything that came out.
struct Sim {
    d: Dispatcher,
    now: Time,
    events: Vec<(RequestId, RequestEvent)>,
}

fn t0() -> Time {
    // Tuesday 2026-06-09 10:00 UTC.
    Utc.with_ymd_and_hms(2026, 6, 9, 10, 0, 0)
        .single()
        .expect("valid")
}

fn config() -> CallbackConfig {
    let mut c = CallbackConfig::default();
    c.flow.caller_id = "+33100000000".into();
    c
}

fn agents(names: &[&str]) -> Vec<AgentConfig> {
    names
        .iter()
        .map(|n| AgentConfig::new(n, &format!("sip:{n}@example.com"), &["billing"]))
        .collect()
}

fn request() -> NewRequest {
    NewRequest {
        phone: "+33 6 12 34 56 78".into(),
        topic: Some("billing".into()),
        skills: BTreeSet::from(["billing".to_owned()]),
        context: Some("cart 42".into()),
        ..NewRequest::default()
    }
}

impl Sim {
    fn new(config: CallbackConfig, names: &[&str]) -> Sim {
        Self::at(config, names, t0())
    }

    fn at(config: CallbackConfig, names: &[&str], now: Time) -> Sim {
        let d = Dispatcher::new(config, agents(names), 1, now).expect("agents");
        Sim {
            d,
            now,
            events: Vec::new(),
        }
    }

    /// Events go to the log first (as the store would), then commands are returned.
    fn drain(&mut self) -> Vec<(RequestId, Command)> {
        while let Some(e) = self.d.poll_event() {
            self.events.push(e);
        }
        std::iter::from_fn(|| self.d.poll_command()).collect()
    }

    fn submit(&mut self, r: NewRequest) -> (RequestId, Vec<Command>) {
        let s = self.d.submit(r, self.now).expect("submit");
        let cmds = self
            .drain()
            .into_iter()
            .filter(|(id, _)| *id == s.id)
            .map(|(_, c)| c)
            .collect();
        (s.id, cmds)
    }

    fn input(&mut self, id: RequestId, i: Input) -> Vec<Command> {
        self.d.handle_input(id, i, self.now).expect("live request");
        self.drain()
            .into_iter()
            .filter(|(x, _)| *x == id)
            .map(|(_, c)| c)
            .collect()
    }

    /// Advances the clock by `by`, firing every timer on the way at its own instant.
    fn advance(&mut self, by: Duration) -> Vec<(RequestId, Command)> {
        let target = self.now + chrono::TimeDelta::from_std(by).expect("small");
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match self.d.poll_timeout() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.d.handle_timeout(self.now);
                    out.extend(self.drain());
                }
                _ => break,
            }
        }
        self.now = target;
        out
    }

    fn advance_for(&mut self, id: RequestId, by: Duration) -> Vec<Command> {
        self.advance(by)
            .into_iter()
            .filter(|(x, _)| *x == id)
            .map(|(_, c)| c)
            .collect()
    }

    fn kinds(&self, id: RequestId) -> Vec<EventKind> {
        self.events
            .iter()
            .filter(|(x, _)| *x == id)
            .map(|(_, e)| e.kind.clone())
            .collect()
    }

    fn last_state(&self, id: RequestId) -> Option<State> {
        self.events
            .iter()
            .rev()
            .find(|(x, _)| *x == id)
            .map(|(_, e)| e.state)
    }

    fn states(&self, id: RequestId) -> Vec<State> {
        let mut v: Vec<State> = Vec::new();
        for (_, e) in self.events.iter().filter(|(x, _)| *x == id) {
            if v.last() != Some(&e.state) {
                v.push(e.state);
            }
        }
        v
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn call_agent(name: &str) -> Command {
    Command::CallAgent {
        agent: name.into(),
        uri: format!("sip:{name}@example.com"),
        whisper: Some(Prompt::Whisper(Some("billing".into()))),
    }
}

fn call_visitor() -> Command {
    Command::CallVisitor {
        number: "+33612345678".into(),
        caller_id: "+33100000000".into(),
    }
}

/// Answer the visitor, agent answers, whisper ends: returns the bridge commands.
fn connect(sim: &mut Sim, id: RequestId, agent: &str) {
    let c = sim.input(id, Input::VisitorAnswered);
    assert_eq!(
        c,
        vec![
            Command::Play {
                leg: Leg::Visitor,
                prompt: Prompt::Greeting
            },
            call_agent(agent)
        ]
    );
    let c = sim.input(id, Input::AgentAnswered);
    assert_eq!(
        c,
        vec![Command::Play {
            leg: Leg::Agent,
            prompt: Prompt::Whisper(Some("billing".into()))
        }]
    );
    let c = sim.input(id, Input::PlaybackFinished(Leg::Agent));
    assert_eq!(c, vec![Command::Bridge]);
}

#[test]
fn visitor_first_main_path_completes() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, c) = sim.submit(request());
    assert_eq!(c, vec![call_visitor()]);
    assert_eq!(sim.input(id, Input::VisitorRinging), vec![]);
    sim.advance(secs(5));
    let c = sim.input(id, Input::VisitorAnswered);
    assert_eq!(
        c,
        vec![
            Command::Play {
                leg: Leg::Visitor,
                prompt: Prompt::Greeting
            },
            call_agent("alice")
        ]
    );
    // The greeting ends: hold music while the agent rings.
    let c = sim.input(id, Input::PlaybackFinished(Leg::Visitor));
    assert_eq!(
        c,
        vec![Command::Play {
            leg: Leg::Visitor,
            prompt: Prompt::HoldMusic
        }]
    );
    sim.advance(secs(7));
    let c = sim.input(id, Input::AgentAnswered);
    assert_eq!(
        c,
        vec![Command::Play {
            leg: Leg::Agent,
            prompt: Prompt::Whisper(Some("billing".into()))
        }]
    );
    sim.advance(secs(3));
    assert_eq!(
        sim.input(id, Input::PlaybackFinished(Leg::Agent)),
        vec![Command::Bridge]
    );
    assert_eq!(
        sim.d.agents().status("alice", sim.now),
        Some(AgentStatus::Busy { calls: 1 })
    );
    sim.advance(secs(60));
    assert_eq!(
        sim.input(id, Input::AgentHungUp),
        vec![Command::HangUp { leg: Leg::Visitor }]
    );
    assert_eq!(
        sim.states(id),
        vec![
            State::Queued,
            State::CallingVisitor,
            State::Holding,
            State::CallingAgent,
            State::Connected,
            State::Completed
        ]
    );
    let kinds = sim.kinds(id);
    assert!(kinds.contains(&EventKind::Connected {
        agent: "alice".into(),
        hold: secs(10),
        time_to_connect: secs(15)
    }));
    assert!(kinds.contains(&EventKind::CallingAgent {
        agent: "alice".into(),
        topic: Some("billing".into()),
        context: Some("cart 42".into())
    }));
    assert_eq!(kinds.last(), Some(&EventKind::Completed { talk: secs(60) }));
    // Wrap-up after the call, then available.
    let until = sim.now + chrono::TimeDelta::seconds(30);
    assert_eq!(
        sim.d.agents().status("alice", sim.now),
        Some(AgentStatus::WrapUp { until })
    );
    assert_eq!(
        sim.d.agents().status("alice", until),
        Some(AgentStatus::Available)
    );
    // The finished request left the dispatcher (the store keeps it).
    assert!(sim.d.status(id, sim.now).is_none());
    let m = sim.d.render_metrics(sim.now);
    assert!(m.contains("rappel_callback_connected_total 1\n"), "{m}");
    assert!(m.contains("rappel_callback_hold_seconds_count 1\n"), "{m}");
    assert!(
        m.contains("rappel_callback_hold_seconds_bucket{le=\"10\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("rappel_callback_hold_seconds_bucket{le=\"5\"} 0\n"),
        "{m}"
    );
}

#[test]
fn visitor_busy_retries_with_backoff_then_succeeds() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, _) = sim.submit(request());
    assert_eq!(
        sim.input(id, Input::VisitorFailed(CallFailure::Busy)),
        vec![]
    );
    assert_eq!(sim.last_state(id), Some(State::Scheduled));
    let due = sim.now + chrono::TimeDelta::seconds(120);
    assert!(sim.kinds(id).contains(&EventKind::Scheduled {
        due,
        reason: ScheduleReason::Retry
    }));
    assert_eq!(sim.advance_for(id, secs(119)), vec![]);
    assert_eq!(sim.advance_for(id, secs(1)), vec![call_visitor()]);
    assert!(sim
        .kinds(id)
        .contains(&EventKind::CallingVisitor { attempt: 2 }));
    connect(&mut sim, id, "alice");
    // Time to connect counts from the first due time, across the retry.
    assert!(sim.kinds(id).contains(&EventKind::Connected {
        agent: "alice".into(),
        hold: Duration::ZERO,
        time_to_connect: secs(120)
    }));
    assert_eq!(
        sim.input(id, Input::VisitorHungUp),
        vec![Command::HangUp { leg: Leg::Agent }]
    );
    assert_eq!(sim.last_state(id), Some(State::Completed));
}

#[test]
fn retries_exhausted_is_missed() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, _) = sim.submit(request());
    sim.input(id, Input::VisitorFailed(CallFailure::Busy));
    assert_eq!(sim.advance_for(id, secs(120)), vec![call_visitor()]);
    // Nobody answers: the flow's own ring timeout hangs up after 30 s.
    assert_eq!(
        sim.advance_for(id, secs(30)),
        vec![Command::HangUp { leg: Leg::Visitor }]
    );
    // Backoff doubles: 240 s.
    assert_eq!(sim.advance_for(id, secs(239)), vec![]);
    assert_eq!(sim.advance_for(id, secs(1)), vec![call_visitor()]);
    sim.input(id, Input::VisitorFailed(CallFailure::Failed));
    let kinds = sim.kinds(id);
    let failures: Vec<_> = kinds
        .iter()
        .filter(|k| matches!(k, EventKind::AttemptFailed { .. }))
        .cloned()
        .collect();
    assert_eq!(
        failures,
        vec![
            EventKind::AttemptFailed {
                attempt: 1,
                reason: CallFailure::Busy
            },
            EventKind::AttemptFailed {
                attempt: 2,
                reason: CallFailure::NoAnswer
            },
            EventKind::AttemptFailed {
                attempt: 3,
                reason: CallFailure::Failed
            },
        ]
    );
    assert_eq!(
        kinds.last(),
        Some(&EventKind::Missed {
            reason: MissReason::RetriesExhausted
        })
    );
    assert_eq!(sim.d.poll_timeout(), None);
}

#[test]
fn agent_no_answer_goes_to_next_agent() {
    let mut sim = Sim::new(config(), &["alice", "bob"]);
    let (id, _) = sim.submit(request());
    let c = sim.input(id, Input::VisitorAnswered);
    assert!(c.contains(&call_agent("alice")));
    let c = sim.advance_for(id, secs(20));
    assert_eq!(c, vec![Command::CancelAgentCall, call_agent("bob")]);
    assert!(sim.kinds(id).contains(&EventKind::AgentFailed {
        agent: "alice".into(),
        reason: CallFailure::NoAnswer
    }));
    sim.input(id, Input::AgentAnswered);
    assert_eq!(
        sim.input(id, Input::PlaybackFinished(Leg::Agent)),
        vec![Command::Bridge]
    );
    assert!(sim
        .kinds(id)
        .iter()
        .any(|k| matches!(k, EventKind::Connected { agent, .. } if agent == "bob")));
    // A rejecting agent (603) is not cancelled, just skipped.
    let (id2, _) = sim.submit(request());
    let c = sim.input(id2, Input::VisitorAnswered);
    assert!(c.contains(&call_agent("alice")));
    let c = sim.input(id2, Input::AgentFailed(CallFailure::Rejected));
    // Bob is busy with the first request: nobody else, the visitor keeps holding.
    assert_eq!(c, vec![]);
    assert_eq!(sim.last_state(id2), Some(State::Holding));
}

#[test]
fn all_agents_fail_hold_until_max_hold_then_apology_and_missed() {
    let mut cfg = config();
    cfg.flow.max_hold = secs(60);
    let mut sim = Sim::new(cfg, &["alice", "bob"]);
    let (id, _) = sim.submit(request());
    sim.input(id, Input::VisitorAnswered);
    assert_eq!(
        sim.input(id, Input::AgentFailed(CallFailure::Busy)),
        vec![call_agent("bob")]
    );
    assert_eq!(
        sim.input(id, Input::AgentFailed(CallFailure::Rejected)),
        vec![]
    );
    // Everyone tried: look again after 5 s, a new round.
    assert_eq!(sim.advance_for(id, secs(5)), vec![call_agent("alice")]);
    assert_eq!(
        sim.input(id, Input::AgentFailed(CallFailure::Busy)),
        vec![call_agent("bob")]
    );
    // Bob rings out at +25 s; everyone tried, next round at +30 s (alice), still connecting at +45 s.
    let c = sim.advance_for(id, secs(40));
    let still = Command::Play {
        leg: Leg::Visitor,
        prompt: Prompt::StillConnecting,
    };
    assert_eq!(
        c,
        vec![Command::CancelAgentCall, call_agent("alice"), still]
    );
    // Alice rings out at +50 s (her third miss in a row: auto-paused), bob is called; max hold at +60 s cancels
    // him and plays the apology.
    let c = sim.advance_for(id, secs(15));
    let apology = Command::Play {
        leg: Leg::Visitor,
        prompt: Prompt::Apology,
    };
    assert_eq!(
        c,
        vec![
            Command::CancelAgentCall,
            call_agent("bob"),
            Command::CancelAgentCall,
            apology
        ]
    );
    assert!(sim.kinds(id).contains(&EventKind::AgentAutoPaused {
        agent: "alice".into()
    }));
    assert_eq!(
        sim.d.agents().status("alice", sim.now),
        Some(AgentStatus::Paused { auto: true })
    );
    assert_eq!(sim.last_state(id), Some(State::Missed));
    assert_eq!(
        sim.input(id, Input::PlaybackFinished(Leg::Visitor)),
        vec![Command::HangUp { leg: Leg::Visitor }]
    );
    assert_eq!(
        sim.kinds(id).last(),
        Some(&EventKind::Missed {
            reason: MissReason::MaxHold
        })
    );
    // No agent is left reserved.
    assert_eq!(sim.d.agents().occupancy(), 0.0);
    assert!(sim
        .d
        .render_metrics(sim.now)
        .contains("rappel_callback_missed_total{reason=\"max_hold\"} 1\n"));
}

#[test]
fn visitor_hangs_up_while_agent_rings_cancels_agent_call() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, _) = sim.submit(request());
    sim.input(id, Input::VisitorAnswered);
    assert_eq!(sim.last_state(id), Some(State::CallingAgent));
    assert_eq!(
        sim.input(id, Input::VisitorHungUp),
        vec![Command::CancelAgentCall]
    );
    assert_eq!(
        sim.kinds(id).last(),
        Some(&EventKind::Missed {
            reason: MissReason::VisitorHungUp
        })
    );
    // No miss charged to the agent, no wrap-up: available at once.
    assert_eq!(
        sim.d.agents().status("alice", sim.now),
        Some(AgentStatus::Available)
    );
    assert_eq!(sim.d.poll_timeout(), None);
}

#[test]
fn agent_hangs_up_during_whisper_next_agent() {
    let mut sim = Sim::new(config(), &["alice", "bob"]);
    let (id, _) = sim.submit(request());
    sim.input(id, Input::VisitorAnswered);
    sim.input(id, Input::AgentAnswered);
    let c = sim.input(id, Input::AgentHungUp);
    assert_eq!(
        c,
        vec![
            Command::Play {
                leg: Leg::Visitor,
                prompt: Prompt::HoldMusic
            },
            call_agent("bob")
        ]
    );
}

#[test]
fn agent_first_calls_agent_then_visitor() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, c) = sim.submit(NewRequest {
        strategy: Some(Strategy::AgentFirst),
        ..request()
    });
    assert_eq!(c, vec![call_agent("alice")]);
    let c = sim.input(id, Input::AgentAnswered);
    assert_eq!(
        c,
        vec![Command::Play {
            leg: Leg::Agent,
            prompt: Prompt::Whisper(Some("billing".into()))
        }]
    );
    let c = sim.input(id, Input::PlaybackFinished(Leg::Agent));
    assert_eq!(
        c,
        vec![
            Command::Play {
                leg: Leg::Agent,
                prompt: Prompt::HoldMusic
            },
            call_visitor()
        ]
    );
    sim.advance(secs(8));
    assert_eq!(sim.input(id, Input::VisitorAnswered), vec![Command::Bridge]);
    assert!(sim
        .kinds(id)
        .iter()
        .any(|k| matches!(k, EventKind::Connected { hold, .. } if hold.is_zero())));
    assert_eq!(
        sim.states(id),
        vec![
            State::Queued,
            State::CallingAgent,
            State::CallingVisitor,
            State::Connected
        ]
    );
}

#[test]
fn agent_first_waits_for_an_agent_and_releases_on_visitor_failure() {
    let mut sim = Sim::new(config(), &["alice"]);
    sim.d.pause("alice", sim.now).expect("known");
    let (id, c) = sim.submit(NewRequest {
        strategy: Some(Strategy::AgentFirst),
        ..request()
    });
    assert_eq!(c, vec![]);
    assert_eq!(sim.last_state(id), Some(State::Queued));
    sim.d.resume("alice", sim.now).expect("known");
    assert_eq!(sim.drain(), vec![(id, call_agent("alice"))]);
    sim.input(id, Input::AgentAnswered);
    sim.input(id, Input::PlaybackFinished(Leg::Agent));
    let c = sim.input(id, Input::VisitorFailed(CallFailure::Busy));
    assert_eq!(c, vec![Command::HangUp { leg: Leg::Agent }]);
    assert_eq!(sim.last_state(id), Some(State::Scheduled));
}

#[test]
fn confirmation_calls_an_agent_only_after_key_1() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, _) = sim.submit(NewRequest {
        strategy: Some(Strategy::Confirmation),
        ..request()
    });
    let c = sim.input(id, Input::VisitorAnswered);
    assert_eq!(
        c,
        vec![Command::Play {
            leg: Leg::Visitor,
            prompt: Prompt::Confirm
        }]
    );
    assert_eq!(sim.last_state(id), Some(State::Confirming));
    assert_eq!(sim.input(id, Input::DtmfReceived('2')), vec![]);
    let c = sim.input(id, Input::DtmfReceived('1'));
    assert_eq!(
        c,
        vec![
            Command::Play {
                leg: Leg::Visitor,
                prompt: Prompt::HoldMusic
            },
            call_agent("alice")
        ]
    );
    assert!(sim.kinds(id).contains(&EventKind::Confirmed));
}

#[test]
fn confirmation_without_key_never_calls_an_agent() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, _) = sim.submit(NewRequest {
        strategy: Some(Strategy::Confirmation),
        ..request()
    });
    sim.input(id, Input::VisitorAnswered);
    assert_eq!(sim.advance_for(id, secs(19)), vec![]);
    assert_eq!(
        sim.advance_for(id, secs(1)),
        vec![Command::HangUp { leg: Leg::Visitor }]
    );
    assert!(sim.kinds(id).contains(&EventKind::AttemptFailed {
        attempt: 1,
        reason: CallFailure::NotConfirmed
    }));
    assert_eq!(sim.last_state(id), Some(State::Scheduled));
    // Run the two retries out: no agent is ever called.
    let mut all = Vec::new();
    for backoff in [120, 240] {
        assert_eq!(sim.advance_for(id, secs(backoff)), vec![call_visitor()]);
        sim.input(id, Input::VisitorAnswered);
        all.extend(sim.advance_for(id, secs(20)));
    }
    assert!(
        !all.iter().any(|c| matches!(c, Command::CallAgent { .. })),
        "{all:?}"
    );
    assert_eq!(
        sim.kinds(id).last(),
        Some(&EventKind::Missed {
            reason: MissReason::RetriesExhausted
        })
    );
}

fn paris_hours() -> BusinessHours {
    let nine = NaiveTime::from_hms_opt(9, 0, 0).expect("time");
    let six = NaiveTime::from_hms_opt(18, 0, 0).expect("time");
    use Weekday::*;
    BusinessHours::closed(Paris)
        .with_days(&[Mon, Tue, Wed, Thu, Fri], nine, six)
        .expect("hours")
}

#[test]
fn outside_hours_is_scheduled_at_next_opening() {
    let mut cfg = config();
    cfg.hours = paris_hours();
    // Friday 2026-06-12 19:00 Paris (17:00 UTC).
    let now = Utc
        .with_ymd_and_hms(2026, 6, 12, 17, 0, 0)
        .single()
        .expect("valid");
    let mut sim = Sim::at(cfg, &["alice"], now);
    let s = sim.d.submit(request(), now).expect("submit");
    // Monday 09:00 Paris = 07:00 UTC (CEST).
    let monday = Utc
        .with_ymd_and_hms(2026, 6, 15, 7, 0, 0)
        .single()
        .expect("valid");
    assert_eq!((s.state, s.due), (State::Scheduled, monday));
    assert!(sim.drain().is_empty());
    assert_eq!(sim.d.poll_timeout(), Some(monday));
    assert!(sim.kinds(s.id).contains(&EventKind::Scheduled {
        due: monday,
        reason: ScheduleReason::OutsideHours
    }));
    let wait = u64::try_from((monday - now).num_seconds()).expect("positive");
    assert!(sim.advance(secs(wait - 1)).is_empty());
    assert_eq!(sim.advance_for(s.id, secs(1)), vec![call_visitor()]);
}

#[test]
fn closed_date_is_skipped() {
    let mut cfg = config();
    // Monday 2026-06-15 is a closed date.
    cfg.hours = paris_hours().with_closed_date(NaiveDate::from_ymd_opt(2026, 6, 15).expect("date"));
    let now = Utc
        .with_ymd_and_hms(2026, 6, 12, 17, 0, 0)
        .single()
        .expect("valid");
    let mut sim = Sim::at(cfg, &["alice"], now);
    let s = sim.d.submit(request(), now).expect("submit");
    let tuesday = Utc
        .with_ymd_and_hms(2026, 6, 16, 7, 0, 0)
        .single()
        .expect("valid");
    assert_eq!((s.state, s.due), (State::Scheduled, tuesday));
}

#[test]
fn wished_local_time_in_visitor_zone_across_dst_offsets() {
    // New York switched to EDT on 2026-03-08, Paris only on 2026-03-29: 10:00 in New York on 2026-03-10 is
    // 14:00 UTC, 15:00 in Paris (open).
    let mut cfg = config();
    cfg.hours = paris_hours();
    let now = Utc
        .with_ymd_and_hms(2026, 3, 10, 9, 0, 0)
        .single()
        .expect("valid");
    let mut sim = Sim::at(cfg, &["alice"], now);
    let local = NaiveDate::from_ymd_opt(2026, 3, 10)
        .and_then(|d| d.and_hms_opt(10, 0, 0))
        .expect("local");
    let r = NewRequest {
        wished: Some(WishedTime::Local(local)),
        visitor_tz: Some(New_York),
        ..request()
    };
    let s = sim.d.submit(r, now).expect("submit");
    let due = Utc
        .with_ymd_and_hms(2026, 3, 10, 14, 0, 0)
        .single()
        .expect("valid");
    assert_eq!((s.state, s.due), (State::Scheduled, due));
    assert!(
        sim.kinds(s.id).is_empty(),
        "events are drained by the caller"
    );
    sim.drain();
    assert!(sim.kinds(s.id).contains(&EventKind::Scheduled {
        due,
        reason: ScheduleReason::Requested
    }));
    assert_eq!(sim.advance_for(s.id, secs(5 * 3600)), vec![call_visitor()]);
    // A local wished time without a zone is refused.
    let r = NewRequest {
        wished: Some(WishedTime::Local(local)),
        ..request()
    };
    assert!(sim.d.submit(r, now).is_err());
}

#[test]
fn wished_time_in_spring_forward_gap_then_closed_moves_to_opening() {
    // 02:30 on 2026-03-29 does not exist in Paris; it resolves to 03:30 CEST (01:30 UTC), outside hours (Sunday
    // and night), so the callback is due Monday 09:00 CEST = 07:00 UTC.
    let mut cfg = config();
    cfg.hours = paris_hours();
    let now = Utc
        .with_ymd_and_hms(2026, 3, 28, 12, 0, 0)
        .single()
        .expect("valid");
    let mut sim = Sim::at(cfg, &["alice"], now);
    let local = NaiveDate::from_ymd_opt(2026, 3, 29)
        .and_then(|d| d.and_hms_opt(2, 30, 0))
        .expect("local");
    let r = NewRequest {
        wished: Some(WishedTime::Local(local)),
        visitor_tz: Some(Paris),
        ..request()
    };
    let s = sim.d.submit(r, now).expect("submit");
    assert_eq!(
        s.request.wished_at,
        Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0).single()
    );
    assert_eq!(
        s.due,
        Utc.with_ymd_and_hms(2026, 3, 30, 7, 0, 0)
            .single()
            .expect("valid")
    );
}

#[test]
fn queued_request_at_closing_time_moves_to_next_opening() {
    let mut cfg = config();
    cfg.hours = paris_hours();
    cfg.max_concurrent = 1;
    // Friday 2026-06-12 17:59:30 Paris.
    let now = Utc
        .with_ymd_and_hms(2026, 6, 12, 15, 59, 30)
        .single()
        .expect("valid");
    let mut sim = Sim::at(cfg, &["alice"], now);
    let (a, _) = sim.submit(request());
    let (b, cb) = sim.submit(request());
    assert!(cb.is_empty());
    assert_eq!(sim.last_state(b), Some(State::Queued));
    // a fails at 18:00:10, after closing: b (and a's retry) wait for Monday.
    sim.advance(secs(40));
    sim.input(a, Input::VisitorFailed(CallFailure::Busy));
    let monday = Utc
        .with_ymd_and_hms(2026, 6, 15, 7, 0, 0)
        .single()
        .expect("valid");
    assert_eq!(
        sim.d.status(b, sim.now).map(|s| (s.state, s.due)),
        Some((State::Scheduled, monday))
    );
    sim.advance(secs(120));
    assert_eq!(
        sim.d.status(a, sim.now).map(|s| (s.state, s.due)),
        Some((State::Scheduled, monday))
    );
}

#[test]
fn cap_on_concurrent_callbacks() {
    let mut cfg = config();
    cfg.max_concurrent = 2;
    let mut sim = Sim::new(cfg, &["alice", "bob"]);
    let (a, ca) = sim.submit(request());
    let (b, cb) = sim.submit(request());
    let (c, cc) = sim.submit(request());
    assert_eq!((ca.len(), cb.len(), cc.len()), (1, 1, 0));
    assert_eq!(
        sim.d.status(c, sim.now).map(|s| s.state),
        Some(State::Queued)
    );
    sim.input(b, Input::VisitorAnswered);
    sim.input(a, Input::VisitorFailed(CallFailure::NoAnswer));
    // a's slot is free: c starts (a waits for its retry).
    assert_eq!(sim.drain(), vec![]);
    assert_eq!(
        sim.kinds(c)
            .iter()
            .filter(|k| matches!(k, EventKind::CallingVisitor { .. }))
            .count(),
        1
    );
    // a's retry is due but both slots are taken: it waits in the queue.
    sim.input(c, Input::VisitorAnswered);
    sim.advance(secs(120));
    assert_eq!(
        sim.d.status(a, sim.now).map(|s| s.state),
        Some(State::Queued)
    );
    // c ends: a starts.
    sim.input(c, Input::VisitorHungUp);
    assert_eq!(
        sim.d.status(a, sim.now).map(|s| s.state),
        Some(State::CallingVisitor)
    );
}

#[test]
fn auto_pause_after_consecutive_misses_and_resume() {
    let mut cfg = config();
    cfg.agents = AgentsPolicy {
        wrap_up: secs(30),
        max_consecutive_misses: Some(2),
    };
    let mut sim = Sim::new(cfg, &["alice"]);
    let (id, _) = sim.submit(request());
    sim.input(id, Input::VisitorAnswered);
    assert_eq!(
        sim.input(id, Input::AgentFailed(CallFailure::Rejected)),
        vec![]
    );
    assert_eq!(sim.advance_for(id, secs(5)), vec![call_agent("alice")]);
    assert_eq!(
        sim.input(id, Input::AgentFailed(CallFailure::NoAnswer)),
        vec![]
    );
    assert!(sim.kinds(id).contains(&EventKind::AgentAutoPaused {
        agent: "alice".into()
    }));
    assert_eq!(
        sim.d.agents().status("alice", sim.now),
        Some(AgentStatus::Paused { auto: true })
    );
    // Paused: never called again while paused.
    assert_eq!(sim.advance_for(id, secs(30)), vec![]);
    sim.d.resume("alice", sim.now).expect("known");
    assert_eq!(sim.drain(), vec![(id, call_agent("alice"))]);
    // An answer resets the miss count.
    sim.input(id, Input::AgentAnswered);
    assert_eq!(
        sim.input(id, Input::PlaybackFinished(Leg::Agent)),
        vec![Command::Bridge]
    );
}

#[test]
fn queue_position_and_estimated_wait() {
    let mut sim = Sim::new(config(), &["alice"]);
    let ids: Vec<RequestId> = (0..3).map(|_| sim.submit(request()).0).collect();
    for id in &ids {
        sim.input(*id, Input::VisitorAnswered);
    }
    // The first holds with alice ringing; the two others wait in line.
    let st: Vec<_> = ids
        .iter()
        .filter_map(|id| sim.d.status(*id, sim.now))
        .collect();
    assert_eq!(st[0].agent.as_deref(), Some("alice"));
    assert_eq!((st[0].queue_position, st[0].estimated_wait), (None, None));
    // Nothing handled yet: 180 s per call assumed, one agent.
    assert_eq!(
        (st[1].queue_position, st[1].estimated_wait),
        (Some(0), Some(secs(180)))
    );
    assert_eq!(
        (st[2].queue_position, st[2].estimated_wait),
        (Some(1), Some(secs(360)))
    );
    // A 60 s call plus 30 s wrap-up: the estimate follows the recent handling time.
    sim.input(ids[0], Input::AgentAnswered);
    sim.input(ids[0], Input::PlaybackFinished(Leg::Agent));
    sim.advance(secs(60));
    sim.input(ids[0], Input::VisitorHungUp);
    let s1 = sim.d.status(ids[1], sim.now).expect("live");
    let s2 = sim.d.status(ids[2], sim.now).expect("live");
    assert_eq!(
        (s1.queue_position, s1.estimated_wait),
        (Some(0), Some(secs(90)))
    );
    assert_eq!(
        (s2.queue_position, s2.estimated_wait),
        (Some(1), Some(secs(180)))
    );
    // Alice leaves wrap-up: the first in line gets her, in queue order.
    let c = sim.advance(secs(30));
    let calls: Vec<_> = c
        .iter()
        .filter(|(_, c)| matches!(c, Command::CallAgent { .. }))
        .cloned()
        .collect();
    assert_eq!(calls, vec![(ids[1], call_agent("alice"))]);
}

#[test]
fn cancel_while_holding_hangs_up_and_frees_the_agent() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, _) = sim.submit(request());
    sim.input(id, Input::VisitorAnswered);
    sim.d.cancel(id, sim.now).expect("live");
    assert_eq!(
        sim.drain(),
        vec![
            (id, Command::CancelAgentCall),
            (id, Command::HangUp { leg: Leg::Visitor })
        ]
    );
    assert_eq!(sim.kinds(id).last(), Some(&EventKind::Cancelled));
    assert_eq!(
        sim.d.agents().status("alice", sim.now),
        Some(AgentStatus::Available)
    );
    assert!(sim.d.cancel(id, sim.now).is_err());
}

#[test]
fn bad_input_is_refused_not_panicking() {
    let mut sim = Sim::new(config(), &["alice"]);
    for phone in [
        "",
        "abc",
        "+33 6 12 34 56 78 90 12 34 56 78 90 12 34",
        "12",
        "+3+3",
    ] {
        assert!(
            sim.d
                .submit(
                    NewRequest {
                        phone: phone.into(),
                        ..request()
                    },
                    sim.now
                )
                .is_err(),
            "{phone}"
        );
    }
    let r = NewRequest {
        context: Some("x".repeat(5000)),
        ..request()
    };
    assert!(sim.d.submit(r, sim.now).is_err());
    assert!(sim
        .d
        .handle_input(RequestId(99), Input::AgentAnswered, sim.now)
        .is_err());
    // Inputs that make no sense in the current state are ignored.
    let (id, _) = sim.submit(request());
    assert_eq!(sim.input(id, Input::AgentAnswered), vec![]);
    assert_eq!(sim.input(id, Input::DtmfReceived('1')), vec![]);
    assert_eq!(sim.last_state(id), Some(State::CallingVisitor));
}

#[test]
fn visitor_hangs_up_while_holding_without_agent_is_missed_for_manual_callback() {
    let mut sim = Sim::new(config(), &["alice"]);
    sim.d.pause("alice", sim.now).expect("known");
    let (id, _) = sim.submit(request());
    assert_eq!(
        sim.input(id, Input::VisitorAnswered),
        vec![Command::Play {
            leg: Leg::Visitor,
            prompt: Prompt::Greeting
        }]
    );
    assert_eq!(sim.last_state(id), Some(State::Holding));
    assert_eq!(sim.input(id, Input::VisitorHungUp), vec![]);
    assert_eq!(
        sim.kinds(id).last(),
        Some(&EventKind::Missed {
            reason: MissReason::VisitorHungUp
        })
    );
    assert_eq!(sim.d.poll_timeout(), None, "no timer left behind");
}

#[test]
fn agent_first_agent_leaves_while_visitor_rings_requeues() {
    let mut sim = Sim::new(config(), &["alice", "bob"]);
    let (id, _) = sim.submit(NewRequest {
        strategy: Some(Strategy::AgentFirst),
        ..request()
    });
    sim.input(id, Input::AgentAnswered);
    sim.input(id, Input::PlaybackFinished(Leg::Agent));
    assert_eq!(sim.last_state(id), Some(State::CallingVisitor));
    // Alice hangs up: the visitor call is cancelled and the request starts again with the next agent.
    let c = sim.input(id, Input::AgentHungUp);
    assert_eq!(
        c,
        vec![Command::HangUp { leg: Leg::Visitor }, call_agent("bob")]
    );
    assert_eq!(sim.states(id).last(), Some(&State::CallingAgent));
    assert!(sim.kinds(id).contains(&EventKind::Queued));
}
