//! The RTP relay's sans-IO core: legs, latching, routing, in-place header rewriting, inactivity, RTCP.
//!
//! A [`Relay`] holds legs addressed by [`LegId`] (a slab index plus a generation, so a stale id never reaches a
//! reused slot). Each leg owns a local RTP/RTCP port pair taken from the configured range (the driver binds
//! them), the peer's address from SDP, and the outgoing stream state of [`crate::media::stream`]. A leg's
//! [`Source`] says what the relay sends to that leg's peer: another leg's audio, generated frames (announcements,
//! hold music) or silence. [`Relay::connect`] sets two legs as each other's source.
//!
//! # Per-packet path
//! [`Relay::handle_rtp`] is the whole per-packet path; it allocates nothing, takes no lock and rewrites the packet
//! in place: slot lookup, header check, latching check, counters, receiver statistics, the destination's
//! [`OutStream::rewrite`] (two wrapping adds unless the source changed), payload type mapping, and a 12-byte
//! header write. It returns an [`Action`]: forward the same buffer to an address from a given leg's socket, or
//! drop it for a counted [`DropReason`].
//!
//! # G.711 transcoding
//! Each leg may know the G.711 law its peer negotiated ([`LegConfig::codec`], [`Relay::set_codec`]). When a
//! packet goes from a PCMU leg to a PCMA leg (or back) and carries the source law's static payload type, the
//! relay maps the payload type (0 ↔ 8) and rewrites the payload through the 256-entry table of
//! [`crate::media::g711`], byte for byte in place: same length, no allocation. Other payload types
//! (telephone-event, comfort noise) pass untouched. The decision is one compare of the two legs' laws per
//! packet, so it follows [`Relay::connect`], transfers and codec changes without extra state.
//!
//! # Sending DTMF (RFC 4733)
//! [`Relay::send_event`] writes telephone-event packets into a leg's outgoing stream: the marker and one
//! timestamp per event, sequence numbers continuing the stream's. From an event's first packet to its last,
//! audio to that leg (its source leg's or generated frames) is held back ([`DropReason::Dtmf`]) so that no
//! audio packet interleaves with the event's; the last packet ends the event even when it cannot be sent.
//!
//! # Latching (symmetric RTP, RFC 4961)
//! A leg is "unlatched" until it receives RTP from an acceptable source: with [`Latching::Sdp`] only the address
//! from SDP; with [`Latching::Learn`] (peers behind NAT) any source during the learning window that starts at
//! [`Relay::add_leg`], and the SDP address after it. Once latched the leg is strict: packets from any other
//! source are dropped and counted as [`DropReason::WrongSource`] (the RTP-bleed attack), and we send to the
//! latched address. RTCP latches the same way, to the first RTCP packet whose IP matches the latched RTP IP.
//!
//! # RTCP: terminated
//! The relay terminates RTCP: it consumes the peers' reports (remembering SR times for LSR/DLSR and raising an
//! event on BYE) and generates one SR (or RR before it sent anything) per leg every `rtcp_interval`
//! (randomised ×[0.5, 1.5]), describing the stream it really sends on that leg. Forwarding with SSRC rewriting
//! would be wrong here: each leg's outgoing stream is spliced from several sources (greeting, music, the other
//! leg, another agent), so the other peer's SR RTP-timestamp/NTP mapping, packet and octet counts would not
//! describe our stream, and reports about the source streams would reach peers that never saw them.
//!
//! With rtcp-mux (RFC 5761, [`LegConfig::rtcp_mux`]) the peer's RTCP arrives on the RTP port:
//! [`Relay::handle_rtp`] tells it from RTP by the second byte (192..=223, RFC 5761 §4), only on the error path
//! of the header check, so RTP pays nothing; our reports go to the peer's RTP address.
//!
//! # Hold, inactivity, recording
//! No RTP from a leg for `inactivity_timeout` raises [`Event::Inactive`] once (again only after RTP resumed and
//! stopped again); [`Relay::set_hold`] suspends that watchdog for a leg whose peer put the call on hold (it does
//! not change what we send: that is the source's business). Recording is a per-leg flag copied into
//! [`Action::Forward::record`]: the driver copies the packet into the leg's recording tap
//! ([`crate::net::record_io`]) only when it is set, so the hot path pays one bool when recording is off.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

use crate::media::g711::{self, Law};
use crate::media::rtp::{
    self, parse_rtcp, PacketError, RtcpItem, RtpHeader, SenderInfo, RTP_HEADER_LEN,
};
use crate::media::stream::{duration_to_ticks, InStats, OutStream};

/// Relay-wide configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Lowest local port of the RTP/RTCP range (rounded up to even).
    pub port_min: u16,
    /// Highest local port of the range (inclusive).
    pub port_max: u16,
    /// No RTP from a leg (not on hold) for this long raises [`Event::Inactive`]. Default 30 s.
    pub inactivity_timeout: Duration,
    /// How long a [`Latching::Learn`] leg accepts its first packet from any source. Default 3 s.
    pub learning_window: Duration,
    /// Mean interval between generated RTCP reports per leg. Default 5 s (RFC 3550 minimum).
    pub rtcp_interval: Duration,
    /// Seed for SSRCs, initial sequence numbers and timestamps, RTCP interval jitter.
    pub seed: u64,
    /// CNAME put in generated SDES.
    pub cname: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            port_min: 30000,
            port_max: 39999,
            inactivity_timeout: Duration::from_secs(30),
            learning_window: Duration::from_secs(3),
            rtcp_interval: Duration::from_secs(5),
            seed: 0x7261_7070_656c,
            cname: "rappel".to_owned(),
        }
    }
}

/// How a leg learns its peer's real source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latching {
    /// Only the address from SDP is accepted.
    Sdp,
    /// Any source during the learning window (peer behind NAT), then the SDP address.
    Learn,
}

/// Per-leg configuration, mostly from the peer's SDP.
#[derive(Debug, Clone)]
pub struct LegConfig {
    /// The peer's RTP address from SDP (`c=` and `m=`), if known yet.
    pub remote_rtp: Option<SocketAddr>,
    /// The peer's RTCP address (`a=rtcp`); defaults to the RTP port + 1.
    pub remote_rtcp: Option<SocketAddr>,
    /// Latching mode.
    pub latching: Latching,
    /// RTP clock rate of the audio codec (8000 for G.711).
    pub clock_rate: u32,
    /// Samples per frame (160 for 20 ms at 8 kHz): the minimum timestamp step on a source switch.
    pub frame_samples: u32,
    /// Payload type this leg's peer uses for telephone-event (RFC 4733), if negotiated.
    pub telephone_event_pt: Option<u8>,
    /// The G.711 law this leg's peer negotiated, if known: audio between legs of different laws is
    /// transcoded (see the module docs). `None` forwards payloads untouched.
    pub codec: Option<Law>,
    /// Flag packets received on this leg for recording.
    pub record: bool,
    /// The peer negotiated rtcp-mux (RFC 5761, `a=rtcp-mux` in offer and answer): its RTCP arrives on our RTP
    /// port and our reports go to its RTP address, from our RTP socket. Default false.
    pub rtcp_mux: bool,
}

impl LegConfig {
    /// A G.711 leg (8 kHz, 20 ms) with the given SDP address, SDP latching, no telephone-event, law not
    /// known yet (no transcoding until [`Relay::set_codec`]).
    pub fn g711(remote_rtp: Option<SocketAddr>) -> Self {
        Self {
            remote_rtp,
            remote_rtcp: None,
            latching: Latching::Sdp,
            clock_rate: 8000,
            frame_samples: 160,
            telephone_event_pt: None,
            codec: None,
            record: false,
            rtcp_mux: false,
        }
    }
}

/// Handle of a leg: slab index plus generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LegId {
    index: u32,
    generation: u32,
}

impl LegId {
    /// The slab index (dense, small): drivers can use it to index their own per-leg tables.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// What a leg's peer hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Audio received on another leg.
    Leg(LegId),
    /// Frames passed to [`Relay::send_generated`].
    Generated,
    /// Nothing.
    Silence,
}

/// Why a packet was dropped. Counted per leg in [`LegStats::drops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Not RTP (too short, wrong version, RTCP on the RTP port of a leg without rtcp-mux) or not RTCP on the
    /// RTCP port.
    Malformed = 0,
    /// From a source other than the latched one (RTP bleed).
    WrongSource = 1,
    /// Not latched yet and the source is not acceptable.
    NotLatched = 2,
    /// No leg takes this leg as its source (e.g. the other party hears hold music).
    NoSink = 3,
    /// The destination leg has no peer address yet.
    NoDestination = 4,
    /// The leg id is stale or unknown.
    UnknownLeg = 5,
    /// The destination leg is sending a DTMF event ([`Relay::send_event`]): its audio is suppressed until the
    /// event's last packet, so that the event's packets keep one timestamp in an unbroken stream.
    Dtmf = 6,
    /// An RFC 4733 event for a leg that negotiated no telephone-event payload type: it would reach the peer
    /// as an unknown payload type. (The event is still reported as [`Event::TelephoneEvent`] on its source leg.)
    NoTelephoneEvent = 7,
}

impl DropReason {
    /// Number of reasons (size of [`LegStats::drops`]).
    pub const COUNT: usize = 8;
}

/// What the driver does with a received RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the (rewritten, same-length) buffer to `to` from the RTP socket of leg `via`.
    Forward {
        /// Destination address.
        to: SocketAddr,
        /// Leg whose local socket must send it (symmetric RTP).
        via: LegId,
        /// The receiving leg is flagged for recording: copy the payload to the recorder.
        record: bool,
    },
    /// Drop the packet (already counted).
    Drop(DropReason),
    /// RTCP multiplexed on the RTP port of an rtcp-mux leg, consumed as by [`Relay::handle_rtcp`]: nothing to
    /// send.
    Consumed,
}

/// A packet the relay built into a caller buffer (generated media, RTCP reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub to: SocketAddr,
    /// Leg whose socket sends it (RTP or RTCP socket depending on the call).
    pub via: LegId,
    /// Bytes written at the start of the buffer.
    pub len: usize,
    /// An RTCP report for a leg using rtcp-mux: send it from `via`'s RTP socket, not its RTCP socket.
    pub rtcp_mux: bool,
}

/// Something the call layer should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The leg latched to its peer's real RTP source.
    Latched {
        /// The leg.
        leg: LegId,
        /// Source address latched.
        addr: SocketAddr,
    },
    /// The leg's RTP latch was cleared ([`Relay::set_remote`]): it will latch again to the next acceptable
    /// source. (A driver that `connect()`ed a socket to the latched address must close or disconnect it.)
    Unlatched {
        /// The leg.
        leg: LegId,
    },
    /// No RTP from the leg for the inactivity timeout.
    Inactive {
        /// The leg.
        leg: LegId,
    },
    /// The peer sent RTCP BYE.
    Bye {
        /// The leg.
        leg: LegId,
    },
    /// An RFC 4733 telephone-event packet (DTMF) arrived from the leg's latched peer.
    TelephoneEvent {
        /// The leg.
        leg: LegId,
        /// Its RTP timestamp (the event's start).
        timestamp: u32,
        /// The 4-byte event payload (event, E/R/volume, duration).
        payload: [u8; 4],
    },
}

/// Errors of the control API (never of the per-packet path, which counts drops instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The leg id is stale or unknown.
    #[error("unknown leg")]
    UnknownLeg,
    /// No free port pair in the range.
    #[error("no free RTP port pair")]
    PortsExhausted,
    /// A leg cannot be its own source.
    #[error("a leg cannot be its own source")]
    SelfSource,
    /// `send_generated` on a leg whose source is not [`Source::Generated`].
    #[error("leg source is not Generated")]
    NotGenerated,
    /// The destination has no peer address yet.
    #[error("leg has no peer address")]
    NoDestination,
    /// The output buffer cannot hold the packet.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// `send_generated` on a leg that is sending a DTMF event (the frame is not sent).
    #[error("leg is sending a DTMF event")]
    EventInProgress,
}

/// Per-leg counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegStats {
    /// RTP packets accepted from the peer.
    pub packets_in: u64,
    /// Bytes of those packets.
    pub bytes_in: u64,
    /// RTP packets sent to the peer (forwarded or generated).
    pub packets_out: u64,
    /// Bytes of those packets.
    pub bytes_out: u64,
    /// RTCP packets accepted from the peer.
    pub rtcp_in: u64,
    /// RTCP reports generated for the peer.
    pub rtcp_out: u64,
    /// Drops of packets received on this leg, indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
}

impl LegStats {
    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(reason as usize).copied().unwrap_or(0)
    }
    #[inline]
    fn count_drop(&mut self, reason: DropReason) {
        if let Some(d) = self.drops.get_mut(reason as usize) {
            *d += 1;
        }
    }
}

#[derive(Debug)]
struct Leg {
    rtp_port: u16,
    cfg: LegConfig,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    learn_until: Instant,
    source: Source,
    /// The leg whose source is this leg, if any.
    sink: Option<LegId>,
    /// Tag identifying this leg's generated source; bumped on each new generated item.
    gen_tag: u64,
    gen_seq: u16,
    gen_ts: u32,
    out: OutStream,
    inp: InStats,
    on_hold: bool,
    last_rx: Instant,
    inactive_reported: bool,
    next_rtcp: Instant,
    rtcp_queued: bool,
    /// A DTMF event being sent: its source tag and the next sequence number within it.
    event: Option<(u64, u16)>,
    stats: LegStats,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    leg: Option<Leg>,
}

/// The relay: all legs, the port allocator, timers and events. See the module docs.
#[derive(Debug)]
pub struct Relay {
    cfg: RelayConfig,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    free_ports: VecDeque<u16>,
    events: VecDeque<Event>,
    rtcp_due: VecDeque<LegId>,
    rng: SmallRng,
    /// Origin for arrival timestamps (jitter) and NTP mapping.
    epoch: Instant,
    /// NTP time (64-bit) at `epoch`, if the driver told us the wall clock.
    ntp_at_epoch: Option<u64>,
    next_check: Instant,
    next_tag: u64,
    /// `now` of the last packet and its offset from `epoch`: drivers pass one `now` per batch, so the
    /// subtraction runs once per batch, not per packet.
    clock_cache: (Instant, Duration),
}

const LEG_TAG_BIT: u64 = 1 << 63;

impl Relay {
    /// A relay with no legs. `now` anchors its timers.
    pub fn new(cfg: RelayConfig, now: Instant) -> Self {
        let first = cfg.port_min.saturating_add(cfg.port_min & 1);
        let free_ports = (u32::from(first)..u32::from(cfg.port_max))
            .step_by(2)
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        let rng = SmallRng::seed_from_u64(cfg.seed);
        Self {
            next_check: now + Self::check_period(&cfg),
            cfg,
            slots: Vec::new(),
            free_slots: Vec::new(),
            free_ports,
            events: VecDeque::with_capacity(64),
            rtcp_due: VecDeque::with_capacity(64),
            rng,
            epoch: now,
            ntp_at_epoch: None,
            next_tag: 1,
            clock_cache: (now, Duration::ZERO),
        }
    }

    fn check_period(cfg: &RelayConfig) -> Duration {
        (cfg.inactivity_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Tell the relay the wall clock: `ntp` is the 64-bit NTP timestamp at `now`. Without it SRs carry NTP 0.
    pub fn set_wall_clock(&mut self, now: Instant, ntp: u64) {
        let since_ntp = ntp_since(now.saturating_duration_since(self.epoch));
        self.ntp_at_epoch = Some(ntp.wrapping_sub(since_ntp));
    }

    /// Pre-reserve room for `legs` legs so that adding them does not reallocate.
    pub fn reserve(&mut self, legs: usize) {
        self.slots.reserve(legs);
    }

    /// Add a leg: allocates a local port pair (RTP even, RTCP = RTP + 1).
    pub fn add_leg(&mut self, now: Instant, cfg: LegConfig) -> Result<LegId, RelayError> {
        let rtp_port = self
            .free_ports
            .pop_front()
            .ok_or(RelayError::PortsExhausted)?;
        let out = OutStream::new(
            self.rng.random(),
            self.rng.random(),
            self.rng.random(),
            cfg.clock_rate,
            cfg.frame_samples,
        );
        let gen_tag = self.fresh_tag();
        let jitter = self.rng.random_range(0.5..1.5);
        let leg = Leg {
            rtp_port,
            learn_until: now + self.cfg.learning_window,
            cfg,
            latched_rtp: None,
            latched_rtcp: None,
            source: Source::Silence,
            sink: None,
            gen_tag,
            gen_seq: 0,
            gen_ts: 0,
            out,
            inp: InStats::default(),
            on_hold: false,
            last_rx: now,
            inactive_reported: false,
            next_rtcp: now + self.cfg.rtcp_interval.mul_f64(jitter),
            rtcp_queued: false,
            event: None,
            stats: LegStats::default(),
        };
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).map_err(|_| RelayError::PortsExhausted)?;
                self.slots.push(Slot {
                    generation: 0,
                    leg: None,
                });
                i
            }
        };
        let slot = self
            .slots
            .get_mut(index as usize)
            .ok_or(RelayError::UnknownLeg)?;
        slot.leg = Some(leg);
        Ok(LegId {
            index,
            generation: slot.generation,
        })
    }

    /// Remove a leg, returning its port pair to the allocator. Legs that listened to it fall back to silence.
    pub fn remove_leg(&mut self, leg: LegId) -> Result<LegStats, RelayError> {
        self.set_source(leg, Source::Silence)?;
        if let Some(sink) = self.leg(leg).and_then(|l| l.sink) {
            if let Some(s) = self.leg_mut(sink) {
                s.source = Source::Silence;
            }
        }
        let slot = self
            .slots
            .get_mut(leg.index as usize)
            .ok_or(RelayError::UnknownLeg)?;
        let l = slot.leg.take().ok_or(RelayError::UnknownLeg)?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(leg.index);
        self.free_ports.push_back(l.rtp_port);
        Ok(l.stats)
    }

    /// Local (RTP, RTCP) ports of a leg, to bind and to put in our SDP.
    pub fn local_ports(&self, leg: LegId) -> Option<(u16, u16)> {
        self.leg(leg)
            .map(|l| (l.rtp_port, l.rtp_port.wrapping_add(1)))
    }

    /// Update the peer's addresses (e.g. after a re-INVITE). Clears latching so the leg latches again.
    pub fn set_remote(
        &mut self,
        leg: LegId,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    ) -> Result<(), RelayError> {
        let l = self.leg_mut(leg).ok_or(RelayError::UnknownLeg)?;
        l.cfg.remote_rtp = rtp;
        l.cfg.remote_rtcp = rtcp;
        let was_latched = l.latched_rtp.take().is_some();
        l.latched_rtcp = None;
        if was_latched {
            self.events.push_back(Event::Unlatched { leg });
        }
        Ok(())
    }

    /// Set the telephone-event payload type of a leg's peer.
    pub fn set_telephone_event_pt(&mut self, leg: LegId, pt: Option<u8>) -> Result<(), RelayError> {
        self.leg_mut(leg)
            .ok_or(RelayError::UnknownLeg)?
            .cfg
            .telephone_event_pt = pt;
        Ok(())
    }

    /// Set the G.711 law of a leg's peer (after offer/answer); `None` stops transcoding to and from it.
    pub fn set_codec(&mut self, leg: LegId, codec: Option<Law>) -> Result<(), RelayError> {
        self.leg_mut(leg).ok_or(RelayError::UnknownLeg)?.cfg.codec = codec;
        Ok(())
    }

    /// Turn rtcp-mux on or off for a leg (after offer/answer settled it; see [`LegConfig::rtcp_mux`]). Clears the
    /// RTCP latch, since the peer's RTCP source changes.
    pub fn set_rtcp_mux(&mut self, leg: LegId, on: bool) -> Result<(), RelayError> {
        let l = self.leg_mut(leg).ok_or(RelayError::UnknownLeg)?;
        if l.cfg.rtcp_mux != on {
            l.cfg.rtcp_mux = on;
            l.latched_rtcp = None;
        }
        Ok(())
    }

    /// Flag (or unflag) a leg's incoming packets for recording.
    pub fn set_record(&mut self, leg: LegId, record: bool) -> Result<(), RelayError> {
        self.leg_mut(leg).ok_or(RelayError::UnknownLeg)?.cfg.record = record;
        Ok(())
    }

    /// Mark a leg on hold (suspends its inactivity watchdog) or resumed (restarts the watchdog from `now`).
    pub fn set_hold(&mut self, now: Instant, leg: LegId, on_hold: bool) -> Result<(), RelayError> {
        let l = self.leg_mut(leg).ok_or(RelayError::UnknownLeg)?;
        if l.on_hold && !on_hold {
            l.last_rx = now;
            l.inactive_reported = false;
        }
        l.on_hold = on_hold;
        Ok(())
    }

    /// Choose what `leg`'s peer hears. A leg can feed only one other leg: if `Source::Leg(x)` already fed
    /// another leg, that leg falls back to [`Source::Silence`].
    pub fn set_source(&mut self, leg: LegId, source: Source) -> Result<(), RelayError> {
        if self.leg(leg).is_none() {
            return Err(RelayError::UnknownLeg);
        }
        if let Source::Leg(src) = source {
            if src == leg {
                return Err(RelayError::SelfSource);
            }
            let previous = self.leg(src).ok_or(RelayError::UnknownLeg)?.sink;
            if let Some(prev) = previous.filter(|p| *p != leg) {
                if let Some(p) = self.leg_mut(prev) {
                    p.source = Source::Silence;
                }
            }
        }
        let tag = self.fresh_tag();
        let l = self.leg_mut(leg).ok_or(RelayError::UnknownLeg)?;
        let old = std::mem::replace(&mut l.source, source);
        if source == Source::Generated {
            l.gen_tag = tag;
        }
        if let Source::Leg(old_src) = old {
            if let Some(o) = self.leg_mut(old_src) {
                if o.sink == Some(leg) {
                    o.sink = None;
                }
            }
        }
        if let Source::Leg(src) = source {
            if let Some(s) = self.leg_mut(src) {
                s.sink = Some(leg);
            }
        }
        Ok(())
    }

    /// Bridge two legs: each hears the other.
    pub fn connect(&mut self, a: LegId, b: LegId) -> Result<(), RelayError> {
        self.set_source(a, Source::Leg(b))?;
        self.set_source(b, Source::Leg(a))
    }

    /// Unbridge two legs: each leg that heard the other now hears silence.
    pub fn disconnect(&mut self, a: LegId, b: LegId) -> Result<(), RelayError> {
        for (x, y) in [(a, b), (b, a)] {
            if self.leg(x).ok_or(RelayError::UnknownLeg)?.source == Source::Leg(y) {
                self.set_source(x, Source::Silence)?;
            }
        }
        Ok(())
    }

    /// A leg's current source.
    pub fn source(&self, leg: LegId) -> Option<Source> {
        self.leg(leg).map(|l| l.source)
    }

    /// A leg's counters.
    pub fn stats(&self, leg: LegId) -> Option<LegStats> {
        self.leg(leg).map(|l| l.stats)
    }

    /// The address a leg is latched to, if any.
    pub fn latched(&self, leg: LegId) -> Option<SocketAddr> {
        self.leg(leg).and_then(|l| l.latched_rtp)
    }

    /// The SSRC of the stream the relay sends on a leg.
    pub fn outgoing_ssrc(&self, leg: LegId) -> Option<u32> {
        self.leg(leg).map(|l| l.out.ssrc)
    }

    /// Number of live legs.
    pub fn leg_count(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// Handle an RTP packet received on `leg`'s RTP socket from `from`. Rewrites `pkt` in place when forwarding.
    #[inline]
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        leg: LegId,
        from: SocketAddr,
        pkt: &mut [u8],
    ) -> Action {
        if self.clock_cache.0 != now {
            self.clock_cache = (now, now.saturating_duration_since(self.epoch));
        }
        let since_epoch = self.clock_cache.1;
        let Some(src) = leg_in(&mut self.slots, leg) else {
            return Action::Drop(DropReason::UnknownLeg);
        };
        let len = pkt.len();
        // RFC 4733 telephone-event from the peer: reported (after the source checks) so the call layer can
        // decode DTMF whether or not the leg is bridged. One compare per packet when DTMF was negotiated.
        let dtmf = match (src.cfg.telephone_event_pt, pkt.get(1), pkt.get(12..16)) {
            (Some(te), Some(b), Some(p)) if b & 0x7f == te => <[u8; 4]>::try_from(p).ok(),
            _ => None,
        };
        let mut h = match RtpHeader::new(pkt) {
            Ok(h) => h,
            Err(PacketError::WrongKind) if src.cfg.rtcp_mux => {
                // RFC 5761 §4: RTCP packet types 192..=223 in the second byte (RTP PTs 64..=95 are not used).
                return match self.handle_rtcp(now, leg, from, pkt) {
                    Ok(()) => Action::Consumed,
                    Err(reason) => Action::Drop(reason),
                };
            }
            Err(_) => return src.drop(DropReason::Malformed),
        };
        if src.latched_rtp != Some(from) {
            if src.latched_rtp.is_some() {
                return src.drop(DropReason::WrongSource);
            }
            if !src.accepts(now, from) {
                return src.drop(DropReason::NotLatched);
            }
            src.latched_rtp = Some(from);
            self.events.push_back(Event::Latched { leg, addr: from });
        }
        src.stats.packets_in += 1;
        src.stats.bytes_in += len as u64;
        src.last_rx = now;
        src.inactive_reported = false;
        let (ssrc, seq, ts) = (h.ssrc(), h.sequence(), h.timestamp());
        src.inp.on_rtp(
            ssrc,
            seq,
            ts,
            duration_to_ticks(since_epoch, src.cfg.clock_rate),
        );
        if let Some(payload) = dtmf {
            self.events.push_back(Event::TelephoneEvent {
                leg,
                timestamp: ts,
                payload,
            });
        }
        let Some(sink) = src.sink else {
            return src.drop(DropReason::NoSink);
        };
        let (te_in, law_in, record) = (src.cfg.telephone_event_pt, src.cfg.codec, src.cfg.record);
        let tag = LEG_TAG_BIT | (u64::from(leg.index) << 32) | u64::from(leg.generation);
        let Some(dst) = leg_in(&mut self.slots, sink) else {
            return self.drop_on(leg, DropReason::NoSink);
        };
        let Some(to) = dst.latched_rtp.or(dst.cfg.remote_rtp) else {
            return self.drop_on(leg, DropReason::NoDestination);
        };
        if dst.event.is_some() {
            return self.drop_on(leg, DropReason::Dtmf);
        }
        let mut pt = h.payload_type();
        let mut transcode = None;
        if te_in == Some(pt) {
            match dst.cfg.telephone_event_pt {
                Some(out) => pt = out,
                None => return self.drop_on(leg, DropReason::NoTelephoneEvent),
            }
        } else if let (Some(from), Some(to)) = (law_in, dst.cfg.codec) {
            if from != to && pt == from.payload_type() {
                pt = to.payload_type();
                transcode = Some((from, to));
            }
        }
        let payload = len.saturating_sub(RTP_HEADER_LEN);
        let (marker, seq, ts) = dst
            .out
            .rewrite(now, tag, ssrc, seq, ts, h.marker(), payload);
        h.rewrite(marker, pt, seq, ts, dst.out.ssrc);
        if let Some((from, to)) = transcode {
            transcode_payload(from, to, pkt);
        }
        dst.stats.packets_out += 1;
        dst.stats.bytes_out += len as u64;
        Action::Forward {
            to,
            via: sink,
            record,
        }
    }

    #[cold]
    fn drop_on(&mut self, leg: LegId, reason: DropReason) -> Action {
        if let Some(l) = self.leg_mut(leg) {
            l.stats.count_drop(reason);
        }
        Action::Drop(reason)
    }

    /// Send one generated frame (announcement, hold music, tone) to `leg`'s peer: writes an RTP header and the
    /// payload into `out`. `samples` is the frame's duration in clock units (payload length for G.711);
    /// `new_item` marks the first frame of a new item (marker bit, continuity re-anchor).
    #[allow(clippy::too_many_arguments)]
    pub fn send_generated(
        &mut self,
        now: Instant,
        leg: LegId,
        payload_type: u8,
        payload: &[u8],
        samples: u32,
        new_item: bool,
        out: &mut [u8],
    ) -> Result<Transmit, RelayError> {
        let len = payload
            .len()
            .checked_add(RTP_HEADER_LEN)
            .ok_or(RelayError::BufferTooSmall)?;
        if out.len() < len {
            return Err(RelayError::BufferTooSmall);
        }
        let tag = if new_item {
            Some(self.fresh_tag())
        } else {
            None
        };
        let l = self.leg_mut(leg).ok_or(RelayError::UnknownLeg)?;
        if l.source != Source::Generated {
            return Err(RelayError::NotGenerated);
        }
        if l.event.is_some() {
            return Err(RelayError::EventInProgress);
        }
        let to = l
            .latched_rtp
            .or(l.cfg.remote_rtp)
            .ok_or(RelayError::NoDestination)?;
        if let Some(t) = tag {
            l.gen_tag = t;
        }
        let (marker, seq, ts) =
            l.out
                .rewrite(now, l.gen_tag, 0, l.gen_seq, l.gen_ts, false, payload.len());
        l.gen_seq = l.gen_seq.wrapping_add(1);
        l.gen_ts = l.gen_ts.wrapping_add(samples);
        let (head, rest) = out.split_at_mut(RTP_HEADER_LEN);
        let head: &mut [u8; RTP_HEADER_LEN] =
            head.try_into().map_err(|_| RelayError::BufferTooSmall)?;
        rtp::write_header(head, marker, payload_type, seq, ts, l.out.ssrc);
        rest.get_mut(..payload.len())
            .ok_or(RelayError::BufferTooSmall)?
            .copy_from_slice(payload);
        l.stats.packets_out += 1;
        l.stats.bytes_out += len as u64;
        Ok(Transmit {
            to,
            via: leg,
            len,
            rtcp_mux: false,
        })
    }

    /// Send one RFC 4733 telephone-event packet (DTMF) to `leg`'s peer, in the leg's outgoing stream: writes
    /// the RTP header and the 4-byte `payload` into `out`.
    ///
    /// `first` starts an event: the packet carries the marker bit and the stream's current timestamp (the
    /// event's start, continuing whatever the leg sent before), and every later packet of the event repeats
    /// that timestamp with the next sequence number. From the first packet to the `last` one, audio to the leg
    /// (its source leg or generated frames) is suppressed ([`DropReason::Dtmf`], [`RelayError::EventInProgress`]);
    /// after it, audio resumes re-anchored (new timestamp, marker). A packet without an event in progress starts
    /// one. The `last` packet ends the event even when it cannot be sent ([`RelayError::NoDestination`]).
    #[allow(clippy::too_many_arguments)]
    pub fn send_event(
        &mut self,
        now: Instant,
        leg: LegId,
        payload_type: u8,
        payload: [u8; 4],
        first: bool,
        last: bool,
        out: &mut [u8],
    ) -> Result<Transmit, RelayError> {
        const LEN: usize = RTP_HEADER_LEN + 4;
        let Some(buf) = out.get_mut(..LEN) else {
            return Err(RelayError::BufferTooSmall);
        };
        let tag = self.fresh_tag();
        let l = self.leg_mut(leg).ok_or(RelayError::UnknownLeg)?;
        let Some(to) = l.latched_rtp.or(l.cfg.remote_rtp) else {
            // The event still ends here: left in progress, it would mute the leg's audio for good.
            if last {
                l.event = None;
            }
            return Err(RelayError::NoDestination);
        };
        let (tag, seq) = match l.event {
            Some(e) if !first => e,
            _ => (tag, 0),
        };
        // Source seq `seq` under a tag of its own: the first packet re-anchors the stream (marker, timestamp =
        // now), the others map to the next sequence numbers and the same timestamp.
        let (marker, out_seq, out_ts) = l.out.rewrite_event(now, tag, seq);
        l.event = (!last).then_some((tag, seq.wrapping_add(1)));
        let (head, rest) = buf.split_at_mut(RTP_HEADER_LEN);
        let head: &mut [u8; RTP_HEADER_LEN] =
            head.try_into().map_err(|_| RelayError::BufferTooSmall)?;
        rtp::write_header(head, marker, payload_type, out_seq, out_ts, l.out.ssrc);
        rest.copy_from_slice(&payload);
        l.stats.packets_out += 1;
        l.stats.bytes_out += LEN as u64;
        Ok(Transmit {
            to,
            via: leg,
            len: LEN,
            rtcp_mux: false,
        })
    }

    /// Handle an RTCP packet received on `leg`'s RTCP socket (or, for an rtcp-mux leg, demultiplexed from its RTP
    /// socket: [`Relay::handle_rtp`] does that itself). RTCP is terminated (see module docs): `Ok` means
    /// consumed; `Err` gives the reason it was dropped (also counted).
    pub fn handle_rtcp(
        &mut self,
        now: Instant,
        leg: LegId,
        from: SocketAddr,
        pkt: &[u8],
    ) -> Result<(), DropReason> {
        let l = self.leg_mut(leg).ok_or(DropReason::UnknownLeg)?;
        if !rtp::looks_like_rtcp(pkt) {
            l.stats.count_drop(DropReason::Malformed);
            return Err(DropReason::Malformed);
        }
        match l.latched_rtcp {
            Some(a) if a == from => {}
            Some(_) => {
                l.stats.count_drop(DropReason::WrongSource);
                return Err(DropReason::WrongSource);
            }
            None => {
                let expected_ip = l.latched_rtp.or(l.cfg.remote_rtp).map(|a| a.ip());
                if expected_ip != Some(from.ip()) {
                    l.stats.count_drop(DropReason::NotLatched);
                    return Err(DropReason::NotLatched);
                }
                l.latched_rtcp = Some(from);
            }
        }
        let mut bye = false;
        for item in parse_rtcp(pkt) {
            match item {
                Ok(RtcpItem::SenderReport { ntp, .. }) => l.inp.on_sender_report(now, ntp),
                Ok(RtcpItem::Bye { .. }) => bye = true,
                Ok(_) => {}
                Err(_) => {
                    l.stats.count_drop(DropReason::Malformed);
                    return Err(DropReason::Malformed);
                }
            }
        }
        l.stats.rtcp_in += 1;
        if bye {
            self.events.push_back(Event::Bye { leg });
        }
        Ok(())
    }

    /// Next generated RTCP report due (after [`Relay::handle_timeout`] queued it), written into `out`; send it
    /// from `via`'s RTCP socket, or its RTP socket when [`Transmit::rtcp_mux`] is set (the report then goes to
    /// the peer's RTP address).
    pub fn poll_rtcp(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        while let Some(id) = self.rtcp_due.pop_front() {
            let ntp_epoch = self.ntp_at_epoch;
            let epoch = self.epoch;
            let cname = self.cfg.cname.as_bytes();
            let Some(l) = leg_in(&mut self.slots, id) else {
                continue;
            };
            l.rtcp_queued = false;
            let mux = l.cfg.rtcp_mux;
            let to = if mux {
                l.latched_rtp.or(l.cfg.remote_rtp)
            } else {
                l.latched_rtcp.or(l.cfg.remote_rtcp).or_else(|| {
                    let mut a = l.latched_rtp.or(l.cfg.remote_rtp)?;
                    a.set_port(a.port().wrapping_add(1));
                    Some(a)
                })
            };
            let Some(to) = to else {
                continue;
            };
            let sender = l.out.has_sent().then(|| SenderInfo {
                ntp: ntp_epoch.map_or(0, |e| {
                    e.wrapping_add(ntp_since(now.saturating_duration_since(epoch)))
                }),
                rtp_ts: l.out.timestamp_at(now),
                packets: l.out.packets,
                octets: l.out.octets,
            });
            let block = l.inp.report(now);
            let Some(len) = rtp::write_report(out, l.out.ssrc, sender, block, cname) else {
                continue;
            };
            l.stats.rtcp_out += 1;
            return Some(Transmit {
                to,
                via: id,
                len,
                rtcp_mux: mux,
            });
        }
        None
    }

    /// Next event for the call layer.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Relay::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_check
    }

    /// Run the housekeeping scan (inactivity, RTCP schedule) if due. Cost is one pass over the legs per
    /// `min(inactivity_timeout / 4, 1 s)`, not per packet.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + Self::check_period(&self.cfg);
        let timeout = self.cfg.inactivity_timeout;
        let interval = self.cfg.rtcp_interval;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(l) = slot.leg.as_mut() else { continue };
            let id = LegId {
                index: index as u32,
                generation: slot.generation,
            };
            if !l.on_hold
                && !l.inactive_reported
                && now.saturating_duration_since(l.last_rx) >= timeout
            {
                l.inactive_reported = true;
                self.events.push_back(Event::Inactive { leg: id });
            }
            if now >= l.next_rtcp {
                l.next_rtcp = now + interval.mul_f64(self.rng.random_range(0.5..1.5));
                if !l.rtcp_queued {
                    l.rtcp_queued = true;
                    self.rtcp_due.push_back(id);
                }
            }
        }
    }

    fn fresh_tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn leg(&self, id: LegId) -> Option<&Leg> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.leg.as_ref()
    }

    fn leg_mut(&mut self, id: LegId) -> Option<&mut Leg> {
        leg_in(&mut self.slots, id)
    }
}

#[inline]
fn leg_in(slots: &mut [Slot], id: LegId) -> Option<&mut Leg> {
    let slot = slots.get_mut(id.index as usize)?;
    if slot.generation != id.generation {
        return None;
    }
    slot.leg.as_mut()
}

/// Rewrites the G.711 payload of the RTP packet `pkt` from one law to the other, in place.
#[inline]
fn transcode_payload(from: Law, to: Law, pkt: &mut [u8]) {
    if let Some(payload) = rtp::payload_range(pkt).and_then(|r| pkt.get_mut(r)) {
        g711::transcode_in_place(from, to, payload);
    }
}

fn ntp_since(d: Duration) -> u64 {
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (d.as_secs() << 32).wrapping_add(frac)
}

impl Leg {
    #[inline]
    fn drop(&mut self, reason: DropReason) -> Action {
        self.stats.count_drop(reason);
        Action::Drop(reason)
    }

    #[cold]
    fn accepts(&self, now: Instant, from: SocketAddr) -> bool {
        self.cfg.remote_rtp == Some(from)
            || (self.cfg.latching == Latching::Learn && now < self.learn_until)
    }
}

#[cfg(test)]
mod tests;
