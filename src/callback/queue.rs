//! The dispatcher: every request of the service, sans-IO.
//!
//! The [`Dispatcher`] owns the flows and the agents pool. It promotes scheduled requests when due (or moves them to
//! the next opening when the centre is closed), starts queued requests in order (due time, then arrival) up to the
//! cap on concurrent callbacks, offers free agents to held visitors in the same order, and reports queue position and
//! estimated wait. Outputs are tagged with the request id. [`Dispatcher::poll_timeout`] is the earliest of every
//! flow's timers, scheduled due times and (when someone waits for an agent) the next end of wrap-up.
//!
//! Flows are indexed by (state, due time, id) and by next deadline, and only the flows touched by a call are
//! re-indexed and drained, so one event costs O(log n) plus the requests it actually moves (see
//! `benches/callback_dispatch.rs`).
//!
//! The driver loop that keeps "persist before act": after any `handle_*`/`submit`/`cancel` call, drain
//! [`Dispatcher::poll_event`] into the [`Store`](super::store::Store) first, then execute
//! [`Dispatcher::poll_command`]s.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::agents::{AgentConfig, AgentError, Agents, AgentsPolicy};
use super::event::{RequestEvent, ScheduleReason, State};
use super::flow::{Command, Flow, FlowConfig, Input};
use super::metrics::Metrics;
use super::request::{CallbackRequest, NewRequest, RequestError, RequestId, Strategy};
use super::schedule::BusinessHours;
use super::{add, Time};

use chrono::{DateTime, Utc};

/// Service configuration.
#[derive(Debug, Clone)]
pub struct CallbackConfig {
    /// Per-request timings and limits.
    pub flow: FlowConfig,
    /// Agents pool policy (wrap-up, auto-pause).
    pub agents: AgentsPolicy,
    /// Opening hours.
    pub hours: BusinessHours,
    /// Cap on requests with a call up at once.
    pub max_concurrent: usize,
    /// Strategy for requests that do not choose one.
    pub default_strategy: Strategy,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            flow: FlowConfig::default(),
            agents: AgentsPolicy::default(),
            hours: BusinessHours::always_open(),
            max_concurrent: 10,
            default_strategy: Strategy::VisitorFirst,
        }
    }
}

/// Errors from the dispatcher API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// No live request with that id (finished requests are only in the store).
    #[error("no live request {0}")]
    Unknown(RequestId),
    /// The request is already final.
    #[error("request {0} is already final")]
    Final(RequestId),
    /// The request was refused.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Agents API error.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// What the API answers to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The new id.
    pub id: RequestId,
    /// `scheduled` or `queued`.
    pub state: State,
    /// When the callback is due (the next opening if the wished time is outside hours).
    pub due: Time,
    /// The request as validated (store it with the first events).
    pub request: CallbackRequest,
}

/// A live request's state as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestStatus {
    /// Id.
    pub id: RequestId,
    /// State.
    pub state: State,
    /// Due time.
    pub due: Time,
    /// Attempts made.
    pub attempts: u32,
    /// Agent being called or connected.
    pub agent: Option<String>,
    /// Requests ahead in the line for an agent (0 = next), for due requests without an agent.
    pub queue_position: Option<usize>,
    /// Estimated wait for an agent.
    pub estimated_wait: Option<Duration>,
}

/// Where a flow sits in the indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Indexed {
    state: State,
    due: Time,
    deadline: Option<Time>,
    legs: bool,
}

/// The set of requests of the service.
#[derive(Debug)]
pub struct Dispatcher {
    flow_cfg: Arc<FlowConfig>,
    hours: BusinessHours,
    max_concurrent: usize,
    default_strategy: Strategy,
    agents: Agents,
    flows: BTreeMap<RequestId, Flow>,
    /// Live flows by (state, due, id): queue order within each state.
    by_state: BTreeSet<(State, Time, RequestId)>,
    /// Live flows by next deadline (flow timer, or due time when scheduled).
    deadlines: BTreeSet<(Time, RequestId)>,
    indexed: HashMap<RequestId, Indexed>,
    /// Flows with a call leg up (the cap counts these).
    active: usize,
    touched: BTreeSet<RequestId>,
    next_id: u64,
    now: Option<Time>,
    commands: VecDeque<(RequestId, Command)>,
    events: VecDeque<(RequestId, RequestEvent)>,
    metrics: Metrics,
}

impl Dispatcher {
    /// A dispatcher with the configured agents (signed in from `now`). Ids start at `first_id`.
    pub fn new(
        config: CallbackConfig,
        agents: Vec<AgentConfig>,
        first_id: u64,
        now: Time,
    ) -> Result<Self, AgentError> {
        Ok(Dispatcher {
            flow_cfg: Arc::new(config.flow),
            hours: config.hours,
            max_concurrent: config.max_concurrent,
            default_strategy: config.default_strategy,
            agents: Agents::new(agents, config.agents, now)?,
            flows: BTreeMap::new(),
            by_state: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            indexed: HashMap::new(),
            active: 0,
            touched: BTreeSet::new(),
            next_id: first_id,
            now: Some(now),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            metrics: Metrics::default(),
        })
    }

    /// Accepts a request. Due at the wished time or now, moved to the next opening if the centre is closed then.
    ///
    /// Store [`Submitted::request`] (`Store::insert_request`) before draining the events: they refer to it.
    pub fn submit(&mut self, new: NewRequest, now: Time) -> Result<Submitted, DispatchError> {
        let id = RequestId(self.next_id);
        let req = new.validate(id, now, self.default_strategy)?;
        let wished = req.wished_at.filter(|w| *w > now);
        let base = wished.unwrap_or(now);
        let due = self.hours.next_open(base).ok_or(RequestError::NeverOpen)?;
        let reason = if due > base {
            ScheduleReason::OutsideHours
        } else {
            ScheduleReason::Requested
        };
        self.next_id = self.next_id.saturating_add(1);
        let flow = Flow::submit(self.flow_cfg.clone(), req.clone(), due, reason, now);
        let state = flow.state();
        self.flows.insert(id, flow);
        self.touched.insert(id);
        self.pump(now);
        Ok(Submitted {
            id,
            state,
            due,
            request: req,
        })
    }

    /// Puts back a request loaded from the store (`scheduled` or `queued`, see `store::recover`).
    pub fn restore(
        &mut self,
        req: CallbackRequest,
        state: State,
        due: Time,
        attempts: u32,
        now: Time,
    ) {
        self.next_id = self.next_id.max(req.id.0.saturating_add(1));
        let id = req.id;
        self.flows.insert(
            id,
            Flow::restore(self.flow_cfg.clone(), req, state, due, attempts),
        );
        self.touched.insert(id);
        self.pump(now);
    }

    /// Cancels a live request.
    pub fn cancel(&mut self, id: RequestId, now: Time) -> Result<(), DispatchError> {
        let flow = self.flows.get_mut(&id).ok_or(DispatchError::Unknown(id))?;
        if !flow.cancel(&mut self.agents, now) {
            return Err(DispatchError::Final(id));
        }
        self.touched.insert(id);
        self.pump(now);
        Ok(())
    }

    /// Delivers a call-layer event for request `id`.
    pub fn handle_input(
        &mut self,
        id: RequestId,
        input: Input,
        now: Time,
    ) -> Result<(), DispatchError> {
        if !self.flows.contains_key(&id) {
            return Err(DispatchError::Unknown(id));
        }
        self.pump(now);
        if let Some(flow) = self.flows.get_mut(&id) {
            flow.handle_input(input, &mut self.agents, now);
            self.touched.insert(id);
        }
        self.pump(now);
        Ok(())
    }

    /// Fires everything due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.pump(now);
        let due: Vec<RequestId> = self
            .deadlines
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect();
        for id in due {
            if let Some(flow) = self.flows.get_mut(&id) {
                if flow.poll_timeout().is_some_and(|t| t <= now) {
                    flow.handle_timeout(&mut self.agents, now);
                    self.touched.insert(id);
                }
            }
        }
        self.pump(now);
    }

    /// The earliest instant something is due.
    pub fn poll_timeout(&self) -> Option<Time> {
        let first = self.deadlines.first().map(|(t, _)| *t);
        let waiting = [State::Holding, State::Queued]
            .iter()
            .any(|s| self.in_state(*s).next().is_some());
        let wrap_up = self
            .now
            .filter(|_| waiting)
            .and_then(|now| self.agents.next_wrap_up_end(now));
        first.into_iter().chain(wrap_up).min()
    }

    /// Next command for the call layer, with its request.
    pub fn poll_command(&mut self) -> Option<(RequestId, Command)> {
        self.commands.pop_front()
    }

    /// Next event to persist, with its request.
    pub fn poll_event(&mut self) -> Option<(RequestId, RequestEvent)> {
        self.events.pop_front()
    }

    /// The agents pool.
    pub fn agents(&self) -> &Agents {
        &self.agents
    }

    /// Metrics gathered from events.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Prometheus text exposition of the metrics and the agents' state.
    pub fn render_metrics(&self, now: Time) -> String {
        self.metrics.render(&self.agents, now)
    }

    /// Signs an agent in.
    pub fn sign_in(&mut self, name: &str, now: Time) -> Result<(), DispatchError> {
        self.agents.sign_in(name, now)?;
        self.pump(now);
        Ok(())
    }

    /// Signs an agent out.
    pub fn sign_out(&mut self, name: &str, now: Time) -> Result<(), DispatchError> {
        self.agents.sign_out(name)?;
        self.pump(now);
        Ok(())
    }

    /// Pauses an agent.
    pub fn pause(&mut self, name: &str, now: Time) -> Result<(), DispatchError> {
        self.agents.pause(name)?;
        self.pump(now);
        Ok(())
    }

    /// Resumes an agent.
    pub fn resume(&mut self, name: &str, now: Time) -> Result<(), DispatchError> {
        self.agents.resume(name, now)?;
        self.pump(now);
        Ok(())
    }

    /// Live requests, in queue order (due time, then arrival).
    pub fn live(&self) -> Vec<RequestId> {
        let mut v: Vec<(Time, RequestId)> = self
            .by_state
            .iter()
            .map(|(_, due, id)| (*due, *id))
            .collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }

    fn in_state(&self, state: State) -> impl Iterator<Item = (Time, RequestId)> + '_ {
        let lo = (state, DateTime::<Utc>::MIN_UTC, RequestId(0));
        let hi = (state, DateTime::<Utc>::MAX_UTC, RequestId(u64::MAX));
        self.by_state.range(lo..=hi).map(|(_, due, id)| (*due, *id))
    }

    /// A live request's state, queue position and estimated wait.
    ///
    /// The line for an agent holds due requests without an agent (queued, calling the visitor, confirming,
    /// holding) in queue order.
    pub fn status(&self, id: RequestId, now: Time) -> Option<RequestStatus> {
        let flow = self.flows.get(&id)?;
        let line_states = [
            State::Queued,
            State::CallingVisitor,
            State::Confirming,
            State::Holding,
        ];
        let (queue_position, estimated_wait) = if line_states.contains(&flow.state())
            && flow.agent().is_none()
        {
            let mut line: Vec<(Time, RequestId)> =
                line_states.iter().flat_map(|s| self.in_state(*s)).collect();
            line.sort();
            let pos = line.iter().position(|(_, x)| *x == id);
            let wait = pos.and_then(|p| self.agents.estimated_wait(&flow.request().skills, p, now));
            (pos, wait)
        } else {
            (None, None)
        };
        Some(RequestStatus {
            id,
            state: flow.state(),
            due: flow.due(),
            attempts: flow.attempts(),
            agent: flow.agent().map(str::to_owned),
            queue_position,
            estimated_wait,
        })
    }

    fn pump(&mut self, now: Time) {
        self.now = Some(self.now.map_or(now, |n| n.max(now)));
        self.settle();
        // 1. Scheduled requests that are due: queue them if open, else move them to the next opening.
        let due: Vec<RequestId> = self
            .in_state(State::Scheduled)
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| id)
            .collect();
        for id in due {
            self.gate(id, now);
        }
        self.settle();
        // 2. Free agents go to held visitors, in queue order.
        let holding: Vec<RequestId> = self.in_state(State::Holding).map(|(_, id)| id).collect();
        for id in holding {
            if let Some(f) = self.flows.get_mut(&id) {
                if f.try_assign(&mut self.agents, now) {
                    self.touched.insert(id);
                }
            }
            // A recheck timer may have been set.
            self.touched.insert(id);
            if self
                .agents
                .select(&BTreeSet::new(), &BTreeSet::new(), now)
                .is_none()
            {
                break;
            }
        }
        self.settle();
        // 3. Start queued requests up to the cap.
        let queued: Vec<RequestId> = self.in_state(State::Queued).map(|(_, id)| id).collect();
        for id in queued {
            if self.active >= self.max_concurrent {
                break;
            }
            if !self.hours.is_open(now) {
                self.gate(id, now);
            } else if let Some(f) = self.flows.get_mut(&id) {
                f.start(&mut self.agents, now);
            }
            self.touched.insert(id);
            // Re-index now so that `active` counts this start.
            self.settle();
        }
        self.settle();
        #[cfg(debug_assertions)]
        self.check_indexes();
    }

    /// Debug builds: the indexes agree with the flows (exercised by the random-walk test).
    #[cfg(debug_assertions)]
    fn check_indexes(&self) {
        debug_assert_eq!(self.indexed.len(), self.flows.len());
        debug_assert_eq!(self.by_state.len(), self.flows.len());
        debug_assert_eq!(
            self.active,
            self.flows.values().filter(|f| f.has_legs()).count()
        );
        for (id, f) in &self.flows {
            let due = (f.state() == State::Scheduled).then_some(f.due());
            let deadline = [f.poll_timeout(), due].into_iter().flatten().min();
            let ix = Indexed {
                state: f.state(),
                due: f.due(),
                deadline,
                legs: f.has_legs(),
            };
            debug_assert_eq!(self.indexed.get(id), Some(&ix), "request {id}");
        }
    }

    /// Drains the touched flows' outputs and re-indexes them; forgets finished flows (the store has them).
    fn settle(&mut self) {
        for id in std::mem::take(&mut self.touched) {
            if let Some(old) = self.indexed.remove(&id) {
                self.by_state.remove(&(old.state, old.due, id));
                if let Some(t) = old.deadline {
                    self.deadlines.remove(&(t, id));
                }
                if old.legs {
                    self.active = self.active.saturating_sub(1);
                }
            }
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            while let Some(ev) = f.poll_event() {
                self.metrics.observe(&ev);
                self.events.push_back((id, ev));
            }
            while let Some(c) = f.poll_command() {
                self.commands.push_back((id, c));
            }
            if f.state().is_final() && !f.has_legs() {
                self.flows.remove(&id);
                continue;
            }
            let due = (f.state() == State::Scheduled).then_some(f.due());
            let deadline = [f.poll_timeout(), due].into_iter().flatten().min();
            let ix = Indexed {
                state: f.state(),
                due: f.due(),
                deadline,
                legs: f.has_legs(),
            };
            self.by_state.insert((ix.state, ix.due, id));
            if let Some(t) = deadline {
                self.deadlines.insert((t, id));
            }
            if ix.legs {
                self.active += 1;
            }
            self.indexed.insert(id, ix);
        }
    }

    fn gate(&mut self, id: RequestId, now: Time) {
        let next = self.hours.next_open(now);
        let Some(f) = self.flows.get_mut(&id) else {
            return;
        };
        match next {
            Some(t) if t <= now => f.make_due(now),
            Some(t) => f.reschedule(t, ScheduleReason::OutsideHours, now),
            None => f.reschedule(
                add(now, Duration::from_secs(86_400)),
                ScheduleReason::OutsideHours,
                now,
            ),
        }
        self.touched.insert(id);
    }
}
