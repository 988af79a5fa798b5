//! INVITE scenarios in simulated time: answered calls, lost ACK / 200, CANCEL/200 race, forking, BYE before ACK.

mod common;

use bytes::Bytes;
use common::*;
use rappel::sip::endpoint::{Event, TerminationReason};
use rappel::sip::message::{HeaderName, Message, Method};
use std::time::Duration;

#[test]
fn basic_call_then_bye() {
    let mut sim = call_pair();
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    let answered = sim.a.find(is_answered);
    assert_eq!(
        answered[0].1,
        Event::Answered {
            call,
            body: Bytes::from("v=0 b")
        }
    );
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .b
        .find(|e| matches!(e, Event::Acked { .. }))
        .is_empty()));
    let now = sim.now;
    sim.a.ep.send_bye(now, call).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .b
        .find(is_terminated)
        .is_empty()));
    assert!(matches!(
        sim.b.find(is_terminated)[0].1,
        Event::Terminated {
            reason: TerminationReason::RemoteBye,
            ..
        }
    ));
    assert_eq!(
        sim.a.find(is_terminated)[0].1,
        Event::Terminated {
            call,
            reason: TerminationReason::LocalBye
        }
    );
    // Everything lingers at most 64*T1 and then is gone.
    sim.run_to(sim.elapsed() + Duration::from_secs(40));
    assert_eq!(sim.a.ep.live_counts(), (0, 0, 0));
    assert_eq!(sim.b.ep.live_counts(), (0, 0, 0));
}

#[test]
fn timer_b_expires_after_64_t1() {
    // Nobody at the next hop: the INVITE is retransmitted with doubling intervals, then Timer B fires.
    let mut sim = call_pair();
    let mut req = invite_to_b("v=0");
    req.next_hop = "10.0.0.9:5060".parse().unwrap();
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, req).unwrap();
    assert!(sim.run_until(Duration::from_secs(60), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    let (at, ev) = sim.a.find(is_terminated)[0].clone();
    assert_eq!(
        ev,
        Event::Terminated {
            call,
            reason: TerminationReason::Timeout
        }
    );
    assert_eq!(at - sim.start, Duration::from_secs(32));
    assert_eq!(
        sim.send_times_ms(|p| p.is_request("INVITE")),
        [0, 500, 1500, 3500, 7500, 15500, 31500]
    );
}

#[test]
fn lost_ack_is_recovered_by_2xx_retransmission() {
    let mut sim = call_pair();
    sim.drop = drop_nth(|p| p.is_request("ACK"), 1);
    let now = sim.now;
    sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |s| !s
        .b
        .find(|e| matches!(e, Event::Acked { .. }))
        .is_empty()));
    // B's UAS core retransmitted the 200 after T1; A re-ACKed it.
    let oks = sim.send_times_ms(|p| p.status() == Some(200) && p.cseq_method() == "INVITE");
    assert_eq!(oks.len(), 2, "{oks:?}");
    assert_eq!(oks[1] - oks[0], 500);
    assert_eq!(sim.packets(|p| p.is_request("ACK")).len(), 2);
    assert_eq!(
        sim.a.find(is_answered).len(),
        1,
        "the retransmitted 2xx is not reported twice"
    );
    sim.run_to(sim.elapsed() + Duration::from_secs(10));
    assert_eq!(
        sim.packets(|p| p.status() == Some(200) && p.cseq_method() == "INVITE")
            .len(),
        2,
        "stops after ACK"
    );
}

#[test]
fn lost_200_is_retransmitted_until_acked() {
    let mut sim = call_pair();
    sim.drop = drop_nth(|p| p.status() == Some(200), 1);
    let now = sim.now;
    sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    let (at, _) = sim.a.find(is_answered)[0];
    // 20 ms there, 200 lost at 20 ms, retransmitted at 520 ms, arrives at 540 ms.
    assert_eq!(at - sim.start, Duration::from_millis(540));
    // A was in Proceeding (180 received): no INVITE retransmission.
    assert_eq!(sim.packets(|p| p.is_request("INVITE")).len(), 1);
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .b
        .find(|e| matches!(e, Event::Acked { .. }))
        .is_empty()));
}

#[test]
fn cancel_crossing_200_gets_ack_then_bye() {
    // B only rings; the test answers 200 at the instant A cancels, so the CANCEL and the 200 cross on the wire.
    let b = EpNode::new(addr_b(), 2, true).with_tu(|now, ep, ev| {
        if let Event::IncomingCall { call, .. } = ev {
            ep.answer_invite(now, *call, 180, Bytes::new()).unwrap();
        }
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(|e| matches!(e, Event::Provisional { .. }))
        .is_empty()));
    let now = sim.now;
    sim.a.ep.send_cancel(now, call).unwrap();
    let b_call = match sim.b.events[0].1 {
        Event::IncomingCall { call, .. } => call,
        ref e => panic!("{e:?}"),
    };
    sim.b
        .ep
        .answer_invite(now, b_call, 200, Bytes::from("v=0 b"))
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |s| !s
        .b
        .find(is_terminated)
        .is_empty()));
    // B had already answered: the CANCEL gets 200 and no 487 is sent.
    assert_eq!(
        sim.packets(|p| p.status() == Some(200) && p.cseq_method() == "CANCEL")
            .len(),
        1
    );
    assert!(sim.packets(|p| p.status() == Some(487)).is_empty());
    // A ACKed the 200, then sent BYE; neither side reported an answered call.
    let ack = sim.send_times_ms(|p| p.is_request("ACK"));
    let bye = sim.send_times_ms(|p| p.is_request("BYE") && p.from == addr_a());
    assert_eq!((ack.len(), bye.len()), (1, 1));
    assert!(ack[0] <= bye[0]);
    assert!(sim.a.find(is_answered).is_empty());
    assert_eq!(
        sim.a.find(is_terminated)[0].1,
        Event::Terminated {
            call,
            reason: TerminationReason::Cancelled
        }
    );
    assert!(matches!(
        sim.b.find(is_terminated)[0].1,
        Event::Terminated {
            reason: TerminationReason::RemoteBye,
            ..
        }
    ));
}

#[test]
fn cancel_before_answer_gets_487() {
    let b = EpNode::new(addr_b(), 2, true).with_tu(|now, ep, ev| {
        if let Event::IncomingCall { call, .. } = ev {
            ep.answer_invite(now, *call, 180, Bytes::new()).unwrap();
        }
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    // Cancel at once: the CANCEL waits for the 180 (§9.1).
    sim.a.ep.send_cancel(now, call).unwrap();
    sim.flush();
    assert!(sim.packets(|p| p.is_request("CANCEL")).is_empty());
    assert!(sim.run_until(Duration::from_secs(10), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    assert_eq!(
        sim.a.find(is_terminated)[0].1,
        Event::Terminated {
            call,
            reason: TerminationReason::Cancelled
        }
    );
    assert_eq!(sim.packets(|p| p.status() == Some(487)).len(), 1);
    assert_eq!(
        sim.packets(|p| p.is_request("ACK")).len(),
        1,
        "the 487 is ACKed by the transaction"
    );
    // The Call-ID of a call never answered (no dialog) is still known, as sent: a CDR can carry it.
    let invite = &sim.packets(|p| p.is_request("INVITE"))[0];
    let Message::Request(r) = invite.message() else {
        panic!("not a request")
    };
    assert_eq!(sim.a.ep.call_id(call), r.headers.get(&HeaderName::CallId));
    assert!(sim.a.ep.call_id(call).is_some());
    assert!(sim.a.ep.dialog(call).is_none());
    assert!(matches!(
        sim.b.find(is_terminated)[0].1,
        Event::Terminated {
            reason: TerminationReason::Cancelled,
            ..
        }
    ));
}

#[test]
fn forked_provisionals_and_second_2xx_is_acked_then_byed() {
    let b = ScriptNode::new(addr_b(), |req| match req.method {
        Method::Invite => vec![
            Message::from(reply(req, 180, "fork1")),
            Message::from(reply(req, 183, "fork2")),
            Message::from(reply(req, 200, "fork1")),
            Message::from(reply(req, 200, "fork2")),
        ],
        Method::Bye => vec![Message::from(reply(req, 200, "x"))],
        _ => vec![],
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    sim.run_to(Duration::from_secs(2));
    let prov = sim.a.find(|e| matches!(e, Event::Provisional { .. }));
    assert_eq!(prov.len(), 2, "one per early dialog");
    let tags: Vec<_> = prov
        .iter()
        .map(|(_, e)| match e {
            Event::Provisional { remote_tag, .. } => remote_tag.clone().unwrap(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(tags, [Bytes::from("fork1"), Bytes::from("fork2")]);
    assert_eq!(sim.a.find(is_answered).len(), 1);
    assert!(
        sim.a.find(is_terminated).is_empty(),
        "the call with fork1 goes on"
    );
    let to_tag_of = |p: &Packet| {
        let m = p.message();
        String::from_utf8_lossy(
            m.headers()
                .get(&rappel::sip::message::HeaderName::To)
                .unwrap(),
        )
        .into_owned()
    };
    let acks: Vec<String> = sim
        .packets(|p| p.is_request("ACK"))
        .into_iter()
        .map(to_tag_of)
        .collect();
    assert_eq!(acks.len(), 2);
    assert!(
        acks[0].ends_with("tag=fork1") && acks[1].ends_with("tag=fork2"),
        "{acks:?}"
    );
    let byes: Vec<String> = sim
        .packets(|p| p.is_request("BYE"))
        .into_iter()
        .map(to_tag_of)
        .collect();
    assert_eq!(byes.len(), 1);
    assert!(byes[0].ends_with("tag=fork2"));
    let _ = call;
}

#[test]
fn callee_bye_waits_for_ack() {
    // B answers and hangs up at once; A's first ACK is lost. B must not send BYE before the ACK (§15).
    let b = EpNode::new(addr_b(), 2, true).with_tu(|now, ep, ev| {
        if let Event::IncomingCall { call, .. } = ev {
            ep.answer_invite(now, *call, 200, Bytes::from("v=0 b"))
                .unwrap();
            ep.send_bye(now, *call).unwrap();
        }
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    sim.drop = drop_nth(|p| p.is_request("ACK"), 1);
    let now = sim.now;
    sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    let acks = sim.packets(|p| p.is_request("ACK"));
    let delivered_ack = acks.iter().find(|p| !p.dropped).unwrap().sent;
    let bye = sim.packets(|p| p.is_request("BYE"))[0].sent;
    assert!(
        bye >= delivered_ack + sim.latency,
        "BYE sent before the ACK arrived"
    );
    assert!(matches!(
        sim.a.find(is_terminated)[0].1,
        Event::Terminated {
            reason: TerminationReason::RemoteBye,
            ..
        }
    ));
}

#[test]
fn bye_arriving_before_ack_ends_the_call() {
    // A's ACK is lost and A hangs up right after the answer: B gets the BYE while still retransmitting its 200.
    let a = EpNode::new(addr_a(), 1, false).with_tu(|now, ep, ev| {
        if let Event::Answered { call, .. } = ev {
            ep.send_bye(now, *call).unwrap();
        }
    });
    let mut sim = Sim::new(
        a,
        EpNode::new(addr_b(), 2, true).with_tu(auto_answer("v=0 b")),
    );
    sim.drop = drop_all(|p| p.is_request("ACK"));
    let now = sim.now;
    sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |s| !s
        .b
        .find(is_terminated)
        .is_empty()));
    assert!(matches!(
        sim.b.find(is_terminated)[0].1,
        Event::Terminated {
            reason: TerminationReason::RemoteBye,
            ..
        }
    ));
    assert_eq!(
        sim.packets(|p| p.status() == Some(200) && p.cseq_method() == "BYE")
            .len(),
        1
    );
    sim.run_to(Duration::from_secs(40));
    // B stopped retransmitting its 200 when the BYE came and sent no BYE of its own.
    assert_eq!(
        sim.packets(|p| p.status() == Some(200) && p.cseq_method() == "INVITE")
            .len(),
        1
    );
    assert_eq!(sim.packets(|p| p.is_request("BYE")).len(), 1);
}

#[test]
fn missing_ack_ends_the_call_after_64_t1() {
    let mut sim = call_pair();
    sim.drop = drop_all(|p| p.is_request("ACK"));
    let now = sim.now;
    sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(60), |s| !s
        .b
        .find(is_terminated)
        .is_empty()));
    let (at, ev) = sim.b.find(is_terminated)[0].clone();
    assert!(matches!(
        ev,
        Event::Terminated {
            reason: TerminationReason::AckTimeout,
            ..
        }
    ));
    assert_eq!(at - sim.start, Duration::from_millis(20 + 32_000));
    let oks = sim.send_times_ms(|p| p.status() == Some(200) && p.cseq_method() == "INVITE");
    let gaps: Vec<u64> = oks.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(&gaps[..5], &[500, 1000, 2000, 4000, 4000]);
    assert_eq!(
        sim.packets(|p| p.is_request("BYE") && p.from == addr_b())
            .len(),
        1,
        "§13.3.1.4: BYE after giving up"
    );
}

#[test]
fn over_tcp_the_invite_is_sent_once_and_timer_b_still_fires() {
    let mut cfg = rappel::sip::endpoint::EndpointConfig::new(addr_a());
    cfg.transport(rappel::sip::transaction::Transport::Tcp);
    let mut sim = Sim::new(
        EpNode::with_config(addr_a(), cfg),
        EpNode::new(addr_b(), 2, true),
    );
    let mut req = invite_to_b("v=0");
    req.next_hop = "10.0.0.9:5060".parse().unwrap();
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, req).unwrap();
    assert!(sim.run_until(Duration::from_secs(60), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    assert_eq!(
        sim.a.find(is_terminated)[0].1,
        Event::Terminated {
            call,
            reason: TerminationReason::Timeout
        }
    );
    assert_eq!(sim.send_times_ms(|p| p.is_request("INVITE")), [0]);
    let m = sim.packets(|p| p.is_request("INVITE"))[0].message();
    let v = m
        .headers()
        .get(&rappel::sip::message::HeaderName::Via)
        .unwrap()
        .clone();
    assert!(v.starts_with(b"SIP/2.0/TCP "), "{v:?}");
}

#[test]
fn cancel_without_any_provisional_ends_as_cancelled_at_timer_b() {
    // Nobody answers at all: the CANCEL is never sent (§9.1), and Timer B ends the call as cancelled.
    let mut sim = call_pair();
    let mut req = invite_to_b("v=0");
    req.next_hop = "10.0.0.9:5060".parse().unwrap();
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, req).unwrap();
    sim.a.ep.send_cancel(now, call).unwrap();
    assert!(sim.run_until(Duration::from_secs(60), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    assert_eq!(
        sim.a.find(is_terminated)[0].1,
        Event::Terminated {
            call,
            reason: TerminationReason::Cancelled
        }
    );
    assert!(sim.packets(|p| p.is_request("CANCEL")).is_empty());
}

#[test]
fn a_silent_next_hop_is_given_up_at_the_response_deadline() {
    // Nobody at the next hop, a 4 s response deadline: the INVITE is retransmitted until then, not after, and the
    // call ends as a timeout at 4 s instead of Timer B's 32 s.
    let mut sim = call_pair();
    let mut req = invite_to_b("v=0");
    req.next_hop = "10.0.0.9:5060".parse().unwrap();
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, req).unwrap();
    sim.a
        .ep
        .set_response_deadline(call, now + Duration::from_secs(4))
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(60), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    let (at, ev) = sim.a.find(is_terminated)[0].clone();
    assert_eq!(
        ev,
        Event::Terminated {
            call,
            reason: TerminationReason::Timeout
        }
    );
    assert_eq!(at - sim.start, Duration::from_secs(4));
    sim.run_to(Duration::from_secs(60));
    assert_eq!(
        sim.send_times_ms(|p| p.is_request("INVITE")),
        [0, 500, 1500, 3500],
        "no retransmission after the deadline"
    );
    assert!(
        sim.packets(|p| p.is_request("CANCEL")).is_empty(),
        "no CANCEL without a provisional response"
    );
    assert_eq!(sim.a.ep.live_counts(), (0, 0, 0), "nothing left behind");
    assert_eq!(
        sim.a.find(is_terminated).len(),
        1,
        "ended once (Timer B never fires)"
    );
}

#[test]
fn a_100_trying_stops_the_response_deadline() {
    // The next hop answers 100 Trying only: it is alive, so the deadline does not end the call (nor does Timer B,
    // which a provisional response stops too); the ring time is the TU's.
    let b = ScriptNode::new(addr_b(), |req| match req.method {
        Method::Invite => vec![Message::from(reply(req, 100, ""))],
        _ => vec![],
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0")).unwrap();
    sim.a
        .ep
        .set_response_deadline(call, now + Duration::from_secs(1))
        .unwrap();
    sim.run_to(Duration::from_secs(40));
    assert!(sim.a.find(is_terminated).is_empty(), "still ringing");
    assert_eq!(sim.send_times_ms(|p| p.is_request("INVITE")), [0]);
    // Once a response came, a new deadline is ignored (the target is known to be alive).
    let now = sim.now;
    sim.a
        .ep
        .set_response_deadline(call, now + Duration::from_millis(10))
        .unwrap();
    sim.run_to(Duration::from_secs(45));
    assert!(sim.a.find(is_terminated).is_empty());
    assert_eq!(sim.send_times_ms(|p| p.is_request("INVITE")), [0]);
}

#[test]
fn a_call_placed_over_tcp_keeps_tcp_for_its_ack_and_bye() {
    // The endpoint is configured for UDP; this one call names TCP (a `;transport=tcp` or `_sip._tcp` target).
    use rappel::sip::endpoint::{Endpoint, EndpointConfig, RegisterRequest};
    use rappel::sip::message::HeaderName;
    use rappel::sip::transaction::Transport;
    let mut ep = Endpoint::new(EndpointConfig::new(addr_a()));
    let t0 = std::time::Instant::now();
    let mut req = invite_to_b("v=0");
    req.transport = Some(Transport::Tcp);
    let call = ep.start_invite(t0, req).unwrap();
    let invite = ep.poll_transmit().unwrap();
    assert_eq!(
        (invite.transport, invite.destination),
        (Transport::Tcp, addr_b())
    );
    let Ok(Message::Request(inv)) = Message::parse_datagram(invite.payload.clone()) else {
        panic!("not a request")
    };
    let via = inv.headers.get(&HeaderName::Via).unwrap().clone();
    assert!(via.starts_with(b"SIP/2.0/TCP "), "{via:?}");
    let contact = inv.headers.get(&HeaderName::Contact).unwrap().clone();
    assert!(contact.ends_with(b";transport=tcp>"), "{contact:?}");
    // Reliable transport: no retransmission at T1.
    ep.handle_timeout(t0 + Duration::from_millis(600));
    assert!(ep.poll_transmit().is_none());
    let ok = Message::from(reply(&inv, 200, "b")).to_bytes();
    ep.handle(t0, addr_b(), Transport::Tcp, ok);
    let ack = ep.poll_transmit().unwrap();
    assert!(ack.payload.starts_with(b"ACK "));
    assert_eq!(ack.transport, Transport::Tcp);
    assert!(ack.payload.windows(14).any(|w| w == b"SIP/2.0/TCP 10"));
    ep.send_bye(t0, call).unwrap();
    let bye = ep.poll_transmit().unwrap();
    assert!(bye.payload.starts_with(b"BYE "));
    assert_eq!(bye.transport, Transport::Tcp);
    // Another call without a transport uses the configured one, and so does a REGISTER; one naming TCP uses TCP.
    ep.start_invite(t0, invite_to_b("v=0")).unwrap();
    assert_eq!(ep.poll_transmit().unwrap().transport, Transport::Udp);
    let reg = |transport| RegisterRequest {
        registrar: "sip:10.0.0.2".into(),
        aor: "sip:rappel@example.net".into(),
        next_hop: addr_b(),
        transport,
        expires: 60,
        credentials: None,
        extra_headers: Vec::new(),
    };
    ep.register(t0, reg(Some(Transport::Tcp))).unwrap();
    let r = ep.poll_transmit().unwrap();
    assert_eq!(r.transport, Transport::Tcp);
    assert!(r.payload.windows(14).any(|w| w == b"SIP/2.0/TCP 10"));
    ep.register(t0, reg(None)).unwrap();
    assert_eq!(ep.poll_transmit().unwrap().transport, Transport::Udp);
}
