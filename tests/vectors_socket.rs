//! The RFC 4475 and RFC 5118 torture messages sent over a real UDP socket to a running SIP driver, inside a
//! network namespace that has nothing but loopback: the messages name outside hosts, and no reply may leave the
//! machine.
//!
//! The outer test re-runs this test binary under `unshare --net` (util-linux; needs root, as CI is); the inner
//! test refuses to run anywhere that has an interface other than `lo`.
//!
//! Responses go where RFC 3261 §18.2.2 says: the source address (`received`) and the Via's port, 5060 by default,
//! so the sender listens on 127.0.0.1:5060 and on the few other ports the vectors' Vias name.

use bytes::Bytes;
use rappel::net::sip::SipDriver;
use rappel::net::transport::SipTransportConfig;
use rappel::sip::endpoint::EndpointConfig;
use rappel::sip::message::{Message, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const ENGINE: &str = "127.0.0.1:5070";
/// Ports named in the vectors' Via headers, besides the default 5060.
const VIA_PORTS: [u16; 4] = [5060, 5050, 6050, 19823];

#[test]
fn torture_vectors_over_udp_in_a_loopback_only_namespace() {
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c"])
        .arg(r#"ip link set lo up && RAPPEL_IN_NETNS=1 exec "$0" --exact inner_vectors_over_udp --ignored --nocapture --test-threads=1"#)
        .arg(&exe)
        .output()
        .expect("unshare (util-linux) is needed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "inner run failed (needs root for unshare --net)"
    );
    assert!(
        stdout.contains("1 passed"),
        "the inner test must have run and passed"
    );
}

fn vectors_dir(set: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(set)
}

/// What the engine must send back for one vector.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    /// No response at all (responses, ACKs, malformed messages without Via/Call-ID/CSeq).
    Nothing,
    /// This status.
    Status(u16),
    /// Some final response (a well-formed request: the endpoint answers every one).
    AnyFinal,
    /// A 400 or nothing: malformed, and the lenient scan may or may not find Via, Call-ID and CSeq.
    BadRequestOrNothing,
    /// The RFC allows either.
    Anything,
}

fn vectors() -> Vec<(String, Bytes, Want)> {
    let mut out = Vec::new();
    let manifest =
        std::fs::read_to_string(vectors_dir("rfc4475").join("MANIFEST.tsv")).expect("manifest");
    for line in manifest.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(name), Some(expect)) = (cols.first(), cols.get(2)) else {
            continue;
        };
        let data = Bytes::from(
            std::fs::read(vectors_dir("rfc4475").join(format!("{name}.dat"))).expect("vector"),
        );
        let is_response = data.starts_with(b"SIP/");
        let is_ack = data.starts_with(b"ACK ");
        let want = match *expect {
            _ if is_response => Want::Nothing,
            "parse" if is_ack => Want::Nothing,
            "parse" => Want::AnyFinal,
            "reject" => Want::BadRequestOrNothing,
            "either" => Want::Anything,
            e => match e.strip_prefix("app:").and_then(|n| n.parse().ok()) {
                Some(n) => Want::Status(n),
                None => continue,
            },
        };
        out.push((name.to_string(), data, want));
    }
    let mut names: Vec<String> = std::fs::read_dir(vectors_dir("rfc5118"))
        .expect("rfc5118")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "MANIFEST.tsv")
        .collect();
    names.sort();
    for name in names {
        let data = Bytes::from(std::fs::read(vectors_dir("rfc5118").join(&name)).expect("vector"));
        let want = match name.as_str() {
            "ipv6-bad" | "ipv6-bug-abnf-3-colons" => Want::BadRequestOrNothing,
            _ if data.starts_with(b"SIP/") => Want::Nothing,
            _ => Want::AnyFinal,
        };
        out.push((name, data, want));
    }
    out
}

/// What ties a response to its request: (Call-ID, CSeq number) when the message has both, else (top Via branch,
/// 0), read by a raw line scan so that malformed requests have a key too.
fn key(data: &Bytes) -> Option<(Bytes, u32)> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let value = |names: &[&str]| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            names
                .iter()
                .any(|x| n.trim().eq_ignore_ascii_case(x))
                .then(|| v.trim().to_string())
        })
    };
    let call_id = value(&["call-id", "i"]);
    let cseq = value(&["cseq"]).and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
    match (call_id, cseq) {
        (Some(c), Some(n)) => Some((Bytes::from(c), n)),
        _ => {
            let via = value(&["via", "v"])?;
            let branch = via
                .split(';')
                .find_map(|p| p.trim().strip_prefix("branch="))?;
            Some((Bytes::from(format!("branch:{branch}")), 0))
        }
    }
}

/// Whether this process's network namespace has no interface but `lo` (/proc/net/dev is per namespace).
fn only_loopback() -> bool {
    std::fs::read_to_string("/proc/net/dev").is_ok_and(|t| {
        t.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .all(|n| n.trim() == "lo")
    })
}

#[tokio::test]
#[ignore = "run by torture_vectors_over_udp_in_a_loopback_only_namespace inside a network namespace"]
async fn inner_vectors_over_udp() {
    assert!(
        std::env::var_os("RAPPEL_IN_NETNS").is_some() && only_loopback(),
        "refusing to send torture vectors outside a loopback-only network namespace"
    );
    let engine: SocketAddr = ENGINE.parse().unwrap();
    let d = SipDriver::start(SipTransportConfig::new(engine), EndpointConfig::new(engine))
        .await
        .expect("driver");

    // Every listening socket feeds one queue of (port, datagram).
    let (tx, mut rx) = mpsc::unbounded_channel::<(u16, Bytes)>();
    let mut sender = None;
    for port in VIA_PORTS {
        let s = std::sync::Arc::new(UdpSocket::bind(("127.0.0.1", port)).await.expect("bind"));
        if port == 5060 {
            sender = Some(s.clone());
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, _)) = s.recv_from(&mut buf).await {
                if tx.send((port, Bytes::copy_from_slice(&buf[..n]))).is_err() {
                    return;
                }
            }
        });
    }
    let sender = sender.expect("5060");
    let mut seen: HashMap<(Bytes, u32), Vec<u16>> = HashMap::new();
    let record = |data: Bytes, seen: &mut HashMap<(Bytes, u32), Vec<u16>>| {
        if let (Some(k), Ok(Message::Response(r))) =
            (key(&data), Message::parse_datagram(data.clone()))
        {
            let v = seen.entry(k).or_default();
            if !v.contains(&r.status.as_u16()) {
                v.push(r.status.as_u16());
            }
        }
    };

    let vectors = vectors();
    assert!(vectors.len() >= 60, "all vectors loaded");
    let mut failures = Vec::new();
    let mut answered = 0;
    for (name, data, want) in &vectors {
        sender.send_to(data, engine).await.expect("send");
        let k = key(data);
        if matches!(want, Want::Status(_) | Want::AnyFinal) {
            let Some(k) = k.clone() else {
                failures.push(format!("{name}: no Call-ID/CSeq to match a response on"));
                continue;
            };
            let got = tokio::time::timeout(Duration::from_secs(3), async {
                loop {
                    if let Some(s) = seen.get(&k).and_then(|v| v.iter().find(|s| **s >= 200)) {
                        return *s;
                    }
                    let (_, d) = rx.recv().await.expect("collector");
                    record(d, &mut seen);
                }
            })
            .await;
            match (got, want) {
                (Err(_), _) => failures.push(format!("{name}: no response, wanted {want:?}")),
                (Ok(s), Want::Status(n)) if s != *n => {
                    failures.push(format!("{name}: got {s}, wanted {n}"))
                }
                (Ok(_), _) => answered += 1,
            }
        }
    }
    // A last OPTIONS (with rport) proves the engine is alive and, the loop being FIFO, that every answer to the
    // vectors above has been sent.
    let options = "OPTIONS sip:rappel@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-final;rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=f\r\nTo: <sip:rappel@127.0.0.1>\r\nCall-ID: final-options\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    sender.send_to(options.as_bytes(), engine).await.unwrap();
    let fin = (Bytes::from_static(b"final-options"), 1);
    tokio::time::timeout(Duration::from_secs(3), async {
        while !seen.get(&fin).is_some_and(|v| v.contains(&200)) {
            let (_, d) = rx.recv().await.expect("collector");
            record(d, &mut seen);
        }
    })
    .await
    .expect("the engine answers OPTIONS 200 after the torture run");
    while let Ok((_, d)) = rx.try_recv() {
        record(d, &mut seen);
    }

    let mut bad400 = 0;
    for (name, data, want) in &vectors {
        let got = key(data)
            .and_then(|k| seen.get(&k).cloned())
            .unwrap_or_default();
        match want {
            Want::Nothing if !got.is_empty() && !shares_key(name, data, &vectors) => {
                failures.push(format!("{name}: wanted no response, got {got:?}"))
            }
            Want::BadRequestOrNothing => {
                if got.iter().any(|s| *s != StatusCode::BAD_REQUEST.as_u16()) {
                    failures.push(format!("{name}: malformed, got {got:?}"));
                }
                if got.contains(&400) {
                    bad400 += 1;
                }
            }
            _ => {}
        }
    }
    println!(
        "torture vectors over UDP: {} sent, {answered} answered as expected, {bad400} malformed answered 400",
        vectors.len()
    );
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert!(
        bad400 >= 5,
        "malformed requests that carry Via/Call-ID/CSeq get a stateless 400"
    );
    drop(d);
}

/// Whether another vector with an expected answer has the same Call-ID and CSeq (RFC 5118's messages share them).
fn shares_key(name: &str, data: &Bytes, all: &[(String, Bytes, Want)]) -> bool {
    let k = key(data);
    all.iter()
        .any(|(n, d, w)| n != name && *w != Want::Nothing && key(d) == k)
}
