//! The engine's trunk side: where requests go (outbound proxy, RFC 3263 resolution and failover) and the
//! registration with the trunk.
//!
//! Name resolution never runs on the engine task: a lookup is a spawned future ([`spawn_resolve`]) whose answer
//! comes back to the task as a [`Resolved`] message, so a slow or dead DNS server delays only the call (or
//! registration) waiting for it. The RFC 3263 procedure itself is [`SipResolver`]'s; the failover walk is
//! [`Failover`]'s; this module only decides what to resolve and keeps the per-leg state between attempts. A
//! [`Target`] names its transport: UDP, or TCP when the URI says `;transport=tcp` or the records lead there
//! (NAPTR `SIP+D2T`, SRV `_sip._tcp`); the INVITE or REGISTER then goes over TCP.
//!
//! The registration is the sans-IO [`RegistrationAgent`] driven by the engine task ([`Registrar`]). While another
//! resolved target is left, each REGISTER gets the engine's failover timeout as its response deadline (as INVITEs
//! do): a registrar target that sends nothing back is left after it, not after Timer F. Its state
//! and each of its events are published on a `watch` channel ([`RegistrationStatus`]). Through an outbound proxy
//! given as a URI, the REGISTER carries the same preloaded `Route: <proxy;lr>` as INVITEs.

use crate::net::dns::{DnsError, Failover, SipResolver, Target};
use crate::sip::auth::Credentials;
use crate::sip::endpoint::{Endpoint, Event, RegisterRequest};
use crate::sip::message::{HeaderName, Host, Uri};
use crate::sip::register::{
    RegistrationAgent, RegistrationEvent, RegistrationPolicy, RegistrationState,
};
use crate::sip::transaction::Transport;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The next hop of every request when set: an address, or a SIP URI (`sip:proxy.example.net`, resolved per
/// RFC 3263 for each call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Proxy {
    Addr(SocketAddr),
    Uri(String),
}

/// Registering with the trunk ([`crate::EngineBuilder::register`]). The Contact is the engine's own (its public
/// address, see [`crate::EngineBuilder::public_addr`]); the REGISTER goes to the outbound proxy when one is set
/// (with the proxy as its preloaded `Route` when the proxy is given as a URI, like INVITEs), else to the
/// registrar URI's host, resolved per RFC 3263.
#[derive(Debug, Clone)]
pub struct TrunkRegistration {
    /// The registrar's Request-URI, e.g. `sip:trunk.example.net`.
    pub registrar: String,
    /// The address of record (From and To), e.g. `sip:rappel@trunk.example.net`.
    pub aor: String,
    /// Credentials for the registrar's 401/407 challenges.
    pub credentials: Option<Credentials>,
    /// The binding lifetime asked for, in seconds (default 3600).
    pub expires: u32,
    /// When to refresh and how to back off after failures.
    pub policy: RegistrationPolicy,
}

impl TrunkRegistration {
    /// Registers `aor` at `registrar` for 3600 s, without credentials, with the default policy.
    pub fn new(registrar: impl Into<String>, aor: impl Into<String>) -> Self {
        Self {
            registrar: registrar.into(),
            aor: aor.into(),
            credentials: None,
            expires: 3600,
            policy: RegistrationPolicy::default(),
        }
    }

    /// Answers challenges with these credentials.
    pub fn credentials(mut self, c: Credentials) -> Self {
        self.credentials = Some(c);
        self
    }

    /// The binding lifetime asked for, in seconds.
    pub fn expires(mut self, secs: u32) -> Self {
        self.expires = secs;
        self
    }

    /// Refresh and retry timing.
    pub fn policy(mut self, p: RegistrationPolicy) -> Self {
        self.policy = p;
        self
    }
}

/// Where the registration stands, as published by [`crate::Engine::registration`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// The agent's state (`Idle` while the registrar's name is being resolved).
    pub state: RegistrationState,
    /// The latest event.
    pub last_event: Option<RegistrationEvent>,
    /// How many times the registrar accepted the binding (the first REGISTER and each refresh).
    pub registrations: u64,
    /// How many attempts failed (a final error status, no answer, or the registrar's name not resolving).
    pub failures: u64,
}

impl RegistrationStatus {
    /// Not started, nothing counted.
    fn new() -> Self {
        Self {
            state: RegistrationState::Idle,
            last_event: None,
            registrations: 0,
            failures: 0,
        }
    }
}

/// A resolution finished off the task.
pub(super) enum Resolved {
    /// For leg `id`'s INVITE.
    Leg(u64, Result<Vec<Target>, DnsError>),
    /// For the registration.
    Registrar(Result<Vec<Target>, DnsError>),
}

/// Resolves `uri` on a spawned task; the answer comes back on `tx`.
pub(super) fn spawn_resolve(
    resolver: Arc<SipResolver>,
    uri: Uri,
    tx: mpsc::UnboundedSender<Resolved>,
    wrap: impl FnOnce(Result<Vec<Target>, DnsError>) -> Resolved + Send + 'static,
) {
    tokio::spawn(async move {
        let r = resolver.resolve(&uri).await;
        let _ = tx.send(wrap(r));
    });
}

/// How to reach the next hop of a request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hop {
    /// Send there (an address, or a URI with a numeric host: its `;transport=`, else UDP).
    Direct(Target),
    /// Resolve this URI first (RFC 3263).
    Resolve(Uri),
    /// The URI does not parse, or names a transport we do not have (TLS, SCTP).
    Invalid,
}

/// The next hop for a request to `target`: the proxy when set, else the target itself.
pub(super) fn hop_for(proxy: Option<&Proxy>, target: &str) -> Hop {
    let uri = match proxy {
        Some(Proxy::Addr(a)) => {
            return Hop::Direct(Target {
                transport: Transport::Udp,
                addr: *a,
            })
        }
        Some(Proxy::Uri(u)) => u.as_str(),
        None => target,
    };
    let Ok(uri) = Uri::parse(uri) else {
        return Hop::Invalid;
    };
    let transport = match uri.as_sip().and_then(|s| s.transport()) {
        None => Transport::Udp,
        Some(t) if t.eq_ignore_ascii_case(b"udp") => Transport::Udp,
        Some(t) if t.eq_ignore_ascii_case(b"tcp") => Transport::Tcp,
        Some(_) => return Hop::Invalid,
    };
    // A numeric host needs no DNS (RFC 3263 §4.2: port from the URI, else 5060).
    let ip = uri.as_sip().and_then(|s| match &s.host {
        Host::Ipv4(ip) => Some((*ip).into()),
        Host::Ipv6(ip) => Some((*ip).into()),
        Host::Domain(_) => None,
    });
    match ip {
        Some(ip) => Hop::Direct(Target {
            transport,
            addr: SocketAddr::new(ip, uri.port().unwrap_or(5060)),
        }),
        None => Hop::Resolve(uri),
    }
}

/// The Route header value an outbound proxy given as a URI puts on each INVITE and REGISTER (RFC 3261 §8.1.2: the
/// proxy is the route set, loose routing assumed, so `;lr` is added when missing). A proxy given as an address
/// adds none.
pub(super) fn preloaded_route(proxy: Option<&Proxy>) -> Option<Bytes> {
    let Some(Proxy::Uri(u)) = proxy else {
        return None;
    };
    let lr = u.split(';').skip(1).any(|p| {
        p.trim().eq_ignore_ascii_case("lr") || p.trim().to_ascii_lowercase().starts_with("lr=")
    });
    Some(Bytes::from(if lr {
        format!("<{u}>")
    } else {
        format!("<{u};lr>")
    }))
}

/// A leg's routing between INVITE attempts.
#[derive(Debug, Default)]
pub(super) struct Route {
    /// The targets resolved for this leg, when its next hop had a host name.
    pub(super) failover: Option<Failover>,
    /// Where (and over which transport) the current INVITE went.
    pub(super) hop: Option<Target>,
    /// The INVITE's body and extra headers, for the resolution to finish or the next target to get.
    pub(super) invite: Option<(Bytes, Vec<(HeaderName, Bytes)>)>,
    /// A resolution is in flight.
    pub(super) resolving: bool,
    /// The application (or a timer) cancelled the call: no further target is tried.
    pub(super) cancelled: bool,
    /// INVITEs sent (first and failovers).
    pub(super) attempts: u32,
    /// The call a 422 retry continues (same Call-ID, next CSeq), taken by the next INVITE sent.
    pub(super) retry_of: Option<crate::sip::endpoint::CallHandle>,
}

impl Route {
    /// After the INVITE ended this way, the next target to try (RFC 3263 §4.3), if any.
    pub(super) fn fail_over(
        &mut self,
        reason: &crate::sip::endpoint::TerminationReason,
    ) -> Option<Target> {
        if self.cancelled || self.invite.is_none() {
            return None;
        }
        self.failover.as_mut()?.after(reason)
    }
}

/// The engine task's registration: resolving the registrar, the agent, the published status.
pub(super) struct Registrar {
    config: TrunkRegistration,
    agent: Option<RegistrationAgent>,
    /// The registrar's resolved targets: one that does not answer (or answers 503) hands over to the next.
    failover: Option<Failover>,
    status: watch::Sender<RegistrationStatus>,
    /// Resolution failed: the next one at this time.
    retry_at: Option<Instant>,
    resolving: bool,
    /// Rounds in a row that ended without a binding (the name did not resolve, or every target failed).
    rounds: u32,
    /// Shutdown was asked: do not start, and remove the binding.
    stopping: bool,
    /// A REGISTER to a target with another one left after it is given up when nothing came back this long after it
    /// ([`crate::EngineBuilder::failover_timeout`]).
    failover_timeout: Option<Duration>,
    /// The outbound proxy's preloaded Route ([`preloaded_route`]), put on every REGISTER.
    route: Option<Bytes>,
    /// Until when the current agent's binding holds (its last 2xx), if it ever got one.
    bound_until: Option<Instant>,
    /// An agent left for the next target while its binding still held, kept (not driven) so shutdown can remove
    /// that binding (same Call-ID, next CSeq) when no later agent got one; with the binding's expiry.
    stale: Option<(RegistrationAgent, Instant)>,
}

impl Registrar {
    /// A registrar for `config` that leaves a silent target after `failover_timeout` when another one is left
    /// (`None`: after Timer F), and the receiver of its status.
    pub(super) fn new(
        config: TrunkRegistration,
        failover_timeout: Option<Duration>,
    ) -> (Self, watch::Receiver<RegistrationStatus>) {
        let (status, rx) = watch::channel(RegistrationStatus::new());
        (
            Self {
                config,
                agent: None,
                failover: None,
                status,
                retry_at: None,
                resolving: false,
                rounds: 0,
                stopping: false,
                failover_timeout,
                route: None,
                bound_until: None,
                stale: None,
            },
            rx,
        )
    }

    /// Starts: registers at once when the next hop is an address, else resolves it first.
    pub(super) fn begin(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        proxy: Option<&Proxy>,
        resolver: Arc<SipResolver>,
        tx: &mpsc::UnboundedSender<Resolved>,
    ) {
        if self.stopping || self.resolving || self.agent.is_some() {
            return;
        }
        self.retry_at = None;
        self.route = preloaded_route(proxy);
        match hop_for(proxy, &self.config.registrar) {
            Hop::Direct(t) => self.start_agent(now, ep, t),
            Hop::Resolve(uri) => {
                self.resolving = true;
                spawn_resolve(resolver, uri, tx.clone(), Resolved::Registrar);
            }
            Hop::Invalid => {
                tracing::warn!(registrar = %self.config.registrar, "registrar URI does not parse");
                self.stopping = true;
                self.publish(Some(RegistrationEvent::Unregistered { removed: false }));
            }
        }
    }

    /// The registrar's name resolved (or not).
    pub(super) fn resolved(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        r: Result<Vec<Target>, DnsError>,
    ) {
        self.resolving = false;
        if self.stopping {
            // Unless shutdown took up an earlier binding's agent to remove it, nothing more will happen.
            if self.agent.is_none() {
                self.publish(Some(RegistrationEvent::Unregistered { removed: false }));
            }
            return;
        }
        let first = r.map(|t| {
            let mut f = Failover::new(t);
            let first = f.next_target();
            self.failover = Some(f);
            first
        });
        match first {
            Ok(Some(t)) => self.start_agent(now, ep, t),
            r => {
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "registrar not resolved");
                }
                self.rounds = self.rounds.saturating_add(1);
                let retry_in = self.config.policy.retry_delay(self.rounds);
                self.retry_at = Some(now + retry_in);
                self.publish(Some(RegistrationEvent::Failed {
                    status: None,
                    retry_in,
                }));
            }
        }
    }

    /// Starts a fresh agent sending its REGISTER to `target`; if it cannot be sent, the registration stops
    /// (published as `Unregistered { removed: false }`).
    fn start_agent(&mut self, now: Instant, ep: &mut Endpoint, target: Target) {
        let next_hop = target.addr;
        let req = RegisterRequest {
            registrar: self.config.registrar.clone(),
            aor: self.config.aor.clone(),
            next_hop,
            transport: Some(target.transport),
            expires: self.config.expires,
            credentials: self.config.credentials.clone(),
            extra_headers: self
                .route
                .iter()
                .map(|r| (HeaderName::Route, r.clone()))
                .collect(),
        };
        let mut agent = RegistrationAgent::new(req, self.config.policy);
        // Another target is left: a silent one is abandoned after the failover timeout, not Timer F.
        if self.failover.as_ref().is_some_and(|f| f.remaining() > 0) {
            agent.set_response_deadline(self.failover_timeout);
        }
        if let Err(e) = agent.start(now, ep) {
            tracing::warn!(error = %e, "REGISTER not sent");
            self.stopping = true;
            self.publish(Some(RegistrationEvent::Unregistered { removed: false }));
            return;
        }
        tracing::debug!(%next_hop, registrar = %self.config.registrar, "registering");
        self.agent = Some(agent);
        self.bound_until = None;
        self.publish(None);
    }

    /// Feeds an endpoint event; true when it was about the registration.
    pub(super) fn handle_event(&mut self, now: Instant, ep: &mut Endpoint, ev: &Event) -> bool {
        let Some(a) = &mut self.agent else {
            return false;
        };
        if !a.handle_event(now, ep, ev) {
            return false;
        }
        let mut evs = self.take_events();
        let granted = evs.iter().find_map(|e| match e {
            RegistrationEvent::Registered { expires } => Some(*expires),
            _ => None,
        });
        if let Some(expires) = granted {
            self.rounds = 0;
            self.bound_until = Some(now + Duration::from_secs(u64::from(expires)));
            // The binding now held replaces the one an earlier target kept: that one just expires.
            self.drop_stale(ep);
        }
        // RFC 3263 §4.3: no answer or 503: the next target, at once; once every target failed, a new
        // resolution after the back-off (which grows with each such round).
        let failed = evs.iter_mut().find_map(|e| match e {
            RegistrationEvent::Failed { status, retry_in }
                if status.is_none_or(|s| s.as_u16() == 503) =>
            {
                Some(retry_in)
            }
            _ => None,
        });
        if let (Some(retry_in), false) = (failed, self.stopping) {
            match self.failover.as_mut().map(|f| f.next_target()) {
                Some(Some(t)) => {
                    self.retire_agent(now, ep);
                    tracing::info!(next = %t.addr, "registrar failing over to the next target");
                    self.start_agent(now, ep, t);
                }
                Some(None) => {
                    self.rounds = self.rounds.saturating_add(1);
                    *retry_in = (*retry_in).max(self.config.policy.retry_delay(self.rounds));
                    self.retire_agent(now, ep);
                    self.failover = None;
                    self.retry_at = Some(now + *retry_in);
                }
                // A registrar given by address: the agent retries it.
                None => {}
            }
        }
        self.publish_events(evs);
        true
    }

    /// Sets the current agent aside: kept as [`Self::stale`] while its binding holds (for shutdown to remove it),
    /// else forgotten.
    fn retire_agent(&mut self, now: Instant, ep: &mut Endpoint) {
        match self.bound_until.take().filter(|u| *u > now) {
            Some(until) => {
                if let Some(a) = self.agent.take() {
                    self.drop_stale(ep);
                    self.stale = Some((a, until));
                }
            }
            None => self.drop_agent(ep),
        }
    }

    /// Forgets the kept agent of an earlier binding and its registration in the endpoint.
    fn drop_stale(&mut self, ep: &mut Endpoint) {
        if let Some(h) = self.stale.take().and_then(|(a, _)| a.handle()) {
            ep.drop_registration(h);
        }
    }

    /// Forgets the current agent and its registration in the endpoint.
    fn drop_agent(&mut self, ep: &mut Endpoint) {
        if let Some(h) = self.agent.take().and_then(|a| a.handle()) {
            ep.drop_registration(h);
        }
    }

    /// When [`Self::handle_timeout`] is next due.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match &self.agent {
            Some(a) => a.poll_timeout(),
            None => self.retry_at,
        }
    }

    /// Sends the refresh or retry that is due; returns true when a new resolution must start ([`Self::begin`]).
    pub(super) fn handle_timeout(&mut self, now: Instant, ep: &mut Endpoint) -> bool {
        match &mut self.agent {
            Some(a) => {
                a.handle_timeout(now, ep);
                self.drain();
                false
            }
            None => self.retry_at.is_some_and(|t| t <= now),
        }
    }

    /// Removes the binding (`Expires: 0`), or gives up a registration not started yet. When the current agent
    /// holds no binding but an earlier target still does (every target failed since), that binding is removed.
    pub(super) fn shutdown(&mut self, now: Instant, ep: &mut Endpoint) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.retry_at = None;
        let current_bound = self.bound_until.is_some_and(|u| u > now);
        match self.stale.take() {
            Some((a, until)) if until > now && !current_bound => {
                self.drop_agent(ep);
                tracing::info!("removing the binding of an earlier registrar target");
                self.agent = Some(a);
            }
            Some((a, _)) => {
                if let Some(h) = a.handle() {
                    ep.drop_registration(h);
                }
            }
            None => {}
        }
        match &mut self.agent {
            Some(a) => {
                a.shutdown(now, ep);
                self.drain();
            }
            None if self.resolving => {}
            None => self.publish(Some(RegistrationEvent::Unregistered { removed: false })),
        }
    }

    /// Nothing more will happen (unregistered, or never started and stopped).
    pub(super) fn finished(&self) -> bool {
        match &self.agent {
            Some(a) => a.state() == RegistrationState::Unregistered,
            None => self.stopping && !self.resolving,
        }
    }

    /// Publishes the agent's new events and state.
    fn drain(&mut self) {
        let evs = self.take_events();
        self.publish_events(evs);
    }

    /// Drains the agent's events.
    fn take_events(&mut self) -> Vec<RegistrationEvent> {
        let mut evs = Vec::new();
        if let Some(a) = &mut self.agent {
            while let Some(e) = a.poll_event() {
                evs.push(e);
            }
        }
        evs
    }

    /// Logs each event and publishes the status after it (the status alone when there is none).
    fn publish_events(&mut self, evs: Vec<RegistrationEvent>) {
        if evs.is_empty() {
            self.publish(None);
        }
        for e in evs {
            match &e {
                RegistrationEvent::Registered { expires } => {
                    tracing::info!(expires, "registered with the trunk")
                }
                RegistrationEvent::Failed { status, retry_in } => {
                    tracing::warn!(?status, ?retry_in, "registration failed")
                }
                RegistrationEvent::Unregistered { removed } => {
                    tracing::info!(removed, "unregistered")
                }
            }
            self.publish(Some(e));
        }
    }

    /// Publishes the state, and `event` when there is one (counting it).
    fn publish(&mut self, event: Option<RegistrationEvent>) {
        let state = match &self.agent {
            Some(a) => a.state(),
            None if self.stopping => RegistrationState::Unregistered,
            None => match self.retry_at {
                Some(at) => RegistrationState::Retrying { at },
                None => RegistrationState::Idle,
            },
        };
        self.status.send_modify(|s| {
            s.state = state;
            match &event {
                Some(RegistrationEvent::Registered { .. }) => s.registrations += 1,
                Some(RegistrationEvent::Failed { .. }) => s.failures += 1,
                _ => {}
            }
            if event.is_some() {
                s.last_event = event;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP target.
    fn udp(addr: SocketAddr) -> Target {
        Target {
            transport: Transport::Udp,
            addr,
        }
    }

    /// A registrar's side of the wire in simulated time: the endpoint, the [`Registrar`] and a clock.
    struct RegWire {
        ep: Endpoint,
        reg: Registrar,
        status: watch::Receiver<RegistrationStatus>,
        now: Instant,
    }

    impl RegWire {
        /// Registers `sip:rappel@reg.test` (asking 10 s, refresh 1 s after a grant) at `targets`, with T1 = 25 ms
        /// (Timer F 1.6 s) and no failover timeout.
        fn new(targets: Vec<Target>) -> Self {
            Self::with(targets, std::time::Duration::from_millis(25), None)
        }

        /// Like [`Self::new`] with this T1 and failover timeout.
        fn with(
            targets: Vec<Target>,
            t1: std::time::Duration,
            failover_timeout: Option<std::time::Duration>,
        ) -> Self {
            let mut cfg = crate::sip::endpoint::EndpointConfig::new(SocketAddr::from((
                [192, 0, 2, 100],
                5060,
            )));
            cfg.timers(crate::sip::transaction::TimerConfig {
                t1,
                ..Default::default()
            });
            let mut ep = Endpoint::new(cfg);
            let policy = RegistrationPolicy {
                margin: std::time::Duration::from_secs(9),
                retry_min: std::time::Duration::from_secs(30),
                ..RegistrationPolicy::default()
            };
            let config = TrunkRegistration::new("sip:reg.test", "sip:rappel@reg.test")
                .expires(10)
                .policy(policy);
            let (mut reg, status) = Registrar::new(config, failover_timeout);
            let now = Instant::now();
            reg.resolved(now, &mut ep, Ok(targets));
            Self {
                ep,
                reg,
                status,
                now,
            }
        }

        /// Feeds the endpoint's events to the registrar.
        fn pump(&mut self) {
            while let Some(e) = self.ep.poll_event() {
                self.reg.handle_event(self.now, &mut self.ep, &e);
            }
        }

        /// The REGISTERs sent since the last call: (destination, request).
        fn sent(&mut self) -> Vec<(SocketAddr, crate::sip::message::Request)> {
            let mut out = Vec::new();
            while let Some(t) = self.ep.poll_transmit() {
                if let Ok(crate::sip::message::Message::Request(r)) =
                    crate::sip::message::Message::parse_datagram(t.payload)
                {
                    out.push((t.destination, r));
                }
            }
            out
        }

        /// Answers `req` (from `from`) with `code`, granting 10 s on a 2xx.
        fn answer(&mut self, from: SocketAddr, req: &crate::sip::message::Request, code: u16) {
            let status = crate::sip::message::StatusCode::new(code).unwrap_or_else(|| {
                panic!("status {code}");
            });
            let mut r = crate::sip::message::Response::for_request(req, status);
            r.set_to_tag("reg");
            if code == 200 {
                r.headers
                    .push(HeaderName::Expires, Bytes::from_static(b"10"));
            }
            let bytes = crate::sip::message::Message::from(r).to_bytes();
            self.ep.handle(self.now, from, Transport::Udp, bytes);
            self.pump();
        }

        /// Advances the clock to `until` like [`Self::run_to`], and returns the REGISTERs sent on the way: (ms
        /// since `since`, destination, Call-ID).
        fn run_log(&mut self, since: Instant, until: Instant) -> Vec<(u64, SocketAddr, Bytes)> {
            let mut log = Vec::new();
            let mut note = |w: &mut Self| {
                let at = u64::try_from((w.now - since).as_millis()).unwrap_or(u64::MAX);
                for (dest, r) in w.sent() {
                    log.push((at, dest, header(&r, HeaderName::CallId)));
                }
            };
            note(self);
            loop {
                let next = [self.ep.poll_timeout(), self.reg.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t <= until => {
                        self.run_to(t);
                        note(self);
                    }
                    _ => break,
                }
            }
            self.now = until;
            log
        }

        /// Advances the clock to `until`, firing every timer due on the way.
        fn run_to(&mut self, until: Instant) {
            loop {
                let next = [self.ep.poll_timeout(), self.reg.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t <= until => {
                        self.now = self.now.max(t);
                        self.ep.handle_timeout(self.now);
                        self.pump();
                        self.reg.handle_timeout(self.now, &mut self.ep);
                        self.pump();
                    }
                    _ => break,
                }
            }
            self.now = until;
        }
    }

    fn header(r: &crate::sip::message::Request, name: HeaderName) -> Bytes {
        r.headers.get(&name).cloned().unwrap_or_default()
    }

    /// a grants a binding, then answers its refresh 503; b never answers: the round ends with every target
    /// failed, and `shutdown_after` later shutdown removes a's binding (same Call-ID) if it still holds.
    fn failed_round_then_shutdown(shutdown_after: std::time::Duration) -> (RegWire, Bytes) {
        let (a, b) = (
            SocketAddr::from(([192, 0, 2, 1], 5060)),
            SocketAddr::from(([192, 0, 2, 2], 5060)),
        );
        let mut w = RegWire::new(vec![udp(a), udp(b)]);
        let start = w.now;
        let first = w.sent();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, a);
        let call_id = header(&first[0].1, HeaderName::CallId);
        w.answer(a, &first[0].1, 200);
        assert_eq!(w.status.borrow().registrations, 1);
        // The refresh, 1 s later, is refused: b gets a new registration at once.
        w.run_to(start + std::time::Duration::from_secs(1));
        let refresh = w.sent();
        assert_eq!(refresh.len(), 1, "the refresh");
        assert_eq!(header(&refresh[0].1, HeaderName::CallId), call_id);
        w.answer(a, &refresh[0].1, 503);
        let to_b = w.sent();
        assert_eq!(to_b.len(), 1);
        assert_eq!(to_b[0].0, b);
        // b is silent: Timer F ends the round at 2.6 s, every target failed, the next round in 30 s.
        w.run_to(start + shutdown_after);
        assert!(w.sent().iter().all(|(d, _)| *d == b));
        let s = w.status.borrow().clone();
        let round_over = shutdown_after >= std::time::Duration::from_millis(2600);
        assert_eq!(
            (s.registrations, s.failures),
            (1, 1 + u64::from(round_over))
        );
        if round_over {
            assert!(
                matches!(s.state, RegistrationState::Retrying { .. }),
                "{s:?}"
            );
        }
        w.reg.shutdown(w.now, &mut w.ep);
        w.pump();
        (w, call_id)
    }

    #[test]
    fn a_binding_still_held_after_a_failed_round_is_removed_at_shutdown() {
        // Shutdown at 5 s: a's binding (granted at 0 s for 10 s) still holds, and a's agent removes it.
        let (mut w, call_id) = failed_round_then_shutdown(std::time::Duration::from_secs(5));
        let sent = w.sent();
        let a = SocketAddr::from(([192, 0, 2, 1], 5060));
        assert_eq!(sent.len(), 1, "{sent:?}");
        let (dest, removal) = &sent[0];
        assert_eq!(*dest, a);
        assert_eq!(
            header(removal, HeaderName::Expires),
            Bytes::from_static(b"0")
        );
        assert_eq!(header(removal, HeaderName::CallId), call_id, "a's Call-ID");
        assert!(!w.reg.finished());
        w.answer(a, removal, 200);
        assert!(w.reg.finished());
        assert_eq!(
            w.status.borrow().last_event,
            Some(RegistrationEvent::Unregistered { removed: true })
        );
    }

    #[test]
    fn shutdown_while_the_next_target_is_tried_removes_the_binding_still_held() {
        // Shutdown at 2 s: b (never bound) is still being tried; a's binding holds: the removal goes to a only.
        let (mut w, call_id) = failed_round_then_shutdown(std::time::Duration::from_secs(2));
        let sent = w.sent();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, SocketAddr::from(([192, 0, 2, 1], 5060)));
        assert_eq!(header(&sent[0].1, HeaderName::CallId), call_id);
        assert_eq!(
            header(&sent[0].1, HeaderName::Expires),
            Bytes::from_static(b"0")
        );
    }

    #[test]
    fn a_binding_that_lapsed_is_not_removed() {
        // Shutdown at 12 s, after a's binding lapsed (10 s): nothing is sent, and the registration is over.
        let (mut w, _) = failed_round_then_shutdown(std::time::Duration::from_secs(12));
        assert!(w.sent().is_empty());
        assert!(w.reg.finished());
        assert_eq!(
            w.status.borrow().last_event,
            Some(RegistrationEvent::Unregistered { removed: false })
        );
    }

    #[test]
    fn a_silent_target_is_left_at_the_failover_timeout_and_the_last_one_waits_for_timer_f() {
        // Default timers (T1 500 ms, Timer F 32 s), failover timeout 4 s; a and b never answer. a's REGISTER goes
        // out at 0, 0.5, 1.5 and 3.5 s and is given up at 4 s (not 32 s); b, the last target, gets no deadline:
        // Timer F ends the round 32 s later.
        let (a, b) = (
            SocketAddr::from(([192, 0, 2, 1], 5060)),
            SocketAddr::from(([192, 0, 2, 2], 5060)),
        );
        let s = std::time::Duration::from_secs;
        let mut w = RegWire::with(
            vec![udp(a), udp(b)],
            std::time::Duration::from_millis(500),
            Some(s(4)),
        );
        let start = w.now;
        let log = w.run_log(start, start + s(37));
        let to = |d: SocketAddr| -> Vec<u64> {
            log.iter()
                .filter(|(_, x, _)| *x == d)
                .map(|(t, _, _)| *t)
                .collect()
        };
        assert_eq!(to(a), [0, 500, 1500, 3500], "nothing to a after 4 s");
        assert_eq!(
            to(b),
            [4000, 4500, 5500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500, 35_500]
        );
        let ids: std::collections::HashSet<&Bytes> = log.iter().map(|(_, _, c)| c).collect();
        assert_eq!(ids.len(), 2, "one registration per target");
        let st = w.status.borrow().clone();
        assert_eq!((st.registrations, st.failures), (0, 2));
        assert!(
            matches!(st.state, RegistrationState::Retrying { at } if at == start + s(36) + s(30)),
            "the round ended at 36 s (4 s + Timer F): {st:?}"
        );
    }

    #[test]
    fn a_provisional_response_keeps_the_target_until_timer_f() {
        // a answers 100 Trying and nothing more: it is alive, the failover timeout no longer applies, and b is
        // tried only when Timer F ends a's REGISTER (32 s).
        let (a, b) = (
            SocketAddr::from(([192, 0, 2, 1], 5060)),
            SocketAddr::from(([192, 0, 2, 2], 5060)),
        );
        let s = std::time::Duration::from_secs;
        let mut w = RegWire::with(
            vec![udp(a), udp(b)],
            std::time::Duration::from_millis(500),
            Some(s(4)),
        );
        let start = w.now;
        let first = w.sent();
        assert_eq!(first.len(), 1);
        w.run_to(start + std::time::Duration::from_millis(100));
        w.answer(a, &first[0].1, 100);
        let log = w.run_log(start, start + s(31));
        assert!(log.iter().all(|(_, d, _)| *d == a), "{log:?}");
        assert_eq!(w.status.borrow().failures, 0);
        let log = w.run_log(start, start + s(33));
        assert_eq!(
            log.iter()
                .filter(|(_, d, _)| *d == b)
                .map(|(t, _, _)| *t)
                .next(),
            Some(32_000),
            "b at Timer F: {log:?}"
        );
        assert_eq!(w.status.borrow().failures, 1);
    }

    #[test]
    fn next_hops() {
        let a = SocketAddr::from(([192, 0, 2, 1], 5070));
        assert_eq!(
            hop_for(Some(&Proxy::Addr(a)), "sip:x@example.net"),
            Hop::Direct(udp(a))
        );
        assert_eq!(
            hop_for(None, "sip:x@192.0.2.1:5070"),
            Hop::Direct(udp(a)),
            "numeric host"
        );
        assert_eq!(
            hop_for(None, "sip:x@192.0.2.1"),
            Hop::Direct(udp(SocketAddr::from(([192, 0, 2, 1], 5060))))
        );
        assert_eq!(
            hop_for(
                Some(&Proxy::Uri("sip:192.0.2.1:5070".into())),
                "sip:x@example.net"
            ),
            Hop::Direct(udp(a)),
            "the proxy wins over the target"
        );
        assert!(matches!(
            hop_for(Some(&Proxy::Uri("sip:proxy.test".into())), "sip:x@192.0.2.9"),
            Hop::Resolve(u) if u.to_string() == "sip:proxy.test"
        ));
        assert!(matches!(
            hop_for(None, "sip:x@example.net"),
            Hop::Resolve(_)
        ));
        assert_eq!(hop_for(None, "not a uri"), Hop::Invalid);
        assert_eq!(
            hop_for(None, "sip:x@192.0.2.1:5070;transport=TCP"),
            Hop::Direct(Target {
                transport: Transport::Tcp,
                addr: a
            }),
            "the URI's transport"
        );
        assert_eq!(
            hop_for(None, "sip:x@192.0.2.1:5070;transport=udp"),
            Hop::Direct(udp(a))
        );
        assert_eq!(
            hop_for(None, "sip:x@192.0.2.1;transport=tls"),
            Hop::Invalid,
            "no TLS"
        );
        assert!(matches!(
            hop_for(None, "sip:x@example.net;transport=tcp"),
            Hop::Resolve(_)
        ));
    }

    #[test]
    fn preloaded_routes() {
        let r = |u: &str| preloaded_route(Some(&Proxy::Uri(u.into())));
        assert_eq!(
            r("sip:proxy.test").as_deref(),
            Some(&b"<sip:proxy.test;lr>"[..])
        );
        assert_eq!(
            r("sip:proxy.test:5070;LR").as_deref(),
            Some(&b"<sip:proxy.test:5070;LR>"[..])
        );
        assert_eq!(
            r("sip:p.test;transport=udp").as_deref(),
            Some(&b"<sip:p.test;transport=udp;lr>"[..])
        );
        let addr = Proxy::Addr(SocketAddr::from(([192, 0, 2, 1], 5060)));
        assert_eq!(preloaded_route(Some(&addr)), None);
        assert_eq!(preloaded_route(None), None);
    }
}
