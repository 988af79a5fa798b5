//! The callback state machine driven through the dispatcher in simulated time: every branch of the flow.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::{America::New_York, Europe::Paris};
use rappel::callback::agents::AgentsPolicy;
use rappel::callback::event::{ScheduleReason, State};
use rappel::callback::schedule::BusinessHours;
use rappel::callback::{
    AgentConfig, AgentStatus, CallFailure, CallbackConfig, Command, Dispatcher, EventKind, Input, Leg, MissReason,
    NewRequest, Prompt, RequestEvent, RequestId, Strategy, Time, WishedTime,
};

/// A dispatcher, a simulated clock, and everything that came out.
struct Sim {
    d: Dispatcher,
    now: Time,
    events: Vec<(RequestId, RequestEvent)>,
}

fn t0() -> Time {
    // Tuesday 2026-06-09 10:00 UTC.
    Utc.with_ymd_and_hms(2026, 6, 9, 10, 0, 0).single().expect("valid")
}

fn config() -> CallbackConfig {
    let mut c = CallbackConfig::default();
    c.flow.caller_id = "+33100000000".into();
    c
}

fn agents(names: &[&str]) -> Vec<AgentConfig> {
    names.iter().map(|n| AgentConfig::new(n, &format!("sip:{n}@example.com"), &["billing"])).collect()
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
        Sim { d, now, events: Vec::new() }
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
        let cmds = self.drain().into_iter().filter(|(id, _)| *id == s.id).map(|(_, c)| c).collect();
        (s.id, cmds)
    }

    fn input(&mut self, id: RequestId, i: Input) -> Vec<Command> {
        self.d.handle_input(id, i, self.now).expect("live request");
        self.drain().into_iter().filter(|(x, _)| *x == id).map(|(_, c)| c).collect()
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
        self.advance(by).into_iter().filter(|(x, _)| *x == id).map(|(_, c)| c).collect()
    }

    fn kinds(&self, id: RequestId) -> Vec<EventKind> {
        self.events.iter().filter(|(x, _)| *x == id).map(|(_, e)| e.kind.clone()).collect()
    }

    fn last_state(&self, id: RequestId) -> Option<State> {
        self.events.iter().rev().find(|(x, _)| *x == id).map(|(_, e)| e.state)
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
    Command::CallVisitor { number: "+33612345678".into(), caller_id: "+33100000000".into() }
}

/// Answer the visitor, agent answers, whisper ends: returns the bridge commands.
fn connect(sim: &mut Sim, id: RequestId, agent: &str) {
    let c = sim.input(id, Input::VisitorAnswered);
    assert_eq!(c, vec![Command::Play { leg: Leg::Visitor, prompt: Prompt::Greeting }, call_agent(agent)]);
    let c = sim.input(id, Input::AgentAnswered);
    assert_eq!(c, vec![Command::Play { leg: Leg::Agent, prompt: Prompt::Whisper(Some("billing".into())) }]);
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
    assert_eq!(c, vec![Command::Play { leg: Leg::Visitor, prompt: Prompt::Greeting }, call_agent("alice")]);
    // The greeting ends: hold music while the agent rings.
    let c = sim.input(id, Input::PlaybackFinished(Leg::Visitor));
    assert_eq!(c, vec![Command::Play { leg: Leg::Visitor, prompt: Prompt::HoldMusic }]);
    sim.advance(secs(7));
    let c = sim.input(id, Input::AgentAnswered);
    assert_eq!(c, vec![Command::Play { leg: Leg::Agent, prompt: Prompt::Whisper(Some("billing".into())) }]);
    sim.advance(secs(3));
    assert_eq!(sim.input(id, Input::PlaybackFinished(Leg::Agent)), vec![Command::Bridge]);
    assert_eq!(sim.d.agents().status("alice", sim.now), Some(AgentStatus::Busy { calls: 1 }));
    sim.advance(secs(60));
    assert_eq!(sim.input(id, Input::AgentHungUp), vec![Command::HangUp { leg: Leg::Visitor }]);
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
    assert_eq!(sim.d.agents().status("alice", sim.now), Some(AgentStatus::WrapUp { until }));
    assert_eq!(sim.d.agents().status("alice", until), Some(AgentStatus::Available));
    // The finished request left the dispatcher (the store keeps it).
    assert!(sim.d.status(id, sim.now).is_none());
    let m = sim.d.render_metrics(sim.now);
    assert!(m.contains("rappel_callback_connected_total 1\n"), "{m}");
    assert!(m.contains("rappel_callback_hold_seconds_count 1\n"), "{m}");
    assert!(m.contains("rappel_callback_hold_seconds_bucket{le=\"10\"} 1\n"), "{m}");
    assert!(m.contains("rappel_callback_hold_seconds_bucket{le=\"5\"} 0\n"), "{m}");
}

#[test]
fn visitor_busy_retries_with_backoff_then_succeeds() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, _) = sim.submit(request());
    assert_eq!(sim.input(id, Input::VisitorFailed(CallFailure::Busy)), vec![]);
    assert_eq!(sim.last_state(id), Some(State::Scheduled));
    let due = sim.now + chrono::TimeDelta::seconds(120);
    assert!(sim.kinds(id).contains(&EventKind::Scheduled { due, reason: ScheduleReason::Retry }));
    assert_eq!(sim.advance_for(id, secs(119)), vec![]);
    assert_eq!(sim.advance_for(id, secs(1)), vec![call_visitor()]);
    assert!(sim.kinds(id).contains(&EventKind::CallingVisitor { attempt: 2 }));
    connect(&mut sim, id, "alice");
    assert_eq!(sim.input(id, Input::VisitorHungUp), vec![Command::HangUp { leg: Leg::Agent }]);
    assert_eq!(sim.last_state(id), Some(State::Completed));
}

#[test]
fn retries_exhausted_is_missed() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, _) = sim.submit(request());
    sim.input(id, Input::VisitorFailed(CallFailure::Busy));
    assert_eq!(sim.advance_for(id, secs(120)), vec![call_visitor()]);
    // Nobody answers: the flow's own ring timeout hangs up after 30 s.
    assert_eq!(sim.advance_for(id, secs(30)), vec![Command::HangUp { leg: Leg::Visitor }]);
    // Backoff doubles: 240 s.
    assert_eq!(sim.advance_for(id, secs(239)), vec![]);
    assert_eq!(sim.advance_for(id, secs(1)), vec![call_visitor()]);
    sim.input(id, Input::VisitorFailed(CallFailure::Failed));
    let kinds = sim.kinds(id);
    let failures: Vec<_> = kinds.iter().filter(|k| matches!(k, EventKind::AttemptFailed { .. })).cloned().collect();
    assert_eq!(
        failures,
        vec![
            EventKind::AttemptFailed { attempt: 1, reason: CallFailure::Busy },
            EventKind::AttemptFailed { attempt: 2, reason: CallFailure::NoAnswer },
            EventKind::AttemptFailed { attempt: 3, reason: CallFailure::Failed },
        ]
    );
    assert_eq!(kinds.last(), Some(&EventKind::Missed { reason: MissReason::RetriesExhausted }));
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
    assert!(sim.kinds(id).contains(&EventKind::AgentFailed { agent: "alice".into(), reason: CallFailure::NoAnswer }));
    sim.input(id, Input::AgentAnswered);
    assert_eq!(sim.input(id, Input::PlaybackFinished(Leg::Agent)), vec![Command::Bridge]);
    assert!(sim.kinds(id).iter().any(|k| matches!(k, EventKind::Connected { agent, .. } if agent == "bob")));
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
    assert_eq!(sim.input(id, Input::AgentFailed(CallFailure::Busy)), vec![call_agent("bob")]);
    assert_eq!(sim.input(id, Input::AgentFailed(CallFailure::Rejected)), vec![]);
    // Everyone tried: look again after 5 s, a new round.
    assert_eq!(sim.advance_for(id, secs(5)), vec![call_agent("alice")]);
    assert_eq!(sim.input(id, Input::AgentFailed(CallFailure::Busy)), vec![call_agent("bob")]);
    // Bob rings out at +25 s; everyone tried, next round at +30 s (alice), still connecting at +45 s.
    let c = sim.advance_for(id, secs(40));
    let still = Command::Play { leg: Leg::Visitor, prompt: Prompt::StillConnecting };
    assert_eq!(c, vec![Command::CancelAgentCall, call_agent("alice"), still]);
    // Alice rings out at +50 s (her third miss in a row: auto-paused), bob is called; max hold at +60 s cancels
    // him and plays the apology.
    let c = sim.advance_for(id, secs(15));
    let apology = Command::Play { leg: Leg::Visitor, prompt: Prompt::Apology };
    assert_eq!(c, vec![Command::CancelAgentCall, call_agent("bob"), Command::CancelAgentCall, apology]);
    assert!(sim.kinds(id).contains(&EventKind::AgentAutoPaused { agent: "alice".into() }));
    assert_eq!(sim.d.agents().status("alice", sim.now), Some(AgentStatus::Paused { auto: true }));
    assert_eq!(sim.last_state(id), Some(State::Missed));
    assert_eq!(sim.input(id, Input::PlaybackFinished(Leg::Visitor)), vec![Command::HangUp { leg: Leg::Visitor }]);
    assert_eq!(sim.kinds(id).last(), Some(&EventKind::Missed { reason: MissReason::MaxHold }));
    // No agent is left reserved.
    assert_eq!(sim.d.agents().occupancy(), 0.0);
    assert!(sim.d.render_metrics(sim.now).contains("rappel_callback_missed_total{reason=\"max_hold\"} 1\n"));
}

#[test]
fn visitor_hangs_up_while_agent_rings_cancels_agent_call() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, _) = sim.submit(request());
    sim.input(id, Input::VisitorAnswered);
    assert_eq!(sim.last_state(id), Some(State::CallingAgent));
    assert_eq!(sim.input(id, Input::VisitorHungUp), vec![Command::CancelAgentCall]);
    assert_eq!(sim.kinds(id).last(), Some(&EventKind::Missed { reason: MissReason::VisitorHungUp }));
    // No miss charged to the agent, no wrap-up: available at once.
    assert_eq!(sim.d.agents().status("alice", sim.now), Some(AgentStatus::Available));
    assert_eq!(sim.d.poll_timeout(), None);
}

#[test]
fn agent_hangs_up_during_whisper_next_agent() {
    let mut sim = Sim::new(config(), &["alice", "bob"]);
    let (id, _) = sim.submit(request());
    sim.input(id, Input::VisitorAnswered);
    sim.input(id, Input::AgentAnswered);
    let c = sim.input(id, Input::AgentHungUp);
    assert_eq!(c, vec![Command::Play { leg: Leg::Visitor, prompt: Prompt::HoldMusic }, call_agent("bob")]);
}

#[test]
fn agent_first_calls_agent_then_visitor() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, c) = sim.submit(NewRequest { strategy: Some(Strategy::AgentFirst), ..request() });
    assert_eq!(c, vec![call_agent("alice")]);
    let c = sim.input(id, Input::AgentAnswered);
    assert_eq!(c, vec![Command::Play { leg: Leg::Agent, prompt: Prompt::Whisper(Some("billing".into())) }]);
    let c = sim.input(id, Input::PlaybackFinished(Leg::Agent));
    assert_eq!(c, vec![Command::Play { leg: Leg::Agent, prompt: Prompt::HoldMusic }, call_visitor()]);
    sim.advance(secs(8));
    assert_eq!(sim.input(id, Input::VisitorAnswered), vec![Command::Bridge]);
    assert!(sim.kinds(id).iter().any(|k| matches!(k, EventKind::Connected { hold, .. } if hold.is_zero())));
    assert_eq!(
        sim.states(id),
        vec![State::Queued, State::CallingAgent, State::CallingVisitor, State::Connected]
    );
}

#[test]
fn agent_first_waits_for_an_agent_and_releases_on_visitor_failure() {
    let mut sim = Sim::new(config(), &["alice"]);
    sim.d.pause("alice", sim.now).expect("known");
    let (id, c) = sim.submit(NewRequest { strategy: Some(Strategy::AgentFirst), ..request() });
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
    let (id, _) = sim.submit(NewRequest { strategy: Some(Strategy::Confirmation), ..request() });
    let c = sim.input(id, Input::VisitorAnswered);
    assert_eq!(c, vec![Command::Play { leg: Leg::Visitor, prompt: Prompt::Confirm }]);
    assert_eq!(sim.last_state(id), Some(State::Confirming));
    assert_eq!(sim.input(id, Input::DtmfReceived('2')), vec![]);
    let c = sim.input(id, Input::DtmfReceived('1'));
    assert_eq!(c, vec![Command::Play { leg: Leg::Visitor, prompt: Prompt::HoldMusic }, call_agent("alice")]);
    assert!(sim.kinds(id).contains(&EventKind::Confirmed));
}

#[test]
fn confirmation_without_key_never_calls_an_agent() {
    let mut sim = Sim::new(config(), &["alice"]);
    let (id, _) = sim.submit(NewRequest { strategy: Some(Strategy::Confirmation), ..request() });
    sim.input(id, Input::VisitorAnswered);
    assert_eq!(sim.advance_for(id, secs(19)), vec![]);
    assert_eq!(sim.advance_for(id, secs(1)), vec![Command::HangUp { leg: Leg::Visitor }]);
    assert!(sim.kinds(id).contains(&EventKind::AttemptFailed { attempt: 1, reason: CallFailure::NotConfirmed }));
    assert_eq!(sim.last_state(id), Some(State::Scheduled));
    // Run the two retries out: no agent is ever called.
    let mut all = Vec::new();
    for backoff in [120, 240] {
        assert_eq!(sim.advance_for(id, secs(backoff)), vec![call_visitor()]);
        sim.input(id, Input::VisitorAnswered);
        all.extend(sim.advance_for(id, secs(20)));
    }
    assert!(!all.iter().any(|c| matches!(c, Command::CallAgent { .. })), "{all:?}");
    assert_eq!(sim.kinds(id).last(), Some(&EventKind::Missed { reason: MissReason::RetriesExhausted }));
}

fn paris_hours() -> BusinessHours {
    let nine = NaiveTime::from_hms_opt(9, 0, 0).expect("time");
    let six = NaiveTime::from_hms_opt(18, 0, 0).expect("time");
    use Weekday::*;
    BusinessHours::closed(Paris).with_days(&[Mon, Tue, Wed, Thu, Fri], nine, six).expect("hours")
}

#[test]
fn outside_hours_is_scheduled_at_next_opening() {
    let mut cfg = config();
    cfg.hours = paris_hours();
    // Friday 2026-06-12 19:00 Paris (17:00 UTC).
    let now = Utc.with_ymd_and_hms(2026, 6, 12, 17, 0, 0).single().expect("valid");
    let mut sim = Sim::at(cfg, &["alice"], now);
    let s = sim.d.submit(request(), now).expect("submit");
    // Monday 09:00 Paris = 07:00 UTC (CEST).
    let monday = Utc.with_ymd_and_hms(2026, 6, 15, 7, 0, 0).single().expect("valid");
    assert_eq!((s.state, s.due), (State::Scheduled, monday));
    assert!(sim.drain().is_empty());
    assert_eq!(sim.d.poll_timeout(), Some(monday));
    assert!(sim.kinds(s.id).contains(&EventKind::Scheduled { due: monday, reason: ScheduleReason::OutsideHours }));
    let wait = u64::try_from((monday - now).num_seconds()).expect("positive");
    assert!(sim.advance(secs(wait - 1)).is_empty());
    assert_eq!(sim.advance_for(s.id, secs(1)), vec![call_visitor()]);
}

