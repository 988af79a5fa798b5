//! Call recording: a two-channel 8 kHz WAV, visitor on the left, agent on the right.
//!
//! The relay feeds [`Recorder::push`] with each side's G.711 payloads and RTP timestamps as they arrive.
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
    /// ([`crate::net::rtp_io::DriverEvent::Media`]). The payload is decoded with the law its static payload
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

    /// Writes what is buffered and finalises the WAV header; returns the output.
    pub fn finish(mut self) -> Result<W, WavError> {
        let end = self.written + self.tracks.iter().map(|t| t.buf.len()).max().unwrap_or(0) as i64;
        self.write_until(end)?;
        self.writer.finish()
    }
}
