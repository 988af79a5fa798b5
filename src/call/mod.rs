//! Call legs and the B2BUA bridge: the sans-IO state machines and the types of rappel's call API.
//!
//! - [`leg`]: one outgoing leg (UAC): progress, SDP, hold, ring timeout, RFC 4028 session timers.
//! - [`bridge`]: two legs joined through the relay: codec alignment, hold music when a party holds, one side
//!   hanging up, transfer.
//! - [`cdr`]: the records delivered when a leg or a bridge ends.
//!
//! The tokio layer that runs them over sockets is [`crate::net::engine`] ([`crate::Engine`]); the types an
//! application sees ([`CallOptions`], [`LegEvent`], [`CallError`], ...) are defined here.

pub mod bridge;
pub mod cdr;
pub mod leg;

use crate::media::dtmf::Digit;
use crate::media::player::Playlist;
use crate::sdp::Codec;
use crate::sip::auth::Credentials;
use crate::sip::message::HeaderName;
use bytes::Bytes;
use std::time::Duration;

pub use bridge::OnHangup;
pub use cdr::{BridgeCdr, Cdr, EndCause, HangupBy, MediaCounters, RecordingCdr};
pub use leg::{RefreshMethod, SessionTimerOptions};

/// A leg's id, unique within an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

/// A bridge's id, unique within an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BridgeId(pub u64);

/// What the application sees of a leg, in order. `Ended` is always the last event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LegEvent {
    /// The INVITE left (the far end may answer 100 Trying; this says the request is on its way).
    Trying,
    /// 180 (or another 18x without early media).
    Ringing,
    /// 18x with SDP: early media from the callee (what happens to it is [`EarlyMedia`]).
    EarlyMedia,
    /// 2xx: the call is up.
    Answered,
    /// The peer put us on hold (a re-INVITE from its phone).
    RemoteHold,
    /// The peer took us off hold.
    RemoteResume,
    /// The playlist started with [`crate::Leg::play`] finished.
    PlayFinished,
    /// A DTMF digit received (RFC 4733).
    Dtmf {
        /// The digit.
        digit: Digit,
        /// How long it was pressed.
        duration: Duration,
    },
    /// The call was never answered (followed by `Ended`).
    Failed {
        /// The final SIP status, if one came (486, 487, 603, ...).
        status: Option<u16>,
        /// Why.
        cause: EndCause,
    },
    /// The leg is over.
    Ended {
        /// Who ended it.
        by: HangupBy,
        /// Why.
        cause: EndCause,
        /// The leg's record.
        cdr: Box<Cdr>,
    },
}

/// What a bridge reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BridgeEvent {
    /// One side was transferred to another leg.
    Transferred {
        /// The leg that left.
        old: LegId,
        /// The leg that joined.
        new: LegId,
    },
    /// The bridge ended (a leg ended, or [`crate::Bridge::end`]).
    Ended(Box<BridgeCdr>),
}

/// What to do with the callee's early media (18x with SDP), and what the companion leg hears while this leg
/// rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyMedia {
    /// Nothing: the companion leg keeps hearing whatever it heard.
    #[default]
    Ignore,
    /// Relay the callee's early media (its ringback, announcements) to the companion leg.
    Forward,
    /// Play our own ringback tone to the companion leg.
    Ringback,
}

/// Options for [`crate::Engine::call`].
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Our From URI; the engine's default identity when `None`.
    pub from: Option<String>,
    /// Display name in From, sent as a quoted-string (`"Name" <uri>;tag=...`, `"` and `\` escaped, CR/LF
    /// removed).
    pub display_name: Option<String>,
    /// Caller ID: P-Asserted-Identity value (a URI or name-addr) for trusted trunks.
    pub asserted_identity: Option<String>,
    /// Privacy header (`id`, `none`, ...).
    pub privacy: Option<String>,
    /// Digest credentials for 401/407.
    pub credentials: Option<Credentials>,
    /// Extra headers on the INVITE.
    pub headers: Vec<(HeaderName, Bytes)>,
    /// CANCEL when not answered within this (default 30 s; `None` waits for the far end or Timer B).
    pub ring_timeout: Option<Duration>,
    /// Early-media policy towards [`Self::companion`].
    pub early_media: EarlyMedia,
    /// The leg that hears this leg's progress (e.g. the visitor while the agent rings).
    pub companion: Option<LegId>,
    /// Codecs to offer, in order (default PCMU, PCMA, telephone-event/101).
    pub codecs: Vec<Codec>,
    /// RFC 4028 session timer.
    pub session_timer: Option<SessionTimerOptions>,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            from: None,
            display_name: None,
            asserted_identity: None,
            privacy: None,
            credentials: None,
            headers: Vec::new(),
            ring_timeout: Some(Duration::from_secs(30)),
            early_media: EarlyMedia::Ignore,
            companion: None,
            codecs: vec![Codec::pcmu(), Codec::pcma(), Codec::telephone_event(101)],
            session_timer: None,
        }
    }
}

impl CallOptions {
    /// Sets the ring timeout.
    pub fn ring_timeout(mut self, d: Duration) -> Self {
        self.ring_timeout = Some(d);
        self
    }
    /// Sets the From URI and display name.
    pub fn from(mut self, uri: impl Into<String>, display_name: Option<&str>) -> Self {
        self.from = Some(uri.into());
        self.display_name = display_name.map(str::to_owned);
        self
    }
    /// Sets digest credentials.
    pub fn credentials(mut self, c: Credentials) -> Self {
        self.credentials = Some(c);
        self
    }
    /// Sets the companion leg and the early-media policy towards it.
    pub fn early_media(mut self, companion: LegId, policy: EarlyMedia) -> Self {
        self.companion = Some(companion);
        self.early_media = policy;
        self
    }
    /// Enables RFC 4028 session timers.
    pub fn session_timer(mut self, t: SessionTimerOptions) -> Self {
        self.session_timer = Some(t);
        self
    }
    /// Sets the offered codecs.
    pub fn codecs(mut self, codecs: Vec<Codec>) -> Self {
        self.codecs = codecs;
        self
    }
}

/// Options for [`crate::Engine::bridge`].
#[derive(Debug, Clone, Default)]
pub struct BridgeOptions {
    /// When one side hangs up: hang the other up (default) or keep it.
    pub on_hangup: OnHangup,
    /// On transfer, the replaced leg is hung up (default) or kept.
    pub on_transfer: OnHangup,
    /// What the other party hears while one party holds; silence when `None`.
    pub hold_music: Option<Playlist>,
    /// Record the bridge to this WAV file (created or truncated; two channels, 8 kHz, 16-bit PCM): the
    /// audio received from the first leg passed to [`crate::Engine::bridge`] (side A, the visitor) on the
    /// left channel, from the second (side B, the agent; after a transfer, whichever leg took its place)
    /// on the right. Gaps and holds are silence; the file spans the bridge's life and is finalised when the
    /// bridge ends ([`BridgeCdr::recording`]). `None` (the default): no recording.
    pub record: Option<std::path::PathBuf>,
}

/// How [`crate::Engine::shutdown`] treats calls in progress. New calls are refused either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Hang every leg up now (CANCEL or BYE), then stop when they have ended.
    HangUp,
    /// Wait for the legs to end by themselves, at most this long, then hang up what remains.
    Drain(Duration),
}

/// Errors of the call API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The engine is shutting down or stopped.
    #[error("the engine is shut down")]
    Shutdown,
    /// The target or From URI did not parse.
    #[error("invalid URI")]
    InvalidUri,
    /// No free RTP ports, or the relay stopped.
    #[error("no media resources: {0}")]
    Media(String),
    /// The leg is not answered (hold, bridge and the like need an answered leg).
    #[error("the leg is not answered")]
    NotAnswered,
    /// The leg has ended.
    #[error("the leg has ended")]
    Ended,
    /// Another re-INVITE of ours is in progress on this leg.
    #[error("another operation is in progress on this leg")]
    Busy,
    /// The far end refused the request with this status.
    #[error("rejected with status {status}")]
    Rejected {
        /// The SIP status.
        status: u16,
    },
    /// The far end did not answer the request.
    #[error("request timed out")]
    Timeout,
    /// The legs' codecs cannot be joined: they differ and are not both G.711 (the relay transcodes only
    /// PCMU↔PCMA).
    #[error("incompatible codecs")]
    IncompatibleCodecs,
    /// A leg is already in a bridge, or the same leg was given twice.
    #[error("leg already bridged or repeated")]
    AlreadyBridged,
    /// The bridge has ended.
    #[error("the bridge has ended")]
    BridgeEnded,
    /// The playlist could not start.
    #[error("player: {0}")]
    Player(#[from] crate::media::player::PlayerError),
    /// Not a DTMF digit.
    #[error("not a DTMF digit: {0:?}")]
    InvalidDigit(char),
    /// No such leg (it ended and was forgotten).
    #[error("unknown leg")]
    UnknownLeg,
    /// The peer accepted our re-INVITE but its answer kept no audio codec of the offer (e.g. only
    /// telephone-event): the leg re-offered the codec it had before, and the operation did not happen.
    #[error("the peer kept no offered audio codec")]
    CodecRefused,
    /// Not possible on this kind of leg (hold or a re-offer on a browser leg, which has no SIP dialog).
    #[error("not supported on this leg")]
    Unsupported,
    /// The leg already has `pending` DTMF digits to send and the call would take it beyond `limit`
    /// ([`crate::net::engine::MAX_PENDING_DTMF`]); nothing of the call was sent.
    #[error("DTMF queue full: {pending} digits pending, limit {limit}")]
    DtmfQueueFull {
        /// Digits pending on the leg (being sent or queued).
        pending: usize,
        /// The most a leg may have pending.
        limit: usize,
    },
}
