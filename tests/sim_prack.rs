//! RFC 3262 as UAC in simulated time: a scripted UAS sends reliable provisionals (Require: 100rel, RSeq) and
//! retransmits each until its PRACK arrives; the endpoint must PRACK each new RSeq once, in order, in the early
//! dialog, ignore retransmissions and out-of-order ones, and keep CSeqs increasing into the confirmed dialog.

mod common;

use bytes::Bytes;
use common::*;
use rappel::sip::endpoint::Event;
use rappel::sip::message::{HeaderName, Message, Method, Request, StatusCode};
use rappel::sip::transaction::{Transmit, Transport};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A UAS that answers an INVITE with a reliable 183 (RSeq 1); after its PRACK, a stray out-of-order 180
/// (RSeq 3), a late copy of the 183, then a reliable 180 (RSeq 2); after that PRACK, the 200. Each reliable
/// provisional is retransmitted every 500 ms until acknowledged (RFC 3262 §3, T1 doubling is not needed here).
struct ReliableUas {
    addr: SocketAddr,
    peer: Option<SocketAddr>,
    invite: Option<Request>,
    out: VecDeque<Transmit>,
    /// The unacknowledged reliable provisional: (RSeq, bytes, next retransmission).
    pending: Option<(u32, Bytes, Instant)>,
    /// RAck values of the PRACKs received, and the CSeq numbers of all requests received.
    racks: Vec<String>,
    cseqs: Vec<(u32, String)>,
    retransmitted: usize,
    /// Challenge every PRACK without Proxy-Authorization with a 407.
    challenge_prack: bool,
}

impl ReliableUas {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            peer: None,
            invite: None,
            out: VecDeque::new(),
            pending: None,
            racks: Vec::new(),
            cseqs: Vec::new(),
            retransmitted: 0,
            challenge_prack: false,
        }
    }

    fn send(&mut self, payload: Bytes) {
        let destination = self.peer.expect("peer known");
        self.out.push_back(Transmit {
            destination,
            transport: Transport::Udp,
            payload,
        });
    }

    fn provisional(&self, code: u16, rseq: u32) -> Bytes {
        let inv = self.invite.as_ref().expect("invite");
        let mut r = reply(inv, code, "uas1");
        r.headers
            .push(HeaderName::Require, Bytes::from_static(b"100rel"));
        r.headers
            .push(HeaderName::RSeq, Bytes::from(rseq.to_string()));
        r.to_bytes()
    }

    fn send_reliable(&mut self, now: Instant, code: u16, rseq: u32) {
        let p = self.provisional(code, rseq);
        self.send(p.clone());
        self.pending = Some((rseq, p, now + Duration::from_millis(500)));
    }
}

impl Node for ReliableUas {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn handle(&mut self, now: Instant, from: SocketAddr, payload: Bytes) {
        let Ok(Message::Request(req)) = Message::parse_datagram(payload) else {
            return;
        };
        self.peer = Some(from);
        let cseq =
            String::from_utf8_lossy(req.headers.get(&HeaderName::CSeq).unwrap()).into_owned();
        let n: u32 = cseq.split_whitespace().next().unwrap().parse().unwrap();
        self.cseqs.push((n, req.method.as_str().to_owned()));
        match req.method {
            Method::Invite => {
                if self.invite.is_some() {
                    return;
                }
                self.invite = Some(req.clone());
                self.send(reply(&req, 100, "").to_bytes());
                self.send_reliable(now, 183, 1);
            }
            Method::Prack
                if self.challenge_prack
                    && !req.headers.contains(&HeaderName::ProxyAuthorization) =>
            {
                let mut r = reply(&req, 407, "uas1");
                r.headers.push(
                    HeaderName::ProxyAuthenticate,
                    Bytes::from_static(b"Digest realm=\"trunk.test\", nonce=\"p1\", qop=\"auth\""),
                );
                self.send(r.to_bytes());
            }
            Method::Prack => {
                let rack = String::from_utf8_lossy(req.headers.get(&HeaderName::RAck).unwrap())
                    .into_owned();
                self.racks.push(rack.clone());
                self.send(reply(&req, 200, "uas1").to_bytes());
                let acked: u32 = rack.split_whitespace().next().unwrap().parse().unwrap();
                if self.pending.as_ref().map(|p| p.0) != Some(acked) {
                    return; // a retransmitted PRACK
                }
                self.pending = None;
                if acked == 1 {
                    let stray = self.provisional(180, 3);
                    self.send(stray);
                    let late = self.provisional(183, 1);
                    self.send(late);
                    self.send_reliable(now, 180, 2);
                } else {
                    let inv = self.invite.clone().unwrap();
                    let mut ok = reply(&inv, 200, "uas1");
                    ok.set_body("application/sdp", Bytes::from_static(b"v=0 b"));
                    self.send(ok.to_bytes());
                }
            }
            Method::Bye => self.send(reply(&req, 200, "uas1").to_bytes()),
            _ => {}
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, p, next)) = &mut self.pending {
            if *next <= now {
                *next = now + Duration::from_millis(500);
                let p = p.clone();
                self.retransmitted += 1;
                self.send(p);
            }
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.2)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
}

fn provisionals(sim: &Sim<EpNode, ReliableUas>) -> Vec<u16> {
    sim.a
        .find(|e| matches!(e, Event::Provisional { .. }))
        .into_iter()
        .map(|(_, e)| match e {
            Event::Provisional { status, .. } => status.as_u16(),
            _ => unreachable!(),
        })
        .collect()
}

fn run_call(drop_first_prack: bool) -> Sim<EpNode, ReliableUas> {
    let mut sim = Sim::new(EpNode::new(addr_a(), 7, false), ReliableUas::new(addr_b()));
    if drop_first_prack {
        sim.drop = drop_nth(|p| p.is_request("PRACK"), 1);
    }
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    let now = sim.now;
    sim.a.ep.send_bye(now, call).unwrap();
    sim.run_to(sim.elapsed() + Duration::from_secs(2));
    sim
}

#[test]
fn invite_advertises_100rel_and_timer() {
    let sim = run_call(false);
    let inv = sim.packets(|p| p.is_request("INVITE"))[0].message();
    let sup = inv
        .headers()
        .get(&HeaderName::Supported)
        .expect("Supported");
    let sup = String::from_utf8_lossy(sup);
    assert!(sup.contains("100rel") && sup.contains("timer"), "{sup}");
}

#[test]
fn each_reliable_provisional_is_pracked_once_in_order() {
    let sim = run_call(false);
    assert_eq!(sim.b.racks, vec!["1 1 INVITE", "2 1 INVITE"]);
    // The stray RSeq 3 and the late copy of RSeq 1 are neither PRACKed nor reported.
    assert_eq!(provisionals(&sim), vec![183, 180]);
    // PRACKs go in the early dialog (To tag of the 183) with CSeqs after the INVITE's, and the BYE goes on
    // from there (RFC 3261 §12.2.1.1: strictly increasing).
    let methods: Vec<(u32, String)> = sim.b.cseqs.clone();
    assert_eq!(
        methods,
        vec![
            (1, "INVITE".into()),
            (2, "PRACK".into()),
            (3, "PRACK".into()),
            (1, "ACK".into()),
            (4, "BYE".into())
        ]
    );
    let prack = sim.packets(|p| p.is_request("PRACK"))[0].message();
    let to = String::from_utf8_lossy(prack.headers().get(&HeaderName::To).unwrap()).into_owned();
    assert!(to.contains("tag=uas1"), "{to}");
    // The 200s to the PRACKs were absorbed: one Answered, no stray Response event.
    assert_eq!(sim.a.find(is_answered).len(), 1);
    assert!(sim
        .a
        .find(|e| matches!(e, Event::Response { .. }))
        .is_empty());
    // ACK for the 200 was sent.
    assert_eq!(sim.packets(|p| p.is_request("ACK")).len(), 1);
}

#[test]
fn lost_prack_is_retransmitted_by_its_transaction_not_by_the_183_copies() {
    let sim = run_call(true);
    assert!(sim.b.retransmitted >= 1, "the UAS retransmitted its 183");
    let pracks = sim.packets(|p| p.is_request("PRACK"));
    let first: Vec<_> = pracks
        .iter()
        .map(|p| p.message())
        .filter(|m| m.headers().get(&HeaderName::RAck).map(|v| &v[..]) == Some(b"1 1 INVITE"))
        .collect();
    // Timer E's retransmission (same branch): every copy is the same transaction.
    assert!(first.len() >= 2, "{}", first.len());
    let branch = |m: &Message| m.headers().get(&HeaderName::Via).unwrap().clone();
    assert!(first.iter().all(|m| branch(m) == branch(&first[0])));
    assert_eq!(provisionals(&sim), vec![183, 180]);
    assert_eq!(sim.b.racks.iter().filter(|r| *r == "2 1 INVITE").count(), 1);
    assert_eq!(sim.a.find(is_answered).len(), 1);
}

#[test]
fn unreliable_provisional_gets_no_prack() {
    // A plain 180 (no Require) is reported and never PRACKed.
    let mut sim = Sim::new(
        EpNode::new(addr_a(), 3, false),
        ScriptNode::new(addr_b(), |req| match req.method {
            Method::Invite => vec![
                Message::Response(reply(req, 180, "t")),
                Message::Response({
                    let mut r = reply(req, 486, "t");
                    r.status = StatusCode::BUSY_HERE;
                    r
                }),
            ],
            _ => vec![],
        }),
    );
    let now = sim.now;
    sim.a.ep.start_invite(now, invite_to_b("v=0")).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    assert!(sim.packets(|p| p.is_request("PRACK")).is_empty());
    assert_eq!(
        sim.a.find(|e| matches!(e, Event::Provisional { .. })).len(),
        1
    );
}

#[test]
fn challenged_prack_is_resent_with_credentials_and_the_next_cseq() {
    let mut uas = ReliableUas::new(addr_b());
    uas.challenge_prack = true;
    let mut sim = Sim::new(EpNode::new(addr_a(), 9, false), uas);
    let mut inv = invite_to_b("v=0 a");
    inv.credentials = Some(rappel::sip::auth::Credentials {
        username: "rappel".into(),
        password: "secret".into(),
        realm: None,
    });
    let now = sim.now;
    sim.a.ep.start_invite(now, inv).unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    assert_eq!(sim.b.racks, vec!["1 1 INVITE", "2 1 INVITE"]);
    let pracks: Vec<u32> = sim
        .b
        .cseqs
        .iter()
        .filter(|(_, m)| m == "PRACK")
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        pracks,
        vec![2, 3, 4, 5],
        "each PRACK challenged once, retried with the next CSeq"
    );
    assert_eq!(provisionals(&sim), vec![183, 180]);
}
