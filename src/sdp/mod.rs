//! SDP (RFC 8866, formerly 4566) parse and build, and RFC 3264 offer/answer for audio.
//!
//! [`Sdp::parse`] turns a body into typed [`Sdp`] / [`MediaDescription`] values; it never panics, caps the
//! size ([`MAX_SDP_BYTES`], [`MAX_SDP_LINES`]) and reports malformed input as [`SdpError::Line`] with the
//! line number. Lines and attributes we do not model are kept ([`OtherLine`], [`Attribute::Other`]) and
//! written back by [`Sdp::to_bytes`]. [`offer_answer`] builds offers and answers for a local RTP address and
//! works out what was negotiated. We write this ourselves: the SDP we need is small, and the crates either
//! pull WebRTC stacks along or do not keep unknown lines.

mod error;
pub mod offer_answer;
mod parse;
mod write;

use std::fmt;
use std::net::IpAddr;

pub use error::{AttributeKind, LineProblem, SdpError};
pub use offer_answer::{bridge_mode, BridgeMode, Codec, CodecName, LocalSession, Negotiated};

/// Largest SDP body we parse.
pub const MAX_SDP_BYTES: usize = 32 * 1024;
/// Most lines we parse.
pub const MAX_SDP_LINES: usize = 1024;

/// A session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// `o=`
    pub origin: Origin,
    /// `s=` (may be a single space or `-` when there is no name).
    pub session_name: String,
    /// Session-level `c=`, the default for m-lines without their own.
    pub connection: Option<Connection>,
    /// `t=` start and stop (`0 0` for a permanent session; defaults to that if absent).
    pub timing: (u64, u64),
    /// Session-level `a=` lines, in order.
    pub attributes: Vec<Attribute>,
    /// Session-level lines we do not model (`i=`, `u=`, `e=`, `p=`, `b=`, `r=`, `z=`, `k=`, unknown letters).
    pub other: Vec<OtherLine>,
    /// The m-lines, in order.
    pub media: Vec<MediaDescription>,
}

/// A line we keep but do not interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherLine {
    /// The type letter.
    pub kind: char,
    /// Everything after `x=`.
    pub value: String,
}

/// Address type of `o=` and `c=` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrType {
    /// `IP4`
    Ip4,
    /// `IP6`
    Ip6,
}

impl AddrType {
    /// The address type of an IP address.
    pub fn of(ip: &IpAddr) -> AddrType {
        if ip.is_ipv4() {
            AddrType::Ip4
        } else {
            AddrType::Ip6
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            AddrType::Ip4 => "IP4",
            AddrType::Ip6 => "IP6",
        }
    }
}

/// `o=<username> <sess-id> <sess-version> IN <addrtype> <unicast-address>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Username (`-` when none).
    pub username: String,
    /// Session id.
    pub session_id: u64,
    /// Session version, incremented on each change of the description.
    pub session_version: u64,
    /// Address type.
    pub addr_type: AddrType,
    /// Address (an IP literal or a host name).
    pub address: String,
}

/// `c=IN <addrtype> <address>[/ttl[/n]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The address. `0.0.0.0` is the old (RFC 2543) way to put a call on hold.
    pub address: IpAddr,
    /// Multicast suffix (`/ttl[/n]`) without the leading slash, kept verbatim.
    pub multicast: Option<String>,
}

impl Connection {
    /// A unicast connection to `address`.
    pub fn new(address: IpAddr) -> Connection {
        Connection {
            address,
            multicast: None,
        }
    }

    /// Whether this is the unspecified address (`0.0.0.0` / `::`): old-style hold.
    pub fn is_hold(&self) -> bool {
        self.address.is_unspecified()
    }
}

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `a=sendrecv` (the default).
    SendRecv,
    /// `a=sendonly`
    SendOnly,
    /// `a=recvonly`
    RecvOnly,
    /// `a=inactive`
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_name(s: &str) -> Option<Direction> {
        Some(match s {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// Whether this side sends.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether this side receives.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn from_flags(send: bool, recv: bool) -> Direction {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    /// The direction seen from the other side (sendonly ↔ recvonly).
    pub fn reverse(self) -> Direction {
        Direction::from_flags(self.receives(), self.sends())
    }

    /// What both allow (send only if both allow sending, receive only if both allow receiving).
    pub fn intersect(self, other: Direction) -> Direction {
        Direction::from_flags(
            self.sends() && other.sends(),
            self.receives() && other.receives(),
        )
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type.
    pub pt: u8,
    /// Encoding name as written (compare case-insensitively).
    pub encoding: String,
    /// Clock rate.
    pub clock_rate: u32,
    /// Channels (audio), if given.
    pub channels: Option<u16>,
}

/// An `a=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attribute {
    /// `a=rtpmap`
    RtpMap(RtpMap),
    /// `a=fmtp:<pt> <params>`
    Fmtp {
        /// Payload type.
        pt: u8,
        /// The parameters, verbatim.
        params: String,
    },
    /// `a=ptime:<ms>`
    Ptime(u32),
    /// `a=maxptime:<ms>`
    MaxPtime(u32),
    /// `a=rtcp:<port> [IN <addrtype> <address>]` (RFC 3605).
    Rtcp {
        /// RTCP port.
        port: u16,
        /// RTCP address, if not the RTP one.
        connection: Option<Connection>,
    },
    /// `a=rtcp-mux` (RFC 5761).
    RtcpMux,
    /// `a=sendrecv`, `a=sendonly`, `a=recvonly`, `a=inactive`.
    Direction(Direction),
    /// Any other attribute, kept verbatim.
    Other {
        /// The name.
        name: String,
        /// The value after `:`, if any.
        value: Option<String>,
    },
}

/// An m-line and the lines under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// Media type (`audio`, `video`, ...).
    pub media: String,
    /// Port; 0 rejects or disables the stream.
    pub port: u16,
    /// Number of ports (`<port>/<n>`), if given.
    pub port_count: Option<u16>,
    /// Transport protocol (`RTP/AVP`, ...).
    pub protocol: String,
    /// Formats (payload type numbers for RTP).
    pub formats: Vec<String>,
    /// Media-level `c=`.
    pub connection: Option<Connection>,
    /// Media-level `a=` lines, in order.
    pub attributes: Vec<Attribute>,
    /// Media-level lines we do not model (`i=`, `b=`, `k=`, unknown letters).
    pub other: Vec<OtherLine>,
}

impl MediaDescription {
    /// A new m-line without connection or attributes.
    pub fn new(media: &str, port: u16, protocol: &str, formats: Vec<String>) -> MediaDescription {
        MediaDescription {
            media: media.to_owned(),
            port,
            port_count: None,
            protocol: protocol.to_owned(),
            formats,
            connection: None,
            attributes: Vec::new(),
            other: Vec::new(),
        }
    }

    /// Whether this is an audio stream.
    pub fn is_audio(&self) -> bool {
        self.media.eq_ignore_ascii_case("audio")
    }

    /// Whether this is plain RTP (`RTP/AVP` or `RTP/AVPF`), the only transports we relay.
    pub fn is_plain_rtp(&self) -> bool {
        self.protocol.eq_ignore_ascii_case("RTP/AVP")
            || self.protocol.eq_ignore_ascii_case("RTP/AVPF")
    }

    /// The numeric formats (payload types), skipping anything that is not a number below 128.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|&pt| pt < 128)
    }

    /// The rtpmap of `pt`.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::RtpMap(m) if m.pt == pt => Some(m),
            _ => None,
        })
    }

    /// The fmtp parameters of `pt`.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Fmtp { pt: p, params } if *p == pt => Some(params.as_str()),
            _ => None,
        })
    }

    /// `a=ptime`.
    pub fn ptime(&self) -> Option<u32> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Ptime(p) => Some(*p),
            _ => None,
        })
    }

    /// `a=maxptime`.
    pub fn maxptime(&self) -> Option<u32> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::MaxPtime(p) => Some(*p),
            _ => None,
        })
    }

    /// `a=rtcp` port and address.
    pub fn rtcp(&self) -> Option<(u16, Option<&Connection>)> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Rtcp { port, connection } => Some((*port, connection.as_ref())),
            _ => None,
        })
    }

    /// Whether `a=rtcp-mux` is present.
    pub fn rtcp_mux(&self) -> bool {
        self.attributes
            .iter()
            .any(|a| matches!(a, Attribute::RtcpMux))
    }

    /// The media-level direction attribute, if any.
    pub fn direction_attr(&self) -> Option<Direction> {
        direction_in(&self.attributes)
    }
}

/// Where an unmodelled session-level line goes relative to the others (RFC 8866 order: `i u e p` before
/// `c=`, `b=` after it, the rest after `t=`). The parser sorts by this so that write-then-parse is identity.
fn session_rank(kind: char) -> u8 {
    match kind {
        'i' | 'u' | 'e' | 'p' => 0,
        'b' => 1,
        _ => 2,
    }
}

/// Like [`session_rank`] for media level: `i=` before `c=`, `b=` after it, the rest before `a=`.
fn media_rank(kind: char) -> u8 {
    match kind {
        'i' => 0,
        'b' => 1,
        _ => 2,
    }
}

fn direction_in(attrs: &[Attribute]) -> Option<Direction> {
    attrs.iter().find_map(|a| match a {
        Attribute::Direction(d) => Some(*d),
        _ => None,
    })
}

impl Sdp {
    /// Parses an SDP body. Never panics; see [`SdpError`].
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        parse::parse(body)
    }

    /// Serialises with CRLF line ends.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// The effective direction of m-line `index`: its own attribute, else the session's, else sendrecv.
    /// Does not consider `c=0.0.0.0` (see [`Sdp::effective_connection`] and [`Connection::is_hold`]).
    pub fn direction(&self, index: usize) -> Direction {
        self.media
            .get(index)
            .and_then(MediaDescription::direction_attr)
            .or_else(|| direction_in(&self.attributes))
            .unwrap_or(Direction::SendRecv)
    }

    /// The connection of m-line `index`: its own `c=`, else the session's.
    pub fn effective_connection(&self, index: usize) -> Option<&Connection> {
        self.media
            .get(index)
            .and_then(|m| m.connection.as_ref())
            .or(self.connection.as_ref())
    }
}
