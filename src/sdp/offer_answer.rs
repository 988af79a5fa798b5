//! RFC 3264 offer/answer for one audio stream per call leg.
//!
//! [`LocalSession`] keeps our `o=` id and version and builds offers and answers for a local RTP address.
//! What both sides agreed on comes out as [`Negotiated`]: where to send RTP/RTCP, the codec and its payload
//! type, the telephone-event payload type *of this leg* (the relay maps it to the other leg's), direction,
//! ptime and rtcp-mux. [`bridge_mode`] tells the bridge whether two legs' codecs can be forwarded as is or
//! need PCMU↔PCMA transcoding.
//!
//! Rules applied:
//! - Answers keep one m-line per offered m-line (RFC 3264 §6); the first audio `RTP/AVP(F)` stream with a
//!   codec in common is accepted, every other stream is rejected with port 0.
//! - The codec is the first entry of *our* `supported` list that the offer contains (so a bridge can pass
//!   the other leg's codec first to avoid transcoding); the answer uses the offerer's payload type for it.
//! - The answer's direction is the reverse of the offer's, intersected with what we ask for: an offer of
//!   `sendonly` gets `recvonly`, `inactive` gets `inactive`. `c=0.0.0.0` (RFC 2543 hold) is read as "the
//!   peer does not want to receive": the peer's direction loses its receive half.
//! - `o=` version: the first SDP we send uses the initial version; each later one is bumped when its
//!   content differs from the previous one we sent, and kept when identical (RFC 3264 §8: a session refresh
//!   must not change the version). [`LocalSession::bump_version`] forces a new version for a retried offer.
//!
//! ```
//! use rappel::sdp::{Codec, Direction, LocalSession, Sdp};
//!
//! let mut leg = LocalSession::new(42, "192.0.2.1:20000".parse().unwrap());
//! let offer = leg.offer(&[Codec::pcma(), Codec::pcmu(), Codec::telephone_event(101)], Direction::SendRecv);
//! let _invite_body: Vec<u8> = offer.to_bytes();
//! // The 200 OK's body:
//! let answer = Sdp::parse(
//!     b"v=0\r\no=- 1 1 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\n\
//!       m=audio 30000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
//! )
//! .unwrap();
//! let n = leg.accept_answer(&offer, &answer).unwrap();
//! assert_eq!(n.codec, Codec::pcma());
//! assert_eq!(n.telephone_event_pt, Some(101));
//! assert_eq!(n.remote_rtp, "198.51.100.2:30000".parse::<std::net::SocketAddr>().unwrap());
//! assert_eq!(n.direction, Direction::SendRecv);
//! ```

use std::net::SocketAddr;

use super::{
    AddrType, Attribute, Connection, Direction, MediaDescription, Origin, RtpMap, Sdp, SdpError,
};
use crate::media::g711::Law;

/// The codecs we know how to negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecName {
    /// G.711 μ-law, static PT 0.
    Pcmu,
    /// G.711 A-law, static PT 8.
    Pcma,
    /// G.722, static PT 9 (clock 8000 in SDP, RFC 3551).
    G722,
    /// Opus (dynamic PT, 48000/2), passed through only.
    Opus,
    /// RFC 4733 telephone-event (dynamic PT).
    TelephoneEvent,
}

impl CodecName {
    /// The rtpmap encoding name.
    pub fn encoding(self) -> &'static str {
        match self {
            CodecName::Pcmu => "PCMU",
            CodecName::Pcma => "PCMA",
            CodecName::G722 => "G722",
            CodecName::Opus => "opus",
            CodecName::TelephoneEvent => "telephone-event",
        }
    }

    fn from_encoding(s: &str) -> Option<CodecName> {
        [
            CodecName::Pcmu,
            CodecName::Pcma,
            CodecName::G722,
            CodecName::Opus,
            CodecName::TelephoneEvent,
        ]
        .into_iter()
        .find(|c| c.encoding().eq_ignore_ascii_case(s))
    }

    fn static_pt(pt: u8) -> Option<CodecName> {
        match pt {
            0 => Some(CodecName::Pcmu),
            8 => Some(CodecName::Pcma),
            9 => Some(CodecName::G722),
            _ => None,
        }
    }
}

/// A codec with its payload type on one leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    /// Payload type used on this leg.
    pub pt: u8,
    /// Which codec.
    pub name: CodecName,
    /// RTP clock rate.
    pub clock: u32,
    /// Channels (1 except Opus, which SDP always declares as 2).
    pub channels: u16,
    /// fmtp parameters, if any.
    pub fmtp: Option<String>,
}

impl Codec {
    /// PCMU, PT 0.
    pub fn pcmu() -> Codec {
        Codec {
            pt: 0,
            name: CodecName::Pcmu,
            clock: 8000,
            channels: 1,
            fmtp: None,
        }
    }

    /// PCMA, PT 8.
    pub fn pcma() -> Codec {
        Codec {
            pt: 8,
            name: CodecName::Pcma,
            clock: 8000,
            channels: 1,
            fmtp: None,
        }
    }

    /// G.722, PT 9.
    pub fn g722() -> Codec {
        Codec {
            pt: 9,
            name: CodecName::G722,
            clock: 8000,
            channels: 1,
            fmtp: None,
        }
    }

    /// Opus on dynamic payload type `pt`.
    pub fn opus(pt: u8) -> Codec {
        Codec {
            pt,
            name: CodecName::Opus,
            clock: 48000,
            channels: 2,
            fmtp: None,
        }
    }

    /// telephone-event/8000 on dynamic payload type `pt`, events 0-15.
    pub fn telephone_event(pt: u8) -> Codec {
        Codec {
            pt,
            name: CodecName::TelephoneEvent,
            clock: 8000,
            channels: 1,
            fmtp: Some("0-15".to_owned()),
        }
    }

    /// The G.711 law, for PCMU/PCMA.
    pub fn law(&self) -> Option<Law> {
        match self.name {
            CodecName::Pcmu => Some(Law::Ulaw),
            CodecName::Pcma => Some(Law::Alaw),
            _ => None,
        }
    }

    /// Same codec (name, clock, channels), whatever the payload type.
    pub fn same_codec(&self, other: &Codec) -> bool {
        self.name == other.name && self.clock == other.clock && self.channels == other.channels
    }

    fn rtpmap(&self) -> RtpMap {
        RtpMap {
            pt: self.pt,
            encoding: self.name.encoding().to_owned(),
            clock_rate: self.clock,
            channels: (self.channels != 1).then_some(self.channels),
        }
    }
}

impl MediaDescription {
    /// The codecs of this m-line we know, in the m-line's order, resolved through rtpmap or the static
    /// payload type table.
    pub fn codecs(&self) -> Vec<Codec> {
        self.payload_types()
            .filter_map(|pt| {
                let (name, clock, channels) = match self.rtpmap(pt) {
                    Some(m) => (
                        CodecName::from_encoding(&m.encoding)?,
                        m.clock_rate,
                        m.channels.unwrap_or(1),
                    ),
                    None => {
                        let name = CodecName::static_pt(pt)?;
                        (name, 8000, 1)
                    }
                };
                Some(Codec {
                    pt,
                    name,
                    clock,
                    channels,
                    fmtp: self.fmtp(pt).map(str::to_owned),
                })
            })
            .collect()
    }
}

/// What an offer/answer exchange settled for this leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the audio m-line in use.
    pub media_index: usize,
    /// Where to send RTP (the IP is unspecified when the peer used `c=0.0.0.0` hold).
    pub remote_rtp: SocketAddr,
    /// Where to send RTCP (same as `remote_rtp` with rtcp-mux).
    pub remote_rtcp: SocketAddr,
    /// The audio codec; its `pt` is the payload type to *send* with (the number in the peer's SDP).
    pub codec: Codec,
    /// The payload type the peer sends the codec with (the number in our SDP). Equal to `codec.pt` unless
    /// an answer renumbered a dynamic payload type.
    pub recv_pt: u8,
    /// The telephone-event payload type to send with on this leg, if both sides support it.
    pub telephone_event_pt: Option<u8>,
    /// The telephone-event payload type the peer sends with (the number in our SDP).
    pub telephone_event_recv_pt: Option<u8>,
    /// What *we* may do: send if it `sends()`, expect media if it `receives()`.
    pub direction: Direction,
    /// Packetisation time the peer asked for (ms; 20 if it did not say).
    pub ptime: u32,
    /// RTP and RTCP share one port.
    pub rtcp_mux: bool,
}

/// How a bridge connects two legs' codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeMode {
    /// Same codec: forward payloads (rewriting only the payload type if they differ).
    Forward,
    /// Both G.711 with different laws: transcode with the 256-entry tables.
    TranscodeG711 {
        /// Law of leg A.
        a: Law,
        /// Law of leg B.
        b: Law,
    },
    /// Nothing we can do without a real transcoder.
    Incompatible,
}

/// Decides how to bridge leg A's codec to leg B's.
pub fn bridge_mode(a: &Codec, b: &Codec) -> BridgeMode {
    if a.same_codec(b) {
        return BridgeMode::Forward;
    }
    match (a.law(), b.law()) {
        (Some(a), Some(b)) => BridgeMode::TranscodeG711 { a, b },
        _ => BridgeMode::Incompatible,
    }
}

/// Our side of an SDP session: `o=` id and version, local RTP address, preferences.
#[derive(Debug, Clone)]
pub struct LocalSession {
    username: String,
    session_id: u64,
    version: u64,
    last_sent: Option<Sdp>,
    rtp: SocketAddr,
    rtcp_mux: bool,
    ptime: u32,
}

impl LocalSession {
    /// A session with id `session_id` (draw it from the caller's seedable RNG) whose media is received on
    /// `rtp` (RTCP on `rtp + 1` unless rtcp-mux is agreed).
    pub fn new(session_id: u64, rtp: SocketAddr) -> LocalSession {
        LocalSession {
            username: "rappel".to_owned(),
            session_id,
            version: session_id,
            last_sent: None,
            rtp,
            rtcp_mux: true,
            ptime: 20,
        }
    }

    /// Session id.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Version of the last SDP built (or the initial one).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Makes the next SDP built carry a new version even if its content equals the last one sent: for an
    /// offer that replaces a refused one (a re-INVITE retried after 491), which is a new offer, not a refresh.
    pub fn bump_version(&mut self) {
        if self.last_sent.take().is_some() {
            self.version = self.version.wrapping_add(1);
        }
    }

    /// Changes the local RTP address (takes effect in the next offer/answer).
    pub fn set_rtp_addr(&mut self, rtp: SocketAddr) {
        self.rtp = rtp;
    }

    /// Whether we offer and accept rtcp-mux (default true).
    pub fn set_rtcp_mux(&mut self, on: bool) {
        self.rtcp_mux = on;
    }

    /// The ptime we put in our SDP (default 20 ms).
    pub fn set_ptime(&mut self, ms: u32) {
        self.ptime = ms.max(1);
    }

    fn skeleton(&self, version: u64) -> Sdp {
        let ip = self.rtp.ip();
        Sdp {
            origin: Origin {
                username: self.username.clone(),
                session_id: self.session_id,
                session_version: version,
                addr_type: AddrType::of(&ip),
                address: ip.to_string(),
            },
            session_name: "-".to_owned(),
            connection: Some(Connection::new(ip)),
            timing: (0, 0),
            attributes: Vec::new(),
            other: Vec::new(),
            media: Vec::new(),
        }
    }

    /// Stamps the version: unchanged content keeps the previous version, anything else bumps it.
    fn stamp(&mut self, mut sdp: Sdp) -> Sdp {
        if let Some(last) = &self.last_sent {
            sdp.origin.session_version = last.origin.session_version;
            if *last != sdp {
                self.version = self.version.wrapping_add(1);
                sdp.origin.session_version = self.version;
            }
        }
        self.last_sent = Some(sdp.clone());
        sdp
    }

    fn audio_media(
        &self,
        codecs: &[&Codec],
        direction: Direction,
        rtcp_mux: bool,
    ) -> MediaDescription {
        let mut m = MediaDescription::new(
            "audio",
            self.rtp.port(),
            "RTP/AVP",
            codecs.iter().map(|c| c.pt.to_string()).collect(),
        );
        for c in codecs {
            m.attributes.push(Attribute::RtpMap(c.rtpmap()));
            if let Some(p) = &c.fmtp {
                m.attributes.push(Attribute::Fmtp {
                    pt: c.pt,
                    params: p.clone(),
                });
            }
        }
        m.attributes.push(Attribute::Ptime(self.ptime));
        if rtcp_mux {
            m.attributes.push(Attribute::RtcpMux);
        } else {
            m.attributes.push(Attribute::Rtcp {
                port: self.rtp.port().wrapping_add(1),
                connection: None,
            });
        }
        m.attributes.push(Attribute::Direction(direction));
        m
    }

    /// Builds an offer with `codecs` (in preference order; include a telephone-event codec to offer DTMF).
    pub fn offer(&mut self, codecs: &[Codec], direction: Direction) -> Sdp {
        let mut sdp = self.skeleton(self.version);
        let refs: Vec<&Codec> = codecs.iter().collect();
        sdp.media
            .push(self.audio_media(&refs, direction, self.rtcp_mux));
        self.stamp(sdp)
    }

    /// Answers `remote_offer` with the first codec of `supported` the offer has (see the module docs) and
    /// `direction` as what we want to do. Returns the answer and what was agreed.
    pub fn answer(
        &mut self,
        remote_offer: &Sdp,
        supported: &[Codec],
        direction: Direction,
    ) -> Result<(Sdp, Negotiated), SdpError> {
        let mut chosen: Option<(usize, Codec, Option<Codec>)> = None;
        let mut any_audio = false;
        for (i, m) in remote_offer.media.iter().enumerate() {
            if chosen.is_some() || !m.is_audio() || m.port == 0 || !m.is_plain_rtp() {
                continue;
            }
            any_audio = true;
            let offered = m.codecs();
            let codec = supported
                .iter()
                .filter(|s| s.name != CodecName::TelephoneEvent)
                .find_map(|s| offered.iter().find(|o| o.same_codec(s)));
            let Some(codec) = codec else { continue };
            let te = supported
                .iter()
                .filter(|s| s.name == CodecName::TelephoneEvent)
                .find_map(|s| {
                    offered
                        .iter()
                        .find(|o| o.name == CodecName::TelephoneEvent && o.clock == s.clock)
                });
            chosen = Some((i, codec.clone(), te.cloned()));
        }
        let Some((index, codec, te)) = chosen else {
            return Err(if any_audio {
                SdpError::NoCommonCodec
            } else {
                SdpError::NoAudio
            });
        };
        let m = &remote_offer.media[index];
        let (remote_rtp, hold) = remote_addr(remote_offer, index)?;
        let mut offer_dir = remote_offer.direction(index);
        if hold {
            offer_dir = offer_dir.intersect(Direction::SendOnly);
        }
        let our_dir = offer_dir.reverse().intersect(direction);
        let rtcp_mux = self.rtcp_mux && m.rtcp_mux();
        let negotiated = Negotiated {
            media_index: index,
            remote_rtp,
            remote_rtcp: remote_rtcp(m, remote_rtp, rtcp_mux),
            telephone_event_pt: te.as_ref().map(|t| t.pt),
            telephone_event_recv_pt: te.as_ref().map(|t| t.pt),
            recv_pt: codec.pt,
            direction: our_dir,
            ptime: m.ptime().unwrap_or(20),
            rtcp_mux,
            codec: codec.clone(),
        };
        let mut sdp = self.skeleton(self.version);
        for (i, offered) in remote_offer.media.iter().enumerate() {
            if i == index {
                let mut codecs = vec![&codec];
                if let Some(t) = &te {
                    codecs.push(t);
                }
                sdp.media.push(self.audio_media(&codecs, our_dir, rtcp_mux));
            } else {
                // Rejected stream: same media and protocol, port 0, formats echoed.
                sdp.media.push(MediaDescription::new(
                    &offered.media,
                    0,
                    &offered.protocol,
                    offered.formats.clone(),
                ));
            }
        }
        Ok((self.stamp(sdp), negotiated))
    }

    /// Reads the peer's `answer` to our `offer` (RFC 3264 §6, §7).
    pub fn accept_answer(&self, offer: &Sdp, answer: &Sdp) -> Result<Negotiated, SdpError> {
        if offer.media.len() != answer.media.len() {
            return Err(SdpError::MediaCountMismatch {
                offer: offer.media.len(),
                answer: answer.media.len(),
            });
        }
        let index = offer
            .media
            .iter()
            .zip(&answer.media)
            .position(|(o, a)| o.is_audio() && o.port != 0 && a.port != 0)
            .ok_or(SdpError::Rejected)?;
        let om = &offer.media[index];
        let am = &answer.media[index];
        let offered = om.codecs();
        let answered = am.codecs();
        let codec = answered
            .iter()
            .find(|a| {
                a.name != CodecName::TelephoneEvent && offered.iter().any(|o| o.same_codec(a))
            })
            .ok_or(SdpError::NoCommonCodec)?;
        let recv_pt = offered
            .iter()
            .find(|o| o.same_codec(codec))
            .map_or(codec.pt, |o| o.pt);
        let te = answered.iter().find_map(|a| {
            let ours = offered
                .iter()
                .find(|o| o.name == CodecName::TelephoneEvent && o.clock == a.clock)?;
            (a.name == CodecName::TelephoneEvent).then_some((a.pt, ours.pt))
        });
        let (remote_rtp, hold) = remote_addr(answer, index)?;
        let mut answer_dir = answer.direction(index);
        if hold {
            answer_dir = answer_dir.intersect(Direction::SendOnly);
        }
        let our_dir = answer_dir.reverse().intersect(offer.direction(index));
        let rtcp_mux = om.rtcp_mux() && am.rtcp_mux();
        Ok(Negotiated {
            media_index: index,
            remote_rtp,
            remote_rtcp: remote_rtcp(am, remote_rtp, rtcp_mux),
            codec: codec.clone(),
            recv_pt,
            telephone_event_pt: te.map(|t| t.0),
            telephone_event_recv_pt: te.map(|t| t.1),
            direction: our_dir,
            ptime: am.ptime().unwrap_or(20),
            rtcp_mux,
        })
    }
}

/// The peer's RTP address for m-line `index`, and whether it is an old-style hold (`c=0.0.0.0`).
fn remote_addr(sdp: &Sdp, index: usize) -> Result<(SocketAddr, bool), SdpError> {
    let c = sdp
        .effective_connection(index)
        .ok_or(SdpError::NoConnection { media: index })?;
    let port = sdp.media.get(index).map_or(0, |m| m.port);
    Ok((SocketAddr::new(c.address, port), c.is_hold()))
}

fn remote_rtcp(m: &MediaDescription, rtp: SocketAddr, mux: bool) -> SocketAddr {
    if mux {
        return rtp;
    }
    match m.rtcp() {
        Some((port, Some(c))) => SocketAddr::new(c.address, port),
        Some((port, None)) => SocketAddr::new(rtp.ip(), port),
        None => SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1)),
    }
}
