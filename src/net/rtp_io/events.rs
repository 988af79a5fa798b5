//! The relay thread's events to the engine: bounded queues the relay thread never blocks on.
//!
//! # Two queues
//! - **State events** (latched, unlatched, inactive, RTCP BYE) go through a bounded channel of
//!   [`STATE_CAPACITY`]. They must not be lost, so when the channel is full (the engine task stalls) they wait
//!   in the driver's backlog, in order, and go out at the start of the driver's next round (every round runs at
//!   most 50 ms apart). A BYE or inactivity event equal to one already waiting is not queued twice (a peer
//!   repeating RTCP BYE): they carry nothing but the leg. So the backlog holds at most two of those per leg,
//!   plus latching events, which are few: latching again needs a control call (`set_remote`), and so a running
//!   engine.
//! - **Telephone events** (one per RFC 4733 packet received) go through a second bounded channel of
//!   [`DTMF_CAPACITY`]. The engine decodes a key press from its first packet and its first end packet (see
//!   [`DtmfReceiver`](crate::media::dtmf::DtmfReceiver)), so per leg only a packet with a new timestamp, or the
//!   first end packet of the current timestamp, is passed on; the other ~10–20 packets of a press (duration
//!   updates, retransmitted ends) are coalesced away. What is left and does not fit (the engine stalled, or a
//!   peer floods new timestamps) is dropped, never waited for. A dropped packet does not count as passed on, so
//!   a retransmitted end packet still gets its chance. The cost of coalescing: a press whose end packets are all
//!   lost is reported with its first packet's duration.
//!
//! [`DriverEvents::recv`] reads the state queue first, so a telephone event may be read before a state event
//! that the relay raised earlier (the engine does not depend on their relative order).
//!
//! Counters: [`EventCounters`] (also in [`DriverStats`](super::DriverStats)).

use std::collections::{HashMap, VecDeque};

use tokio::sync::mpsc::{self, error::TrySendError};

use super::DriverEvent;
use crate::media::relay::{Event, LegId};

/// Capacity of the state-event channel (latched, unlatched, inactive, BYE); more waits in the driver's backlog.
pub const STATE_CAPACITY: usize = 1024;
/// Capacity of the telephone-event channel; telephone events that do not fit are dropped and counted.
pub const DTMF_CAPACITY: usize = 256;

/// What happened to the events the relay raised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounters {
    /// Telephone-event packets not passed on: another packet of the same press (same leg and timestamp) was.
    pub dtmf_coalesced: u64,
    /// Telephone-event packets dropped because their channel was full.
    pub dtmf_dropped: u64,
    /// State events that found their channel full and waited in the backlog (none is dropped).
    pub state_deferred: u64,
}

/// The relay thread's end: never blocks.
#[derive(Debug)]
pub(crate) struct EventSender {
    state: mpsc::Sender<DriverEvent>,
    dtmf: mpsc::Sender<DriverEvent>,
    /// State events waiting for room, oldest first.
    backlog: VecDeque<DriverEvent>,
    /// Per leg: the timestamp of the last telephone event passed on, and whether an end packet of it was.
    last_te: HashMap<LegId, (u32, bool)>,
    counters: EventCounters,
}

/// The engine's end of the relay's events.
#[derive(Debug)]
pub struct DriverEvents {
    state: mpsc::Receiver<DriverEvent>,
    dtmf: mpsc::Receiver<DriverEvent>,
    state_open: bool,
    dtmf_open: bool,
}

/// The two ends, with the default capacities.
pub(crate) fn channel() -> (EventSender, DriverEvents) {
    with_capacity(STATE_CAPACITY, DTMF_CAPACITY)
}

fn with_capacity(state: usize, dtmf: usize) -> (EventSender, DriverEvents) {
    let (state_tx, state_rx) = mpsc::channel(state.max(1));
    let (dtmf_tx, dtmf_rx) = mpsc::channel(dtmf.max(1));
    (
        EventSender {
            state: state_tx,
            dtmf: dtmf_tx,
            backlog: VecDeque::new(),
            last_te: HashMap::new(),
            counters: EventCounters::default(),
        },
        DriverEvents {
            state: state_rx,
            dtmf: dtmf_rx,
            state_open: true,
            dtmf_open: true,
        },
    )
}

impl EventSender {
    /// Passes one relay event on (see the module docs for what is coalesced, deferred or dropped).
    pub(crate) fn send(&mut self, e: Event) {
        if let Event::TelephoneEvent {
            leg,
            timestamp,
            payload,
        } = e
        {
            self.telephone_event(leg, timestamp, payload);
            return;
        }
        let e = DriverEvent::Relay(e);
        if self.backlog.is_empty() {
            match self.state.try_send(e) {
                Ok(()) | Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(e)) => self.defer(e),
            }
        } else {
            // Keep the order: behind what already waits.
            self.defer(e);
        }
    }

    #[cold]
    fn defer(&mut self, e: DriverEvent) {
        self.counters.state_deferred += 1;
        // BYE and inactivity carry only the leg: one waiting copy says it all. Latching events keep their
        // order (latched, unlatched, latched again to the same address are three events).
        let idempotent = matches!(
            e,
            DriverEvent::Relay(Event::Bye { .. } | Event::Inactive { .. })
        );
        if !(idempotent && self.backlog.contains(&e)) {
            self.backlog.push_back(e);
        }
    }

    fn telephone_event(&mut self, leg: LegId, timestamp: u32, payload: [u8; 4]) {
        let end = payload[1] & 0x80 != 0;
        let passed = self.last_te.get(&leg).copied();
        let wanted = match passed {
            Some((ts, ended)) if ts == timestamp => end && !ended,
            _ => true,
        };
        if !wanted {
            self.counters.dtmf_coalesced += 1;
            return;
        }
        let e = DriverEvent::Relay(Event::TelephoneEvent {
            leg,
            timestamp,
            payload,
        });
        match self.dtmf.try_send(e) {
            Ok(()) => {
                self.last_te.insert(leg, (timestamp, end));
            }
            Err(TrySendError::Full(_)) => self.counters.dtmf_dropped += 1,
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Sends what waits in the backlog, as far as there is room (call it every round).
    pub(crate) fn flush(&mut self) {
        while let Some(e) = self.backlog.pop_front() {
            match self.state.try_send(e) {
                Ok(()) => {}
                Err(TrySendError::Full(e)) => {
                    self.backlog.push_front(e);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    /// Forgets a removed leg's telephone-event state.
    pub(crate) fn forget(&mut self, leg: LegId) {
        self.last_te.remove(&leg);
    }

    /// The counters so far.
    pub(crate) fn counters(&self) -> EventCounters {
        self.counters
    }

    /// State events waiting for room.
    #[cfg(test)]
    fn backlog_len(&self) -> usize {
        self.backlog.len()
    }
}

impl DriverEvents {
    /// The next event, state events first; `None` once the driver stopped and everything was read.
    /// Cancel-safe (an event is taken only when this returns it), so it can sit in `tokio::select!`.
    pub async fn recv(&mut self) -> Option<DriverEvent> {
        loop {
            tokio::select! {
                biased;
                e = self.state.recv(), if self.state_open => match e {
                    Some(e) => return Some(e),
                    None => self.state_open = false,
                },
                e = self.dtmf.recv(), if self.dtmf_open => match e {
                    Some(e) => return Some(e),
                    None => self.dtmf_open = false,
                },
                else => return None,
            }
        }
    }

    /// [`Self::recv`] for synchronous code: blocks the calling thread. Panics when called from async code
    /// (like tokio's own `blocking_recv`).
    pub fn blocking_recv(&mut self) -> Option<DriverEvent> {
        let rt = tokio::runtime::Builder::new_current_thread().build().ok()?;
        rt.block_on(self.recv())
    }

    /// The next event already queued, state events first, without waiting.
    pub fn try_recv(&mut self) -> Option<DriverEvent> {
        self.state.try_recv().or_else(|_| self.dtmf.try_recv()).ok()
    }

    /// Events queued now (both channels).
    pub fn len(&self) -> usize {
        self.state.len() + self.dtmf.len()
    }

    /// Whether no event is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::{Digit, DtmfReceiver};
    use crate::media::relay::{LegConfig, Relay, RelayConfig};
    use std::time::Instant;

    fn legs(n: usize) -> Vec<LegId> {
        let now = Instant::now();
        let mut relay = Relay::new(RelayConfig::default(), now);
        (0..n)
            .map(|_| relay.add_leg(now, LegConfig::g711(None)).unwrap())
            .collect()
    }

    /// RFC 4733 payload: event, E bit, volume 10, duration.
    fn te(event: u8, end: bool, duration: u16) -> [u8; 4] {
        let d = duration.to_be_bytes();
        [event, if end { 0x80 | 10 } else { 10 }, d[0], d[1]]
    }

    /// Reads everything queued, feeding telephone events to a decoder per leg; returns (digits per leg in
    /// order, state events in order).
    fn read_all(rx: &mut DriverEvents, leg: LegId) -> (Vec<Digit>, Vec<Event>) {
        let mut dec = DtmfReceiver::new(8000);
        let (mut digits, mut states) = (Vec::new(), Vec::new());
        while let Some(DriverEvent::Relay(e)) = rx.try_recv() {
            match e {
                Event::TelephoneEvent {
                    leg: l,
                    timestamp,
                    payload,
                } if l == leg => {
                    dec.handle_packet(timestamp, &payload).unwrap();
                    while let Some(ev) = dec.poll_event() {
                        digits.push(ev.digit);
                    }
                }
                other => states.push(other),
            }
        }
        (digits, states)
    }

    /// One key press as a phone sends it: `n` packets of growing duration, then three end packets.
    fn press(tx: &mut EventSender, leg: LegId, ts: u32, event: u8, n: u16) {
        for i in 1..=n {
            tx.send(Event::TelephoneEvent {
                leg,
                timestamp: ts,
                payload: te(event, false, 160u16.saturating_mul(i)),
            });
        }
        for _ in 0..3 {
            tx.send(Event::TelephoneEvent {
                leg,
                timestamp: ts,
                payload: te(event, true, 160u16.saturating_mul(n.saturating_add(1))),
            });
        }
    }

    #[test]
    fn a_flood_of_one_press_queues_its_start_and_end_only() {
        let leg = legs(1)[0];
        let (mut tx, mut rx) = with_capacity(8, 8);
        // 10,000 packets of one press (key 5) while nobody reads.
        press(&mut tx, leg, 1000, 5, 9_997);
        assert_eq!(rx.len(), 2, "start and first end");
        let c = tx.counters();
        assert_eq!((c.dtmf_coalesced, c.dtmf_dropped), (10_000 - 2, 0));
        let (digits, states) = read_all(&mut rx, leg);
        assert_eq!(digits, vec![Digit::D5], "reported once");
        assert!(states.is_empty());
    }

    #[test]
    fn a_flood_of_new_presses_is_bounded_and_digits_flow_once_the_reader_resumes() {
        let ls = legs(2);
        let (leg, other) = (ls[0], ls[1]);
        let (mut tx, mut rx) = with_capacity(4, 16);
        // 2,000 presses of 15 packets (30,000 packets), interleaved with state events, nobody reading.
        let mut ts = 0u32;
        for k in 0..2_000u32 {
            press(&mut tx, leg, ts, (k % 10) as u8, 12);
            ts = ts.wrapping_add(2_000);
            tx.send(Event::Inactive { leg: other });
            tx.send(Event::Bye { leg: other });
            if k == 7 {
                tx.send(Event::Latched {
                    leg,
                    addr: "127.0.0.1:4000".parse().unwrap(),
                });
            }
            tx.flush(); // the driver's next round: still no room
        }
        // Bounded: each channel holds its capacity, the backlog one copy of each distinct waiting event.
        assert_eq!(rx.len(), 4 + 16);
        assert_eq!(
            tx.backlog_len(),
            3,
            "one Inactive, one Bye (repeats coalesced), the Latched"
        );
        let c = tx.counters();
        assert_eq!(c.dtmf_coalesced + c.dtmf_dropped + 16, 30_000);
        assert!(c.dtmf_dropped > 0 && c.state_deferred > 0, "{c:?}");
        // The first presses that fit were passed on whole: 8 presses (start + end each) fill 16 slots.
        let (digits, states) = read_all(&mut rx, leg);
        assert_eq!(digits.len(), 8);
        assert_eq!(digits[0], Digit::D0);
        assert_eq!(states.len(), 4, "the first four state events");
        // The reader resumed: the driver's next round sends the backlog, and a new press is reported.
        tx.flush();
        press(&mut tx, leg, ts, 9, 12);
        let (digits, states) = read_all(&mut rx, leg);
        assert_eq!(digits, vec![Digit::D9]);
        assert_eq!(
            states,
            vec![
                Event::Inactive { leg: other },
                Event::Bye { leg: other },
                Event::Latched {
                    leg,
                    addr: "127.0.0.1:4000".parse().unwrap()
                }
            ],
            "no state event lost: what waited comes out, in order"
        );
    }

    #[test]
    fn a_dropped_end_packet_is_retried_with_the_next_one() {
        let leg = legs(1)[0];
        let (mut tx, mut rx) = with_capacity(1, 1);
        let ev = |end| Event::TelephoneEvent {
            leg,
            timestamp: 42,
            payload: te(1, end, 800),
        };
        tx.send(ev(false));
        tx.send(ev(true)); // channel full: dropped, not marked as passed on
        assert_eq!(tx.counters().dtmf_dropped, 1);
        assert!(rx.try_recv().is_some());
        tx.send(ev(true)); // the retransmitted end goes through
        tx.send(ev(true)); // and the third is coalesced
        let (digits, _) = read_all(&mut rx, leg);
        assert_eq!(digits, vec![Digit::D1]);
        assert_eq!(tx.counters().dtmf_coalesced, 1);
    }

    #[tokio::test]
    async fn recv_reads_state_events_first_and_ends_when_the_sender_is_gone() {
        let leg = legs(1)[0];
        let (mut tx, mut rx) = with_capacity(4, 4);
        tx.send(Event::TelephoneEvent {
            leg,
            timestamp: 1,
            payload: te(3, false, 160),
        });
        tx.send(Event::Bye { leg });
        assert_eq!(
            rx.recv().await,
            Some(DriverEvent::Relay(Event::Bye { leg }))
        );
        assert!(matches!(
            rx.recv().await,
            Some(DriverEvent::Relay(Event::TelephoneEvent { .. }))
        ));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }
}
