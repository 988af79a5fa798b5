//! Webhook delivery of the callback service against an HTTP server in the test, on loopback.
//!
//! The server checks each delivery's `X-Rappel-Signature` against its own HMAC of `timestamp.body` (with
//! `webhook::sign`), records it, and answers 503 to the very first POST: the service must retry it (after
//! `webhook::retry_delay(1)` = 1 s of real time) and keep the events in order. Time is the wall clock here: the
//! HTTP client's timeouts run on tokio's clock, which must not jump while a socket is waiting.

use std::sync::Arc;
use std::time::Duration;

use rappel::callback::calls::SimulatedCalls;
use rappel::callback::calls::{CallControl, PhoneScript};
use rappel::callback::service::{
    CallbackService, Clock, ServiceConfig, SystemClock, WebhookConfig,
};
use rappel::callback::store::MemoryStore;
use rappel::callback::webhook::sign;
use rappel::callback::{CallFailure, NewRequest, WishedTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SECRET: &[u8] = b"webhook secret";

/// One POST as the server saw it.
#[derive(Debug)]
struct Delivery {
    status: u16,
    signature_ok: bool,
    timestamp: i64,
    body: serde_json::Value,
}

/// Serves HTTP/1.1 POSTs (keep-alive) on loopback; answers 503 to the first one, 200 after.
async fn server() -> (String, mpsc::UnboundedReceiver<Delivery>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/callback", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r);
            // Connections are served one at a time: the service delivers in order on one connection.
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
                assert!(line.starts_with("POST /hooks/callback "), "{line}");
                let (mut len, mut ts, mut sig) = (0usize, None, None);
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).await.unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (name, value) = h.split_once(':').unwrap();
                    let value = value.trim().to_owned();
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => len = value.parse().unwrap(),
                        "x-rappel-timestamp" => ts = value.parse::<i64>().ok(),
                        "x-rappel-signature" => sig = Some(value),
                        _ => {}
                    }
                }
                assert!(len < 65_536);
                let mut body = vec![0; len];
                r.read_exact(&mut body).await.unwrap();
                let body = String::from_utf8(body).unwrap();
                let timestamp = ts.expect("timestamp header");
                let signature_ok = sig.as_deref() == Some(sign(SECRET, timestamp, &body).as_str());
                let status = if std::mem::take(&mut first) { 503 } else { 200 };
                let reason = if status == 200 {
                    "OK"
                } else {
                    "Service Unavailable"
                };
                w.write_all(
                    format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                )
                .await
                .unwrap();
                let _ = tx.send(Delivery {
                    status,
                    signature_ok,
                    timestamp,
                    body: serde_json::from_str(&body).unwrap(),
                });
            }
        }
    });
    (url, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a delivery in time")
        .expect("server alive")
}

fn kind(d: &Delivery) -> &str {
    d.body["kind"]["type"].as_str().unwrap_or("?")
}

async fn start(webhook: WebhookConfig, calls: impl CallControl) -> CallbackService {
    let config = ServiceConfig {
        webhook: Some(webhook),
        ..ServiceConfig::default()
    };
    CallbackService::start(config, MemoryStore::new(), calls, Arc::new(SystemClock))
        .await
        .unwrap()
}

#[tokio::test]
async fn events_are_posted_signed_in_order_and_a_refused_one_is_retried() {
    let (url, mut rx) = server().await;
    let calls = SimulatedCalls::new(|_| PhoneScript::fails(Duration::ZERO, CallFailure::Failed));
    let svc = start(WebhookConfig::new(&url, SECRET), calls).await;
    let later = SystemClock.now() + chrono::Duration::hours(1);
    let id = svc
        .submit(NewRequest {
            phone: "+33 6 10 20 30 40".into(),
            wished: Some(WishedTime::At(later)),
            ..NewRequest::default()
        })
        .await
        .unwrap()
        .id;
    assert!(svc.cancel(id).await.unwrap());

    let refused = next(&mut rx).await;
    assert_eq!((refused.status, kind(&refused)), (503, "submitted"));
    let retried = next(&mut rx).await;
    assert_eq!((retried.status, kind(&retried)), (200, "submitted"));
    assert!(retried.timestamp >= refused.timestamp);
    let scheduled = next(&mut rx).await;
    assert_eq!(kind(&scheduled), "scheduled");
    assert_eq!(scheduled.body["state"], "scheduled");
    let cancelled = next(&mut rx).await;
    assert_eq!(kind(&cancelled), "cancelled");
    for d in [&refused, &retried, &scheduled, &cancelled] {
        assert!(d.signature_ok, "signature of {d:?}");
        assert_eq!(d.body["request"], serde_json::json!(id.0));
    }
    // The server's check can fail: another secret gives another signature.
    let body = serde_json::to_string(&cancelled.body).unwrap();
    assert_ne!(
        sign(b"another secret", cancelled.timestamp, &body),
        sign(SECRET, cancelled.timestamp, &body)
    );
    // The worker counts a delivery once it has read the answer, just after the server reported it here.
    let delivered = "rappel_callback_webhook_deliveries_total{result=\"delivered\"} 3";
    let mut metrics = svc.metrics().await;
    for _ in 0..500 {
        if metrics.contains(delivered) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a counter of another task, bounded
        metrics = svc.metrics().await;
    }
    assert!(metrics.contains(delivered), "{metrics}");
    assert!(
        metrics.contains("rappel_callback_webhook_deliveries_total{result=\"retried\"} 1"),
        "{metrics}"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_slowing_the_service() {
    // Nobody listens at this address: every delivery fails and waits 1 + 2 + 4 s for its retries, so the one-slot queue
    // is full while the service goes on storing and answering.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", dead.local_addr().unwrap());
    drop(dead);
    let mut hook = WebhookConfig::new(&url, SECRET);
    hook.queue = 1;
    hook.max_retries = 3;
    let calls = SimulatedCalls::new(|_| PhoneScript::fails(Duration::ZERO, CallFailure::Failed));
    let svc = start(hook, calls).await;
    let later = SystemClock.now() + chrono::Duration::hours(1);
    for n in 0..5 {
        svc.submit(NewRequest {
            phone: format!("+33 6 10 20 30 4{n}"),
            wished: Some(WishedTime::At(later)),
            ..NewRequest::default()
        })
        .await
        .unwrap();
    }
    // 5 requests x 2 events: at most one in the worker and one queued; the rest were dropped at once.
    let metrics = svc.metrics().await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("rappel_callback_webhook_deliveries_total{result=\"dropped\"} ")
        })
        .and_then(|v| v.parse().ok())
        .expect("dropped counter");
    assert!(dropped >= 8, "{metrics}");
    assert_eq!(svc.list(Default::default()).await.unwrap().len(), 5);
    svc.shutdown().await;
}

#[tokio::test]
async fn recovery_events_are_delivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("callbacks.db");
    let ringing =
        || SimulatedCalls::new(|_| PhoneScript::answers(Duration::from_secs(3600), Duration::ZERO));
    // First run, no webhook: the visitor's phone is still ringing when the service stops.
    let store = rappel::callback::store::SqliteStore::open(&db).unwrap();
    let svc = CallbackService::start(
        ServiceConfig::default(),
        store,
        ringing(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let id = svc
        .submit(NewRequest {
            phone: "+33 6 10 20 30 50".into(),
            ..NewRequest::default()
        })
        .await
        .unwrap()
        .id;
    svc.shutdown().await;
    // Second run with the webhook: the recovery's event is delivered first (refused once, then retried).
    let (url, mut rx) = server().await;
    let config = ServiceConfig {
        webhook: Some(WebhookConfig::new(&url, SECRET)),
        ..ServiceConfig::default()
    };
    let store = rappel::callback::store::SqliteStore::open(&db).unwrap();
    let svc = CallbackService::start(config, store, ringing(), Arc::new(SystemClock))
        .await
        .unwrap();
    let refused = next(&mut rx).await;
    assert_eq!((refused.status, kind(&refused)), (503, "recovered"));
    let d = next(&mut rx).await;
    assert_eq!((d.status, kind(&d)), (200, "recovered"));
    assert!(d.signature_ok);
    assert_eq!(d.body["request"], serde_json::json!(id.0));
    assert_eq!(d.body["kind"]["from"], "calling_visitor");
    assert_eq!(d.body["kind"]["action"], "requeued");
    let d = next(&mut rx).await;
    assert_eq!(kind(&d), "calling_visitor");
    assert_eq!(d.body["kind"]["attempt"], 2);
    svc.shutdown().await;
}
