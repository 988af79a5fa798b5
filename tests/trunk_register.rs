//! Registration with a trunk in simulated time: [`RegistrationAgent`] over a real [`Endpoint`] against a scripted
//! registrar. Refresh and retry instants are checked to the millisecond (one-way latency 20 ms).

mod common;

use bytes::Bytes;
use common::*;
use rappel::sip::auth::Credentials;
use rappel::sip::endpoint::{Endpoint, EndpointConfig, RegisterRequest};
use rappel::sip::message::{HeaderName, Message, Method, Request, StatusCode};
use rappel::sip::register::{
    RegistrationAgent, RegistrationEvent, RegistrationPolicy, RegistrationState,
};
use rappel::sip::transaction::{Transmit, Transport};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An endpoint whose TU is a registration agent.
struct RegNode {
    ep: Endpoint,
    agent: RegistrationAgent,
    addr: SocketAddr,
    events: Vec<(Duration, RegistrationEvent)>,
    start: Instant,
}

impl RegNode {
    fn new(expires: u32, start: Instant) -> Self {
        let mut cfg = EndpointConfig::new(addr_a());
        cfg.rng_seed(11);
        let req = RegisterRequest {
            registrar: "sip:10.0.0.2".into(),
            aor: "sip:rappel@trunk.test".into(),
            next_hop: addr_b(),
            transport: None,
            expires,
            credentials: Some(Credentials {
                username: "rappel".into(),
                password: "secret".into(),
                realm: None,
            }),
            extra_headers: Vec::new(),
        };
        Self {
            ep: Endpoint::new(cfg),
            agent: RegistrationAgent::new(req, RegistrationPolicy::default()),
            addr: addr_a(),
            events: Vec::new(),
            start,
        }
    }

    fn drain(&mut self, now: Instant) {
        while let Some(ev) = self.ep.poll_event() {
            assert!(self.agent.handle_event(now, &mut self.ep, &ev), "{ev:?}");
        }
        while let Some(e) = self.agent.poll_event() {
            self.events.push((now - self.start, e));
        }
    }
}

impl Node for RegNode {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn handle(&mut self, now: Instant, from: SocketAddr, payload: Bytes) {
        self.ep.handle(now, from, Transport::Udp, payload);
        self.drain(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        self.drain(now);
        self.agent.handle_timeout(now, &mut self.ep);
        self.drain(now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        [self.ep.poll_timeout(), self.agent.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ep.poll_transmit()
    }
    fn settle(&mut self, now: Instant) {
        self.drain(now);
    }
}

fn expires_of(req: &Request) -> u32 {
    std::str::from_utf8(req.headers.get(&HeaderName::Expires).unwrap())
        .unwrap()
        .parse()
        .unwrap()
}

/// 401 without credentials, else 200 granting what was asked (capped at `cap`), or a bare 200 for a removal.
fn challenge_then(req: &Request, cap: u32) -> Vec<Message> {
    if !req.headers.contains(&HeaderName::Authorization) {
        let mut r = reply(req, 401, "reg");
        r.headers.push(
            HeaderName::WwwAuthenticate,
            Bytes::from_static(b"Digest realm=\"trunk.test\", nonce=\"n1\", qop=\"auth\""),
        );
        return vec![Message::Response(r)];
    }
    let e = expires_of(req).min(cap);
    let mut r = reply(req, 200, "reg");
    if e > 0 {
        r.headers.push(
            HeaderName::Contact,
            Bytes::from(format!("<sip:10.0.0.1:5060>;expires={e}")),
        );
    }
    vec![Message::Response(r)]
}

fn sim(
    expires: u32,
    script: impl FnMut(&Request) -> Vec<Message> + 'static,
) -> Sim<RegNode, ScriptNode> {
    let mut s = Sim::new(
        RegNode::new(expires, Instant::now()),
        ScriptNode::new(addr_b(), script),
    );
    s.a.start = s.start;
    let now = s.now;
    s.a.agent.start(now, &mut s.a.ep).unwrap();
    s
}

fn register_times(s: &Sim<RegNode, ScriptNode>) -> Vec<u64> {
    s.send_times_ms(|p| p.is_request("REGISTER"))
}

fn register_expires(s: &Sim<RegNode, ScriptNode>) -> Vec<u32> {
    s.packets(|p| p.is_request("REGISTER"))
        .iter()
        .map(|p| match p.message() {
            Message::Request(r) => expires_of(&r),
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn refreshes_before_expiry_with_auth_then_unregisters() {
    let mut s = sim(60, |r| challenge_then(r, 3600));
    s.run_to(Duration::from_secs(60));
    // 0: REGISTER, 40: with credentials, 200 at 80 → refresh at 80 + 28 s (min(60/2, 60−32)).
    assert_eq!(
        register_times(&s),
        vec![0, 40, 28_080, 28_120, 56_160, 56_200]
    );
    let ms = Duration::from_millis;
    assert_eq!(
        s.a.events,
        vec![
            (ms(80), RegistrationEvent::Registered { expires: 60 }),
            (ms(28_160), RegistrationEvent::Registered { expires: 60 }),
            (ms(56_240), RegistrationEvent::Registered { expires: 60 }),
        ]
    );
    match s.a.agent.state() {
        RegistrationState::Registered { until, refresh_at } => {
            assert_eq!(until - s.start, ms(56_240 + 60_000));
            assert_eq!(refresh_at - s.start, ms(56_240 + 28_000));
        }
        other => panic!("{other:?}"),
    }
    // Every refresh is the same registration: one Call-ID, increasing CSeq.
    let regs: Vec<Message> = s
        .packets(|p| p.is_request("REGISTER"))
        .iter()
        .map(|p| p.message())
        .collect();
    let call_ids: std::collections::HashSet<Bytes> = regs
        .iter()
        .map(|m| m.headers().get(&HeaderName::CallId).unwrap().clone())
        .collect();
    assert_eq!(call_ids.len(), 1);
    let now = s.now;
    s.a.agent.shutdown(now, &mut s.a.ep);
    s.run_to(s.elapsed() + Duration::from_secs(1));
    assert_eq!(*register_expires(&s).last().unwrap(), 0);
    assert_eq!(
        s.a.events.last().unwrap().1,
        RegistrationEvent::Unregistered { removed: true }
    );
    assert_eq!(s.a.agent.state(), RegistrationState::Unregistered);
    assert_eq!(s.a.agent.poll_timeout(), None);
    s.run_to(s.elapsed() + Duration::from_secs(40));
    assert_eq!(s.a.ep.live_counts(), (0, 0, 0));
}

#[test]
fn interval_too_brief_follows_min_expires() {
    let mut s = sim(60, |req| {
        if req.method != Method::Register {
            return vec![];
        }
        if expires_of(req) < 3600 && expires_of(req) != 0 {
            let mut r = reply(req, 423, "reg");
            r.headers
                .push(HeaderName::MinExpires, Bytes::from_static(b"3600"));
            return vec![Message::Response(r)];
        }
        let mut r = reply(req, 200, "reg");
        r.headers.push(
            HeaderName::Expires,
            Bytes::from(expires_of(req).to_string()),
        );
        vec![Message::Response(r)]
    });
    s.run_to(Duration::from_secs(2000));
    assert_eq!(register_expires(&s), vec![60, 3600, 3600]);
    // 423 at 40 → REGISTER 3600 at 40, 200 at 80 → refresh at 80 + 1800 s.
    assert_eq!(register_times(&s), vec![0, 40, 1_800_080]);
    assert_eq!(s.a.agent.requested_expires(), 3600);
    assert_eq!(
        s.a.events[0],
        (
            Duration::from_millis(80),
            RegistrationEvent::Registered { expires: 3600 }
        )
    );
}

#[test]
fn failures_back_off_exponentially_then_recover() {
    let mut n = 0;
    let mut s = sim(600, move |req| {
        n += 1;
        if n <= 3 {
            return vec![Message::Response(reply(req, 503, "reg"))];
        }
        let mut r = reply(req, 200, "reg");
        r.headers
            .push(HeaderName::Expires, Bytes::from_static(b"600"));
        vec![Message::Response(r)]
    });
    s.run_to(Duration::from_secs(20));
    // 503 at 40 → +2 s; 503 at 2080 → +4 s; 503 at 6120 → +8 s; 200.
    assert_eq!(register_times(&s), vec![0, 2_040, 6_080, 14_120]);
    let got: Vec<(u64, RegistrationEvent)> =
        s.a.events
            .iter()
            .map(|(t, e)| (t.as_millis() as u64, e.clone()))
            .collect();
    let fail = |secs| RegistrationEvent::Failed {
        status: Some(StatusCode::SERVICE_UNAVAILABLE),
        retry_in: Duration::from_secs(secs),
    };
    assert_eq!(
        got,
        vec![
            (40, fail(2)),
            (2_080, fail(4)),
            (6_120, fail(8)),
            (14_160, RegistrationEvent::Registered { expires: 600 }),
        ]
    );
}

#[test]
fn no_answer_is_a_failure_after_timer_f() {
    let mut first = true;
    let mut s = sim(600, move |req| {
        if std::mem::take(&mut first) {
            return vec![]; // the first transaction's copies all go unanswered
        }
        if !req
            .headers
            .get(&HeaderName::CSeq)
            .unwrap()
            .starts_with(b"1 ")
        {
            let mut r = reply(req, 200, "reg");
            r.headers
                .push(HeaderName::Expires, Bytes::from_static(b"600"));
            return vec![Message::Response(r)];
        }
        vec![]
    });
    s.run_to(Duration::from_secs(40));
    let times = register_times(&s);
    // Timer E retransmissions of the first REGISTER (0.5, 1.5, 3.5, 7.5, ... s), then Timer F at 32 s and the
    // retry 2 s later.
    assert_eq!(times[0], 0);
    assert_eq!(*times.last().unwrap(), 34_000);
    assert_eq!(
        s.a.events[0],
        (
            Duration::from_secs(32),
            RegistrationEvent::Failed {
                status: None,
                retry_in: Duration::from_secs(2)
            }
        )
    );
    assert_eq!(
        s.a.events[1],
        (
            Duration::from_millis(34_040),
            RegistrationEvent::Registered { expires: 600 }
        )
    );
}

#[test]
fn shutdown_while_registering_waits_then_removes() {
    let mut s = sim(60, |r| challenge_then(r, 3600));
    let now = s.now;
    s.a.agent.shutdown(now, &mut s.a.ep);
    s.run_to(Duration::from_secs(5));
    assert_eq!(register_expires(&s), vec![60, 60, 0, 0]);
    assert_eq!(
        s.a.events.last().unwrap().1,
        RegistrationEvent::Unregistered { removed: true }
    );
}

#[test]
fn retry_after_is_a_floor_for_the_retry() {
    let mut n = 0;
    let mut s = sim(600, move |req| {
        n += 1;
        if n == 1 {
            let mut r = reply(req, 503, "reg");
            r.headers
                .push(HeaderName::RetryAfter, Bytes::from_static(b"30"));
            return vec![Message::Response(r)];
        }
        let mut r = reply(req, 200, "reg");
        r.headers
            .push(HeaderName::Expires, Bytes::from_static(b"600"));
        vec![Message::Response(r)]
    });
    s.run_to(Duration::from_secs(40));
    // 503 at 40 ms with Retry-After: 30 → retry at 30.040 s rather than after the 2 s back-off.
    assert_eq!(register_times(&s), vec![0, 30_040]);
    assert_eq!(
        s.a.events[0].1,
        RegistrationEvent::Failed {
            status: Some(StatusCode::SERVICE_UNAVAILABLE),
            retry_in: Duration::from_secs(30)
        }
    );
}

#[test]
fn a_response_deadline_ends_a_silent_attempt_long_before_timer_f() {
    // The first REGISTER (CSeq 1) goes unanswered, every copy of it; the agent gives each REGISTER 4 s to draw a
    // response. The copies go out at 0, 0.5, 1.5 and 3.5 s, the attempt fails at 4 s (Timer F would be 32 s)
    // and the retry 2 s later is answered.
    let script = |req: &Request| {
        if req
            .headers
            .get(&HeaderName::CSeq)
            .unwrap()
            .starts_with(b"1 ")
        {
            return vec![];
        }
        let mut r = reply(req, 200, "reg");
        r.headers
            .push(HeaderName::Expires, Bytes::from_static(b"600"));
        vec![Message::Response(r)]
    };
    let mut s = Sim::new(
        RegNode::new(600, Instant::now()),
        ScriptNode::new(addr_b(), script),
    );
    s.a.start = s.start;
    let now = s.now;
    s.a.agent
        .set_response_deadline(Some(Duration::from_secs(4)));
    s.a.agent.start(now, &mut s.a.ep).unwrap();
    s.run_to(Duration::from_secs(40));
    assert_eq!(register_times(&s), vec![0, 500, 1_500, 3_500, 6_000]);
    let ms = Duration::from_millis;
    assert_eq!(
        s.a.events,
        vec![
            (
                ms(4_000),
                RegistrationEvent::Failed {
                    status: None,
                    retry_in: Duration::from_secs(2)
                }
            ),
            (ms(6_040), RegistrationEvent::Registered { expires: 600 }),
        ]
    );
    // Nothing is in flight once registered: no deadline to set.
    let h = s.a.agent.handle().unwrap();
    let now = s.now;
    assert_eq!(
        s.a.ep.set_register_response_deadline(h, now),
        Err(rappel::sip::endpoint::EndpointError::NoPendingRequest)
    );
    let unknown = rappel::sip::endpoint::RegistrationHandle(u64::MAX);
    assert_eq!(
        s.a.ep.set_register_response_deadline(unknown, now),
        Err(rappel::sip::endpoint::EndpointError::UnknownRegistration(
            unknown
        ))
    );
    assert_eq!(s.a.ep.live_counts(), (0, 0, 0), "nothing left behind");
}

#[test]
fn a_provisional_response_lifts_the_response_deadline() {
    // The registrar answers the first copy with 100 Trying and nothing more: it is alive, so the 1 s deadline
    // does not end the attempt (Timer F will).
    let mut first = true;
    let script = move |req: &Request| {
        if std::mem::take(&mut first) {
            return vec![Message::Response(reply(req, 100, ""))];
        }
        vec![]
    };
    let mut s = Sim::new(
        RegNode::new(600, Instant::now()),
        ScriptNode::new(addr_b(), script),
    );
    s.a.start = s.start;
    let now = s.now;
    s.a.agent
        .set_response_deadline(Some(Duration::from_secs(1)));
    s.a.agent.start(now, &mut s.a.ep).unwrap();
    s.run_to(Duration::from_secs(10));
    assert!(s.a.events.is_empty(), "{:?}", s.a.events);
    assert_eq!(s.a.agent.state(), RegistrationState::Registering);
    // Proceeding: retransmissions every T2 (4 s) after the 100 (RFC 3261 §17.1.2.2), until Timer F.
    assert_eq!(register_times(&s), vec![0, 500, 4_500, 8_500]);
}
