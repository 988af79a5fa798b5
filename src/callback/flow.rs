//! The per-request state machine, sans-IO.
//!
//! A [`Flow`] takes call-layer events ([`Input`]) and `now` in, and gives commands for the call layer
//! ([`Command`], drained with [`Flow::poll_command`]) and state-change events ([`RequestEvent`], drained with
//! [`Flow::poll_event`]) out. Its timers (ring timeouts, max hold, "still connecting", confirmation) are reported by
//! [`Flow::poll_timeout`] and fired by [`Flow::handle_timeout`]. The agents pool is passed in by `&mut` because
//! agents are shared across requests.
//!
//! **Clock**: every `now` is a UTC instant ([`Time`]) supplied by the driver; the flow never reads a clock. Using
//! one wall-clock type everywhere (rather than `Instant` for timers and UTC for schedules) keeps scheduled times,
//! timers and the stored history in the same unit, which recovery after a restart needs.
//!
//! Due times are owned by the [`Dispatcher`](super::queue::Dispatcher): a flow in `scheduled` waits until the
//! dispatcher calls [`Flow::make_due`], and a flow in `queued` until it calls [`Flow::start`].
//!
//! ```text
//! scheduled ──due──▶ queued ──start──▶ calling_visitor ──answer──▶ holding ◀──agent failed──┐
//!     ▲                 ▲                 │   (confirmation: confirming ──"1"──▶ holding)   │
//!     └──retry backoff──┴──busy/no answer─┘                         holding ──▶ calling_agent ──whisper──▶ connected
//!                        (attempts left; else missed)    max hold / visitor left ──▶ missed      hang-up ──▶ completed
//! agent-first: queued ──▶ calling_agent ──answer, whisper──▶ calling_visitor ──answer──▶ connected
//! any non-final ──cancel──▶ cancelled
//! ```
//!
//! Visitor-first: call the visitor → greeting, hold music → call the longest-idle agent with the skills → whisper to
//! the agent → bridge. A failed agent → the next one. Max hold → apology, hang up, `missed`. Visitor failures →
//! retry with exponential backoff, then `missed`. Confirmation: after answer the visitor must press the confirmation
//! digit before any agent is called; no key → the attempt failed. Agent-first: call an agent, whisper, then call the
//! visitor and bridge on answer. A visitor who hangs up while held ends `missed` (reason `visitor_hung_up`) so that a
//! human can still call back: the request is never silently dropped.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::agents::Agents;
use super::event::{CallFailure, EventKind, MissReason, RequestEvent, ScheduleReason, State};
use super::request::{CallbackRequest, Strategy};
use super::{add, since, Time};

/// A call leg of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// The visitor's call.
    Visitor,
    /// The agent's call.
    Agent,
}

/// What to play.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prompt {
    /// Welcome announcement to the visitor.
    Greeting,
    /// Hold music (looped by the call layer until the next command on the leg).
    HoldMusic,
    /// "We are still connecting you".
    StillConnecting,
    /// Apology before hanging up after the maximum hold.
    Apology,
    /// "Press 1 to talk to an advisor".
    Confirm,
    /// Short announcement to the agent for the request's topic (`None`: the generic one).
    Whisper(Option<String>),
}

/// A command for the call layer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Place the call to the visitor.
    CallVisitor {
        /// Number to call.
        number: String,
        /// Caller ID to present.
        caller_id: String,
    },
    /// Place the call to an agent; `whisper` is what the flow will play to them on answer (informational).
    CallAgent {
        /// Agent name.
        agent: String,
        /// Where to call them.
        uri: String,
        /// The whisper that follows the answer, if whispers are on.
        whisper: Option<Prompt>,
    },
    /// Play a prompt on a leg (replacing what plays there).
    Play {
        /// Which leg.
        leg: Leg,
        /// What.
        prompt: Prompt,
    },
    /// Bridge visitor and agent (stops any playback).
    Bridge,
    /// Hang up a leg (cancel it if it is still ringing).
    HangUp {
        /// Which leg.
        leg: Leg,
    },
    /// Cancel the ringing agent call.
    CancelAgentCall,
}

/// An event from the call layer.
///
/// Contract for the driver: once the flow has said [`Command::CancelAgentCall`] or [`Command::HangUp`] for a leg,
/// that call is over for the flow; drop any late event of it (a 487 after a cancel, say). Agent events carry no call
/// identity, so a late one would be taken for the agent call in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input {
    /// The visitor's phone rings (180).
    VisitorRinging,
    /// The visitor answered (200).
    VisitorAnswered,
    /// The visitor call failed before answer.
    VisitorFailed(CallFailure),
    /// The visitor hung up (or, before answer, the call ended).
    VisitorHungUp,
    /// The agent answered.
    AgentAnswered,
    /// The agent call failed before answer.
    AgentFailed(CallFailure),
    /// The agent hung up.
    AgentHungUp,
    /// A DTMF digit from the visitor (RFC 4733).
    DtmfReceived(char),
    /// A prompt finished playing on a leg.
    PlaybackFinished(Leg),
}

/// Timings and limits of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowConfig {
    /// Caller ID presented to visitors.
    pub caller_id: String,
    /// Ring time before giving up on the visitor.
    pub visitor_ring_timeout: Duration,
    /// Ring time before giving up on an agent.
    pub agent_ring_timeout: Duration,
    /// Attempts to reach the visitor (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt.
    pub retry_backoff: Duration,
    /// Backoff multiplier for each further attempt.
    pub retry_backoff_factor: u32,
    /// Backoff cap.
    pub retry_backoff_max: Duration,
    /// Maximum hold before the apology.
    pub max_hold: Duration,
    /// Interval of the "still connecting" announcement.
    pub still_connecting_every: Duration,
    /// Time to press the confirmation digit.
    pub confirm_timeout: Duration,
    /// The confirmation digit.
    pub confirm_digit: char,
    /// While holding with no agent free, how often to look again.
    pub agent_recheck: Duration,
    /// Longest wait for the apology to finish before hanging up.
    pub apology_timeout: Duration,
    /// Whisper to agents on answer.
    pub whisper: bool,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            caller_id: "anonymous".to_owned(),
            visitor_ring_timeout: Duration::from_secs(30),
            agent_ring_timeout: Duration::from_secs(20),
            max_attempts: 3,
            retry_backoff: Duration::from_secs(120),
            retry_backoff_factor: 2,
            retry_backoff_max: Duration::from_secs(1800),
            max_hold: Duration::from_secs(300),
            still_connecting_every: Duration::from_secs(45),
            confirm_timeout: Duration::from_secs(20),
            confirm_digit: '1',
            agent_recheck: Duration::from_secs(5),
            apology_timeout: Duration::from_secs(30),
            whisper: true,
        }
    }
}

impl FlowConfig {
    /// Backoff after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self
            .retry_backoff_factor
            .max(1)
            .saturating_pow(attempt.saturating_sub(1));
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.retry_backoff_max)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    VisitorRing,
    AgentRing,
    MaxHold,
    StillConnecting,
    Confirm,
    Recheck,
    Apology,
}

const TIMERS: usize = 7;

#[derive(Debug, Clone)]
struct AgentLeg {
    name: String,
    answered: bool,
    whispering: bool,
}

/// The state machine of one request.
#[derive(Debug, Clone)]
pub struct Flow {
    cfg: Arc<FlowConfig>,
    req: CallbackRequest,
    state: State,
    due: Time,
    /// Due time at submission (or restore): time to connect counts from here, across retries.
    origin: Time,
    attempts: u32,
    agent: Option<AgentLeg>,
    tried: BTreeSet<String>,
    visitor_calling: bool,
    visitor_up: bool,
    apologizing: bool,
    hold_started: Option<Time>,
    connected_at: Option<Time>,
    timers: [Option<Time>; TIMERS],
    commands: VecDeque<Command>,
    events: VecDeque<RequestEvent>,
}

impl Flow {
    /// A new request, due at `due` (`reason` says why if `due > now`). Emits `submitted` then `scheduled` or `queued`.
    pub fn submit(
        cfg: Arc<FlowConfig>,
        req: CallbackRequest,
        due: Time,
        reason: ScheduleReason,
        now: Time,
    ) -> Flow {
        let mut f = Flow::restore(cfg, req, State::Queued, due, 0);
        f.emit(State::Queued, EventKind::Submitted, now);
        if due > now {
            f.emit(State::Scheduled, EventKind::Scheduled { due, reason }, now);
        } else {
            f.emit(State::Queued, EventKind::Queued, now);
        }
        f
    }

    /// A flow rebuilt from storage in `scheduled` (waiting for `due`) or `queued`, after `attempts` attempts.
    /// No event is emitted. Any other `state` is taken as `queued`.
    pub fn restore(
        cfg: Arc<FlowConfig>,
        req: CallbackRequest,
        state: State,
        due: Time,
        attempts: u32,
    ) -> Flow {
        let state = if state == State::Scheduled {
            State::Scheduled
        } else {
            State::Queued
        };
        Flow {
            cfg,
            req,
            state,
            due,
            origin: due,
            attempts,
            agent: None,
            tried: BTreeSet::new(),
            visitor_calling: false,
            visitor_up: false,
            apologizing: false,
            hold_started: None,
            connected_at: None,
            timers: [None; TIMERS],
            commands: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The request.
    pub fn request(&self) -> &CallbackRequest {
        &self.req
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Due time (queue order: due time, then arrival).
    pub fn due(&self) -> Time {
        self.due
    }

    /// Attempts made to reach the visitor.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The agent being called or connected, if any.
    pub fn agent(&self) -> Option<&str> {
        self.agent.as_ref().map(|a| a.name.as_str())
    }

    /// Whether a call leg may still be up (includes the apology after a final `missed`).
    pub fn has_legs(&self) -> bool {
        self.state.is_active() || self.apologizing
    }

    /// Whether the visitor holds with no agent being called.
    pub fn wants_agent(&self) -> bool {
        self.state == State::Holding && self.agent.is_none() && !self.apologizing
    }

    /// Next command for the call layer.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Next state-change event (persist it before executing the commands).
    pub fn poll_event(&mut self) -> Option<RequestEvent> {
        self.events.pop_front()
    }

    /// Earliest timer.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.iter().flatten().min().copied()
    }

    fn emit(&mut self, state: State, kind: EventKind, now: Time) {
        self.state = state;
        self.events.push_back(RequestEvent {
            at: now,
            kind,
            state,
        });
    }

    fn set_timer(&mut self, t: Timer, at: Option<Time>) {
        self.timers[t as usize] = at;
    }

    fn clear_call_timers(&mut self) {
        for t in [
            Timer::MaxHold,
            Timer::StillConnecting,
            Timer::Confirm,
            Timer::Recheck,
            Timer::AgentRing,
        ] {
            self.set_timer(t, None);
        }
    }

    /// Scheduled → queued (the dispatcher found it due and the centre open).
    pub fn make_due(&mut self, now: Time) {
        if self.state == State::Scheduled {
            self.emit(State::Queued, EventKind::Queued, now);
        }
    }

    /// Scheduled or queued → scheduled at `due`.
    pub fn reschedule(&mut self, due: Time, reason: ScheduleReason, now: Time) {
        if matches!(self.state, State::Scheduled | State::Queued) {
            self.due = due;
            self.emit(State::Scheduled, EventKind::Scheduled { due, reason }, now);
        }
    }

    /// Starts an attempt from `queued`. Agent-first needs a free agent: returns `false` (and stays queued) without.
    pub fn start(&mut self, agents: &mut Agents, now: Time) -> bool {
        if self.state != State::Queued {
            return false;
        }
        self.tried.clear();
        match self.req.strategy {
            Strategy::AgentFirst => self.call_agent(agents, now),
            _ => {
                self.call_visitor(now);
                true
            }
        }
    }

    fn call_visitor(&mut self, now: Time) {
        self.attempts = self.attempts.saturating_add(1);
        self.visitor_calling = true;
        self.set_timer(
            Timer::VisitorRing,
            Some(add(now, self.cfg().visitor_ring_timeout)),
        );
        self.emit(
            State::CallingVisitor,
            EventKind::CallingVisitor {
                attempt: self.attempts,
            },
            now,
        );
        let caller_id = self.cfg().caller_id.clone();
        self.commands.push_back(Command::CallVisitor {
            number: self.req.phone.clone(),
            caller_id,
        });
    }

    fn cfg(&self) -> &FlowConfig {
        &self.cfg
    }

    /// Calls the longest-idle available agent not yet tried; `false` if none.
    fn call_agent(&mut self, agents: &mut Agents, now: Time) -> bool {
        let Some(name) = agents
            .select(&self.req.skills, &self.tried, now)
            .map(str::to_owned)
        else {
            return false;
        };
        let Some(uri) = agents.config(&name).map(|c| c.uri.clone()) else {
            return false;
        };
        if agents.reserve(&name).is_err() {
            return false;
        }
        self.set_timer(Timer::Recheck, None);
        self.set_timer(
            Timer::AgentRing,
            Some(add(now, self.cfg().agent_ring_timeout)),
        );
        self.agent = Some(AgentLeg {
            name: name.clone(),
            answered: false,
            whispering: false,
        });
        let kind = EventKind::CallingAgent {
            agent: name.clone(),
            topic: self.req.topic.clone(),
            context: self.req.context.clone(),
        };
        self.emit(State::CallingAgent, kind, now);
        let whisper = self
            .cfg()
            .whisper
            .then(|| Prompt::Whisper(self.req.topic.clone()));
        self.commands.push_back(Command::CallAgent {
            agent: name,
            uri,
            whisper,
        });
        true
    }

    /// While holding without an agent: call one if available, else look again after `agent_recheck`.
    pub fn try_assign(&mut self, agents: &mut Agents, now: Time) -> bool {
        if !self.wants_agent() {
            return false;
        }
        if self.call_agent(agents, now) {
            return true;
        }
        // Nobody free who was not tried in this round: look again later (a new round then).
        if self.timers[Timer::Recheck as usize].is_none() {
            self.set_timer(Timer::Recheck, Some(add(now, self.cfg().agent_recheck)));
        }
        false
    }

    fn start_hold(&mut self, now: Time) {
        self.hold_started = Some(now);
        self.set_timer(Timer::MaxHold, Some(add(now, self.cfg().max_hold)));
        self.set_timer(
            Timer::StillConnecting,
            Some(add(now, self.cfg().still_connecting_every)),
        );
    }

    fn play(&mut self, leg: Leg, prompt: Prompt) {
        self.commands.push_back(Command::Play { leg, prompt });
    }

    /// Withdraws the agent leg: cancel if ringing, hang up if answered. `missed` charges a miss to a ringing agent.
    fn drop_agent(
        &mut self,
        agents: &mut Agents,
        now: Time,
        missed: Option<CallFailure>,
        cancel: bool,
    ) {
        let Some(leg) = self.agent.take() else { return };
        self.set_timer(Timer::AgentRing, None);
        if leg.answered {
            self.commands.push_back(Command::HangUp { leg: Leg::Agent });
            let _ = agents.released(&leg.name, now, None);
        } else {
            if cancel {
                self.commands.push_back(Command::CancelAgentCall);
            }
            match missed {
                Some(reason) => {
                    self.tried.insert(leg.name.clone());
                    let paused = agents.missed(&leg.name).unwrap_or(false);
                    self.events.push_back(RequestEvent {
                        at: now,
                        kind: EventKind::AgentFailed {
                            agent: leg.name.clone(),
                            reason,
                        },
                        state: self.state,
                    });
                    if paused {
                        self.events.push_back(RequestEvent {
                            at: now,
                            kind: EventKind::AgentAutoPaused { agent: leg.name },
                            state: self.state,
                        });
                    }
                }
                None => {
                    let _ = agents.withdrawn(&leg.name);
                }
            }
        }
    }

    fn attempt_failed(&mut self, agents: &mut Agents, reason: CallFailure, now: Time) {
        self.visitor_calling = false;
        self.visitor_up = false;
        self.set_timer(Timer::VisitorRing, None);
        self.clear_call_timers();
        self.drop_agent(agents, now, None, true);
        self.hold_started = None;
        let attempt = self.attempts;
        self.events.push_back(RequestEvent {
            at: now,
            kind: EventKind::AttemptFailed { attempt, reason },
            state: self.state,
        });
        if attempt >= self.cfg().max_attempts.max(1) {
            self.emit(
                State::Missed,
                EventKind::Missed {
                    reason: MissReason::RetriesExhausted,
                },
                now,
            );
        } else {
            let due = add(now, self.cfg().backoff(attempt));
            self.due = due;
            self.emit(
                State::Scheduled,
                EventKind::Scheduled {
                    due,
                    reason: ScheduleReason::Retry,
                },
                now,
            );
        }
    }

    fn apologize(&mut self, agents: &mut Agents, now: Time) {
        self.drop_agent(agents, now, None, true);
        self.clear_call_timers();
        self.apologizing = true;
        self.set_timer(Timer::Apology, Some(add(now, self.cfg().apology_timeout)));
        self.play(Leg::Visitor, Prompt::Apology);
        self.emit(
            State::Missed,
            EventKind::Missed {
                reason: MissReason::MaxHold,
            },
            now,
        );
    }

    fn end_apology(&mut self) {
        self.apologizing = false;
        self.set_timer(Timer::Apology, None);
        if self.visitor_up {
            self.visitor_up = false;
            self.commands
                .push_back(Command::HangUp { leg: Leg::Visitor });
        }
    }

    fn bridge(&mut self, now: Time) {
        let Some(agent) = self.agent.as_ref().map(|a| a.name.clone()) else {
            return;
        };
        self.clear_call_timers();
        self.connected_at = Some(now);
        let hold = self.hold_started.map(|h| since(h, now)).unwrap_or_default();
        self.commands.push_back(Command::Bridge);
        self.emit(
            State::Connected,
            EventKind::Connected {
                agent,
                hold,
                time_to_connect: since(self.origin, now),
            },
            now,
        );
    }

    fn complete(&mut self, agents: &mut Agents, now: Time) {
        let talk = self.connected_at.map(|c| since(c, now)).unwrap_or_default();
        if let Some(leg) = self.agent.take() {
            let _ = agents.released(&leg.name, now, Some(talk));
        }
        self.visitor_up = false;
        self.emit(State::Completed, EventKind::Completed { talk }, now);
    }

    /// Handles a call-layer event.
    pub fn handle_input(&mut self, input: Input, agents: &mut Agents, now: Time) {
        let strategy = self.req.strategy;
        match (input, self.state) {
            (Input::VisitorRinging, _) => {}
            (Input::VisitorAnswered, State::CallingVisitor) => {
                self.visitor_calling = false;
                self.visitor_up = true;
                self.set_timer(Timer::VisitorRing, None);
                match strategy {
                    Strategy::AgentFirst => {
                        self.events.push_back(RequestEvent {
                            at: now,
                            kind: EventKind::VisitorAnswered,
                            state: self.state,
                        });
                        self.bridge(now);
                    }
                    Strategy::Confirmation => {
                        self.emit(State::Confirming, EventKind::VisitorAnswered, now);
                        self.play(Leg::Visitor, Prompt::Confirm);
                        self.set_timer(Timer::Confirm, Some(add(now, self.cfg().confirm_timeout)));
                    }
                    _ => {
                        self.emit(State::Holding, EventKind::VisitorAnswered, now);
                        self.play(Leg::Visitor, Prompt::Greeting);
                        self.start_hold(now);
                        self.try_assign(agents, now);
                    }
                }
            }
            (Input::VisitorFailed(reason), State::CallingVisitor) => {
                self.attempt_failed(agents, reason, now)
            }
            (Input::VisitorHungUp, State::CallingVisitor) => {
                self.attempt_failed(agents, CallFailure::Failed, now)
            }
            (Input::VisitorHungUp, State::Confirming) => {
                self.attempt_failed(agents, CallFailure::NotConfirmed, now)
            }
            (Input::VisitorHungUp, State::Holding | State::CallingAgent) => {
                self.visitor_up = false;
                self.drop_agent(agents, now, None, true);
                self.clear_call_timers();
                self.emit(
                    State::Missed,
                    EventKind::Missed {
                        reason: MissReason::VisitorHungUp,
                    },
                    now,
                );
            }
            (Input::VisitorHungUp, State::Connected) => {
                self.commands.push_back(Command::HangUp { leg: Leg::Agent });
                self.complete(agents, now);
            }
            (Input::VisitorHungUp, _) if self.apologizing => {
                self.visitor_up = false;
                self.end_apology();
            }
            (Input::DtmfReceived(d), State::Confirming) if d == self.cfg().confirm_digit => {
                self.set_timer(Timer::Confirm, None);
                self.emit(State::Holding, EventKind::Confirmed, now);
                self.play(Leg::Visitor, Prompt::HoldMusic);
                self.start_hold(now);
                self.try_assign(agents, now);
            }
            (Input::AgentAnswered, State::CallingAgent) => {
                let Some(leg) = self.agent.as_mut().filter(|l| !l.answered) else {
                    return;
                };
                leg.answered = true;
                let name = leg.name.clone();
                let _ = agents.answered(&name);
                self.set_timer(Timer::AgentRing, None);
                self.events.push_back(RequestEvent {
                    at: now,
                    kind: EventKind::AgentAnswered { agent: name },
                    state: self.state,
                });
                if self.cfg().whisper {
                    if let Some(leg) = self.agent.as_mut() {
                        leg.whispering = true;
                    }
                    self.play(Leg::Agent, Prompt::Whisper(self.req.topic.clone()));
                } else {
                    self.after_whisper(now);
                }
            }
            (Input::AgentFailed(reason), State::CallingAgent) => {
                self.agent_failed(agents, reason, false, now)
            }
            (Input::AgentHungUp, State::Connected) => {
                self.commands
                    .push_back(Command::HangUp { leg: Leg::Visitor });
                self.complete(agents, now);
            }
            (Input::AgentHungUp, State::CallingAgent | State::CallingVisitor)
                if self.agent_answered() =>
            {
                // The agent left after answering, before the bridge.
                if let Some(leg) = self.agent.take() {
                    self.tried.insert(leg.name.clone());
                    let _ = agents.released(&leg.name, now, None);
                }
                if strategy == Strategy::AgentFirst {
                    if self.visitor_calling {
                        self.visitor_calling = false;
                        self.set_timer(Timer::VisitorRing, None);
                        self.commands
                            .push_back(Command::HangUp { leg: Leg::Visitor });
                    }
                    self.clear_call_timers();
                    self.emit(State::Queued, EventKind::Queued, now);
                } else {
                    self.emit(State::Holding, EventKind::Holding, now);
                    self.play(Leg::Visitor, Prompt::HoldMusic);
                    self.try_assign(agents, now);
                }
            }
            (Input::PlaybackFinished(Leg::Agent), State::CallingAgent) => {
                if let Some(leg) = self.agent.as_mut().filter(|l| l.whispering) {
                    leg.whispering = false;
                    self.after_whisper(now);
                }
            }
            (Input::PlaybackFinished(Leg::Visitor), _) if self.apologizing => self.end_apology(),
            (Input::PlaybackFinished(Leg::Visitor), State::Holding | State::CallingAgent)
                if self.visitor_up && strategy != Strategy::AgentFirst =>
            {
                self.play(Leg::Visitor, Prompt::HoldMusic);
            }
            _ => {}
        }
    }

    fn agent_answered(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| a.answered)
    }

    fn after_whisper(&mut self, now: Time) {
        if self.req.strategy == Strategy::AgentFirst {
            self.play(Leg::Agent, Prompt::HoldMusic);
            self.call_visitor(now);
        } else {
            self.bridge(now);
        }
    }

    fn agent_failed(&mut self, agents: &mut Agents, reason: CallFailure, cancel: bool, now: Time) {
        if self.agent_answered() {
            return;
        }
        self.drop_agent(agents, now, Some(reason), cancel);
        if self.req.strategy == Strategy::AgentFirst {
            if !self.call_agent(agents, now) {
                self.emit(State::Queued, EventKind::Queued, now);
            }
        } else {
            self.emit(State::Holding, EventKind::Holding, now);
            self.try_assign(agents, now);
        }
    }

    /// Cancels the request (API). Returns `false` if it was already final.
    pub fn cancel(&mut self, agents: &mut Agents, now: Time) -> bool {
        if self.state.is_final() {
            return false;
        }
        if self.state == State::Connected {
            self.commands.push_back(Command::HangUp { leg: Leg::Agent });
            self.commands
                .push_back(Command::HangUp { leg: Leg::Visitor });
            let talk = self.connected_at.map(|c| since(c, now));
            if let Some(leg) = self.agent.take() {
                let _ = agents.released(&leg.name, now, talk);
            }
        } else {
            self.drop_agent(agents, now, None, true);
            if self.visitor_calling || self.visitor_up {
                self.commands
                    .push_back(Command::HangUp { leg: Leg::Visitor });
            }
        }
        self.visitor_calling = false;
        self.visitor_up = false;
        self.timers = [None; TIMERS];
        self.emit(State::Cancelled, EventKind::Cancelled, now);
        true
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, agents: &mut Agents, now: Time) {
        // Each firing clears its timer; a handler may set timers in the future only, so this ends.
        for _ in 0..TIMERS * 2 {
            let Some(i) = (0..TIMERS)
                .filter(|i| self.timers[*i].is_some_and(|t| t <= now))
                .min_by_key(|i| self.timers[*i])
            else {
                return;
            };
            self.timers[i] = None;
            self.fire(i, agents, now);
        }
    }

    fn fire(&mut self, i: usize, agents: &mut Agents, now: Time) {
        const VR: usize = Timer::VisitorRing as usize;
        const AR: usize = Timer::AgentRing as usize;
        const MH: usize = Timer::MaxHold as usize;
        const SC: usize = Timer::StillConnecting as usize;
        const CF: usize = Timer::Confirm as usize;
        const RC: usize = Timer::Recheck as usize;
        const AP: usize = Timer::Apology as usize;
        match i {
            VR if self.state == State::CallingVisitor => {
                self.commands
                    .push_back(Command::HangUp { leg: Leg::Visitor });
                self.attempt_failed(agents, CallFailure::NoAnswer, now);
            }
            AR if self.state == State::CallingAgent => {
                self.agent_failed(agents, CallFailure::NoAnswer, true, now)
            }
            MH if matches!(self.state, State::Holding | State::CallingAgent) => {
                self.apologize(agents, now)
            }
            SC if matches!(self.state, State::Holding | State::CallingAgent) => {
                self.play(Leg::Visitor, Prompt::StillConnecting);
                self.set_timer(
                    Timer::StillConnecting,
                    Some(add(now, self.cfg().still_connecting_every)),
                );
            }
            CF if self.state == State::Confirming => {
                self.commands
                    .push_back(Command::HangUp { leg: Leg::Visitor });
                self.visitor_up = false;
                self.attempt_failed(agents, CallFailure::NotConfirmed, now);
            }
            RC => {
                self.tried.clear();
                self.try_assign(agents, now);
            }
            AP if self.apologizing => self.end_apology(),
            _ => {}
        }
    }
}
