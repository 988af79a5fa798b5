//! TEST DOUBLE of the callback service for the web tests: the real sans-IO [`Dispatcher`] behind the
//! [`CallbackApi`] trait, with a simulated clock the test advances, an in-memory history, and a record of every
//! command the dispatcher gave the call layer. A `CallVisitor` command is what would become a SIP INVITE to the
//! trunk, so "no INVITE leaves the engine" is checked as "no `CallVisitor` command was recorded".
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use rappel::callback::request::CallbackRequest;
use rappel::callback::{
    AgentConfig, CallbackConfig, Command, Dispatcher, Input, NewRequest, RequestEvent, RequestId,
    State, Time,
};
use rappel::web::{
    router, ApiError, BoxFuture, CallbackApi, ListFilter, RequestView, Submission, WebConfig,
    WebState,
};
use tokio::sync::broadcast;
use tower::ServiceExt;

struct Record {
    request: CallbackRequest,
    state: State,
    events: Vec<RequestEvent>,
}

struct Inner {
    dispatcher: Dispatcher,
    now: Time,
    records: BTreeMap<RequestId, Record>,
    commands: Vec<(RequestId, Command)>,
}

/// The test double (see the module docs).
pub struct FakeService {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<(RequestId, RequestEvent)>,
    pub submits: Mutex<usize>,
}

impl FakeService {
    /// A service with agents `alice` (sales) and `bob` (support), clock at `now`.
    pub fn new(now: Time) -> Arc<Self> {
        let mut config = CallbackConfig::default();
        config.flow.caller_id = "+33100000000".into();
        let agents = vec![
            AgentConfig::new("alice", "sip:alice@127.0.0.1:5080", &["sales"]),
            AgentConfig::new("bob", "sip:bob@127.0.0.1:5080", &["support"]),
        ];
        let dispatcher = Dispatcher::new(config, agents, 1, now).expect("agents");
        let (tx, _) = broadcast::channel(256);
        Arc::new(FakeService {
            inner: Mutex::new(Inner {
                dispatcher,
                now,
                records: BTreeMap::new(),
                commands: Vec::new(),
            }),
            tx,
            submits: Mutex::new(0),
        })
    }

    fn drain(&self, inner: &mut Inner) {
        while let Some((id, ev)) = inner.dispatcher.poll_event() {
            if let Some(r) = inner.records.get_mut(&id) {
                r.state = ev.state;
                r.events.push(ev.clone());
            }
            let _ = self.tx.send((id, ev));
        }
        while let Some(c) = inner.dispatcher.poll_command() {
            inner.commands.push(c);
        }
    }

    /// Delivers a call-layer event, as the engine would.
    pub fn input(&self, id: RequestId, input: Input) {
        let mut g = self.inner.lock().unwrap();
        let now = g.now;
        g.dispatcher
            .handle_input(id, input, now)
            .expect("live request");
        self.drain(&mut g);
    }

    /// Advances the simulated clock and fires what is due.
    pub fn advance(&self, d: Duration) {
        let mut g = self.inner.lock().unwrap();
        g.now += chrono::TimeDelta::from_std(d).unwrap();
        let now = g.now;
        g.dispatcher.handle_timeout(now);
        self.drain(&mut g);
    }

    /// Numbers the call layer was asked to dial (each would be an INVITE to the trunk).
    pub fn dialled_visitors(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .commands
            .iter()
            .filter_map(|(_, c)| match c {
                Command::CallVisitor { number, .. } => Some(number.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every request id, in order.
    pub fn ids(&self) -> Vec<RequestId> {
        self.inner.lock().unwrap().records.keys().copied().collect()
    }

    fn view(inner: &Inner, id: RequestId) -> Option<RequestView> {
        let r = inner.records.get(&id)?;
        let live = inner.dispatcher.status(id, inner.now);
        Some(RequestView {
            id,
            state: r.state,
            due: live.as_ref().map(|s| s.due).unwrap_or(r.request.created_at),
            queue_position: live.as_ref().and_then(|s| s.queue_position),
            estimated_wait: live.as_ref().and_then(|s| s.estimated_wait),
            events: r.events.clone(),
            phone: r.request.phone.clone(),
            topic: r.request.topic.clone(),
            created: r.request.created_at,
        })
    }
}

impl CallbackApi for FakeService {
    fn submit(&self, req: NewRequest) -> BoxFuture<'_, Result<Submission, ApiError>> {
        Box::pin(async move {
            *self.submits.lock().unwrap() += 1;
            let mut g = self.inner.lock().unwrap();
            let now = g.now;
            let s = g.dispatcher.submit(req, now).map_err(|e| match e {
                rappel::callback::queue::DispatchError::Request(r) => ApiError::Invalid(r),
                _ => ApiError::Unavailable,
            })?;
            g.records.insert(
                s.id,
                Record {
                    request: s.request.clone(),
                    state: s.state,
                    events: Vec::new(),
                },
            );
            self.drain(&mut g);
            Ok(Submission {
                id: s.id,
                state: s.state,
                due: s.due,
            })
        })
    }

    fn status(&self, id: RequestId) -> BoxFuture<'_, Result<Option<RequestView>, ApiError>> {
        Box::pin(async move { Ok(FakeService::view(&self.inner.lock().unwrap(), id)) })
    }

    fn cancel(&self, id: RequestId) -> BoxFuture<'_, Result<bool, ApiError>> {
        Box::pin(async move {
            let mut g = self.inner.lock().unwrap();
            let now = g.now;
            let ok = g.dispatcher.cancel(id, now).is_ok();
            self.drain(&mut g);
            Ok(ok)
        })
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<RequestView>, ApiError>> {
        Box::pin(async move {
            let g = self.inner.lock().unwrap();
            Ok(g.records
                .keys()
                .rev()
                .filter_map(|id| FakeService::view(&g, *id))
                .filter(|v| filter.state.is_none_or(|s| s == v.state))
                .take(filter.limit)
                .collect())
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<(RequestId, RequestEvent)> {
        self.tx.subscribe()
    }

    fn metrics(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let g = self.inner.lock().unwrap();
            g.dispatcher.render_metrics(g.now)
        })
    }

    fn open_request_for<'a>(&'a self, e164: &'a str) -> BoxFuture<'a, Option<RequestId>> {
        Box::pin(async move {
            let g = self.inner.lock().unwrap();
            g.records
                .iter()
                .find(|(_, r)| r.request.phone == e164 && !r.state.is_final())
                .map(|(id, _)| *id)
        })
    }

    fn live_calls(&self) -> usize {
        0
    }
}

/// The wall clock as the callback core's time (the web layer checks wished times against it).
pub fn wall() -> Time {
    Time::from(std::time::SystemTime::now())
}

/// A router over a fresh double, with `config`; requests come from `client` unless they carry their own
/// [`ConnectInfo`] (see [`from`]).
pub fn app(config: WebConfig, client: SocketAddr) -> (axum::Router, Arc<FakeService>, WebState) {
    let fake = FakeService::new(wall());
    let state = WebState::new(fake.clone(), config).expect("countries");
    let app = router(state.clone()).layer(axum::middleware::from_fn(
        move |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
            if req.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
                req.extensions_mut().insert(ConnectInfo(client));
            }
            next.run(req).await
        },
    ));
    (app, fake, state)
}

/// The request as sent from `client`.
pub fn from(mut req: Request<Body>, client: SocketAddr) -> Request<Body> {
    req.extensions_mut().insert(ConnectInfo(client));
    req
}

/// The configuration most tests use: France only, +3389 denied, admin token `secret-token`.
pub fn config() -> WebConfig {
    WebConfig {
        admin_token: Some("secret-token".into()),
        id_secret: b"test-id-secret".to_vec(),
        allowed_countries: vec!["FR".into()],
        denied_prefixes: vec!["+3389".into()],
        topics: vec!["sales".into(), "support".into()],
        // Most tests send many requests from one address; the flood test sets the real default.
        ip_rate: (1000, Duration::from_secs(60)),
        ..WebConfig::default()
    }
}

pub fn client(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 40000))
}

/// Sends one request and returns status, headers and the body as JSON (or `Null`).
pub async fn send(
    app: &axum::Router,
    req: Request<Body>,
) -> (
    axum::http::StatusCode,
    axum::http::HeaderMap,
    serde_json::Value,
) {
    let resp: Response<Body> = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

pub fn post_json(body: &str) -> Request<Body> {
    Request::post("/api/callbacks")
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}
