//! Call recording: a two-channel 8 kHz WAV, visitor on the left, agent on the right.
//!
//! The engine's recording writer ([`crate::net::record_io`]) feeds [`Recorder::push_rtp`] with each side's
//! packets as the relay forwarded them, with their arrival times ([`Recorder::push`] takes bare payloads).
//! Each side is placed on a common timeline (samples since the recorder started): its first packet is
//! anchored at its arrival time, later packets by their RTP timestamp relative to that anchor (so jitter
//! does not smear the audio and reordered packets land in place). A timestamp that strays more than
//! [`REANCHOR_SAMPLES`] from the arrival time (new SSRC, source switch) re-anchors the side on arrival.
//! Gaps are silence. Audio is written [`Recorder::jitter`] behind real time, so late packets within that
//! window still land; older ones are dropped. Memory per recorder is bounded by that window.

use std::io::{Seek, Write};
use std::time::{Duration, Instant};

use super::g711::Law;
use super::rtp;
use super::wav::{WavError, WavWriter};

/// Sample rate of recordings.
pub const RECORD_RATE: u32 = 8000;
/// How far (in samples) a packet's timestamp may stray from its arrival before the side is re-anchored.
pub const REANCHOR_SAMPLES: i64 = 2 * RECORD_RATE as i64;

/// Which party a payload comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The visitor: left channel.
    Visitor,
    /// The agent: right channel.
    Agent,
}

#[derive(Debug)]
struct Track {
    law: Law,
    /// (RTP timestamp, timeline position) of the anchor packet.
    anchor: Option<(u32, i64)>,
    /// Samples from the recorder's written position onward (zeros where nothing arrived).
    buf: Vec<i16>,
}

/// Records one bridge to a stereo WAV through any `Write + Seek`.
#[derive(Debug)]
pub struct Recorder<W: Write + Seek> {
    start: Instant,
    writer: WavWriter<W>,
    /// Samples per channel already written.
    written: i64,
    tracks: [Track; 2],
    jitter: i64,
    scratch: Vec<i16>,
    decoded: Vec<i16>,
}

impl<W: Write + Seek> Recorder<W> {
    /// Starts a recording at `now`, writing the WAV header to `out`. `visitor` and `agent` are the G.711
    /// laws of the payloads each side will push.
    pub fn new(out: W, now: Instant, visitor: Law, agent: Law) -> Result<Self, WavError> {
        let track = |law| Track {
            law,
            anchor: None,
            buf: Vec::new(),
        };
        Ok(Recorder {
            start: now,
            writer: WavWriter::new(out, 2, RECORD_RATE)?,
            written: 0,
            tracks: [track(visitor), track(agent)],
            jitter: RECORD_RATE as i64 / 5,
            scratch: Vec::new(),
            decoded: Vec::new(),
        })
    }

    /// How far behind real time audio is written (200 ms by default).
    pub fn jitter(&self) -> Duration {
        Duration::from_micros(self.jitter as u64 * 1_000_000 / RECORD_RATE as u64)
    }

    /// Sets [`Recorder::jitter`] (capped at 2 s).
    pub fn set_jitter(&mut self, d: Duration) {
        self.jitter =
            (d.min(Duration::from_secs(2)).as_micros() as i64) * RECORD_RATE as i64 / 1_000_000;
    }

    /// Changes the law of one side (after a re-INVITE changed its codec).
    pub fn set_law(&mut self, side: Side, law: Law) {
        self.tracks[side as usize].law = law;
    }

    /// Samples per channel written to the file so far.
    pub fn samples_written(&self) -> u64 {
        self.written as u64
    }

    fn position(&self, now: Instant) -> i64 {
        let us = now
            .saturating_duration_since(self.start)
            .as_micros()
            .min(i64::MAX as u128 / 8) as i64;
        us * RECORD_RATE as i64 / 1_000_000
    }

    /// Adds one packet's G.711 `payload` from `side`, with its RTP timestamp, arrived at `now`; writes
    /// whatever is now older than the jitter window.
    pub fn push(
        &mut self,
        now: Instant,
        side: Side,
        rtp_timestamp: u32,
        payload: &[u8],
    ) -> Result<(), WavError> {
        let law = self.tracks[side as usize].law;
        self.push_decoded(now, side, law, rtp_timestamp, payload)
    }

    /// Adds one whole RTP packet from `side`, as the relay reports it for recording
    /// ([`crate::net::record_io::RecordTap::push`]). The payload is decoded with the law its static payload
    /// type names (0 PCMU, 8 PCMA), not the side's configured law: when the relay transcodes between a PCMU
    /// and a PCMA leg, the reported packet is already in the other leg's law and carries its payload type.
    /// Packets of other payload types (telephone-event, comfort noise) and malformed ones are ignored.
    pub fn push_rtp(&mut self, now: Instant, side: Side, packet: &[u8]) -> Result<(), WavError> {
        let Some(law) = packet.get(1).and_then(|b| Law::from_payload_type(b & 0x7f)) else {
            return Ok(());
        };
        let Some(ts) = packet.get(4..8).and_then(|t| <[u8; 4]>::try_from(t).ok()) else {
            return Ok(());
        };
        let Some(payload) = rtp::payload_range(packet).and_then(|r| packet.get(r)) else {
            return Ok(());
        };
        self.push_decoded(now, side, law, u32::from_be_bytes(ts), payload)
    }

    fn push_decoded(
        &mut self,
        now: Instant,
        side: Side,
        law: Law,
        rtp_timestamp: u32,
        payload: &[u8],
    ) -> Result<(), WavError> {
        // Write out what is older than the window first: this keeps the buffers bounded.
        self.advance(now)?;
        let arrival = self.position(now);
        let written = self.written;
        let window = self.jitter + REANCHOR_SAMPLES;
        let track = &mut self.tracks[side as usize];
        let mut pos = match track.anchor {
            Some((ts, at)) => at + rtp_timestamp.wrapping_sub(ts) as i32 as i64,
            None => arrival,
        };
        if track.anchor.is_none() || (pos - arrival).abs() > REANCHOR_SAMPLES {
            track.anchor = Some((rtp_timestamp, arrival));
            pos = arrival;
        }
        self.decoded.clear();
        law.decode_into(payload, &mut self.decoded);
        let mut samples = &self.decoded[..];
        if pos < written {
            let late = usize::try_from(written - pos).unwrap_or(usize::MAX);
            samples = samples.get(late..).unwrap_or(&[]);
            pos = written;
        }
        let offset = (pos - written) as usize;
        // Bounded: pos is within REANCHOR_SAMPLES of arrival and arrival - written is at most the jitter
        // window after the `advance` above; anything further is dropped rather than buffered.
        if !samples.is_empty()
            && offset + samples.len() <= (window + arrival - written).max(0) as usize
        {
            if track.buf.len() < offset + samples.len() {
                track.buf.resize(offset + samples.len(), 0);
            }
            track.buf[offset..offset + samples.len()].copy_from_slice(samples);
        }
        Ok(())
    }

    /// Writes everything older than the jitter window (call it now and then when no packets flow).
    pub fn advance(&mut self, now: Instant) -> Result<(), WavError> {
        let target = self.position(now) - self.jitter;
        self.write_until(target)
    }

    fn write_until(&mut self, target: i64) -> Result<(), WavError> {
        const CHUNK: i64 = 8000;
        while self.written < target {
            let n = (target - self.written).min(CHUNK) as usize;
            self.scratch.clear();
            for i in 0..n {
                self.scratch
                    .push(self.tracks[0].buf.get(i).copied().unwrap_or(0));
                self.scratch
                    .push(self.tracks[1].buf.get(i).copied().unwrap_or(0));
            }
            self.writer.write_samples(&self.scratch)?;
            for t in &mut self.tracks {
                t.buf.drain(..n.min(t.buf.len()));
            }
            self.written += n as i64;
        }
        Ok(())
    }

    /// Writes everything up to `now` (silence where nothing arrived, plus whatever is buffered beyond it)
    /// and finalises the WAV header: a recording stopped at `now` lasts from its start to `now`. Returns the
    /// output and the samples per channel written in all.
    pub fn finish_at(mut self, now: Instant) -> Result<(W, u64), WavError> {
        let end = self.position(now);
        self.write_until(end)?;
        let end = self.written + self.tracks.iter().map(|t| t.buf.len()).max().unwrap_or(0) as i64;
        self.write_until(end)?;
        let frames = self.samples_written();
        Ok((self.writer.finish()?, frames))
    }

    /// Writes what is buffered and finalises the WAV header; returns the output.
    pub fn finish(mut self) -> Result<W, WavError> {
        let end = self.written + self.tracks.iter().map(|t| t.buf.len()).max().unwrap_or(0) as i64;
        self.write_until(end)?;
        self.writer.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::wav::Wav;
    use std::io::Cursor;

    /// A packet of `k`-dependent constant samples so each frame is recognisable after the round trip.
    fn frame(law: Law, k: u32, sign: i16) -> Vec<u8> {
        let level = sign * (1000 + 200 * k as i16);
        let mut out = Vec::new();
        law.encode_into(&[level; 160], &mut out);
        out
    }

    fn rtp(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn lost_packet_on_one_side_is_silence_and_does_not_shift_the_channels() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut rec = Recorder::new(Cursor::new(Vec::new()), t0, Law::Ulaw, Law::Alaw).unwrap();
        // Both sides start at 100 ms; 10 frames each; the visitor's frame 4 is lost. The agent's packets
        // arrive 7 ms later than the visitor's (different path), its timestamps from another base; the
        // agent speaks PCMA (PT 8) and the visitor PCMU (PT 0).
        for k in 0..10u32 {
            if k != 4 {
                let p = rtp(0, k as u16, 1000 + 160 * k, &frame(Law::Ulaw, k, 1));
                rec.push_rtp(ms(100 + 20 * u64::from(k)), Side::Visitor, &p)
                    .unwrap();
            }
            let p = rtp(8, k as u16, 900_000 + 160 * k, &frame(Law::Alaw, k, -1));
            rec.push_rtp(ms(107 + 20 * u64::from(k)), Side::Agent, &p)
                .unwrap();
        }
        let (out, frames) = rec.finish_at(ms(600)).unwrap();
        assert_eq!(frames, 4800);
        let out = out.into_inner();
        let wav = Wav::read_from(Cursor::new(out)).unwrap();
        assert_eq!((wav.channels, wav.sample_rate), (2, RECORD_RATE));
        // 600 ms from the recorder's start, per channel.
        let pcm = wav.to_pcm();
        assert_eq!(pcm.len(), 2 * 4800);
        let left = |i: usize| pcm[2 * i];
        let right = |i: usize| pcm[2 * i + 1];
        let close = |got: i16, want: i16| {
            (i32::from(got) - i32::from(want)).abs() <= want.abs() as i32 / 16
        };
        for k in 0..10usize {
            // Visitor frame k sits at 100 ms + 20k ms = sample 800 + 160k; agent frame k 56 samples later.
            let (v, a) = (800 + 160 * k, 856 + 160 * k);
            let want = 1000 + 200 * k as i16;
            for i in 0..160 {
                if k == 4 {
                    assert_eq!(left(v + i), 0, "lost visitor frame must be silence");
                } else {
                    assert!(
                        close(left(v + i), want),
                        "visitor frame {k} sample {i}: {}",
                        left(v + i)
                    );
                }
                assert!(
                    close(right(a + i), -want),
                    "agent frame {k} sample {i}: {}",
                    right(a + i)
                );
            }
        }
        // Before each side's first packet and after its last: silence.
        assert!((0..800).all(|i| left(i) == 0 && right(i) == 0));
        assert!((800..856).all(|i| right(i) == 0));
        assert!((2400..4800).all(|i| left(i) == 0));
        assert!((2456..4800).all(|i| right(i) == 0));
    }
}
