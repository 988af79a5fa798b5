//! The `click_to_call` example with a real configuration file against two SIPp UAS on loopback: the visitors'
//! trunk (answers PCMU, echoes RTP, hangs up 3 s after its ACK) and agent alice (answers, echoes RTP, takes our
//! BYE). A POST to the API; the request's timeline is followed over the API until `completed`; each SIPp exits 0
//! only if its scenario ran to the end (INVITE, ACK, BYE and its 200 in the expected direction); the binary's RTP
//! totals show packets both ways on the trunk leg.
//!
//! Needs the `sipp` binary (Debian package `sip-tester`).

mod click_to_call_common;
#[path = "support/sipp.rs"]
mod sipp;

use click_to_call_common::{kinds, Server};
use sipp::{first_free_port, local, Sipp};

/// SIPp as UAS with `tests/sipp/{scenario}` on 127.0.0.1:`port`, RTP on `media`, echoing RTP, for one call.
fn uas(scenario: &str, port: u16, media: u16) -> Sipp {
    let media = media.to_string();
    let extra = ["-timeout", "60s", "-m", "1", "-mp", &media, "-rtp_echo"];
    Sipp::uas(&Sipp::scenario(scenario), local(port), false, &extra)
}

/// A port free for UDP and TCP, in a band of its own (the other SIPp tests use 30 000–38 000 and 43 000–44 000).
fn free_port(n: u16) -> u16 {
    let base = 45_000 + (std::process::id() % 50) as u16 * 20;
    first_free_port(base + n..base + 2_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_with_config_calls_trunk_and_agent_until_completed() {
    let visitor = uas("callback_visitor_answer.xml", free_port(0), free_port(4));
    let agent = uas("call_peer_echo.xml", free_port(8), free_port(12));
    let sip = free_port(16);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[sip]
listen = "127.0.0.1:{sip}"
[trunk]
uri = "sip:{visitor}"
caller_id = "+33100000000"
[[agents]]
name = "alice"
uri = "sip:alice@{agent}"
[media]
rtp_ports = "52000-52999"
[http]
admin_token = "t0ken"
[store]
path = {db:?}
[callback]
max_attempts = 1
[security]
allowed_countries = ["FR"]
"#,
        visitor = visitor.addr,
        agent = agent.addr,
        db = dir.path().join("cb.db").display().to_string(),
    );
    let path = dir.path().join("rappel.toml");
    std::fs::write(&path, config).unwrap();
    let server = Server::start(&["--config", path.to_str().unwrap()]).await;

    let (status, body) = server
        .submit(r#"{"phone":"06 12 34 56 78","page":"/pricing"}"#)
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    let view = server.until_final(&id).await;
    assert_eq!(view["state"], "completed", "{view}");
    let k = kinds(&view);
    let expected = [
        "submitted",
        "queued",
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
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("rappel_callback_completed_total 1"),
        "{metrics}"
    );

    assert_eq!(
        visitor.finish().await,
        0,
        "trunk SIPp: INVITE, ACK, its BYE answered"
    );
    assert_eq!(agent.finish().await, 0, "agent SIPp: INVITE, ACK, our BYE");
    let (code, out) = server.stop().await;
    assert_eq!(code, Some(0), "{out}");
    // The trunk leg ended by the SIPp's BYE, so its CDR was read: prompts went out to the trunk and SIPp's
    // echo of them came back in.
    let line = out
        .lines()
        .find(|l| l.starts_with("engine rtp:"))
        .unwrap_or_else(|| panic!("no RTP totals in {out}"));
    let field = |name: &str| -> u64 {
        let mut it = line.split_whitespace();
        it.find(|w| *w == name);
        it.next().and_then(|v| v.parse().ok()).expect("counter")
    };
    assert!(field("legs") >= 1, "{line}");
    assert!(field("packets_out") > 10, "RTP to the trunk: {line}");
    assert!(field("packets_in") > 10, "RTP from the trunk: {line}");
}
