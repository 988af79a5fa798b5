//! `POST /api/webrtc` against the web layer's service double and a real engine (no browser): off unless enabled,
//! the same per-IP rate limit as phone requests, offers without G.711 refused, and an accepted offer answered by
//! an ICE-lite DTLS-SRTP peer with PCMU, its request dialling the parked browser leg; the page's hang-up ends the
//! leg.

mod web_support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rappel::callback::calls::{is_browser_target, BrowserLegs};
use rappel::net::webrtc::{offered_law, BrowserOptions};
use rappel::web::{BrowserGateway, WebConfig};
use rappel::Engine;
use web_support::{app, client, config, get, send};

/// A browser-like offer: BUNDLE, rtcp-mux, DTLS fingerprint, PCMU and PCMA.
const OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 0 8\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Xy1z\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendrecv\r\n\
a=msid:- track0\r\n\
a=rtcp-mux\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=ssrc:1234 cname:test\r\n";

fn call(body: &serde_json::Value) -> Request<Body> {
    Request::post("/api/webrtc")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn engine() -> Engine {
    let base = 26000 + (std::process::id() % 20) as u16 * 100;
    Engine::builder()
        .rtp_ports(base, base + 99)
        .start()
        .await
        .unwrap()
}

#[test]
fn law_follows_the_offer() {
    assert_eq!(offered_law(OFFER), Some(rappel::media::g711::Law::Ulaw));
    assert_eq!(
        offered_law("m=audio 9 UDP/TLS/RTP/SAVPF 111 8\r\n"),
        Some(rappel::media::g711::Law::Alaw)
    );
    assert_eq!(offered_law("m=audio 9 UDP/TLS/RTP/SAVPF 111 9\r\n"), None);
    assert_eq!(offered_law("m=video 9 UDP/TLS/RTP/SAVPF 0\r\n"), None);
    assert_eq!(offered_law(""), None);
}

#[tokio::test]
async fn browser_calls_are_off_unless_enabled() {
    let (app, _fake, _state) = app(config(), client(1));
    let (st, _, _) = send(&app, call(&serde_json::json!({ "offer": OFFER }))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, _, cfg) = send(&app, get("/api/widget-config")).await;
    assert_eq!(cfg["browser_calls"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_calls_share_the_per_ip_limit_and_need_g711() {
    let web = WebConfig {
        ip_rate: (3, Duration::from_secs(3600)),
        ..config()
    };
    let (app, fake, state) = app(web, client(2));
    let engine = engine().await;
    let legs = BrowserLegs::new(10, Duration::from_secs(60));
    state.enable_browser_calls(BrowserGateway {
        engine: engine.clone(),
        legs: legs.clone(),
        options: BrowserOptions::default(),
    });
    let (_, _, cfg) = send(&app, get("/api/widget-config")).await;
    assert_eq!(cfg["browser_calls"], true);

    // 1: Opus only: refused, no request.
    let opus = OFFER.replace("SAVPF 0 8", "SAVPF 111").replace(
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000",
        "a=rtpmap:111 opus/48000/2",
    );
    let (st, _, body) = send(&app, call(&serde_json::json!({ "offer": opus }))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(fake.ids().is_empty());

    // 2: a G.711 offer: answered by an ICE-lite peer with PCMU and a fingerprint; the request's visitor is the
    // parked leg.
    let (st, headers, body) = send(
        &app,
        call(&serde_json::json!({ "offer": OFFER, "topic": "sales" })),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    assert!(headers.contains_key("location"));
    let answer = body["answer"].as_str().unwrap();
    assert!(answer.contains("a=ice-lite"), "{answer}");
    assert!(answer.contains("a=fingerprint:"), "{answer}");
    assert!(answer.contains("PCMU/8000"), "{answer}");
    assert!(!answer.contains("PCMA"), "{answer}");
    assert!(answer.contains("a=candidate:"), "{answer}");
    let dialled = fake.dialled_visitors();
    assert_eq!(dialled.len(), 1, "{dialled:?}");
    assert!(is_browser_target(&dialled[0]), "{dialled:?}");
    assert_eq!(legs.len(), 1);
    // The phone path never takes a browser key.
    let (st, _, _) = send(
        &app,
        Request::post("/api/callbacks")
            .header("content-type", "application/json")
            .body(Body::from(
                serde_json::json!({ "phone": dialled[0] }).to_string(),
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);

    // 4: over the per-IP burst of 3 (the phone request above counted too).
    let (st, headers, _) = send(&app, call(&serde_json::json!({ "offer": OFFER }))).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    let (_, _, _) = send(&app, get("/metrics")).await;

    // The visitor hangs up in the page: the browser leg ends (hung up by us), once.
    let id = body["id"].as_str().unwrap().to_owned();
    let hangup = |id: &str| {
        Request::post(format!("/api/webrtc/{id}/hangup"))
            .body(Body::empty())
            .unwrap()
    };
    let mut leg = legs.take(&dialled[0]).expect("parked");
    let (st, _, _) = send(&app, hangup(&id)).await;
    assert_eq!(st, StatusCode::OK);
    let cdr = tokio::time::timeout(Duration::from_secs(10), leg.ended())
        .await
        .expect("the leg ends")
        .expect("a record");
    assert_eq!(cdr.hangup_by, rappel::call::HangupBy::Local);
    assert_eq!(cdr.target, "webrtc");
    let (st, _, _) = send(&app, hangup(&id)).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _, _) = send(&app, hangup("1-0000000000000000")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    drop(leg);
    tokio::time::timeout(
        Duration::from_secs(10),
        engine.shutdown(rappel::ShutdownMode::HangUp),
    )
    .await
    .expect("engine stops");
}

/// Hanging up in the page before the flow dialled the browser leg (it is still parked, e.g. while an agent rings
/// first): the leg is dropped and the request cancelled, so nothing later dials a dead leg.
#[tokio::test]
async fn hanging_up_a_parked_browser_call_cancels_its_request() {
    let (app, _fake, state) = app(config(), client(7));
    let engine = engine().await;
    let legs = BrowserLegs::new(10, Duration::from_secs(60));
    state.enable_browser_calls(BrowserGateway {
        engine: engine.clone(),
        legs: legs.clone(),
        options: BrowserOptions::default(),
    });
    let (st, _, body) = send(&app, call(&serde_json::json!({ "offer": OFFER }))).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    assert_eq!(legs.len(), 1, "parked: the service double never takes it");
    let id = body["id"].as_str().unwrap().to_owned();
    let (st, _, body) = send(
        &app,
        Request::post(format!("/api/webrtc/{id}/hangup"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        (body["hung_up"].as_bool(), body["cancelled"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(legs.len(), 0);
    let (st, _, view) = send(&app, get(&format!("/api/callbacks/{id}"))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(view["state"], "cancelled", "{view}");
    tokio::time::timeout(
        Duration::from_secs(10),
        engine.shutdown(rappel::ShutdownMode::HangUp),
    )
    .await
    .expect("engine stops");
}
