//! Deterministic network simulation for SIP endpoints (quinn `Pair::step`, str0m `progress`).
//!
//! There is no clock and no randomness that is not seeded: every instant is handed in, time jumps to the earliest
//! pending delivery or timeout, and loss is decided by a rule that counts packets rather than by a coin.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use rappel::sip::endpoint::{Endpoint, EndpointConfig, Event};
use rappel::sip::message::{HeaderName, Message, Method, Request, Response, StatusCode};
use rappel::sip::transaction::{Transmit, Transport};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Anything that can sit on one end of the simulated wire.
pub trait Node {
    fn addr(&self) -> SocketAddr;
    fn handle(&mut self, now: Instant, from: SocketAddr, payload: Bytes);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// Drains whatever the test's direct API calls produced (events).
    fn settle(&mut self, _now: Instant) {}
}

/// The TU of an [`EpNode`]: called with every event, may drive the endpoint.
pub type Tu = Box<dyn FnMut(Instant, &mut Endpoint, &Event)>;

/// An [`Endpoint`] with a scripted TU and a record of its events.
pub struct EpNode {
    pub ep: Endpoint,
    pub addr: SocketAddr,
    pub events: Vec<(Instant, Event)>,
    pub tu: Option<Tu>,
}

impl EpNode {
    pub fn new(addr: SocketAddr, seed: u64, accept_invites: bool) -> Self {
        let mut cfg = EndpointConfig::new(addr);
        cfg.rng_seed(seed).accept_invites(accept_invites);
        Self {
            ep: Endpoint::new(cfg),
            addr,
            events: Vec::new(),
            tu: None,
        }
    }

    pub fn with_config(addr: SocketAddr, cfg: EndpointConfig) -> Self {
        Self {
            ep: Endpoint::new(cfg),
            addr,
            events: Vec::new(),
            tu: None,
        }
    }

    pub fn with_tu(mut self, tu: impl FnMut(Instant, &mut Endpoint, &Event) + 'static) -> Self {
        self.tu = Some(Box::new(tu));
        self
    }

    fn drain_events(&mut self, now: Instant) {
        while let Some(ev) = self.ep.poll_event() {
            if let Some(tu) = &mut self.tu {
                tu(now, &mut self.ep, &ev);
            }
            self.events.push((now, ev));
        }
    }

    /// Events matching `f`.
    pub fn find(&self, f: impl Fn(&Event) -> bool) -> Vec<(Instant, Event)> {
        self.events.iter().filter(|(_, e)| f(e)).cloned().collect()
    }
}

impl Node for EpNode {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn handle(&mut self, now: Instant, from: SocketAddr, payload: Bytes) {
        self.ep.handle(now, from, Transport::Udp, payload);
        self.drain_events(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        self.drain_events(now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.ep.poll_timeout()
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ep.poll_transmit()
    }
    fn settle(&mut self, now: Instant) {
        self.drain_events(now);
    }
}

/// The script of a [`ScriptNode`].
pub type Script = Box<dyn FnMut(&Request) -> Vec<Message>>;

/// A stateless scripted peer: each request it receives goes to `script`, which returns the messages to send back
/// (to the source address). For challenge/fork scenarios the endpoint does not produce by itself.
pub struct ScriptNode {
    pub addr: SocketAddr,
    pub script: Script,
    pub received: Vec<(Instant, Message)>,
    out: VecDeque<Transmit>,
}

impl ScriptNode {
    pub fn new(addr: SocketAddr, script: impl FnMut(&Request) -> Vec<Message> + 'static) -> Self {
        Self {
            addr,
            script: Box::new(script),
            received: Vec::new(),
            out: VecDeque::new(),
        }
    }
}

impl Node for ScriptNode {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn handle(&mut self, now: Instant, from: SocketAddr, payload: Bytes) {
        let Ok(msg) = Message::parse_datagram(payload) else {
            panic!("endpoint sent an unparsable message")
        };
        if let Message::Request(r) = &msg {
            for m in (self.script)(r) {
                self.out.push_back(Transmit {
                    destination: from,
                    transport: Transport::Udp,
                    payload: m.to_bytes(),
                });
            }
        }
        self.received.push((now, msg));
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
}

/// A response to `req` with a To tag (as a UAS would send).
pub fn reply(req: &Request, code: u16, tag: &str) -> Response {
    let mut r = Response::for_request(req, StatusCode::new(code).unwrap());
    if code > 100 {
        r.set_to_tag(tag);
    }
    if req.method == Method::Invite && (101..300).contains(&code) {
        r.headers
            .push(HeaderName::Contact, Bytes::from("<sip:10.0.0.2:5060>"));
    }
    r
}

/// One message on the wire.
#[derive(Clone, Debug)]
pub struct Packet {
    pub sent: Instant,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub payload: Bytes,
    pub dropped: bool,
}

impl Packet {
    pub fn first_line(&self) -> String {
        let end = self
            .payload
            .iter()
            .position(|&b| b == b'\r')
            .unwrap_or(self.payload.len());
        String::from_utf8_lossy(&self.payload[..end]).into_owned()
    }
    /// True for a request of `method`.
    pub fn is_request(&self, method: &str) -> bool {
        self.first_line().starts_with(&format!("{method} "))
    }
    /// The status of a response.
    pub fn status(&self) -> Option<u16> {
        let l = self.first_line();
        l.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }
    /// The CSeq method.
    pub fn cseq_method(&self) -> String {
        let m = Message::parse_datagram(self.payload.clone()).unwrap();
        let v = m.headers().get(&HeaderName::CSeq).unwrap().clone();
        String::from_utf8_lossy(&v)
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned()
    }
    pub fn message(&self) -> Message {
        Message::parse_datagram(self.payload.clone()).unwrap()
    }
}

/// A loss rule: returns true to drop the packet.
pub type DropRule = Box<dyn FnMut(&Packet) -> bool>;

/// Drops the `n`-th (1-based) packet matching `pred`, and only that one.
pub fn drop_nth(pred: impl Fn(&Packet) -> bool + 'static, n: usize) -> DropRule {
    let mut seen = 0;
    Box::new(move |p| {
        if pred(p) {
            seen += 1;
            seen == n
        } else {
            false
        }
    })
}

/// Drops every packet matching `pred`.
pub fn drop_all(pred: impl Fn(&Packet) -> bool + 'static) -> DropRule {
    Box::new(move |p| pred(p))
}

/// Two nodes, a wire with fixed one-way latency, and a loss rule.
pub struct Sim<A: Node, B: Node> {
    pub start: Instant,
    pub now: Instant,
    pub a: A,
    pub b: B,
    pub latency: Duration,
    pub drop: DropRule,
    pub log: Vec<Packet>,
    queue: Vec<(Instant, Packet)>,
}

impl<A: Node, B: Node> Sim<A, B> {
    pub fn new(a: A, b: B) -> Self {
        let start = Instant::now();
        Self {
            start,
            now: start,
            a,
            b,
            latency: Duration::from_millis(20),
            drop: Box::new(|_| false),
            log: Vec::new(),
            queue: Vec::new(),
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Moves what both nodes want to send onto the wire.
    pub fn flush(&mut self) {
        self.a.settle(self.now);
        self.b.settle(self.now);
        let mut out = Vec::new();
        while let Some(t) = self.a.poll_transmit() {
            out.push((self.a.addr(), t));
        }
        while let Some(t) = self.b.poll_transmit() {
            out.push((self.b.addr(), t));
        }
        for (from, t) in out {
            let mut p = Packet {
                sent: self.now,
                from,
                to: t.destination,
                payload: t.payload,
                dropped: false,
            };
            p.dropped = (self.drop)(&p);
            self.log.push(p.clone());
            if !p.dropped {
                self.queue.push((self.now + self.latency, p));
            }
        }
    }

    /// Advances to the next delivery or timeout and processes it. False when nothing is pending.
    pub fn step(&mut self) -> bool {
        self.flush();
        let next = [
            self.queue.iter().map(|q| q.0).min(),
            self.a.poll_timeout(),
            self.b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { return false };
        self.now = self.now.max(next);
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|q| q.0 <= now);
        self.queue = rest;
        for (_, p) in due {
            if p.to == self.a.addr() {
                self.a.handle(now, p.from, p.payload);
            } else if p.to == self.b.addr() {
                self.b.handle(now, p.from, p.payload);
            }
        }
        if self.a.poll_timeout().is_some_and(|t| t <= now) {
            self.a.handle_timeout(now);
        }
        if self.b.poll_timeout().is_some_and(|t| t <= now) {
            self.b.handle_timeout(now);
        }
        self.flush();
        true
    }

    /// Steps until `done` holds or `limit` of simulated time has passed. Returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        for _ in 0..100_000 {
            if done(self) {
                return true;
            }
            if self.elapsed() > limit || !self.step() {
                return done(self);
            }
        }
        panic!("simulation did not settle");
    }

    /// Steps until simulated time reaches `start + t` (or nothing is pending).
    pub fn run_to(&mut self, t: Duration) {
        let target = self.start + t;
        for _ in 0..100_000 {
            self.flush();
            let next = [
                self.queue.iter().map(|q| q.0).min(),
                self.a.poll_timeout(),
                self.b.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(n) if n <= target => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(target);
                    return;
                }
            }
        }
        panic!("simulation did not settle");
    }

    /// Packets (delivered or dropped) matching `f`.
    pub fn packets(&self, f: impl Fn(&Packet) -> bool) -> Vec<&Packet> {
        self.log.iter().filter(|p| f(p)).collect()
    }

    /// Send offsets (ms since start) of packets matching `f`.
    pub fn send_times_ms(&self, f: impl Fn(&Packet) -> bool) -> Vec<u64> {
        self.log
            .iter()
            .filter(|p| f(p))
            .map(|p| (p.sent - self.start).as_millis() as u64)
            .collect()
    }
}

pub fn addr_a() -> SocketAddr {
    "10.0.0.1:5060".parse().unwrap()
}

pub fn addr_b() -> SocketAddr {
    "10.0.0.2:5060".parse().unwrap()
}

/// An INVITE from A to B.
pub fn invite_to_b(sdp: &str) -> rappel::sip::endpoint::InviteRequest {
    rappel::sip::endpoint::InviteRequest {
        target: "sip:agent@10.0.0.2:5060".into(),
        from: "sip:rappel@10.0.0.1".into(),
        to: None,
        next_hop: addr_b(),
        transport: None,
        sdp: Bytes::from(sdp.to_owned()),
        credentials: None,
        extra_headers: Vec::new(),
    }
}

/// A TU that answers every incoming call with 180 then 200 (with `sdp`) at once, and every re-INVITE with 200.
pub fn auto_answer(sdp: &'static str) -> impl FnMut(Instant, &mut Endpoint, &Event) {
    move |now, ep, ev| match ev {
        Event::IncomingCall { call, .. } => {
            ep.answer_invite(now, *call, 180, Bytes::new()).unwrap();
            ep.answer_invite(now, *call, 200, Bytes::from_static(sdp.as_bytes()))
                .unwrap();
        }
        Event::Request {
            call,
            method: Method::Invite,
            ..
        } => {
            ep.answer_invite(now, *call, 200, Bytes::from_static(sdp.as_bytes()))
                .unwrap();
        }
        _ => {}
    }
}

/// A and B endpoints, B auto-answering.
pub fn call_pair() -> Sim<EpNode, EpNode> {
    Sim::new(
        EpNode::new(addr_a(), 1, false),
        EpNode::new(addr_b(), 2, true).with_tu(auto_answer("v=0 b")),
    )
}

pub fn is_answered(e: &Event) -> bool {
    matches!(e, Event::Answered { .. })
}

pub fn is_terminated(e: &Event) -> bool {
    matches!(e, Event::Terminated { .. })
}
