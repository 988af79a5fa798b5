//! The call leg state machine over the sans-IO endpoint, in simulated time: RFC 4028 session-timer refresh and
//! expiry, 422 retry, glare during hold, ring timeout, DTMF INFO sent one at a time. No sockets, no clock: a scripted or endpoint far end on the
//! simulated wire of `tests/common`.

mod common;

use bytes::Bytes;
use common::{addr_a, addr_b, reply, EpNode, Node, ScriptNode, Sim};
use rappel::call::cdr::EndCause;
use rappel::call::leg::{
    LegCommand, LegCore, LegSetup, Op, Phase, RefreshMethod, SessionTimerOptions,
};
use rappel::call::LegEvent;
use rappel::sdp::Codec;
use rappel::sip::endpoint::{
    CallHandle, Endpoint, EndpointConfig, EndpointError, Event, InviteRequest,
};
use rappel::sip::message::{HeaderName, Message, Method, Request};
use rappel::sip::transaction::{Transmit, Transport};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PEER_SDP: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

/// Our side: an endpoint plus one leg, driven like the engine drives them.
struct LegNode {
    ep: Endpoint,
    leg: LegCore,
    events: Vec<(Instant, LegEvent)>,
    done: Vec<(Instant, Op, Result<(), rappel::CallError>)>,
}

fn event_call(e: &Event) -> Option<CallHandle> {
    match e {
        Event::Provisional { call, .. }
        | Event::Answered { call, .. }
        | Event::Acked { call, .. }
        | Event::Request { call, .. }
        | Event::Response { call, .. }
        | Event::TransactionTimeout { call, .. }
        | Event::Terminated { call, .. } => Some(*call),
        _ => None,
    }
}

impl LegNode {
    fn new(
        now: Instant,
        ring_timeout: Option<Duration>,
        timer: Option<SessionTimerOptions>,
    ) -> Self {
        let mut cfg = EndpointConfig::new(addr_a());
        cfg.rng_seed(7).tu_glare_retry(true);
        let leg = LegCore::new(
            now,
            LegSetup {
                id: 1,
                target: "sip:agent@10.0.0.2:5060".into(),
                local_rtp: "10.0.0.1:20000".parse().unwrap(),
                codecs: vec![Codec::pcmu(), Codec::pcma(), Codec::telephone_event(101)],
                ring_timeout,
                session_timer: timer,
                sdp_session_id: 1,
                start_unix_ms: 0,
            },
        );
        Self {
            ep: Endpoint::new(cfg),
            leg,
            events: Vec::new(),
            done: Vec::new(),
        }
    }

    fn pump(&mut self, now: Instant) {
        loop {
            let mut any = false;
            while let Some(e) = self.ep.poll_event() {
                any = true;
                let h = event_call(&e)
                    .and_then(|c| self.ep.last_headers(c))
                    .cloned();
                self.leg.handle_sip(now, &e, h.as_ref());
            }
            while let Some(c) = self.leg.poll_command() {
                any = true;
                let call = self.leg.call();
                match c {
                    LegCommand::Invite {
                        body,
                        headers,
                        retry_of,
                    } => {
                        let req = InviteRequest {
                            target: "sip:agent@10.0.0.2:5060".into(),
                            from: "sip:rappel@10.0.0.1".into(),
                            to: None,
                            next_hop: addr_b(),
                            transport: None,
                            sdp: body,
                            credentials: None,
                            extra_headers: headers,
                        };
                        let h = match retry_of {
                            Some(prev) => self.ep.retry_invite(now, prev, req),
                            None => self.ep.start_invite(now, req),
                        }
                        .unwrap();
                        self.leg.attach(h, None);
                    }
                    LegCommand::Cancel => {
                        let _ = self.ep.send_cancel(now, call.unwrap());
                    }
                    LegCommand::Bye => {
                        let _ = self.ep.send_bye(now, call.unwrap());
                    }
                    LegCommand::Reinvite(b) => {
                        self.ep.send_reinvite(now, call.unwrap(), b).unwrap()
                    }
                    LegCommand::Update(b) => self.ep.send_update(now, call.unwrap(), b).unwrap(),
                    LegCommand::AnswerReinvite { code, body } => self
                        .ep
                        .answer_reinvite(now, call.unwrap(), code, body)
                        .unwrap(),
                    LegCommand::AnswerUpdate { code, body } => self
                        .ep
                        .answer_update(now, call.unwrap(), code, body)
                        .unwrap(),
                    LegCommand::Info { content_type, body } => {
                        let sent = self.ep.send_info(now, call.unwrap(), content_type, body);
                        if sent.is_err() {
                            self.leg.info_not_sent();
                        }
                    }
                    LegCommand::Done { op, result } => self.done.push((now, op, result)),
                    _ => {} // relay commands: no relay here
                }
            }
            while let Some(ev) = self.leg.poll_event() {
                self.events.push((now, ev));
            }
            if !any {
                return;
            }
        }
    }

    fn ended(&self) -> Option<(Instant, EndCause)> {
        self.events.iter().find_map(|(t, e)| match e {
            LegEvent::Ended { cause, .. } => Some((*t, *cause)),
            _ => None,
        })
    }
}

impl Node for LegNode {
    fn addr(&self) -> SocketAddr {
        addr_a()
    }
    fn handle(&mut self, now: Instant, from: SocketAddr, payload: Bytes) {
        self.ep.handle(now, from, Transport::Udp, payload);
        self.pump(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        if self.ep.poll_timeout().is_some_and(|t| t <= now) {
            self.ep.handle_timeout(now);
        }
        if self.leg.poll_timeout().is_some_and(|t| t <= now) {
            self.leg.handle_timeout(now);
        }
        self.pump(now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        [self.ep.poll_timeout(), self.leg.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ep.poll_transmit()
    }
    fn settle(&mut self, now: Instant) {
        self.pump(now);
    }
}

/// A scripted UAS: 200 to INVITE (with `session_expires` when set), 200 with SDP to re-INVITE and UPDATE, 200 to
/// BYE.
fn timer_peer(session_expires: Option<&'static str>) -> ScriptNode {
    ScriptNode::new(addr_b(), move |req: &Request| {
        let mut out = Vec::new();
        match req.method {
            Method::Invite | Method::Update => {
                let mut r = reply(req, 200, "peer");
                if let Some(se) = session_expires {
                    r.headers.push(HeaderName::SessionExpires, Bytes::from(se));
                    r.headers
                        .push(HeaderName::Require, Bytes::from_static(b"timer"));
                }
                r.set_body("application/sdp", Bytes::from_static(PEER_SDP.as_bytes()));
                out.push(Message::Response(r));
            }
            Method::Bye => out.push(Message::Response(reply(req, 200, "peer"))),
            _ => {}
        }
        out
    })
}

fn requests(sim: &Sim<LegNode, ScriptNode>, m: Method) -> Vec<(Duration, Request)> {
    sim.b
        .received
        .iter()
        .filter_map(|(t, msg)| match msg {
            Message::Request(r) if r.method == m => Some((*t - sim.start, r.clone())),
            _ => None,
        })
        .collect()
}

fn start(sim: &mut Sim<LegNode, impl Node>) {
    let now = sim.now;
    sim.a.leg.start(now);
    sim.a.pump(now);
}

#[test]
fn session_timer_refreshes_at_half_the_interval() {
    let t0 = Instant::now();
    let timer = SessionTimerOptions {
        expires: 120,
        ..SessionTimerOptions::default()
    };
    let mut sim = Sim::new(
        LegNode::new(t0, None, Some(timer)),
        timer_peer(Some("90;refresher=uac")),
    );
    sim.start = t0;
    sim.now = t0;
    start(&mut sim);
    sim.run_to(Duration::from_secs(200));
    let invites = requests(&sim, Method::Invite);
    let first = invites[0]
        .1
        .headers
        .get(&HeaderName::SessionExpires)
        .cloned();
    assert_eq!(first.as_deref(), Some(&b"120;refresher=uac"[..]));
    // The 2xx granted 90 s: refreshes every 45 s after the answer (which came after one 20 ms hop each way).
    let at: Vec<u64> = invites
        .iter()
        .skip(1)
        .map(|(t, _)| t.as_millis() as u64)
        .collect();
    assert_eq!(at.len(), 4, "{at:?}");
    for (i, t) in at.iter().enumerate() {
        let expected = 40 + 45_000 * (i as u64 + 1) + 40 * i as u64;
        assert!(
            t.abs_diff(expected) <= 60,
            "refresh {i} at {t} ms, expected ~{expected}"
        );
    }
    assert_eq!(sim.a.leg.phase(), Phase::Answered);
    assert!(sim.a.ended().is_none());
    // Refreshes keep the SDP version (RFC 3264 §8: nothing changed).
    let versions: Vec<String> = invites
        .iter()
        .map(|(_, r)| {
            let body = String::from_utf8_lossy(&r.body).into_owned();
            body.lines()
                .find(|l| l.starts_with("o="))
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "{versions:?}");
}

#[test]
fn session_timer_refresh_by_update() {
    let t0 = Instant::now();
    let timer = SessionTimerOptions {
        expires: 90,
        refresh: RefreshMethod::Update,
        ..SessionTimerOptions::default()
    };
    let mut sim = Sim::new(LegNode::new(t0, None, Some(timer)), timer_peer(Some("90")));
    sim.start = t0;
    sim.now = t0;
    start(&mut sim);
    sim.run_to(Duration::from_secs(100));
    assert_eq!(requests(&sim, Method::Invite).len(), 1);
    assert_eq!(requests(&sim, Method::Update).len(), 2);
    assert!(sim.a.ended().is_none());
}

#[test]
fn session_expires_when_the_peer_refreshes_nothing() {
    let t0 = Instant::now();
    let mut sim = Sim::new(
        LegNode::new(t0, None, Some(SessionTimerOptions::default())),
        timer_peer(Some("90;refresher=uas")),
    );
    sim.start = t0;
    sim.now = t0;
    start(&mut sim);
    sim.run_to(Duration::from_secs(120));
    assert_eq!(
        requests(&sim, Method::Invite).len(),
        1,
        "the peer refreshes, not us"
    );
    let byes = requests(&sim, Method::Bye);
    assert_eq!(byes.len(), 1);
    // Expiry: interval - min(32, interval/3) = 60 s after the answer.
    assert!(
        byes[0].0.as_millis().abs_diff(60_040) <= 40,
        "{:?}",
        byes[0].0
    );
    let (_, cause) = sim.a.ended().expect("ended");
    assert_eq!(cause, EndCause::SessionExpired);
}

#[test]
fn no_session_expires_in_the_answer_means_no_timer() {
    let t0 = Instant::now();
    let mut sim = Sim::new(
        LegNode::new(t0, None, Some(SessionTimerOptions::default())),
        timer_peer(None),
    );
    sim.start = t0;
    sim.now = t0;
    start(&mut sim);
    sim.run_to(Duration::from_secs(4000));
    assert_eq!(requests(&sim, Method::Invite).len(), 1);
    assert!(sim.a.ended().is_none());
    assert_eq!(sim.a.leg.poll_timeout(), None);
}

#[test]
fn answer_422_is_retried_with_the_peers_min_se() {
    let t0 = Instant::now();
    let mut n = 0;
    let peer = ScriptNode::new(addr_b(), move |req: &Request| {
        if req.method != Method::Invite {
            return Vec::new();
        }
        n += 1;
        if n == 1 {
            let mut r = reply(req, 422, "p1");
            r.headers
                .push(HeaderName::MinSe, Bytes::from_static(b"1800"));
            return vec![Message::Response(r)];
        }
        let mut r = reply(req, 200, "p2");
        r.headers.push(
            HeaderName::SessionExpires,
            Bytes::from_static(b"1800;refresher=uac"),
        );
        r.set_body("application/sdp", Bytes::from_static(PEER_SDP.as_bytes()));
        vec![Message::Response(r)]
    });
    let timer = SessionTimerOptions {
        expires: 300,
        ..SessionTimerOptions::default()
    };
    let mut sim = Sim::new(LegNode::new(t0, None, Some(timer)), peer);
    sim.start = t0;
    sim.now = t0;
    start(&mut sim);
    sim.run_to(Duration::from_secs(5));
    let invites = requests(&sim, Method::Invite);
    assert_eq!(invites.len(), 2);
    let se = |i: usize| {
        invites[i]
            .1
            .headers
            .get(&HeaderName::SessionExpires)
            .cloned()
    };
    assert_eq!(se(0).as_deref(), Some(&b"300;refresher=uac"[..]));
    assert_eq!(se(1).as_deref(), Some(&b"1800;refresher=uac"[..]));
    // RFC 4028 §7.4: the retry carries the 422's Min-SE, in the same call (Call-ID, From with its tag) with the
    // next CSeq and a new transaction (branch).
    let hdr = |i: usize, n: HeaderName| invites[i].1.headers.get(&n).cloned().unwrap();
    assert_eq!(&hdr(0, HeaderName::MinSe)[..], b"90");
    assert_eq!(&hdr(1, HeaderName::MinSe)[..], b"1800");
    assert_eq!(hdr(0, HeaderName::CallId), hdr(1, HeaderName::CallId));
    assert_eq!(hdr(0, HeaderName::From), hdr(1, HeaderName::From));
    assert_eq!(&hdr(0, HeaderName::CSeq)[..], b"1 INVITE");
    assert_eq!(&hdr(1, HeaderName::CSeq)[..], b"2 INVITE");
    assert_ne!(hdr(0, HeaderName::Via), hdr(1, HeaderName::Via));
    // The 422 was ACKed (by its transaction), and the dialog is the retry's: the answer's To tag, our tag.
    assert_eq!(
        requests(&sim, Method::Ack).len(),
        2,
        "ACK for the 422, ACK for the 200"
    );
    assert_eq!(sim.a.leg.phase(), Phase::Answered);
    assert!(sim.a.events.iter().any(|(_, e)| *e == LegEvent::Answered));
    assert!(
        !sim.a
            .events
            .iter()
            .any(|(_, e)| matches!(e, LegEvent::Failed { .. })),
        "the 422 is not a failure"
    );
    // Only a call whose INVITE failed can be retried: not the answered one, not an unknown handle.
    let req = InviteRequest {
        target: "sip:agent@10.0.0.2:5060".into(),
        from: "sip:rappel@10.0.0.1".into(),
        to: None,
        next_hop: addr_b(),
        transport: None,
        sdp: Bytes::new(),
        credentials: None,
        extra_headers: Vec::new(),
    };
    let live = sim.a.leg.call().unwrap();
    assert_eq!(
        sim.a.ep.retry_invite(sim.now, live, req.clone()),
        Err(EndpointError::InvalidState)
    );
    assert!(matches!(
        sim.a.ep.retry_invite(sim.now, CallHandle(u64::MAX), req),
        Err(EndpointError::UnknownCall(_))
    ));
    // The next refresh is at half of 1800 s.
    let next = sim.a.leg.poll_timeout().unwrap() - sim.now;
    assert!(
        next > Duration::from_secs(890) && next <= Duration::from_secs(900),
        "{next:?}"
    );
}

#[test]
fn a_second_422_gives_up_after_two_retries() {
    let t0 = Instant::now();
    let peer = ScriptNode::new(addr_b(), |req: &Request| {
        if req.method != Method::Invite {
            return Vec::new();
        }
        let mut r = reply(req, 422, "p");
        r.headers
            .push(HeaderName::MinSe, Bytes::from_static(b"3600"));
        vec![Message::Response(r)]
    });
    let mut sim = Sim::new(
        LegNode::new(t0, None, Some(SessionTimerOptions::default())),
        peer,
    );
    sim.start = t0;
    sim.now = t0;
    start(&mut sim);
    sim.run_to(Duration::from_secs(5));
    let invites = requests(&sim, Method::Invite);
    assert_eq!(invites.len(), 3);
    let cseqs: Vec<_> = invites
        .iter()
        .map(|(_, r)| r.headers.get(&HeaderName::CSeq).cloned().unwrap())
        .collect();
    assert_eq!(cseqs, ["1 INVITE", "2 INVITE", "3 INVITE"]);
    let call_id = |i: usize| invites[i].1.headers.get(&HeaderName::CallId).cloned();
    assert!(call_id(0) == call_id(1) && call_id(1) == call_id(2));
    assert_eq!(sim.a.ended().map(|e| e.1), Some(EndCause::Rejected(422)));
}

#[test]
fn ring_timeout_cancels() {
    let t0 = Instant::now();
    let peer = ScriptNode::new(addr_b(), |req: &Request| match req.method {
        Method::Invite => vec![Message::Response(reply(req, 180, "p"))],
        Method::Cancel => vec![Message::Response(reply(req, 200, "p"))],
        _ => Vec::new(),
    });
    let mut sim = Sim::new(LegNode::new(t0, Some(Duration::from_secs(5)), None), peer);
    sim.start = t0;
    sim.now = t0;
    start(&mut sim);
    sim.run_to(Duration::from_secs(6));
    let cancels = requests(&sim, Method::Cancel);
    assert_eq!(cancels.len(), 1);
    assert_eq!(
        cancels[0].0,
        Duration::from_millis(5020),
        "5 s after the INVITE left, one hop later"
    );
    assert!(sim.a.events.iter().any(|(_, e)| *e == LegEvent::Ringing));
}

/// Our hold re-INVITE crosses the peer's own re-INVITE: each side answers the other 491 (RFC 3261 §14.2), both
/// retry after their random delays, and both end up done; our hold succeeds.
#[test]
fn glare_during_hold_resolves() {
    let t0 = Instant::now();
    let peer_call = std::rc::Rc::new(std::cell::Cell::new(None));
    let pc = peer_call.clone();
    let mut peer_cfg = EndpointConfig::new(addr_b());
    peer_cfg.rng_seed(99).accept_invites(true);
    let peer = EpNode::with_config(addr_b(), peer_cfg).with_tu(move |now, ep, ev| match ev {
        Event::IncomingCall { call, .. } => {
            pc.set(Some(*call));
            ep.answer_invite(now, *call, 200, Bytes::from_static(PEER_SDP.as_bytes()))
                .unwrap();
        }
        Event::Request {
            call,
            method: Method::Invite,
            ..
        } => ep
            .answer_invite(now, *call, 200, Bytes::from_static(PEER_SDP.as_bytes()))
            .unwrap(),
        _ => {}
    });
    let mut sim = Sim::new(LegNode::new(t0, None, None), peer);
    sim.start = t0;
    sim.now = t0;
    start(&mut sim);
    assert!(sim.run_until(Duration::from_secs(2), |s| s.a.leg.phase()
        == Phase::Answered));
    assert!(sim.run_until(Duration::from_secs(2), |s| s
        .b
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::Acked { .. }))));
    // Both sides send a re-INVITE at the same instant.
    let now = sim.now;
    sim.a.leg.hold().unwrap();
    sim.a.pump(now);
    let call_b = peer_call.get().unwrap();
    sim.b
        .ep
        .send_reinvite(now, call_b, Bytes::from_static(PEER_SDP.as_bytes()))
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(20), |s| !s.a.done.is_empty()));
    assert_eq!(sim.a.done[0].1, Op::Hold);
    assert_eq!(sim.a.done[0].2, Ok(()));
    assert!(sim.a.leg.is_held());
    let glare = sim.packets(|p| p.status() == Some(491));
    assert_eq!(glare.len(), 2, "each side answered the other 491");
    // The peer's own re-INVITE also got through on its retry.
    sim.run_to(sim.elapsed() + Duration::from_secs(10));
    let peer_ok = sim.b.find(|e| {
        matches!(e, Event::Response { method: Method::Invite, status, .. } if status.as_u16() == 200)
    });
    assert_eq!(peer_ok.len(), 1);
    // The peer's retry came first (we were not holding yet), then our retried hold re-INVITE: still sendonly.
    let ours = sim.packets(|p| p.from == addr_a() && p.is_request("INVITE"));
    assert_eq!(
        ours.len(),
        3,
        "initial INVITE, hold, hold retried after the 491"
    );
    let body = String::from_utf8_lossy(ours[2].message().body()).into_owned();
    assert!(body.contains("a=sendonly"), "{body}");
    // The retry is a new offer (RFC 3264 §8): its o= version is above every SDP we sent before it, including
    // our answer to the peer's re-INVITE that got in first.
    let version = |b: &[u8]| -> u64 {
        let sdp = String::from_utf8_lossy(b).into_owned();
        let o = sdp
            .lines()
            .find(|l| l.starts_with("o="))
            .unwrap()
            .to_owned();
        o.split(' ').nth(2).unwrap().parse().unwrap()
    };
    let sdps: Vec<(Instant, u64)> = sim
        .packets(|p| p.from == addr_a() && !p.message().body().is_empty())
        .iter()
        .map(|p| (p.sent, version(p.message().body())))
        .collect();
    let retry_at = ours[2].sent;
    let retry_v = version(ours[2].message().body());
    let before: Vec<u64> = sdps
        .iter()
        .filter(|s| s.0 < retry_at)
        .map(|s| s.1)
        .collect();
    assert!(
        before.len() >= 3,
        "INVITE, hold, answer to the peer: {before:?}"
    );
    assert!(
        before.iter().all(|&v| v < retry_v),
        "{before:?} then {retry_v}"
    );
    assert_eq!(retry_v, before.iter().max().unwrap() + 1);
    assert_eq!(
        version(ours[1].message().body()) + 2,
        retry_v,
        "hold offer, answer, retried hold offer"
    );
}

/// A 491 with nothing in between (the peer's re-INVITE never comes): the retried offer still bumps the version.
#[test]
fn reoffer_after_491_bumps_the_version() {
    let t0 = Instant::now();
    let mut n = 0;
    let peer = ScriptNode::new(addr_b(), move |req: &Request| match req.method {
        Method::Invite => {
            n += 1;
            let code = if n == 2 { 491 } else { 200 };
            let mut r = reply(req, code, "p");
            if code == 200 {
                r.set_body("application/sdp", Bytes::from_static(PEER_SDP.as_bytes()));
            }
            vec![Message::Response(r)]
        }
        _ => Vec::new(),
    });
    let mut sim = Sim::new(LegNode::new(t0, None, None), peer);
    sim.start = t0;
    sim.now = t0;
    start(&mut sim);
    assert!(sim.run_until(Duration::from_secs(2), |s| s.a.leg.phase()
        == Phase::Answered));
    let now = sim.now;
    sim.a.leg.hold().unwrap();
    sim.a.pump(now);
    assert!(sim.run_until(Duration::from_secs(10), |s| !s.a.done.is_empty()));
    assert_eq!(sim.a.done[0].2, Ok(()));
    let invites = requests(&sim, Method::Invite);
    assert_eq!(invites.len(), 3, "INVITE, hold (491), hold again");
    let version = |r: &Request| -> u64 {
        let sdp = String::from_utf8_lossy(&r.body).into_owned();
        let o = sdp
            .lines()
            .find(|l| l.starts_with("o="))
            .unwrap()
            .to_owned();
        o.split(' ').nth(2).unwrap().parse().unwrap()
    };
    let (v0, v1, v2) = (
        version(&invites[0].1),
        version(&invites[1].1),
        version(&invites[2].1),
    );
    assert_eq!((v1, v2), (v0 + 1, v0 + 2), "each offer a new version");
    // The §14.1 back-off for the Call-ID owner: 2.1 to 4 s after the 491.
    let wait = invites[2].0 - invites[1].0;
    assert!(
        wait >= Duration::from_millis(2100) && wait <= Duration::from_millis(4100),
        "{wait:?}"
    );
    let body = String::from_utf8_lossy(&invites[2].1.body).into_owned();
    assert!(body.contains("a=sendonly"), "{body}");
    assert!(sim.a.leg.is_held());
}

/// DTMF as SIP INFO goes one request at a time: the first INFO's first transmission is lost, and the second
/// INFO is not sent before the first's 200 (so its retransmission cannot arrive after the second and be refused
/// with 500 for its lower CSeq). A refused INFO fails its own call only; the queue is capped.
#[test]
fn dtmf_info_waits_for_the_previous_final_response() {
    use rappel::call::leg::MAX_PENDING_DTMF;
    use rappel::media::dtmf::Digit;
    use rappel::CallError;
    let t0 = Instant::now();
    let peer = ScriptNode::new(addr_b(), |req: &Request| match req.method {
        Method::Invite => {
            let mut r = reply(req, 200, "p");
            r.set_body("application/sdp", Bytes::from_static(PEER_SDP.as_bytes()));
            vec![Message::Response(r)]
        }
        Method::Info => {
            // A peer that cannot play 9.
            let nine = String::from_utf8_lossy(&req.body).contains("Signal=9");
            vec![Message::Response(reply(
                req,
                if nine { 500 } else { 200 },
                "p",
            ))]
        }
        Method::Bye => vec![Message::Response(reply(req, 200, "p"))],
        _ => Vec::new(),
    });
    let mut sim = Sim::new(LegNode::new(t0, None, None), peer);
    sim.start = t0;
    sim.now = t0;
    // The first INFO's first transmission is lost (Timer E retransmits it after T1 = 500 ms).
    sim.drop = common::drop_nth(|p| p.is_request("INFO"), 1);
    let digits =
        |s: &str| -> Vec<Digit> { s.chars().map(|c| Digit::from_char(c).unwrap()).collect() };
    assert_eq!(
        sim.a.leg.send_dtmf_info(&digits("1")),
        Err(CallError::NotAnswered)
    );
    start(&mut sim);
    assert!(sim.run_until(Duration::from_secs(2), |s| s.a.leg.phase()
        == Phase::Answered));
    let now = sim.now;
    // Two calls: "1#" then "9" (refused) then "2".
    sim.a.leg.send_dtmf_info(&digits("1#")).unwrap();
    sim.a.leg.send_dtmf_info(&digits("9")).unwrap();
    sim.a.leg.send_dtmf_info(&digits("2")).unwrap();
    assert_eq!(sim.a.leg.dtmf_info_pending(), 4);
    // Over the cap: nothing of the call is queued.
    assert_eq!(
        sim.a.leg.send_dtmf_info(&digits(&"3".repeat(61))),
        Err(CallError::DtmfQueueFull {
            pending: 4,
            limit: MAX_PENDING_DTMF
        })
    );
    sim.a.pump(now);
    assert!(sim.run_until(Duration::from_secs(10), |s| s.a.done.len() == 3));
    let results: Vec<_> = sim.a.done.iter().map(|d| (d.1, d.2.clone())).collect();
    assert_eq!(
        results,
        [
            (Op::DtmfInfo, Ok(())),
            (Op::DtmfInfo, Err(CallError::Rejected { status: 500 })),
            (Op::DtmfInfo, Ok(())),
        ]
    );
    assert_eq!(sim.a.leg.dtmf_info_pending(), 0);

    // On the wire: each INFO (first transmissions; the lost one retransmitted) is sent only after the previous
    // INFO's final response was delivered to us.
    let infos: Vec<&common::Packet> = sim.packets(|p| p.is_request("INFO"));
    let finals: Vec<&common::Packet> =
        sim.packets(|p| p.status().is_some_and(|s| s >= 200) && p.cseq_method() == "INFO");
    let signal = |p: &common::Packet| {
        let body = String::from_utf8_lossy(p.message().body()).into_owned();
        body.lines().next().unwrap_or_default().to_owned()
    };
    let sent: Vec<(u64, String, bool)> = infos
        .iter()
        .map(|p| ((p.sent - t0).as_millis() as u64, signal(p), p.dropped))
        .collect();
    assert_eq!(
        sent.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
        ["Signal=1", "Signal=1", "Signal=#", "Signal=9", "Signal=2"],
        "{sent:?}"
    );
    assert!(
        sent[0].2 && !sent[1].2,
        "first copy lost, retransmitted: {sent:?}"
    );
    assert!(
        sent[1].0 - sent[0].0 >= 500,
        "Timer E retransmission after T1: {sent:?}"
    );
    assert_eq!(finals.len(), 4, "one final response per INFO");
    for i in 0..3 {
        let answered = finals[i].sent + sim.latency;
        let next = infos[i + 2].sent;
        assert!(
            next >= answered,
            "INFO {} sent at {:?} before the final response to the previous one reached us at {:?}",
            signal(infos[i + 2]),
            next - t0,
            answered - t0
        );
    }
    let cseqs: Vec<u32> = infos
        .iter()
        .map(|p| {
            let m = p.message();
            let v = m.headers().get(&HeaderName::CSeq).unwrap().clone();
            String::from_utf8_lossy(&v)
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(cseqs.windows(2).all(|w| w[0] <= w[1]), "{cseqs:?}");
}

/// The peer accepts a re-offer of only PCMA + telephone-event with an answer of just telephone-event (baresip
/// 1.0 without PCMA does so), which leaves its session without audio: the leg re-offers its previous codec
/// first, takes the new answer (its new port), and reports the re-offer as failed.
#[test]
fn reoffer_answered_without_audio_restores_the_previous_codec() {
    const TE_ONLY: &str = "v=0\r\no=- 1 2 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
m=audio 30100 RTP/AVP 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    const RESTORED: &str =
        "v=0\r\no=- 1 3 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
m=audio 30200 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let t0 = Instant::now();
    let mut n = 0;
    let peer = ScriptNode::new(addr_b(), move |req: &Request| match req.method {
        Method::Invite => {
            n += 1;
            let sdp = [PEER_SDP, TE_ONLY, RESTORED][(n - 1).min(2)];
            let mut r = reply(req, 200, "p");
            r.set_body("application/sdp", Bytes::from_static(sdp.as_bytes()));
            vec![Message::Response(r)]
        }
        _ => Vec::new(),
    });
    let mut sim = Sim::new(LegNode::new(t0, None, None), peer);
    sim.start = t0;
    sim.now = t0;
    start(&mut sim);
    assert!(sim.run_until(Duration::from_secs(2), |s| s.a.leg.phase()
        == Phase::Answered));
    let now = sim.now;
    sim.a
        .leg
        .reoffer(&[Codec::pcma(), Codec::telephone_event(101)])
        .unwrap();
    sim.a.pump(now);
    assert!(sim.run_until(Duration::from_secs(10), |s| !s.a.done.is_empty()));
    assert_eq!(
        sim.a
            .done
            .iter()
            .map(|d| (d.1, d.2.clone()))
            .collect::<Vec<_>>(),
        vec![(Op::Reoffer, Err(rappel::CallError::CodecRefused))]
    );
    let invites = requests(&sim, Method::Invite);
    assert_eq!(invites.len(), 3, "INVITE, re-offer, restoring offer");
    let m_line = |r: &Request| -> String {
        let sdp = String::from_utf8_lossy(&r.body).into_owned();
        sdp.lines()
            .find(|l| l.starts_with("m="))
            .unwrap()
            .to_owned()
    };
    assert!(
        m_line(&invites[1].1).ends_with("RTP/AVP 8 101"),
        "{:?}",
        m_line(&invites[1].1)
    );
    assert!(
        m_line(&invites[2].1).ends_with("RTP/AVP 0 8 101"),
        "PCMU (what was negotiated) first: {:?}",
        m_line(&invites[2].1)
    );
    let neg = sim.a.leg.negotiated().unwrap();
    assert_eq!(neg.codec.name, Codec::pcmu().name);
    assert_eq!(
        neg.remote_rtp,
        "10.0.0.2:30200".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(sim.a.leg.phase(), Phase::Answered);
}
