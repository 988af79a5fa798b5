//! The HTTP API over the real dispatcher (behind a clearly marked test double of the service): submissions,
//! status, cancel, admin listing, CORS, assets, and abuse protection. Each refusal gets its 4xx and dials nobody.

mod web_support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rappel::callback::{Input, RequestId};
use rappel::web::WebConfig;
use serde_json::Value;
use web_support::{app, client, config, from, get, post_json, send};

const PHONE: &str = "+33612345678";

async fn submit_ok(router: &axum::Router, body: &str) -> Value {
    let (status, headers, json) = send(router, post_json(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let id = json["id"].as_str().expect("id").to_owned();
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/api/callbacks/{id}").as_str())
    );
    json
}

#[tokio::test]
async fn submit_now_calls_the_visitor_and_status_shows_it() {
    let (router, fake, _) = app(config(), client(1));
    let json = submit_ok(
        &router,
        r#"{"phone": "+33 6 12 34 56 78", "topic": "sales"}"#,
    )
    .await;
    assert_eq!(json["state"], "queued");
    assert!(json["scheduled_at"].as_str().is_some());
    assert_eq!(fake.dialled_visitors(), vec![PHONE.to_owned()]);

    let id = json["id"].as_str().unwrap();
    let (status, headers, v) = send(&router, get(&format!("/api/callbacks/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("cache-control").unwrap(), "no-store");
    assert_eq!(v["state"], "calling_visitor");
    assert_eq!(
        v["phone"], "+33 6** ** ** 78",
        "the public view masks the number"
    );
    assert_eq!(v["topic"], "sales");
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["submitted", "queued", "calling_visitor"]);
    let last = &v["events"][2];
    assert_eq!(last["detail"], "calling the visitor (attempt 1)");
    assert!(last["at"].as_str().unwrap().contains('T'));
}

#[tokio::test]
async fn national_format_is_normalised_to_e164() {
    let (router, fake, _) = app(config(), client(1));
    submit_ok(&router, r#"{"phone": "06.12.34.56.78"}"#).await;
    assert_eq!(fake.dialled_visitors(), vec![PHONE.to_owned()]);
}

#[tokio::test]
async fn visitor_states_on_the_way_to_connected() {
    let (router, fake, _) = app(config(), client(1));
    let json = submit_ok(&router, r#"{"phone": "+33612345678", "topic": "sales"}"#).await;
    let id = json["id"].as_str().unwrap().to_owned();
    let rid = fake.ids()[0];
    let state = |router: axum::Router, id: String| async move {
        send(&router, get(&format!("/api/callbacks/{id}"))).await.2["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    fake.input(rid, Input::VisitorAnswered);
    assert_eq!(state(router.clone(), id.clone()).await, "calling_agent");
    fake.input(rid, Input::AgentAnswered);
    // The whisper plays to the agent, then the bridge.
    fake.input(rid, Input::PlaybackFinished(rappel::callback::Leg::Agent));
    assert_eq!(state(router.clone(), id.clone()).await, "connected");
    fake.input(rid, Input::AgentHungUp);
    let v = send(&router, get(&format!("/api/callbacks/{id}"))).await.2;
    assert_eq!(v["state"], "completed");
    assert_eq!(v["final"], true);
}

#[tokio::test]
async fn invalid_number_is_422_and_dials_nobody() {
    let (router, fake, _) = app(config(), client(1));
    for phone in [
        "12",
        "+33 1",
        "hello",
        "+33 6 12 34 56 78 90 12",
        "+999123456789",
        "",
    ] {
        let body = serde_json::json!({ "phone": phone }).to_string();
        let (status, _, json) = send(&router, post_json(&body)).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{phone:?}: {json}"
        );
        assert!(
            json["error"].as_str().unwrap().contains("not valid"),
            "{json}"
        );
    }
    assert!(fake.dialled_visitors().is_empty());
    assert_eq!(*fake.submits.lock().unwrap(), 0);
}

#[tokio::test]
async fn premium_prefix_is_422_and_dials_nobody() {
    let (router, fake, _) = app(config(), client(1));
    let (status, _, json) = send(&router, post_json(r#"{"phone": "+33 8 99 12 34 56"}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(json["error"].as_str().unwrap().contains("premium-rate"));
    assert!(fake.dialled_visitors().is_empty());
    assert_eq!(*fake.submits.lock().unwrap(), 0);
}

#[tokio::test]
async fn disallowed_country_is_422_and_dials_nobody() {
    let (router, fake, _) = app(config(), client(1));
    for phone in ["+44 7400 123456", "+49 30 1234567", "+1 202 555 0123"] {
        let body = serde_json::json!({ "phone": phone }).to_string();
        let (status, _, json) = send(&router, post_json(&body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{phone}: {json}");
        assert!(
            json["error"]
                .as_str()
                .unwrap()
                .contains("countries we serve"),
            "{json}"
        );
    }
    assert!(fake.dialled_visitors().is_empty());
}

#[tokio::test]
async fn flood_from_one_address_gets_429_with_retry_after() {
    let cfg = WebConfig {
        ip_rate: WebConfig::default().ip_rate,
        ..config()
    };
    let (router, fake, _) = app(cfg, client(7));
    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..20u32 {
        // Distinct valid numbers, so only the per-address limit applies.
        let body = format!(r#"{{"phone": "+336123456{:02}"}}"#, i);
        let (status, headers, json) = send(&router, post_json(&body)).await;
        match status {
            StatusCode::CREATED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let secs: u64 = headers
                    .get("retry-after")
                    .expect("Retry-After")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&secs), "Retry-After {secs}");
                assert!(json["error"].as_str().is_some());
            }
            s => panic!("unexpected {s}: {json}"),
        }
    }
    assert_eq!(accepted, 5, "the default burst is 5");
    assert_eq!(limited, 15);
    assert_eq!(
        fake.dialled_visitors().len(),
        5,
        "no call for a refused submission"
    );
    // Another address is not affected.
    let req = from(post_json(r#"{"phone": "+33612345699"}"#), client(8));
    let (status, _, _) = send(&router, req).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn repeated_number_is_limited_across_addresses() {
    let (router, fake, _) = app(config(), client(1));
    let mut last = None;
    for n in 0..3u8 {
        let r = &router;
        let req = from(post_json(r#"{"phone": "+33612345678"}"#), client(10 + n));
        let (status, headers, json) = send(r, req).await;
        if n < 2 {
            assert_eq!(status, StatusCode::CREATED, "{json}");
            let id = json["id"].as_str().unwrap();
            let del = Request::delete(format!("/api/callbacks/{id}"))
                .body(Body::empty())
                .unwrap();
            assert_eq!(send(r, del).await.0, StatusCode::OK);
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
            last = headers.get("retry-after").cloned();
        }
    }
    assert!(last.is_some());
    assert_eq!(fake.dialled_visitors().len(), 2);
}

#[tokio::test]
async fn one_open_request_per_number() {
    let (router, fake, _) = app(config(), client(1));
    submit_ok(&router, r#"{"phone": "+33612345678"}"#).await;
    let (status, _, json) = send(&router, post_json(r#"{"phone": "06 12 34 56 78"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(json["error"].as_str().unwrap().contains("already pending"));
    assert_eq!(fake.dialled_visitors().len(), 1);
    assert_eq!(*fake.submits.lock().unwrap(), 1);
}

#[tokio::test]
async fn oversize_body_is_413_and_dials_nobody() {
    let (router, fake, _) = app(config(), client(1));
    let big = format!(
        r#"{{"phone": "+33612345678", "context": "{}"}}"#,
        "x".repeat(5000)
    );
    // With a Content-Length header (refused before reading)...
    let req = Request::post("/api/callbacks")
        .header("content-type", "application/json")
        .header("content-length", big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    assert_eq!(send(&router, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // ...and streamed without one.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(512)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let req = Request::post("/api/callbacks")
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    assert_eq!(send(&router, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(fake.dialled_visitors().is_empty());
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (router, fake, _) = app(config(), client(1));
    for body in [
        "{",
        "not json",
        r#"{"topic": "sales"}"#,
        r#"{"phone": 33612345678}"#,
        "[]",
    ] {
        let (status, _, json) = send(&router, post_json(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(json["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON"));
    }
    assert!(fake.dialled_visitors().is_empty());
}

#[tokio::test]
async fn scheduled_times() {
    let (router, fake, _) = app(config(), client(1));
    let at = (web_support::wall() + chrono::TimeDelta::days(2))
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
    let body = serde_json::json!({ "phone": PHONE, "at": at.to_rfc3339() }).to_string();
    let json = submit_ok(&router, &body).await;
    assert_eq!(json["state"], "scheduled");
    let due = chrono::DateTime::parse_from_rfc3339(json["scheduled_at"].as_str().unwrap()).unwrap();
    assert_eq!(due.timestamp(), at.timestamp());
    assert!(fake.dialled_visitors().is_empty(), "not before its time");

    // A local time needs a time zone.
    let local = at.naive_local().format("%Y-%m-%dT%H:%M").to_string();
    let body = serde_json::json!({ "phone": "+33612345679", "at": local }).to_string();
    let (status, _, json) = send(&router, post_json(&body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    let body = serde_json::json!({ "phone": "+33612345679", "at": local, "tz": "Europe/Paris" })
        .to_string();
    assert_eq!(submit_ok(&router, &body).await["state"], "scheduled");
    // Unknown zone, nonsense date, too far ahead.
    for (at, tz) in [
        (local.as_str(), "Mars/Olympus"),
        ("tomorrow", "Europe/Paris"),
        ("2099-01-01T10:00:00Z", "Europe/Paris"),
    ] {
        let body = serde_json::json!({ "phone": "+33612345670", "at": at, "tz": tz }).to_string();
        let (status, _, json) = send(&router, post_json(&body)).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{at} {tz}: {json}"
        );
    }
}

#[tokio::test]
async fn topics_must_be_offered_ones() {
    let (router, _, _) = app(config(), client(1));
    let (status, _, json) = send(
        &router,
        post_json(r#"{"phone": "+33612345678", "topic": "pizza"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(json["error"].as_str().unwrap().contains("topics"));
}

#[tokio::test]
async fn ids_cannot_be_guessed() {
    let (router, fake, state) = app(config(), client(1));
    let json = submit_ok(&router, r#"{"phone": "+33612345678"}"#).await;
    let id = json["id"].as_str().unwrap();
    let rid = fake.ids()[0];
    assert_eq!(id, state.public_id(rid));
    for bad in [
        format!("{}", rid.0),
        format!("{}-0000000000000000", rid.0),
        "x".into(),
    ] {
        let (status, ..) = send(&router, get(&format!("/api/callbacks/{bad}"))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
        let del = Request::delete(format!("/api/callbacks/{bad}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&router, del).await.0, StatusCode::NOT_FOUND);
    }
    // A well-formed id of a request that does not exist.
    let other = state.public_id(RequestId(999));
    assert_eq!(
        send(&router, get(&format!("/api/callbacks/{other}")))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn delete_cancels_once() {
    let (router, _, _) = app(config(), client(1));
    let json = submit_ok(&router, r#"{"phone": "+33612345678"}"#).await;
    let id = json["id"].as_str().unwrap();
    let del = || {
        Request::delete(format!("/api/callbacks/{id}"))
            .body(Body::empty())
            .unwrap()
    };
    let (status, _, v) = send(&router, del()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["state"], "cancelled");
    let v = send(&router, get(&format!("/api/callbacks/{id}"))).await.2;
    assert_eq!(v["state"], "cancelled");
    let (status, _, v) = send(&router, del()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["state"], "cancelled");
}

#[tokio::test]
async fn admin_list_needs_the_token_and_shows_missed_first() {
    let (router, fake, _) = app(config(), client(1));
    for phone in ["+33612345671", "+33612345672", "+33612345673"] {
        let body = serde_json::json!({ "phone": phone }).to_string();
        submit_ok(&router, &body).await;
    }
    // The second visitor answers, then hangs up while an agent is called: missed, to call back by hand.
    let ids = fake.ids();
    fake.input(ids[1], Input::VisitorAnswered);
    fake.input(ids[1], Input::VisitorHungUp);

    let list = |auth: Option<&str>, q: &str| {
        let mut b = Request::get(format!("/api/callbacks{q}"));
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Body::empty()).unwrap()
    };
    let (status, headers, _) = send(&router, list(None, "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(
        send(&router, list(Some("Bearer nope"), "")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&router, list(Some("secret-token"), "")).await.0,
        StatusCode::UNAUTHORIZED
    );

    let (status, _, v) = send(&router, list(Some("Bearer secret-token"), "")).await;
    assert_eq!(status, StatusCode::OK);
    let reqs = v["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0]["state"], "missed");
    assert_eq!(
        reqs[0]["phone"], "+33612345672",
        "the admin sees the full number"
    );
    assert!(reqs[0]["events"].as_array().unwrap().len() >= 4);

    let (_, _, v) = send(&router, list(Some("Bearer secret-token"), "?state=missed")).await;
    assert_eq!(v["requests"].as_array().unwrap().len(), 1);
    let (status, ..) = send(&router, list(Some("Bearer secret-token"), "?state=lost")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Without a configured token the admin API is off.
    let (router, ..) = app(
        WebConfig {
            admin_token: None,
            ..config()
        },
        client(1),
    );
    assert_eq!(
        send(&router, list(Some("Bearer "), "")).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn form_token_required_when_configured() {
    let cfg = WebConfig {
        form_token: Some((b"form-secret".to_vec(), Duration::from_secs(600))),
        ..config()
    };
    let (router, fake, _) = app(cfg, client(1));
    let (status, _, json) = send(&router, post_json(r#"{"phone": "+33612345678"}"#)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{json}");
    let (status, _, json) = send(
        &router,
        post_json(r#"{"phone": "+33612345678", "token": "123.abcd"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{json}");
    assert!(fake.dialled_visitors().is_empty());

    let (status, _, t) = send(&router, get("/api/token")).await;
    assert_eq!(status, StatusCode::OK);
    let body = serde_json::json!({ "phone": PHONE, "token": t["token"] }).to_string();
    submit_ok(&router, &body).await;
    assert_eq!(fake.dialled_visitors().len(), 1);

    let (_, _, wc) = send(&router, get("/api/widget-config")).await;
    assert_eq!(wc["token_required"], true);
    assert_eq!(wc["topics"][0], "sales");
}

#[tokio::test]
async fn cors_for_the_widget_endpoints() {
    let (router, ..) = app(config(), client(1));
    let pre = Request::options("/api/callbacks")
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(Body::empty())
        .unwrap();
    let (status, h, _) = send(&router, pre).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.get("access-control-allow-origin").unwrap(), "*");
    assert!(h
        .get("access-control-allow-methods")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h
        .get("access-control-allow-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("content-type"));

    let mut req = post_json(r#"{"phone": "+33612345678"}"#);
    req.headers_mut()
        .insert("origin", "https://shop.example".parse().unwrap());
    let (status, h, _) = send(&router, req).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(h.get("access-control-allow-origin").unwrap(), "*");
    assert!(h
        .get("access-control-expose-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("Retry-After"));

    // A list of origins: others get no CORS grant.
    let cfg = WebConfig {
        allowed_origins: vec!["https://shop.example".into()],
        ..config()
    };
    let (router, ..) = app(cfg, client(1));
    let req = |origin: &str| {
        Request::get("/api/widget-config")
            .header("origin", origin)
            .body(Body::empty())
            .unwrap()
    };
    let (_, h, _) = send(&router, req("https://shop.example")).await;
    assert_eq!(
        h.get("access-control-allow-origin").unwrap(),
        "https://shop.example"
    );
    let (_, h, _) = send(&router, req("https://evil.example")).await;
    assert!(h.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn assets_with_types_and_caching() {
    let (router, ..) = app(config(), client(1));
    let fetch = |path: &'static str| {
        let router = router.clone();
        async move {
            let resp = tower::ServiceExt::oneshot(router, get(path)).await.unwrap();
            let status = resp.status();
            let h = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, h, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (s, h, body) = fetch("/").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.get("content-type").unwrap(), "text/html; charset=utf-8");
    assert_eq!(h.get("cache-control").unwrap(), "no-cache");
    assert!(body.contains(r#"<script src="/widget.js""#));
    let (s, h, body) = fetch("/widget.js").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h.get("content-type").unwrap(),
        "text/javascript; charset=utf-8"
    );
    assert!(h
        .get("cache-control")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("max-age"));
    assert_eq!(h.get("access-control-allow-origin").unwrap(), "*");
    for part in ["phone", "when", "topic", "submit", "status"] {
        assert!(
            body.contains(&format!(r#""data-rappel": "{part}""#)),
            "{part}"
        );
    }
    let (_, h, _) = fetch("/widget.css").await;
    assert_eq!(h.get("content-type").unwrap(), "text/css; charset=utf-8");
    let (_, h, body) = fetch("/admin").await;
    assert_eq!(h.get("content-type").unwrap(), "text/html; charset=utf-8");
    assert!(body.contains("/admin.js"));
    assert!(h.get("content-security-policy").is_some());
    let (s, _, body) = fetch("/healthz").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "ok\n"));
}

#[tokio::test]
async fn metrics_include_the_rejections() {
    let (router, ..) = app(config(), client(1));
    send(&router, post_json(r#"{"phone": "nope"}"#)).await;
    send(&router, post_json("{")).await;
    let resp = tower::ServiceExt::oneshot(router.clone(), get("/metrics"))
        .await
        .unwrap();
    assert!(resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(r#"rappel_http_rejected_total{reason="number"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"rappel_http_rejected_total{reason="malformed"} 1"#));
    assert!(
        text.contains("# TYPE"),
        "the service's own metrics come first"
    );
}

/// Reads server-sent events until one has `needle` (bounded: the events are produced before reading).
async fn read_until(body: &mut Body, needle: &str) -> String {
    let mut seen = String::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
            if seen.contains(needle) {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn live_events_per_request_and_for_the_admin() {
    let (router, fake, _) = app(config(), client(1));
    let json = submit_ok(&router, r#"{"phone": "+33612345678", "topic": "sales"}"#).await;
    let id = json["id"].as_str().unwrap().to_owned();
    let rid = fake.ids()[0];

    let resp =
        tower::ServiceExt::oneshot(router.clone(), get(&format!("/api/callbacks/{id}/events")))
            .await
            .unwrap();
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut one = resp.into_body();

    assert_eq!(
        send(&router, get("/api/events")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let resp =
        tower::ServiceExt::oneshot(router.clone(), get("/api/events?access_token=secret-token"))
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut all = resp.into_body();

    fake.input(rid, Input::VisitorAnswered);
    let seen = read_until(&mut one, "calling_agent").await;
    assert!(seen.contains("event: state"));
    assert!(seen.contains(&id), "events carry the public id");
    let seen = read_until(&mut all, "calling_agent").await;
    assert!(seen.contains("visitor_answered"));

    fake.input(rid, Input::VisitorHungUp);
    read_until(&mut one, r#""final":true"#).await;
    // The per-request stream ends after the final state.
    let end = tokio::time::timeout(Duration::from_secs(5), one.frame())
        .await
        .expect("ends");
    assert!(end.is_none());
}

#[tokio::test]
async fn event_streams_are_capped() {
    let cfg = WebConfig {
        max_event_streams: 2,
        ..config()
    };
    let (router, ..) = app(cfg, client(1));
    let json = submit_ok(&router, r#"{"phone": "+33612345678"}"#).await;
    let path = format!("/api/callbacks/{}/events", json["id"].as_str().unwrap());
    let open = |p: String| {
        let router = router.clone();
        async move { tower::ServiceExt::oneshot(router, get(&p)).await.unwrap() }
    };
    let a = open(path.clone()).await;
    let b = open("/api/events?access_token=secret-token".into()).await;
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let c = open(path.clone()).await;
    assert_eq!(c.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(c.headers().get("retry-after").unwrap(), "5");
    // Closing a stream frees its place.
    drop(a);
    assert_eq!(open(path).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn forwarded_for_only_behind_a_trusted_proxy() {
    let fwd = |xff: &str| {
        let mut r = post_json(r#"{"phone": "nope"}"#);
        r.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        r
    };
    // Trusted: the proxy's last entry is the client; what the client put before it does not matter.
    let cfg = WebConfig {
        trust_forwarded_for: true,
        ip_rate: (1, Duration::from_secs(60)),
        ..config()
    };
    let (router, ..) = app(cfg, client(1));
    assert_eq!(
        send(&router, fwd("203.0.113.1")).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        send(&router, fwd("203.0.113.1")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&router, fwd("1.2.3.4, 203.0.113.1")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&router, fwd("203.0.113.2")).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Not trusted: the header is ignored and the connection's address counts.
    let cfg = WebConfig {
        ip_rate: (1, Duration::from_secs(60)),
        ..config()
    };
    let (router, ..) = app(cfg, client(1));
    assert_eq!(
        send(&router, fwd("203.0.113.1")).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        send(&router, fwd("203.0.113.2")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}
