//! Endpoint throughput: a stateless-ish OPTIONS answer, and a whole call (INVITE, 100, 180, 200, ACK, BYE, 200)
//! between two in-memory endpoints, including the cleanup of the lingering transactions; and the cost of a driver
//! wake-up (`poll_timeout`, `handle_timeout` with nothing due) with 10,000 live transactions.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use rappel::sip::endpoint::{Endpoint, EndpointConfig, Event, InviteRequest};
use rappel::sip::transaction::Transport;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn options(c: &mut Criterion) {
    let mut ep = Endpoint::new(EndpointConfig::new("192.0.2.10:5060".parse().unwrap()));
    let peer: SocketAddr = "198.51.100.7:5060".parse().unwrap();
    let mut now = Instant::now();
    let mut n = 0u64;
    c.bench_function("endpoint_options_answer", |b| {
        b.iter(|| {
            n += 1;
            let req = format!(
                "OPTIONS sip:rappel@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK{n};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:mon@example.com>;tag=m\r\nTo: <sip:rappel@192.0.2.10>\r\n\
                 Call-ID: {n}@example.com\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            );
            ep.handle(now, peer, Transport::Udp, Bytes::from(req));
            let t = ep.poll_transmit().unwrap();
            // Let Timer J expire now and then so the table stays small.
            if n % 1000 == 0 {
                now += Duration::from_secs(33);
                ep.handle_timeout(now);
            }
            t
        })
    });
}

fn shuttle(
    now: Instant,
    a: &mut Endpoint,
    b: &mut Endpoint,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
) {
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            b.handle(now, a_addr, Transport::Udp, t.payload);
            moved = true;
        }
        while let Some(t) = b.poll_transmit() {
            a.handle(now, b_addr, Transport::Udp, t.payload);
            moved = true;
        }
        while let Some(ev) = b.poll_event() {
            if let Event::IncomingCall { call, .. } = ev {
                b.answer_invite(now, call, 180, Bytes::new()).unwrap();
                b.answer_invite(now, call, 200, Bytes::from_static(b"v=0"))
                    .unwrap();
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}

fn call(c: &mut Criterion) {
    let a_addr: SocketAddr = "10.0.0.1:5060".parse().unwrap();
    let b_addr: SocketAddr = "10.0.0.2:5060".parse().unwrap();
    let mut a = Endpoint::new(EndpointConfig::new(a_addr));
    let mut bcfg = EndpointConfig::new(b_addr);
    bcfg.accept_invites(true);
    let mut b = Endpoint::new(bcfg);
    let mut now = Instant::now();
    c.bench_function("endpoint_call_setup_teardown", |bench| {
        bench.iter(|| {
            now += Duration::from_secs(33);
            a.handle_timeout(now);
            b.handle_timeout(now);
            let call = a
                .start_invite(
                    now,
                    InviteRequest {
                        target: "sip:agent@10.0.0.2".into(),
                        from: "sip:rappel@10.0.0.1".into(),
                        to: None,
                        next_hop: b_addr,
                        transport: None,
                        sdp: Bytes::from_static(b"v=0"),
                        credentials: None,
                        extra_headers: Vec::new(),
                    },
                )
                .unwrap();
            shuttle(now, &mut a, &mut b, a_addr, b_addr);
            a.send_bye(now, call).unwrap();
            shuttle(now, &mut a, &mut b, a_addr, b_addr);
            let mut answered = false;
            while let Some(e) = a.poll_event() {
                answered |= matches!(e, Event::Answered { .. });
            }
            assert!(answered, "the call was set up");
            while b.poll_event().is_some() {}
        })
    });
}

/// An endpoint holding 10,000 live transactions: 5,000 INVITE client transactions (each with its call, Timers A
/// and B running) and 5,000 answered OPTIONS server transactions lingering in Completed (Timer J).
fn loaded_endpoint(now: Instant) -> Endpoint {
    let mut ep = Endpoint::new(EndpointConfig::new("192.0.2.10:5060".parse().unwrap()));
    let peer: SocketAddr = "198.51.100.7:5060".parse().unwrap();
    for n in 0..5_000u32 {
        ep.start_invite(
            now,
            InviteRequest {
                target: format!("sip:+3310000{n:04}@198.51.100.7"),
                from: "sip:rappel@192.0.2.10".into(),
                to: None,
                next_hop: peer,
                transport: None,
                sdp: Bytes::from_static(b"v=0"),
                credentials: None,
                extra_headers: Vec::new(),
            },
        )
        .unwrap();
        let req = format!(
            "OPTIONS sip:rappel@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKo{n};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:mon@example.com>;tag=m\r\nTo: <sip:rappel@192.0.2.10>\r\n\
             Call-ID: o{n}@example.com\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        ep.handle(now, peer, Transport::Udp, Bytes::from(req));
    }
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
    assert_eq!(ep.live_counts(), (5_000, 5_000, 5_000));
    ep
}

fn wake_up(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut ep = loaded_endpoint(t0);
    let first = ep.poll_timeout().unwrap();
    assert_eq!(first, t0 + Duration::from_millis(500), "Timer A");
    c.bench_function("endpoint_poll_timeout_10k_tx", |b| {
        b.iter(|| ep.poll_timeout())
    });
    // A wake-up before anything is due (a datagram arrived, or the driver's timer fired early): the driver calls
    // handle_timeout and re-reads poll_timeout.
    let early = t0 + Duration::from_millis(100);
    c.bench_function("endpoint_handle_timeout_nothing_due_10k_tx", |b| {
        b.iter(|| {
            ep.handle_timeout(early);
            ep.poll_timeout()
        })
    });
    assert_eq!(ep.live_counts(), (5_000, 5_000, 5_000));
    assert!(ep.poll_transmit().is_none(), "nothing was due");
}

criterion_group!(benches, options, call, wake_up);
criterion_main!(benches);
