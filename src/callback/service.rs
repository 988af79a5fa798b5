//! The callback service: the tokio layer that runs the sans-IO [`Dispatcher`] against a store and a call layer.
//!
//! One task owns the [`Dispatcher`], the [`CallControl`] and the map between calls and requests. Everything else
//! (the HTTP API, admin tools) talks to it through a [`CallbackService`] handle, which is cheap to share.
//!
//! The task's loop, in order, after every input (API call, call event, timer):
//! 1. drain the dispatcher's events and **persist** them (new requests first, then each event with its new state,
//!    in one blocking batch off the runtime threads);
//! 2. publish the persisted events (broadcast to [`subscribers`](CallbackService::subscribe), the webhook queue);
//! 3. only then **execute** the commands: dial, play, bridge, hang up (persist before act: the store is never
//!    behind what the phones did, so a crash loses no request);
//! 4. sleep on ONE timer until the dispatcher's [`poll_timeout`](Dispatcher::poll_timeout).
//!
//! If an event cannot be written, its request's commands are not executed (hang-ups excepted) and the request is
//! cancelled. Call events are mapped to the request and leg that placed the call; once a leg was hung up or
//! cancelled its id is forgotten, so its late events (a 487 after a CANCEL) are dropped, as the flow requires.
//!
//! At start, [`recover`] runs on the store: scheduled and queued requests keep their due time, interrupted ones are
//! requeued or marked missed ([`RecoveryPolicy`]), each with a `recovered` event.
//!
//! **Time**: the wall clock is read only here, through a [`Clock`]. [`SystemClock`] reads `Utc::now()`;
//! [`TokioClock`] follows tokio's clock from a fixed origin, so a test with paused tokio time drives the service
//! (timers, ring timeouts, scheduled callbacks) without waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::agents::{AgentConfig, AgentError};
use super::calls::{CallControl, Prompts};
use super::event::{RequestEvent, State};
use super::queue::{CallbackConfig, DispatchError, Dispatcher, RequestStatus};
use super::request::{normalise_phone, NewRequest, RequestError, RequestId};
use super::store::{recover, RequestRecord, Store, StoreError};
use super::{add, since, Time};

mod core;
mod hook;

use self::core::{Core, Op};
pub use self::hook::WebhookStats;
pub use super::queue::Submitted;
pub use super::store::{ListFilter, RecoveryPolicy};

/// Where the service reads the time. Called only by the service's tokio layer.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Time;
}

/// The wall clock (the system time in UTC).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        Time::from(std::time::SystemTime::now())
    }
}

/// `origin` plus the time elapsed on tokio's clock since creation: with `tokio::time::pause()` the test decides
/// how time goes.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: Time,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `origin` now (must be called inside a tokio runtime).
    pub fn starting_at(origin: Time) -> TokioClock {
        TokioClock {
            origin,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Time {
        add(self.origin, self.start.elapsed())
    }
}

/// Where to POST every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// HMAC key of the `X-Rappel-Signature` header (see [`super::webhook`]).
    pub secret: Vec<u8>,
    /// Retries of a failed delivery (delays from [`super::webhook::retry_delay`]).
    pub max_retries: u32,
    /// Deliveries waiting at most; beyond, new events are dropped (and counted) rather than slowing the service.
    pub queue: usize,
    /// Timeout of one POST.
    pub timeout: Duration,
}

impl WebhookConfig {
    /// A webhook to `url` signed with `secret`: 5 retries, 1 000 queued, 10 s timeout.
    pub fn new(url: &str, secret: &[u8]) -> WebhookConfig {
        WebhookConfig {
            url: url.to_owned(),
            secret: secret.to_vec(),
            max_retries: 5,
            queue: 1000,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Configuration of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The dispatcher's configuration (flow timings, hours, cap, default strategy).
    pub callback: CallbackConfig,
    /// The agents (all signed in at start).
    pub agents: Vec<AgentConfig>,
    /// Where to call a visitor: `{number}` is replaced by the normalised number (e.g. `sip:{number}@trunk`).
    pub visitor_uri: String,
    /// What recovery does with requests interrupted by a restart.
    pub recovery: RecoveryPolicy,
    /// Audio of the prompts.
    pub prompts: Prompts,
    /// Optional webhook.
    pub webhook: Option<WebhookConfig>,
    /// Buffer of the event broadcast (a slower subscriber loses the oldest events).
    pub subscriber_capacity: usize,
    /// Queue of API calls waiting for the service task.
    pub api_queue: usize,
    /// Record every bridge (visitor left, agent right) to `<record_dir>/<request id>.wav`, if set. Off by
    /// default; the directory must exist.
    pub record_dir: Option<std::path::PathBuf>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            callback: CallbackConfig::default(),
            agents: Vec::new(),
            visitor_uri: "sip:{number}@127.0.0.1".to_owned(),
            recovery: RecoveryPolicy::default(),
            prompts: Prompts::tones(),
            webhook: None,
            subscriber_capacity: 1024,
            api_queue: 1024,
            record_dir: None,
        }
    }
}

/// Errors of the service API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request was refused.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The number already has an open request.
    #[error("number already has open request {0}")]
    AlreadyOpen(RequestId),
    /// Agents API error.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Any other dispatcher refusal.
    #[error(transparent)]
    Dispatch(DispatchError),
    /// The service task has stopped.
    #[error("the callback service has stopped")]
    Stopped,
}

impl From<DispatchError> for ServiceError {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::Request(r) => ServiceError::Request(r),
            DispatchError::Agent(a) => ServiceError::Agent(a),
            other => ServiceError::Dispatch(other),
        }
    }
}

/// A request as the API shows it: stored state and history, plus the live queue position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestView {
    /// Id.
    pub id: RequestId,
    /// State (as stored).
    pub state: State,
    /// Due time.
    pub due: Time,
    /// Requests ahead in the line for an agent (0 = next), while waiting.
    pub queue_position: Option<usize>,
    /// Estimated wait for an agent, while waiting.
    pub estimated_wait: Option<Duration>,
    /// History, oldest first.
    pub events: Vec<RequestEvent>,
    /// Normalised phone number.
    pub phone: String,
    /// Topic.
    pub topic: Option<String>,
    /// Submission time.
    pub created: Time,
}

impl RequestView {
    fn new(rec: RequestRecord, live: Option<RequestStatus>) -> RequestView {
        let s = rec.summary;
        RequestView {
            id: s.request.id,
            state: s.state,
            due: s.due,
            queue_position: live.as_ref().and_then(|l| l.queue_position),
            estimated_wait: live.and_then(|l| l.estimated_wait),
            events: rec.events,
            phone: s.request.phone,
            topic: s.request.topic,
            created: s.request.created_at,
        }
    }
}

pub(crate) type SharedStore = Arc<Mutex<dyn Store + Send>>;

/// Runs `f` on the store on the blocking pool.
pub(crate) async fn with_store<T: Send + 'static>(
    store: &SharedStore,
    f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut *guard)
    })
    .await
    .unwrap_or(Err(StoreError::Corrupt("store task panicked")))
}

/// Handle to the running service (clone it freely; the service stops at [`shutdown`](CallbackService::shutdown)).
#[derive(Clone)]
pub struct CallbackService {
    ops: mpsc::Sender<Op>,
    events: broadcast::Sender<(RequestId, RequestEvent)>,
    store: SharedStore,
    live_calls: Arc<AtomicUsize>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for CallbackService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackService")
            .field("live_calls", &self.live_calls())
            .finish_non_exhaustive()
    }
}

impl CallbackService {
    /// Recovers the store, then starts the service task on the current tokio runtime.
    pub async fn start<S, C>(
        config: ServiceConfig,
        store: S,
        calls: C,
        clock: Arc<dyn Clock>,
    ) -> Result<CallbackService, ServiceError>
    where
        S: Store + Send + 'static,
        C: CallControl,
    {
        let store: SharedStore = Arc::new(Mutex::new(store));
        let now = clock.now();
        let policy = config.recovery;
        let max_attempts = config.callback.flow.max_attempts;
        let (resumed, recovered, max_id) = with_store(&store, move |s| {
            let before: Vec<(RequestId, usize)> = s
                .list_unfinished()?
                .iter()
                .map(|r| (r.summary.request.id, r.events.len()))
                .collect();
            let resumed = recover(s, policy, max_attempts, now)?;
            // The events recovery wrote, for the webhook.
            let mut recovered = Vec::new();
            for (id, n) in before {
                if let Some(rec) = s.load(id)? {
                    recovered.extend(rec.events.into_iter().skip(n).map(|e| (id, e)));
                }
            }
            Ok((resumed, recovered, s.max_id()?))
        })
        .await?;
        let first_id = max_id.map_or(1, |m| m.0.saturating_add(1));
        let mut dispatcher = Dispatcher::new(
            config.callback.clone(),
            config.agents.clone(),
            first_id,
            now,
        )?;
        let mut phones = Vec::with_capacity(resumed.len());
        for r in resumed {
            phones.push((r.request.phone.clone(), r.request.id));
            dispatcher.restore(r.request, r.state, r.due, r.attempts, now);
        }
        let (events, _) = broadcast::channel(config.subscriber_capacity.max(1));
        let (ops_tx, ops_rx) = mpsc::channel(config.api_queue.max(1));
        let live_calls = Arc::new(AtomicUsize::new(0));
        let core = Core::new(
            &config,
            dispatcher,
            calls,
            store.clone(),
            clock,
            events.clone(),
            live_calls.clone(),
            phones,
        );
        let task = tokio::spawn(core.run(ops_rx, recovered));
        Ok(CallbackService {
            ops: ops_tx,
            events,
            store,
            live_calls,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }

    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(op(tx))
            .await
            .map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }

    /// Accepts a request; answers once its first events are stored. At most one open request per number
    /// ([`ServiceError::AlreadyOpen`]).
    pub async fn submit(&self, req: NewRequest) -> Result<Submitted, ServiceError> {
        self.ask(|r| Op::Submit(Box::new(req), r)).await?
    }

    /// The request with its history, or `None` if no such id was ever stored.
    pub async fn status(&self, id: RequestId) -> Result<Option<RequestView>, ServiceError> {
        let Some(rec) = with_store(&self.store, move |s| s.load(id)).await? else {
            return Ok(None);
        };
        let live = self.ask(|r| Op::Status(vec![id], r)).await?.pop().flatten();
        Ok(Some(RequestView::new(rec, live)))
    }

    /// Cancels a request: `true` if it was open and is now cancelled, `false` if unknown or already final.
    pub async fn cancel(&self, id: RequestId) -> Result<bool, ServiceError> {
        self.ask(|r| Op::Cancel(id, r)).await?
    }

    /// Requests by state and creation date, oldest first (at most [`super::store::MAX_LIST`]), with history.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<RequestView>, ServiceError> {
        let recs = with_store(&self.store, move |s| {
            let mut out = Vec::new();
            for summary in s.list(&filter)? {
                let events = s
                    .load(summary.request.id)?
                    .map(|r| r.events)
                    .unwrap_or_default();
                out.push(RequestRecord { summary, events });
            }
            Ok(out)
        })
        .await?;
        let ids = recs.iter().map(|r| r.summary.request.id).collect();
        let live = self.ask(|r| Op::Status(ids, r)).await?;
        Ok(recs
            .into_iter()
            .zip(live.into_iter().chain(std::iter::repeat(None)))
            .map(|(rec, st)| RequestView::new(rec, st))
            .collect())
    }

    /// Every persisted event, as it is persisted (a receiver that lags loses the oldest ones).
    pub fn subscribe(&self) -> broadcast::Receiver<(RequestId, RequestEvent)> {
        self.events.subscribe()
    }

    /// Prometheus text exposition: the dispatcher's metrics, agents, and the service's own counters.
    pub async fn metrics(&self) -> String {
        self.ask(Op::Metrics).await.unwrap_or_default()
    }

    /// The open (not final) request for this number, if any. The number is normalised as submissions are.
    pub async fn open_request_for(&self, e164: &str) -> Option<RequestId> {
        let phone = normalise_phone(e164)?;
        self.ask(|r| Op::OpenFor(phone, r)).await.ok().flatten()
    }

    /// Calls in progress (placed and not yet ended).
    pub fn live_calls(&self) -> usize {
        self.live_calls.load(Ordering::Relaxed)
    }

    /// Signs an agent in.
    pub async fn sign_in(&self, agent: &str) -> Result<(), ServiceError> {
        self.ask(|r| Op::Agent(core::AgentOp::SignIn, agent.to_owned(), r))
            .await?
    }

    /// Signs an agent out (calls in progress go on).
    pub async fn sign_out(&self, agent: &str) -> Result<(), ServiceError> {
        self.ask(|r| Op::Agent(core::AgentOp::SignOut, agent.to_owned(), r))
            .await?
    }

    /// Pauses an agent.
    pub async fn pause(&self, agent: &str) -> Result<(), ServiceError> {
        self.ask(|r| Op::Agent(core::AgentOp::Pause, agent.to_owned(), r))
            .await?
    }

    /// Resumes a paused agent.
    pub async fn resume(&self, agent: &str) -> Result<(), ServiceError> {
        self.ask(|r| Op::Agent(core::AgentOp::Resume, agent.to_owned(), r))
            .await?
    }

    /// Stops the service: hangs up the calls in progress (their requests stay as stored, for recovery at the next
    /// start) and waits for the task to end. Webhook deliveries not yet made are abandoned (the store has the
    /// history). Later calls on any handle answer [`ServiceError::Stopped`].
    pub async fn shutdown(&self) {
        let _ = self.ask(Op::Shutdown).await;
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// `t` as an instant on tokio's clock, for the one sleep (capped so that wall-clock jumps are noticed).
pub(crate) fn tokio_deadline(clock: &dyn Clock, t: Time) -> tokio::time::Instant {
    const MAX_SLEEP: Duration = Duration::from_secs(60);
    tokio::time::Instant::now() + since(clock.now(), t).min(MAX_SLEEP)
}
