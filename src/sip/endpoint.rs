//! The sans-IO SIP endpoint: routes received bytes to transactions and calls, answers what needs no TU, and gives
//! the call layer a small API to place, change and end calls.
//!
//! This object performs no I/O whatsoever. The driver feeds it datagrams with [`Endpoint::handle`] and the clock
//! with [`Endpoint::handle_timeout`], and after every call drains [`Endpoint::poll_transmit`],
//! [`Endpoint::poll_event`] and re-reads [`Endpoint::poll_timeout`] (str0m's single-mutation invariant).
//!
//! # What it answers on its own
//!
//! | request | answer |
//! |---|---|
//! | OPTIONS (in or out of a dialog) | 200 with Allow and Accept |
//! | INVITE out of a dialog | 403 Forbidden: the engine originates calls (unless [`EndpointConfig::accept_invites`]) |
//! | BYE, UPDATE, INFO, PRACK, CANCEL matching nothing | 481 |
//! | in-dialog request with a CSeq not above the last | 500 |
//! | other RFC methods (REGISTER, MESSAGE, SUBSCRIBE, ...) | 405 with Allow |
//! | extension methods | 501 |
//! | re-INVITE while our own re-INVITE is pending | 491 (glare, RFC 3261 §14.2) |
//! | unparsable request with Via, Call-ID and CSeq | stateless 400 |
//!
//! RFC 3581: `received` and `rport` are filled in on the top Via of each request, and responses go to the source
//! address when `rport` was asked for (always on reliable transports).
//!
//! # Calls
//!
//! A call ([`CallHandle`]) is one INVITE dialog, as UAC ([`Endpoint::start_invite`]) or, when enabled, as UAS.
//! Forked early dialogs are tracked; the first 2xx wins and any later 2xx from another fork is ACKed and
//! immediately BYE'd (RFC 3261 §13.2.2.4). 401/407 challenges are answered from the call's credentials.

use crate::sip::auth::{Credentials, DigestClient};
use crate::sip::dialog::{glare_retry_delay, hdr, Dialog};
use crate::sip::message::{
    error_response_for, validate_request, HeaderName, Headers, Message, Method, Request, Response,
    StatusCode, UaPolicy, Uri, Via,
};
use crate::sip::transaction::{
    ClientDisposition, ClientTransaction, ServerDisposition, ServerTransaction, TimerConfig,
    Transmit, Transport, TxEvent, TxKind, BRANCH_COOKIE,
};
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

/// Methods listed in Allow.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";

/// Endpoint configuration. Build with [`EndpointConfig::new`] and the `&mut self` setters.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// T1, T2, T4.
    pub timers: TimerConfig,
    /// The address written in Via sent-by and Contact (the public address behind NAT, or the bound one).
    pub advertised_addr: SocketAddr,
    /// The transport used for requests we originate.
    pub transport: Transport,
    /// Seed for branches, tags, Call-IDs, cnonces and glare back-off.
    pub rng_seed: u64,
    /// Max-Forwards on requests we originate.
    pub max_forwards: u8,
    /// Accept out-of-dialog INVITEs and hand them to the TU as [`Event::IncomingCall`]. Off by default: the engine
    /// originates calls, and INVITEs are answered 403.
    pub accept_invites: bool,
    /// The value of User-Agent / Server, if any.
    pub user_agent: Option<String>,
}

impl EndpointConfig {
    /// A configuration advertising `addr`, UDP, default timers, seed 0.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            timers: TimerConfig::default(),
            advertised_addr: addr,
            transport: Transport::Udp,
            rng_seed: 0,
            max_forwards: 70,
            accept_invites: false,
            user_agent: None,
        }
    }
    /// Sets the timers.
    pub fn timers(&mut self, t: TimerConfig) -> &mut Self {
        self.timers = t;
        self
    }
    /// Sets the transport.
    pub fn transport(&mut self, t: Transport) -> &mut Self {
        self.transport = t;
        self
    }
    /// Sets the RNG seed.
    pub fn rng_seed(&mut self, s: u64) -> &mut Self {
        self.rng_seed = s;
        self
    }
    /// Accept incoming INVITEs (see the field).
    pub fn accept_invites(&mut self, v: bool) -> &mut Self {
        self.accept_invites = v;
        self
    }
    /// Sets User-Agent / Server.
    pub fn user_agent(&mut self, v: impl Into<String>) -> &mut Self {
        self.user_agent = Some(v.into());
        self
    }
}

/// A call (one INVITE dialog, UAC or UAS). An index into the endpoint's table; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallHandle(pub u64);

/// A registration binding (RFC 3261 §10). An index into the endpoint's table; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistrationHandle(pub u64);

/// What a REGISTER needs.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    /// The registrar's Request-URI, e.g. `sip:example.net`.
    pub registrar: String,
    /// The address of record (From and To), e.g. `sip:rappel@example.net`.
    pub aor: String,
    /// Where to send the REGISTER.
    pub next_hop: SocketAddr,
    /// Requested binding lifetime in seconds.
    pub expires: u32,
    /// Credentials for 401/407 challenges.
    pub credentials: Option<Credentials>,
}

/// What the UAC needs to place a call.
#[derive(Debug, Clone)]
pub struct InviteRequest {
    /// Request-URI, e.g. `sip:+33123456789@gw.example.net`.
    pub target: String,
    /// Our identity (From URI), e.g. `sip:rappel@example.com`.
    pub from: String,
    /// The To URI; the target when `None`.
    pub to: Option<String>,
    /// Where to send the INVITE (gateway or outbound proxy). In-dialog requests go to the route set / Contact
    /// when they are IP literals, else here too.
    pub next_hop: SocketAddr,
    /// The SDP offer (empty for none).
    pub sdp: Bytes,
    /// Credentials for 401/407 challenges on this call.
    pub credentials: Option<Credentials>,
    /// Extra headers to put in the INVITE.
    pub extra_headers: Vec<(HeaderName, Bytes)>,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TerminationReason {
    /// The INVITE got this final non-2xx response (after any authentication).
    Rejected(StatusCode),
    /// We cancelled (including a 2xx that crossed our CANCEL: ACKed then BYE'd), or the peer cancelled its INVITE.
    Cancelled,
    /// We sent BYE.
    LocalBye,
    /// The peer sent BYE.
    RemoteBye,
    /// No final response (Timer B), or a re-INVITE timed out (§14.1: BYE sent).
    Timeout,
    /// We answered 2xx and no ACK came within 64·T1 (§13.3.1.4: BYE sent).
    AckTimeout,
    /// The peer answered 481 to an in-dialog request: the dialog no longer exists there.
    DialogGone,
    /// We rejected the peer's INVITE with this status.
    Declined(StatusCode),
}

/// What the endpoint tells the TU (the call layer). Drain with [`Endpoint::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A new INVITE (only with [`EndpointConfig::accept_invites`]); answer with [`Endpoint::answer_invite`].
    IncomingCall {
        /// The new call.
        call: CallHandle,
        /// The From value.
        from: Bytes,
        /// The To value.
        to: Bytes,
        /// The offer.
        body: Bytes,
    },
    /// A provisional response (not 100) to our INVITE.
    Provisional {
        /// The call.
        call: CallHandle,
        /// 180, 183, ...
        status: StatusCode,
        /// The To tag: which early dialog (fork) this is, if the response created one.
        remote_tag: Option<Bytes>,
        /// Early media SDP, if any.
        body: Bytes,
    },
    /// Our INVITE got a 2xx: the dialog is confirmed and ACKed.
    Answered {
        /// The call.
        call: CallHandle,
        /// The SDP answer.
        body: Bytes,
    },
    /// As UAS: the ACK for our 2xx to an INVITE (initial or re-INVITE) arrived.
    Acked {
        /// The call.
        call: CallHandle,
        /// The ACK body (an answer when our 2xx carried an offer), usually empty.
        body: Bytes,
    },
    /// An in-dialog request from the peer. A re-INVITE must be answered with [`Endpoint::answer_invite`] and an
    /// UPDATE with [`Endpoint::answer_update`]; INFO has already been answered 200.
    Request {
        /// The call.
        call: CallHandle,
        /// INVITE (re-INVITE), UPDATE or INFO.
        method: Method,
        /// The body (SDP offer for INVITE/UPDATE).
        body: Bytes,
    },
    /// A final response to one of our in-dialog requests (re-INVITE, UPDATE, INFO, OPTIONS). A 491 to a
    /// re-INVITE is not reported: the endpoint retries by itself after the §14.1 delay.
    Response {
        /// The call.
        call: CallHandle,
        /// The method of our request.
        method: Method,
        /// The status.
        status: StatusCode,
        /// The body.
        body: Bytes,
    },
    /// The final response to a REGISTER (after any authentication).
    Registration {
        /// The registration.
        reg: RegistrationHandle,
        /// The registrar's status.
        status: StatusCode,
        /// The lifetime granted (Contact `expires` or Expires), on a 2xx.
        expires: Option<u32>,
    },
    /// A REGISTER got no final response (Timer F).
    RegistrationTimeout {
        /// The registration.
        reg: RegistrationHandle,
    },
    /// A non-INVITE in-dialog request of ours got no final response (Timer F). The call goes on.
    TransactionTimeout {
        /// The call.
        call: CallHandle,
        /// The request's method.
        method: Method,
    },
    /// The call ended. No more events for this handle.
    Terminated {
        /// The call.
        call: CallHandle,
        /// Why.
        reason: TerminationReason,
    },
}

/// Errors from the TU-facing API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// No such call (or it was dropped after ending).
    #[error("unknown call {0:?}")]
    UnknownCall(CallHandle),
    /// The call is not in a state that allows this (e.g. re-INVITE before the dialog is confirmed).
    #[error("invalid call state for this operation")]
    InvalidState,
    /// A re-INVITE or UPDATE of ours is already in progress (§14.1).
    #[error("a request is already pending")]
    RequestPending,
    /// No such registration.
    #[error("unknown registration {0:?}")]
    UnknownRegistration(RegistrationHandle),
    /// Nothing to answer.
    #[error("no pending request to answer")]
    NoPendingRequest,
    /// A URI in the request did not parse.
    #[error("invalid URI")]
    InvalidUri,
    /// The status code is outside 100..=699 or not allowed here.
    #[error("invalid status code {0}")]
    InvalidStatus(u16),
}

type TxId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The initial INVITE of a UAC call.
    Invite(u64),
    /// A re-INVITE.
    ReInvite(u64),
    /// Our CANCEL.
    Cancel(u64),
    /// BYE, UPDATE, INFO, OPTIONS in a call's dialog.
    InDialog(u64),
    /// A REGISTER.
    Register(u64),
    /// A BYE to a surplus fork or a request nobody waits for.
    Orphan,
}

#[derive(Debug)]
struct ClientEntry {
    tx: ClientTransaction,
    owner: Owner,
    request: Request,
    key: (String, Method),
}

/// RFC 3261 §17.2.3 server transaction key, or the RFC 2543 fallback when the branch lacks the cookie.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ServerKey {
    Branch {
        branch: String,
        sent_by: String,
        method: Method,
    },
    Legacy {
        ruri: String,
        from_tag: Bytes,
        call_id: Bytes,
        cseq: u32,
        via: Bytes,
        method: Method,
    },
}

#[derive(Debug)]
struct ServerEntry {
    tx: ServerTransaction,
    request: Request,
    key: ServerKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelState {
    None,
    /// Asked before any provisional response: sent when one arrives (§9.1).
    Pending,
    Sent,
}

#[derive(Debug)]
struct Registration {
    request: Request,
    next_hop: SocketAddr,
    cseq: u32,
    auth: Option<DigestClient>,
    tx: Option<TxId>,
}

/// The UAS core's 2xx retransmission (§13.3.1.4).
#[derive(Debug)]
struct Retrans2xx {
    payload: Bytes,
    destination: SocketAddr,
    transport: Transport,
    cseq: u32,
    sent: u32,
    next: Instant,
    give_up: Instant,
    initial: bool,
}

#[derive(Debug)]
struct Call {
    is_uac: bool,
    local_tag: Bytes,
    next_hop: SocketAddr,
    auth: Option<DigestClient>,
    // UAC initial INVITE
    invite: Option<Request>,
    invite_tx: Option<TxId>,
    got_provisional: bool,
    cancel: CancelState,
    cancel_deadline: Option<Instant>,
    early: Vec<Dialog>,
    dialog: Option<Dialog>,
    /// ACK for the 2xx of the INVITE / re-INVITE: (CSeq, bytes), re-sent on 2xx retransmissions.
    /// ACKs for 2xx responses (initial INVITE, latest re-INVITE) by CSeq, re-sent on 2xx retransmissions.
    acks: Vec<(u32, Bytes)>,
    /// Surplus forks already ACKed and BYE'd: (remote tag, ACK) to re-ACK their retransmissions.
    forks: Vec<(Bytes, Bytes)>,
    // re-INVITE of ours
    reinvite_tx: Option<TxId>,
    glare_retry: Option<(Instant, Bytes)>,
    update_tx: Option<TxId>,
    // requests of the peer waiting for the TU
    pending_invite: Option<TxId>,
    pending_update: Option<TxId>,
    retrans: Option<Retrans2xx>,
    bye_pending: bool,
    terminated: bool,
    expire_at: Option<Instant>,
}

impl Call {
    fn new(is_uac: bool, local_tag: Bytes, next_hop: SocketAddr) -> Self {
        Self {
            is_uac,
            local_tag,
            next_hop,
            auth: None,
            invite: None,
            invite_tx: None,
            got_provisional: false,
            cancel: CancelState::None,
            cancel_deadline: None,
            early: Vec::new(),
            dialog: None,
            acks: Vec::new(),
            forks: Vec::new(),
            reinvite_tx: None,
            glare_retry: None,
            update_tx: None,
            pending_invite: None,
            pending_update: None,
            retrans: None,
            bye_pending: false,
            terminated: false,
            expire_at: None,
        }
    }

    fn hop(&self) -> SocketAddr {
        self.dialog
            .as_ref()
            .and_then(Dialog::next_hop)
            .unwrap_or(self.next_hop)
    }

    fn ack_for(&self, seq: u32) -> Option<Bytes> {
        self.acks
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, a)| a.clone())
    }

    fn confirmed(&self) -> bool {
        self.dialog.is_some()
    }
}

/// The sans-IO SIP endpoint. See the module docs.
#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    policy: UaPolicy,
    rng: SmallRng,
    next_id: u64,
    clients: BTreeMap<TxId, ClientEntry>,
    client_index: HashMap<(String, Method), TxId>,
    servers: BTreeMap<TxId, ServerEntry>,
    server_index: HashMap<ServerKey, TxId>,
    calls: BTreeMap<u64, Call>,
    regs: BTreeMap<u64, Registration>,
    /// (Call-ID, local tag) → call.
    dialog_index: HashMap<(Bytes, Bytes), u64>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

fn status(code: u16) -> Result<StatusCode, EndpointError> {
    StatusCode::new(code).ok_or(EndpointError::InvalidStatus(code))
}

fn cseq_of(h: &Headers) -> Option<(u32, Method)> {
    let (n, m) = hdr::cseq(h.get(&HeaderName::CSeq)?)?;
    Some((n, Method::parse(m)?))
}

fn to_tag(h: &Headers) -> Option<Bytes> {
    h.get(&HeaderName::To)
        .and_then(|v| hdr::tag(v))
        .map(Bytes::copy_from_slice)
}

impl Endpoint {
    /// A new endpoint.
    pub fn new(config: EndpointConfig) -> Self {
        // No option tags: 100rel and session timers are not implemented, so a Require for them gets 420.
        let policy = UaPolicy {
            supported: Vec::new(),
            content_types: vec![
                ("application".into(), "sdp".into()),
                ("application".into(), "dtmf-relay".into()),
                ("application".into(), "dtmf".into()),
            ],
            ..UaPolicy::default()
        };
        Self {
            policy,
            rng: SmallRng::seed_from_u64(config.rng_seed),
            config,
            next_id: 1,
            clients: BTreeMap::new(),
            client_index: HashMap::new(),
            servers: BTreeMap::new(),
            server_index: HashMap::new(),
            calls: BTreeMap::new(),
            regs: BTreeMap::new(),
            dialog_index: HashMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn token(&mut self) -> String {
        format!("{:016x}", self.rng.random::<u64>())
    }

    fn new_via(&mut self) -> Bytes {
        let branch = self.token();
        Bytes::from(format!(
            "SIP/2.0/{} {};branch={BRANCH_COOKIE}{branch};rport",
            self.config.transport.via_token(),
            self.config.advertised_addr
        ))
    }

    fn contact(&self) -> Bytes {
        let t = match self.config.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        Bytes::from(format!("<sip:{}{t}>", self.config.advertised_addr))
    }

    // ---------------------------------------------------------------------------------------------------------
    // Outputs

    /// The next message to send. Changes after every `handle*` and API call.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// The next event for the TU.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called. Linear in the number of live transactions and calls.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = self.clients.values().filter_map(|e| e.tx.poll_timeout());
        let s = self.servers.values().filter_map(|e| e.tx.poll_timeout());
        let k = self.calls.values().flat_map(|c| {
            [
                c.retrans.as_ref().map(|r| r.next.min(r.give_up)),
                c.glare_retry.as_ref().map(|g| g.0),
                c.cancel_deadline,
                c.expire_at,
            ]
            .into_iter()
            .flatten()
        });
        c.chain(s).chain(k).min()
    }

    /// Number of live calls (including ended ones kept to absorb retransmissions) and transactions, for tests and
    /// metrics.
    pub fn live_counts(&self) -> (usize, usize, usize) {
        (self.calls.len(), self.clients.len(), self.servers.len())
    }

    // ---------------------------------------------------------------------------------------------------------
    // Transaction plumbing

    fn start_client(
        &mut self,
        now: Instant,
        request: Request,
        destination: SocketAddr,
        owner: Owner,
    ) -> TxId {
        let branch = request
            .headers
            .values(&HeaderName::Via)
            .next()
            .and_then(|v| hdr::via(&v).and_then(|p| p.branch.map(str::to_owned)))
            .unwrap_or_default();
        let key = (branch, request.method.clone());
        let kind = if request.method == Method::Invite {
            TxKind::Invite
        } else {
            TxKind::NonInvite
        };
        let tx = ClientTransaction::new(
            now,
            kind,
            self.config.timers,
            destination,
            self.config.transport,
            request.to_bytes(),
        );
        let id = self.id();
        self.client_index.insert(key.clone(), id);
        self.clients.insert(
            id,
            ClientEntry {
                tx,
                owner,
                request,
                key,
            },
        );
        self.drain_client(now, id);
        id
    }

    fn drain_client(&mut self, now: Instant, id: TxId) {
        let Some(e) = self.clients.get_mut(&id) else {
            return;
        };
        while let Some(t) = e.tx.poll_transmit() {
            self.outbox.push_back(t);
        }
        let mut evs = Vec::new();
        while let Some(ev) = e.tx.poll_event() {
            evs.push(ev);
        }
        let (owner, method) = (e.owner, e.request.method.clone());
        for ev in evs {
            match ev {
                TxEvent::Timeout => self.on_client_timeout(now, owner, method.clone()),
                TxEvent::Terminated => {
                    if let Some(e) = self.clients.remove(&id) {
                        if self.client_index.get(&e.key) == Some(&id) {
                            self.client_index.remove(&e.key);
                        }
                    }
                }
            }
        }
    }

    fn drain_server(&mut self, id: TxId) {
        let Some(e) = self.servers.get_mut(&id) else {
            return;
        };
        while let Some(t) = e.tx.poll_transmit() {
            self.outbox.push_back(t);
        }
        let mut terminated = false;
        while let Some(ev) = e.tx.poll_event() {
            terminated |= ev == TxEvent::Terminated;
        }
        if terminated {
            if let Some(e) = self.servers.remove(&id) {
                if self.server_index.get(&e.key) == Some(&id) {
                    self.server_index.remove(&e.key);
                }
            }
        }
    }

    fn on_client_timeout(&mut self, now: Instant, owner: Owner, method: Method) {
        match owner {
            Owner::Invite(h) => {
                let no_dialog = self.calls.get(&h).is_some_and(|c| !c.confirmed());
                if no_dialog {
                    self.terminate(now, h, TerminationReason::Timeout);
                }
            }
            Owner::ReInvite(h) => {
                // §14.1: a re-INVITE that times out ends the dialog with BYE.
                if let Some(c) = self.calls.get_mut(&h) {
                    c.reinvite_tx = None;
                }
                self.send_bye_now(now, h);
                self.terminate(now, h, TerminationReason::Timeout);
            }
            Owner::Register(r) => {
                if let Some(reg) = self.regs.get_mut(&r) {
                    reg.tx = None;
                    self.events.push_back(Event::RegistrationTimeout {
                        reg: RegistrationHandle(r),
                    });
                }
            }
            Owner::InDialog(h) if method != Method::Bye => {
                if let Some(c) = self.calls.get_mut(&h) {
                    if method == Method::Update {
                        c.update_tx = None;
                    }
                    if !c.terminated {
                        self.events.push_back(Event::TransactionTimeout {
                            call: CallHandle(h),
                            method,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    fn terminate(&mut self, now: Instant, h: u64, reason: TerminationReason) {
        let linger = self.config.timers.timeout();
        if let Some(c) = self.calls.get_mut(&h) {
            if !c.terminated {
                c.terminated = true;
                c.glare_retry = None;
                c.cancel_deadline = None;
                c.expire_at = Some(now + linger);
                self.events.push_back(Event::Terminated {
                    call: CallHandle(h),
                    reason,
                });
            }
        }
    }

    fn send_raw(&mut self, destination: SocketAddr, payload: Bytes) {
        self.outbox.push_back(Transmit {
            destination,
            transport: self.config.transport,
            payload,
        });
    }

    // ---------------------------------------------------------------------------------------------------------
    // Input

    /// Feeds one datagram (or one framed stream message) received from `remote` over `transport`.
    pub fn handle(&mut self, now: Instant, remote: SocketAddr, transport: Transport, data: Bytes) {
        if data.iter().all(|&b| b == b'\r' || b == b'\n') {
            return; // keep-alive
        }
        match Message::parse_datagram(data.clone()) {
            Ok(Message::Request(r)) => self.handle_request(now, remote, transport, r),
            Ok(Message::Response(r)) => self.handle_response(now, r),
            Err(err) => {
                // sipgo's rejectMalformedRequest: without an answer the sender retransmits for 32 s.
                let tag = self.token();
                if let Some(resp) = error_response_for(&data, &err, &tag) {
                    let top = resp.headers.values(&HeaderName::Via).next();
                    let via = top.as_deref().and_then(hdr::via);
                    let destination = match via {
                        Some(v) if !transport.is_reliable() && !v.rport => {
                            SocketAddr::new(remote.ip(), v.port.unwrap_or(5060))
                        }
                        _ => remote,
                    };
                    self.outbox.push_back(Transmit {
                        destination,
                        transport,
                        payload: resp.to_bytes(),
                    });
                }
            }
        }
    }

    /// Call when `now` has reached [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<TxId> = self
            .clients
            .iter()
            .filter(|(_, e)| e.tx.poll_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for id in due {
            if let Some(e) = self.clients.get_mut(&id) {
                e.tx.handle_timeout(now);
            }
            self.drain_client(now, id);
        }
        let due: Vec<TxId> = self
            .servers
            .iter()
            .filter(|(_, e)| e.tx.poll_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for id in due {
            if let Some(e) = self.servers.get_mut(&id) {
                e.tx.handle_timeout(now);
            }
            self.drain_server(id);
        }
        let handles: Vec<u64> = self.calls.keys().copied().collect();
        for h in handles {
            self.call_timeout(now, h);
        }
    }

    fn call_timeout(&mut self, now: Instant, h: u64) {
        let timers = self.config.timers;
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        if c.expire_at.is_some_and(|t| t <= now) {
            self.calls.remove(&h);
            self.dialog_index.retain(|_, v| *v != h);
            return;
        }
        // UAS 2xx retransmission (§13.3.1.4).
        if let Some(r) = &mut c.retrans {
            if r.give_up <= now {
                c.retrans = None;
                c.bye_pending = false;
                self.send_bye_now(now, h);
                self.terminate(now, h, TerminationReason::AckTimeout);
                return;
            }
            if r.next <= now {
                r.sent = r.sent.saturating_add(1);
                r.next = now + timers.retransmit_interval(r.sent, true);
                let t = Transmit {
                    destination: r.destination,
                    transport: r.transport,
                    payload: r.payload.clone(),
                };
                self.outbox.push_back(t);
            }
        }
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        if let Some((at, _)) = &c.glare_retry {
            if *at <= now {
                let sdp = c.glare_retry.take().map(|g| g.1).unwrap_or_default();
                if let Err(EndpointError::RequestPending) =
                    self.send_reinvite(now, CallHandle(h), sdp.clone())
                {
                    // The peer's re-INVITE is being answered: try again after another back-off.
                    let delay = glare_retry_delay(&mut self.rng, true);
                    if let Some(c) = self.calls.get_mut(&h) {
                        c.glare_retry = Some((now + delay, sdp));
                    }
                }
            }
        }
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        if c.cancel_deadline.is_some_and(|t| t <= now) {
            // §9.1: no final response 64·T1 after CANCEL: consider the INVITE cancelled, destroy its transaction.
            c.cancel_deadline = None;
            if let Some(id) = c.invite_tx.take() {
                if let Some(e) = self.clients.remove(&id) {
                    self.client_index.remove(&e.key);
                }
            }
            self.terminate(now, h, TerminationReason::Cancelled);
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Responses

    fn handle_response(&mut self, now: Instant, resp: Response) {
        let Some(top) = resp.headers.values(&HeaderName::Via).next() else {
            return;
        };
        let Some(branch) = hdr::via(&top).and_then(|v| v.branch.map(str::to_owned)) else {
            return;
        };
        let Some((_, method)) = cseq_of(&resp.headers) else {
            return;
        };
        let Some(&id) = self.client_index.get(&(branch, method)) else {
            tracing::debug!("response matches no client transaction");
            return;
        };
        let Some(e) = self.clients.get_mut(&id) else {
            return;
        };
        let code = resp.status.as_u16();
        let disp = e.tx.handle_response(now, code);
        let owner = e.owner;
        let request = e.request.clone();
        if disp == ClientDisposition::PassUpAndAck {
            let ack = non_2xx_ack(&request, &resp);
            e.tx.send_ack(ack.to_bytes());
        }
        self.drain_client(now, id);
        if disp == ClientDisposition::Absorb {
            return;
        }
        match owner {
            Owner::Invite(h) => self.on_invite_response(now, h, id, &request, resp),
            Owner::ReInvite(h) => self.on_reinvite_response(now, h, id, &request, resp),
            Owner::InDialog(h) => self.on_in_dialog_response(now, h, &request, resp),
            Owner::Register(r) => self.on_register_response(now, r, id, &request, resp),
            Owner::Cancel(_) | Owner::Orphan => {}
        }
    }

    fn on_register_response(
        &mut self,
        now: Instant,
        r: u64,
        tx: TxId,
        request: &Request,
        resp: Response,
    ) {
        if resp.status.is_provisional() {
            return;
        }
        let cnonce = self.token();
        let via = self.new_via();
        let Some(reg) = self.regs.get_mut(&r) else {
            return;
        };
        if reg.tx != Some(tx) {
            return;
        }
        reg.tx = None;
        if let Some(auth) = reg.auth.as_mut() {
            if let Some((name, value)) = answer_challenge(auth, request, &resp, &cnonce) {
                reg.cseq = reg.cseq.wrapping_add(1);
                let mut req = request.clone();
                resend_headers(&mut req, via, reg.cseq, name, value);
                let hop = reg.next_hop;
                let id = self.start_client(now, req, hop, Owner::Register(r));
                if let Some(reg) = self.regs.get_mut(&r) {
                    reg.tx = Some(id);
                }
                return;
            }
            auth.request_done();
        }
        let expires = resp
            .status
            .is_success()
            .then(|| granted_expires(&resp.headers))
            .flatten();
        self.events.push_back(Event::Registration {
            reg: RegistrationHandle(r),
            status: resp.status,
            expires,
        });
    }

    /// Answers a 401/407 by re-sending `request` with credentials. Returns false when we cannot or should not.
    fn retry_with_auth(
        &mut self,
        now: Instant,
        h: u64,
        request: &Request,
        resp: &Response,
        owner: Owner,
    ) -> bool {
        let cnonce = self.token();
        let via = self.new_via();
        let Some(c) = self.calls.get_mut(&h) else {
            return false;
        };
        let Some(auth) = c.auth.as_mut() else {
            return false;
        };
        let Some((answer_hdr, value)) = answer_challenge(auth, request, resp, &cnonce) else {
            return false;
        };
        let seq = match (&mut c.dialog, owner) {
            (Some(d), Owner::ReInvite(_) | Owner::InDialog(_)) => d.next_seq(),
            _ => cseq_of(&request.headers)
                .map(|(n, _)| n.wrapping_add(1))
                .unwrap_or(1),
        };
        let mut req = request.clone();
        resend_headers(&mut req, via, seq, answer_hdr, value);
        let dest = c.hop();
        if let Owner::Invite(_) = owner {
            c.invite = Some(req.clone());
        }
        let id = self.start_client(now, req, dest, owner);
        if let Some(c) = self.calls.get_mut(&h) {
            match owner {
                Owner::Invite(_) => c.invite_tx = Some(id),
                Owner::ReInvite(_) => c.reinvite_tx = Some(id),
                Owner::InDialog(_) if c.update_tx.is_some() && request.method == Method::Update => {
                    c.update_tx = Some(id)
                }
                _ => {}
            }
        }
        true
    }

    fn auth_done(&mut self, h: u64) {
        if let Some(a) = self.calls.get_mut(&h).and_then(|c| c.auth.as_mut()) {
            a.request_done();
        }
    }

    fn on_invite_response(
        &mut self,
        now: Instant,
        h: u64,
        tx: TxId,
        request: &Request,
        resp: Response,
    ) {
        let code = resp.status.as_u16();
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        if c.invite_tx != Some(tx) {
            // A response to an INVITE we replaced (auth retry): only a 2xx matters (it would create a dialog).
            if !resp.status.is_success() {
                return;
            }
        }
        if resp.status.is_provisional() {
            c.got_provisional = true;
            let remote_tag = to_tag(&resp.headers);
            if let Some(tag) = remote_tag.clone() {
                match c.early.iter_mut().find(|d| d.id.remote_tag == tag) {
                    Some(d) => d.refresh_target(&resp.headers),
                    None => {
                        if let Some(d) = Dialog::uac(request, &resp.headers, true) {
                            c.early.push(d);
                        }
                    }
                }
            }
            let cancel_now = c.cancel == CancelState::Pending;
            let report = code > 100 && !c.terminated && c.cancel == CancelState::None;
            if report {
                self.events.push_back(Event::Provisional {
                    call: CallHandle(h),
                    status: resp.status,
                    remote_tag,
                    body: resp.body,
                });
            }
            if cancel_now {
                self.send_cancel_now(now, h);
            }
            return;
        }
        if resp.status.is_success() {
            self.auth_done(h);
            let Some(tag) = to_tag(&resp.headers) else {
                return;
            };
            let Some(c) = self.calls.get_mut(&h) else {
                return;
            };
            if let Some(d) = &c.dialog {
                if d.id.remote_tag == tag {
                    // 2xx retransmission: re-ACK.
                    let seq = cseq_of(&request.headers).map(|x| x.0).unwrap_or(1);
                    if let Some(ack) = c.ack_for(seq) {
                        let hop = c.hop();
                        self.send_raw(hop, ack);
                    }
                    return;
                }
                self.ack_and_bye_fork(now, h, request, &resp, tag);
                return;
            }
            if c.terminated && c.cancel == CancelState::None {
                // Ended by a timeout before the 2xx: still ACK and BYE this fork.
                self.ack_and_bye_fork(now, h, request, &resp, tag);
                return;
            }
            let Some(mut d) = Dialog::uac(request, &resp.headers, false) else {
                return;
            };
            d.state = crate::sip::dialog::DialogState::Confirmed;
            c.early.clear();
            c.dialog = Some(d);
            c.cancel_deadline = None;
            let cancelled = c.cancel != CancelState::None || c.terminated;
            let seq = cseq_of(&request.headers).map(|x| x.0).unwrap_or(1);
            self.send_ack(h, seq, request);
            if cancelled {
                // CANCEL/200 race (§9.1, §15): the 2xx won; end the session we did not want.
                self.send_bye_now(now, h);
                self.terminate(now, h, TerminationReason::Cancelled);
            } else {
                self.events.push_back(Event::Answered {
                    call: CallHandle(h),
                    body: resp.body,
                });
            }
            return;
        }
        if self.retry_with_auth(now, h, request, &resp, Owner::Invite(h)) {
            return;
        }
        self.auth_done(h);
        let cancelled = self
            .calls
            .get(&h)
            .is_some_and(|c| c.cancel != CancelState::None);
        let reason = if cancelled && code == 487 {
            TerminationReason::Cancelled
        } else {
            TerminationReason::Rejected(resp.status)
        };
        self.terminate(now, h, reason);
    }

    /// Sends (and remembers) the ACK for a 2xx to the INVITE with CSeq `seq` (§13.2.2.4).
    fn send_ack(&mut self, h: u64, seq: u32, invite: &Request) {
        let via = self.new_via();
        let contact = self.contact();
        let mf = self.config.max_forwards;
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        let Some(d) = &c.dialog else { return };
        let Some(mut ack) = d.request(Method::Ack, seq, via, &contact, mf) else {
            return;
        };
        for name in [HeaderName::Authorization, HeaderName::ProxyAuthorization] {
            if let Some(v) = invite.headers.get(&name) {
                ack.headers.push(name, v.clone());
            }
        }
        let bytes = ack.to_bytes();
        // Keep the initial INVITE's ACK and the latest re-INVITE's.
        if c.acks.len() >= 2 {
            c.acks.remove(1);
        }
        c.acks.push((seq, bytes.clone()));
        let hop = c.hop();
        self.send_raw(hop, bytes);
    }

    fn ack_and_bye_fork(
        &mut self,
        now: Instant,
        h: u64,
        request: &Request,
        resp: &Response,
        tag: Bytes,
    ) {
        let Some(c) = self.calls.get(&h) else { return };
        if let Some((_, ack)) = c.forks.iter().find(|(t, _)| *t == tag) {
            let (hop, ack) = (c.next_hop, ack.clone());
            self.send_raw(hop, ack);
            return;
        }
        let Some(mut d) = Dialog::uac(request, &resp.headers, false) else {
            return;
        };
        let fallback = c.next_hop;
        let (via, via2, contact, mf) = (
            self.new_via(),
            self.new_via(),
            self.contact(),
            self.config.max_forwards,
        );
        let seq = cseq_of(&request.headers).map(|x| x.0).unwrap_or(1);
        let hop = d.next_hop().unwrap_or(fallback);
        let Some(ack) = d.request(Method::Ack, seq, via, &contact, mf) else {
            return;
        };
        let ack = ack.to_bytes();
        self.send_raw(hop, ack.clone());
        let bye_seq = d.next_seq();
        if let Some(bye) = d.request(Method::Bye, bye_seq, via2, &contact, mf) {
            self.start_client(now, bye, hop, Owner::Orphan);
        }
        if let Some(c) = self.calls.get_mut(&h) {
            c.forks.push((tag, ack));
        }
    }

    fn on_reinvite_response(
        &mut self,
        now: Instant,
        h: u64,
        tx: TxId,
        request: &Request,
        resp: Response,
    ) {
        if resp.status.is_provisional() {
            return;
        }
        let code = resp.status.as_u16();
        let seq = cseq_of(&request.headers).map(|x| x.0).unwrap_or(0);
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        if resp.status.is_success() {
            if let Some(ack) = c.ack_for(seq) {
                let hop = c.hop();
                self.send_raw(hop, ack);
                return;
            }
            if let Some(d) = &mut c.dialog {
                d.refresh_target(&resp.headers);
            }
            if c.reinvite_tx == Some(tx) {
                c.reinvite_tx = None;
            }
            self.auth_done(h);
            self.send_ack(h, seq, request);
            self.events.push_back(Event::Response {
                call: CallHandle(h),
                method: Method::Invite,
                status: resp.status,
                body: resp.body,
            });
            return;
        }
        if c.reinvite_tx != Some(tx) {
            return;
        }
        c.reinvite_tx = None;
        if code == 491 {
            // §14.1 glare: retry after a random delay that depends on who owns the Call-ID.
            let owns = c.is_uac;
            let delay = glare_retry_delay(&mut self.rng, owns);
            if let Some(c) = self.calls.get_mut(&h) {
                c.glare_retry = Some((now + delay, request.body.clone()));
            }
            return;
        }
        if self.retry_with_auth(now, h, request, &resp, Owner::ReInvite(h)) {
            return;
        }
        self.auth_done(h);
        match code {
            481 => self.terminate(now, h, TerminationReason::DialogGone),
            408 => {
                self.send_bye_now(now, h);
                self.terminate(now, h, TerminationReason::Timeout);
            }
            _ => self.events.push_back(Event::Response {
                call: CallHandle(h),
                method: Method::Invite,
                status: resp.status,
                body: resp.body,
            }),
        }
    }

    fn on_in_dialog_response(&mut self, now: Instant, h: u64, request: &Request, resp: Response) {
        if resp.status.is_provisional() {
            return;
        }
        if self.retry_with_auth(now, h, request, &resp, Owner::InDialog(h)) {
            return;
        }
        self.auth_done(h);
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        if request.method == Method::Update {
            c.update_tx = None;
            if resp.status.is_success() {
                if let Some(d) = &mut c.dialog {
                    d.refresh_target(&resp.headers);
                }
            }
        }
        if request.method == Method::Bye {
            return;
        }
        if resp.status.as_u16() == 481 {
            self.terminate(now, h, TerminationReason::DialogGone);
            return;
        }
        if !c.terminated {
            self.events.push_back(Event::Response {
                call: CallHandle(h),
                method: request.method.clone(),
                status: resp.status,
                body: resp.body,
            });
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Requests

    fn handle_request(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        transport: Transport,
        mut req: Request,
    ) {
        let vias: Vec<Bytes> = req.headers.values(&HeaderName::Via).collect();
        let Some(top) = vias.first().cloned() else {
            return;
        };
        let Some(vp) = hdr::via(&top) else { return };
        // RFC 3581 / §18.2.1.
        let destination = if transport.is_reliable() || vp.rport {
            remote
        } else {
            SocketAddr::new(remote.ip(), vp.port.unwrap_or(5060))
        };
        if let Ok(mut v) = Via::parse(&top) {
            let host_is_source = v.host.ip() == Some(remote.ip());
            if !host_is_source || vp.rport {
                v.set_received(remote.ip());
            }
            if vp.rport {
                v.set_rport(remote.port());
            }
            req.headers.remove(&HeaderName::Via);
            req.headers.push(HeaderName::Via, v.encode());
            for other in vias.iter().skip(1) {
                req.headers.push(HeaderName::Via, other.clone());
            }
        }
        // §8.2: malformed requests and unsupported extensions/bodies are refused statelessly.
        if let Err(rej) = validate_request(&req, &self.policy) {
            // Without Call-ID and CSeq the sender could not match an answer: drop.
            let answerable = req.headers.contains(&HeaderName::CallId)
                && req.headers.contains(&HeaderName::CSeq);
            if req.method != Method::Ack && answerable {
                let tag = self.token();
                let payload = rej.response(&req, &self.policy, &tag).to_bytes();
                self.outbox.push_back(Transmit {
                    destination,
                    transport,
                    payload,
                });
            }
            return;
        }
        let (Some(call_id), Some((cseq, cseq_method)), Some(from)) = (
            req.headers.get(&HeaderName::CallId).cloned(),
            cseq_of(&req.headers),
            req.headers.get(&HeaderName::From),
        ) else {
            return;
        };
        if cseq_method != req.method {
            let tag = self.token();
            let mut r = Response::for_request(&req, StatusCode::BAD_REQUEST);
            r.set_to_tag(&tag);
            self.outbox.push_back(Transmit {
                destination,
                transport,
                payload: r.to_bytes(),
            });
            return;
        }
        let from_tag = hdr::tag(from)
            .map(Bytes::copy_from_slice)
            .unwrap_or_default();
        let key_method = if req.method == Method::Ack {
            Method::Invite
        } else {
            req.method.clone()
        };
        let key = match vp.branch {
            Some(b) if b.starts_with(BRANCH_COOKIE) => ServerKey::Branch {
                branch: b.to_owned(),
                sent_by: vp.sent_by(),
                method: key_method,
            },
            _ => ServerKey::Legacy {
                ruri: req.uri.to_string(),
                from_tag,
                call_id: call_id.clone(),
                cseq,
                via: top.clone(),
                method: key_method,
            },
        };
        let is_ack = req.method == Method::Ack;
        if let Some(&id) = self.server_index.get(&key) {
            let Some(e) = self.servers.get_mut(&id) else {
                return;
            };
            let disp = e.tx.handle_request(now, is_ack);
            self.drain_server(id);
            if disp == ServerDisposition::PassUp {
                self.on_dialog_ack(now, &req);
            }
            return;
        }
        if is_ack {
            self.on_dialog_ack(now, &req);
            return;
        }
        let kind = if req.method == Method::Invite {
            TxKind::Invite
        } else {
            TxKind::NonInvite
        };
        let tx = ServerTransaction::new(kind, self.config.timers, destination, transport);
        let id = self.id();
        self.server_index.insert(key.clone(), id);
        self.servers.insert(
            id,
            ServerEntry {
                tx,
                request: req.clone(),
                key: key.clone(),
            },
        );

        if req.method == Method::Cancel {
            self.on_cancel(now, id, key);
            return;
        }
        match to_tag(&req.headers) {
            Some(tag) => self.in_dialog_request(now, id, &req, call_id, tag, cseq, remote),
            None => self.out_of_dialog_request(now, id, &req, destination),
        }
    }

    /// Builds and sends a response through server transaction `id`. `to_tag` is added when To has none.
    fn respond(
        &mut self,
        now: Instant,
        id: TxId,
        code: u16,
        tag: Option<&Bytes>,
        f: impl FnOnce(&mut Response),
    ) {
        let Some(st) = StatusCode::new(code) else {
            return;
        };
        let contact = self.contact();
        let random_tag = self.token();
        let server = self.config.user_agent.clone();
        let Some(e) = self.servers.get_mut(&id) else {
            return;
        };
        let mut r = Response::for_request(&e.request, st);
        if code > 100 && to_tag(&r.headers).is_none() {
            match tag {
                Some(t) => r.set_to_tag(&String::from_utf8_lossy(t)),
                None => r.set_to_tag(&random_tag),
            }
        }
        if let Some(s) = server {
            r.headers.push(HeaderName::Server, Bytes::from(s));
        }
        if e.request.method == Method::Invite && (101..300).contains(&code) {
            for rr in e.request.headers.get_all(&HeaderName::RecordRoute) {
                r.headers.push(HeaderName::RecordRoute, rr.clone());
            }
            r.headers.push(HeaderName::Contact, contact);
        }
        f(&mut r);
        e.tx.send_response(now, code, r.to_bytes());
        self.drain_server(id);
    }

    fn out_of_dialog_request(
        &mut self,
        now: Instant,
        id: TxId,
        req: &Request,
        destination: SocketAddr,
    ) {
        match &req.method {
            Method::Options => self.respond(now, id, 200, None, |r| {
                r.headers
                    .push(HeaderName::Allow, Bytes::from_static(ALLOW.as_bytes()));
                r.headers
                    .push(HeaderName::Accept, Bytes::from_static(b"application/sdp"));
            }),
            Method::Invite if self.config.accept_invites => {
                self.incoming_call(now, id, req, destination)
            }
            Method::Invite => self.respond(now, id, 403, None, |_| {}),
            Method::Bye | Method::Update | Method::Info | Method::Prack | Method::Cancel => {
                self.respond(now, id, 481, None, |_| {})
            }
            Method::Other(_) => self.respond(now, id, 501, None, |_| {}),
            _ => self.respond(now, id, 405, None, |r| {
                r.headers
                    .push(HeaderName::Allow, Bytes::from_static(ALLOW.as_bytes()));
            }),
        }
    }

    fn incoming_call(&mut self, now: Instant, id: TxId, req: &Request, destination: SocketAddr) {
        let Some(call_id) = req.headers.get(&HeaderName::CallId).cloned() else {
            return;
        };
        let local_tag = Bytes::from(self.token());
        let mut call = Call::new(false, local_tag.clone(), destination);
        call.pending_invite = Some(id);
        let h = self.id();
        self.calls.insert(h, call);
        self.dialog_index.insert((call_id, local_tag), h);
        self.respond(now, id, 100, None, |_| {});
        self.events.push_back(Event::IncomingCall {
            call: CallHandle(h),
            from: req
                .headers
                .get(&HeaderName::From)
                .cloned()
                .unwrap_or_default(),
            to: req
                .headers
                .get(&HeaderName::To)
                .cloned()
                .unwrap_or_default(),
            body: req.body.clone(),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn in_dialog_request(
        &mut self,
        now: Instant,
        id: TxId,
        req: &Request,
        call_id: Bytes,
        tag: Bytes,
        cseq: u32,
        remote: SocketAddr,
    ) {
        let Some(&h) = self.dialog_index.get(&(call_id, tag)) else {
            return self.respond(now, id, 481, None, |_| {});
        };
        let Some(c) = self.calls.get_mut(&h) else {
            return self.respond(now, id, 481, None, |_| {});
        };
        let remote_tag = req
            .headers
            .get(&HeaderName::From)
            .and_then(|f| hdr::tag(f))
            .map(Bytes::copy_from_slice);
        let Some(d) = c
            .dialog
            .as_mut()
            .filter(|d| Some(&d.id.remote_tag) == remote_tag.as_ref())
        else {
            return self.respond(now, id, 481, None, |_| {});
        };
        if d.check_remote_cseq(cseq).is_err() {
            return self.respond(now, id, 500, None, |_| {});
        }
        let _ = remote;
        match &req.method {
            Method::Bye => {
                let pending = c.pending_invite.take();
                c.retrans = None;
                c.bye_pending = false;
                self.respond(now, id, 200, None, |_| {});
                if let Some(p) = pending {
                    self.respond(now, p, 487, None, |_| {});
                }
                self.terminate(now, h, TerminationReason::RemoteBye);
            }
            _ if c.terminated => self.respond(now, id, 481, None, |_| {}),
            Method::Invite => {
                let ours_pending = c
                    .reinvite_tx
                    .is_some_and(|t| self.clients.get(&t).is_some_and(|e| !e.tx.has_final()));
                if ours_pending {
                    // §14.2 glare.
                    return self.respond(now, id, 491, None, |_| {});
                }
                if c.pending_invite.is_some() || c.retrans.is_some() {
                    return self.respond(now, id, 500, None, |r| {
                        r.headers
                            .push(HeaderName::RetryAfter, Bytes::from_static(b"1"));
                    });
                }
                d.refresh_target(&req.headers);
                c.pending_invite = Some(id);
                self.respond(now, id, 100, None, |_| {});
                self.events.push_back(Event::Request {
                    call: CallHandle(h),
                    method: Method::Invite,
                    body: req.body.clone(),
                });
            }
            Method::Update => {
                if c.update_tx.is_some() || c.pending_update.is_some() {
                    return self.respond(now, id, 491, None, |_| {});
                }
                d.refresh_target(&req.headers);
                c.pending_update = Some(id);
                self.events.push_back(Event::Request {
                    call: CallHandle(h),
                    method: Method::Update,
                    body: req.body.clone(),
                });
            }
            Method::Info => {
                self.respond(now, id, 200, None, |_| {});
                self.events.push_back(Event::Request {
                    call: CallHandle(h),
                    method: Method::Info,
                    body: req.body.clone(),
                });
            }
            Method::Options => self.respond(now, id, 200, None, |r| {
                r.headers
                    .push(HeaderName::Allow, Bytes::from_static(ALLOW.as_bytes()));
                r.headers
                    .push(HeaderName::Accept, Bytes::from_static(b"application/sdp"));
            }),
            _ => self.respond(now, id, 501, None, |_| {}),
        }
    }

    fn on_cancel(&mut self, now: Instant, cancel_id: TxId, key: ServerKey) {
        let invite_key = match key {
            ServerKey::Branch {
                branch, sent_by, ..
            } => ServerKey::Branch {
                branch,
                sent_by,
                method: Method::Invite,
            },
            ServerKey::Legacy {
                ruri,
                from_tag,
                call_id,
                cseq,
                via,
                ..
            } => ServerKey::Legacy {
                ruri,
                from_tag,
                call_id,
                cseq,
                via,
                method: Method::Invite,
            },
        };
        let Some(&inv) = self.server_index.get(&invite_key) else {
            return self.respond(now, cancel_id, 481, None, |_| {});
        };
        self.respond(now, cancel_id, 200, None, |_| {});
        let still_open = self.servers.get(&inv).is_some_and(|e| !e.tx.has_final());
        if !still_open {
            return;
        }
        let h = self
            .calls
            .iter()
            .find(|(_, c)| c.pending_invite == Some(inv))
            .map(|(h, _)| *h);
        let tag = h
            .and_then(|h| self.calls.get(&h))
            .map(|c| c.local_tag.clone());
        self.respond(now, inv, 487, tag.as_ref(), |_| {});
        if let Some(h) = h {
            if let Some(c) = self.calls.get_mut(&h) {
                c.pending_invite = None;
            }
            self.terminate(now, h, TerminationReason::Cancelled);
        }
    }

    fn on_dialog_ack(&mut self, now: Instant, req: &Request) {
        let (Some(call_id), Some(tag)) = (
            req.headers.get(&HeaderName::CallId).cloned(),
            to_tag(&req.headers),
        ) else {
            return;
        };
        let Some(&h) = self.dialog_index.get(&(call_id, tag)) else {
            return;
        };
        let seq = cseq_of(&req.headers).map(|x| x.0);
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        let Some(r) = &c.retrans else { return };
        if Some(r.cseq) != seq {
            return;
        }
        c.retrans = None;
        let bye = std::mem::take(&mut c.bye_pending);
        if !c.terminated {
            self.events.push_back(Event::Acked {
                call: CallHandle(h),
                body: req.body.clone(),
            });
        }
        if bye {
            // §15: the callee's BYE waited for this ACK.
            self.send_bye_now(now, h);
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // TU API

    /// Places a call: sends an INVITE and returns the call's handle. Progress arrives as [`Event::Provisional`],
    /// [`Event::Answered`] or [`Event::Terminated`].
    pub fn start_invite(
        &mut self,
        now: Instant,
        inv: InviteRequest,
    ) -> Result<CallHandle, EndpointError> {
        let uri = Uri::parse(&inv.target).map_err(|_| EndpointError::InvalidUri)?;
        let to = inv.to.clone().unwrap_or_else(|| inv.target.clone());
        Uri::parse(&to).map_err(|_| EndpointError::InvalidUri)?;
        Uri::parse(&inv.from).map_err(|_| EndpointError::InvalidUri)?;
        let call_id = Bytes::from(format!(
            "{}@{}",
            self.token(),
            self.config.advertised_addr.ip()
        ));
        let local_tag = Bytes::from(self.token());
        let via = self.new_via();
        let mut req = Request::new(Method::Invite, uri);
        let h = &mut req.headers;
        h.push(HeaderName::Via, via);
        h.push(
            HeaderName::MaxForwards,
            Bytes::from(self.config.max_forwards.to_string()),
        );
        h.push(
            HeaderName::From,
            Bytes::from(format!(
                "<{}>;tag={}",
                inv.from,
                String::from_utf8_lossy(&local_tag)
            )),
        );
        h.push(HeaderName::To, Bytes::from(format!("<{to}>")));
        h.push(HeaderName::CallId, call_id.clone());
        h.push(HeaderName::CSeq, Bytes::from_static(b"1 INVITE"));
        h.push(HeaderName::Contact, self.contact());
        h.push(HeaderName::Allow, Bytes::from_static(ALLOW.as_bytes()));
        if let Some(ua) = &self.config.user_agent {
            h.push(HeaderName::UserAgent, Bytes::from(ua.clone()));
        }
        for (n, v) in inv.extra_headers {
            h.push(n, v);
        }
        if !inv.sdp.is_empty() {
            req.set_body("application/sdp", inv.sdp);
        }
        let handle = self.id();
        let mut call = Call::new(true, local_tag.clone(), inv.next_hop);
        call.auth = inv.credentials.map(DigestClient::new);
        call.invite = Some(req.clone());
        self.calls.insert(handle, call);
        self.dialog_index.insert((call_id, local_tag), handle);
        let tx = self.start_client(now, req, inv.next_hop, Owner::Invite(handle));
        if let Some(c) = self.calls.get_mut(&handle) {
            c.invite_tx = Some(tx);
        }
        Ok(CallHandle(handle))
    }

    /// Sends a REGISTER binding our Contact to `req.aor` for `req.expires` seconds. The outcome arrives as
    /// [`Event::Registration`] or [`Event::RegistrationTimeout`]; refreshing is the TU's job
    /// ([`Self::refresh_register`]).
    pub fn register(
        &mut self,
        now: Instant,
        req: RegisterRequest,
    ) -> Result<RegistrationHandle, EndpointError> {
        let uri = Uri::parse(&req.registrar).map_err(|_| EndpointError::InvalidUri)?;
        Uri::parse(&req.aor).map_err(|_| EndpointError::InvalidUri)?;
        let call_id = Bytes::from(format!(
            "{}@{}",
            self.token(),
            self.config.advertised_addr.ip()
        ));
        let tag = self.token();
        let mut r = Request::new(Method::Register, uri);
        let h = &mut r.headers;
        h.push(
            HeaderName::MaxForwards,
            Bytes::from(self.config.max_forwards.to_string()),
        );
        h.push(
            HeaderName::From,
            Bytes::from(format!("<{}>;tag={tag}", req.aor)),
        );
        h.push(HeaderName::To, Bytes::from(format!("<{}>", req.aor)));
        h.push(HeaderName::CallId, call_id);
        h.push(HeaderName::Contact, self.contact());
        let handle = self.id();
        self.regs.insert(
            handle,
            Registration {
                request: r,
                next_hop: req.next_hop,
                cseq: 0,
                auth: req.credentials.map(DigestClient::new),
                tx: None,
            },
        );
        self.refresh_register(now, RegistrationHandle(handle), req.expires)?;
        Ok(RegistrationHandle(handle))
    }

    /// Sends the next REGISTER of a registration (same Call-ID, next CSeq, §10.2.4); `expires` 0 removes the
    /// binding.
    pub fn refresh_register(
        &mut self,
        now: Instant,
        reg: RegistrationHandle,
        expires: u32,
    ) -> Result<(), EndpointError> {
        let via = self.new_via();
        let r = self
            .regs
            .get_mut(&reg.0)
            .ok_or(EndpointError::UnknownRegistration(reg))?;
        if r.tx.is_some() {
            return Err(EndpointError::RequestPending);
        }
        r.cseq = r.cseq.wrapping_add(1);
        let mut req = r.request.clone();
        req.headers.push_front(HeaderName::Via, via);
        req.headers.set(
            HeaderName::CSeq,
            Bytes::from(format!("{} REGISTER", r.cseq)),
        );
        req.headers
            .set(HeaderName::Expires, Bytes::from(expires.to_string()));
        let hop = r.next_hop;
        let id = self.start_client(now, req, hop, Owner::Register(reg.0));
        if let Some(r) = self.regs.get_mut(&reg.0) {
            r.tx = Some(id);
        }
        Ok(())
    }

    /// Forgets a registration (send `refresh_register(.., 0)` first to remove the binding).
    pub fn drop_registration(&mut self, reg: RegistrationHandle) {
        self.regs.remove(&reg.0);
    }

    fn call_mut(&mut self, call: CallHandle) -> Result<&mut Call, EndpointError> {
        match self.calls.get_mut(&call.0) {
            Some(c) if !c.terminated => Ok(c),
            _ => Err(EndpointError::UnknownCall(call)),
        }
    }

    /// Cancels our pending INVITE (§9.1). Before any provisional response the CANCEL waits for one. If a 2xx
    /// crosses the CANCEL, it is ACKed and BYE'd. The call ends with [`TerminationReason::Cancelled`].
    pub fn send_cancel(&mut self, now: Instant, call: CallHandle) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.is_uac || c.confirmed() {
            return Err(EndpointError::InvalidState);
        }
        if c.cancel != CancelState::None {
            return Ok(());
        }
        if !c.got_provisional {
            c.cancel = CancelState::Pending;
            return Ok(());
        }
        self.send_cancel_now(now, call.0);
        Ok(())
    }

    fn send_cancel_now(&mut self, now: Instant, h: u64) {
        let deadline = now + self.config.timers.timeout();
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        let Some(inv) = &c.invite else { return };
        let open = c
            .invite_tx
            .is_some_and(|t| self.clients.get(&t).is_some_and(|e| !e.tx.has_final()));
        if !open {
            return;
        }
        let mut cancel = Request::new(Method::Cancel, inv.uri.clone());
        if let Some(v) = inv.headers.values(&HeaderName::Via).next() {
            cancel.headers.push(HeaderName::Via, v);
        }
        cancel.headers.push(
            HeaderName::MaxForwards,
            Bytes::from(self.config.max_forwards.to_string()),
        );
        for r in inv.headers.get_all(&HeaderName::Route) {
            cancel.headers.push(HeaderName::Route, r.clone());
        }
        for n in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
            if let Some(v) = inv.headers.get(&n) {
                cancel.headers.push(n, v.clone());
            }
        }
        let seq = cseq_of(&inv.headers).map(|x| x.0).unwrap_or(1);
        cancel
            .headers
            .push(HeaderName::CSeq, Bytes::from(format!("{seq} CANCEL")));
        c.cancel = CancelState::Sent;
        c.cancel_deadline = Some(deadline);
        let hop = c.next_hop;
        self.start_client(now, cancel, hop, Owner::Cancel(h));
    }

    /// Ends the call. Before a final response to our INVITE this is [`Self::send_cancel`]. As UAS before the ACK
    /// for our 2xx, the BYE waits for the ACK (§15). The call ends at once with [`TerminationReason::LocalBye`].
    pub fn send_bye(&mut self, now: Instant, call: CallHandle) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.confirmed() {
            if c.is_uac {
                return self.send_cancel(now, call);
            }
            return Err(EndpointError::InvalidState);
        }
        if c.retrans.as_ref().is_some_and(|r| r.initial) {
            c.bye_pending = true;
        } else {
            self.send_bye_now(now, call.0);
        }
        self.terminate(now, call.0, TerminationReason::LocalBye);
        Ok(())
    }

    fn send_bye_now(&mut self, now: Instant, h: u64) {
        let _ = self.send_in_dialog(now, h, Method::Bye, None, Bytes::new());
    }

    fn send_in_dialog(
        &mut self,
        now: Instant,
        h: u64,
        method: Method,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<TxId, EndpointError> {
        let via = self.new_via();
        let contact = self.contact();
        let mf = self.config.max_forwards;
        let c = self
            .calls
            .get_mut(&h)
            .ok_or(EndpointError::UnknownCall(CallHandle(h)))?;
        let d = c.dialog.as_mut().ok_or(EndpointError::InvalidState)?;
        let seq = d.next_seq();
        let mut req = d
            .request(method.clone(), seq, via, &contact, mf)
            .ok_or(EndpointError::InvalidUri)?;
        if let Some(ct) = content_type {
            req.set_body(ct, body);
        }
        let hop = c.hop();
        let owner = if method == Method::Invite {
            Owner::ReInvite(h)
        } else {
            Owner::InDialog(h)
        };
        Ok(self.start_client(now, req, hop, owner))
    }

    /// Sends a re-INVITE with `sdp` (§14.1). The answer arrives as [`Event::Response`] with method INVITE; a 491
    /// is retried automatically after the RFC's random delay.
    pub fn send_reinvite(
        &mut self,
        now: Instant,
        call: CallHandle,
        sdp: Bytes,
    ) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.confirmed() {
            return Err(EndpointError::InvalidState);
        }
        if c.reinvite_tx.is_some() || c.glare_retry.is_some() || c.pending_invite.is_some() {
            return Err(EndpointError::RequestPending);
        }
        let ct = (!sdp.is_empty()).then_some("application/sdp");
        let id = self.send_in_dialog(now, call.0, Method::Invite, ct, sdp)?;
        if let Some(c) = self.calls.get_mut(&call.0) {
            c.reinvite_tx = Some(id);
        }
        Ok(())
    }

    /// Sends an UPDATE with `sdp` (RFC 3311). The answer arrives as [`Event::Response`] with method UPDATE.
    pub fn send_update(
        &mut self,
        now: Instant,
        call: CallHandle,
        sdp: Bytes,
    ) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.confirmed() {
            return Err(EndpointError::InvalidState);
        }
        if c.update_tx.is_some() {
            return Err(EndpointError::RequestPending);
        }
        let ct = (!sdp.is_empty()).then_some("application/sdp");
        let id = self.send_in_dialog(now, call.0, Method::Update, ct, sdp)?;
        if let Some(c) = self.calls.get_mut(&call.0) {
            c.update_tx = Some(id);
        }
        Ok(())
    }

    /// Sends an INFO (RFC 6086) with a body of `content_type`.
    pub fn send_info(
        &mut self,
        now: Instant,
        call: CallHandle,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.confirmed() {
            return Err(EndpointError::InvalidState);
        }
        let ct = (!body.is_empty()).then_some(content_type);
        self.send_in_dialog(now, call.0, Method::Info, ct, body)
            .map(|_| ())
    }

    /// Sends an in-dialog OPTIONS (a keep-alive probe).
    pub fn send_options(&mut self, now: Instant, call: CallHandle) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.confirmed() {
            return Err(EndpointError::InvalidState);
        }
        self.send_in_dialog(now, call.0, Method::Options, None, Bytes::new())
            .map(|_| ())
    }

    /// Answers the peer's pending INVITE: the initial one ([`Event::IncomingCall`]) or a re-INVITE
    /// ([`Event::Request`] with method INVITE). `status` 101–199 may be sent before the final one; a 2xx is
    /// retransmitted until the ACK ([`Event::Acked`]).
    pub fn answer_invite(
        &mut self,
        now: Instant,
        call: CallHandle,
        code: u16,
        sdp: Bytes,
    ) -> Result<(), EndpointError> {
        let st = status(code)?;
        if code == 100 {
            return Err(EndpointError::InvalidStatus(code));
        }
        let give_up = now + self.config.timers.timeout();
        let t1 = self.config.timers.t1;
        let id = self
            .call_mut(call)?
            .pending_invite
            .ok_or(EndpointError::NoPendingRequest)?;
        let Some(e) = self.servers.get(&id) else {
            self.call_mut(call)?.pending_invite = None;
            return Err(EndpointError::NoPendingRequest);
        };
        let req = e.request.clone();
        let (destination, transport) = e.tx.destination();
        let c = self.call_mut(call)?;
        let initial = c
            .dialog
            .as_ref()
            .is_none_or(|d| d.state != crate::sip::dialog::DialogState::Confirmed);
        let local_tag = c.local_tag.clone();
        if initial && st.is_provisional() && c.early.is_empty() {
            if let Some(d) = Dialog::uas(&req, local_tag.clone(), true) {
                c.early.push(d);
            }
        }
        let seq = cseq_of(&req.headers).map(|x| x.0).unwrap_or(0);
        if st.is_success() {
            if initial {
                let d = c
                    .early
                    .pop()
                    .or_else(|| Dialog::uas(&req, local_tag.clone(), false));
                if let Some(mut d) = d {
                    d.state = crate::sip::dialog::DialogState::Confirmed;
                    c.dialog = Some(d);
                }
            }
            c.pending_invite = None;
        } else if st.is_final() {
            c.pending_invite = None;
        }
        let mut payload = None;
        self.respond(now, id, code, Some(&local_tag), |r| {
            if !sdp.is_empty() {
                r.set_body("application/sdp", sdp);
            }
            payload = Some(r.to_bytes());
        });
        if st.is_success() {
            if let (Some(c), Some(payload)) = (self.calls.get_mut(&call.0), payload) {
                c.retrans = Some(Retrans2xx {
                    payload,
                    destination,
                    transport,
                    cseq: seq,
                    sent: 1,
                    next: now + t1,
                    give_up,
                    initial,
                });
            }
        } else if st.is_final() && initial {
            self.terminate(now, call.0, TerminationReason::Declined(st));
        }
        Ok(())
    }

    /// Answers the peer's pending UPDATE.
    pub fn answer_update(
        &mut self,
        now: Instant,
        call: CallHandle,
        code: u16,
        sdp: Bytes,
    ) -> Result<(), EndpointError> {
        let st = status(code)?;
        if !st.is_final() {
            return Err(EndpointError::InvalidStatus(code));
        }
        let c = self.call_mut(call)?;
        let id = c
            .pending_update
            .take()
            .ok_or(EndpointError::NoPendingRequest)?;
        let tag = c.local_tag.clone();
        self.respond(now, id, code, Some(&tag), |r| {
            if !sdp.is_empty() {
                r.set_body("application/sdp", sdp);
            }
        });
        Ok(())
    }
}

/// The lifetime a registrar granted: the first Contact's `expires` parameter, else the Expires header.
fn granted_expires(h: &Headers) -> Option<u32> {
    let from_contact = h.values(&HeaderName::Contact).next().and_then(|c| {
        let v = hdr::param(&c, "expires")?;
        std::str::from_utf8(v).ok()?.parse().ok()
    });
    from_contact.or_else(|| {
        std::str::from_utf8(h.get(&HeaderName::Expires)?)
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// Answers a 401/407 from `auth`: the header to add and its value, or `None` when we cannot or must not retry.
fn answer_challenge(
    auth: &mut DigestClient,
    request: &Request,
    resp: &Response,
    cnonce: &str,
) -> Option<(HeaderName, String)> {
    let (chal, answer_hdr) = match resp.status.as_u16() {
        401 => (HeaderName::WwwAuthenticate, HeaderName::Authorization),
        407 => (
            HeaderName::ProxyAuthenticate,
            HeaderName::ProxyAuthorization,
        ),
        _ => return None,
    };
    let challenge = resp.headers.get(&chal)?;
    let uri = request.uri.to_string();
    match auth.answer(challenge, request.method.as_str(), &uri, cnonce) {
        Ok(v) => Some((answer_hdr, v)),
        Err(e) => {
            tracing::debug!(error = %e, "not answering challenge");
            auth.request_done();
            None
        }
    }
}

/// Prepares a copy of a challenged request for re-sending: new top Via (branch), new CSeq, credentials.
fn resend_headers(req: &mut Request, via: Bytes, seq: u32, answer_hdr: HeaderName, value: String) {
    let others: Vec<Bytes> = req.headers.values(&HeaderName::Via).skip(1).collect();
    req.headers.remove(&HeaderName::Via);
    req.headers.push(HeaderName::Via, via);
    for v in others {
        req.headers.push(HeaderName::Via, v);
    }
    req.headers.set(
        HeaderName::CSeq,
        Bytes::from(format!("{seq} {}", req.method.as_str())),
    );
    req.headers.set(answer_hdr, Bytes::from(value));
}

/// The ACK for a non-2xx final response (§17.1.1.3): same Request-URI, top Via, Call-ID, From, Route and CSeq
/// number as the INVITE, To from the response.
fn non_2xx_ack(invite: &Request, resp: &Response) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    if let Some(v) = invite.headers.values(&HeaderName::Via).next() {
        ack.headers.push(HeaderName::Via, v);
    }
    if let Some(mf) = invite.headers.get(&HeaderName::MaxForwards) {
        ack.headers.push(HeaderName::MaxForwards, mf.clone());
    }
    for r in invite.headers.get_all(&HeaderName::Route) {
        ack.headers.push(HeaderName::Route, r.clone());
    }
    if let Some(v) = invite.headers.get(&HeaderName::From) {
        ack.headers.push(HeaderName::From, v.clone());
    }
    if let Some(v) = resp.headers.get(&HeaderName::To) {
        ack.headers.push(HeaderName::To, v.clone());
    }
    if let Some(v) = invite.headers.get(&HeaderName::CallId) {
        ack.headers.push(HeaderName::CallId, v.clone());
    }
    let seq = cseq_of(&invite.headers).map(|x| x.0).unwrap_or(1);
    ack.headers
        .push(HeaderName::CSeq, Bytes::from(format!("{seq} ACK")));
    ack
}
