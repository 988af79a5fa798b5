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
//! | unparsable request with Via, Call-ID and CSeq | stateless 400 (505, 513 as the codec decides) |
//! | request the codec's [`UaPolicy`] refuses (Require other than `timer`, body type, URI scheme, Max-Forwards 0) | 420/415/416/483 |
//! | beyond [`EndpointConfig::max_server_transactions`] | stateless 503 |
//!
//! RFC 3581: `received` and `rport` are filled in on the top Via of each request, and responses go to the source
//! address when `rport` was asked for (always on reliable transports).
//!
//! # Calls
//!
//! A call ([`CallHandle`]) is one INVITE dialog, as UAC ([`Endpoint::start_invite`]) or, when enabled, as UAS.
//! Forked early dialogs are tracked; the first 2xx wins and any later 2xx from another fork is ACKed and
//! immediately BYE'd (RFC 3261 §13.2.2.4). 401/407 challenges are answered from the call's credentials.
//!
//! Our INVITEs carry `Supported: 100rel, timer`. A provisional response with `Require: 100rel` and an `RSeq`
//! (RFC 3262) is acknowledged with a PRACK in its early dialog (`prack.rs`); retransmitted and out-of-order ones
//! are dropped. Responses are never checked against [`UaPolicy`]: their Require lists are not refused.
//! Session timers (RFC 4028) are the call layer's: the endpoint carries their headers (the `*_with` methods,
//! [`Endpoint::last_headers`], [`SessionExpires`]), and a 422 ends the call as `Rejected(422)` with the
//! `Min-SE` readable afterwards.
//!
//! A UAC call may be given a response deadline ([`Endpoint::set_response_deadline`]): when its INVITE has had no
//! response at all (not even 100 Trying) by then, the INVITE is no longer retransmitted and the call ends with
//! [`TerminationReason::Timeout`] long before Timer B, so the call layer can fail over to the next target (what
//! Kamailio's `fr_timer` does). A REGISTER in flight may be given one the same way
//! ([`Endpoint::set_register_response_deadline`]): it then reports [`Event::RegistrationTimeout`] at the deadline
//! instead of after Timer F.
//!
//! A send failure reported by the driver ([`Endpoint::handle_transport_error`]) fails the transactions sending
//! there at once (RFC 3261 §17.1.4); an initial INVITE then ends with [`TerminationReason::TransportError`], so the
//! call layer can try the next RFC 3263 target (`crate::net::dns`).
//!
//! Files: `mod.rs` holds the types, the transaction plumbing and timers; `timers.rs` the deadline-ordered tables
//! of transactions and calls; `incoming.rs` requests from the network; `responses.rs` responses to our requests;
//! `prack.rs` reliable provisionals; `session.rs` session-timer header values; `api.rs` the TU-facing calls.
//!
//! # Driving it
//!
//! ```
//! use rappel::sip::endpoint::{Endpoint, EndpointConfig, Event, InviteRequest};
//! use std::time::{Duration, Instant};
//!
//! let mut ep = Endpoint::new(EndpointConfig::new("192.0.2.10:5060".parse().unwrap()));
//! let now = Instant::now();
//! let call = ep
//!     .start_invite(now, InviteRequest {
//!         target: "sip:+33100000000@192.0.2.20".into(),
//!         from: "sip:rappel@example.com".into(),
//!         to: None,
//!         next_hop: "192.0.2.20:5060".parse().unwrap(),
//!         transport: None,
//!         sdp: "v=0\r\n".into(),
//!         credentials: None,
//!         extra_headers: Vec::new(),
//!     })
//!     .unwrap();
//! // The driver's loop: send what is queued, hand events to the call layer, sleep until the timeout.
//! let invite = ep.poll_transmit().unwrap();
//! assert_eq!(invite.destination, "192.0.2.20:5060".parse::<std::net::SocketAddr>().unwrap());
//! assert_eq!(ep.poll_timeout(), Some(now + Duration::from_millis(500)), "Timer A");
//! // Nobody answers: after 64*T1 the call ends.
//! let mut t = now;
//! while let Some(next) = ep.poll_timeout() {
//!     t = next;
//!     ep.handle_timeout(t);
//!     while ep.poll_transmit().is_some() {}
//!     if let Some(Event::Terminated { call: c, .. }) = ep.poll_event() {
//!         assert_eq!(c, call);
//!         break;
//!     }
//! }
//! assert_eq!(t - now, Duration::from_secs(32));
//! ```

mod api;
mod incoming;
mod prack;
mod responses;
mod session;
mod timers;

pub use session::{min_se, Refresher, SessionExpires};
use timers::{Deadline, TimedMap};

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

/// At most this many early dialogs, and this many surplus forks ACKed and BYE'd, per call.
const MAX_DIALOGS_PER_CALL: usize = 16;

/// Methods listed in Allow.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";

/// Option tags put in Supported on our INVITEs: reliable provisionals (RFC 3262, as UAC) and session timers
/// (RFC 4028, refreshed by the call layer).
const SUPPORTED: [&str; 2] = ["100rel", "timer"];

/// Whether the comma-separated option-tag list `v` (Supported, Require) holds `token` (case-insensitive).
fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Endpoint configuration. Build with [`EndpointConfig::new`] and the `&mut self` setters.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// T1, T2, T4.
    pub timers: TimerConfig,
    /// The address written in Via sent-by and Contact (the public address behind NAT, or the bound one).
    pub advertised_addr: SocketAddr,
    /// The transport used for requests we originate.
    pub transport: Transport,
    /// Seed for branches, tags, Call-IDs, cnonces and glare back-off. [`EndpointConfig::new`] draws it from the
    /// OS, because Call-IDs and branches must not repeat across restarts; tests set it for reproducible runs.
    pub rng_seed: u64,
    /// Max-Forwards on requests we originate.
    pub max_forwards: u8,
    /// Accept out-of-dialog INVITEs and hand them to the TU as [`Event::IncomingCall`]. Off by default: the engine
    /// originates calls, and INVITEs are answered 403.
    pub accept_invites: bool,
    /// The value of User-Agent / Server, if any.
    pub user_agent: Option<String>,
    /// At most this many live server transactions; new requests beyond it get a stateless 503. Default 10 000
    /// (a Timer J linger of 32 s makes that about 300 requests/s sustained).
    pub max_server_transactions: usize,
    /// Let the TU retry a re-INVITE refused with 491 (glare): the endpoint reports [`Event::Glare`] with the
    /// §14.1 retry time and sends nothing itself, so the TU can send a *new* offer then (RFC 3264 §8: a new
    /// `o=` version, and an SDP that accounts for whatever the peer's own re-INVITE changed meanwhile). Off by
    /// default: the endpoint re-sends the refused re-INVITE's body as it was.
    pub tu_glare_retry: bool,
}

impl EndpointConfig {
    /// A configuration advertising `addr`: UDP, default timers, a seed from OS entropy.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            timers: TimerConfig::default(),
            advertised_addr: addr,
            transport: Transport::Udp,
            rng_seed: rand::random(),
            max_forwards: 70,
            accept_invites: false,
            user_agent: None,
            max_server_transactions: 10_000,
            tu_glare_retry: false,
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
    /// Sets [`Self::tu_glare_retry`].
    pub fn tu_glare_retry(&mut self, v: bool) -> &mut Self {
        self.tu_glare_retry = v;
        self
    }
    /// Sets [`Self::accept_invites`].
    pub fn accept_invites(&mut self, v: bool) -> &mut Self {
        self.accept_invites = v;
        self
    }
    /// Sets the cap on live server transactions.
    pub fn max_server_transactions(&mut self, n: usize) -> &mut Self {
        self.max_server_transactions = n;
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
    /// How to reach `next_hop` (UDP, TCP); [`EndpointConfig::transport`] when `None`.
    pub transport: Option<Transport>,
    /// Requested binding lifetime in seconds.
    pub expires: u32,
    /// Credentials for 401/407 challenges.
    pub credentials: Option<Credentials>,
    /// Extra headers on every REGISTER of the registration, e.g. the `Route: <sip:proxy;lr>` of an outbound proxy
    /// (RFC 3261 §8.1.2: a preloaded route set, as on our INVITEs).
    pub extra_headers: Vec<(HeaderName, Bytes)>,
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
    /// How to reach `next_hop` (UDP, TCP): the whole call (ACK, BYE, re-INVITEs...) uses it, and Via and
    /// Contact name it. [`EndpointConfig::transport`] when `None`.
    pub transport: Option<Transport>,
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
    /// No final response (Timer B), no response at all by the call's response deadline
    /// ([`Endpoint::set_response_deadline`]), or a re-INVITE timed out (§14.1: BYE sent).
    Timeout,
    /// We answered 2xx and no ACK came within 64·T1 (§13.3.1.4: BYE sent).
    AckTimeout,
    /// The peer answered 481 to an in-dialog request: the dialog no longer exists there.
    DialogGone,
    /// We rejected the peer's INVITE with this status.
    Declined(StatusCode),
    /// The transport could not send the INVITE (RFC 3261 §17.1.4: ICMP unreachable, TCP connection refused),
    /// reported through [`Endpoint::handle_transport_error`]. The next DNS target may be tried.
    TransportError,
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
    /// re-INVITE is not reported: the endpoint retries by itself after the §14.1 delay, or reports
    /// [`Event::Glare`] with [`EndpointConfig::tu_glare_retry`].
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
    /// Our re-INVITE got 491 (glare, RFC 3261 §14.1) and [`EndpointConfig::tu_glare_retry`] is on: send a new
    /// re-INVITE (a fresh offer) at `retry_at`, a random time in the §14.1 window for our role. Until then
    /// the peer's re-INVITEs are handed to the TU as usual.
    Glare {
        /// The call.
        call: CallHandle,
        /// When to retry.
        retry_at: Instant,
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
    /// A PRACK (RFC 3262) in an early dialog of a call.
    Prack(u64),
    /// A BYE to a surplus fork or a request nobody waits for.
    Orphan,
}

#[derive(Debug)]
struct ClientEntry {
    tx: ClientTransaction,
    owner: Owner,
    request: Request,
    key: (String, Method),
    /// A response (any) matched this transaction.
    answered: bool,
    /// Give the transaction up, as if it timed out, when no response at all has come by then
    /// ([`Endpoint::set_register_response_deadline`]).
    silent_deadline: Option<Instant>,
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

impl Deadline for ClientEntry {
    fn deadline(&self) -> Option<Instant> {
        match (self.tx.poll_timeout(), self.silent_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Deadline for ServerEntry {
    fn deadline(&self) -> Option<Instant> {
        self.tx.poll_timeout()
    }
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
    transport: Transport,
    cseq: u32,
    auth: Option<DigestClient>,
    tx: Option<TxId>,
    /// The headers of the last final response, for the TU (Min-Expires of a 423, Contact list of a 2xx).
    last_headers: Option<Headers>,
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
    /// The transport of every request and ACK of the call (the INVITE's, or the one the peer's INVITE came on).
    transport: Transport,
    auth: Option<DigestClient>,
    // UAC initial INVITE
    invite: Option<Request>,
    invite_tx: Option<TxId>,
    got_provisional: bool,
    cancel: CancelState,
    cancel_deadline: Option<Instant>,
    /// Give up the initial INVITE if no response at all has come by then ([`Endpoint::set_response_deadline`]).
    silent_deadline: Option<Instant>,
    early: Vec<Dialog>,
    dialog: Option<Dialog>,
    /// ACK for the 2xx of the INVITE / re-INVITE: (CSeq, bytes), re-sent on 2xx retransmissions.
    /// ACKs for 2xx responses (initial INVITE, latest re-INVITE) by CSeq, re-sent on 2xx retransmissions.
    acks: Vec<(u32, Bytes)>,
    /// Surplus forks already ACKed and BYE'd: (remote tag, next hop, ACK) to re-ACK their retransmissions.
    forks: Vec<(Bytes, SocketAddr, Bytes)>,
    // re-INVITE of ours
    reinvite_tx: Option<TxId>,
    glare_retry: Option<(Instant, Bytes)>,
    /// The extra headers of our latest re-INVITE (Session-Expires...), re-used when it is retried after 491.
    reinvite_headers: Vec<(HeaderName, Bytes)>,
    update_tx: Option<TxId>,
    /// RFC 3262: the RSeq of the last reliable provisional response acknowledged, per early dialog (remote tag).
    rseq: Vec<(Bytes, u32)>,
    /// The headers of the last message reported to the TU for this call (see [`Endpoint::last_headers`]).
    last_headers: Option<Headers>,
    // requests of the peer waiting for the TU
    pending_invite: Option<TxId>,
    pending_update: Option<TxId>,
    retrans: Option<Retrans2xx>,
    bye_pending: bool,
    terminated: bool,
    expire_at: Option<Instant>,
}

impl Call {
    fn new(is_uac: bool, local_tag: Bytes, next_hop: SocketAddr, transport: Transport) -> Self {
        Self {
            is_uac,
            local_tag,
            next_hop,
            transport,
            auth: None,
            invite: None,
            invite_tx: None,
            got_provisional: false,
            cancel: CancelState::None,
            cancel_deadline: None,
            silent_deadline: None,
            early: Vec::new(),
            dialog: None,
            acks: Vec::new(),
            forks: Vec::new(),
            reinvite_tx: None,
            glare_retry: None,
            reinvite_headers: Vec::new(),
            update_tx: None,
            rseq: Vec::new(),
            last_headers: None,
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

impl Deadline for Call {
    /// The earliest of the 2xx retransmission, glare retry, CANCEL give-up, silent-target and linger deadlines.
    fn deadline(&self) -> Option<Instant> {
        [
            self.retrans.as_ref().map(|r| r.next.min(r.give_up)),
            self.glare_retry.as_ref().map(|g| g.0),
            self.cancel_deadline,
            self.silent_deadline,
            self.expire_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// (Call-ID, local tag) → call, with the reverse mapping so a call's entries go in O(1) when it is dropped.
#[derive(Debug, Default)]
struct DialogIndex {
    by_key: HashMap<(Bytes, Bytes), u64>,
    by_call: HashMap<u64, Vec<(Bytes, Bytes)>>,
}

impl DialogIndex {
    fn insert(&mut self, key: (Bytes, Bytes), call: u64) {
        if let Some(old) = self.by_key.insert(key.clone(), call) {
            if let Some(keys) = self.by_call.get_mut(&old) {
                keys.retain(|k| *k != key);
            }
        }
        self.by_call.entry(call).or_default().push(key);
    }

    fn get(&self, key: &(Bytes, Bytes)) -> Option<&u64> {
        self.by_key.get(key)
    }

    /// Forgets every key of `call`.
    fn remove_call(&mut self, call: u64) {
        for key in self.by_call.remove(&call).unwrap_or_default() {
            if self.by_key.get(&key) == Some(&call) {
                self.by_key.remove(&key);
            }
        }
    }
}

/// The sans-IO SIP endpoint. See the module docs.
#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    policy: UaPolicy,
    rng: SmallRng,
    next_id: u64,
    clients: TimedMap<ClientEntry>,
    client_index: HashMap<(String, Method), TxId>,
    servers: TimedMap<ServerEntry>,
    server_index: HashMap<ServerKey, TxId>,
    calls: TimedMap<Call>,
    regs: BTreeMap<u64, Registration>,
    /// (Call-ID, local tag) → call.
    dialog_index: DialogIndex,
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
        // Requests from the peer may require session timers (the call layer answers refreshes with
        // `answer_invite_with`); 100rel as UAS is not implemented, so a Require for it gets 420.
        let policy = UaPolicy {
            supported: vec!["timer".into()],
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
            clients: TimedMap::new(),
            client_index: HashMap::new(),
            servers: TimedMap::new(),
            server_index: HashMap::new(),
            calls: TimedMap::new(),
            regs: BTreeMap::new(),
            dialog_index: DialogIndex::default(),
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

    /// A Via for a new request sent over `transport`.
    fn new_via(&mut self, transport: Transport) -> Bytes {
        let branch = self.token();
        Bytes::from(format!(
            "SIP/2.0/{} {};branch={BRANCH_COOKIE}{branch};rport",
            transport.via_token(),
            self.config.advertised_addr
        ))
    }

    /// Our Contact for a request or response sent over `transport`.
    fn contact(&self, transport: Transport) -> Bytes {
        let t = match transport {
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
        self.flush_timers();
        self.outbox.pop_front()
    }

    /// The next event for the TU.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.flush_timers();
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called. Logarithmic in the number of live transactions and
    /// calls (they are kept ordered by deadline, see `timers.rs`), plus the few touched since the last input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.clients.next_deadline(),
            self.servers.next_deadline(),
            self.calls.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The transport of call `h` (the configured one for a call that is gone).
    fn call_transport(&self, h: u64) -> Transport {
        self.calls
            .get(&h)
            .map_or(self.config.transport, |c| c.transport)
    }

    /// Re-files the transactions and calls changed since the last call by deadline.
    fn flush_timers(&mut self) {
        self.clients.flush();
        self.servers.flush();
        self.calls.flush();
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
        transport: Transport,
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
            transport,
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
                answered: false,
                silent_deadline: None,
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

    /// Drops client transaction `id` (no more retransmissions) and tells its owner it timed out: nothing at all
    /// came back by its response deadline.
    fn abandon_client(&mut self, now: Instant, id: TxId) {
        let Some(e) = self.clients.remove(&id) else {
            return;
        };
        if self.client_index.get(&e.key) == Some(&id) {
            self.client_index.remove(&e.key);
        }
        self.on_client_timeout(now, e.owner, e.request.method);
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
                let Some(c) = self.calls.get(&h) else { return };
                if !c.confirmed() {
                    // A CANCEL still waiting for a provisional response counts as the TU's cancel.
                    let reason = if c.cancel == CancelState::None {
                        TerminationReason::Timeout
                    } else {
                        TerminationReason::Cancelled
                    };
                    self.terminate(now, h, reason);
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
                c.silent_deadline = None;
                c.expire_at = Some(now + linger);
                self.events.push_back(Event::Terminated {
                    call: CallHandle(h),
                    reason,
                });
            }
        }
    }

    /// Keeps `headers` as the last ones reported for call `h` ([`Self::last_headers`]).
    fn note_headers(&mut self, h: u64, headers: &Headers) {
        if let Some(c) = self.calls.get_mut(&h) {
            c.last_headers = Some(headers.clone());
        }
    }

    fn send_raw(&mut self, destination: SocketAddr, transport: Transport, payload: Bytes) {
        self.outbox.push_back(Transmit {
            destination,
            transport,
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

    /// The transport failed to send to `destination` over `transport` (ICMP unreachable, connection refused, no
    /// route). RFC 3261 §17.1.4: every client transaction still waiting for a final response from there ends as
    /// if it timed out, except that an initial INVITE ends with [`TerminationReason::TransportError`] so the call
    /// layer can try the next DNS target. Server transactions are left alone (their retransmissions may still
    /// get through, and a request's sender retries on its own).
    pub fn handle_transport_error(
        &mut self,
        now: Instant,
        destination: SocketAddr,
        transport: Transport,
    ) {
        let failed: Vec<TxId> = self
            .clients
            .iter()
            .filter(|(_, e)| e.tx.destination() == (destination, transport) && !e.tx.has_final())
            .map(|(k, _)| *k)
            .collect();
        for id in failed {
            let Some(e) = self.clients.get_mut(&id) else {
                continue;
            };
            if let Owner::Invite(h) = e.owner {
                // Terminate with the typed reason before the transaction's Timeout event reports `Timeout`.
                let reason = match self.calls.get(&h) {
                    Some(c) if c.cancel != CancelState::None => TerminationReason::Cancelled,
                    _ => TerminationReason::TransportError,
                };
                let open = self
                    .calls
                    .get(&h)
                    .is_some_and(|c| !c.confirmed() && c.invite_tx == Some(id));
                if open {
                    self.terminate(now, h, reason);
                }
            }
            if let Some(e) = self.clients.get_mut(&id) {
                e.tx.handle_transport_error();
            }
            self.drain_client(now, id);
        }
    }

    /// Call when `now` has reached [`Self::poll_timeout`]. Visits only the transactions and calls that are due:
    /// client transactions first, then server transactions, then calls, each in creation order.
    pub fn handle_timeout(&mut self, now: Instant) {
        for id in self.clients.due(now) {
            let silent = self
                .clients
                .get(&id)
                .is_some_and(|e| e.silent_deadline.is_some_and(|t| t <= now));
            if silent {
                self.abandon_client(now, id);
                continue;
            }
            if let Some(e) = self.clients.get_mut(&id) {
                e.tx.handle_timeout(now);
            }
            self.drain_client(now, id);
        }
        for id in self.servers.due(now) {
            if let Some(e) = self.servers.get_mut(&id) {
                e.tx.handle_timeout(now);
            }
            self.drain_server(id);
        }
        // A call's timeout changes no other call's deadlines, so the calls due now are all the calls it acts on.
        for h in self.calls.due(now) {
            self.call_timeout(now, h);
        }
        self.flush_timers();
    }

    fn call_timeout(&mut self, now: Instant, h: u64) {
        let timers = self.config.timers;
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        if c.expire_at.is_some_and(|t| t <= now) {
            self.calls.remove(&h);
            self.dialog_index.remove_call(h);
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
                let extra = c.reinvite_headers.clone();
                if let Err(EndpointError::RequestPending) =
                    self.send_reinvite_with(now, CallHandle(h), sdp.clone(), extra)
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
        if c.silent_deadline.is_some_and(|t| t <= now) {
            // Nothing at all came back from the next hop: stop retransmitting the INVITE (no CANCEL is possible
            // without a provisional response, §9.1) and end the call as if Timer B had fired.
            c.silent_deadline = None;
            if !c.confirmed() && !c.got_provisional {
                let reason = if c.cancel == CancelState::None {
                    TerminationReason::Timeout
                } else {
                    TerminationReason::Cancelled
                };
                if let Some(id) = c.invite_tx.take() {
                    if let Some(e) = self.clients.remove(&id) {
                        if self.client_index.get(&e.key) == Some(&id) {
                            self.client_index.remove(&e.key);
                        }
                    }
                }
                self.terminate(now, h, reason);
                return;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialog_index_forgets_only_the_dropped_calls_keys() {
        let k = |c: &'static str, t: &'static str| {
            (
                Bytes::from_static(c.as_bytes()),
                Bytes::from_static(t.as_bytes()),
            )
        };
        let mut ix = DialogIndex::default();
        ix.insert(k("a", "1"), 1);
        ix.insert(k("b", "1"), 1);
        ix.insert(k("c", "2"), 2);
        // A key taken over by another call stays with that call when the first one goes.
        ix.insert(k("b", "1"), 3);
        ix.remove_call(1);
        assert_eq!(ix.get(&k("a", "1")), None);
        assert_eq!(ix.get(&k("b", "1")), Some(&3));
        assert_eq!(ix.get(&k("c", "2")), Some(&2));
        ix.remove_call(3);
        assert_eq!(ix.get(&k("b", "1")), None);
        assert_eq!(ix.by_call.len(), 1, "only call 2 has keys left");
    }
}
