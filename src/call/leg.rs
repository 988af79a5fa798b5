//! One outgoing call leg (UAC) as a sans-IO state machine.
//!
//! A [`LegCore`] sits above the SIP [`Endpoint`](crate::sip::endpoint::Endpoint): it consumes the endpoint's
//! [`Event`]s for its [`CallHandle`] and the application's commands (hold, unhold, hang up), owns the leg's SDP
//! state ([`LocalSession`], the last offer, what was negotiated), and gives out [`LegCommand`]s (what to ask of
//! the endpoint and of the relay), [`LegEvent`]s (what the application sees) and one timeout
//! ([`LegCore::poll_timeout`]): the ring timeout and the RFC 4028 session timer.
//!
//! Drain order after every input: [`LegCore::poll_command`] until `None`, then [`LegCore::poll_event`], then
//! re-read [`LegCore::poll_timeout`].
//!
//! # Session timers (RFC 4028), as UAC
//! With [`SessionTimerOptions`] the INVITE carries `Supported: timer`, `Session-Expires: N;refresher=uac` and
//! `Min-SE`. A 422 answer is retried (at most twice) with Min-SE raised to the 422's and Session-Expires to at
//! least that, in the same Call-ID and From tag with the next CSeq and a new branch (RFC 4028 §7.4, RFC 3261
//! §8.1.3.5: [`LegCommand::Invite::retry_of`]). The 2xx's Session-Expires
//! decides: when we are the refresher we refresh (re-INVITE or UPDATE with an unchanged SDP, so the `o=` version
//! stays, RFC 3264 §8) at half the interval; either way, with no refresh seen by `interval − min(32 s,
//! interval/3)` we send BYE (§10). A re-INVITE or UPDATE from the peer counts as a refresh. Without
//! Session-Expires in the 2xx there is no timer (§7.4).
//!
//! # Hold
//! [`LegCore::hold`] re-offers our SDP `sendonly`, [`LegCore::unhold`] `sendrecv` (RFC 3264 §8.4); the outcome
//! comes back as [`LegCommand::Done`]. A re-INVITE from the peer is answered at once; when it makes our side
//! `recvonly`/`inactive` (or uses `c=0.0.0.0`), the peer is holding us: [`LegEvent::RemoteHold`].
//!
//! # DTMF as SIP INFO
//! [`LegCore::send_dtmf_info`] queues digits for `application/dtmf-relay` INFO requests and sends them one at a
//! time: the next INFO only after the previous one's final response (or its timeout). Several INFOs in flight at
//! once can arrive out of order over UDP (a retransmission of the first after the second), and a peer refuses a
//! lower CSeq with 500. Each call's outcome comes as [`LegCommand::Done`] with [`Op::DtmfInfo`] once its last
//! digit was answered; the queue is capped at [`MAX_PENDING_DTMF`] digits ([`CallError::DtmfQueueFull`]).
//!
//! # Legs that are not SIP calls
//! A browser (WebRTC) leg has no SIP dialog but is otherwise a leg like any other (relay, players, bridges).
//! [`LegCore::answered_elsewhere`] creates it answered; [`LegCore::hangup`] then asks for [`LegCommand::Bye`]
//! (the driver closes the peer connection instead), and the driver reports the end with
//! [`LegCore::ended_elsewhere`]. Hold and re-offers need SIP: they are refused with
//! [`CallError::Unsupported`].

use super::cdr::{CdrTimes, EndCause, HangupBy};
use super::{CallError, LegEvent};
use crate::media::dtmf::Digit;
use crate::sdp::{Codec, Direction, LocalSession, Negotiated, Sdp};
use crate::sip::endpoint::{CallHandle, Event, TerminationReason};
use crate::sip::message::{HeaderName, Headers, Method};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// DTMF digits a leg may have pending (being sent or queued, calls not yet answered); a call that would go
/// beyond fails with [`CallError::DtmfQueueFull`]. A call of no digits counts as one.
pub const MAX_PENDING_DTMF: usize = 64;

/// At most this many 422 retries.
const MAX_422_RETRIES: u32 = 2;

/// How the session is refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshMethod {
    /// A re-INVITE with the unchanged SDP.
    Reinvite,
    /// An UPDATE (RFC 3311) with the unchanged SDP.
    Update,
}

/// RFC 4028 session timer settings for a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimerOptions {
    /// The Session-Expires we ask for (seconds, at least 90). Default 1800.
    pub expires: u32,
    /// Our Min-SE (seconds, at least 90). Default 90.
    pub min_se: u32,
    /// Refresh by re-INVITE or UPDATE. Default re-INVITE.
    pub refresh: RefreshMethod,
}

impl Default for SessionTimerOptions {
    fn default() -> Self {
        Self {
            expires: 1800,
            min_se: 90,
            refresh: RefreshMethod::Reinvite,
        }
    }
}

/// What a leg needs to start.
#[derive(Debug, Clone)]
pub struct LegSetup {
    /// The leg's id.
    pub id: u64,
    /// The Request-URI (for the CDR).
    pub target: String,
    /// Our RTP address (from the relay) for the SDP.
    pub local_rtp: SocketAddr,
    /// Codecs to offer, in preference order (include telephone-event for DTMF).
    pub codecs: Vec<Codec>,
    /// CANCEL when not answered within this.
    pub ring_timeout: Option<Duration>,
    /// Session timer, if wanted.
    pub session_timer: Option<SessionTimerOptions>,
    /// The SDP `o=` session id.
    pub sdp_session_id: u64,
    /// Wall-clock start for the CDR (ms since the Unix epoch).
    pub start_unix_ms: u64,
}

/// An operation of ours whose outcome comes back as [`LegCommand::Done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`LegCore::hold`].
    Hold,
    /// [`LegCore::unhold`].
    Unhold,
    /// [`LegCore::reoffer`] (e.g. codec alignment for a bridge).
    Reoffer,
    /// [`LegCore::send_dtmf_info`]: one call's digits were all sent and answered (the first refusal or timeout
    /// among them is the result).
    DtmfInfo,
}

/// What the leg asks of the endpoint and the relay.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LegCommand {
    /// Place the INVITE (initial, or again after a 422) with this offer and these extra headers; then call
    /// [`LegCore::attach`] with the new handle.
    Invite {
        /// SDP offer.
        body: Bytes,
        /// Session-timer headers.
        headers: Vec<(HeaderName, Bytes)>,
        /// A retry after a 422: the failed call, whose Call-ID and From tag the new INVITE keeps with the next
        /// CSeq ([`crate::sip::endpoint::Endpoint::retry_invite`], RFC 4028 §7.4).
        retry_of: Option<CallHandle>,
    },
    /// CANCEL the pending INVITE.
    Cancel,
    /// Send BYE.
    Bye,
    /// Send a re-INVITE with this SDP.
    Reinvite(Bytes),
    /// Send an UPDATE with this SDP.
    Update(Bytes),
    /// Send an in-dialog INFO (DTMF as `application/dtmf-relay`); its final response goes to
    /// [`LegCore::handle_sip`] (or [`LegCore::info_not_sent`] when it could not be sent). Never two at once.
    Info {
        /// The Content-Type.
        content_type: &'static str,
        /// The body (`Signal=5\r\nDuration=250\r\n`).
        body: Bytes,
    },
    /// Answer the peer's re-INVITE.
    AnswerReinvite {
        /// Status.
        code: u16,
        /// SDP answer (or offer, when the re-INVITE had none).
        body: Bytes,
    },
    /// Answer the peer's UPDATE.
    AnswerUpdate {
        /// Status.
        code: u16,
        /// SDP answer.
        body: Bytes,
    },
    /// Point the relay leg at the peer's media (from SDP).
    Remote {
        /// RTP address.
        rtp: SocketAddr,
        /// RTCP address.
        rtcp: SocketAddr,
        /// The peer's telephone-event payload type.
        telephone_event_pt: Option<u8>,
        /// The G.711 law of the negotiated audio codec (`None` for another codec): the relay transcodes
        /// between bridged legs of different laws.
        law: Option<crate::media::g711::Law>,
    },
    /// The peer stops sending (hold either way): suspend (true) or resume (false) the inactivity watchdog.
    MediaHold(bool),
    /// One of our operations finished.
    Done {
        /// Which.
        op: Op,
        /// Its outcome.
        result: Result<(), CallError>,
    },
}

/// Where the leg is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, INVITE not sent yet.
    Idle,
    /// INVITE sent, no 2xx yet.
    Calling,
    /// Answered.
    Answered,
    /// Ended: no more events.
    Ended,
}

/// One entry of the INFO DTMF queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InfoItem {
    Digit(Digit),
    /// The end of one [`LegCore::send_dtmf_info`] call: report it.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Op(Op),
    Refresh,
    /// Re-offering what was negotiated before: the peer accepted `Op`'s offer with an answer that kept no audio
    /// codec (see [`LegCore::handle_sip`]).
    Restore(Op),
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    interval: Duration,
    we_refresh: bool,
    refresh_at: Option<Instant>,
    expire_at: Instant,
}

/// The leg state machine. See the module docs.
#[derive(Debug)]
pub struct LegCore {
    setup: LegSetup,
    phase: Phase,
    call: Option<CallHandle>,
    call_id: Option<String>,
    session: LocalSession,
    last_offer: Option<Sdp>,
    /// We answered an offer-less re-INVITE with an offer: the answer comes in the ACK.
    offer_in_2xx: bool,
    negotiated: Option<Negotiated>,
    /// Our own hold (we sent sendonly).
    held: bool,
    /// The peer holds us.
    remote_held: bool,
    pending: Option<Pending>,
    /// Codecs and direction of the pending re-offer, to build it anew when retried after a 491.
    pending_offer: Option<(Vec<Codec>, Direction)>,
    /// When to retry the pending re-offer refused with 491 ([`Event::Glare`]).
    glare_at: Option<Instant>,
    ring_deadline: Option<Instant>,
    ringing_seen: bool,
    early_seen: bool,
    session_expires: u32,
    /// The Min-SE we send: ours, raised to the largest Min-SE of the 422s we got (RFC 4028 §7.4).
    min_se: u32,
    retries_422: u32,
    timer: Option<Timer>,
    local_cause: Option<EndCause>,
    sip_status: Option<u16>,
    times: CdrTimes,
    commands: VecDeque<LegCommand>,
    events: VecDeque<LegEvent>,
    /// Not a SIP call (see the module docs).
    elsewhere: bool,
    /// DTMF digits waiting to go as INFO, with the end of each call.
    info_queue: VecDeque<InfoItem>,
    /// An INFO is sent and not yet answered.
    info_in_flight: bool,
    /// The first failure among the current call's INFOs.
    info_error: Option<CallError>,
}

impl LegCore {
    /// A leg created at `now`; nothing is sent until [`Self::start`].
    pub fn new(now: Instant, setup: LegSetup) -> Self {
        let session = LocalSession::new(setup.sdp_session_id, setup.local_rtp);
        let se = setup.session_timer.map_or(0, |t| t.expires.max(90));
        let min_se = setup.session_timer.map_or(90, |t| t.min_se.max(90));
        Self {
            setup,
            phase: Phase::Idle,
            call: None,
            call_id: None,
            session,
            last_offer: None,
            offer_in_2xx: false,
            negotiated: None,
            held: false,
            remote_held: false,
            pending: None,
            pending_offer: None,
            glare_at: None,
            ring_deadline: None,
            ringing_seen: false,
            early_seen: false,
            session_expires: se,
            min_se,
            retries_422: 0,
            timer: None,
            local_cause: None,
            sip_status: None,
            times: CdrTimes::new(now),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            elsewhere: false,
            info_queue: VecDeque::new(),
            info_in_flight: false,
            info_error: None,
        }
    }

    /// A leg whose call was set up outside SIP (a browser leg), answered at `now` with `negotiated` as its
    /// media. [`LegEvent::Answered`] is its first event; no [`LegCommand::Remote`] is given (the driver points the
    /// relay leg itself).
    pub fn answered_elsewhere(now: Instant, setup: LegSetup, negotiated: Negotiated) -> Self {
        let mut l = Self::new(now, setup);
        l.elsewhere = true;
        l.phase = Phase::Answered;
        l.times.answer = Some(now);
        l.negotiated = Some(negotiated);
        l.events.push_back(LegEvent::Answered);
        l
    }

    /// Whether this leg was set up outside SIP ([`Self::answered_elsewhere`]).
    pub fn is_elsewhere(&self) -> bool {
        self.elsewhere
    }

    /// A leg set up outside SIP ended (`by` us after [`Self::hangup`], or by the peer): [`LegEvent::Ended`]
    /// follows, with the cause we chose when we hung up.
    pub fn ended_elsewhere(&mut self, now: Instant, cause: EndCause, by: HangupBy) {
        if !self.elsewhere || self.phase == Phase::Ended {
            return;
        }
        let cause = match by {
            HangupBy::Local => self.local_cause.unwrap_or(cause),
            HangupBy::Remote => cause,
        };
        self.end(now, cause, by);
    }

    /// The leg id.
    pub fn id(&self) -> u64 {
        self.setup.id
    }

    /// Where the leg is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The endpoint call handle of the current INVITE, once attached.
    pub fn call(&self) -> Option<CallHandle> {
        self.call
    }

    /// What was negotiated with the peer (the latest offer/answer), once answered or in early media.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Whether we hold the peer.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Whether the peer holds us.
    pub fn is_remote_held(&self) -> bool {
        self.remote_held
    }

    /// Sends the INVITE: queues [`LegCommand::Invite`] and starts the ring timeout.
    pub fn start(&mut self, now: Instant) {
        if self.phase != Phase::Idle {
            return;
        }
        self.phase = Phase::Calling;
        self.ring_deadline = self.setup.ring_timeout.map(|d| now + d);
        self.send_invite(None);
    }

    fn send_invite(&mut self, retry_of: Option<CallHandle>) {
        let offer = self.session.offer(&self.setup.codecs, Direction::SendRecv);
        let body = Bytes::from(offer.to_bytes());
        self.last_offer = Some(offer);
        let mut headers = Vec::new();
        if self.setup.session_timer.is_some() {
            headers.push((
                HeaderName::SessionExpires,
                Bytes::from(format!("{};refresher=uac", self.session_expires)),
            ));
            headers.push((HeaderName::MinSe, Bytes::from(self.min_se.to_string())));
        }
        self.commands.push_back(LegCommand::Invite {
            body,
            headers,
            retry_of,
        });
    }

    /// The endpoint accepted the INVITE as `call` (with its Call-ID, for the CDR).
    pub fn attach(&mut self, call: CallHandle, call_id: Option<String>) {
        self.call = Some(call);
        if call_id.is_some() {
            self.call_id = call_id;
        }
    }

    /// The INVITE could not be placed (bad URI): the leg ends with [`EndCause::Error`].
    pub fn invite_failed(&mut self, now: Instant) {
        self.local_cause = Some(EndCause::Error);
        self.end(now, EndCause::Error, HangupBy::Local);
    }

    /// Hung up before any INVITE went out (its next hop was still being resolved): the leg ends now as
    /// [`TerminationReason::Cancelled`] would end it.
    pub fn abandon(&mut self, now: Instant) {
        if self.phase == Phase::Calling && self.call.is_none() {
            self.terminated(now, TerminationReason::Cancelled, None);
        }
    }

    /// Hangs up: CANCEL before an answer, BYE after. The leg ends when the endpoint reports the call
    /// terminated.
    pub fn hangup(&mut self, cause: EndCause) {
        match self.phase {
            Phase::Calling => {
                self.local_cause.get_or_insert(cause);
                self.commands.push_back(LegCommand::Cancel);
            }
            Phase::Answered => {
                self.local_cause.get_or_insert(cause);
                self.commands.push_back(LegCommand::Bye);
            }
            Phase::Idle | Phase::Ended => {}
        }
    }

    fn offer_codecs(&self) -> Vec<Codec> {
        let mut v = Vec::with_capacity(self.setup.codecs.len());
        if let Some(n) = &self.negotiated {
            v.push(n.codec.clone());
        }
        for c in &self.setup.codecs {
            if !v.iter().any(|x| x.same_codec(c) && x.name == c.name) {
                v.push(c.clone());
            }
        }
        v
    }

    fn our_direction(&self) -> Direction {
        if self.held {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        }
    }

    fn reinvite(
        &mut self,
        codecs: &[Codec],
        dir: Direction,
        what: Pending,
    ) -> Result<(), CallError> {
        if self.phase != Phase::Answered {
            return Err(CallError::NotAnswered);
        }
        if self.pending.is_some() {
            return Err(CallError::Busy);
        }
        self.pending = Some(what);
        self.pending_offer = Some((codecs.to_vec(), dir));
        self.send_offer(codecs, dir, what);
        Ok(())
    }

    /// Builds an offer and queues the re-INVITE (or UPDATE, for a refresh so configured) carrying it.
    fn send_offer(&mut self, codecs: &[Codec], dir: Direction, what: Pending) {
        let offer = self.session.offer(codecs, dir);
        let body = Bytes::from(offer.to_bytes());
        self.last_offer = Some(offer);
        let use_update = what == Pending::Refresh
            && self
                .setup
                .session_timer
                .is_some_and(|t| t.refresh == RefreshMethod::Update);
        self.commands.push_back(if use_update {
            LegCommand::Update(body)
        } else {
            LegCommand::Reinvite(body)
        });
    }

    /// The glare back-off is over: re-offer, as a new offer (new `o=` version, RFC 3264 §8), built now so that
    /// it accounts for anything the peer's own re-INVITE changed meanwhile.
    fn retry_after_glare(&mut self) {
        let (Some(what), Some((codecs, dir))) = (self.pending, self.pending_offer.clone()) else {
            return;
        };
        if self.phase != Phase::Answered {
            return;
        }
        self.session.bump_version();
        self.send_offer(&codecs, dir, what);
    }

    /// Puts the peer on hold (re-INVITE `sendonly`). The outcome comes as [`LegCommand::Done`].
    pub fn hold(&mut self) -> Result<(), CallError> {
        if self.elsewhere {
            return Err(CallError::Unsupported);
        }
        let codecs = self.offer_codecs();
        self.reinvite(&codecs, Direction::SendOnly, Pending::Op(Op::Hold))
    }

    /// Takes the peer off hold (re-INVITE `sendrecv`).
    pub fn unhold(&mut self) -> Result<(), CallError> {
        if self.elsewhere {
            return Err(CallError::Unsupported);
        }
        let codecs = self.offer_codecs();
        self.reinvite(&codecs, Direction::SendRecv, Pending::Op(Op::Unhold))
    }

    /// Re-offers with only `codecs` (a bridge aligning this leg's codec with the other leg's). When the peer
    /// accepts with an answer that keeps none of their audio codecs, the leg re-offers the codec it had and the
    /// outcome is [`CallError::CodecRefused`].
    pub fn reoffer(&mut self, codecs: &[Codec]) -> Result<(), CallError> {
        if self.elsewhere {
            return Err(CallError::Unsupported);
        }
        let dir = self.our_direction();
        self.reinvite(codecs, dir, Pending::Op(Op::Reoffer))
    }

    /// Queues `digits` to send as SIP INFO `application/dtmf-relay` (`Duration=250`), one request per digit and
    /// one request at a time (see the module docs); the outcome comes as [`LegCommand::Done`] with
    /// [`Op::DtmfInfo`]. Errors: [`CallError::Unsupported`] (no SIP dialog), [`CallError::NotAnswered`],
    /// [`CallError::DtmfQueueFull`] (nothing of this call is queued).
    pub fn send_dtmf_info(&mut self, digits: &[Digit]) -> Result<(), CallError> {
        if self.elsewhere {
            return Err(CallError::Unsupported);
        }
        if self.phase != Phase::Answered {
            return Err(CallError::NotAnswered);
        }
        let pending = self.dtmf_info_pending();
        if pending.saturating_add(digits.len().max(1)) > MAX_PENDING_DTMF {
            return Err(CallError::DtmfQueueFull {
                pending,
                limit: MAX_PENDING_DTMF,
            });
        }
        self.info_queue
            .extend(digits.iter().map(|d| InfoItem::Digit(*d)));
        self.info_queue.push_back(InfoItem::End);
        self.pump_info();
        Ok(())
    }

    /// DTMF digits waiting to go as INFO or being sent (a queued call of no digits counts as one).
    pub fn dtmf_info_pending(&self) -> usize {
        let mut n = usize::from(self.info_in_flight);
        let mut digits_in_call = 0usize;
        for item in &self.info_queue {
            match item {
                InfoItem::Digit(_) => digits_in_call += 1,
                InfoItem::End => {
                    n += digits_in_call.max(1);
                    digits_in_call = 0;
                }
            }
        }
        n
    }

    /// The INFO of the last [`LegCommand::Info`] could not be sent (the endpoint refused it): counted as a
    /// failure of its call, and the next digit goes.
    pub fn info_not_sent(&mut self) {
        if std::mem::take(&mut self.info_in_flight) {
            self.info_error.get_or_insert(CallError::NotAnswered);
            self.pump_info();
        }
    }

    /// Sends the next queued INFO unless one is in flight; reports the calls whose digits are all answered.
    fn pump_info(&mut self) {
        while !self.info_in_flight {
            match self.info_queue.pop_front() {
                None => return,
                Some(InfoItem::End) => {
                    let result = self.info_error.take().map_or(Ok(()), Err);
                    self.commands.push_back(LegCommand::Done {
                        op: Op::DtmfInfo,
                        result,
                    });
                }
                Some(InfoItem::Digit(d)) => {
                    self.info_in_flight = true;
                    self.commands.push_back(LegCommand::Info {
                        content_type: "application/dtmf-relay",
                        body: Bytes::from(format!("Signal={}\r\nDuration=250\r\n", d.to_char())),
                    });
                }
            }
        }
    }

    /// The INFO in flight got its final response (`Ok`) or failed.
    fn info_answered(&mut self, result: Result<(), CallError>) {
        if !std::mem::take(&mut self.info_in_flight) {
            return;
        }
        if let Err(e) = result {
            self.info_error.get_or_insert(e);
        }
        self.pump_info();
    }

    /// Feeds an endpoint event for this leg's call. `final_headers` are
    /// [`Endpoint::last_headers`](crate::sip::endpoint::Endpoint::last_headers) of the call.
    pub fn handle_sip(&mut self, now: Instant, ev: &Event, final_headers: Option<&Headers>) {
        if self.phase == Phase::Ended {
            return;
        }
        match ev {
            Event::Provisional { status, body, .. } => {
                if self.phase != Phase::Calling {
                    return;
                }
                if self.times.ring.is_none() {
                    self.times.ring = Some(now);
                }
                if !self.ringing_seen && status.as_u16() != 183 {
                    self.ringing_seen = true;
                    self.events.push_back(LegEvent::Ringing);
                }
                if !body.is_empty() && !self.early_seen {
                    if let Some(n) = self.read_answer(body) {
                        self.early_seen = true;
                        self.apply(n);
                        self.events.push_back(LegEvent::EarlyMedia);
                    }
                }
            }
            Event::Answered { body, .. } => {
                if self.phase != Phase::Calling {
                    return;
                }
                self.phase = Phase::Answered;
                self.ring_deadline = None;
                self.times.answer = Some(now);
                self.sip_status = Some(200);
                match self.read_answer(body) {
                    Some(n) => self.apply(n),
                    None if self.negotiated.is_some() => {} // answer was in the reliable 18x
                    None => {
                        self.events.push_back(LegEvent::Answered);
                        self.hangup(EndCause::Error);
                        return;
                    }
                }
                self.start_timer(now, final_headers);
                self.events.push_back(LegEvent::Answered);
            }
            Event::Request { method, body, .. } => self.remote_offer(now, method, body),
            Event::Acked { body, .. } => {
                let ours = std::mem::take(&mut self.offer_in_2xx);
                if let Some(n) = (ours && !body.is_empty())
                    .then(|| self.read_answer(body))
                    .flatten()
                {
                    self.apply(n);
                }
            }
            Event::Response {
                method,
                status,
                body,
                ..
            } if *method == Method::Invite || *method == Method::Update => {
                let Some(p) = self.pending.take() else { return };
                let ok = status.is_success();
                let answer = if ok { self.read_answer(body) } else { None };
                let usable = answer.is_some();
                if let Some(n) = answer {
                    self.apply(n);
                }
                if let (true, false, Pending::Op(op)) = (ok, usable, p) {
                    // Accepted, but the answer kept no audio codec of the offer (baresip answers an offer of
                    // only PCMA + telephone-event with just telephone-event when it lacks PCMA): the peer's
                    // session now has no audio. Re-offer what was negotiated before; the operation fails.
                    if self.negotiated.is_some() {
                        self.rearm_timer(now);
                        let (codecs, dir) = (self.offer_codecs(), self.our_direction());
                        self.pending = Some(Pending::Restore(op));
                        self.pending_offer = Some((codecs.clone(), dir));
                        self.send_offer(&codecs, dir, Pending::Restore(op));
                        return;
                    }
                }
                match p {
                    Pending::Refresh => {
                        if ok {
                            self.rearm_timer(now);
                        }
                    }
                    Pending::Restore(op) => {
                        if ok {
                            self.rearm_timer(now);
                        }
                        self.commands.push_back(LegCommand::Done {
                            op,
                            result: Err(CallError::CodecRefused),
                        });
                    }
                    Pending::Op(op) => {
                        if ok {
                            match op {
                                Op::Hold => {
                                    self.held = true;
                                    self.commands.push_back(LegCommand::MediaHold(true));
                                }
                                Op::Unhold => {
                                    self.held = false;
                                    if !self.remote_held {
                                        self.commands.push_back(LegCommand::MediaHold(false));
                                    }
                                }
                                Op::Reoffer | Op::DtmfInfo => {}
                            }
                            // Any successful re-INVITE refreshes the session (RFC 4028 §10).
                            self.rearm_timer(now);
                        }
                        let result = if ok {
                            Ok(())
                        } else {
                            Err(CallError::Rejected {
                                status: status.as_u16(),
                            })
                        };
                        self.commands.push_back(LegCommand::Done { op, result });
                    }
                }
            }
            Event::Response { method, status, .. } if *method == Method::Info => {
                let result = if status.is_success() {
                    Ok(())
                } else {
                    Err(CallError::Rejected {
                        status: status.as_u16(),
                    })
                };
                self.info_answered(result);
            }
            Event::TransactionTimeout { method, .. } if *method == Method::Info => {
                self.info_answered(Err(CallError::Timeout));
            }
            Event::TransactionTimeout { method, .. } if *method == Method::Update => {
                if let Some(p) = self.pending.take() {
                    self.fail_pending(p, CallError::Timeout);
                }
            }
            Event::Glare { retry_at, .. } if self.pending.is_some() => {
                self.glare_at = Some(*retry_at);
            }
            Event::Terminated { reason, .. } => self.terminated(now, *reason, final_headers),
            _ => {}
        }
    }

    fn fail_pending(&mut self, p: Pending, e: CallError) {
        if let Pending::Op(op) | Pending::Restore(op) = p {
            self.commands
                .push_back(LegCommand::Done { op, result: Err(e) });
        }
    }

    fn terminated(&mut self, now: Instant, reason: TerminationReason, h: Option<&Headers>) {
        if let TerminationReason::Rejected(st) = reason {
            self.sip_status = Some(st.as_u16());
            if st.as_u16() == 422 && self.phase == Phase::Calling && self.retry_422(h) {
                return;
            }
        }
        if let Some(p) = self.pending.take() {
            self.fail_pending(p, CallError::Ended);
        }
        let (cause, by) = match reason {
            TerminationReason::Rejected(st) => (EndCause::Rejected(st.as_u16()), HangupBy::Remote),
            TerminationReason::Cancelled => {
                self.sip_status.get_or_insert(487);
                (EndCause::Cancelled, HangupBy::Local)
            }
            TerminationReason::LocalBye => (EndCause::Normal, HangupBy::Local),
            TerminationReason::RemoteBye => (EndCause::Normal, HangupBy::Remote),
            TerminationReason::DialogGone => (EndCause::DialogGone, HangupBy::Remote),
            TerminationReason::Timeout | TerminationReason::AckTimeout => {
                (EndCause::Timeout, HangupBy::Local)
            }
            _ => (EndCause::Error, HangupBy::Local),
        };
        // A cause we chose (ring timeout, session expiry, shutdown) wins over the endpoint's generic one, unless
        // the peer hung up first.
        let cause = match (self.local_cause, by) {
            (Some(c), HangupBy::Local) => c,
            (Some(c), HangupBy::Remote) if matches!(reason, TerminationReason::Rejected(_)) => {
                // CANCEL crossed a final non-2xx: the peer's answer is what happened.
                let _ = c;
                cause
            }
            _ => cause,
        };
        if !matches!(self.phase, Phase::Answered) {
            let status = self.sip_status;
            self.events.push_back(LegEvent::Failed { status, cause });
        }
        self.end(now, cause, by);
    }

    fn retry_422(&mut self, h: Option<&Headers>) -> bool {
        if self.setup.session_timer.is_none() || self.retries_422 >= MAX_422_RETRIES {
            return false;
        }
        let min_se = h
            .and_then(|h| h.get(&HeaderName::MinSe))
            .and_then(|v| leading_u32(v));
        let Some(min_se) = min_se else { return false };
        self.retries_422 += 1;
        self.min_se = self.min_se.max(min_se);
        self.session_expires = self.session_expires.max(self.min_se);
        let previous = self.call.take();
        self.send_invite(previous);
        true
    }

    fn end(&mut self, now: Instant, cause: EndCause, by: HangupBy) {
        self.phase = Phase::Ended;
        // INFO DTMF calls not finished: each ends with the leg.
        self.info_in_flight = false;
        self.info_error = None;
        for item in std::mem::take(&mut self.info_queue) {
            if item == InfoItem::End {
                self.commands.push_back(LegCommand::Done {
                    op: Op::DtmfInfo,
                    result: Err(CallError::Ended),
                });
            }
        }
        self.ring_deadline = None;
        self.glare_at = None;
        self.timer = None;
        let cdr = self.times.finish(
            self.setup.id,
            self.setup.target.clone(),
            self.call_id.clone(),
            self.setup.start_unix_ms,
            now,
            cause,
            by,
            self.sip_status,
        );
        self.events.push_back(LegEvent::Ended {
            by,
            cause,
            cdr: Box::new(cdr),
        });
    }

    fn read_answer(&self, body: &Bytes) -> Option<Negotiated> {
        let offer = self.last_offer.as_ref()?;
        let answer = Sdp::parse(body).ok()?;
        self.session.accept_answer(offer, &answer).ok()
    }

    fn apply(&mut self, n: Negotiated) {
        let changed = self.negotiated.as_ref().is_none_or(|o| {
            o.remote_rtp != n.remote_rtp
                || o.telephone_event_pt != n.telephone_event_pt
                || o.codec.law() != n.codec.law()
        });
        if changed {
            self.commands.push_back(LegCommand::Remote {
                rtp: n.remote_rtp,
                rtcp: n.remote_rtcp,
                telephone_event_pt: n.telephone_event_pt,
                law: n.codec.law(),
            });
        }
        self.negotiated = Some(n);
    }

    fn remote_offer(&mut self, now: Instant, method: &Method, body: &Bytes) {
        let is_invite = *method == Method::Invite;
        if !is_invite && *method != Method::Update {
            return;
        }
        if self.phase != Phase::Answered {
            return;
        }
        // The peer refreshed the session (RFC 4028 §10).
        self.rearm_timer(now);
        let answer = |code: u16, body: Bytes| {
            if is_invite {
                LegCommand::AnswerReinvite { code, body }
            } else {
                LegCommand::AnswerUpdate { code, body }
            }
        };
        if body.is_empty() {
            if !is_invite {
                self.commands.push_back(answer(200, Bytes::new()));
                return;
            }
            // Offer in our 2xx, answer in the ACK (RFC 3261 §14.2).
            let codecs = self.offer_codecs();
            let dir = self.our_direction();
            let offer = self.session.offer(&codecs, dir);
            let b = Bytes::from(offer.to_bytes());
            self.last_offer = Some(offer);
            self.offer_in_2xx = true;
            self.commands.push_back(answer(200, b));
            return;
        }
        let Ok(offer) = Sdp::parse(body) else {
            self.commands.push_back(answer(400, Bytes::new()));
            return;
        };
        let codecs = self.offer_codecs();
        let dir = self.our_direction();
        match self.session.answer(&offer, &codecs, dir) {
            Ok((sdp, n)) => {
                let peer_holds = matches!(n.direction, Direction::RecvOnly | Direction::Inactive);
                self.apply(n);
                self.commands
                    .push_back(answer(200, Bytes::from(sdp.to_bytes())));
                if peer_holds != self.remote_held {
                    self.remote_held = peer_holds;
                    if !self.held {
                        self.commands.push_back(LegCommand::MediaHold(peer_holds));
                    }
                    self.events.push_back(if peer_holds {
                        LegEvent::RemoteHold
                    } else {
                        LegEvent::RemoteResume
                    });
                }
            }
            Err(_) => self.commands.push_back(answer(488, Bytes::new())),
        }
    }

    fn start_timer(&mut self, now: Instant, h: Option<&Headers>) {
        if self.setup.session_timer.is_none() {
            return;
        }
        let Some(v) = h.and_then(|h| h.get(&HeaderName::SessionExpires)) else {
            return; // §7.4: no Session-Expires in the 2xx, no timer
        };
        let Some(secs) = leading_u32(v) else { return };
        let text = String::from_utf8_lossy(v).to_ascii_lowercase();
        let we_refresh = !text.contains("refresher=uas");
        self.timer = Some(Timer {
            interval: Duration::from_secs(u64::from(secs.max(1))),
            we_refresh,
            refresh_at: None,
            expire_at: now,
        });
        self.rearm_timer(now);
    }

    fn rearm_timer(&mut self, now: Instant) {
        if let Some(t) = &mut self.timer {
            let i = t.interval;
            t.refresh_at = t.we_refresh.then(|| now + i / 2);
            t.expire_at = now + i - (i / 3).min(Duration::from_secs(32));
        }
    }

    /// The next instant [`Self::handle_timeout`] must run: ring timeout, session refresh or expiry.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self
            .timer
            .map(|t| t.refresh_at.map_or(t.expire_at, |r| r.min(t.expire_at)));
        [self.ring_deadline, t, self.glare_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.glare_at.is_some_and(|g| g <= now) {
            self.glare_at = None;
            self.retry_after_glare();
        }
        if self.ring_deadline.is_some_and(|d| d <= now) {
            self.ring_deadline = None;
            if self.phase == Phase::Calling {
                self.hangup(EndCause::RingTimeout);
            }
        }
        let Some(t) = self.timer else { return };
        if t.expire_at <= now {
            self.timer = None;
            self.hangup(EndCause::SessionExpired);
            return;
        }
        if t.refresh_at.is_some_and(|r| r <= now) {
            if let Some(tm) = &mut self.timer {
                tm.refresh_at = None;
            }
            if self.pending.is_none() {
                let codecs = self.offer_codecs();
                let dir = self.our_direction();
                let _ = self.reinvite(&codecs, dir, Pending::Refresh);
            } else if let Some(tm) = &mut self.timer {
                // Another re-INVITE is in progress: its 2xx refreshes; look again shortly.
                tm.refresh_at = Some(now + Duration::from_secs(1));
            }
        }
    }

    /// Headers for our in-dialog INVITE/UPDATE: `Session-Expires` with us as refresher while a session timer
    /// runs (RFC 4028 §7.4: every refresh, and any re-INVITE is one, restates it).
    pub fn session_headers(&self) -> Vec<(HeaderName, Bytes)> {
        match self.timer {
            Some(t) => vec![(
                HeaderName::SessionExpires,
                Bytes::from(format!(
                    "{};refresher={}",
                    t.interval.as_secs(),
                    if t.we_refresh { "uac" } else { "uas" }
                )),
            )],
            None => Vec::new(),
        }
    }

    /// The next command for the endpoint or relay.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<LegCommand> {
        self.commands.pop_front()
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<LegEvent> {
        self.events.pop_front()
    }
}

/// The leading decimal number of a header value (`1800;refresher=uac` → 1800).
fn leading_u32(v: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(v).ok()?;
    let digits = s.trim_start().split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn browser_leg(t0: Instant) -> LegCore {
        let remote = SocketAddr::from(([127, 0, 0, 1], 40000));
        let setup = LegSetup {
            id: 7,
            target: "webrtc".into(),
            local_rtp: SocketAddr::from(([127, 0, 0, 1], 20000)),
            codecs: vec![Codec::pcmu()],
            ring_timeout: None,
            session_timer: None,
            sdp_session_id: 7,
            start_unix_ms: 0,
        };
        let n = Negotiated {
            media_index: 0,
            remote_rtp: remote,
            remote_rtcp: remote,
            codec: Codec::pcmu(),
            recv_pt: 0,
            telephone_event_pt: None,
            telephone_event_recv_pt: None,
            direction: Direction::SendRecv,
            ptime: 20,
            rtcp_mux: true,
        };
        LegCore::answered_elsewhere(t0, setup, n)
    }

    #[test]
    fn a_leg_answered_elsewhere_hangs_up_through_its_driver() {
        let t0 = Instant::now();
        let mut l = browser_leg(t0);
        assert_eq!(l.phase(), Phase::Answered);
        assert!(l.is_elsewhere());
        assert_eq!(l.poll_event(), Some(LegEvent::Answered));
        assert_eq!(l.poll_command(), None);
        assert_eq!(l.poll_timeout(), None);
        assert_eq!(l.hold(), Err(CallError::Unsupported));
        assert_eq!(l.reoffer(&[Codec::pcma()]), Err(CallError::Unsupported));
        l.hangup(EndCause::Shutdown);
        assert_eq!(l.poll_command(), Some(LegCommand::Bye));
        // The driver closed it: the cause we chose wins over the driver's generic one.
        l.ended_elsewhere(
            t0 + Duration::from_secs(3),
            EndCause::Normal,
            HangupBy::Local,
        );
        match l.poll_event() {
            Some(LegEvent::Ended { by, cause, cdr }) => {
                assert_eq!((by, cause), (HangupBy::Local, EndCause::Shutdown));
                assert_eq!(cdr.answer_ms, Some(0));
                assert_eq!(cdr.talk_ms, 3000);
            }
            other => panic!("{other:?}"),
        }
        // Only once.
        l.ended_elsewhere(
            t0 + Duration::from_secs(4),
            EndCause::Normal,
            HangupBy::Remote,
        );
        assert_eq!(l.poll_event(), None);
    }

    #[test]
    fn a_leg_answered_elsewhere_ends_by_its_peer() {
        let t0 = Instant::now();
        let mut l = browser_leg(t0);
        let _ = l.poll_event();
        l.ended_elsewhere(t0, EndCause::Timeout, HangupBy::Remote);
        assert!(matches!(
            l.poll_event(),
            Some(LegEvent::Ended {
                by: HangupBy::Remote,
                cause: EndCause::Timeout,
                ..
            })
        ));
        assert_eq!(l.phase(), Phase::Ended);
    }

    #[test]
    fn header_numbers() {
        assert_eq!(leading_u32(b"1800;refresher=uac"), Some(1800));
        assert_eq!(leading_u32(b" 90"), Some(90));
        assert_eq!(leading_u32(b"x"), None);
        assert_eq!(leading_u32(b"99999999999999"), None);
    }
}
