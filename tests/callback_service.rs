//! The callback service's wiring, in controlled time (tokio's paused clock), through the `CallControl` trait.
//!
//! The call layer here is a TEST DOUBLE ([`DoubleCalls`]): it places no call; it records each command in a shared
//! log and hands it to the test, and the test plays the phones by sending call events. The store is the real
//! SQLite store on a temporary file, wrapped by [`RecordingStore`], which logs each write in the same log: so the
//! tests can check that every command comes after the write of the event that produced it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use rappel::callback::calls::{CallControl, CallEvent, CallId, Dial, Prompts};
use rappel::callback::event::{RecoveryAction, ScheduleReason};
use rappel::callback::service::{CallbackService, ServiceConfig, ServiceError, TokioClock};
use rappel::callback::store::{
    ListFilter, RecoveryPolicy, RequestRecord, RequestSummary, SqliteStore, Store, StoreError,
};
use rappel::callback::{
    AgentConfig, CallFailure, CallbackRequest, EventKind, NewRequest, Prompt, RequestEvent,
    RequestId, State, Time, WishedTime,
};
use rappel::media::player::Playlist;
use tokio::sync::{broadcast, mpsc};

/// One thing that happened, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// The store wrote a new request.
    Insert(RequestId),
    /// The store wrote an event.
    Event(RequestId, EventKind),
    /// The call layer was asked to dial.
    Dial(CallId, String),
    /// ... to play (the prompt recognised from its audio).
    Play(CallId, &'static str),
    /// ... to bridge.
    Bridge(CallId, CallId),
    /// ... to bridge and record to a file.
    BridgeRecorded(CallId, CallId, std::path::PathBuf),
    /// ... to hang up or cancel.
    HangUp(CallId),
}

type Log = Arc<Mutex<Vec<Entry>>>;

fn push(log: &Log, e: Entry) {
    log.lock().unwrap().push(e);
}

/// A store that logs its writes, and can be told to fail one kind of event.
struct RecordingStore<S> {
    inner: S,
    log: Log,
    fail_on: Option<fn(&EventKind) -> bool>,
}

impl<S: Store> Store for RecordingStore<S> {
    fn insert_request(
        &mut self,
        req: &CallbackRequest,
        state: State,
        due: Time,
    ) -> Result<(), StoreError> {
        self.inner.insert_request(req, state, due)?;
        push(&self.log, Entry::Insert(req.id));
        Ok(())
    }
    fn append_event(&mut self, id: RequestId, event: &RequestEvent) -> Result<(), StoreError> {
        if self.fail_on.is_some_and(|f| f(&event.kind)) {
            self.fail_on = None;
            return Err(StoreError::Corrupt("injected failure"));
        }
        self.inner.append_event(id, event)?;
        push(&self.log, Entry::Event(id, event.kind.clone()));
        Ok(())
    }
    fn load(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
        self.inner.load(id)
    }
    fn list(&self, filter: &ListFilter) -> Result<Vec<RequestSummary>, StoreError> {
        self.inner.list(filter)
    }
    fn list_unfinished(&self) -> Result<Vec<RequestRecord>, StoreError> {
        self.inner.list_unfinished()
    }
    fn max_id(&self) -> Result<Option<RequestId>, StoreError> {
        self.inner.max_id()
    }
}

/// Which prompt of [`Prompts::tones`] this playlist is.
fn prompt_name(p: &Playlist) -> &'static str {
    let prompts = Prompts::tones();
    let known = [
        ("greeting", Prompt::Greeting),
        ("hold_music", Prompt::HoldMusic),
        ("still_connecting", Prompt::StillConnecting),
        ("apology", Prompt::Apology),
        ("confirm", Prompt::Confirm),
        ("whisper", Prompt::Whisper(None)),
    ];
    known
        .into_iter()
        .find(|(_, k)| prompts.playlist(k) == *p)
        .map_or("unknown", |(n, _)| n)
}

/// TEST DOUBLE of the call layer (see the file docs).
struct DoubleCalls {
    log: Log,
    commands: mpsc::UnboundedSender<Entry>,
    events: mpsc::UnboundedReceiver<(CallId, CallEvent)>,
    next: u64,
}

impl DoubleCalls {
    fn record(&self, e: Entry) {
        push(&self.log, e.clone());
        let _ = self.commands.send(e);
    }
}

impl CallControl for DoubleCalls {
    fn dial(&mut self, dial: Dial) -> CallId {
        self.next += 1;
        let id = CallId(self.next);
        self.record(Entry::Dial(id, dial.target));
        id
    }
    fn play(&mut self, call: CallId, media: Playlist) {
        self.record(Entry::Play(call, prompt_name(&media)));
    }
    fn bridge(&mut self, a: CallId, b: CallId) {
        self.record(Entry::Bridge(a, b));
    }
    fn bridge_recorded(&mut self, a: CallId, b: CallId, path: std::path::PathBuf) {
        self.record(Entry::BridgeRecorded(a, b, path));
    }
    fn hang_up(&mut self, call: CallId) {
        self.record(Entry::HangUp(call));
    }
    async fn next_event(&mut self) -> Option<(CallId, CallEvent)> {
        self.events.recv().await
    }
}

/// The service, the double's two ends, the log and a subscription.
struct Harness {
    svc: CallbackService,
    commands: mpsc::UnboundedReceiver<Entry>,
    phones: mpsc::UnboundedSender<(CallId, CallEvent)>,
    log: Log,
    sub: broadcast::Receiver<(RequestId, RequestEvent)>,
    clock: TokioClock,
}

/// Wednesday 2026-06-10 10:00 UTC.
fn t0() -> Time {
    Utc.with_ymd_and_hms(2026, 6, 10, 10, 0, 0)
        .single()
        .unwrap()
}

fn config(agents: &[&str]) -> ServiceConfig {
    let mut c = ServiceConfig {
        agents: agents
            .iter()
            .map(|n| AgentConfig::new(n, &format!("sip:{n}@agents.test"), &[]))
            .collect(),
        visitor_uri: "sip:{number}@trunk.test".into(),
        ..ServiceConfig::default()
    };
    c.callback.flow.caller_id = "+33100000000".into();
    c.callback.flow.max_attempts = 2;
    c.callback.flow.retry_backoff = Duration::from_secs(120);
    c
}

/// Waits at most this long (simulated) for anything.
const WAIT: Duration = Duration::from_secs(3600);

impl Harness {
    async fn start(config: ServiceConfig, store: impl Store + Send + 'static, log: Log) -> Harness {
        let clock = TokioClock::starting_at(t0());
        Harness::start_with_clock(config, store, log, clock).await
    }

    async fn start_with_clock(
        config: ServiceConfig,
        store: impl Store + Send + 'static,
        log: Log,
        clock: TokioClock,
    ) -> Harness {
        let (ctx, commands) = mpsc::unbounded_channel();
        let (phones, events) = mpsc::unbounded_channel();
        let calls = DoubleCalls {
            log: log.clone(),
            commands: ctx,
            events,
            next: 0,
        };
        let svc = CallbackService::start(config, store, calls, Arc::new(clock))
            .await
            .expect("start");
        let sub = svc.subscribe();
        Harness {
            svc,
            commands,
            phones,
            log,
            sub,
            clock,
        }
    }

    async fn next_command(&mut self) -> Entry {
        tokio::time::timeout(WAIT, self.commands.recv())
            .await
            .expect("a command in time")
            .expect("double alive")
    }

    fn phone(&self, call: CallId, ev: CallEvent) {
        self.phones.send((call, ev)).unwrap();
    }

    /// Reads the subscription until request `id` reaches `state`; returns the kinds seen for `id` on the way.
    async fn until_state(&mut self, id: RequestId, state: State) -> Vec<EventKind> {
        let mut seen = Vec::new();
        loop {
            let (rid, ev) = tokio::time::timeout(WAIT, self.sub.recv())
                .await
                .expect("event in time")
                .expect("subscription open");
            if rid == id {
                seen.push(ev.kind.clone());
                if ev.state == state {
                    return seen;
                }
            }
        }
    }

    fn log(&self) -> Vec<Entry> {
        self.log.lock().unwrap().clone()
    }

    /// Index of the first log entry matching `f`.
    fn index(&self, f: impl Fn(&Entry) -> bool) -> usize {
        self.log().iter().position(f).expect("entry in log")
    }
}

fn sqlite(dir: &tempfile::TempDir, log: &Log) -> RecordingStore<SqliteStore> {
    RecordingStore {
        inner: SqliteStore::open(dir.path().join("callbacks.db")).unwrap(),
        log: log.clone(),
        fail_on: None,
    }
}

fn visitor(phone: &str) -> NewRequest {
    NewRequest {
        phone: phone.into(),
        topic: Some("billing".into()),
        ..NewRequest::default()
    }
}

fn dialled(e: &Entry) -> (CallId, String) {
    match e {
        Entry::Dial(c, t) => (*c, t.clone()),
        other => panic!("expected a dial, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn main_path_persists_every_event_before_its_command() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let mut h = Harness::start(config(&["alice"]), sqlite(&dir, &log), log.clone()).await;

    let sub = h.svc.submit(visitor("+33 6 11 11 11 11")).await.unwrap();
    assert_eq!(sub.state, State::Queued);
    let id = sub.id;
    let (vcall, target) = dialled(&h.next_command().await);
    assert_eq!(target, "sip:+33611111111@trunk.test");

    h.phone(vcall, CallEvent::Ringing);
    h.phone(vcall, CallEvent::Answered);
    assert_eq!(h.next_command().await, Entry::Play(vcall, "greeting"));
    // An agent is free: called at once while the visitor hears the greeting.
    let (acall, target) = dialled(&h.next_command().await);
    assert_eq!(target, "sip:alice@agents.test");
    h.phone(vcall, CallEvent::PlayFinished);
    assert_eq!(h.next_command().await, Entry::Play(vcall, "hold_music"));
    h.phone(acall, CallEvent::Answered);
    assert_eq!(h.next_command().await, Entry::Play(acall, "whisper"));
    assert_eq!(h.svc.live_calls(), 2);
    h.phone(acall, CallEvent::PlayFinished);
    assert_eq!(h.next_command().await, Entry::Bridge(vcall, acall));
    h.phone(vcall, CallEvent::HungUp);
    assert_eq!(h.next_command().await, Entry::HangUp(acall));
    let kinds = h.until_state(id, State::Completed).await;
    assert!(matches!(kinds.first(), Some(EventKind::Submitted)));
    assert!(matches!(kinds.last(), Some(EventKind::Completed { .. })));
    assert_eq!(h.svc.live_calls(), 0);

    // Persist before act: each command follows the stored event that asked for it.
    let insert = h.index(|e| *e == Entry::Insert(id));
    let calling = h.index(
        |e| matches!(e, Entry::Event(i, EventKind::CallingVisitor { attempt: 1 }) if *i == id),
    );
    let dial_v = h.index(|e| matches!(e, Entry::Dial(c, _) if *c == vcall));
    let answered = h.index(|e| matches!(e, Entry::Event(_, EventKind::VisitorAnswered)));
    let greeting = h.index(|e| matches!(e, Entry::Play(c, _) if *c == vcall));
    let calling_agent = h.index(|e| matches!(e, Entry::Event(_, EventKind::CallingAgent { .. })));
    let dial_a = h.index(|e| matches!(e, Entry::Dial(c, _) if *c == acall));
    let connected = h.index(|e| matches!(e, Entry::Event(_, EventKind::Connected { .. })));
    let bridge = h.index(|e| matches!(e, Entry::Bridge(..)));
    let completed = h.index(|e| matches!(e, Entry::Event(_, EventKind::Completed { .. })));
    let hangup = h.index(|e| *e == Entry::HangUp(acall));
    assert!(insert < calling && calling < dial_v, "{:?}", h.log());
    assert!(answered < greeting);
    assert!(calling_agent < dial_a);
    assert!(connected < bridge);
    assert!(completed < hangup);

    // The view: stored history, final state, no queue position.
    let view = h.svc.status(id).await.unwrap().expect("stored");
    assert_eq!(view.state, State::Completed);
    assert_eq!(view.phone, "+33611111111");
    assert_eq!(view.topic.as_deref(), Some("billing"));
    assert_eq!(view.created, t0());
    assert_eq!(view.queue_position, None);
    let stored: Vec<EventKind> = view.events.iter().map(|e| e.kind.clone()).collect();
    let logged: Vec<EventKind> = h
        .log()
        .into_iter()
        .filter_map(|e| match e {
            Entry::Event(i, k) if i == id => Some(k),
            _ => None,
        })
        .collect();
    assert_eq!(stored, logged);
    let metrics = h.svc.metrics().await;
    assert!(
        metrics.contains("rappel_callback_live_calls 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rappel_callback_requests_total 1"),
        "{metrics}"
    );
    h.svc.shutdown().await;
    assert!(matches!(
        h.svc.submit(visitor("+33 6 99 99 99 99")).await,
        Err(ServiceError::Stopped)
    ));
}

#[tokio::test(start_paused = true)]
async fn busy_visitor_is_retried_after_the_backoff_then_reached() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let mut h = Harness::start(config(&[]), sqlite(&dir, &log), log.clone()).await;
    let id = h.svc.submit(visitor("+33 6 22 22 22 22")).await.unwrap().id;
    let (first, _) = dialled(&h.next_command().await);
    h.phone(first, CallEvent::Failed(CallFailure::Busy));
    let kinds = h.until_state(id, State::Scheduled).await;
    let due = match kinds.last() {
        Some(EventKind::Scheduled {
            due,
            reason: ScheduleReason::Retry,
        }) => *due,
        other => panic!("{other:?}"),
    };
    assert_eq!(due, t0() + chrono::Duration::seconds(120));
    // The second attempt waits for the backoff on the one timer (time moves only when the service sleeps).
    let (second, _) = dialled(&h.next_command().await);
    assert_ne!(first, second);
    assert!(rappel::callback::service::Clock::now(&h.clock) >= due);
    h.phone(second, CallEvent::Answered);
    let kinds = h.until_state(id, State::Holding).await;
    assert!(kinds.contains(&EventKind::CallingVisitor { attempt: 2 }));
    // No agent at all: the visitor holds; the view gives the queue position.
    let view = h.svc.status(id).await.unwrap().unwrap();
    assert_eq!(view.state, State::Holding);
    assert_eq!(view.queue_position, Some(0));
    assert_eq!(h.svc.live_calls(), 1);
    h.svc.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn late_event_of_a_cancelled_agent_call_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let mut cfg = config(&["alice", "bob"]);
    cfg.callback.flow.agent_ring_timeout = Duration::from_secs(10);
    cfg.callback.flow.whisper = false;
    let mut h = Harness::start(cfg, sqlite(&dir, &log), log.clone()).await;
    let id = h.svc.submit(visitor("+33 6 33 33 33 33")).await.unwrap().id;
    let (vcall, _) = dialled(&h.next_command().await);
    h.phone(vcall, CallEvent::Answered);
    let _greeting = h.next_command().await;
    let (alice, target) = dialled(&h.next_command().await);
    assert!(target.contains("alice"));
    // Alice does not answer: the flow cancels her call at its ring timeout and calls Bob.
    assert_eq!(h.next_command().await, Entry::HangUp(alice));
    let (bob, target) = dialled(&h.next_command().await);
    assert!(target.contains("bob"));
    // Alice's 487 arrives late, then Alice's phone even "answers": neither is taken for Bob's call.
    h.phone(alice, CallEvent::Failed(CallFailure::Failed));
    h.phone(alice, CallEvent::Answered);
    h.phone(bob, CallEvent::Answered);
    assert_eq!(h.next_command().await, Entry::Bridge(vcall, bob));
    let kinds = h.until_state(id, State::Connected).await;
    let failures: Vec<_> = kinds
        .iter()
        .filter(|k| matches!(k, EventKind::AgentFailed { .. }))
        .collect();
    assert_eq!(failures.len(), 1, "{kinds:?}");
    assert!(matches!(
        failures[0],
        EventKind::AgentFailed { agent, reason: CallFailure::NoAnswer } if agent == "alice"
    ));
    let metrics = h.svc.metrics().await;
    assert!(
        metrics.contains("rappel_callback_late_call_events_total 2"),
        "{metrics}"
    );
    h.svc.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_hangs_up_and_frees_the_number() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let mut h = Harness::start(config(&[]), sqlite(&dir, &log), log.clone()).await;
    let id = h.svc.submit(visitor("+33 6 44 44 44 44")).await.unwrap().id;
    let (vcall, _) = dialled(&h.next_command().await);
    assert_eq!(h.svc.open_request_for("+33644444444").await, Some(id));
    // One open request per number.
    match h.svc.submit(visitor("+33644444444")).await {
        Err(ServiceError::AlreadyOpen(open)) => assert_eq!(open, id),
        other => panic!("{other:?}"),
    }
    assert!(h.svc.cancel(id).await.unwrap());
    assert_eq!(h.next_command().await, Entry::HangUp(vcall));
    assert!(!h.svc.cancel(id).await.unwrap(), "already final");
    assert!(!h.svc.cancel(RequestId(999)).await.unwrap(), "unknown");
    assert_eq!(h.svc.open_request_for("+33644444444").await, None);
    let kinds = h.until_state(id, State::Cancelled).await;
    assert_eq!(kinds.last(), Some(&EventKind::Cancelled));
    // The phone's late answer after the cancel changes nothing.
    h.phone(vcall, CallEvent::Answered);
    let again = h.svc.submit(visitor("+33644444444")).await.unwrap();
    assert_ne!(again.id, id);
    let cancelled = h.index(|e| *e == Entry::Event(id, EventKind::Cancelled));
    let hangup = h.index(|e| *e == Entry::HangUp(vcall));
    assert!(cancelled < hangup);
    assert_eq!(
        h.svc.status(id).await.unwrap().unwrap().state,
        State::Cancelled
    );
    assert_eq!(h.svc.status(RequestId(999)).await.unwrap(), None);
    h.svc.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn list_filters_by_state_and_shows_queue_positions() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let mut cfg = config(&[]);
    cfg.callback.max_concurrent = 1;
    let h = Harness::start(cfg, sqlite(&dir, &log), log.clone()).await;
    let later = WishedTime::At(t0() + chrono::Duration::hours(2));
    let a = h.svc.submit(visitor("+33 6 55 55 55 01")).await.unwrap();
    let b = h.svc.submit(visitor("+33 6 55 55 55 02")).await.unwrap();
    let c = h
        .svc
        .submit(NewRequest {
            wished: Some(later),
            ..visitor("+33 6 55 55 55 03")
        })
        .await
        .unwrap();
    assert_eq!(a.state, State::Queued);
    assert_eq!(c.state, State::Scheduled);
    assert_eq!(c.due, t0() + chrono::Duration::hours(2));
    let all = h.svc.list(ListFilter::default()).await.unwrap();
    let ids: Vec<RequestId> = all.iter().map(|v| v.id).collect();
    assert_eq!(ids, vec![a.id, b.id, c.id]);
    // The cap is 1: `a` is being called, `b` waits behind it.
    let states: Vec<State> = all.iter().map(|v| v.state).collect();
    assert_eq!(
        states,
        vec![State::CallingVisitor, State::Queued, State::Scheduled]
    );
    assert_eq!(all[0].queue_position, Some(0));
    assert_eq!(all[1].queue_position, Some(1));
    assert_eq!(all[2].queue_position, None);
    assert!(all.iter().all(|v| matches!(
        v.events.first().map(|e| &e.kind),
        Some(EventKind::Submitted)
    )));
    let scheduled = h
        .svc
        .list(ListFilter {
            state: Some(State::Scheduled),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].id, c.id);
    h.svc.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn restart_on_the_same_file_recovers_interrupted_and_scheduled_requests() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let (held, scheduled, due) = {
        let mut h = Harness::start(config(&[]), sqlite(&dir, &log), log.clone()).await;
        let held = h.svc.submit(visitor("+33 6 66 66 66 01")).await.unwrap();
        let (vcall, _) = dialled(&h.next_command().await);
        h.phone(vcall, CallEvent::Answered);
        h.until_state(held.id, State::Holding).await;
        let later = t0() + chrono::Duration::hours(3);
        let scheduled = h
            .svc
            .submit(NewRequest {
                wished: Some(WishedTime::At(later)),
                ..visitor("+33 6 66 66 66 02")
            })
            .await
            .unwrap();
        // Stop without a word to the store: the held request stays `holding` there.
        h.svc.shutdown().await;
        (held.id, scheduled.id, later)
    };
    let clock = TokioClock::starting_at(t0() + chrono::Duration::minutes(5));
    let mut h =
        Harness::start_with_clock(config(&["alice"]), sqlite(&dir, &log), log.clone(), clock).await;
    // The interrupted request is requeued (one attempt of two used) and called again at once.
    let (vcall, target) = dialled(&h.next_command().await);
    assert_eq!(target, "sip:+33666666601@trunk.test");
    let view = h.svc.status(held).await.unwrap().unwrap();
    assert_eq!(view.state, State::CallingVisitor);
    let kinds: Vec<EventKind> = view.events.iter().map(|e| e.kind.clone()).collect();
    let recovered = kinds
        .iter()
        .position(|k| {
            *k == EventKind::Recovered {
                from: State::Holding,
                action: RecoveryAction::Requeued,
            }
        })
        .expect("recovered event");
    assert_eq!(
        kinds[recovered + 1],
        EventKind::CallingVisitor { attempt: 2 }
    );
    assert_eq!(kinds[0], EventKind::Submitted);
    // The scheduled one keeps its due time.
    let view = h.svc.status(scheduled).await.unwrap().unwrap();
    assert_eq!(view.state, State::Scheduled);
    assert_eq!(view.due, due);
    assert_eq!(
        view.events.last().map(|e| &e.kind),
        Some(&EventKind::Recovered {
            from: State::Scheduled,
            action: RecoveryAction::Kept
        })
    );
    // Ids continue after the stored ones; the numbers are still taken.
    assert_eq!(
        h.svc.open_request_for("+33666666602").await,
        Some(scheduled)
    );
    let next = h.svc.submit(visitor("+33 6 66 66 66 03")).await.unwrap();
    assert_eq!(next.id, RequestId(scheduled.0 + 1));
    h.phone(vcall, CallEvent::Answered);
    h.until_state(held, State::CallingAgent).await;
    h.svc.shutdown().await;

    // Under the other policy, an interrupted request is marked missed for a manual callback.
    let mut cfg = config(&[]);
    cfg.recovery = RecoveryPolicy::MarkMissed;
    let clock = TokioClock::starting_at(t0() + chrono::Duration::minutes(10));
    let h = Harness::start_with_clock(cfg, sqlite(&dir, &log), log.clone(), clock).await;
    let view = h.svc.status(held).await.unwrap().unwrap();
    assert_eq!(view.state, State::Missed);
    assert_eq!(
        h.svc.status(scheduled).await.unwrap().unwrap().state,
        State::Scheduled
    );
    h.svc.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_event_that_cannot_be_stored_is_never_acted_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let mut store = sqlite(&dir, &log);
    store.fail_on = Some(|k| matches!(k, EventKind::CallingAgent { .. }));
    let mut h = Harness::start(config(&["alice"]), store, log.clone()).await;
    let id = h.svc.submit(visitor("+33 6 77 77 77 77")).await.unwrap().id;
    let (vcall, _) = dialled(&h.next_command().await);
    h.phone(vcall, CallEvent::Answered);
    // The answer's batch (greeting, agent call) had an event that could not be stored: none of its commands run
    // (no dial to the agent, not even the greeting); the request is cancelled and the visitor hung up.
    assert_eq!(h.next_command().await, Entry::HangUp(vcall));
    h.until_state(id, State::Cancelled).await;
    assert!(!h
        .log()
        .iter()
        .any(|e| matches!(e, Entry::Dial(_, t) if t.contains("alice"))));
    let metrics = h.svc.metrics().await;
    assert!(
        metrics.contains("rappel_callback_store_errors_total 1"),
        "{metrics}"
    );
    h.svc.shutdown().await;
}

#[test]
fn prompts_map_to_distinct_audio() {
    let p = Prompts::tones();
    let all = [
        Prompt::Greeting,
        Prompt::HoldMusic,
        Prompt::StillConnecting,
        Prompt::Apology,
        Prompt::Confirm,
        Prompt::Whisper(None),
    ];
    let lists: BTreeSet<String> = all.iter().map(|x| format!("{:?}", p.playlist(x))).collect();
    assert_eq!(lists.len(), all.len());
    assert_eq!(
        rappel::callback::calls::playlist_duration(&p.playlist(&Prompt::HoldMusic)),
        None
    );
    assert!(
        rappel::callback::calls::playlist_duration(&p.playlist(&Prompt::Greeting))
            .is_some_and(|d| d > Duration::ZERO)
    );
}

#[tokio::test(start_paused = true)]
async fn confirmation_digit_from_the_call_layer_reaches_the_flow() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let mut cfg = config(&[]);
    cfg.callback.default_strategy = rappel::callback::Strategy::Confirmation;
    let mut h = Harness::start(cfg, sqlite(&dir, &log), log.clone()).await;
    let id = h.svc.submit(visitor("+33 6 88 88 88 01")).await.unwrap().id;
    let (vcall, _) = dialled(&h.next_command().await);
    h.phone(vcall, CallEvent::Answered);
    assert_eq!(h.next_command().await, Entry::Play(vcall, "confirm"));
    h.phone(vcall, CallEvent::Dtmf('7'));
    h.phone(vcall, CallEvent::Dtmf('1'));
    assert_eq!(h.next_command().await, Entry::Play(vcall, "hold_music"));
    let kinds = h.until_state(id, State::Holding).await;
    assert_eq!(kinds.last(), Some(&EventKind::Confirmed));
    h.svc.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn max_hold_plays_the_apology_before_hanging_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let mut cfg = config(&[]);
    cfg.callback.flow.max_hold = Duration::from_secs(60);
    cfg.callback.flow.still_connecting_every = Duration::from_secs(45);
    let mut h = Harness::start(cfg, sqlite(&dir, &log), log.clone()).await;
    let id = h.svc.submit(visitor("+33 6 88 88 88 02")).await.unwrap().id;
    let (vcall, _) = dialled(&h.next_command().await);
    h.phone(vcall, CallEvent::Answered);
    assert_eq!(h.next_command().await, Entry::Play(vcall, "greeting"));
    // No agent: 45 s later the "still connecting" prompt, at 60 s the apology (time moves on the service's timer).
    assert_eq!(
        h.next_command().await,
        Entry::Play(vcall, "still_connecting")
    );
    assert_eq!(h.next_command().await, Entry::Play(vcall, "apology"));
    let kinds = h.until_state(id, State::Missed).await;
    assert!(kinds.contains(&EventKind::Missed {
        reason: rappel::callback::MissReason::MaxHold
    }));
    // Final, but the visitor's call stays up for the apology: nothing hangs it up before it ends.
    assert_eq!(h.svc.live_calls(), 1);
    assert_eq!(h.svc.open_request_for("+33688888802").await, None);
    h.phone(vcall, CallEvent::PlayFinished);
    assert_eq!(h.next_command().await, Entry::HangUp(vcall));
    h.svc.shutdown().await;
}

#[test]
fn prompts_load_from_wav_files() {
    use rappel::callback::calls::PromptFiles;
    use rappel::media::wav::{build_wav, WavFormat};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, samples: usize, rate: u32| {
        let pcm: Vec<u8> = (0..samples)
            .flat_map(|i| ((i as i16).wrapping_mul(37)).to_le_bytes())
            .collect();
        let path = dir.path().join(name);
        std::fs::write(&path, build_wav(WavFormat::Pcm16, 1, rate, &pcm)).unwrap();
        path
    };
    let mut files = PromptFiles {
        greeting: write("greeting.wav", 8000, 8000),
        hold_music: write("music.wav", 16000, 8000),
        still_connecting: write("still.wav", 4000, 8000),
        apology: write("apology.wav", 4000, 8000),
        confirm: write("confirm.wav", 4000, 8000),
        whisper: write("whisper.wav", 2000, 8000),
        whispers: [("billing".to_owned(), write("billing.wav", 3000, 8000))].into(),
    };
    let p = Prompts::load(&files).unwrap();
    assert_eq!(p.greeting.len(), 8000);
    assert_eq!(p.greeting.duration(), Duration::from_secs(1));
    let billing = p.playlist(&Prompt::Whisper(Some("billing".into())));
    let other = p.playlist(&Prompt::Whisper(Some("sales".into())));
    assert_eq!(
        rappel::callback::calls::playlist_duration(&billing),
        Some(Duration::from_millis(375))
    );
    assert_eq!(
        rappel::callback::calls::playlist_duration(&other),
        Some(Duration::from_millis(250))
    );
    // Not telephony audio, or missing: refused with the file named.
    files.apology = write("wideband.wav", 16000, 16000);
    let e = Prompts::load(&files).unwrap_err();
    assert!(e.path.ends_with("wideband.wav"), "{e}");
    files.apology = dir.path().join("missing.wav");
    assert!(Prompts::load(&files).is_err());
}

#[tokio::test(start_paused = true)]
async fn agent_admin_gates_who_is_called() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let mut h = Harness::start(config(&["alice"]), sqlite(&dir, &log), log.clone()).await;
    h.svc.pause("alice").await.unwrap();
    assert!(matches!(
        h.svc.pause("nobody").await,
        Err(ServiceError::Agent(_))
    ));
    let id = h.svc.submit(visitor("+33 6 88 88 88 03")).await.unwrap().id;
    let (vcall, _) = dialled(&h.next_command().await);
    h.phone(vcall, CallEvent::Answered);
    assert_eq!(h.next_command().await, Entry::Play(vcall, "greeting"));
    h.until_state(id, State::Holding).await;
    // Paused: nobody is called while the visitor holds.
    assert_eq!(
        h.svc.status(id).await.unwrap().unwrap().state,
        State::Holding
    );
    assert!(!h
        .log()
        .iter()
        .any(|e| matches!(e, Entry::Dial(_, t) if t.contains("alice"))));
    h.svc.sign_out("alice").await.unwrap();
    h.svc.resume("alice").await.unwrap();
    assert!(!h
        .log()
        .iter()
        .any(|e| matches!(e, Entry::Dial(_, t) if t.contains("alice"))));
    // Signed in again: called at once for the held visitor.
    h.svc.sign_in("alice").await.unwrap();
    let (_, target) = dialled(&h.next_command().await);
    assert_eq!(target, "sip:alice@agents.test");
    h.until_state(id, State::CallingAgent).await;
    h.svc.shutdown().await;
}

/// With `record_dir` set, the bridge is recorded to `<record_dir>/<request id>.wav`, visitor first (left).
#[tokio::test(start_paused = true)]
async fn record_dir_records_each_bridge_under_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let mut cfg = config(&["alice"]);
    cfg.record_dir = Some(dir.path().join("rec"));
    let mut h = Harness::start(cfg, sqlite(&dir, &log), log.clone()).await;
    let id = h.svc.submit(visitor("+33 6 11 11 11 11")).await.unwrap().id;
    let (vcall, _) = dialled(&h.next_command().await);
    h.phone(vcall, CallEvent::Answered);
    assert_eq!(h.next_command().await, Entry::Play(vcall, "greeting"));
    let (acall, _) = dialled(&h.next_command().await);
    h.phone(vcall, CallEvent::PlayFinished);
    assert_eq!(h.next_command().await, Entry::Play(vcall, "hold_music"));
    h.phone(acall, CallEvent::Answered);
    assert_eq!(h.next_command().await, Entry::Play(acall, "whisper"));
    h.phone(acall, CallEvent::PlayFinished);
    assert_eq!(
        h.next_command().await,
        Entry::BridgeRecorded(
            vcall,
            acall,
            dir.path().join("rec").join(format!("{id}.wav"))
        )
    );
}
