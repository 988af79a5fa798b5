//! DTMF as RFC 4733 telephone-events: payload encode/decode, a per-stream receiver that reports each key
//! press once, and a sans-IO sender that produces the packets to send digits on a leg.
//!
//! Payload type mapping between legs is the relay's job; this module only deals with the 4-byte payload
//! and the event's RTP timestamp (all packets of one event share it).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A DTMF key (RFC 4733 events 0–15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Digit {
    /// 0
    D0,
    /// 1
    D1,
    /// 2
    D2,
    /// 3
    D3,
    /// 4
    D4,
    /// 5
    D5,
    /// 6
    D6,
    /// 7
    D7,
    /// 8
    D8,
    /// 9
    D9,
    /// *
    Star,
    /// #
    Hash,
    /// A
    A,
    /// B
    B,
    /// C
    C,
    /// D
    D,
}

const DIGITS: [Digit; 16] = [
    Digit::D0,
    Digit::D1,
    Digit::D2,
    Digit::D3,
    Digit::D4,
    Digit::D5,
    Digit::D6,
    Digit::D7,
    Digit::D8,
    Digit::D9,
    Digit::Star,
    Digit::Hash,
    Digit::A,
    Digit::B,
    Digit::C,
    Digit::D,
];
const CHARS: &[u8; 16] = b"0123456789*#ABCD";

impl Digit {
    /// The digit for an RFC 4733 event code (0–15), if it is one.
    pub fn from_event(code: u8) -> Option<Digit> {
        DIGITS.get(code as usize).copied()
    }

    /// The RFC 4733 event code (0–15).
    pub fn event(self) -> u8 {
        DIGITS.iter().position(|&d| d == self).unwrap_or(0) as u8
    }

    /// The digit for a character (`0-9`, `*`, `#`, `A-D`, case-insensitive).
    pub fn from_char(c: char) -> Option<Digit> {
        let c = c.to_ascii_uppercase();
        CHARS
            .iter()
            .position(|&x| x as char == c)
            .and_then(|i| Digit::from_event(i as u8))
    }

    /// The character for this digit.
    pub fn to_char(self) -> char {
        CHARS[self.event() as usize & 15] as char
    }
}

/// Why a telephone-event payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtmfError {
    /// Fewer than 4 bytes.
    #[error("telephone-event payload too short: {0} bytes")]
    TooShort(usize),
}

/// One decoded telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// The event code (0–15 are DTMF digits, others are tones such as flash = 16).
    pub event: u8,
    /// End bit.
    pub end: bool,
    /// Volume: 0 to 63, as -dBm0.
    pub volume: u8,
    /// Duration so far, in RTP timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the first 4 bytes of a payload (trailing bytes are ignored).
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, DtmfError> {
        let [event, flags, d0, d1, ..] = *payload else {
            return Err(DtmfError::TooShort(payload.len()));
        };
        Ok(TelephoneEvent {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    /// Encodes to the 4-byte payload (reserved bit 0, volume masked to 6 bits).
    pub fn encode(&self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }

    /// The DTMF digit, if the event is one.
    pub fn digit(&self) -> Option<Digit> {
        Digit::from_event(self.event)
    }
}

/// A completed key press, reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    /// The key.
    pub digit: Digit,
    /// How long it was pressed (from the event's final duration field).
    pub duration: Duration,
    /// Volume (-dBm0).
    pub volume: u8,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    timestamp: u32,
    event: TelephoneEvent,
}

/// Per-stream receiver: feed every telephone-event packet, get one [`DtmfEvent`] per key press.
///
/// Packets of one event share an RTP timestamp. The event is reported when its first end packet arrives;
/// the retransmitted end packets (and late start packets) of that timestamp are ignored. If an event's end
/// packets are all lost, it is reported when a packet of the next event arrives, or on [`DtmfReceiver::flush`].
/// Non-DTMF events (flash, tones) are ignored.
#[derive(Debug, Clone)]
pub struct DtmfReceiver {
    clock_rate: u32,
    pending: Option<Pending>,
    last_ended: Option<u32>,
    ready: VecDeque<DtmfEvent>,
}

impl DtmfReceiver {
    /// A receiver for a stream with the given telephone-event clock rate (8000 usually).
    pub fn new(clock_rate: u32) -> DtmfReceiver {
        DtmfReceiver {
            clock_rate: clock_rate.max(1),
            pending: None,
            last_ended: None,
            ready: VecDeque::new(),
        }
    }

    fn report(&self, ev: TelephoneEvent) -> Option<DtmfEvent> {
        let digit = ev.digit()?;
        let duration =
            Duration::from_micros(ev.duration as u64 * 1_000_000 / self.clock_rate as u64);
        Some(DtmfEvent {
            digit,
            duration,
            volume: ev.volume,
        })
    }

    /// Handles one packet's RTP timestamp and payload; completed presses come out of
    /// [`DtmfReceiver::poll_event`].
    pub fn handle_packet(&mut self, rtp_timestamp: u32, payload: &[u8]) -> Result<(), DtmfError> {
        let ev = TelephoneEvent::parse(payload)?;
        if self.last_ended == Some(rtp_timestamp) {
            return Ok(()); // retransmitted end, or a late start packet of an event already reported
        }
        // A packet of a different event while one is still open: the open one lost its end packets.
        if let Some(p) = self.pending {
            if p.timestamp != rtp_timestamp {
                self.pending = None;
                self.close(p.timestamp, p.event);
            }
        }
        if ev.end {
            self.pending = None;
            self.close(rtp_timestamp, ev);
            return Ok(());
        }
        let longer = match self.pending {
            Some(p) => ev.duration >= p.event.duration,
            None => true,
        };
        if longer {
            self.pending = Some(Pending {
                timestamp: rtp_timestamp,
                event: ev,
            });
        }
        Ok(())
    }

    fn close(&mut self, timestamp: u32, ev: TelephoneEvent) {
        self.last_ended = Some(timestamp);
        if let Some(e) = self.report(ev) {
            self.ready.push_back(e);
        }
    }

    /// The next completed key press.
    pub fn poll_event(&mut self) -> Option<DtmfEvent> {
        self.ready.pop_front()
    }

    /// Ends the open event, if any (stream stopped or went quiet without end packets); it then comes out of
    /// [`DtmfReceiver::poll_event`].
    pub fn flush(&mut self) {
        if let Some(p) = self.pending.take() {
            self.close(p.timestamp, p.event);
        }
    }
}

/// One telephone-event packet to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    /// The 4-byte RFC 4733 payload.
    pub payload: [u8; 4],
    /// Set the RTP marker bit (first packet of an event).
    pub marker: bool,
    /// RTP timestamp of the event, as samples since the sender started (add the stream's base).
    pub timestamp_offset: u32,
    /// The last packet of the event (its third end packet): the stream may carry audio again after it.
    pub last: bool,
}

/// Timing of generated DTMF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfSendOptions {
    /// How long each key is held.
    pub tone: Duration,
    /// Silence between keys.
    pub gap: Duration,
    /// Interval between packets (RFC 4733 suggests 50 ms).
    pub interval: Duration,
    /// Volume (-dBm0, 0–63).
    pub volume: u8,
    /// Clock rate of the telephone-event payload type.
    pub clock_rate: u32,
}

impl Default for DtmfSendOptions {
    fn default() -> Self {
        DtmfSendOptions {
            tone: Duration::from_millis(100),
            gap: Duration::from_millis(100),
            interval: Duration::from_millis(50),
            volume: 10,
            clock_rate: 8000,
        }
    }
}

/// Sans-IO DTMF sender: for each digit, start packets every `interval` with increasing duration, then three
/// end packets (one per interval) carrying the final duration, all with the event's timestamp; the next
/// digit starts `gap` after the last end packet.
#[derive(Debug, Clone)]
pub struct DtmfSender {
    start: Instant,
    opts: DtmfSendOptions,
    digits: VecDeque<Digit>,
    /// Samples since `start` at which the current digit began.
    event_start: u64,
    /// Packets already sent for the current digit.
    sent: u32,
    queue: VecDeque<DtmfPacket>,
}

impl DtmfSender {
    /// A sender for `digits`, whose first packet is due at `start`.
    pub fn new(start: Instant, digits: &[Digit], opts: DtmfSendOptions) -> DtmfSender {
        let mut opts = opts;
        opts.interval = opts.interval.max(Duration::from_millis(1));
        opts.clock_rate = opts.clock_rate.max(1);
        DtmfSender {
            start,
            opts,
            digits: digits.iter().copied().collect(),
            event_start: 0,
            sent: 0,
            queue: VecDeque::new(),
        }
    }

    fn samples(&self, d: Duration) -> u64 {
        (d.as_micros() as u64).saturating_mul(self.opts.clock_rate as u64) / 1_000_000
    }

    fn tone_samples(&self) -> u64 {
        self.samples(self.opts.tone).clamp(1, u16::MAX as u64)
    }

    /// Number of start packets per digit (one per interval while the tone is on).
    fn start_packets(&self) -> u32 {
        let step = self.samples(self.opts.interval).max(1);
        self.tone_samples().div_ceil(step) as u32
    }

    /// When the next packet is due, or `None` once all digits are sent.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.digits.front()?;
        let at = self.event_start + self.samples(self.opts.interval) * self.sent as u64;
        Some(self.start + Duration::from_micros(at * 1_000_000 / self.opts.clock_rate as u64))
    }

    /// Queues every packet due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(due) = self.poll_timeout() {
            if due > now {
                return;
            }
            let Some(&digit) = self.digits.front() else {
                return;
            };
            let step = self.samples(self.opts.interval);
            let starts = self.start_packets();
            let end = self.sent >= starts;
            let duration = if end {
                self.tone_samples()
            } else {
                ((self.sent as u64 + 1) * step).min(self.tone_samples())
            };
            let ev = TelephoneEvent {
                event: digit.event(),
                end,
                volume: self.opts.volume,
                duration: duration as u16,
            };
            self.queue.push_back(DtmfPacket {
                payload: ev.encode(),
                marker: self.sent == 0,
                timestamp_offset: self.event_start as u32,
                last: self.sent + 1 >= starts + 3,
            });
            self.sent += 1;
            if self.sent >= starts + 3 {
                self.digits.pop_front();
                self.sent = 0;
                self.event_start += step * (starts as u64 + 2) + self.samples(self.opts.gap);
            }
        }
    }

    /// The next packet to send.
    pub fn poll_packet(&mut self) -> Option<DtmfPacket> {
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_map_both_ways() {
        for code in 0..16u8 {
            let d = Digit::from_event(code).unwrap();
            assert_eq!(d.event(), code);
            assert_eq!(Digit::from_char(d.to_char()), Some(d));
        }
        assert_eq!(Digit::from_event(16), None);
        assert_eq!(Digit::from_char('#'), Some(Digit::Hash));
        assert_eq!(Digit::from_char('b'), Some(Digit::B));
        assert_eq!(Digit::from_char('x'), None);
    }

    #[test]
    fn payload_round_trip_and_layout() {
        let ev = TelephoneEvent {
            event: 5,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(ev.encode(), [5, 0x8A, 0x03, 0x20]);
        assert_eq!(TelephoneEvent::parse(&ev.encode()).unwrap(), ev);
        assert_eq!(
            TelephoneEvent::parse(&[1, 2, 3]),
            Err(DtmfError::TooShort(3))
        );
        // Reserved bit set: ignored.
        let p = TelephoneEvent::parse(&[11, 0x40 | 7, 0, 160, 99]).unwrap();
        assert_eq!(
            (p.digit(), p.end, p.volume, p.duration),
            (Some(Digit::Hash), false, 7, 160)
        );
    }

    fn pkt(event: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .encode()
    }

    fn feed(r: &mut DtmfReceiver, ts: u32, p: [u8; 4]) -> Vec<DtmfEvent> {
        r.handle_packet(ts, &p).unwrap();
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    #[test]
    fn one_event_per_press_despite_retransmissions() {
        let mut r = DtmfReceiver::new(8000);
        assert!(feed(&mut r, 1000, pkt(1, false, 400)).is_empty());
        assert!(feed(&mut r, 1000, pkt(1, false, 800)).is_empty());
        let e = feed(&mut r, 1000, pkt(1, true, 960));
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].digit, e[0].duration, e[0].volume),
            (Digit::D1, Duration::from_millis(120), 10)
        );
        assert!(feed(&mut r, 1000, pkt(1, true, 960)).is_empty());
        assert!(feed(&mut r, 1000, pkt(1, true, 960)).is_empty());
        // Same digit pressed again: new timestamp, reported again.
        assert!(feed(&mut r, 3000, pkt(1, false, 400)).is_empty());
        assert_eq!(feed(&mut r, 3000, pkt(1, true, 800))[0].digit, Digit::D1);
        r.flush();
        assert_eq!(r.poll_event(), None);
        assert_eq!(r.handle_packet(1, &[0; 2]), Err(DtmfError::TooShort(2)));
    }

    #[test]
    fn lost_end_packets_reported_on_next_event_or_flush() {
        let mut r = DtmfReceiver::new(8000);
        feed(&mut r, 100, pkt(2, false, 400));
        feed(&mut r, 100, pkt(2, false, 800));
        let e = feed(&mut r, 5000, pkt(3, false, 400));
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].digit, e[0].duration),
            (Digit::D2, Duration::from_millis(100))
        );
        // A reordered start packet of the closed event does not reopen it.
        assert!(feed(&mut r, 100, pkt(2, false, 400)).is_empty());
        assert_eq!(feed(&mut r, 5000, pkt(3, true, 800))[0].digit, Digit::D3);
        feed(&mut r, 9000, pkt(4, false, 400));
        r.flush();
        assert_eq!(r.poll_event().unwrap().digit, Digit::D4);
        r.flush();
        assert_eq!(r.poll_event(), None);
    }

    #[test]
    fn end_only_event_after_lost_end_gives_both() {
        let mut r = DtmfReceiver::new(8000);
        feed(&mut r, 100, pkt(5, false, 400));
        // All of 5's ends and 6's starts lost: only 6's end arrives.
        let e = feed(&mut r, 4000, pkt(6, true, 800));
        assert_eq!(
            e.iter().map(|e| e.digit).collect::<Vec<_>>(),
            vec![Digit::D5, Digit::D6]
        );
    }

    #[test]
    fn non_dtmf_events_are_ignored() {
        let mut r = DtmfReceiver::new(8000);
        assert!(feed(&mut r, 100, pkt(16, true, 800)).is_empty());
    }

    #[test]
    fn sender_packet_train() {
        let t0 = Instant::now();
        let mut s = DtmfSender::new(t0, &[Digit::D7, Digit::Hash], DtmfSendOptions::default());
        let mut got = Vec::new();
        let mut times = Vec::new();
        while let Some(at) = s.poll_timeout() {
            s.handle_timeout(at);
            while let Some(p) = s.poll_packet() {
                got.push(p);
                times.push(at - t0);
            }
        }
        assert_eq!(got.len(), 10);
        let evs: Vec<_> = got
            .iter()
            .map(|p| TelephoneEvent::parse(&p.payload).unwrap())
            .collect();
        // Digit 7: starts at 0 and 50 ms with durations 400, 800; three ends with 800, same timestamp.
        assert_eq!(
            evs[0],
            TelephoneEvent {
                event: 7,
                end: false,
                volume: 10,
                duration: 400
            }
        );
        assert_eq!(evs[1].duration, 800);
        assert!(evs[2..5]
            .iter()
            .all(|e| e.end && e.duration == 800 && e.event == 7));
        assert!(got[0].marker && !got[1].marker && !got[2].marker);
        assert!(got[..5].iter().all(|p| p.timestamp_offset == 0));
        let ms = |n| Duration::from_millis(n);
        assert_eq!(&times[..5], &[ms(0), ms(50), ms(100), ms(150), ms(200)]);
        // '#': starts a gap (100 ms) after the last end packet (200 ms) → 300 ms, timestamp 2400.
        assert_eq!(evs[5].event, 11);
        assert!(got[5].marker);
        assert!(got[5..].iter().all(|p| p.timestamp_offset == 2400));
        assert_eq!(times[5], ms(300));
        // The receiver sees exactly two presses.
        let mut r = DtmfReceiver::new(8000);
        let pressed: Vec<_> = got
            .iter()
            .flat_map(|p| feed(&mut r, p.timestamp_offset, p.payload))
            .map(|e| e.digit)
            .collect();
        assert_eq!(pressed, vec![Digit::D7, Digit::Hash]);
    }
}
