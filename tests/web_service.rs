//! The router over the real tokio `CallbackService` (in-memory store, tokio's paused clock), with scripted phones
//! behind a call layer that records every dial. Abusive submissions get their 4xx and dial nothing; a good one is
//! called at the trunk and followed to `completed` through the API.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rappel::callback::calls::{CallControl, CallEvent, CallId, Dial, PhoneScript, SimulatedCalls};
use rappel::callback::service::{CallbackService, TokioClock};
use rappel::callback::store::MemoryStore;
use rappel::config::Config;
use rappel::media::player::Playlist;
use rappel::web::{router, WebConfig, WebState};
use serde_json::Value;
use tower::ServiceExt;

/// Scripted phones; every dial target is recorded (each would be an INVITE).
struct Recording {
    inner: SimulatedCalls,
    dialled: Arc<Mutex<Vec<String>>>,
}

impl CallControl for Recording {
    fn dial(&mut self, dial: Dial) -> CallId {
        self.dialled.lock().unwrap().push(dial.target.clone());
        self.inner.dial(dial)
    }
    fn play(&mut self, call: CallId, media: Playlist) {
        self.inner.play(call, media)
    }
    fn bridge(&mut self, a: CallId, b: CallId) {
        self.inner.bridge(a, b)
    }
    fn hang_up(&mut self, call: CallId) {
        self.inner.hang_up(call)
    }
    fn next_event(
        &mut self,
    ) -> impl std::future::Future<Output = Option<(CallId, CallEvent)>> + Send {
        self.inner.next_event()
    }
}

const CONFIG: &str = r#"
[trunk]
uri = "sip:127.0.0.1:5070"
caller_id = "+33100000000"
[[agents]]
name = "alice"
uri = "sip:alice@127.0.0.1:5080"
skills = ["sales"]
[http]
admin_token = "change-me"
ip_burst = 5
[security]
allowed_countries = ["FR"]
denied_prefixes = ["+3389"]
"#;

async fn start() -> (axum::Router, Arc<Mutex<Vec<String>>>, CallbackService) {
    let config = Config::parse(CONFIG).expect("config");
    let dialled = Arc::new(Mutex::new(Vec::new()));
    let calls = Recording {
        inner: SimulatedCalls::new(|d: &Dial| {
            if d.target.contains("alice") {
                PhoneScript::answers(Duration::from_secs(1), Duration::from_secs(30))
            } else {
                PhoneScript::answers(Duration::from_secs(2), Duration::from_secs(60))
            }
        }),
        dialled: dialled.clone(),
    };
    let now = rappel::callback::Time::from(std::time::SystemTime::now());
    let service = CallbackService::start(
        config.service_config(),
        MemoryStore::new(),
        calls,
        Arc::new(TokioClock::starting_at(now)),
    )
    .await
    .expect("service");
    let state = WebState::new(Arc::new(service.clone()), WebConfig::from_config(&config)).unwrap();
    (router(state), dialled, service)
}

async fn send(app: &axum::Router, mut req: Request<Body>, client: u8) -> (StatusCode, Value) {
    req.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from((
            [198, 51, 100, client],
            5000,
        ))));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn post(body: &str) -> Request<Body> {
    Request::post("/api/callbacks")
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn abusive_submissions_get_4xx_and_dial_nothing() {
    let (app, dialled, service) = start().await;
    let cases = [
        (r#"{"phone": "123"}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (
            r#"{"phone": "+33 8 99 12 34 56"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"phone": "+44 7400 123456"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (r#"{"phone": "+33612345678""#, StatusCode::BAD_REQUEST),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let (status, json) = send(&app, post(body), i as u8).await;
        assert_eq!(status, *want, "{body}: {json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let big = format!(
        r#"{{"phone": "+33612345678", "context": "{}"}}"#,
        "x".repeat(8000)
    );
    assert_eq!(
        send(&app, post(&big), 9).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Let the service run: nothing was submitted, so nothing is dialled.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(dialled.lock().unwrap().is_empty());
    assert_eq!(service.live_calls(), 0);

    // A flood from one address: the burst (5) gets through, the rest is refused before the service.
    let mut accepted = 0;
    for i in 0..12 {
        let body = format!(r#"{{"phone": "+336123456{i:02}"}}"#);
        match send(&app, post(&body), 100).await.0 {
            StatusCode::CREATED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            s => panic!("{s}"),
        }
    }
    assert_eq!(accepted, 5);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let visitors: Vec<String> = dialled
        .lock()
        .unwrap()
        .iter()
        .filter(|t| !t.contains("alice"))
        .cloned()
        .collect();
    assert_eq!(visitors.len(), 5, "{visitors:?}");
    for t in &visitors {
        assert!(
            t.starts_with("sip:+336123456") && t.ends_with("@127.0.0.1:5070"),
            "{t}"
        );
    }
    service.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_callback_through_the_real_service() {
    let (app, dialled, service) = start().await;
    let (status, json) = send(
        &app,
        post(r#"{"phone": "06 12 34 56 78", "topic": "sales"}"#),
        1,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let id = json["id"].as_str().unwrap().to_owned();

    // One open request per number, whatever the address.
    let (status, _) = send(&app, post(r#"{"phone": "+33612345678"}"#), 2).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let get = || {
        Request::get(format!("/api/callbacks/{id}"))
            .body(Body::empty())
            .unwrap()
    };
    let mut states = Vec::new();
    for _ in 0..600 {
        let (status, v) = send(&app, get(), 1).await;
        assert_eq!(status, StatusCode::OK);
        let s = v["state"].as_str().unwrap().to_owned();
        if states.last() != Some(&s) {
            states.push(s.clone());
        }
        if s == "completed" {
            let kinds: Vec<&str> = v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["kind"].as_str().unwrap())
                .collect();
            assert!(kinds.contains(&"connected"), "{kinds:?}");
            assert_eq!(v["phone"], "+33 6** ** ** 78");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        states.last().map(String::as_str),
        Some("completed"),
        "{states:?}"
    );
    assert!(states.iter().any(|s| s == "connected"), "{states:?}");
    let d = dialled.lock().unwrap().clone();
    assert_eq!(
        d,
        [
            "sip:+33612345678@127.0.0.1:5070",
            "sip:alice@127.0.0.1:5080"
        ]
    );

    // The admin sees it with its full number.
    let list = Request::get("/api/callbacks?state=completed")
        .header("authorization", "Bearer change-me")
        .body(Body::empty())
        .unwrap();
    let (status, v) = send(&app, list, 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["requests"][0]["phone"], "+33612345678");
    assert_eq!(v["requests"][0]["id"], id);
    service.shutdown().await;
}
