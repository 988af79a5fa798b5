//! The service task: owns the dispatcher and the call layer; persist, publish, act, sleep.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::hook::{self, WebhookStats};
use super::{tokio_deadline, with_store, Clock, ServiceConfig, ServiceError, SharedStore};
use crate::callback::calls::{CallControl, CallEvent, CallId, Dial, Prompts};
use crate::callback::event::{RequestEvent, State};
use crate::callback::flow::{Command, Input, Leg};
use crate::callback::queue::{DispatchError, Dispatcher, RequestStatus, Submitted};
use crate::callback::request::{normalise_phone, CallbackRequest, NewRequest, RequestId};
use crate::callback::Time;

/// Margin added to the flow's ring timeouts when dialling: the flow's own timer decides.
const RING_MARGIN: Duration = Duration::from_secs(2);

/// Agent admin operations.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AgentOp {
    SignIn,
    SignOut,
    Pause,
    Resume,
}

/// A request from a [`CallbackService`](super::CallbackService) handle to the task.
pub(crate) enum Op {
    Submit(
        Box<NewRequest>,
        oneshot::Sender<Result<Submitted, ServiceError>>,
    ),
    Cancel(RequestId, oneshot::Sender<Result<bool, ServiceError>>),
    Status(Vec<RequestId>, oneshot::Sender<Vec<Option<RequestStatus>>>),
    OpenFor(String, oneshot::Sender<Option<RequestId>>),
    Metrics(oneshot::Sender<String>),
    Agent(AgentOp, String, oneshot::Sender<Result<(), ServiceError>>),
    Shutdown(oneshot::Sender<()>),
}

/// The calls of one request.
#[derive(Debug, Default, Clone, Copy)]
struct Legs {
    visitor: Option<CallId>,
    agent: Option<CallId>,
}

impl Legs {
    fn get(&mut self, leg: Leg) -> &mut Option<CallId> {
        match leg {
            Leg::Visitor => &mut self.visitor,
            Leg::Agent => &mut self.agent,
        }
    }
}

/// Counters of the tokio layer (the dispatcher counts the rest).
#[derive(Debug, Default)]
struct Counters {
    store_errors: AtomicU64,
    late_call_events: AtomicU64,
    dropped_by_store: AtomicU64,
}

pub(crate) struct Core<C: CallControl> {
    disp: Dispatcher,
    calls: C,
    calls_open: bool,
    store: SharedStore,
    clock: Arc<dyn Clock>,
    prompts: Prompts,
    visitor_uri: String,
    record_dir: Option<std::path::PathBuf>,
    caller_id: String,
    visitor_ring: Duration,
    agent_ring: Duration,
    legs: HashMap<RequestId, Legs>,
    by_call: HashMap<CallId, (RequestId, Leg)>,
    open_by_phone: HashMap<String, RequestId>,
    phone_of: HashMap<RequestId, String>,
    inserts: Vec<(CallbackRequest, State, Time)>,
    events_tx: broadcast::Sender<(RequestId, RequestEvent)>,
    webhook: Option<mpsc::Sender<(RequestId, RequestEvent)>>,
    webhook_task: Option<tokio::task::JoinHandle<()>>,
    webhook_stats: Arc<WebhookStats>,
    live_calls: Arc<AtomicUsize>,
    counters: Counters,
}

impl<C: CallControl> Core<C> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &ServiceConfig,
        disp: Dispatcher,
        calls: C,
        store: SharedStore,
        clock: Arc<dyn Clock>,
        events_tx: broadcast::Sender<(RequestId, RequestEvent)>,
        live_calls: Arc<AtomicUsize>,
        open: Vec<(String, RequestId)>,
    ) -> Core<C> {
        let webhook_stats = Arc::new(WebhookStats::default());
        let (webhook, webhook_task) = match &config.webhook {
            Some(w) => {
                let (tx, task) = hook::spawn(w.clone(), clock.clone(), webhook_stats.clone());
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let flow = &config.callback.flow;
        Core {
            disp,
            calls,
            calls_open: true,
            store,
            clock,
            prompts: config.prompts.clone(),
            visitor_uri: config.visitor_uri.clone(),
            record_dir: config.record_dir.clone(),
            caller_id: flow.caller_id.clone(),
            visitor_ring: flow.visitor_ring_timeout,
            agent_ring: flow.agent_ring_timeout,
            legs: HashMap::new(),
            by_call: HashMap::new(),
            phone_of: open.iter().map(|(p, id)| (*id, p.clone())).collect(),
            open_by_phone: open.into_iter().collect(),
            inserts: Vec::new(),
            events_tx,
            webhook,
            webhook_task,
            webhook_stats,
            live_calls,
            counters: Counters::default(),
        }
    }

    /// The task; `recovered` are the events the start-up recovery stored (published first).
    pub(crate) async fn run(
        mut self,
        mut ops: mpsc::Receiver<Op>,
        recovered: Vec<(RequestId, RequestEvent)>,
    ) {
        self.publish(recovered);
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            self.flush().await;
            let wake = self
                .disp
                .poll_timeout()
                .unwrap_or_else(|| crate::callback::add(self.clock.now(), Duration::from_secs(60)));
            sleep
                .as_mut()
                .reset(tokio_deadline(self.clock.as_ref(), wake));
            tokio::select! {
                op = ops.recv() => match op {
                    Some(Op::Shutdown(done)) => {
                        self.stop();
                        let _ = done.send(());
                        return;
                    }
                    Some(op) => self.handle_op(op).await,
                    None => {
                        self.stop();
                        return;
                    }
                },
                ev = self.calls.next_event(), if self.calls_open => match ev {
                    Some((call, ev)) => self.on_call_event(call, ev),
                    None => {
                        tracing::error!("call layer stopped; no more call events");
                        self.calls_open = false;
                    }
                },
                () = &mut sleep => {
                    let now = self.clock.now();
                    self.disp.handle_timeout(now);
                }
            }
        }
    }

    fn stop(&mut self) {
        // Hang up what is up; the store keeps the requests for recovery at the next start.
        for (call, _) in std::mem::take(&mut self.by_call) {
            self.calls.hang_up(call);
        }
        self.legs.clear();
        self.live_calls.store(0, Ordering::Relaxed);
        self.webhook = None;
        if let Some(task) = self.webhook_task.take() {
            task.abort();
        }
    }

    async fn handle_op(&mut self, op: Op) {
        let now = self.clock.now();
        match op {
            Op::Submit(req, reply) => {
                let r = self.submit(*req, now).await;
                let _ = reply.send(r);
            }
            Op::Cancel(id, reply) => {
                let r = match self.disp.cancel(id, now) {
                    Ok(()) => {
                        self.flush().await;
                        Ok(true)
                    }
                    Err(DispatchError::Unknown(_) | DispatchError::Final(_)) => Ok(false),
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(r);
            }
            Op::Status(ids, reply) => {
                let out = ids.iter().map(|id| self.disp.status(*id, now)).collect();
                let _ = reply.send(out);
            }
            Op::OpenFor(phone, reply) => {
                let _ = reply.send(self.open_by_phone.get(&phone).copied());
            }
            Op::Metrics(reply) => {
                let _ = reply.send(self.render_metrics(now));
            }
            Op::Agent(op, name, reply) => {
                let r = match op {
                    AgentOp::SignIn => self.disp.sign_in(&name, now),
                    AgentOp::SignOut => self.disp.sign_out(&name, now),
                    AgentOp::Pause => self.disp.pause(&name, now),
                    AgentOp::Resume => self.disp.resume(&name, now),
                };
                self.flush().await;
                let _ = reply.send(r.map_err(ServiceError::from));
            }
            Op::Shutdown(done) => {
                let _ = done.send(());
            }
        }
    }

    async fn submit(&mut self, req: NewRequest, now: Time) -> Result<Submitted, ServiceError> {
        if let Some(open) = normalise_phone(&req.phone).and_then(|p| self.open_by_phone.get(&p)) {
            return Err(ServiceError::AlreadyOpen(*open));
        }
        let sub = self.disp.submit(req, now)?;
        self.open_by_phone.insert(sub.request.phone.clone(), sub.id);
        self.phone_of.insert(sub.id, sub.request.phone.clone());
        self.inserts
            .push((sub.request.clone(), State::Queued, sub.due));
        let failed = self.flush().await;
        if let Some(e) = failed.into_iter().find(|(id, _)| *id == sub.id) {
            return Err(ServiceError::Store(e.1));
        }
        Ok(sub)
    }

    /// Persists every pending event, publishes it, then executes the commands; repeats while the dispatcher has
    /// output. Returns the requests whose writes failed (they were cancelled).
    async fn flush(&mut self) -> Vec<(RequestId, crate::callback::store::StoreError)> {
        let mut failures = Vec::new();
        for _ in 0..16 {
            let inserts = std::mem::take(&mut self.inserts);
            let events: Vec<(RequestId, RequestEvent)> =
                std::iter::from_fn(|| self.disp.poll_event()).collect();
            let commands: Vec<(RequestId, Command)> =
                std::iter::from_fn(|| self.disp.poll_command()).collect();
            if inserts.is_empty() && events.is_empty() && commands.is_empty() {
                break;
            }
            // 1. Persist.
            let (written, failed) = Self::persist(&self.store, inserts, events).await;
            let failed_ids: BTreeSet<RequestId> = failed.iter().map(|(id, _)| *id).collect();
            // 2. Publish what is stored.
            self.publish(written);
            // 3. Act: nothing for a request whose events are not stored, except hanging up.
            for (id, cmd) in commands {
                let undo = matches!(cmd, Command::HangUp { .. } | Command::CancelAgentCall);
                if failed_ids.contains(&id) && !undo {
                    self.counters
                        .dropped_by_store
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.execute(id, cmd);
            }
            let now = self.clock.now();
            for (id, e) in failed {
                tracing::error!(request = %id, error = %e, "store write failed; cancelling the request");
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                let _ = self.disp.cancel(id, now);
                self.close(id);
                failures.push((id, e));
            }
            self.sweep();
        }
        self.live_calls.store(self.by_call.len(), Ordering::Relaxed);
        failures
    }

    /// Hands stored events to the subscribers and the webhook.
    fn publish(&mut self, events: Vec<(RequestId, RequestEvent)>) {
        for (id, ev) in events {
            if ev.state.is_final() {
                self.close(id);
            }
            if let Some(w) = &self.webhook {
                if w.try_send((id, ev.clone())).is_err() {
                    self.webhook_stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = self.events_tx.send((id, ev));
        }
    }

    /// The request is final: its number may have a new request, and a browser leg still parked for it (never
    /// dialled: cancelled, missed in the queue) is hung up now.
    fn close(&mut self, id: RequestId) {
        if let Some(phone) = self.phone_of.remove(&id) {
            if self.open_by_phone.get(&phone) == Some(&id) {
                self.open_by_phone.remove(&phone);
            }
            if super::super::calls::is_browser_target(&phone) {
                self.calls.release(&phone);
            }
        }
    }

    /// Writes the batch in one blocking task; returns the events written, in order, and the failures.
    #[allow(clippy::type_complexity)]
    async fn persist(
        store: &SharedStore,
        inserts: Vec<(CallbackRequest, State, Time)>,
        events: Vec<(RequestId, RequestEvent)>,
    ) -> (
        Vec<(RequestId, RequestEvent)>,
        Vec<(RequestId, crate::callback::store::StoreError)>,
    ) {
        let r = with_store(store, move |s| {
            let mut failed: Vec<(RequestId, crate::callback::store::StoreError)> = Vec::new();
            let is_failed = |f: &[(RequestId, _)], id| f.iter().any(|(x, _)| *x == id);
            for (req, state, due) in &inserts {
                if let Err(e) = s.insert_request(req, *state, *due) {
                    failed.push((req.id, e));
                }
            }
            let mut written = Vec::with_capacity(events.len());
            for (id, ev) in events {
                if is_failed(&failed, id) {
                    continue;
                }
                match s.append_event(id, &ev) {
                    Ok(()) => written.push((id, ev)),
                    Err(e) => failed.push((id, e)),
                }
            }
            Ok((written, failed))
        })
        .await;
        r.unwrap_or_else(|e| {
            tracing::error!(error = %e, "store task failed");
            (Vec::new(), Vec::new())
        })
    }

    fn map(&mut self, id: RequestId, leg: Leg, call: CallId) {
        if let Some(old) = self.legs.entry(id).or_default().get(leg).replace(call) {
            // Never two calls on one leg: the older one is over for the flow.
            self.by_call.remove(&old);
            self.calls.hang_up(old);
        }
        self.by_call.insert(call, (id, leg));
    }

    fn unmap(&mut self, id: RequestId, leg: Leg) -> Option<CallId> {
        let legs = self.legs.get_mut(&id)?;
        let call = legs.get(leg).take();
        if legs.visitor.is_none() && legs.agent.is_none() {
            self.legs.remove(&id);
        }
        if let Some(c) = call {
            self.by_call.remove(&c);
        }
        call
    }

    fn leg(&self, id: RequestId, leg: Leg) -> Option<CallId> {
        let mut legs = *self.legs.get(&id)?;
        *legs.get(leg)
    }

    fn execute(&mut self, id: RequestId, cmd: Command) {
        match cmd {
            Command::CallVisitor { number, caller_id } => {
                // A call from the browser: the visitor's leg is parked under this key, dial it as is.
                let target = if super::super::calls::is_browser_target(&number) {
                    number
                } else {
                    self.visitor_uri.replace("{number}", &number)
                };
                let dial = Dial {
                    target,
                    caller_id,
                    ring_timeout: self.visitor_ring.saturating_add(RING_MARGIN),
                };
                let call = self.calls.dial(dial);
                self.map(id, Leg::Visitor, call);
            }
            Command::CallAgent { uri, .. } => {
                let dial = Dial {
                    target: uri,
                    caller_id: self.caller_id.clone(),
                    ring_timeout: self.agent_ring.saturating_add(RING_MARGIN),
                };
                let call = self.calls.dial(dial);
                self.map(id, Leg::Agent, call);
            }
            Command::Play { leg, prompt } => {
                if let Some(call) = self.leg(id, leg) {
                    self.calls.play(call, self.prompts.playlist(&prompt));
                }
            }
            Command::Bridge => {
                if let (Some(v), Some(a)) = (self.leg(id, Leg::Visitor), self.leg(id, Leg::Agent)) {
                    match &self.record_dir {
                        Some(dir) => {
                            self.calls
                                .bridge_recorded(v, a, dir.join(format!("{id}.wav")))
                        }
                        None => self.calls.bridge(v, a),
                    }
                }
            }
            Command::HangUp { leg } => {
                if let Some(call) = self.unmap(id, leg) {
                    self.calls.hang_up(call);
                }
            }
            Command::CancelAgentCall => {
                if let Some(call) = self.unmap(id, Leg::Agent) {
                    self.calls.cancel(call);
                }
            }
        }
    }

    /// Hangs up calls left to requests the dispatcher has finished with (nothing should be left; a safety net).
    fn sweep(&mut self) {
        let now = self.clock.now();
        let gone: Vec<RequestId> = self
            .legs
            .keys()
            .filter(|id| self.disp.status(**id, now).is_none())
            .copied()
            .collect();
        for id in gone {
            for leg in [Leg::Visitor, Leg::Agent] {
                if let Some(call) = self.unmap(id, leg) {
                    tracing::warn!(request = %id, %call, "hanging up a call left to a finished request");
                    self.calls.hang_up(call);
                }
            }
        }
    }

    fn on_call_event(&mut self, call: CallId, ev: CallEvent) {
        let Some(&(id, leg)) = self.by_call.get(&call) else {
            // A late event of a call the flow is done with.
            self.counters
                .late_call_events
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if matches!(ev, CallEvent::Failed(_) | CallEvent::HungUp) {
            self.unmap(id, leg);
        }
        let input = match (leg, ev) {
            (Leg::Visitor, CallEvent::Ringing) => Input::VisitorRinging,
            (Leg::Visitor, CallEvent::Answered) => Input::VisitorAnswered,
            (Leg::Visitor, CallEvent::Failed(f)) => Input::VisitorFailed(f),
            (Leg::Visitor, CallEvent::HungUp) => Input::VisitorHungUp,
            (Leg::Visitor, CallEvent::Dtmf(d)) => Input::DtmfReceived(d),
            (Leg::Agent, CallEvent::Answered) => Input::AgentAnswered,
            (Leg::Agent, CallEvent::Failed(f)) => Input::AgentFailed(f),
            (Leg::Agent, CallEvent::HungUp) => Input::AgentHungUp,
            (leg, CallEvent::PlayFinished) => Input::PlaybackFinished(leg),
            (Leg::Agent, CallEvent::Ringing | CallEvent::Dtmf(_)) => return,
        };
        let now = self.clock.now();
        if let Err(e) = self.disp.handle_input(id, input, now) {
            tracing::debug!(request = %id, error = %e, "call event for a finished request");
            for leg in [Leg::Visitor, Leg::Agent] {
                if let Some(c) = self.unmap(id, leg) {
                    self.calls.hang_up(c);
                }
            }
        }
    }

    fn render_metrics(&self, now: Time) -> String {
        use std::fmt::Write as _;
        let mut out = self.disp.render_metrics(now);
        let c = &self.counters;
        let w = &self.webhook_stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP rappel_callback_live_calls Calls in progress.\n# TYPE rappel_callback_live_calls gauge\n\
             rappel_callback_live_calls {}",
            self.by_call.len()
        );
        let counters = [
            (
                "rappel_callback_store_errors_total",
                "Store writes that failed (their requests were cancelled).",
                get(&c.store_errors),
            ),
            (
                "rappel_callback_late_call_events_total",
                "Call events dropped because their call was already over for the flow.",
                get(&c.late_call_events),
            ),
            (
                "rappel_callback_commands_not_executed_total",
                "Commands not executed because their events could not be stored.",
                get(&c.dropped_by_store),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let name = "rappel_callback_webhook_deliveries_total";
        let _ = writeln!(
            out,
            "# HELP {name} Webhook deliveries by outcome.\n# TYPE {name} counter"
        );
        for (result, v) in [
            ("delivered", get(&w.delivered)),
            ("retried", get(&w.retried)),
            ("failed", get(&w.failed)),
            ("dropped", get(&w.dropped)),
        ] {
            let _ = writeln!(out, "{name}{{result=\"{result}\"}} {v}");
        }
        out
    }
}
