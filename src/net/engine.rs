//! The engine: rappel's typed async call API over one tokio task and the relay thread.
//!
//! One task owns the SIP [`Endpoint`] and its sockets, every leg's and bridge's state machine
//! ([`LegCore`], [`BridgeCore`]) and the [`PlayerSet`] (one shared pacing grid for all announcements and hold
//! music). The RTP relay runs on its own thread ([`RelayDriver`]); the task sends it control calls and generated
//! frames and never waits for it (replies it needs, like final counters, are awaited in small spawned tasks).
//! Application handles ([`Engine`], [`Leg`], [`Bridge`]) talk to the task over a channel.
//!
//! After every input (a datagram, a command, a timer) the task drains the endpoint's transmits and events, the
//! legs' and bridges' commands, the players' frames, and re-arms its single timer at the earliest deadline
//! (endpoint, players, and a sorted set of leg deadlines).
//!
//! The trunk side (outbound proxy, RFC 3263 name resolution with failover between targets, registration) is in
//! `engine/trunk.rs`: lookups run on spawned tasks and come back as messages, so DNS never blocks signalling.
//! Each target carries its transport (UDP, or TCP from `;transport=tcp` or the DNS records), and the call keeps
//! it for every request of its dialog. A target that does not answer at all is abandoned after
//! [`EngineBuilder::failover_timeout`] (the endpoint's response deadline) when another one is left; so is a
//! registrar target.

mod trunk;

use trunk::{Hop, Proxy, Registrar, Resolved, Route};
pub use trunk::{RegistrationStatus, TrunkRegistration};

use crate::call::bridge::{plan, BridgeCommand, BridgeCore, Listen, Plan};
use crate::call::leg::{LegCommand, LegCore, LegSetup, Op, Phase};
use crate::call::{
    BridgeCdr, BridgeEvent, BridgeId, BridgeOptions, CallError, CallOptions, Cdr, EarlyMedia,
    EndCause, HangupBy, LegEvent, LegId, MediaCounters, RecordingCdr, ShutdownMode,
};
use crate::media::dtmf::{Digit, DtmfReceiver, DtmfSendOptions, DtmfSender};
use crate::media::g711::Law;
use crate::media::player::{PlayItem, PlayerEvent, PlayerId, PlayerOptions, PlayerSet, Playlist};
use crate::media::relay::{LegConfig, LegStats, RelayConfig, Source};
use crate::media::tone::{Country, ToneSpec};
use crate::net::dns::{should_fail_over, SipResolver, Target};
use crate::net::record_io::{self, RecordTap, Recording};
use crate::net::rtp_io::{DriverConfig, DriverEvent, LegInfo, RelayDriver};
use crate::net::transport::{SipSockets, SipTransportConfig};
use crate::sip::endpoint::{CallHandle, Endpoint, EndpointConfig, Event, InviteRequest};
use crate::sip::message::{HeaderName, Uri};
use crate::sip::transaction::{TimerConfig, Transport};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

/// The default of [`EngineBuilder::failover_timeout`].
pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(4);

/// Builds and starts an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    sip_bind: Vec<SocketAddr>,
    tcp: bool,
    public_addr: Option<SocketAddr>,
    rtp_ip: IpAddr,
    rtp_public_ip: Option<IpAddr>,
    rtp_ports: (u16, u16),
    timers: TimerConfig,
    user_agent: Option<String>,
    outbound_proxy: Option<Proxy>,
    from: String,
    relay_core: Option<usize>,
    raise_nofile: bool,
    rng_seed: Option<u64>,
    nameservers: Option<Vec<SocketAddr>>,
    registration: Option<TrunkRegistration>,
    failover_timeout: Option<Duration>,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EngineBuilder {
    /// SIP on UDP 127.0.0.1 (a free port), RTP on 127.0.0.1 ports 30000–39999, default timers, no proxy.
    pub fn new() -> Self {
        Self {
            sip_bind: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            tcp: false,
            public_addr: None,
            rtp_ip: IpAddr::from([127, 0, 0, 1]),
            rtp_public_ip: None,
            rtp_ports: (30000, 39999),
            timers: TimerConfig::default(),
            user_agent: Some(concat!("rappel/", env!("CARGO_PKG_VERSION")).to_owned()),
            outbound_proxy: None,
            from: "sip:rappel@localhost".to_owned(),
            relay_core: None,
            raise_nofile: true,
            rng_seed: None,
            nameservers: None,
            registration: None,
            failover_timeout: Some(DEFAULT_FAILOVER_TIMEOUT),
        }
    }
    /// SIP bind addresses (port 0 picks one). The first one is advertised unless [`Self::public_addr`] is set.
    pub fn sip_bind(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.sip_bind = addrs;
        self
    }
    /// Also listen on TCP on the same addresses. Calls and the REGISTER go over TCP whenever their target asks
    /// for it (`;transport=tcp`, or a `SIP+D2T` NAPTR / `_sip._tcp` SRV record) whether or not this is set; the
    /// connection we open carries the whole dialog, and listening lets a peer open its own connection back to our
    /// Contact.
    pub fn tcp(mut self, on: bool) -> Self {
        self.tcp = on;
        self
    }
    /// The address put in Via and Contact (the public address behind NAT).
    pub fn public_addr(mut self, addr: SocketAddr) -> Self {
        self.public_addr = Some(addr);
        self
    }
    /// Where RTP sockets bind (and the address put in SDP unless [`Self::rtp_public_ip`] is set). An
    /// unspecified address (`0.0.0.0`, `::`) binds every interface and needs a public IP to advertise.
    pub fn rtp_ip(mut self, ip: IpAddr) -> Self {
        self.rtp_ip = ip;
        self
    }
    /// The address put in SDP (`c=`) for our RTP, when it differs from where the sockets bind: a host
    /// behind one-to-one NAT (a cloud VM's public IP), or sockets bound to every interface. FreeSWITCH calls it
    /// `ext-rtp-ip`, Asterisk `external_media_address`.
    pub fn rtp_public_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.rtp_public_ip = ip;
        self
    }
    /// The RTP port range (inclusive; two ports per leg).
    pub fn rtp_ports(mut self, min: u16, max: u16) -> Self {
        self.rtp_ports = (min, max);
        self
    }
    /// SIP timers T1, T2, T4.
    pub fn timers(mut self, t: TimerConfig) -> Self {
        self.timers = t;
        self
    }
    /// The User-Agent header value (`None` for none).
    pub fn user_agent(mut self, ua: Option<String>) -> Self {
        self.user_agent = ua;
        self
    }
    /// Send every call (and the REGISTER) through this outbound proxy / trunk (the next hop of every INVITE).
    pub fn outbound_proxy(mut self, proxy: Option<SocketAddr>) -> Self {
        self.outbound_proxy = proxy.map(Proxy::Addr);
        self
    }
    /// Like [`Self::outbound_proxy`], given as a SIP URI (`sip:proxy.example.net`, `sip:192.0.2.1:5070`): a host
    /// name is resolved per RFC 3263 (NAPTR, SRV, A/AAAA) for each call, with failover between the targets.
    pub fn outbound_proxy_uri(mut self, uri: Option<String>) -> Self {
        self.outbound_proxy = uri.map(Proxy::Uri);
        self
    }
    /// The DNS servers asked for host names in targets, the proxy and the registrar (default: the system's,
    /// from `/etc/resolv.conf`).
    pub fn nameservers(mut self, servers: Vec<SocketAddr>) -> Self {
        self.nameservers = Some(servers);
        self
    }
    /// How long an INVITE to one of several resolved targets may go without any response (not even 100 Trying)
    /// before that target is abandoned for the next one (RFC 3263 §4.3), instead of waiting for Timer B (64·T1,
    /// 32 s): Kamailio's `fr_timer`. A provisional response stops this clock (the ring time then applies). Only
    /// used while another target is left; `None` (or zero) waits for Timer B. Default 4 s. The same holds for
    /// each REGISTER to one of several registrar targets (instead of Timer F).
    pub fn failover_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.failover_timeout = timeout.filter(|t| !t.is_zero());
        self
    }
    /// Register with the trunk: the engine keeps the binding refreshed (retrying with back-off after failures),
    /// publishes its state on [`Engine::registration`], and removes it (`Expires: 0`) on shutdown.
    pub fn register(mut self, registration: TrunkRegistration) -> Self {
        self.registration = Some(registration);
        self
    }
    /// The default From URI of our calls.
    pub fn from(mut self, uri: impl Into<String>) -> Self {
        self.from = uri.into();
        self
    }
    /// Pin the relay thread to this CPU.
    pub fn relay_core(mut self, core: Option<usize>) -> Self {
        self.relay_core = core;
        self
    }
    /// Raise the process's soft limit on open descriptors to its hard limit when the relay starts (default
    /// true; see [`DriverConfig::raise_nofile`]). Turn it off when the embedding process manages its limits
    /// itself (it is process-wide and inherited by child processes).
    pub fn raise_nofile(mut self, on: bool) -> Self {
        self.raise_nofile = on;
        self
    }
    /// Seed of the SIP endpoint's RNG (tests); from OS entropy otherwise.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Binds the SIP sockets, starts the relay thread and the engine task (on the current tokio runtime).
    /// Errors: a socket that cannot be bound, an outbound proxy URI that does not parse, RTP bound to an
    /// unspecified address with no [`Self::rtp_public_ip`] (`InvalidInput`).
    pub async fn start(self) -> io::Result<Engine> {
        let sdp_ip = self.rtp_public_ip.unwrap_or(self.rtp_ip);
        if sdp_ip.is_unspecified() {
            // `c=0.0.0.0` would read as hold (RFC 2543) to the peer.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "RTP bound to {}: set a public IP to put in SDP",
                    self.rtp_ip
                ),
            ));
        }
        if let Some(Proxy::Uri(u)) = &self.outbound_proxy {
            if trunk::hop_for(self.outbound_proxy.as_ref(), "") == Hop::Invalid {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("outbound proxy {u:?} is not a SIP URI"),
                ));
            }
        }
        let mut tcfg = SipTransportConfig::new(self.sip_bind[0]);
        tcfg.bind = self.sip_bind.clone();
        tcfg.tcp = self.tcp;
        let sockets = SipSockets::bind(tcfg).await?;
        let local = sockets.local_addrs().to_vec();
        let first = local
            .first()
            .copied()
            .ok_or_else(|| io::Error::other("no SIP address"))?;
        let mut ecfg = EndpointConfig::new(self.public_addr.unwrap_or(first));
        ecfg.timers(self.timers);
        // Our re-INVITEs refused with 491 are retried by the leg with a fresh offer (new o= version).
        ecfg.tu_glare_retry(true);
        if let Some(s) = self.rng_seed {
            ecfg.rng_seed(s);
        }
        if let Some(ua) = &self.user_agent {
            ecfg.user_agent(ua.clone());
        }
        let relay_cfg = DriverConfig {
            bind_ip: self.rtp_ip,
            relay: RelayConfig {
                port_min: self.rtp_ports.0,
                port_max: self.rtp_ports.1,
                ..RelayConfig::default()
            },
            core: self.relay_core,
            raise_nofile: self.raise_nofile,
            ..DriverConfig::default()
        };
        // Calls and the REGISTER go over UDP or TCP, whichever the target's URI or DNS records ask for.
        let resolver = match &self.nameservers {
            Some(ns) => SipResolver::with_nameservers(ns).map_err(io::Error::other)?,
            None => match SipResolver::system() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "no system DNS configuration: host names will not resolve");
                    SipResolver::with_nameservers(&[]).map_err(io::Error::other)?
                }
            },
        };
        let resolver = resolver.transports(vec![Transport::Udp, Transport::Tcp]);
        let resolver = Arc::new(match self.rng_seed {
            Some(s) => resolver.seed(s),
            None => resolver,
        });
        let (registrar, registration) = match self.registration {
            Some(r) => {
                let (r, rx) = Registrar::new(r, self.failover_timeout);
                (Some(r), Some(rx))
            }
            None => (None, None),
        };
        let (resolved_tx, resolved_rx) = mpsc::unbounded_channel();
        let (relay, relay_events) = RelayDriver::spawn(relay_cfg)?;
        let relay = Arc::new(relay);
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            cmds: tx,
            relay: relay.clone(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            sip_addrs: local,
            registration,
        });
        let now = tokio::time::Instant::now().into_std();
        let task = Task {
            ep: Endpoint::new(ecfg),
            relay,
            players: PlayerSet::new(now),
            legs: HashMap::new(),
            by_call: HashMap::new(),
            by_relay: HashMap::new(),
            deadlines: BTreeSet::new(),
            deadline_of: HashMap::new(),
            bridges: HashMap::new(),
            dtmf: HashMap::new(),
            outbound_proxy: self.outbound_proxy,
            failover_timeout: self.failover_timeout,
            resolver,
            resolved_tx,
            registrar,
            from: self.from,
            sdp_ip,
            dirty: VecDeque::new(),
            shutdown: None,
            ringback: ToneSpec::ringback(Country::Fr).render(),
        };
        tokio::spawn(
            task.run(sockets, rx, relay_events, resolved_rx)
                .instrument(tracing::info_span!("rappel_engine")),
        );
        Ok(Engine { shared })
    }
}

#[derive(Debug)]
struct Shared {
    cmds: mpsc::UnboundedSender<Cmd>,
    relay: Arc<RelayDriver>,
    next_id: AtomicU64,
    closed: AtomicBool,
    sip_addrs: Vec<SocketAddr>,
    registration: Option<watch::Receiver<RegistrationStatus>>,
}

/// The engine handle. Cheap to clone; the engine runs until [`Engine::shutdown`] (or until every handle,
/// leg and bridge is dropped).
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

type Reply<T> = oneshot::Sender<Result<T, CallError>>;

enum Cmd {
    Call {
        id: u64,
        target: String,
        opts: Box<CallOptions>,
        info: LegInfo,
        events: mpsc::UnboundedSender<LegEvent>,
        reply: Reply<()>,
    },
    Hold(u64, bool, Reply<()>),
    Play(u64, Playlist, Reply<()>),
    StopMedia(u64, Reply<()>),
    Hangup(u64, Option<Reply<()>>),
    /// Digits, and whether to force SIP INFO.
    Dtmf(u64, Vec<Digit>, bool, Reply<()>),
    Bridge {
        id: u64,
        a: u64,
        b: u64,
        opts: BridgeOptions,
        events: mpsc::UnboundedSender<BridgeEvent>,
        reply: Reply<()>,
    },
    Transfer(u64, u64, u64, Reply<()>),
    EndBridge(u64, Reply<()>),
    Shutdown(ShutdownMode, oneshot::Sender<()>),
    /// A leg set up outside SIP (a browser leg), already answered.
    #[cfg_attr(not(feature = "webrtc"), allow(dead_code))]
    Elsewhere {
        id: u64,
        info: LegInfo,
        /// Where the relay leg sends the peer's audio.
        remote: SocketAddr,
        law: Law,
        /// The peer's telephone-event payload type (RFC 4733 DTMF), if negotiated.
        telephone_event: Option<u8>,
        /// Ends the call (instead of a BYE).
        closer: Closer,
        events: mpsc::UnboundedSender<LegEvent>,
        reply: Reply<()>,
    },
    /// Such a leg ended.
    #[cfg_attr(not(feature = "webrtc"), allow(dead_code))]
    ElsewhereEnded(u64, EndCause, HangupBy),
}

/// Closes a leg set up outside SIP.
type Closer = Box<dyn FnOnce() + Send>;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Engine {
    /// A builder with the defaults of [`EngineBuilder::new`].
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// The bound SIP addresses.
    pub fn sip_addrs(&self) -> &[SocketAddr] {
        &self.shared.sip_addrs
    }

    /// The registration with the trunk ([`EngineBuilder::register`]): its state, latest event and counters,
    /// updated on every change. `None` when the engine does not register.
    pub fn registration(&self) -> Option<watch::Receiver<RegistrationStatus>> {
        self.shared.registration.clone()
    }

    fn send(&self, c: Cmd) -> Result<(), CallError> {
        self.shared.cmds.send(c).map_err(|_| CallError::Shutdown)
    }

    async fn ask<T>(&self, f: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        self.send(f(tx))?;
        rx.await.map_err(|_| CallError::Shutdown)?
    }

    /// Places a call to `target` (a SIP URI). The INVITE goes to the outbound proxy when one is set, else to the
    /// target's host; a host name is resolved per RFC 3263 (off the engine task), and when a target does not
    /// answer (Timer B), cannot be reached or answers 503, the INVITE is sent again to the next one (§4.3).
    /// Returns once the INVITE is sent or its next hop is being resolved; progress comes as [`LegEvent`]s on the
    /// returned [`Leg`].
    pub async fn call(&self, target: &str, opts: CallOptions) -> Result<Leg, CallError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(CallError::Shutdown);
        }
        Uri::parse(target).map_err(|_| CallError::InvalidUri)?;
        let info = self
            .shared
            .relay
            .add_leg(LegConfig::g711(None))
            .await
            .map_err(|e| CallError::Media(e.to_string()))?
            .map_err(|e| CallError::Media(e.to_string()))?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (etx, erx) = mpsc::unbounded_channel();
        let leg = Leg {
            id: LegId(id),
            engine: self.clone(),
            events: erx,
            cdr: None,
        };
        let target = target.to_owned();
        self.ask(|reply| Cmd::Call {
            id,
            target,
            opts: Box::new(opts),
            info,
            events: etx,
            reply,
        })
        .await?;
        Ok(leg)
    }

    /// Answers a browser's WebRTC offer (`offer_sdp`, SDP text) and returns the leg, already answered
    /// ([`LegEvent::Answered`] is its first event), with the SDP answer for the browser. The leg works like a SIP
    /// leg with [`Self::bridge`], [`Leg::play`] and [`Leg::hangup`] (which closes the peer connection); hold is
    /// refused. When the offer has telephone-event/8000, DTMF works as on a SIP leg: the browser's key presses
    /// (`insertDTMF`) come as [`LegEvent::Dtmf`] and are relayed to a bridged leg in its payload type, and
    /// [`Leg::send_dtmf`] sends RFC 4733 to the browser. It ends by itself when the browser closes or fails, or sends no RTP for
    /// [`BrowserOptions::inactivity`](crate::net::webrtc::BrowserOptions::inactivity). See [`crate::net::webrtc`].
    ///
    /// Cancel-safe: the work runs in its own task, so dropping the future (an HTTP client that went away) leaves
    /// no relay leg or peer connection behind (the leg, if made, is dropped and so hung up).
    #[cfg(feature = "webrtc")]
    pub async fn browser_call(
        &self,
        offer_sdp: &str,
        opts: &crate::net::webrtc::BrowserOptions,
    ) -> Result<(Leg, String), crate::net::webrtc::WebRtcError> {
        let engine = self.clone();
        let offer = offer_sdp.to_owned();
        let opts = opts.clone();
        tokio::spawn(async move { engine.browser_call_now(&offer, &opts).await })
            .await
            .map_err(|_| crate::net::webrtc::WebRtcError::Call(CallError::Shutdown))?
    }

    #[cfg(feature = "webrtc")]
    async fn browser_call_now(
        &self,
        offer_sdp: &str,
        opts: &crate::net::webrtc::BrowserOptions,
    ) -> Result<(Leg, String), crate::net::webrtc::WebRtcError> {
        use crate::net::webrtc::{accept, PeerEnd, WebRtcError};
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(WebRtcError::Call(CallError::Shutdown));
        }
        let media = |e: String| WebRtcError::Call(CallError::Media(e));
        let info = self
            .shared
            .relay
            .add_leg(LegConfig::g711(None))
            .await
            .map_err(|e| media(e.to_string()))?
            .map_err(|e| media(e.to_string()))?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let cmds = self.shared.cmds.clone();
        let on_end = move |end: PeerEnd| {
            let (cause, by) = match end {
                PeerEnd::Closed => (EndCause::Normal, HangupBy::Local),
                PeerEnd::Inactive => (EndCause::Timeout, HangupBy::Local),
                _ => (EndCause::Normal, HangupBy::Remote),
            };
            let _ = cmds.send(Cmd::ElsewhereEnded(id, cause, by));
        };
        let accepted = match accept(offer_sdp, info.rtp, opts, on_end).await {
            Ok(a) => a,
            Err(e) => {
                fire(self.shared.relay.remove_leg(info.id));
                return Err(e);
            }
        };
        let (etx, erx) = mpsc::unbounded_channel();
        let leg = Leg {
            id: LegId(id),
            engine: self.clone(),
            events: erx,
            cdr: None,
        };
        let handle = accepted.handle;
        self.ask(|reply| Cmd::Elsewhere {
            id,
            info,
            remote: accepted.glue,
            law: accepted.law,
            telephone_event: accepted.telephone_event,
            closer: Box::new(move || handle.close()),
            events: etx,
            reply,
        })
        .await
        .map_err(WebRtcError::Call)?;
        Ok((leg, accepted.answer))
    }

    /// Hangs up a leg by its id, for a leg whose [`Leg`] handle is held elsewhere (a browser leg the callback
    /// service owns, hung up from the web page). [`LegEvent::Ended`] follows on the handle.
    pub async fn hangup_leg(&self, leg: LegId) -> Result<(), CallError> {
        self.ask(|r| Cmd::Hangup(leg.0, Some(r))).await
    }

    /// Joins two answered legs through the relay; returns once the legs hear each other.
    ///
    /// When their codecs differ (PCMU and PCMA), leg `b` is first re-INVITEd offering only leg `a`'s codec:
    /// a bridge without transcoding keeps the audio bit-exact and the relay's per-packet path minimal. If `b`
    /// refuses (488, timeout of the transaction) or answers with its old codec anyway, the bridge is made
    /// regardless and the relay transcodes PCMU↔PCMA per packet (a 256-entry table, in place). Only codecs
    /// that are not both G.711 fail with [`CallError::IncompatibleCodecs`].
    pub async fn bridge(&self, a: &Leg, b: &Leg, opts: BridgeOptions) -> Result<Bridge, CallError> {
        if a.id == b.id {
            return Err(CallError::AlreadyBridged);
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (etx, erx) = mpsc::unbounded_channel();
        self.ask(|reply| Cmd::Bridge {
            id,
            a: a.id.0,
            b: b.id.0,
            opts,
            events: etx,
            reply,
        })
        .await?;
        Ok(Bridge {
            id: BridgeId(id),
            engine: self.clone(),
            events: erx,
            cdr: None,
        })
    }

    /// Refuses new calls, then hangs up or waits for the calls in progress ([`ShutdownMode`]); returns when no
    /// leg is left. The engine task stops shortly after (it lingers briefly to absorb the BYEs' answers).
    pub async fn shutdown(&self, mode: ShutdownMode) {
        self.shared.closed.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        if self.send(Cmd::Shutdown(mode, tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// An outgoing call leg. Dropping it hangs the call up (CANCEL before an answer, BYE after).
#[derive(Debug)]
pub struct Leg {
    id: LegId,
    engine: Engine,
    events: mpsc::UnboundedReceiver<LegEvent>,
    cdr: Option<Cdr>,
}

impl Leg {
    /// The leg's id.
    pub fn id(&self) -> LegId {
        self.id
    }

    /// The next event; `None` after [`LegEvent::Ended`].
    pub async fn next_event(&mut self) -> Option<LegEvent> {
        let ev = self.events.recv().await?;
        if let LegEvent::Ended { cdr, .. } = &ev {
            self.cdr = Some((**cdr).clone());
        }
        Some(ev)
    }

    /// Waits for the answer, skipping progress events (a [`LegEvent::Dtmf`] or others before it are dropped).
    /// Errors with [`CallError::Ended`] when the call failed or ended first.
    pub async fn answered(&mut self) -> Result<(), CallError> {
        while let Some(ev) = self.next_event().await {
            match ev {
                LegEvent::Answered => return Ok(()),
                LegEvent::Ended { .. } => return Err(CallError::Ended),
                _ => {}
            }
        }
        Err(CallError::Ended)
    }

    /// Waits for [`LegEvent::Ended`] and returns the leg's record.
    pub async fn ended(&mut self) -> Option<Cdr> {
        while self.cdr.is_none() {
            self.next_event().await?;
        }
        self.cdr.clone()
    }

    /// Puts the peer on hold (re-INVITE `sendonly`); returns when the peer accepted.
    pub async fn hold(&self) -> Result<(), CallError> {
        self.engine.ask(|r| Cmd::Hold(self.id.0, true, r)).await
    }

    /// Takes the peer off hold (re-INVITE `sendrecv`).
    pub async fn unhold(&self) -> Result<(), CallError> {
        self.engine.ask(|r| Cmd::Hold(self.id.0, false, r)).await
    }

    /// Plays `playlist` to the peer (replacing what it hears, bridged party included, until it ends; then a
    /// bridged leg hears its partner again). [`LegEvent::PlayFinished`] follows the end.
    pub async fn play(&self, playlist: Playlist) -> Result<(), CallError> {
        self.engine.ask(|r| Cmd::Play(self.id.0, playlist, r)).await
    }

    /// Stops what [`Self::play`] started (no `PlayFinished`); the peer hears silence, or its bridged partner.
    pub async fn stop_media(&self) -> Result<(), CallError> {
        self.engine.ask(|r| Cmd::StopMedia(self.id.0, r)).await
    }

    /// Sends DTMF digits (`0-9*#A-D`) to the peer. When the leg negotiated telephone-event, they go in-band
    /// as RFC 4733 events through the relay (with the leg's telephone-event payload type: 100 ms per key, one
    /// packet every 50 ms, three end packets, 100 ms between keys; the leg's audio pauses during each event)
    /// and this returns once the last packet is sent; calls made meanwhile queue behind. Otherwise they go as
    /// SIP INFO, as [`Self::send_dtmf_info`]. Errors: [`CallError::InvalidDigit`] (nothing sent),
    /// [`CallError::DtmfQueueFull`] (more than [`MAX_PENDING_DTMF`] digits would be pending on the leg; nothing
    /// of this call is sent), [`CallError::NotAnswered`], [`CallError::Ended`] (the call ended before all were
    /// sent).
    pub async fn send_dtmf(&self, digits: &str) -> Result<(), CallError> {
        let d = parse_digits(digits)?;
        self.engine.ask(|r| Cmd::Dtmf(self.id.0, d, false, r)).await
    }

    /// Sends DTMF digits as SIP INFO `application/dtmf-relay`, one request per digit (`Duration=250`), whatever
    /// the SDP negotiated. The requests go one at a time (the next after the previous one's final response, so
    /// a UDP retransmission cannot overtake a later digit); calls made meanwhile queue behind, and this returns
    /// once the call's last INFO is answered. Errors as [`Self::send_dtmf`], plus [`CallError::Rejected`] /
    /// [`CallError::Timeout`] when the peer refused or did not answer one of them (the others are sent all the
    /// same), and [`CallError::Unsupported`] on a browser leg.
    pub async fn send_dtmf_info(&self, digits: &str) -> Result<(), CallError> {
        let d = parse_digits(digits)?;
        self.engine.ask(|r| Cmd::Dtmf(self.id.0, d, true, r)).await
    }

    /// Hangs up (CANCEL before an answer, BYE after). [`LegEvent::Ended`] follows.
    pub async fn hangup(&self) -> Result<(), CallError> {
        self.engine.ask(|r| Cmd::Hangup(self.id.0, Some(r))).await
    }

    /// The leg's record, once [`LegEvent::Ended`] was read.
    pub fn cdr(&self) -> Option<&Cdr> {
        self.cdr.as_ref()
    }
}

/// `digits` as DTMF digits, or the first character that is not one.
fn parse_digits(digits: &str) -> Result<Vec<Digit>, CallError> {
    digits
        .chars()
        .map(|c| Digit::from_char(c).ok_or(CallError::InvalidDigit(c)))
        .collect()
}

impl Drop for Leg {
    fn drop(&mut self) {
        let _ = self.engine.send(Cmd::Hangup(self.id.0, None));
    }
}

/// Two legs joined through the relay. Dropping the handle leaves the bridge running (the legs' handles govern
/// the calls).
#[derive(Debug)]
pub struct Bridge {
    id: BridgeId,
    engine: Engine,
    events: mpsc::UnboundedReceiver<BridgeEvent>,
    cdr: Option<BridgeCdr>,
}

impl Bridge {
    /// The bridge's id.
    pub fn id(&self) -> BridgeId {
        self.id
    }

    /// The next event; `None` after [`BridgeEvent::Ended`].
    pub async fn next_event(&mut self) -> Option<BridgeEvent> {
        let ev = self.events.recv().await?;
        if let BridgeEvent::Ended(cdr) = &ev {
            self.cdr = Some((**cdr).clone());
        }
        Some(ev)
    }

    /// Waits for the end and returns the bridge record.
    pub async fn ended(&mut self) -> Option<BridgeCdr> {
        while self.cdr.is_none() {
            self.next_event().await?;
        }
        self.cdr.clone()
    }

    /// Replaces `old` (one of the bridged legs) by the answered leg `new` (transfer to another agent): the
    /// other party stays up and hears `new`; `old` is hung up or kept as [`BridgeOptions::on_transfer`] says.
    pub async fn transfer(&self, old: &Leg, new: &Leg) -> Result<(), CallError> {
        self.engine
            .ask(|r| Cmd::Transfer(self.id.0, old.id.0, new.id.0, r))
            .await
    }

    /// Unbridges: both legs stay up and hear silence. [`BridgeEvent::Ended`] follows.
    pub async fn end(&self) -> Result<(), CallError> {
        self.engine.ask(|r| Cmd::EndBridge(self.id.0, r)).await
    }

    /// The record, once [`BridgeEvent::Ended`] was read.
    pub fn cdr(&self) -> Option<&BridgeCdr> {
        self.cdr.as_ref()
    }
}

struct LegRec {
    core: LegCore,
    info: LegInfo,
    target: String,
    opts: Box<CallOptions>,
    events: mpsc::UnboundedSender<LegEvent>,
    waiters: VecDeque<(Op, Reply<()>)>,
    law: Law,
    playing: bool,
    bridge: Option<u64>,
    /// A bridge waiting for this leg's codec re-INVITE.
    aligning: Option<u64>,
    /// DTMF decoder, created with the first telephone-event packet.
    dtmf: Option<DtmfReceiver>,
    /// For a leg set up outside SIP: how to end it.
    closer: Option<Closer>,
    span: tracing::Span,
    /// Next hop, resolved targets and failover state.
    route: Route,
}

struct BridgeRec {
    core: Option<BridgeCore>,
    a: u64,
    b: u64,
    opts: BridgeOptions,
    events: mpsc::UnboundedSender<BridgeEvent>,
    reply: Option<Reply<()>>,
    start_unix_ms: u64,
    /// Each leg's relay counters when the bridge first connected it (queued before the connect, so the
    /// relay reads them at that point): the bridge's record counts from there.
    snapshots: Vec<(u64, crate::net::rtp_io::Reply<Option<LegStats>>)>,
    /// The recording, once the bridge connected (if asked for): taps for side A and B, and its end; or
    /// why it could not start.
    recording: Option<Result<BridgeRecording, RecordingCdr>>,
}

/// A bridge's running recording (see [`crate::net::record_io`]).
struct BridgeRecording {
    taps: [RecordTap; 2],
    done: Recording,
    path: std::path::PathBuf,
}

/// RFC 4733 digits being sent on one leg, and calls queued behind them.
struct DtmfJob {
    sender: DtmfSender,
    pt: u8,
    reply: Reply<()>,
    queue: VecDeque<(Vec<Digit>, Reply<()>)>,
    /// Digits of the call being sent plus those queued (each call counting at least one), at most
    /// [`MAX_PENDING_DTMF`].
    pending: usize,
}

struct ShutdownState {
    deadline: Option<Instant>,
    done: Vec<oneshot::Sender<()>>,
    hung_up: bool,
}

struct Task {
    /// The IP our SDP offers and answers give for RTP (the public one behind NAT).
    sdp_ip: IpAddr,
    ep: Endpoint,
    relay: Arc<RelayDriver>,
    players: PlayerSet,
    legs: HashMap<u64, LegRec>,
    by_call: HashMap<CallHandle, u64>,
    by_relay: HashMap<crate::media::relay::LegId, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    deadline_of: HashMap<u64, Instant>,
    bridges: HashMap<u64, BridgeRec>,
    /// In-band DTMF being sent, by leg.
    dtmf: HashMap<u64, DtmfJob>,
    outbound_proxy: Option<Proxy>,
    resolver: Arc<SipResolver>,
    /// Where spawned lookups send their answers.
    resolved_tx: mpsc::UnboundedSender<Resolved>,
    /// [`EngineBuilder::failover_timeout`].
    failover_timeout: Option<Duration>,
    registrar: Option<Registrar>,
    from: String,
    /// Legs whose state machines have output to drain.
    dirty: VecDeque<u64>,
    shutdown: Option<ShutdownState>,
    ringback: crate::media::player::Clip,
}

/// DTMF digits a leg may have pending (being sent or queued, calls of [`Leg::send_dtmf`] and
/// [`Leg::send_dtmf_info`] not yet answered, RFC 4733 and INFO together); a call that would go beyond fails with
/// [`CallError::DtmfQueueFull`]. A call of no digits counts as one.
pub use crate::call::leg::MAX_PENDING_DTMF;

/// How long shutdown waits for the registrar to confirm the binding's removal once the calls are over.
const UNREGISTER_WAIT: Duration = Duration::from_secs(5);

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Task {
    async fn run(
        mut self,
        mut sockets: SipSockets,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut relay_events: crate::net::rtp_io::DriverEvents,
        mut resolved: mpsc::UnboundedReceiver<Resolved>,
    ) {
        self.begin_registration(now());
        self.drain(now(), &mut sockets).await;
        let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        let mut cmds_open = true;
        let mut relay_open = true;
        let mut linger_until: Option<Instant> = None;
        let mut calls_over: Option<Instant> = None;
        // TCP connections that did not come up after their message was handed over (see `net::transport`).
        let mut send_failures = sockets.take_failures();
        loop {
            tokio::select! {
                r = sockets.recv() => {
                    let Some(r) = r else { return };
                    self.ep.handle(now(), r.remote, r.transport, r.data);
                }
                Some(f) = async { send_failures.as_mut()?.recv().await } => {
                    tracing::debug!(destination = %f.destination, kind = ?f.kind, "SIP connection failed");
                    // RFC 3261 §17.1.4: the transactions sending there fail now (an INVITE then fails over).
                    self.ep.handle_transport_error(now(), f.destination, f.transport);
                }
                c = cmds.recv(), if cmds_open => match c {
                    Some(c) => self.command(now(), c),
                    None => {
                        cmds_open = false;
                        let n = now();
                        self.start_shutdown(n, ShutdownMode::HangUp, None);
                    }
                },
                e = relay_events.recv(), if relay_open => match e {
                    Some(DriverEvent::Relay(crate::media::relay::Event::Inactive { leg })) => {
                        tracing::debug!(?leg, "RTP inactive");
                    }
                    Some(DriverEvent::Relay(crate::media::relay::Event::TelephoneEvent {
                        leg,
                        timestamp,
                        payload,
                    })) => self.telephone_event(leg, timestamp, payload),
                    Some(_) => {}
                    None => relay_open = false,
                },
                Some(r) = resolved.recv() => {
                    self.resolved(now(), r);
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    self.timeout(now());
                }
            }
            self.drain(now(), &mut sockets).await;
            let mut unregister_wait = None;
            if let Some(s) = &mut self.shutdown {
                if self.legs.is_empty() {
                    // The removing REGISTER gets UNREGISTER_WAIT at most once the calls are over.
                    let give_up = *calls_over.get_or_insert_with(|| now() + UNREGISTER_WAIT);
                    let unregistered = self.registrar.as_ref().is_none_or(|r| r.finished());
                    if unregistered || now() >= give_up {
                        for d in s.done.drain(..) {
                            let _ = d.send(());
                        }
                        let until =
                            *linger_until.get_or_insert_with(|| now() + Duration::from_secs(2));
                        if now() >= until {
                            return;
                        }
                    } else {
                        unregister_wait = Some(give_up);
                    }
                }
            }
            // The endpoint keeps its transactions and calls ordered by deadline: reading it is O(log n).
            let mut next = self.ep.poll_timeout();
            for t in [
                self.players.poll_timeout(),
                self.dtmf
                    .values()
                    .filter_map(|j| j.sender.poll_timeout())
                    .min(),
                self.deadlines.first().map(|d| d.0),
                self.shutdown.as_ref().and_then(|s| s.deadline),
                self.registrar.as_ref().and_then(|r| r.poll_timeout()),
                unregister_wait,
                linger_until,
            ]
            .into_iter()
            .flatten()
            {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
            if next != armed {
                if let Some(t) = next {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(t));
                }
                armed = next;
            }
        }
    }

    /// DTMF from a leg's peer (RFC 4733): one [`LegEvent::Dtmf`] per key press.
    fn telephone_event(
        &mut self,
        rid: crate::media::relay::LegId,
        timestamp: u32,
        payload: [u8; 4],
    ) {
        let Some(&id) = self.by_relay.get(&rid) else {
            return;
        };
        let Some(l) = self.legs.get_mut(&id) else {
            return;
        };
        let rx = l.dtmf.get_or_insert_with(|| DtmfReceiver::new(8000));
        if rx.handle_packet(timestamp, &payload).is_err() {
            return;
        }
        let mut digits = Vec::new();
        while let Some(ev) = rx.poll_event() {
            digits.push(ev.digit);
            let _ = l.events.send(LegEvent::Dtmf {
                digit: ev.digit,
                duration: ev.duration,
            });
        }
        if let Some(bid) = l.bridge.filter(|_| !digits.is_empty()) {
            self.dtmf_across(bid, id, &digits);
        }
    }

    /// Key presses from leg `from` of bridge `bid`, for the other leg. A SIP leg that negotiated telephone-event
    /// has them from the relay already (in its payload type); one that did not gets no RFC 4733 (the relay
    /// drops it: `DropReason::NoTelephoneEvent`), so they go as SIP INFO instead, as FreeSWITCH and Asterisk
    /// interwork the two. Over the pending-digit cap they are dropped (logged).
    fn dtmf_across(&mut self, bid: u64, from: u64, digits: &[Digit]) {
        let Some(br) = self.bridges.get(&bid) else {
            return;
        };
        let other = if br.a == from { br.b } else { br.a };
        let pending_rtp = self.dtmf.get(&other).map_or(0, |j| j.pending);
        let Some(o) = self.legs.get_mut(&other) else {
            return;
        };
        let has_te = o
            .core
            .negotiated()
            .is_some_and(|n| n.telephone_event_pt.is_some());
        if has_te || o.core.phase() != Phase::Answered || o.core.call().is_none() {
            return;
        }
        if pending_rtp + o.core.dtmf_info_pending() + digits.len() > MAX_PENDING_DTMF {
            tracing::debug!(leg = other, "DTMF across the bridge dropped: queue full");
            return;
        }
        if o.core.send_dtmf_info(digits).is_ok() {
            // Its outcome is nobody's to await, but the waiter keeps the application's own INFO replies in order.
            let (done, _) = oneshot::channel();
            o.waiters.push_back((Op::DtmfInfo, done));
            self.dirty.push_back(other);
        }
    }

    fn timeout(&mut self, now: Instant) {
        if self.ep.poll_timeout().is_some_and(|t| t <= now) {
            self.ep.handle_timeout(now);
        }
        self.players.handle_timeout(now);
        self.pump_dtmf(now);
        if let Some(r) = &mut self.registrar {
            if r.handle_timeout(now, &mut self.ep) {
                self.begin_registration(now);
            }
        }
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
            self.deadline_of.remove(&id);
            if let Some(l) = self.legs.get_mut(&id) {
                l.core.handle_timeout(now);
                self.dirty.push_back(id);
            }
        }
        if let Some(s) = &mut self.shutdown {
            if s.deadline.is_some_and(|d| d <= now) && !s.hung_up {
                s.hung_up = true;
                s.deadline = None;
                self.hangup_all();
            }
        }
    }

    fn hangup_all(&mut self) {
        let ids: Vec<u64> = self.legs.keys().copied().collect();
        for id in ids {
            if let Some(l) = self.legs.get_mut(&id) {
                l.core.hangup(EndCause::Shutdown);
                self.dirty.push_back(id);
            }
        }
    }

    fn start_shutdown(
        &mut self,
        now: Instant,
        mode: ShutdownMode,
        done: Option<oneshot::Sender<()>>,
    ) {
        let s = self.shutdown.get_or_insert(ShutdownState {
            deadline: None,
            done: Vec::new(),
            hung_up: false,
        });
        s.done.extend(done);
        if let Some(r) = &mut self.registrar {
            r.shutdown(now, &mut self.ep);
        }
        match mode {
            ShutdownMode::HangUp => {
                if !s.hung_up {
                    s.hung_up = true;
                    self.hangup_all();
                }
            }
            ShutdownMode::Drain(d) => {
                if !s.hung_up {
                    s.deadline = Some(s.deadline.map_or(now + d, |x| x.min(now + d)));
                }
            }
        }
    }

    fn command(&mut self, now: Instant, c: Cmd) {
        match c {
            Cmd::Call {
                id,
                target,
                opts,
                info,
                events,
                reply,
            } => {
                if self.shutdown.is_some() {
                    let _ = reply.send(Err(CallError::Shutdown));
                    fire(self.relay.remove_leg(info.id));
                    return;
                }
                let span = tracing::info_span!("leg", id, target = %target);
                let setup = LegSetup {
                    id,
                    target: target.clone(),
                    local_rtp: SocketAddr::new(self.sdp_ip, info.rtp.port()),
                    codecs: opts.codecs.clone(),
                    ring_timeout: opts.ring_timeout,
                    session_timer: opts.session_timer,
                    sdp_session_id: id,
                    start_unix_ms: unix_ms(),
                };
                let mut core = LegCore::new(now, setup);
                core.start(now);
                self.by_relay.insert(info.id, id);
                self.legs.insert(
                    id,
                    LegRec {
                        core,
                        info,
                        target,
                        opts,
                        events,
                        waiters: VecDeque::new(),
                        law: Law::Ulaw,
                        playing: false,
                        bridge: None,
                        aligning: None,
                        dtmf: None,
                        closer: None,
                        span,
                        route: Route::default(),
                    },
                );
                self.pump_leg(now, id);
                let ok = self
                    .legs
                    .get(&id)
                    .is_none_or(|l| l.core.phase() != Phase::Ended);
                let _ = reply.send(if ok {
                    Ok(())
                } else {
                    Err(CallError::InvalidUri)
                });
            }
            Cmd::Hold(id, on, reply) => {
                let Some(l) = self.legs.get_mut(&id) else {
                    let _ = reply.send(Err(CallError::Ended));
                    return;
                };
                let r = if on { l.core.hold() } else { l.core.unhold() };
                match r {
                    Ok(()) => {
                        l.waiters
                            .push_back((if on { Op::Hold } else { Op::Unhold }, reply));
                        self.dirty.push_back(id);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Cmd::Play(id, playlist, reply) => {
                let r = self.play(now, id, playlist);
                let _ = reply.send(r);
            }
            Cmd::StopMedia(id, reply) => {
                let r = match self.legs.get(&id) {
                    Some(_) => {
                        self.stop_player(id);
                        self.restore_source(id);
                        Ok(())
                    }
                    None => Err(CallError::Ended),
                };
                let _ = reply.send(r);
            }
            Cmd::Hangup(id, reply) => {
                let r = match self.legs.get_mut(&id) {
                    Some(l) => {
                        let cause = if l.core.phase() == Phase::Answered {
                            EndCause::Normal
                        } else {
                            EndCause::Cancelled
                        };
                        l.core.hangup(cause);
                        self.dirty.push_back(id);
                        Ok(())
                    }
                    None => Err(CallError::Ended),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Cmd::Dtmf(id, digits, info, reply) => {
                let weight = digits.len().max(1);
                let pending = self.dtmf.get(&id).map_or(0, |j| j.pending)
                    + self.legs.get(&id).map_or(0, |l| l.core.dtmf_info_pending());
                if pending + weight > MAX_PENDING_DTMF {
                    let _ = reply.send(Err(CallError::DtmfQueueFull {
                        pending,
                        limit: MAX_PENDING_DTMF,
                    }));
                    return;
                }
                let leg = self
                    .legs
                    .get(&id)
                    .filter(|l| l.core.phase() == Phase::Answered);
                let call = leg.and_then(|l| l.core.call());
                let te = leg
                    .and_then(|l| l.core.negotiated())
                    .and_then(|n| n.telephone_event_pt)
                    .filter(|_| !info);
                // A browser leg has no SIP call but sends RFC 4733 all the same.
                let media_up = call.is_some() || leg.is_some_and(|l| l.core.is_elsewhere());
                if let (Some(pt), true) = (te, media_up) {
                    match self.dtmf.get_mut(&id) {
                        Some(job) => {
                            job.pending += weight;
                            job.queue.push_back((digits, reply));
                        }
                        None => {
                            let opts = DtmfSendOptions::default();
                            let sender = DtmfSender::new(now, &digits, opts);
                            self.dtmf.insert(
                                id,
                                DtmfJob {
                                    sender,
                                    pt,
                                    reply,
                                    queue: VecDeque::new(),
                                    pending: weight,
                                },
                            );
                            self.pump_dtmf(now);
                        }
                    }
                    return;
                }
                // SIP INFO: the leg sends one request at a time, in order (see `LegCore::send_dtmf_info`).
                let Some(l) = self.legs.get_mut(&id) else {
                    let _ = reply.send(Err(CallError::Ended));
                    return;
                };
                match l.core.send_dtmf_info(&digits) {
                    Ok(()) => {
                        l.waiters.push_back((Op::DtmfInfo, reply));
                        self.dirty.push_back(id);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Cmd::Bridge {
                id,
                a,
                b,
                opts,
                events,
                reply,
            } => self.bridge(now, id, a, b, opts, events, reply),
            Cmd::Transfer(bid, old, new, reply) => {
                let r = self.transfer(now, bid, old, new);
                let _ = reply.send(r);
            }
            Cmd::EndBridge(bid, reply) => {
                let r = match self.bridges.get_mut(&bid).and_then(|b| b.core.as_mut()) {
                    Some(core) if !core.is_ended() => {
                        core.end(now);
                        self.pump_bridge(now, bid);
                        Ok(())
                    }
                    _ => Err(CallError::BridgeEnded),
                };
                let _ = reply.send(r);
            }
            Cmd::Shutdown(mode, done) => self.start_shutdown(now, mode, Some(done)),
            Cmd::Elsewhere {
                id,
                info,
                remote,
                law,
                telephone_event,
                closer,
                events,
                reply,
            } => self.elsewhere(
                now,
                id,
                info,
                (remote, law, telephone_event),
                closer,
                events,
                reply,
            ),
            Cmd::ElsewhereEnded(id, cause, by) => {
                if let Some(l) = self.legs.get_mut(&id) {
                    l.closer = None;
                    l.core.ended_elsewhere(now, cause, by);
                    self.dirty.push_back(id);
                }
            }
        }
    }

    /// Adds an answered leg set up outside SIP (see [`LegCore::answered_elsewhere`]): its peer's address, law
    /// and telephone-event payload type in `media`.
    #[allow(clippy::too_many_arguments)]
    fn elsewhere(
        &mut self,
        now: Instant,
        id: u64,
        info: LegInfo,
        media: (SocketAddr, Law, Option<u8>),
        closer: Closer,
        events: mpsc::UnboundedSender<LegEvent>,
        reply: Reply<()>,
    ) {
        if self.shutdown.is_some() {
            let _ = reply.send(Err(CallError::Shutdown));
            fire(self.relay.remove_leg(info.id));
            closer();
            return;
        }
        let (remote, law, te) = media;
        let rid = info.id;
        // With telephone-event set, the relay reports the peer's RFC 4733 packets (typed DTMF, as a SIP leg's)
        // and maps their payload type to a bridged partner's.
        fire(self.relay.with_relay(move |r, _| {
            let _ = r.set_remote(rid, Some(remote), None);
            let _ = r.set_telephone_event_pt(rid, te);
        }));
        let codec = match law {
            Law::Ulaw => crate::sdp::Codec::pcmu(),
            Law::Alaw => crate::sdp::Codec::pcma(),
        };
        let negotiated = crate::sdp::Negotiated {
            media_index: 0,
            remote_rtp: remote,
            remote_rtcp: remote,
            codec: codec.clone(),
            recv_pt: codec.pt,
            telephone_event_pt: te,
            telephone_event_recv_pt: te,
            direction: crate::sdp::Direction::SendRecv,
            ptime: 20,
            rtcp_mux: true,
        };
        let target = "webrtc".to_owned();
        let setup = LegSetup {
            id,
            target: target.clone(),
            local_rtp: info.rtp,
            codecs: vec![codec],
            ring_timeout: None,
            session_timer: None,
            sdp_session_id: id,
            start_unix_ms: unix_ms(),
        };
        self.by_relay.insert(info.id, id);
        self.legs.insert(
            id,
            LegRec {
                core: LegCore::answered_elsewhere(now, setup, negotiated),
                info,
                target,
                opts: Box::default(),
                events,
                waiters: VecDeque::new(),
                law,
                playing: false,
                bridge: None,
                aligning: None,
                dtmf: None,
                closer: Some(closer),
                route: Route::default(),
                span: tracing::info_span!("leg", id, target = "webrtc"),
            },
        );
        self.pump_leg(now, id);
        let _ = reply.send(Ok(()));
    }

    /// Sends the RFC 4733 packets due; answers a finished call and starts the next one queued on its leg.
    fn pump_dtmf(&mut self, now: Instant) {
        let mut done = Vec::new();
        for (id, job) in &mut self.dtmf {
            let Some(l) = self.legs.get(id) else {
                done.push(*id);
                continue;
            };
            job.sender.handle_timeout(now);
            while let Some(p) = job.sender.poll_packet() {
                self.relay
                    .send_event(l.info.id, job.pt, p.payload, p.marker, p.last);
            }
            if job.sender.poll_timeout().is_none() {
                done.push(*id);
            }
        }
        for id in done {
            let Some(job) = self.dtmf.remove(&id) else {
                continue;
            };
            let up = self.legs.contains_key(&id);
            let _ = job
                .reply
                .send(if up { Ok(()) } else { Err(CallError::Ended) });
            let mut queue = job.queue;
            if !up {
                for (_, r) in queue {
                    let _ = r.send(Err(CallError::Ended));
                }
                continue;
            }
            if let Some((digits, reply)) = queue.pop_front() {
                let opts = DtmfSendOptions::default();
                let sender = DtmfSender::new(now + opts.gap, &digits, opts);
                let pending =
                    queue.iter().map(|(d, _)| d.len().max(1)).sum::<usize>() + digits.len().max(1);
                self.dtmf.insert(
                    id,
                    DtmfJob {
                        sender,
                        pt: job.pt,
                        reply,
                        queue,
                        pending,
                    },
                );
            }
        }
    }

    fn play(&mut self, now: Instant, id: u64, playlist: Playlist) -> Result<(), CallError> {
        let l = self.legs.get_mut(&id).ok_or(CallError::Ended)?;
        if l.core.phase() == Phase::Ended {
            return Err(CallError::Ended);
        }
        self.players
            .start(now, PlayerId(id), playlist, PlayerOptions::new(l.law))?;
        l.playing = true;
        fire(self.relay.set_source(l.info.id, Source::Generated));
        Ok(())
    }

    fn stop_player(&mut self, id: u64) {
        if let Some(l) = self.legs.get_mut(&id) {
            if l.playing {
                l.playing = false;
                self.players.stop(PlayerId(id));
            }
        }
    }

    /// After a player stops: a bridged leg hears its partner again (unless one side holds), else silence.
    fn restore_source(&mut self, id: u64) {
        let Some(l) = self.legs.get(&id) else { return };
        let mut src = Source::Silence;
        if let Some(b) = l.bridge.and_then(|b| self.bridges.get(&b)) {
            if let Some(core) = &b.core {
                let (x, y) = core.legs();
                let partner = if x == id { y } else { x };
                let holding = l.core.is_remote_held()
                    || self
                        .legs
                        .get(&partner)
                        .is_some_and(|p| p.core.is_remote_held());
                if !holding {
                    if let Some(p) = self.legs.get(&partner) {
                        src = Source::Leg(p.info.id);
                    }
                }
            }
        }
        fire(self.relay.set_source(l.info.id, src));
    }

    #[allow(clippy::too_many_arguments)]
    fn bridge(
        &mut self,
        now: Instant,
        id: u64,
        a: u64,
        b: u64,
        opts: BridgeOptions,
        events: mpsc::UnboundedSender<BridgeEvent>,
        reply: Reply<()>,
    ) {
        for x in [a, b] {
            match self.legs.get(&x) {
                None => {
                    let _ = reply.send(Err(CallError::Ended));
                    return;
                }
                Some(l) if l.core.phase() != Phase::Answered => {
                    let _ = reply.send(Err(CallError::NotAnswered));
                    return;
                }
                Some(l) if l.bridge.is_some() || l.aligning.is_some() => {
                    let _ = reply.send(Err(CallError::AlreadyBridged));
                    return;
                }
                Some(_) => {}
            }
        }
        self.bridges.insert(
            id,
            BridgeRec {
                core: None,
                a,
                b,
                opts,
                events,
                reply: Some(reply),
                start_unix_ms: unix_ms(),
                snapshots: Vec::new(),
                recording: None,
            },
        );
        self.try_connect(now, id, false);
    }

    /// Starts the bridge if the codecs agree, else asks leg B to align (once).
    fn try_connect(&mut self, now: Instant, bid: u64, aligned_once: bool) {
        let Some(br) = self.bridges.get(&bid) else {
            return;
        };
        let (a, b) = (br.a, br.b);
        let codec = |x: u64| {
            self.legs
                .get(&x)
                .and_then(|l| l.core.negotiated().map(|n| n.codec.clone()))
        };
        let (Some(ca), Some(cb)) = (codec(a), codec(b)) else {
            self.fail_bridge(bid, CallError::Ended);
            return;
        };
        match plan(&ca, &cb, aligned_once) {
            // Transcode: the legs' laws reached the relay with their `LegCommand::Remote`; it maps PCMU↔PCMA
            // per packet (see `media::relay`).
            Plan::Connect | Plan::Transcode => {
                let Some(br) = self.bridges.get_mut(&bid) else {
                    return;
                };
                br.core = Some(BridgeCore::new(
                    bid,
                    now,
                    br.start_unix_ms,
                    (a, b),
                    br.opts.on_hangup,
                    br.opts.on_transfer,
                    br.opts.hold_music.is_some(),
                ));
                if let Some(path) = br.opts.record.clone() {
                    // The shared writer thread creates the file and does all of its I/O; this only fails
                    // if that thread cannot be started (a file error comes with the recording's end).
                    br.recording = Some(match record_io::start(&path, now) {
                        Ok((va, vb, done)) => Ok(BridgeRecording {
                            taps: [va, vb],
                            done,
                            path: path.clone(),
                        }),
                        Err(e) => {
                            tracing::warn!(bridge = bid, error = %e, "recording not started");
                            Err(RecordingCdr {
                                path,
                                frames: 0,
                                packets: 0,
                                dropped: 0,
                                error: Some(e.to_string()),
                            })
                        }
                    });
                }
                if let Some(r) = br.reply.take() {
                    let _ = r.send(Ok(()));
                }
                for x in [a, b] {
                    if let Some(l) = self.legs.get_mut(&x) {
                        l.bridge = Some(bid);
                        l.aligning = None;
                    }
                }
                self.pump_bridge(now, bid);
                // A party already holding when bridged: the other hears music at once.
                for x in [a, b] {
                    if self.legs.get(&x).is_some_and(|l| l.core.is_remote_held()) {
                        if let Some(core) = self.bridges.get_mut(&bid).and_then(|b| b.core.as_mut())
                        {
                            core.remote_hold(x, true);
                        }
                    }
                }
                self.pump_bridge(now, bid);
            }
            Plan::AlignB(c) => {
                let mut codecs = vec![c];
                if let Some(l) = self.legs.get(&b) {
                    codecs.extend(
                        l.opts
                            .codecs
                            .iter()
                            .filter(|x| x.name == crate::sdp::CodecName::TelephoneEvent)
                            .cloned(),
                    );
                }
                let Some(l) = self.legs.get_mut(&b) else {
                    return;
                };
                match l.core.reoffer(&codecs) {
                    Ok(()) => {
                        l.aligning = Some(bid);
                        self.dirty.push_back(b);
                    }
                    // A leg without SIP (a browser leg) cannot re-offer: the relay transcodes.
                    Err(CallError::Unsupported) => self.try_connect(now, bid, true),
                    Err(e) => self.fail_bridge(bid, e),
                }
            }
            Plan::Incompatible => self.fail_bridge(bid, CallError::IncompatibleCodecs),
        }
    }

    fn fail_bridge(&mut self, bid: u64, e: CallError) {
        if let Some(mut br) = self.bridges.remove(&bid) {
            for x in [br.a, br.b] {
                if let Some(l) = self.legs.get_mut(&x) {
                    if l.aligning == Some(bid) {
                        l.aligning = None;
                    }
                }
            }
            if let Some(r) = br.reply.take() {
                let _ = r.send(Err(e));
            }
        }
    }

    fn transfer(&mut self, now: Instant, bid: u64, old: u64, new: u64) -> Result<(), CallError> {
        match self.legs.get(&new) {
            None => return Err(CallError::Ended),
            Some(l) if l.core.phase() != Phase::Answered => return Err(CallError::NotAnswered),
            Some(l) if l.bridge.is_some() => return Err(CallError::AlreadyBridged),
            Some(_) => {}
        }
        let core = self
            .bridges
            .get_mut(&bid)
            .and_then(|b| b.core.as_mut())
            .filter(|c| !c.is_ended())
            .ok_or(CallError::BridgeEnded)?;
        if !core.transfer(old, new) {
            return Err(CallError::UnknownLeg);
        }
        if self
            .bridges
            .get(&bid)
            .is_some_and(|b| matches!(b.recording, Some(Ok(_))))
        {
            // The new leg is tapped when the bridge connects it (in place of the old one).
            if let Some(l) = self.legs.get(&old) {
                fire(self.relay.set_tap(l.info.id, None));
            }
        }
        if let Some(l) = self.legs.get_mut(&old) {
            l.bridge = None;
        }
        if let Some(l) = self.legs.get_mut(&new) {
            l.bridge = Some(bid);
        }
        if let Some(b) = self.bridges.get(&bid) {
            let _ = b.events.send(BridgeEvent::Transferred {
                old: LegId(old),
                new: LegId(new),
            });
        }
        self.pump_bridge(now, bid);
        Ok(())
    }

    fn pump_bridge(&mut self, now: Instant, bid: u64) {
        let Some(cmds) = self
            .bridges
            .get_mut(&bid)
            .and_then(|b| b.core.as_mut())
            .map(|c| c.take_commands())
        else {
            return;
        };
        for c in cmds {
            match c {
                BridgeCommand::Connect(x, y) => {
                    self.stop_player(x);
                    self.stop_player(y);
                    if let (Some(lx), Some(ly)) = (self.legs.get(&x), self.legs.get(&y)) {
                        if let Some(br) = self.bridges.get_mut(&bid) {
                            for (leg, rid) in [(x, lx.info.id), (y, ly.info.id)] {
                                if !br.snapshots.iter().any(|s| s.0 == leg) {
                                    br.snapshots.push((leg, self.relay.leg_stats(rid)));
                                }
                            }
                            // Side A (left channel) is the bridge's first leg, side B its second.
                            if let (Some(Ok(rec)), Some(core)) = (&br.recording, &br.core) {
                                let (a, _) = core.legs();
                                for (leg, rid) in [(x, lx.info.id), (y, ly.info.id)] {
                                    let tap = &rec.taps[usize::from(leg != a)];
                                    fire(self.relay.set_tap(rid, Some(tap.clone())));
                                }
                            }
                        }
                        fire(self.relay.connect(lx.info.id, ly.info.id));
                    }
                }
                BridgeCommand::Listen(x, what) => {
                    self.stop_player(x);
                    let music = self
                        .bridges
                        .get(&bid)
                        .and_then(|b| b.opts.hold_music.clone());
                    match (what, music) {
                        (Listen::Music, Some(m)) => {
                            let _ = self.play(now, x, m);
                        }
                        _ => {
                            if let Some(l) = self.legs.get(&x) {
                                fire(self.relay.set_source(l.info.id, Source::Silence));
                            }
                        }
                    }
                }
                BridgeCommand::Hangup(x) => {
                    if let Some(l) = self.legs.get_mut(&x) {
                        l.core.hangup(EndCause::Normal);
                        self.dirty.push_back(x);
                    }
                }
                BridgeCommand::Ended(mut cdr) => {
                    let Some(br) = self.bridges.remove(&bid) else {
                        continue;
                    };
                    let (a, b) = br.core.as_ref().map_or((br.a, br.b), |c| c.legs());
                    for x in [a, b] {
                        if let Some(l) = self.legs.get_mut(&x) {
                            if l.bridge == Some(bid) {
                                l.bridge = None;
                            }
                        }
                    }
                    // Ask for the counters now: the relay handles commands in order, before any removal.
                    let sa = self.legs.get(&a).map(|l| self.relay.leg_stats(l.info.id));
                    let sb = self.legs.get(&b).map(|l| self.relay.leg_stats(l.info.id));
                    // Untap both legs: once the relay dropped its taps (and ours go with `br`), the writer
                    // finalises the file and reports.
                    let recording = match br.recording {
                        Some(Ok(rec)) => {
                            for x in [a, b] {
                                if let Some(l) = self.legs.get(&x) {
                                    fire(self.relay.set_tap(l.info.id, None));
                                }
                            }
                            let BridgeRecording { taps, done, path } = rec;
                            drop(taps);
                            Some(Ok((done, path)))
                        }
                        Some(Err(r)) => Some(Err(r)),
                        None => None,
                    };
                    let tx = br.events;
                    let mut snapshots = br.snapshots;
                    let mut start_of = move |leg: u64| {
                        let i = snapshots.iter().position(|s| s.0 == leg)?;
                        Some(snapshots.swap_remove(i).1)
                    };
                    let (a0, b0) = (start_of(a), start_of(b));
                    tokio::spawn(async move {
                        // Counters over the bridge's life: at the end, less at the leg's connection.
                        async fn read(
                            end: Option<crate::net::rtp_io::Reply<Option<LegStats>>>,
                            start: Option<crate::net::rtp_io::Reply<Option<LegStats>>>,
                        ) -> Option<MediaCounters> {
                            let end = counters(&end?.await.ok()??);
                            let start = match start {
                                Some(s) => s.await.ok().flatten().map(|s| counters(&s)),
                                None => None,
                            };
                            Some(start.map_or(end, |s| end.since(&s)))
                        }
                        if let Some(m) = read(sa, a0).await {
                            cdr.a_media = m;
                        }
                        if let Some(m) = read(sb, b0).await {
                            cdr.b_media = m;
                        }
                        cdr.recording = match recording {
                            Some(Ok((done, path))) => Some(match done.finished().await {
                                Ok(r) => RecordingCdr {
                                    path: r.path,
                                    frames: r.frames,
                                    packets: r.packets,
                                    dropped: r.dropped,
                                    error: None,
                                },
                                Err(e) => RecordingCdr {
                                    path,
                                    frames: 0,
                                    packets: 0,
                                    dropped: 0,
                                    error: Some(e.to_string()),
                                },
                            }),
                            Some(Err(r)) => Some(r),
                            None => None,
                        };
                        let _ = tx.send(BridgeEvent::Ended(cdr));
                    });
                }
            }
        }
    }

    /// Starts (or resolves the next hop of) the leg's INVITE: to the hop already chosen (a 422 retry), else to
    /// the outbound proxy or the target, resolving a host name first.
    fn start_invite(
        &mut self,
        now: Instant,
        id: u64,
        body: Bytes,
        headers: Vec<(HeaderName, Bytes)>,
        retry_of: Option<CallHandle>,
    ) {
        let Some(l) = self.legs.get_mut(&id) else {
            return;
        };
        l.route.invite = Some((body, headers));
        l.route.retry_of = retry_of;
        if let Some(hop) = l.route.hop {
            self.send_invite(now, id, hop);
            return;
        }
        match trunk::hop_for(self.outbound_proxy.as_ref(), &l.target) {
            Hop::Direct(t) => self.send_invite(now, id, t),
            Hop::Resolve(uri) => {
                if !l.route.resolving {
                    l.route.resolving = true;
                    tracing::debug!(uri = %uri, "resolving the next hop");
                    trunk::spawn_resolve(
                        self.resolver.clone(),
                        uri,
                        self.resolved_tx.clone(),
                        move |r| Resolved::Leg(id, r),
                    );
                }
            }
            Hop::Invalid => l.core.invite_failed(now),
        }
    }

    /// A lookup finished: the leg's INVITE goes to the first target, or the leg fails; the registration starts.
    fn resolved(&mut self, now: Instant, r: Resolved) {
        match r {
            Resolved::Registrar(r) => {
                if let Some(reg) = &mut self.registrar {
                    reg.resolved(now, &mut self.ep, r);
                }
            }
            Resolved::Leg(id, r) => {
                let Some(l) = self.legs.get_mut(&id) else {
                    return;
                };
                l.route.resolving = false;
                let _g = l.span.clone().entered();
                match r {
                    Ok(targets) => {
                        tracing::debug!(?targets, "next hop resolved");
                        let mut f = crate::net::dns::Failover::new(targets);
                        let first = f.next_target();
                        l.route.failover = Some(f);
                        match first {
                            Some(t) => self.send_invite(now, id, t),
                            None => l.core.invite_failed(now),
                        }
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "next hop not resolved");
                        l.core.invite_failed(now);
                    }
                }
                self.dirty.push_back(id);
            }
        }
    }

    /// Starts the trunk registration, if the engine has one (resolving the registrar first when needed).
    fn begin_registration(&mut self, now: Instant) {
        if let Some(r) = &mut self.registrar {
            r.begin(
                now,
                &mut self.ep,
                self.outbound_proxy.as_ref(),
                self.resolver.clone(),
                &self.resolved_tx,
            );
        }
    }

    /// Sends the leg's INVITE (its stored body and headers) to `target`, over its transport.
    fn send_invite(&mut self, now: Instant, id: u64, target: Target) {
        let Some(l) = self.legs.get_mut(&id) else {
            return;
        };
        let Some((body, headers)) = l.route.invite.clone() else {
            return;
        };
        l.route.hop = Some(target);
        let mut extra = l.opts.headers.clone();
        extra.extend(headers);
        if let Some(p) = &l.opts.asserted_identity {
            let v = if p.contains('<') {
                p.clone()
            } else {
                format!("<{p}>")
            };
            extra.push((HeaderName::PAssertedIdentity, Bytes::from(v)));
        }
        if let Some(p) = &l.opts.privacy {
            extra.push((HeaderName::Privacy, Bytes::from(p.clone())));
        }
        if let Some(route) = trunk::preloaded_route(self.outbound_proxy.as_ref()) {
            extra.push((HeaderName::Route, route));
        }
        let req = InviteRequest {
            target: l.target.clone(),
            from: from_header(
                l.opts.from.as_deref().unwrap_or(&self.from),
                l.opts.display_name.as_deref(),
            ),
            to: None,
            next_hop: target.addr,
            transport: Some(target.transport),
            sdp: body,
            credentials: l.opts.credentials.clone(),
            extra_headers: extra,
        };
        // A 422 retry stays in the same call (same Call-ID, next CSeq); a failover is a new INVITE.
        let r = match l.route.retry_of.take() {
            Some(prev) => self.ep.retry_invite(now, prev, req),
            None => self.ep.start_invite(now, req),
        };
        match r {
            Ok(call) => {
                if let Some(old) = l.core.call() {
                    self.by_call.remove(&old);
                }
                // The Call-ID at once: a call that is never answered has it in its record too.
                let cid = self.ep.call_id(call);
                l.core
                    .attach(call, cid.map(|c| String::from_utf8_lossy(c).into_owned()));
                self.by_call.insert(call, id);
                // Another target is left: a silent one is abandoned after the failover timeout, not Timer B.
                let more = l.route.failover.as_ref().is_some_and(|f| f.remaining() > 0);
                if let (true, Some(t)) = (more, self.failover_timeout) {
                    let _ = self.ep.set_response_deadline(call, now + t);
                }
                l.route.attempts += 1;
                if l.route.attempts == 1 {
                    let _ = l.events.send(LegEvent::Trying);
                }
            }
            Err(_) => l.core.invite_failed(now),
        }
    }

    /// Drains a leg's commands and events.
    fn pump_leg(&mut self, now: Instant, id: u64) {
        loop {
            let Some(l) = self.legs.get_mut(&id) else {
                return;
            };
            let Some(cmd) = l.core.poll_command() else {
                break;
            };
            let call = l.core.call();
            let rid = l.info.id;
            let _g = l.span.clone().entered();
            match cmd {
                LegCommand::Invite {
                    body,
                    headers,
                    retry_of,
                } => self.start_invite(now, id, body, headers, retry_of),
                LegCommand::Cancel => {
                    if let Some(l) = self.legs.get_mut(&id) {
                        l.route.cancelled = true;
                        if l.route.resolving {
                            // Nothing sent yet: the leg ends now; the lookup's answer will find no leg.
                            l.core.abandon(now);
                        }
                    }
                    if let Some(c) = call {
                        let _ = self.ep.send_cancel(now, c);
                    }
                }
                LegCommand::Bye => {
                    if let Some(c) = call {
                        let _ = self.ep.send_bye(now, c);
                    } else if let Some(close) = self.legs.get_mut(&id).and_then(|l| l.closer.take())
                    {
                        close();
                    }
                }
                LegCommand::Info { content_type, body } => {
                    let sent =
                        call.is_some_and(|c| self.ep.send_info(now, c, content_type, body).is_ok());
                    if !sent {
                        if let Some(l) = self.legs.get_mut(&id) {
                            l.core.info_not_sent();
                        }
                    }
                }
                LegCommand::Reinvite(b) | LegCommand::Update(b) if call.is_none() => {
                    let _ = b;
                }
                LegCommand::Reinvite(b) => {
                    let h = self
                        .legs
                        .get(&id)
                        .map(|l| l.core.session_headers())
                        .unwrap_or_default();
                    if let Some(c) = call {
                        if let Err(e) = self.ep.send_reinvite_with(now, c, b, h) {
                            tracing::debug!(error = %e, "re-INVITE refused");
                        }
                    }
                }
                LegCommand::Update(b) => {
                    let h = self
                        .legs
                        .get(&id)
                        .map(|l| l.core.session_headers())
                        .unwrap_or_default();
                    if let Some(c) = call {
                        let _ = self.ep.send_update_with(now, c, b, h);
                    }
                }
                LegCommand::AnswerReinvite { code, body } => {
                    if let Some(c) = call {
                        let _ = self.ep.answer_reinvite(now, c, code, body);
                    }
                }
                LegCommand::AnswerUpdate { code, body } => {
                    if let Some(c) = call {
                        let _ = self.ep.answer_update(now, c, code, body);
                    }
                }
                LegCommand::Remote {
                    rtp,
                    rtcp,
                    telephone_event_pt,
                    law,
                } => {
                    if let (Some(law), Some(l)) = (law, self.legs.get_mut(&id)) {
                        l.law = law;
                    }
                    fire(self.relay.with_relay(move |r, _| {
                        let _ = r.set_remote(rid, Some(rtp), Some(rtcp));
                        let _ = r.set_telephone_event_pt(rid, telephone_event_pt);
                        let _ = r.set_codec(rid, law);
                    }));
                }
                LegCommand::MediaHold(on) => {
                    fire(self.relay.set_hold(rid, on));
                }
                LegCommand::Done { op, result } => {
                    if let Some(l) = self.legs.get_mut(&id) {
                        if let Some(pos) = l.waiters.iter().position(|w| w.0 == op) {
                            if let Some((_, w)) = l.waiters.remove(pos) {
                                let _ = w.send(result.clone());
                            }
                        }
                        if op == Op::Reoffer {
                            if let Some(bid) = l.aligning.take() {
                                // Aligned or refused: connect, transcoding G.711 if the laws still
                                // differ. A leg that ended meanwhile fails the bridge in `try_connect`.
                                let up = l.core.phase() == Phase::Answered;
                                match result {
                                    Err(e) if !up => self.fail_bridge(bid, e),
                                    r => {
                                        if r.is_err() {
                                            tracing::debug!("codec re-INVITE refused: transcoding");
                                        }
                                        self.try_connect(now, bid, true);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        while let Some(ev) = self.legs.get_mut(&id).and_then(|l| l.core.poll_event()) {
            self.leg_event(now, id, ev);
        }
        // Re-arm this leg's deadline.
        let next = self.legs.get(&id).and_then(|l| l.core.poll_timeout());
        let old = self.deadline_of.get(&id).copied();
        if old != next {
            if let Some(o) = old {
                self.deadlines.remove(&(o, id));
                self.deadline_of.remove(&id);
            }
            if let Some(n) = next {
                self.deadlines.insert((n, id));
                self.deadline_of.insert(id, n);
            }
        }
    }

    fn companion(&self, id: u64) -> Option<(u64, EarlyMedia)> {
        let l = self.legs.get(&id)?;
        let c = l.opts.companion?.0;
        self.legs
            .contains_key(&c)
            .then_some((c, l.opts.early_media))
    }

    fn leg_event(&mut self, now: Instant, id: u64, ev: LegEvent) {
        match &ev {
            LegEvent::Ringing => {
                if let Some((c, EarlyMedia::Ringback)) = self.companion(id) {
                    if self.legs.get(&c).is_some_and(|l| l.bridge.is_none()) {
                        let clip = self.ringback.clone();
                        let pl = Playlist::new().then(PlayItem::Loop {
                            clip,
                            duration: None,
                        });
                        let _ = self.play(now, c, pl);
                    }
                }
            }
            LegEvent::EarlyMedia => {
                if let Some((c, EarlyMedia::Forward)) = self.companion(id) {
                    let src = self.legs.get(&id).map(|l| l.info.id);
                    if let (Some(src), Some(cl)) = (src, self.legs.get(&c)) {
                        if cl.bridge.is_none() {
                            self.stop_player(c);
                            if let Some(cl) = self.legs.get(&c) {
                                fire(self.relay.set_source(cl.info.id, Source::Leg(src)));
                            }
                        }
                    }
                }
            }
            LegEvent::Answered => {
                if let Some(l) = self.legs.get_mut(&id) {
                    if let Some(law) = l.core.negotiated().and_then(|n| n.codec.law()) {
                        l.law = law;
                    }
                }
                self.release_companion(id);
            }
            LegEvent::RemoteHold | LegEvent::RemoteResume => {
                let on = matches!(ev, LegEvent::RemoteHold);
                if let Some(bid) = self.legs.get(&id).and_then(|l| l.bridge) {
                    if let Some(core) = self.bridges.get_mut(&bid).and_then(|b| b.core.as_mut()) {
                        core.remote_hold(id, on);
                    }
                    self.pump_bridge(now, bid);
                }
            }
            LegEvent::Ended { .. } => {
                self.release_companion(id);
                self.stop_player(id);
                if let Some(bid) = self.legs.get(&id).and_then(|l| l.bridge) {
                    if let Some(core) = self.bridges.get_mut(&bid).and_then(|b| b.core.as_mut()) {
                        core.leg_ended(now, id);
                    }
                    self.pump_bridge(now, bid);
                }
                if let Some(bid) = self.legs.get_mut(&id).and_then(|l| l.aligning.take()) {
                    self.fail_bridge(bid, CallError::Ended);
                }
                let Some(l) = self.legs.remove(&id) else {
                    return;
                };
                if let Some(c) = l.core.call() {
                    self.by_call.remove(&c);
                }
                self.by_relay.remove(&l.info.id);
                if let Some(d) = self.deadline_of.remove(&id) {
                    self.deadlines.remove(&(d, id));
                }
                for (_, w) in l.waiters {
                    let _ = w.send(Err(CallError::Ended));
                }
                if let Some(job) = self.dtmf.remove(&id) {
                    let _ = job.reply.send(Err(CallError::Ended));
                    for (_, r) in job.queue {
                        let _ = r.send(Err(CallError::Ended));
                    }
                }
                let stats = self.relay.remove_leg(l.info.id);
                let tx = l.events;
                let LegEvent::Ended { by, cause, mut cdr } = ev else {
                    return;
                };
                let _g = l.span.entered();
                tracing::debug!(?cause, ?by, "leg ended");
                tokio::spawn(async move {
                    if let Ok(Ok(s)) = stats.await {
                        cdr.media = counters(&s);
                    }
                    let _ = tx.send(LegEvent::Ended { by, cause, cdr });
                });
                return;
            }
            _ => {}
        }
        if let Some(l) = self.legs.get(&id) {
            let _ = l.events.send(ev);
        }
    }

    /// This leg no longer rings: its companion stops hearing our ringback or the callee's early media.
    fn release_companion(&mut self, id: u64) {
        let Some((c, policy)) = self.companion(id) else {
            return;
        };
        if policy == EarlyMedia::Ignore || self.legs.get(&c).is_some_and(|l| l.bridge.is_some()) {
            return;
        }
        if let Some(l) = self.legs.get_mut(&id) {
            l.opts.companion = None;
        }
        self.stop_player(c);
        if let Some(cl) = self.legs.get(&c) {
            fire(self.relay.set_source(cl.info.id, Source::Silence));
        }
    }

    async fn drain(&mut self, now: Instant, sockets: &mut SipSockets) {
        loop {
            let mut progressed = false;
            while let Some(e) = self.ep.poll_event() {
                progressed = true;
                self.sip_event(now, e);
            }
            while let Some(id) = self.dirty.pop_front() {
                progressed = true;
                self.pump_leg(now, id);
            }
            while let Some((pid, f)) = self.players.poll_frame() {
                if let Some(l) = self.legs.get(&pid.0) {
                    let n = u32::try_from(f.payload.len()).unwrap_or(0);
                    self.relay.send_generated(
                        l.info.id,
                        f.law.payload_type(),
                        Bytes::from(f.payload),
                        n,
                        f.new_item,
                    );
                }
            }
            while let Some(PlayerEvent::Finished(pid)) = self.players.poll_event() {
                progressed = true;
                if let Some(l) = self.legs.get_mut(&pid.0) {
                    l.playing = false;
                    let _ = l.events.send(LegEvent::PlayFinished);
                }
                self.restore_source(pid.0);
            }
            while let Some(t) = self.ep.poll_transmit() {
                progressed = true;
                if let Err(e) = sockets.send(&t).await {
                    tracing::debug!(destination = %t.destination, error = %e, "SIP send failed");
                    // RFC 3261 §17.1.4: the transactions sending there fail now (an INVITE then fails over).
                    self.ep
                        .handle_transport_error(now, t.destination, t.transport);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn sip_event(&mut self, now: Instant, e: Event) {
        if let Some(r) = &mut self.registrar {
            if r.handle_event(now, &mut self.ep, &e) {
                return;
            }
        }
        let call = match &e {
            Event::Provisional { call, .. }
            | Event::Answered { call, .. }
            | Event::Acked { call, .. }
            | Event::Request { call, .. }
            | Event::Response { call, .. }
            | Event::TransactionTimeout { call, .. }
            | Event::Glare { call, .. }
            | Event::Terminated { call, .. } => *call,
            Event::IncomingCall { call, .. } => {
                let _ = self.ep.answer_invite(now, *call, 603, Bytes::new());
                return;
            }
            _ => return,
        };
        let Some(&id) = self.by_call.get(&call) else {
            return;
        };
        let Some(l) = self.legs.get_mut(&id) else {
            return;
        };
        if let Event::Terminated { reason, .. } = &e {
            // RFC 3263 §4.3: no answer, unreachable or 503 before an answer: the next target gets the INVITE.
            if l.core.phase() == Phase::Calling && should_fail_over(reason) {
                if let Some(next) = l.route.fail_over(reason) {
                    let _g = l.span.clone().entered();
                    tracing::info!(?reason, next = %next.addr, transport = ?next.transport, "failing over to the next target");
                    self.send_invite(now, id, next);
                    self.dirty.push_back(id);
                    return;
                }
            }
        }
        let headers = self.ep.last_headers(call);
        l.core.handle_sip(now, &e, headers);
        if matches!(e, Event::Answered { .. }) {
            if let Some(d) = self.ep.dialog(call) {
                let cid = String::from_utf8_lossy(&d.id.call_id).into_owned();
                l.core.attach(call, Some(cid));
            }
        }
        self.dirty.push_back(id);
    }
}

/// Our From for an INVITE: the URI, or `"Display Name" <uri>` with the name quoted and `"` and `\\` escaped
/// (RFC 3261 §25.1 quoted-string). A URI that does not parse is passed on as is (the endpoint rejects it).
fn from_header(uri: &str, display_name: Option<&str>) -> String {
    match (display_name, Uri::parse(uri)) {
        (Some(name), Ok(u)) => {
            let v = crate::sip::message::NameAddr::new(u)
                .with_display_name(name)
                .encode();
            String::from_utf8_lossy(&v).into_owned()
        }
        _ => uri.to_owned(),
    }
}

/// A relay control call whose answer we do not need: the command is already queued to the relay thread.
fn fire<T>(reply: crate::net::rtp_io::Reply<T>) {
    drop(reply);
}

fn counters(s: &LegStats) -> MediaCounters {
    MediaCounters {
        packets_in: s.packets_in,
        bytes_in: s.bytes_in,
        packets_out: s.packets_out,
        bytes_out: s.bytes_out,
    }
}
