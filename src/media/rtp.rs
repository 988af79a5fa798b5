//! Zero-copy views over RTP (RFC 3550 §5.1) and RTCP (RFC 3550 §6) packets.
//!
//! The relay rewrites headers in place, so the views borrow the packet buffer and read or write fixed offsets of
//! the 12-byte fixed header. Validation happens once, in [`RtpHeader::new`]; afterwards every accessor works on a
//! `[u8; 12]` array and cannot go out of bounds. RTCP parsing walks a compound packet with checked lengths and
//! only looks at what the relay needs (SR sender info, BYE); RTCP building writes SR/RR + SDES CNAME.
//!
//! We wrote this instead of using a crate because the relay needs exactly five header fields, in place, on the hot
//! path; the general-purpose RTP crates parse into owned structs.

use thiserror::Error;

/// Length of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;

/// Why a buffer is not an RTP or RTCP packet the relay accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Shorter than the headers it announces.
    #[error("packet too short")]
    TooShort,
    /// Version field is not 2.
    #[error("RTP/RTCP version is not 2")]
    BadVersion,
    /// An RTCP packet type was seen on the RTP path, or the reverse.
    #[error("wrong packet kind (RTP vs RTCP)")]
    WrongKind,
    /// An RTCP length field runs past the end of the datagram.
    #[error("RTCP length field out of bounds")]
    BadLength,
}

/// Whether the second byte of a datagram looks like an RTCP packet type (RFC 5761 §4: 192..=223 covers
/// SR, RR, SDES, BYE, APP, feedback and XR; in RTP terms these are marker + PT 64..=95).
pub fn looks_like_rtcp(buf: &[u8]) -> bool {
    matches!(buf.get(1), Some(192..=223))
}

/// A validated RTP packet: fixed header plus the bounds of its payload.
#[derive(Debug)]
pub struct RtpHeader<'a> {
    fixed: &'a mut [u8; RTP_HEADER_LEN],
}

impl<'a> RtpHeader<'a> {
    /// Validate `buf` as RTP (version 2, at least the fixed header, not an RTCP packet type) and borrow it.
    ///
    /// CSRC lists and header extensions are not walked: the relay forwards them unchanged.
    #[inline]
    pub fn new(buf: &'a mut [u8]) -> Result<Self, PacketError> {
        if looks_like_rtcp(buf) {
            return Err(PacketError::WrongKind);
        }
        let fixed = buf
            .first_chunk_mut::<RTP_HEADER_LEN>()
            .ok_or(PacketError::TooShort)?;
        if fixed[0] >> 6 != 2 {
            return Err(PacketError::BadVersion);
        }
        Ok(Self { fixed })
    }

    /// Payload type (7 bits).
    #[inline]
    pub fn payload_type(&self) -> u8 {
        self.fixed[1] & 0x7f
    }
    /// Marker bit.
    #[inline]
    pub fn marker(&self) -> bool {
        self.fixed[1] & 0x80 != 0
    }
    /// Sequence number.
    #[inline]
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.fixed[2], self.fixed[3]])
    }
    /// RTP timestamp.
    #[inline]
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.fixed[4], self.fixed[5], self.fixed[6], self.fixed[7]])
    }
    /// Synchronisation source.
    #[inline]
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.fixed[8], self.fixed[9], self.fixed[10], self.fixed[11]])
    }
    /// Rewrite the fields the relay owns in one go: marker, payload type, sequence, timestamp, SSRC.
    #[inline]
    pub fn rewrite(&mut self, marker: bool, pt: u8, seq: u16, ts: u32, ssrc: u32) {
        self.fixed[1] = (u8::from(marker) << 7) | (pt & 0x7f);
        self.fixed[2..4].copy_from_slice(&seq.to_be_bytes());
        self.fixed[4..8].copy_from_slice(&ts.to_be_bytes());
        self.fixed[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }
}

/// Write a fresh RTP header (no CSRC, no extension) into the first 12 bytes of `out`.
pub fn write_header(
    out: &mut [u8; RTP_HEADER_LEN],
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
) {
    out[0] = 0x80;
    out[1] = (u8::from(marker) << 7) | (pt & 0x7f);
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    out[4..8].copy_from_slice(&ts.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// The byte range of an RTP packet's payload: after the CSRC list and any header extension, before any
/// padding. `None` when the packet is too short for what its header announces.
#[inline]
pub fn payload_range(buf: &[u8]) -> Option<std::ops::Range<usize>> {
    let b0 = *buf.first()?;
    let mut start = RTP_HEADER_LEN + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        let ext: [u8; 2] = buf.get(start + 2..start + 4)?.try_into().ok()?;
        start += 4 + 4 * usize::from(u16::from_be_bytes(ext));
    }
    let mut end = buf.len();
    if b0 & 0x20 != 0 {
        end = end.checked_sub(usize::from(*buf.last()?))?;
    }
    (start <= end).then_some(start..end)
}

/// RTCP packet types the relay interprets.
pub mod rtcp_pt {
    /// Sender report.
    pub const SR: u8 = 200;
    /// Receiver report.
    pub const RR: u8 = 201;
    /// Source description.
    pub const SDES: u8 = 202;
    /// Goodbye.
    pub const BYE: u8 = 203;
}

/// One packet of an RTCP compound packet, as far as the relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtcpItem {
    /// A sender report: the peer's SSRC and the NTP timestamp it was sent at.
    SenderReport {
        /// SSRC of the sender.
        ssrc: u32,
        /// 64-bit NTP timestamp of the report.
        ntp: u64,
    },
    /// A receiver report (contents ignored: reports about our streams are informational).
    ReceiverReport {
        /// SSRC of the reporter.
        ssrc: u32,
    },
    /// A BYE naming at least one SSRC.
    Bye {
        /// First SSRC in the BYE.
        ssrc: u32,
    },
    /// Any other packet type (SDES, APP, feedback, XR).
    Other {
        /// Its packet type.
        pt: u8,
    },
}

/// Walk an RTCP compound packet. Stops at the first malformed packet with an error item.
pub fn parse_rtcp(buf: &[u8]) -> RtcpIter<'_> {
    RtcpIter { rest: buf }
}

/// Iterator returned by [`parse_rtcp`].
#[derive(Debug)]
pub struct RtcpIter<'a> {
    rest: &'a [u8],
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl Iterator for RtcpIter<'_> {
    type Item = Result<RtcpItem, PacketError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(head) = self.rest.first_chunk::<4>() else {
            self.rest = &[];
            return Some(Err(PacketError::TooShort));
        };
        if head[0] >> 6 != 2 {
            self.rest = &[];
            return Some(Err(PacketError::BadVersion));
        }
        let pt = head[1];
        let words = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let len = (words + 1) * 4;
        let Some(pkt) = self.rest.get(..len) else {
            self.rest = &[];
            return Some(Err(PacketError::BadLength));
        };
        self.rest = self.rest.get(len..).unwrap_or_default();
        let item = match pt {
            rtcp_pt::SR => match (be32(pkt, 4), be32(pkt, 8), be32(pkt, 12)) {
                (Some(ssrc), Some(hi), Some(lo)) => RtcpItem::SenderReport {
                    ssrc,
                    ntp: (u64::from(hi) << 32) | u64::from(lo),
                },
                _ => return Some(Err(PacketError::TooShort)),
            },
            rtcp_pt::RR => match be32(pkt, 4) {
                Some(ssrc) => RtcpItem::ReceiverReport { ssrc },
                None => return Some(Err(PacketError::TooShort)),
            },
            rtcp_pt::BYE if head[0] & 0x1f > 0 => match be32(pkt, 4) {
                Some(ssrc) => RtcpItem::Bye { ssrc },
                None => return Some(Err(PacketError::TooShort)),
            },
            _ if (192..=223).contains(&pt) => RtcpItem::Other { pt },
            _ => {
                self.rest = &[];
                return Some(Err(PacketError::WrongKind));
            }
        };
        Some(Ok(item))
    }
}

/// A reception report block (RFC 3550 §6.4.1) about one source we receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// SSRC of the source reported on (as the peer sends it).
    pub ssrc: u32,
    /// Fraction lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed, clamped).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the last SR's NTP timestamp from that source.
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

/// Sender information for an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// NTP timestamp (0 when no wall clock is known: RFC 3550 §6.4.1 allows it).
    pub ntp: u64,
    /// RTP timestamp corresponding to `ntp`.
    pub rtp_ts: u32,
    /// Packets sent.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

/// Write an SR (if `sender` is given) or RR from `ssrc`, with at most one report block, followed by an SDES with
/// a CNAME item. Returns the length written, or `None` when `out` is too small or the CNAME longer than 255 bytes.
pub fn write_report(
    out: &mut [u8],
    ssrc: u32,
    sender: Option<SenderInfo>,
    block: Option<ReportBlock>,
    cname: &[u8],
) -> Option<usize> {
    let mut w = Writer { out, at: 0 };
    let rc = u8::from(block.is_some());
    let words: u16 = 1 + if sender.is_some() { 5 } else { 0 } + u16::from(rc) * 6;
    w.bytes(&[
        0x80 | rc,
        if sender.is_some() {
            rtcp_pt::SR
        } else {
            rtcp_pt::RR
        },
    ])?;
    w.bytes(&words.to_be_bytes())?;
    w.bytes(&ssrc.to_be_bytes())?;
    if let Some(s) = sender {
        w.bytes(&s.ntp.to_be_bytes())?;
        w.bytes(&s.rtp_ts.to_be_bytes())?;
        w.bytes(&s.packets.to_be_bytes())?;
        w.bytes(&s.octets.to_be_bytes())?;
    }
    if let Some(b) = block {
        let lost = b.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff);
        let lost = (lost as u32) & 0x00ff_ffff;
        w.bytes(&b.ssrc.to_be_bytes())?;
        w.bytes(&((u32::from(b.fraction_lost) << 24) | lost).to_be_bytes())?;
        w.bytes(&b.highest_seq.to_be_bytes())?;
        w.bytes(&b.jitter.to_be_bytes())?;
        w.bytes(&b.lsr.to_be_bytes())?;
        w.bytes(&b.dlsr.to_be_bytes())?;
    }
    // SDES: one chunk, CNAME item, null terminator, padded to 32 bits.
    let cname_len = u8::try_from(cname.len()).ok()?;
    let chunk = 4 + 2 + cname.len() + 1;
    let padded = chunk.div_ceil(4) * 4;
    let sdes_words = u16::try_from(padded / 4).ok()?;
    w.bytes(&[0x81, rtcp_pt::SDES])?;
    w.bytes(&sdes_words.to_be_bytes())?;
    w.bytes(&ssrc.to_be_bytes())?;
    w.bytes(&[1, cname_len])?;
    w.bytes(cname)?;
    for _ in chunk..=padded {
        w.bytes(&[0])?;
    }
    Some(w.at)
}

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> Option<()> {
        let end = self.at.checked_add(b.len())?;
        self.out.get_mut(self.at..end)?.copy_from_slice(b);
        self.at = end;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_rejects() {
        let mut p = [0u8; 20];
        write_header(p.first_chunk_mut().unwrap(), true, 0, 65535, 0xdead_beef, 7);
        let mut h = RtpHeader::new(&mut p).unwrap();
        assert_eq!(
            (
                h.marker(),
                h.payload_type(),
                h.sequence(),
                h.timestamp(),
                h.ssrc()
            ),
            (true, 0, 65535, 0xdead_beef, 7)
        );
        h.rewrite(false, 101, 1, 2, 3);
        assert_eq!(
            (
                h.marker(),
                h.payload_type(),
                h.sequence(),
                h.timestamp(),
                h.ssrc()
            ),
            (false, 101, 1, 2, 3)
        );
        assert_eq!(
            RtpHeader::new(&mut p[..11]).unwrap_err(),
            PacketError::TooShort
        );
        p[0] = 0x40;
        assert_eq!(RtpHeader::new(&mut p).unwrap_err(), PacketError::BadVersion);
        let mut r = [0x80u8, 200, 0, 6, 0, 0, 0, 0];
        assert_eq!(RtpHeader::new(&mut r).unwrap_err(), PacketError::WrongKind);
    }

    #[test]
    fn report_parses_back() {
        let mut buf = [0u8; 128];
        let sender = SenderInfo {
            ntp: 0x1122_3344_5566_7788,
            rtp_ts: 9,
            packets: 3,
            octets: 480,
        };
        let block = ReportBlock {
            ssrc: 42,
            cumulative_lost: -1,
            ..Default::default()
        };
        let n = write_report(&mut buf, 5, Some(sender), Some(block), b"rappel").unwrap();
        assert_eq!(n % 4, 0);
        let items: Vec<_> = parse_rtcp(&buf[..n]).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            items,
            vec![
                RtcpItem::SenderReport {
                    ssrc: 5,
                    ntp: 0x1122_3344_5566_7788
                },
                RtcpItem::Other { pt: 202 }
            ]
        );
        let n = write_report(&mut buf, 6, None, None, b"x").unwrap();
        let items: Vec<_> = parse_rtcp(&buf[..n]).collect::<Result<_, _>>().unwrap();
        assert_eq!(items[0], RtcpItem::ReceiverReport { ssrc: 6 });
        assert!(write_report(&mut buf[..20], 5, Some(sender), Some(block), b"rappel").is_none());
    }

    #[test]
    fn truncated_rtcp_is_an_error_not_a_panic() {
        let bye = [0x81u8, 203, 0, 1, 0, 0, 0, 9];
        assert_eq!(parse_rtcp(&bye).next(), Some(Ok(RtcpItem::Bye { ssrc: 9 })));
        assert_eq!(
            parse_rtcp(&bye[..6]).next(),
            Some(Err(PacketError::BadLength))
        );
        let long = [0x80u8, 200, 0xff, 0xff, 0];
        assert_eq!(parse_rtcp(&long).next(), Some(Err(PacketError::BadLength)));
        assert_eq!(
            parse_rtcp(&[0x80u8, 200, 0]).next(),
            Some(Err(PacketError::TooShort))
        );
    }
}
