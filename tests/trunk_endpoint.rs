//! Endpoint plumbing for the trunk side, in simulated time: session-timer headers on re-INVITE/UPDATE and their
//! answers (RFC 4028), a 422 with its Min-SE reaching the call layer, and transport errors ending an INVITE.

mod common;

use bytes::Bytes;
use common::*;
use rappel::sip::endpoint::{
    min_se, Endpoint, Event, Refresher, SessionExpires, TerminationReason,
};
use rappel::sip::message::{HeaderName, Message, Method, StatusCode};
use rappel::sip::transaction::Transport;
use std::time::{Duration, Instant};

fn se(delta: u32, r: Refresher) -> (HeaderName, Bytes) {
    SessionExpires {
        delta,
        refresher: Some(r),
    }
    .to_header()
}

/// B answers calls at once; a session refresh (re-INVITE or UPDATE) is answered 200 with the Session-Expires it
/// asked for and `Require: timer`, as RFC 4028 §9 has a UAS do.
fn refresh_answerer(now: Instant, ep: &mut Endpoint, ev: &Event) {
    match ev {
        Event::IncomingCall { call, .. } => {
            ep.answer_invite(now, *call, 200, Bytes::from_static(b"v=0 b"))
                .unwrap();
        }
        Event::Request { call, method, .. } => {
            let asked = SessionExpires::from_headers(ep.last_headers(*call).unwrap())
                .expect("refresh carries Session-Expires");
            let headers = vec![
                asked.to_header(),
                (HeaderName::Require, Bytes::from_static(b"timer")),
            ];
            if *method == Method::Invite {
                ep.answer_invite_with(now, *call, 200, Bytes::from_static(b"v=0 b"), headers)
                    .unwrap();
            } else {
                ep.answer_update_with(now, *call, 200, Bytes::new(), headers)
                    .unwrap();
            }
        }
        _ => {}
    }
}

#[test]
fn session_refresh_headers_travel_both_ways() {
    let mut sim = Sim::new(
        EpNode::new(addr_a(), 1, false),
        EpNode::new(addr_b(), 2, true).with_tu(refresh_answerer),
    );
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    let now = sim.now;
    // Require: timer in the request must not be refused with 420: the endpoint lists `timer` as supported.
    sim.a
        .ep
        .send_reinvite_with(
            now,
            call,
            Bytes::from_static(b"v=0 a2"),
            vec![
                se(1800, Refresher::Uac),
                (HeaderName::Supported, Bytes::from_static(b"timer")),
                (HeaderName::Require, Bytes::from_static(b"timer")),
            ],
        )
        .unwrap();
    let is_resp =
        |m: Method| move |e: &Event| matches!(e, Event::Response { method, .. } if *method == m);
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_resp(Method::Invite))
        .is_empty()));
    match &sim.a.find(is_resp(Method::Invite))[0].1 {
        Event::Response { status, .. } => assert_eq!(*status, StatusCode::OK),
        _ => unreachable!(),
    }
    let got = SessionExpires::from_headers(sim.a.ep.last_headers(call).unwrap()).unwrap();
    assert_eq!(
        got,
        SessionExpires {
            delta: 1800,
            refresher: Some(Refresher::Uac)
        }
    );
    let now = sim.now;
    sim.a
        .ep
        .send_update_with(now, call, Bytes::new(), vec![se(900, Refresher::Uas)])
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_resp(Method::Update))
        .is_empty()));
    let got = SessionExpires::from_headers(sim.a.ep.last_headers(call).unwrap()).unwrap();
    assert_eq!(got.delta, 900);
    assert_eq!(got.refresher, Some(Refresher::Uas));
    // What went on the wire: the UPDATE carried the header, B's 200 carried Require: timer.
    let upd = sim.packets(|p| p.is_request("UPDATE"))[0].message();
    assert_eq!(
        &upd.headers().get(&HeaderName::SessionExpires).unwrap()[..],
        b"900;refresher=uas"
    );
    let ok = sim.packets(|p| p.status() == Some(200) && p.cseq_method() == "UPDATE")[0].message();
    assert_eq!(
        &ok.headers().get(&HeaderName::Require).unwrap()[..],
        b"timer"
    );
}

#[test]
fn glare_retry_keeps_the_refresh_headers() {
    // B answers the first re-INVITE 491; the retry after the §14.1 delay must carry Session-Expires again.
    let mut first = true;
    let mut sim = Sim::new(
        EpNode::new(addr_a(), 1, false),
        EpNode::new(addr_b(), 2, true).with_tu(move |now, ep, ev| match ev {
            Event::Request { call, .. } if first => {
                first = false;
                ep.answer_invite(now, *call, 491, Bytes::new()).unwrap();
            }
            _ => refresh_answerer(now, ep, ev),
        }),
    );
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    let now = sim.now;
    sim.a
        .ep
        .send_reinvite_with(
            now,
            call,
            Bytes::from_static(b"v=0 a2"),
            vec![se(600, Refresher::Uac)],
        )
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |s| !s
        .a
        .find(|e| matches!(e, Event::Response { .. }))
        .is_empty()));
    let reinvites: Vec<Message> = sim
        .packets(|p| p.is_request("INVITE"))
        .into_iter()
        .skip(1)
        .map(|p| p.message())
        .collect();
    assert_eq!(reinvites.len(), 2, "the 491'd re-INVITE and its retry");
    for m in &reinvites {
        assert_eq!(
            &m.headers().get(&HeaderName::SessionExpires).unwrap()[..],
            b"600;refresher=uac"
        );
    }
}

#[test]
fn session_interval_too_small_reports_422_and_min_se() {
    let mut sim = Sim::new(
        EpNode::new(addr_a(), 1, false),
        ScriptNode::new(addr_b(), |req| match req.method {
            Method::Invite => {
                let mut r = reply(req, 422, "t");
                r.headers
                    .push(HeaderName::MinSe, Bytes::from_static(b"1800"));
                vec![Message::Response(r)]
            }
            _ => vec![],
        }),
    );
    let mut inv = invite_to_b("v=0");
    inv.extra_headers.push(se(90, Refresher::Uac));
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, inv).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    assert_eq!(
        sim.a.find(is_terminated)[0].1,
        Event::Terminated {
            call,
            reason: TerminationReason::Rejected(StatusCode::new(422).unwrap())
        }
    );
    assert_eq!(min_se(sim.a.ep.last_headers(call).unwrap()), Some(1800));
    // The INVITE advertised timer support next to the caller's Session-Expires.
    let inv = sim.packets(|p| p.is_request("INVITE"))[0].message();
    assert!(
        String::from_utf8_lossy(inv.headers().get(&HeaderName::Supported).unwrap())
            .contains("timer")
    );
    assert_eq!(
        sim.packets(|p| p.is_request("ACK")).len(),
        1,
        "the 422 is ACKed"
    );
}

#[test]
fn transport_error_ends_the_invite_at_once() {
    let mut ep = Endpoint::new({
        let mut c = rappel::sip::endpoint::EndpointConfig::new(addr_a());
        c.rng_seed(5);
        c
    });
    let now = Instant::now();
    let call = ep.start_invite(now, invite_to_b("v=0")).unwrap();
    let t = ep.poll_transmit().unwrap();
    // An error for another destination changes nothing.
    ep.handle_transport_error(now, "10.0.0.99:5060".parse().unwrap(), Transport::Udp);
    assert_eq!(ep.poll_event(), None);
    ep.handle_transport_error(now, t.destination, t.transport);
    assert_eq!(
        ep.poll_event(),
        Some(Event::Terminated {
            call,
            reason: TerminationReason::TransportError
        })
    );
    assert_eq!(ep.poll_event(), None, "reported once");
    // The transaction is gone: no more INVITE retransmissions.
    let (_, clients, _) = ep.live_counts();
    assert_eq!(clients, 0);
    while let Some(next) = ep.poll_timeout() {
        ep.handle_timeout(next);
        assert!(ep.poll_transmit().is_none());
    }
    assert_eq!(ep.live_counts(), (0, 0, 0));
}

#[test]
fn transport_error_on_in_dialog_request_reports_transaction_timeout() {
    let mut sim = call_pair();
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    let now = sim.now;
    sim.a.ep.send_options(now, call).unwrap();
    let t = sim.a.ep.poll_transmit().unwrap();
    sim.a
        .ep
        .handle_transport_error(now, t.destination, t.transport);
    assert_eq!(
        sim.a.ep.poll_event(),
        Some(Event::TransactionTimeout {
            call,
            method: Method::Options
        })
    );
    assert!(!sim.a.ep.is_terminated(call), "the call goes on");
}

#[test]
fn failover_after_timer_b_reaches_the_second_target() {
    use rappel::net::dns::{Failover, Target};
    let udp = |addr: &str| Target {
        transport: Transport::Udp,
        addr: addr.parse().unwrap(),
    };
    // The first target is silent (nobody there): Timer B (64·T1 = 32 s) ends the INVITE with Timeout and the
    // Failover walk moves on to B, which answers.
    let mut f = Failover::new(vec![
        udp("10.0.0.9:5060"),
        Target {
            transport: Transport::Udp,
            addr: addr_b(),
        },
    ]);
    let mut sim = call_pair();
    let mut inv = invite_to_b("v=0 a");
    inv.next_hop = f.next_target().unwrap().addr;
    let now = sim.now;
    let first = sim.a.ep.start_invite(now, inv).unwrap();
    assert!(sim.run_until(Duration::from_secs(60), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    let (at, ev) = sim.a.find(is_terminated)[0].clone();
    let Event::Terminated { call, reason } = ev else {
        unreachable!()
    };
    assert_eq!((call, reason), (first, TerminationReason::Timeout));
    assert_eq!(at - sim.start, Duration::from_secs(32));
    let next = f.after(&reason).expect("a second target");
    assert_eq!(next.addr, addr_b());
    let mut inv = invite_to_b("v=0 a");
    inv.next_hop = next.addr;
    let now = sim.now;
    let second = sim.a.ep.start_invite(now, inv).unwrap();
    let limit = sim.elapsed() + Duration::from_secs(5);
    assert!(sim.run_until(limit, |s| !s.a.find(is_answered).is_empty()));
    assert_eq!(
        sim.a.find(is_answered)[0].1,
        Event::Answered {
            call: second,
            body: Bytes::from_static(b"v=0 b")
        }
    );
    assert_eq!(f.remaining(), 0);
}
