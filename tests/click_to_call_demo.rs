//! The README's first command: the `click_to_call` example run with no configuration (demo mode, in-process demo
//! phones on loopback), driven over HTTP as a person with `curl` would. Also: a bad config file exits 2 naming the
//! key; abusive submissions get a 4xx and no phone rings.

mod click_to_call_common;

use std::process::Command;

use click_to_call_common::{binary, kinds, phone_rtp, Server};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_demo_callback_reaches_completed() {
    let server = Server::start(&[]).await;
    let (status, body) = server.submit(r#"{"phone":"+33612345678"}"#).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    let view = server.until_final(&id).await;
    assert_eq!(view["state"], "completed", "{view}");
    let k = kinds(&view);
    let expected = [
        "submitted",
        "calling_visitor",
        "visitor_answered",
        "calling_agent",
        "agent_answered",
        "connected",
        "completed",
    ];
    let mut at = 0;
    for want in expected {
        at += k[at..]
            .iter()
            .position(|x| x == want)
            .unwrap_or_else(|| panic!("{want} missing or out of order in {k:?}"));
    }
    assert_eq!(k.last().map(String::as_str), Some("completed"));
    let talk = view["events"]
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["detail"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(talk.contains("call ended after"), "{talk}");

    let (code, out) = server.stop().await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("rappel click-to-call demo: open http://"),
        "{out}"
    );
    // Both phones sent their tone and received audio: prompts and the other party through the relay.
    let (vs, vr) = phone_rtp(&out, "visitor phone:");
    let (as_, ar) = phone_rtp(&out, "agent phone sip:alice@");
    assert!(vs > 100 && vr > 100, "visitor rtp {vs}/{vr}: {out}");
    assert!(as_ > 100 && ar > 100, "alice rtp {as_}/{ar}: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_submissions_get_4xx_and_nothing_rings() {
    let server = Server::start(&[]).await;
    let big = format!(
        r#"{{"phone":"+33612345678","context":"{}"}}"#,
        "x".repeat(10_000)
    );
    for (body, what) in [
        (r#"{"phone":"+33 8 99 12 34 56"}"#, "premium-rate number"),
        (r#"{"phone":"12"}"#, "not a number"),
        (r#"{"phone":"+999123"}"#, "no such country"),
        (r#"{"phone":"#, "broken JSON"),
        (r#"{"telephone":"+33612345678"}"#, "no phone field"),
        (big.as_str(), "body over the limit"),
    ] {
        let (status, answer) = server.submit(body).await;
        assert!((400..500).contains(&status), "{what}: {status} {answer}");
    }
    let list = reqwest::Client::new()
        .get(server.url("/api/callbacks"))
        .bearer_auth("demo")
        .send()
        .await
        .expect("GET list")
        .text()
        .await
        .expect("body");
    let list: Value = serde_json::from_str(&list).expect("JSON");
    let rows = list["requests"].as_array().expect("admin list").len();
    assert_eq!(rows, 0, "nothing stored: {list}");
    let (code, out) = server.stop().await;
    assert_eq!(code, Some(0));
    for phone in [
        "visitor phone:",
        "agent phone sip:alice@",
        "agent phone sip:bob@",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(phone))
            .expect("stats line");
        assert!(
            line.contains("calls 0 "),
            "no INVITE left the engine: {line}"
        );
    }
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = "[trunk]\nuri = \"sip:127.0.0.1:5070\"\n[[agents]]\nname = \"alice\"\nuri = \"sip:alice@127.0.0.1:5080\"\n";
    for (extra, key) in [
        ("[callback]\nmax_attempts = 0\n", "callback.max_attempts"),
        ("[callback]\nmax_atempts = 3\n", "max_atempts"),
        ("[media]\nrtp_ports = \"30000-20000\"\n", "media.rtp_ports"),
    ] {
        let path = dir.path().join("rappel.toml");
        std::fs::write(&path, format!("{good}{extra}")).unwrap();
        let out = Command::new(binary())
            .args(["--config", path.to_str().unwrap()])
            .output()
            .expect("run click_to_call");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
        assert!(err.contains(key), "{key} named in {err:?}");
    }
    let out = Command::new(binary())
        .args(["--config", "/nonexistent/rappel.toml"])
        .output()
        .expect("run click_to_call");
    assert_eq!(out.status.code(), Some(2));
}
