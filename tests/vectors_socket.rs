//! The RFC 4475 and RFC 5118 torture messages sent over a real UDP socket to a running SIP driver, inside a
//! network namespace that has nothing but loopback: the messages name outside hosts, and no reply may leave the
//! machine.
//!
//! The outer test re-runs this test binary under `unshare --net` (util-linux; needs root, as CI is); the inner
//! test refuses to run anywhere that has an interface other than `lo`.
//!
//! Responses go where RFC 3261 §18.2.2 says: the source address (`received`) and the Via's port, 5060 by default,
//! so the sender listens on 127.0.0.1:5060 and on the few other ports the vectors' Vias name.

#[path = "support/netns.rs"]
mod netns;

use bytes::Bytes;
use rappel::net::sip::SipDriver;
use rappel::net::transport::SipTransportConfig;
use rappel::sip::endpoint::EndpointConfig;
use rappel::sip::message::Message;
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
    netns::run_inner("", "inner_vectors_over_udp");
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

    // One collector reads every listening socket. It polls the ports other than 5060 first (`biased`), so an
    // answer that the engine sent before a sync answer on 5060 is also read before it.
    let mut socks = Vec::new();
    for port in VIA_PORTS {
        socks.push(UdpSocket::bind(("127.0.0.1", port)).await.expect("bind"));
    }
    let sender = std::sync::Arc::new(socks.remove(0)); // 5060
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    {
        let main = sender.clone();
        tokio::spawn(async move {
            let (mut b0, mut b1, mut b2, mut b3) = (
                vec![0u8; 65_535],
                vec![0u8; 65_535],
                vec![0u8; 65_535],
                vec![0u8; 65_535],
            );
            loop {
                let got = tokio::select! {
                    biased;
                    Ok((n, _)) = socks[0].recv_from(&mut b1) => Bytes::copy_from_slice(&b1[..n]),
                    Ok((n, _)) = socks[1].recv_from(&mut b2) => Bytes::copy_from_slice(&b2[..n]),
                    Ok((n, _)) = socks[2].recv_from(&mut b3) => Bytes::copy_from_slice(&b3[..n]),
                    Ok((n, _)) = main.recv_from(&mut b0) => Bytes::copy_from_slice(&b0[..n]),
                };
                if tx.send(got).is_err() {
                    return;
                }
            }
        });
    }

    let vectors = vectors();
    assert!(vectors.len() >= 60, "all vectors loaded");
    let mut failures = Vec::new();
    let mut seen_bytes: std::collections::HashSet<Bytes> = Default::default();
    let mut bad400 = 0;
    for (i, (name, data, want)) in vectors.iter().enumerate() {
        sender.send_to(data, engine).await.expect("send");
        // A sync OPTIONS (with rport, so its answer comes to 5060): the engine handles datagrams in order, so
        // every answer to the vector is sent before the sync's 200.
        let sync_id = format!("sync-{i}");
        let sync = format!("OPTIONS sip:rappel@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-sync-{i};rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=s\r\nTo: <sip:rappel@127.0.0.1>\r\nCall-ID: {sync_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
        sender.send_to(sync.as_bytes(), engine).await.expect("send");
        let mut statuses = Vec::new();
        let mut resent = Vec::new();
        let synced = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                let d = rx.recv().await.expect("collector");
                let Ok(Message::Response(r)) = Message::parse_datagram(d.clone()) else {
                    continue;
                };
                if r.headers.call_id().is_ok_and(|c| c == sync_id.as_bytes()) {
                    return;
                }
                // Identical bytes are an earlier answer sent again: a Timer G retransmission, or the answer to a vector
                // that reuses an earlier one's branch, sent-by and method, which is the same transaction (§17.2.3).
                if seen_bytes.insert(d) {
                    statuses.push(r.status.as_u16());
                } else {
                    resent.push(r.status.as_u16());
                }
            }
        })
        .await;
        if synced.is_err() {
            failures.push(format!("{name}: the engine stopped answering"));
            break;
        }
        let finals: Vec<u16> = statuses.iter().copied().filter(|s| *s >= 200).collect();
        match want {
            Want::Nothing if !statuses.is_empty() => {
                failures.push(format!("{name}: wanted no answer, got {statuses:?}"))
            }
            Want::Status(n) if finals != [*n] => {
                failures.push(format!("{name}: wanted {n}, got {statuses:?}"))
            }
            Want::AnyFinal if finals.len() + resent.len() == 0 || finals.len() > 1 => {
                failures.push(format!("{name}: wanted one final answer, got {statuses:?}"))
            }
            Want::BadRequestOrNothing => {
                // 505 for a wrong version, 513 for an oversize message: RFC 3261's statuses for those.
                if statuses.iter().any(|s| ![400, 505, 513].contains(s)) {
                    failures.push(format!("{name}: malformed, got {statuses:?}"));
                }
                bad400 += usize::from(!statuses.is_empty());
            }
            _ => {}
        }
    }
    println!(
        "torture vectors over UDP: {} sent, {} failures, {bad400} malformed requests answered 400/505",
        vectors.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert!(
        bad400 >= 5,
        "malformed requests that carry Via and CSeq get a stateless error answer"
    );
    drop(d);
}
