//! What the endpoint answers by itself, fed raw datagrams: OPTIONS, out-of-dialog INVITE/BYE, unknown methods,
//! malformed requests, RFC 3581 response routing, and hostile input that must not panic.

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rappel::sip::endpoint::{Endpoint, EndpointConfig};
use rappel::sip::message::{HeaderName, Message};
use rappel::sip::transaction::{Transmit, Transport};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn ep() -> Endpoint {
    Endpoint::new(EndpointConfig::new("192.0.2.10:5060".parse().unwrap()))
}

fn peer() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}

fn request(method: &str, via_params: &str, to_tag: &str) -> Bytes {
    Bytes::from(format!(
        "{method} sip:rappel@192.0.2.10 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.1.1.1:5070;branch=z9hG4bK-{method}-1{via_params}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:rappel@192.0.2.10>{to_tag}\r\n\
         Call-ID: c1@example.com\r\n\
         CSeq: 7 {method}\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn one_response(ep: &mut Endpoint) -> (Transmit, Message) {
    let t = ep.poll_transmit().expect("a response");
    assert!(ep.poll_transmit().is_none(), "exactly one message");
    let m = Message::parse_datagram(t.payload.clone()).unwrap();
    (t, m)
}

fn status(m: &Message) -> u16 {
    m.as_response().unwrap().status.as_u16()
}

#[test]
fn options_gets_200_with_allow_and_accept() {
    let mut e = ep();
    let now = Instant::now();
    e.handle(
        now,
        peer(),
        Transport::Udp,
        request("OPTIONS", ";rport", ""),
    );
    let (t, m) = one_response(&mut e);
    assert_eq!(status(&m), 200);
    assert!(
        String::from_utf8_lossy(m.headers().get(&HeaderName::Allow).unwrap()).contains("INVITE")
    );
    assert_eq!(
        m.headers().get(&HeaderName::Accept).unwrap(),
        "application/sdp"
    );
    // RFC 3581: the response goes to the source address and port, and the Via says so.
    assert_eq!(t.destination, peer());
    let via = String::from_utf8_lossy(m.headers().get(&HeaderName::Via).unwrap()).into_owned();
    assert!(
        via.contains("received=198.51.100.7") && via.contains("rport=40000"),
        "{via}"
    );
    assert!(m
        .headers()
        .get(&HeaderName::To)
        .is_some_and(|t| t.windows(4).any(|w| w == b"tag=")));
    // A retransmission of the request gets the same response from the server transaction.
    e.handle(
        now + Duration::from_millis(500),
        peer(),
        Transport::Udp,
        request("OPTIONS", ";rport", ""),
    );
    let (_, again) = one_response(&mut e);
    assert_eq!(again, m);
}

#[test]
fn without_rport_responses_go_to_the_via_port() {
    let mut e = ep();
    e.handle(
        Instant::now(),
        peer(),
        Transport::Udp,
        request("OPTIONS", "", ""),
    );
    let (t, m) = one_response(&mut e);
    assert_eq!(
        t.destination,
        "198.51.100.7:5070".parse::<SocketAddr>().unwrap()
    );
    let via = String::from_utf8_lossy(m.headers().get(&HeaderName::Via).unwrap()).into_owned();
    assert!(
        via.contains("received=198.51.100.7") && !via.contains("rport"),
        "{via}"
    );
}

#[test]
fn out_of_dialog_invite_is_forbidden_and_the_ack_absorbed() {
    let mut e = ep();
    let now = Instant::now();
    e.handle(now, peer(), Transport::Udp, request("INVITE", ";rport", ""));
    let (_, m) = one_response(&mut e);
    assert_eq!(status(&m), 403);
    // Until the ACK, Timer G retransmits the 403.
    let t = e.poll_timeout().unwrap();
    assert_eq!(t - now, Duration::from_millis(500));
    e.handle_timeout(t);
    assert_eq!(status(&one_response(&mut e).1), 403);
    let ack = request("ACK", ";rport", ";tag=x").slice(..).to_vec();
    let ack = String::from_utf8(ack)
        .unwrap()
        .replace("branch=z9hG4bK-ACK-1", "branch=z9hG4bK-INVITE-1");
    e.handle(t, peer(), Transport::Udp, Bytes::from(ack));
    assert!(e.poll_transmit().is_none());
    // Confirmed: Timer I (T4) then nothing left.
    let t2 = e.poll_timeout().unwrap();
    assert_eq!(t2 - t, Duration::from_secs(5));
    e.handle_timeout(t2);
    assert_eq!(e.live_counts(), (0, 0, 0));
    assert!(e.poll_event().is_none());
}

#[test]
fn stray_in_and_out_of_dialog_requests() {
    for (method, to_tag, want) in [
        ("BYE", "", 481),
        ("BYE", ";tag=zz", 481),
        ("INFO", ";tag=zz", 481),
        ("CANCEL", "", 481),
        ("REGISTER", "", 405),
        ("FOO", "", 501),
    ] {
        let mut e = ep();
        e.handle(
            Instant::now(),
            peer(),
            Transport::Udp,
            request(method, ";rport", to_tag),
        );
        let (_, m) = one_response(&mut e);
        assert_eq!(status(&m), want, "{method}");
    }
}

#[test]
fn malformed_request_gets_stateless_400() {
    let mut e = ep();
    let bad = String::from_utf8(request("OPTIONS", ";rport", "").to_vec())
        .unwrap()
        .replace("CSeq: 7 OPTIONS", "CSeq: seven OPTIONS");
    e.handle(Instant::now(), peer(), Transport::Udp, Bytes::from(bad));
    let (t, m) = one_response(&mut e);
    assert_eq!(status(&m), 400);
    assert_eq!(t.destination, peer());
    assert_eq!(
        m.headers().get(&HeaderName::CallId).unwrap(),
        "c1@example.com"
    );
    // A request the parser refuses outright (wrong version) still gets its stateless answer.
    let mut e = ep();
    let bad = String::from_utf8(request("OPTIONS", "", "").to_vec())
        .unwrap()
        .replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1);
    e.handle(Instant::now(), peer(), Transport::Udp, Bytes::from(bad));
    let (t, m) = one_response(&mut e);
    assert_eq!(status(&m), 505);
    assert_eq!(
        t.destination,
        "198.51.100.7:5070".parse::<SocketAddr>().unwrap(),
        "no rport: the Via port"
    );
    // Without a Call-ID the client can still match an answer by Via branch and CSeq (§17.1.3): RFC 4475 §3.3.1
    // asks for a 400.
    let mut e = ep();
    let bad = String::from_utf8(request("OPTIONS", "", "").to_vec())
        .unwrap()
        .replace("Call-ID: c1@example.com\r\n", "");
    e.handle(Instant::now(), peer(), Transport::Udp, Bytes::from(bad));
    let (_, m) = one_response(&mut e);
    assert_eq!(status(&m), 400);
    // Without a CSeq there is nothing to answer to.
    let mut e = ep();
    let bad = String::from_utf8(request("OPTIONS", "", "").to_vec())
        .unwrap()
        .replace("CSeq: 7 OPTIONS\r\n", "");
    e.handle(Instant::now(), peer(), Transport::Udp, Bytes::from(bad));
    assert!(e.poll_transmit().is_none());
}

#[test]
fn responses_matching_nothing_and_keepalives_are_dropped() {
    let mut e = ep();
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKnope\r\nFrom: <sip:a@b>;tag=1\r\n\
                To: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    e.handle(Instant::now(), peer(), Transport::Udp, Bytes::from(resp));
    e.handle(
        Instant::now(),
        peer(),
        Transport::Udp,
        Bytes::from_static(b"\r\n\r\n"),
    );
    assert!(e.poll_transmit().is_none() && e.poll_event().is_none());
}

#[test]
fn hostile_input_never_panics() {
    // Deterministic mutations of valid requests: byte flips, truncations, insertions.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let seeds = [
        request("INVITE", ";rport", ""),
        request("BYE", "", ";tag=q"),
        request("OPTIONS", ";rport", ""),
    ];
    let mut e = ep();
    let mut now = Instant::now();
    for i in 0..3000 {
        let mut m = seeds[i % seeds.len()].to_vec();
        for _ in 0..rng.random_range(1..6) {
            let pos = rng.random_range(0..m.len());
            match rng.random_range(0..3) {
                0 => m[pos] = rng.random(),
                1 => m.truncate(pos.max(1)),
                _ => m.insert(pos, b"\r\n;,<>\"@:%"[rng.random_range(0..10)]),
            }
        }
        e.handle(now, peer(), Transport::Udp, Bytes::from(m));
        while e.poll_transmit().is_some() {}
        while e.poll_event().is_some() {}
        now += Duration::from_millis(10);
        if let Some(t) = e.poll_timeout() {
            if t <= now {
                e.handle_timeout(now);
            }
        }
    }
}

#[test]
fn rfc2543_requests_without_cookie_match_by_dialog_fields() {
    let mut e = ep();
    let now = Instant::now();
    let legacy = |method: &str, to_tag: &str, cseq_method: &str| {
        let r = String::from_utf8(request(method, "", to_tag).to_vec()).unwrap();
        Bytes::from(
            r.replace(&format!(";branch=z9hG4bK-{method}-1"), ";branch=1234")
                .replace(
                    &format!("CSeq: 7 {method}"),
                    &format!("CSeq: 7 {cseq_method}"),
                ),
        )
    };
    e.handle(now, peer(), Transport::Udp, legacy("INVITE", "", "INVITE"));
    let (_, first) = one_response(&mut e);
    assert_eq!(status(&first), 403);
    // The retransmitted INVITE matches the transaction (same Request-URI, From tag, Call-ID, CSeq, Via).
    e.handle(now, peer(), Transport::Udp, legacy("INVITE", "", "INVITE"));
    assert_eq!(one_response(&mut e).1, first);
    // The ACK matches it too and stops Timer G.
    e.handle(now, peer(), Transport::Udp, legacy("ACK", ";tag=x", "ACK"));
    assert!(e.poll_transmit().is_none());
    let t = e.poll_timeout().unwrap();
    assert_eq!(
        t - now,
        Duration::from_secs(5),
        "Confirmed: only Timer I is left"
    );
}

#[test]
fn same_seed_same_bytes() {
    let run = |seed: u64| {
        let mut cfg = EndpointConfig::new("192.0.2.10:5060".parse().unwrap());
        cfg.rng_seed(seed);
        let mut e = Endpoint::new(cfg);
        let req = rappel::sip::endpoint::InviteRequest {
            target: "sip:+33100000000@192.0.2.20".into(),
            from: "sip:rappel@example.com".into(),
            to: None,
            next_hop: "192.0.2.20:5060".parse().unwrap(),
            transport: None,
            sdp: Bytes::from("v=0"),
            credentials: None,
            extra_headers: Vec::new(),
        };
        e.start_invite(Instant::now(), req).unwrap();
        e.poll_transmit().unwrap().payload
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8), "branch, tag and Call-ID come from the seed");
}

#[test]
fn server_transaction_table_is_capped() {
    let mut cfg = EndpointConfig::new("192.0.2.10:5060".parse().unwrap());
    cfg.max_server_transactions(3);
    let mut e = Endpoint::new(cfg);
    let now = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = String::from_utf8(request("OPTIONS", ";rport", "").to_vec()).unwrap();
        let r = r.replace("z9hG4bK-OPTIONS-1", &format!("z9hG4bK-{i}"));
        e.handle(now, peer(), Transport::Udp, Bytes::from(r));
        statuses.push(status(&one_response(&mut e).1));
    }
    assert_eq!(statuses, [200, 200, 200, 503, 503]);
    assert_eq!(e.live_counts().2, 3);
    // Once Timer J has run out, there is room again.
    e.handle_timeout(now + Duration::from_secs(32));
    assert_eq!(e.live_counts().2, 0);
}
