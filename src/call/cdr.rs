//! Call detail records: one [`Cdr`] per leg, one [`BridgeCdr`] per bridge, delivered as typed values when the
//! leg or the bridge ends (and serialisable, e.g. as JSON lines).
//!
//! The sans-IO leg fills in [`Instant`]s; [`CdrTimes`] turns them into milliseconds from the leg's start so a
//! record needs no clock to build. The wall-clock start (`start_unix_ms`) is given by whoever created the leg (the
//! engine reads the system clock; tests pass a constant).

use serde::Serialize;
use std::time::Instant;

/// Why a leg ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndCause {
    /// Answered, then a BYE (from either side: see [`HangupBy`]).
    Normal,
    /// The callee rejected the call with this final status (486 busy, 603 decline, 404, ...).
    Rejected(u16),
    /// Nobody answered before the ring timeout: we sent CANCEL.
    RingTimeout,
    /// We cancelled before an answer (the application hung up or dropped the leg).
    Cancelled,
    /// No final response at all (Timer B) or an in-dialog transaction timed out.
    Timeout,
    /// The session timer (RFC 4028) expired without a refresh: we sent BYE.
    SessionExpired,
    /// The peer answered 481: the dialog was gone on its side.
    DialogGone,
    /// The engine shut down and hung the call up.
    Shutdown,
    /// The call could not be placed or answered (bad SDP, no RTP ports, invalid URI).
    Error,
}

/// Who ended a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupBy {
    /// Our side: the application, a bridge policy, or a timer of ours.
    Local,
    /// The far end: BYE, CANCEL-less rejection, 481.
    Remote,
}

/// RTP counters of one leg, as the relay saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MediaCounters {
    /// RTP packets received from the leg's peer.
    pub packets_in: u64,
    /// Bytes of those packets.
    pub bytes_in: u64,
    /// RTP packets sent to the leg's peer (relayed or generated).
    pub packets_out: u64,
    /// Bytes of those packets.
    pub bytes_out: u64,
}

impl MediaCounters {
    /// What was counted since `start` (an earlier reading of the same leg's counters): the field-wise
    /// difference, 0 where `start` is not behind.
    pub fn since(&self, start: &MediaCounters) -> MediaCounters {
        MediaCounters {
            packets_in: self.packets_in.saturating_sub(start.packets_in),
            bytes_in: self.bytes_in.saturating_sub(start.bytes_in),
            packets_out: self.packets_out.saturating_sub(start.packets_out),
            bytes_out: self.bytes_out.saturating_sub(start.bytes_out),
        }
    }
}

/// The record of one leg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cdr {
    /// The leg's id ([`crate::call::LegId`]).
    pub leg: u64,
    /// The Request-URI we called.
    pub target: String,
    /// The Call-ID of the (last) INVITE, from when it was sent (answered or not).
    pub call_id: Option<String>,
    /// When the leg was created, in milliseconds since the Unix epoch.
    pub start_unix_ms: u64,
    /// First 180/183 after this many ms.
    pub ring_ms: Option<u64>,
    /// Answered after this many ms.
    pub answer_ms: Option<u64>,
    /// Ended after this many ms.
    pub end_ms: u64,
    /// Talk time: end minus answer (0 when never answered).
    pub talk_ms: u64,
    /// Why it ended.
    pub end_cause: EndCause,
    /// Who ended it.
    pub hangup_by: HangupBy,
    /// The final SIP status of the INVITE (200, 486, 487, ...), if one came.
    pub sip_status: Option<u16>,
    /// RTP counters.
    pub media: MediaCounters,
}

/// The record of one bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BridgeCdr {
    /// The bridge id.
    pub bridge: u64,
    /// The legs bridged, in order: the first leg, then every leg the other side was (re)bridged to.
    pub legs: Vec<u64>,
    /// When the bridge started, in milliseconds since the Unix epoch.
    pub start_unix_ms: u64,
    /// Length of the bridge in ms.
    pub duration_ms: u64,
    /// Number of transfers (re-bridges of one side to another leg).
    pub transfers: u32,
    /// Which leg's end ended the bridge, if a leg's end did (else the application ended it).
    pub ended_by_leg: Option<u64>,
    /// Counters of side A's leg over the bridge's life: from when the bridge first connected it to the
    /// bridge's end (what the leg did before, e.g. while hearing a greeting, is in its own [`Cdr`]).
    pub a_media: MediaCounters,
    /// Counters of side B's (last) leg from when the bridge connected it (after a transfer: the new leg's
    /// connection) to the bridge's end.
    pub b_media: MediaCounters,
    /// The bridge's recording, if [`crate::call::BridgeOptions::record`] asked for one.
    pub recording: Option<RecordingCdr>,
}

/// What became of a bridge's recording (a two-channel 8 kHz WAV: side A left, side B right).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingCdr {
    /// The WAV file.
    pub path: std::path::PathBuf,
    /// Samples per channel written (8000 per second of recording).
    pub frames: u64,
    /// RTP packets the relay handed to the writer.
    pub packets: u64,
    /// Packets dropped on the way (the writer fell behind, or an oversized packet).
    pub dropped: u64,
    /// Why the recording failed or stopped early, if it did (the file may be incomplete).
    pub error: Option<String>,
}

/// The instants a leg passes, turned into a [`Cdr`] at the end.
#[derive(Debug, Clone)]
pub struct CdrTimes {
    /// Creation.
    pub start: Instant,
    /// First ringing/early response.
    pub ring: Option<Instant>,
    /// 2xx.
    pub answer: Option<Instant>,
}

impl CdrTimes {
    /// Starts the clock at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            ring: None,
            answer: None,
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// Builds the record of a leg that ended at `end`.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &self,
        leg: u64,
        target: String,
        call_id: Option<String>,
        start_unix_ms: u64,
        end: Instant,
        end_cause: EndCause,
        hangup_by: HangupBy,
        sip_status: Option<u16>,
    ) -> Cdr {
        let end_ms = self.ms(end);
        let answer_ms = self.answer.map(|a| self.ms(a));
        Cdr {
            leg,
            target,
            call_id,
            start_unix_ms,
            ring_ms: self.ring.map(|r| self.ms(r)),
            answer_ms,
            end_ms,
            talk_ms: answer_ms.map_or(0, |a| end_ms.saturating_sub(a)),
            end_cause,
            hangup_by,
            sip_status,
            media: MediaCounters::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counters_since_a_snapshot() {
        let start = MediaCounters {
            packets_in: 50,
            bytes_in: 8600,
            packets_out: 0,
            bytes_out: 0,
        };
        let end = MediaCounters {
            packets_in: 150,
            bytes_in: 25800,
            packets_out: 98,
            bytes_out: 16856,
        };
        let d = end.since(&start);
        assert_eq!((d.packets_in, d.bytes_in), (100, 17200));
        assert_eq!((d.packets_out, d.bytes_out), (98, 16856));
        // A reading that is not behind: zero, not a wrap.
        assert_eq!(start.since(&end), MediaCounters::default());
    }

    #[test]
    fn durations_from_instants() {
        let t0 = Instant::now();
        let mut t = CdrTimes::new(t0);
        t.ring = Some(t0 + Duration::from_millis(100));
        t.answer = Some(t0 + Duration::from_millis(2100));
        let c = t.finish(
            7,
            "sip:a@b".into(),
            None,
            0,
            t0 + Duration::from_millis(12_100),
            EndCause::Normal,
            HangupBy::Remote,
            Some(200),
        );
        assert_eq!(
            (c.ring_ms, c.answer_ms, c.end_ms, c.talk_ms),
            (Some(100), Some(2100), 12_100, 10_000)
        );
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""end_cause":{"kind":"normal"}"#), "{json}");
        assert!(json.contains(r#""hangup_by":"remote""#), "{json}");
    }
}
