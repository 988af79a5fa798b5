//! The SQLite store on a real file: history survives a reopen; restart recovery never loses a request.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use rappel::callback::event::{RecoveryAction, State};
use rappel::callback::store::{
    recover, ListFilter, RecoveryPolicy, RequestRecord, SqliteStore, Store, StoreError,
};
use rappel::callback::{
    AgentConfig, CallbackConfig, Command, Dispatcher, EventKind, Input, Leg, MissReason,
    NewRequest, RequestId, Time, WishedTime,
};

fn t0() -> Time {
    Utc.with_ymd_and_hms(2026, 6, 9, 10, 0, 0)
        .single()
        .expect("valid")
}

fn dispatcher(first_id: u64, now: Time) -> Dispatcher {
    let agents = vec![AgentConfig::new(
        "alice",
        "sip:alice@example.com",
        &["billing"],
    )];
    Dispatcher::new(CallbackConfig::default(), agents, first_id, now).expect("agents")
}

fn request() -> NewRequest {
    NewRequest {
        phone: "0612345678".into(),
        topic: Some("billing".into()),
        skills: BTreeSet::from(["billing".to_owned()]),
        page_url: Some("https://shop.example/cart".into()),
        language: Some("fr-FR".into()),
        ..NewRequest::default()
    }
}

/// The service loop's discipline: persist every event, then return the commands to execute.
fn persist(store: &mut dyn Store, d: &mut Dispatcher) -> Vec<(RequestId, Command)> {
    while let Some((id, ev)) = d.poll_event() {
        store.append_event(id, &ev).expect("append");
    }
    std::iter::from_fn(|| d.poll_command()).collect()
}

fn submit(store: &mut dyn Store, d: &mut Dispatcher, r: NewRequest, now: Time) -> RequestId {
    let s = d.submit(r, now).expect("submit");
    store
        .insert_request(&s.request, s.state, s.due)
        .expect("insert");
    persist(store, d);
    s.id
}

fn input(store: &mut dyn Store, d: &mut Dispatcher, id: RequestId, i: Input, now: Time) {
    d.handle_input(id, i, now).expect("live");
    persist(store, d);
}

fn kinds(rec: &RequestRecord) -> Vec<EventKind> {
    rec.events.iter().map(|e| e.kind.clone()).collect()
}

#[test]
fn history_survives_reopen_and_lists_by_state_and_date() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("callback.sqlite");
    let now = t0();
    let (done, waiting);
    {
        let mut store = SqliteStore::open(&path).expect("open");
        assert_eq!(store.schema_version().expect("version"), 1);
        let mut d = dispatcher(1, now);
        done = submit(&mut store, &mut d, request(), now);
        for i in [
            Input::VisitorAnswered,
            Input::AgentAnswered,
            Input::PlaybackFinished(Leg::Agent),
        ] {
            input(&mut store, &mut d, done, i, now);
        }
        let later = now + TimeDelta::seconds(90);
        input(&mut store, &mut d, done, Input::AgentHungUp, later);
        let tomorrow = now + TimeDelta::days(1);
        let r = NewRequest {
            wished: Some(WishedTime::At(tomorrow)),
            ..request()
        };
        waiting = submit(&mut store, &mut d, r, later);
        assert!(matches!(
            store.insert_request(
                &store
                    .load(done)
                    .expect("load")
                    .expect("some")
                    .summary
                    .request,
                State::Queued,
                now
            ),
            Err(StoreError::Duplicate(_))
        ));
    }
    let store = SqliteStore::open(&path).expect("reopen");
    let rec = store.load(done).expect("load").expect("stored");
    assert_eq!(rec.summary.state, State::Completed);
    assert_eq!(rec.summary.attempts, 1);
    assert_eq!(
        rec.summary.request.page_url.as_deref(),
        Some("https://shop.example/cart")
    );
    assert_eq!(rec.summary.request.phone, "0612345678");
    let states: Vec<State> = rec.events.iter().map(|e| e.state).collect();
    assert_eq!(states.first(), Some(&State::Queued));
    assert_eq!(states.last(), Some(&State::Completed));
    assert!(kinds(&rec).contains(&EventKind::Connected {
        agent: "alice".into(),
        hold: Duration::ZERO,
        time_to_connect: Duration::ZERO
    }));
    assert_eq!(
        kinds(&rec).last(),
        Some(&EventKind::Completed {
            talk: Duration::from_secs(90)
        })
    );
    assert_eq!(
        rec.events.last().map(|e| e.at),
        Some(now + TimeDelta::seconds(90))
    );

    let w = store.load(waiting).expect("load").expect("stored");
    assert_eq!(w.summary.state, State::Scheduled);
    assert_eq!(w.summary.due, now + TimeDelta::days(1));

    let by_state = |s| {
        store
            .list(&ListFilter {
                state: Some(s),
                ..ListFilter::default()
            })
            .expect("list")
    };
    assert_eq!(
        by_state(State::Completed)
            .iter()
            .map(|r| r.request.id)
            .collect::<Vec<_>>(),
        vec![done]
    );
    assert_eq!(
        by_state(State::Scheduled)
            .iter()
            .map(|r| r.request.id)
            .collect::<Vec<_>>(),
        vec![waiting]
    );
    assert!(by_state(State::Missed).is_empty());
    let window = ListFilter {
        created_from: Some(now + TimeDelta::seconds(1)),
        created_to: Some(now + TimeDelta::hours(1)),
        ..ListFilter::default()
    };
    assert_eq!(
        store
            .list(&window)
            .expect("list")
            .iter()
            .map(|r| r.request.id)
            .collect::<Vec<_>>(),
        vec![waiting]
    );
    assert_eq!(store.max_id().expect("max"), Some(waiting));
    assert!(store.load(RequestId(999)).expect("load").is_none());
}

#[test]
fn unknown_request_and_newer_schema_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.sqlite");
    let mut store = SqliteStore::open(&path).expect("open");
    let ev = rappel::callback::RequestEvent {
        at: t0(),
        kind: EventKind::Queued,
        state: State::Queued,
    };
    assert!(matches!(
        store.append_event(RequestId(7), &ev),
        Err(StoreError::UnknownRequest(RequestId(7)))
    ));
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("raw");
    conn.pragma_update(None, "user_version", 99)
        .expect("pragma");
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::SchemaTooNew {
            found: 99,
            supported: 1
        })
    ));
}

/// Builds a file with one scheduled, one holding and one connected request, then "crashes".
fn crashed_service(path: &std::path::Path) -> (RequestId, RequestId, RequestId) {
    let now = t0();
    let mut store = SqliteStore::open(path).expect("open");
    let mut d = dispatcher(1, now);
    let future = now + TimeDelta::hours(3);
    let scheduled = submit(
        &mut store,
        &mut d,
        NewRequest {
            wished: Some(WishedTime::At(future)),
            ..request()
        },
        now,
    );
    let connected = submit(&mut store, &mut d, request(), now);
    for i in [
        Input::VisitorAnswered,
        Input::AgentAnswered,
        Input::PlaybackFinished(Leg::Agent),
    ] {
        input(&mut store, &mut d, connected, i, now);
    }
    let holding = submit(&mut store, &mut d, request(), now);
    input(&mut store, &mut d, holding, Input::VisitorAnswered, now);
    (scheduled, holding, connected)
}

#[test]
fn recovery_requeues_interrupted_calls_and_keeps_scheduled_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash.sqlite");
    let (scheduled, holding, connected) = crashed_service(&path);

    let restart = t0() + TimeDelta::minutes(10);
    let mut store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(store.list_unfinished().expect("list").len(), 3);
    let resumed = recover(&mut store, RecoveryPolicy::Retry, 3, restart).expect("recover");
    let ids: Vec<_> = resumed
        .iter()
        .map(|r| (r.request.id, r.state, r.attempts))
        .collect();
    assert_eq!(
        ids,
        vec![
            (scheduled, State::Scheduled, 0),
            (holding, State::Queued, 1)
        ]
    );

    let h = store.load(holding).expect("load").expect("some");
    assert_eq!(
        h.events.last().map(|e| (&e.kind, e.state)),
        Some((
            &EventKind::Recovered {
                from: State::Holding,
                action: RecoveryAction::Requeued
            },
            State::Queued
        ))
    );
    let c = store.load(connected).expect("load").expect("some");
    assert_eq!(c.summary.state, State::Missed);
    assert!(kinds(&c).contains(&EventKind::Recovered {
        from: State::Connected,
        action: RecoveryAction::MarkedMissed
    }));
    assert_eq!(
        kinds(&c).last(),
        Some(&EventKind::Missed {
            reason: MissReason::Interrupted
        })
    );
    let s = store.load(scheduled).expect("load").expect("some");
    assert_eq!(s.summary.state, State::Scheduled);

    // Hand them back: the interrupted one is called again (attempt 2), the scheduled one at its time.
    let next = store.max_id().expect("max").map_or(1, |m| m.0 + 1);
    let mut d = dispatcher(next, restart);
    for r in resumed {
        d.restore(r.request, r.state, r.due, r.attempts, restart);
    }
    let cmds = persist(&mut store, &mut d);
    assert!(
        matches!(cmds.as_slice(), [(id, Command::CallVisitor { .. })] if *id == holding),
        "{cmds:?}"
    );
    let h = store.load(holding).expect("load").expect("some");
    assert_eq!(h.summary.attempts, 2);
    assert_eq!(h.summary.state, State::CallingVisitor);
    let due = t0() + TimeDelta::hours(3);
    assert_eq!(d.poll_timeout().map(|t| t <= due), Some(true));
    d.handle_timeout(due);
    let cmds = persist(&mut store, &mut d);
    assert!(
        cmds.iter()
            .any(|(id, c)| *id == scheduled && matches!(c, Command::CallVisitor { .. })),
        "{cmds:?}"
    );
    // New ids do not collide with stored ones.
    let s = d.submit(request(), due).expect("submit");
    assert!(s.id.0 > connected.0.max(holding.0));
}

#[test]
fn recovery_can_mark_interrupted_calls_missed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash2.sqlite");
    let (scheduled, holding, _) = crashed_service(&path);
    let mut store = SqliteStore::open(&path).expect("reopen");
    let resumed = recover(&mut store, RecoveryPolicy::MarkMissed, 3, t0()).expect("recover");
    assert_eq!(
        resumed.iter().map(|r| r.request.id).collect::<Vec<_>>(),
        vec![scheduled]
    );
    let h = store.load(holding).expect("load").expect("some");
    assert_eq!(h.summary.state, State::Missed);
    assert!(store
        .list_unfinished()
        .expect("list")
        .iter()
        .all(|r| r.summary.request.id == scheduled));
}

/// The same script against both backends gives the same records, lists and recovery.
#[test]
fn memory_and_sqlite_backends_agree() {
    use rappel::callback::store::MemoryStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sql = SqliteStore::open(dir.path().join("parity.sqlite")).expect("open");
    let mut mem = MemoryStore::new();
    let mut ids = Vec::new();
    for store in [&mut sql as &mut dyn Store, &mut mem as &mut dyn Store] {
        let now = t0();
        let mut d = dispatcher(1, now);
        let a = submit(store, &mut d, request(), now);
        input(
            store,
            &mut d,
            a,
            Input::VisitorFailed(rappel::callback::CallFailure::Busy),
            now,
        );
        let b = submit(store, &mut d, request(), now + TimeDelta::seconds(5));
        input(
            store,
            &mut d,
            b,
            Input::VisitorAnswered,
            now + TimeDelta::seconds(9),
        );
        ids = vec![a, b];
        let resumed =
            recover(store, RecoveryPolicy::Retry, 3, now + TimeDelta::minutes(1)).expect("recover");
        assert_eq!(resumed.len(), 2);
    }
    for id in &ids {
        let (x, y) = (sql.load(*id).expect("sql"), mem.load(*id).expect("mem"));
        assert!(x.is_some());
        assert_eq!(x, y);
    }
    for state in [None, Some(State::Queued), Some(State::Scheduled)] {
        let f = ListFilter {
            state,
            ..ListFilter::default()
        };
        assert_eq!(sql.list(&f).expect("sql"), mem.list(&f).expect("mem"));
    }
    assert_eq!(sql.max_id().expect("sql"), mem.max_id().expect("mem"));
}
