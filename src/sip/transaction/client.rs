//! Client transactions: RFC 3261 §17.1 with RFC 6026 §8.4 (INVITE Accepted state, Timer M).

use super::{Timer, TimerConfig, TimerTable, Transmit, Transport, TxEvent, TxKind};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

/// Client transaction state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, nothing heard yet.
    Calling,
    /// non-INVITE sent, nothing heard yet.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A non-2xx final (INVITE) or any final (non-INVITE) arrived; absorbing retransmissions.
    Completed,
    /// INVITE got a 2xx: further 2xx (retransmissions, other forks) go to the TU until Timer M (RFC 6026).
    Accepted,
    /// Done.
    Terminated,
}

/// What to do with a response that matched this transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum ClientDisposition {
    /// Hand the response to the TU.
    PassUp,
    /// Hand the response to the TU, and build the ACK for this non-2xx final response and give it to
    /// [`ClientTransaction::send_ack`] (INVITE only, first final response).
    PassUpAndAck,
    /// A retransmission: drop it (the transaction may have re-sent its ACK).
    Absorb,
}

/// An INVITE or non-INVITE client transaction.
#[derive(Debug)]
pub struct ClientTransaction {
    kind: TxKind,
    state: ClientState,
    config: TimerConfig,
    timers: TimerTable,
    destination: SocketAddr,
    transport: Transport,
    request: Bytes,
    ack: Option<Bytes>,
    /// Transmissions so far of the request (1 after the original send).
    sent: u32,
    outbox: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
}

impl ClientTransaction {
    /// Starts a transaction and queues the first transmission of `request` (already encoded, with its Via branch).
    pub fn new(
        now: Instant,
        kind: TxKind,
        config: TimerConfig,
        destination: SocketAddr,
        transport: Transport,
        request: Bytes,
    ) -> Self {
        let mut tx = Self {
            kind,
            state: match kind {
                TxKind::Invite => ClientState::Calling,
                TxKind::NonInvite => ClientState::Trying,
            },
            config,
            timers: TimerTable::default(),
            destination,
            transport,
            request,
            ack: None,
            sent: 0,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        };
        tx.transmit_request(now);
        match kind {
            TxKind::Invite => tx.timers.set(Timer::B, now + config.timeout()),
            TxKind::NonInvite => tx.timers.set(Timer::F, now + config.timeout()),
        }
        tx
    }

    fn transmit_request(&mut self, now: Instant) {
        self.outbox.push_back(Transmit {
            destination: self.destination,
            transport: self.transport,
            payload: self.request.clone(),
        });
        self.sent = self.sent.saturating_add(1);
        if self.transport.is_reliable() {
            return;
        }
        match (self.kind, self.state) {
            (TxKind::Invite, ClientState::Calling) => self.timers.set(
                Timer::A,
                now + self.config.retransmit_interval(self.sent, false),
            ),
            // §17.1.2.2: in Proceeding, retransmit every T2.
            (TxKind::NonInvite, ClientState::Proceeding) => {
                self.timers.set(Timer::E, now + self.config.t2)
            }
            (TxKind::NonInvite, ClientState::Trying) => self.timers.set(
                Timer::E,
                now + self.config.retransmit_interval(self.sent, true),
            ),
            _ => {}
        }
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// INVITE or non-INVITE.
    pub fn kind(&self) -> TxKind {
        self.kind
    }

    /// Whether the transaction is over and can be dropped.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// Whether a final response has been received (the request can no longer be cancelled).
    pub fn has_final(&self) -> bool {
        matches!(
            self.state,
            ClientState::Completed | ClientState::Accepted | ClientState::Terminated
        )
    }

    /// Whether a provisional response has been received and no final one yet (§9.1: CANCEL only then).
    pub fn is_proceeding(&self) -> bool {
        self.state == ClientState::Proceeding
    }

    /// Where the request goes.
    pub fn destination(&self) -> (SocketAddr, Transport) {
        (self.destination, self.transport)
    }

    /// A response with `status` matched this transaction.
    pub fn handle_response(&mut self, now: Instant, status: u16) -> ClientDisposition {
        let provisional = (100..200).contains(&status);
        let success = (200..300).contains(&status);
        match (self.kind, self.state) {
            (_, ClientState::Terminated) => ClientDisposition::Absorb,
            (TxKind::Invite, ClientState::Calling | ClientState::Proceeding) => {
                self.timers.stop(Timer::A);
                if provisional {
                    self.state = ClientState::Proceeding;
                    self.timers.stop(Timer::B);
                    ClientDisposition::PassUp
                } else if success {
                    // RFC 6026 §8.4: Accepted, Timer M; the TU ACKs 2xx itself.
                    self.state = ClientState::Accepted;
                    self.timers.stop(Timer::B);
                    self.timers.set(Timer::M, now + self.config.timeout());
                    ClientDisposition::PassUp
                } else {
                    self.state = ClientState::Completed;
                    self.timers.stop(Timer::B);
                    self.timers.set(
                        Timer::D,
                        now + self.config.timer_d(self.transport.is_reliable()),
                    );
                    ClientDisposition::PassUpAndAck
                }
            }
            (TxKind::Invite, ClientState::Completed) => {
                if !provisional && !success {
                    if let Some(ack) = &self.ack {
                        self.outbox.push_back(Transmit {
                            destination: self.destination,
                            transport: self.transport,
                            payload: ack.clone(),
                        });
                    }
                }
                ClientDisposition::Absorb
            }
            (TxKind::Invite, ClientState::Accepted) => {
                if success {
                    ClientDisposition::PassUp
                } else {
                    ClientDisposition::Absorb
                }
            }
            (TxKind::NonInvite, ClientState::Trying | ClientState::Proceeding) => {
                if provisional {
                    if self.state == ClientState::Trying {
                        self.state = ClientState::Proceeding;
                    }
                    ClientDisposition::PassUp
                } else {
                    self.state = ClientState::Completed;
                    self.timers.stop(Timer::E);
                    self.timers.stop(Timer::F);
                    self.timers.set(
                        Timer::K,
                        now + self.config.timer_i_k(self.transport.is_reliable()),
                    );
                    ClientDisposition::PassUp
                }
            }
            (TxKind::NonInvite, _) => ClientDisposition::Absorb,
            (TxKind::Invite, ClientState::Trying) => ClientDisposition::Absorb,
        }
    }

    /// Sends the ACK for a non-2xx final response (after [`ClientDisposition::PassUpAndAck`]) and keeps it to
    /// answer retransmissions of that response.
    pub fn send_ack(&mut self, ack: Bytes) {
        self.outbox.push_back(Transmit {
            destination: self.destination,
            transport: self.transport,
            payload: ack.clone(),
        });
        self.ack = Some(ack);
    }

    /// The transport reported an error sending the request (§17.1.1.2 / §17.1.2.2): the transaction ends as if
    /// it timed out.
    pub fn handle_transport_error(&mut self) {
        if !self.has_final() {
            self.events.push_back(TxEvent::Timeout);
        }
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.state != ClientState::Terminated {
            self.state = ClientState::Terminated;
            self.timers.stop_all();
            self.events.push_back(TxEvent::Terminated);
        }
    }

    /// Call when `now` has reached [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.timers.pop_expired(now) {
            match t {
                Timer::A if self.state == ClientState::Calling => self.transmit_request(now),
                Timer::E if matches!(self.state, ClientState::Trying | ClientState::Proceeding) => {
                    self.transmit_request(now)
                }
                Timer::B | Timer::F => {
                    self.events.push_back(TxEvent::Timeout);
                    self.terminate();
                }
                Timer::D | Timer::K | Timer::M => self.terminate(),
                _ => {}
            }
        }
    }

    /// The next message to send. Changes after `new`, `handle_response`, `send_ack` and `handle_timeout`.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// The next event (timeout, terminated).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr() -> SocketAddr {
        "192.0.2.1:5060".parse().unwrap()
    }

    /// Runs the transaction alone until it terminates and returns the offsets (ms) of every transmission.
    fn run_silent(kind: TxKind, transport: Transport) -> (Vec<u64>, Vec<TxEvent>, u64) {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(
            t0,
            kind,
            TimerConfig::default(),
            addr(),
            transport,
            Bytes::from("REQ"),
        );
        let mut sends = Vec::new();
        let mut events = Vec::new();
        let mut now = t0;
        for _ in 0..100 {
            while tx.poll_transmit().is_some() {
                sends.push((now - t0).as_millis() as u64);
            }
            while let Some(e) = tx.poll_event() {
                events.push(e);
            }
            match tx.poll_timeout() {
                Some(t) => {
                    now = t;
                    tx.handle_timeout(now);
                }
                None => break,
            }
        }
        (sends, events, (now - t0).as_millis() as u64)
    }

    #[test]
    fn timer_e_schedule_and_timer_f() {
        let (sends, events, end) = run_silent(TxKind::NonInvite, Transport::Udp);
        let gaps: Vec<u64> = sends.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(&gaps[..6], &[500, 1000, 2000, 4000, 4000, 4000]);
        assert!(gaps[6..].iter().all(|g| *g == 4000));
        assert_eq!(end, 32_000);
        assert_eq!(events, [TxEvent::Timeout, TxEvent::Terminated]);
    }

    #[test]
    fn timer_a_schedule_and_timer_b() {
        let (sends, events, end) = run_silent(TxKind::Invite, Transport::Udp);
        assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(end, 32_000);
        assert_eq!(events, [TxEvent::Timeout, TxEvent::Terminated]);
    }

    #[test]
    fn tcp_never_retransmits() {
        let (sends, _, end) = run_silent(TxKind::Invite, Transport::Tcp);
        assert_eq!(sends, [0]);
        assert_eq!(end, 32_000);
    }

    #[test]
    fn non_invite_proceeding_retransmits_every_t2() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(
            t0,
            TxKind::NonInvite,
            TimerConfig::default(),
            addr(),
            Transport::Udp,
            "R".into(),
        );
        let _ = tx.poll_transmit();
        assert_eq!(
            tx.handle_response(t0 + Duration::from_millis(100), 100),
            ClientDisposition::PassUp
        );
        // Timer E keeps its current deadline (500 ms), then goes to T2.
        let t = tx.poll_timeout().unwrap();
        assert_eq!(t - t0, Duration::from_millis(500));
        tx.handle_timeout(t);
        assert!(tx.poll_transmit().is_some());
        assert_eq!(tx.poll_timeout().unwrap() - t, Duration::from_secs(4));
    }

    #[test]
    fn invite_non_2xx_acks_and_reacks_retransmissions() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(
            t0,
            TxKind::Invite,
            TimerConfig::default(),
            addr(),
            Transport::Udp,
            "INV".into(),
        );
        let _ = tx.poll_transmit();
        assert_eq!(tx.handle_response(t0, 180), ClientDisposition::PassUp);
        assert_eq!(tx.handle_response(t0, 486), ClientDisposition::PassUpAndAck);
        tx.send_ack("ACK".into());
        assert_eq!(tx.poll_transmit().unwrap().payload, "ACK");
        assert_eq!(tx.handle_response(t0, 486), ClientDisposition::Absorb);
        assert_eq!(tx.poll_transmit().unwrap().payload, "ACK");
        assert_eq!(tx.poll_timeout().unwrap() - t0, Duration::from_secs(32));
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_event(), Some(TxEvent::Terminated));
    }

    #[test]
    fn invite_2xx_enters_accepted_and_passes_more_2xx() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(
            t0,
            TxKind::Invite,
            TimerConfig::default(),
            addr(),
            Transport::Udp,
            "INV".into(),
        );
        let _ = tx.poll_transmit();
        assert_eq!(tx.handle_response(t0, 200), ClientDisposition::PassUp);
        assert_eq!(tx.state(), ClientState::Accepted);
        assert_eq!(tx.handle_response(t0, 200), ClientDisposition::PassUp);
        assert_eq!(tx.handle_response(t0, 180), ClientDisposition::Absorb);
        assert_eq!(tx.poll_timeout().unwrap() - t0, Duration::from_secs(32));
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert!(tx.is_terminated());
        assert_eq!(
            tx.poll_event(),
            Some(TxEvent::Terminated),
            "Timer M ends without a timeout"
        );
    }
}
