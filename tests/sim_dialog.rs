//! In-dialog scenarios in simulated time: Timer F, re-INVITE glare, crossed BYEs, re-INVITE and UPDATE from the far
//! end.

mod common;

use bytes::Bytes;
use common::*;
use rappel::sip::endpoint::{CallHandle, Event, TerminationReason};
use rappel::sip::message::{Method, StatusCode};
use std::time::Duration;

/// Sets up an answered, ACKed call; returns A's and B's handles.
fn established(sim: &mut Sim<EpNode, EpNode>) -> (CallHandle, CallHandle) {
    let now = sim.now;
    let a = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .b
        .find(|e| matches!(e, Event::Acked { .. }))
        .is_empty()));
    let b = match sim.b.events[0].1 {
        Event::IncomingCall { call, .. } => call,
        ref e => panic!("{e:?}"),
    };
    (a, b)
}

#[test]
fn timer_f_and_non_invite_retransmission_intervals() {
    let mut sim = call_pair();
    let (a, _) = established(&mut sim);
    sim.drop = drop_all(|p| p.is_request("INFO") || p.cseq_method() == "INFO");
    let t0 = sim.elapsed().as_millis() as u64;
    let now = sim.now;
    sim.a
        .ep
        .send_info(now, a, "application/dtmf-relay", Bytes::from("Signal=5"))
        .unwrap();
    let timeout = |e: &Event| matches!(e, Event::TransactionTimeout { .. });
    assert!(sim.run_until(Duration::from_secs(100), |s| !s.a.find(timeout).is_empty()));
    let (at, ev) = sim.a.find(timeout)[0].clone();
    assert_eq!(
        ev,
        Event::TransactionTimeout {
            call: a,
            method: Method::Info
        }
    );
    assert_eq!(
        (at - sim.start).as_millis() as u64 - t0,
        32_000,
        "Timer F = 64*T1"
    );
    let sends: Vec<u64> = sim
        .send_times_ms(|p| p.is_request("INFO"))
        .iter()
        .map(|t| t - t0)
        .collect();
    let gaps: Vec<u64> = sends.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(&gaps[..6], &[500, 1000, 2000, 4000, 4000, 4000]);
    assert!(gaps.iter().skip(3).all(|g| *g == 4000), "{gaps:?}");
    assert!(
        sim.a.find(is_terminated).is_empty(),
        "an INFO timeout does not end the call"
    );
}

#[test]
fn reinvite_glare_491_then_retry_in_rfc_windows() {
    let mut sim = call_pair();
    sim.a.tu = Some(Box::new(auto_answer("v=0 a3")));
    let (a, b) = established(&mut sim);
    // Both sides re-INVITE at the same instant: each gets 491 (§14.2).
    let now = sim.now;
    sim.a
        .ep
        .send_reinvite(now, a, Bytes::from("v=0 a2"))
        .unwrap();
    sim.b
        .ep
        .send_reinvite(now, b, Bytes::from("v=0 b2"))
        .unwrap();
    let got_200 = |e: &Event| {
        matches!(
            e,
            Event::Response {
                method: Method::Invite,
                status: StatusCode::OK,
                ..
            }
        )
    };
    let ok = sim.run_until(Duration::from_secs(30), |s| {
        !s.a.find(got_200).is_empty() && !s.b.find(got_200).is_empty()
    });
    if !ok {
        for p in &sim.log {
            eprintln!(
                "{:?} {} -> {} {} {}",
                p.sent - sim.start,
                p.from,
                p.to,
                p.first_line(),
                p.cseq_method()
            );
        }
        eprintln!("A {:?}\nB {:?}", sim.a.events, sim.b.events);
    }
    assert!(ok);
    let r491 = sim.packets(|p| p.status() == Some(491));
    assert_eq!(r491.len(), 2);
    let got_491_at = |to| r491.iter().find(|p| p.to == to).unwrap().sent + sim.latency;
    // A's INVITEs: initial, re-INVITE, retry. B's: re-INVITE, retry.
    let retry = |from, n: usize| sim.packets(|p| p.is_request("INVITE") && p.from == from)[n].sent;
    // A sent the dialog-creating INVITE, so it owns the Call-ID: 2.1 s to 4 s. B: 0 to 2 s.
    let a_wait = retry(addr_a(), 2) - got_491_at(addr_a());
    let b_wait = retry(addr_b(), 1) - got_491_at(addr_b());
    assert!(
        a_wait >= Duration::from_millis(2100) && a_wait <= Duration::from_secs(4),
        "{a_wait:?}"
    );
    assert!(b_wait <= Duration::from_secs(2), "{b_wait:?}");
    // The re-INVITE SDP reached each TU and neither call ended.
    assert!(!sim
        .b
        .find(
            |e| matches!(e, Event::Request { method: Method::Invite, body, .. } if body == "v=0 a2")
        )
        .is_empty());
    assert!(!sim
        .a
        .find(
            |e| matches!(e, Event::Request { method: Method::Invite, body, .. } if body == "v=0 b2")
        )
        .is_empty());
    assert!(sim.a.find(is_terminated).is_empty() && sim.b.find(is_terminated).is_empty());
    // No 491 is reported to the TU.
    assert!(sim
        .a
        .find(|e| matches!(e, Event::Response { status, .. } if status.as_u16() == 491))
        .is_empty());
}

#[test]
fn crossed_byes_both_answered_200() {
    let mut sim = call_pair();
    let (a, b) = established(&mut sim);
    let now = sim.now;
    sim.a.ep.send_bye(now, a).unwrap();
    sim.b.ep.send_bye(now, b).unwrap();
    sim.run_to(sim.elapsed() + Duration::from_secs(5));
    let bye_ok = sim.packets(|p| p.status().is_some() && p.cseq_method() == "BYE");
    assert_eq!(bye_ok.len(), 2);
    assert!(
        bye_ok.iter().all(|p| p.status() == Some(200)),
        "no 481 for a crossed BYE"
    );
    assert_eq!(
        sim.a.find(is_terminated),
        vec![(sim.start + sim_t(&sim, addr_a()), term(a))]
    );
    assert_eq!(sim.b.find(is_terminated).len(), 1);
    assert_eq!(sim.b.find(is_terminated)[0].1, term(b));
}

fn term(call: CallHandle) -> Event {
    Event::Terminated {
        call,
        reason: TerminationReason::LocalBye,
    }
}

fn sim_t(sim: &Sim<EpNode, EpNode>, from: std::net::SocketAddr) -> Duration {
    sim.packets(|p| p.is_request("BYE") && p.from == from)[0].sent - sim.start
}

#[test]
fn far_end_reinvite_reaches_tu_and_refreshes_target() {
    let mut sim = call_pair();
    let (a, b) = established(&mut sim);
    let now = sim.now;
    sim.b
        .ep
        .send_reinvite(now, b, Bytes::from("v=0 hold"))
        .unwrap();
    // A's TU has no auto-answer: the re-INVITE waits for it.
    assert!(sim.run_until(Duration::from_secs(2), |s| !s
        .a
        .find(|e| matches!(e, Event::Request { .. }))
        .is_empty()));
    assert_eq!(
        sim.a.find(|e| matches!(e, Event::Request { .. }))[0].1,
        Event::Request {
            call: a,
            method: Method::Invite,
            body: Bytes::from("v=0 hold")
        }
    );
    let now = sim.now;
    sim.a
        .ep
        .answer_invite(now, a, 200, Bytes::from("v=0 held"))
        .unwrap();
    let acked = |e: &Event| matches!(e, Event::Acked { .. });
    assert!(sim.run_until(Duration::from_secs(2), |s| !s.a.find(acked).is_empty()));
    assert!(!sim
        .b
        .find(|e| matches!(e, Event::Response { method: Method::Invite, body, .. } if body == "v=0 held"))
        .is_empty());
    // A 100 Trying went out before the answer, so B never retransmitted its re-INVITE.
    assert_eq!(
        sim.packets(|p| p.is_request("INVITE") && p.from == addr_b())
            .len(),
        1
    );
}

#[test]
fn update_both_ways() {
    let mut sim = call_pair();
    let (a, b) = established(&mut sim);
    let now = sim.now;
    sim.a.ep.send_update(now, a, Bytes::from("v=0 u")).unwrap();
    assert!(sim.run_until(Duration::from_secs(2), |s| !s
        .b
        .find(|e| matches!(
            e,
            Event::Request {
                method: Method::Update,
                ..
            }
        ))
        .is_empty()));
    let now = sim.now;
    sim.b
        .ep
        .answer_update(now, b, 200, Bytes::from("v=0 u-ans"))
        .unwrap();
    let resp = |e: &Event| {
        matches!(
            e,
            Event::Response {
                method: Method::Update,
                ..
            }
        )
    };
    assert!(sim.run_until(Duration::from_secs(2), |s| !s.a.find(resp).is_empty()));
    assert!(
        matches!(&sim.a.find(resp)[0].1, Event::Response { status: StatusCode::OK, body, .. } if body == "v=0 u-ans")
    );
}

#[test]
fn in_dialog_options_and_info_answered() {
    let mut sim = call_pair();
    let (a, _) = established(&mut sim);
    let now = sim.now;
    sim.a.ep.send_options(now, a).unwrap();
    sim.a
        .ep
        .send_info(now, a, "application/dtmf-relay", Bytes::from("Signal=1"))
        .unwrap();
    let resp = |e: &Event| {
        matches!(
            e,
            Event::Response {
                status: StatusCode::OK,
                ..
            }
        )
    };
    assert!(sim.run_until(Duration::from_secs(2), |s| s.a.find(resp).len() == 2));
    assert!(!sim
        .b
        .find(
            |e| matches!(e, Event::Request { method: Method::Info, body, .. } if body == "Signal=1")
        )
        .is_empty());
}

#[test]
fn route_set_from_record_route_and_target_refresh_from_reinvite_2xx() {
    use rappel::sip::message::{HeaderName, Message};
    // Path A -> P1 (10.0.0.2, the scripted peer itself) -> P2 (10.0.0.7) -> UAS. The response carries
    // Record-Route "P2, P1"; A's route set is the reverse, so in-dialog requests go to P1 with Route P1, P2.
    let b = ScriptNode::new(addr_b(), |req| {
        let mut r = reply(req, 200, "uas");
        match req.method {
            Method::Invite => {
                r.headers.push(
                    HeaderName::RecordRoute,
                    Bytes::from("<sip:10.0.0.7;lr>, <sip:10.0.0.2:5060;lr>"),
                );
                if req
                    .headers
                    .get(&HeaderName::To)
                    .is_some_and(|t| t.ends_with(b"tag=uas"))
                {
                    // The re-INVITE's 2xx moves the remote target.
                    r.headers.set(
                        HeaderName::Contact,
                        Bytes::from("<sip:agent@10.0.0.8:5099>"),
                    );
                }
                vec![Message::from(r)]
            }
            Method::Ack => vec![],
            _ => vec![Message::from(r)],
        }
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(2), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    let now = sim.now;
    sim.a
        .ep
        .send_reinvite(now, call, Bytes::from("v=0 a2"))
        .unwrap();
    let ok = |e: &Event| {
        matches!(
            e,
            Event::Response {
                method: Method::Invite,
                ..
            }
        )
    };
    assert!(sim.run_until(Duration::from_secs(2), |s| !s.a.find(ok).is_empty()));
    let now = sim.now;
    sim.a.ep.send_bye(now, call).unwrap();
    sim.run_to(sim.elapsed() + Duration::from_secs(1));
    let bye = sim.packets(|p| p.is_request("BYE"))[0].clone();
    assert_eq!(bye.to, addr_b(), "first hop is the first Route");
    let m = bye.message();
    let routes: Vec<Bytes> = m.headers().values(&HeaderName::Route).collect();
    assert_eq!(
        routes,
        [
            Bytes::from("<sip:10.0.0.2:5060;lr>"),
            Bytes::from("<sip:10.0.0.7;lr>")
        ]
    );
    assert!(
        bye.first_line().starts_with("BYE sip:agent@10.0.0.8:5099 "),
        "{}",
        bye.first_line()
    );
    // The ACK for the initial 2xx already used the route set and the first Contact.
    let ack = sim.packets(|p| p.is_request("ACK"))[0].first_line();
    assert!(ack.starts_with("ACK sip:10.0.0.2:5060 "), "{ack}");
}

/// One re-INVITE and one UPDATE may be outstanding at once, not two of the same kind; once answered, the next
/// goes out.
#[test]
fn a_second_offer_of_the_same_kind_waits_for_the_first() {
    use rappel::sip::endpoint::EndpointError;
    let mut sim = call_pair();
    let mut invites = auto_answer("v=0 b-ans");
    sim.b.tu = Some(Box::new(move |now, ep, ev| {
        if let Event::Request {
            call,
            method: Method::Update,
            ..
        } = ev
        {
            ep.answer_update(now, *call, 200, Bytes::from("v=0 u-ans"))
                .unwrap();
        }
        invites(now, ep, ev);
    }));
    let (a, _) = established(&mut sim);
    let now = sim.now;
    let ep = &mut sim.a.ep;
    ep.send_reinvite(now, a, Bytes::from("v=0 r1")).unwrap();
    assert_eq!(
        ep.send_reinvite(now, a, Bytes::from("v=0 r2")),
        Err(EndpointError::RequestPending)
    );
    ep.send_update(now, a, Bytes::from("v=0 u1")).unwrap();
    assert_eq!(
        ep.send_update_with(now, a, Bytes::new(), Vec::new()),
        Err(EndpointError::RequestPending)
    );
    let answered = |m: Method| {
        move |s: &Sim<EpNode, EpNode>| {
            !s.a
                .find(|e| matches!(e, Event::Response { method, status, .. } if *method == m && *status == StatusCode::OK))
                .is_empty()
        }
    };
    assert!(sim.run_until(Duration::from_secs(5), answered(Method::Invite)));
    assert!(sim.run_until(Duration::from_secs(5), answered(Method::Update)));
    let now = sim.now;
    sim.a
        .ep
        .send_reinvite(now, a, Bytes::from("v=0 r2"))
        .unwrap();
    sim.a.ep.send_update(now, a, Bytes::from("v=0 u2")).unwrap();
}
