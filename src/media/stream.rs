//! Per-stream state of one relay leg: the outgoing stream's continuity rewriter ([`OutStream`]) and the incoming
//! stream's receiver statistics ([`InStats`]) used for the RTCP reports the relay generates.
//!
//! # Continuity
//! Each leg sends ONE outgoing stream: one SSRC for the life of the leg, sequence numbers that go up by one per
//! packet and timestamps that keep pace with real time, whatever feeds it (greeting, hold music, the other leg's
//! audio, hold music again, another agent). The rewriter keeps, for the current source, a sequence delta and a
//! timestamp delta: `out = in + delta` (wrapping). When the source changes (a different leg, a new generated item,
//! or the same leg with a new SSRC) it re-anchors: the next packet gets `last_seq + 1`, and `last_ts` advanced by
//! the wall time elapsed since the last packet we sent (at least one frame), and the marker bit so the receiver
//! resets its jitter buffer (RFC 3551 §4.1).

use std::time::{Duration, Instant};

use crate::media::rtp::ReportBlock;

/// Outgoing stream of a leg: one SSRC, continuous sequence numbers and timestamps across source changes.
#[derive(Debug, Clone)]
pub struct OutStream {
    /// The SSRC we send with on this leg.
    pub ssrc: u32,
    clock_rate: u32,
    frame_samples: u32,
    /// Highest sequence number sent, its timestamp and when.
    last_seq: u16,
    last_ts: u32,
    last_sent: Option<Instant>,
    /// Current source: tag, SSRC it sends with, and the deltas that map it onto our stream.
    src_tag: u64,
    src_ssrc: u32,
    seq_delta: u16,
    ts_delta: u32,
    synced: bool,
    /// Packets and payload octets sent (for SR; wrap as RFC 3550 says).
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

/// Elapsed time in clock units (`rate` Hz), wrapping modulo 2^32 like RTP timestamps.
#[inline]
pub fn duration_to_ticks(d: Duration, rate: u32) -> u32 {
    let rate = u64::from(rate);
    let whole = d.as_secs().saturating_mul(rate);
    let frac = u64::from(d.subsec_nanos()) * rate / 1_000_000_000;
    whole.wrapping_add(frac) as u32
}

impl OutStream {
    /// A fresh stream with the given SSRC and random initial sequence number and timestamp (RFC 3550 §5.1).
    pub fn new(
        ssrc: u32,
        initial_seq: u16,
        initial_ts: u32,
        clock_rate: u32,
        frame_samples: u32,
    ) -> Self {
        Self {
            ssrc,
            clock_rate,
            frame_samples,
            last_seq: initial_seq.wrapping_sub(1),
            last_ts: initial_ts,
            last_sent: None,
            src_tag: 0,
            src_ssrc: 0,
            seq_delta: 0,
            ts_delta: 0,
            synced: false,
            packets: 0,
            octets: 0,
        }
    }

    /// Map an incoming packet from source `tag` onto this stream: returns (marker, seq, ts) to write.
    /// This is on the per-packet path: a compare, two wrapping adds, and on a source change a re-anchor.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn rewrite(
        &mut self,
        now: Instant,
        tag: u64,
        ssrc: u32,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: usize,
    ) -> (bool, u16, u32) {
        let mut marker = marker;
        if !self.synced || tag != self.src_tag || ssrc != self.src_ssrc {
            self.reanchor(now, tag, ssrc, seq, ts);
            marker = true;
        }
        let out_seq = seq.wrapping_add(self.seq_delta);
        let out_ts = ts.wrapping_add(self.ts_delta);
        // Only move the "last" point forward (serial-number arithmetic): a reordered packet keeps its slot.
        if out_seq.wrapping_sub(self.last_seq) < 0x8000 {
            self.last_seq = out_seq;
            self.last_ts = out_ts;
            self.last_sent = Some(now);
        }
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload as u32);
        (marker, out_seq, out_ts)
    }

    /// Map packet `seq` of a telephone-event (RFC 4733) with source tag `tag` onto this stream: the first packet
    /// of the event re-anchors (marker, timestamp = now on our clock) and every packet of it carries that same
    /// timestamp. The stream's clock stays anchored at the event's start, so what follows the event is timed
    /// from real time, not from the event's last packet.
    pub fn rewrite_event(&mut self, now: Instant, tag: u64, seq: u16) -> (bool, u16, u32) {
        let continuing = self.synced && tag == self.src_tag && self.src_ssrc == 0;
        let started = self.last_sent;
        let r = self.rewrite(now, tag, 0, seq, 0, false, 4);
        if continuing {
            self.last_sent = started;
        }
        r
    }

    #[cold]
    fn reanchor(&mut self, now: Instant, tag: u64, ssrc: u32, seq: u16, ts: u32) {
        let out_seq = self.last_seq.wrapping_add(1);
        let out_ts = match self.last_sent {
            Some(t) => {
                let elapsed = duration_to_ticks(now.saturating_duration_since(t), self.clock_rate);
                self.last_ts.wrapping_add(elapsed.max(self.frame_samples))
            }
            None => self.last_ts,
        };
        self.src_tag = tag;
        self.src_ssrc = ssrc;
        self.seq_delta = out_seq.wrapping_sub(seq);
        self.ts_delta = out_ts.wrapping_sub(ts);
        self.synced = true;
    }

    /// The RTP timestamp our stream would carry at `now` (for an SR): last timestamp plus elapsed time.
    pub fn timestamp_at(&self, now: Instant) -> u32 {
        match self.last_sent {
            Some(t) => self.last_ts.wrapping_add(duration_to_ticks(
                now.saturating_duration_since(t),
                self.clock_rate,
            )),
            None => self.last_ts,
        }
    }

    /// Whether anything was sent on this stream yet.
    pub fn has_sent(&self) -> bool {
        self.last_sent.is_some()
    }
}

/// Receiver statistics for the stream a leg's peer sends us (RFC 3550 §6.4.1 and appendix A.1, A.3, A.8),
/// without the probation step: the relay reports, it does not judge.
#[derive(Debug, Clone, Default)]
pub struct InStats {
    started: bool,
    ssrc: u32,
    base_seq: u16,
    max_seq: u16,
    cycles: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    transit: u32,
    /// Jitter scaled by 16 (A.8).
    jitter: u32,
    last_sr: u32,
    last_sr_at: Option<Instant>,
}

impl InStats {
    /// Account one packet: its SSRC, sequence number, timestamp and arrival time in the same clock units.
    #[inline]
    pub fn on_rtp(&mut self, ssrc: u32, seq: u16, ts: u32, arrival: u32) {
        if !self.started || ssrc != self.ssrc {
            *self = Self {
                started: true,
                ssrc,
                base_seq: seq,
                max_seq: seq,
                transit: arrival.wrapping_sub(ts),
                ..Self::default()
            };
        }
        let delta = seq.wrapping_sub(self.max_seq);
        if delta != 0 && delta < 0x8000 {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(1 << 16);
            }
            self.max_seq = seq;
        }
        self.received = self.received.wrapping_add(1);
        let transit = arrival.wrapping_sub(ts);
        let d = (transit.wrapping_sub(self.transit) as i32).unsigned_abs();
        self.transit = transit;
        self.jitter = self
            .jitter
            .wrapping_add(d)
            .wrapping_sub((self.jitter.wrapping_add(8)) >> 4);
    }

    /// Remember an SR from the peer (for LSR/DLSR).
    pub fn on_sender_report(&mut self, now: Instant, ntp: u64) {
        self.last_sr = (ntp >> 16) as u32;
        self.last_sr_at = Some(now);
    }

    /// Build a report block (and move the "prior" interval marks), or `None` when nothing was received.
    pub fn report(&mut self, now: Instant) -> Option<ReportBlock> {
        if !self.started {
            return None;
        }
        let ext_max = self.cycles.wrapping_add(u32::from(self.max_seq));
        let expected = ext_max
            .wrapping_sub(u32::from(self.base_seq))
            .wrapping_add(1);
        let lost = i64::from(expected) - i64::from(self.received);
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            u8::try_from((lost_interval << 8) / i64::from(expected_interval)).unwrap_or(u8::MAX)
        };
        let dlsr = self.last_sr_at.map_or(0, |t| {
            let d = now.saturating_duration_since(t);
            u32::try_from(d.as_micros().saturating_mul(65536) / 1_000_000).unwrap_or(u32::MAX)
        });
        Some(ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: i32::try_from(lost).unwrap_or(if lost < 0 {
                i32::MIN
            } else {
                i32::MAX
            }),
            highest_seq: ext_max,
            jitter: self.jitter >> 4,
            lsr: self.last_sr,
            dlsr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_stats_counts_loss_and_wrap() {
        let mut s = InStats::default();
        let t0 = Instant::now();
        let mut seq = 65530u16;
        for i in 0..20u32 {
            if i != 7 && i != 8 {
                s.on_rtp(1, seq, i * 160, i * 160 + 50);
            }
            seq = seq.wrapping_add(1);
        }
        let r = s.report(t0).unwrap();
        assert_eq!(r.cumulative_lost, 2);
        assert_eq!(r.highest_seq, 65536 + u32::from(seq.wrapping_sub(1)));
        assert_eq!(r.fraction_lost, (2 * 256 / 20) as u8);
        assert_eq!(r.jitter, 0, "constant transit means zero jitter");
        // Second interval: nothing lost.
        s.on_rtp(1, seq, 20 * 160, 20 * 160 + 50);
        assert_eq!(s.report(t0).unwrap().fraction_lost, 0);
    }

    #[test]
    fn reanchor_keeps_pace_with_time() {
        let t0 = Instant::now();
        let mut o = OutStream::new(9, 100, 1000, 8000, 160);
        assert_eq!(o.rewrite(t0, 1, 5, 7, 70, false, 160), (true, 100, 1000));
        assert_eq!(
            o.rewrite(t0 + Duration::from_millis(20), 1, 5, 8, 230, false, 160),
            (false, 101, 1160)
        );
        // New source 100 ms later: ts advances by 800 ticks.
        assert_eq!(
            o.rewrite(t0 + Duration::from_millis(120), 2, 6, 40000, 5, false, 160),
            (true, 102, 1960)
        );
    }
}
