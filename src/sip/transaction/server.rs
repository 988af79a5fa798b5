//! Server transactions: RFC 3261 §17.2 with RFC 6026 §8.5–8.7 (INVITE Accepted state, Timer L).
//!
//! The 2xx to an INVITE is sent once through the transaction; its retransmission until the ACK arrives is the UAS
//! core's job (§13.3.1.4), done by the endpoint's dialog layer, because the ACK for a 2xx is its own transaction.

use super::{Timer, TimerConfig, TimerTable, Transmit, Transport, TxEvent, TxKind};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

/// Server transaction state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// non-INVITE received, no response sent yet.
    Trying,
    /// A provisional response was sent (INVITE starts here).
    Proceeding,
    /// A final (non-2xx for INVITE) response was sent.
    Completed,
    /// INVITE: the ACK for the non-2xx arrived; absorbing ACK retransmissions (Timer I).
    Confirmed,
    /// INVITE: a 2xx was sent; INVITE retransmissions are absorbed until Timer L (RFC 6026).
    Accepted,
    /// Done.
    Terminated,
}

/// What to do with a request that matched this transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum ServerDisposition {
    /// A retransmission or an ACK for our non-2xx: handled here (the last response may have been re-sent).
    Absorb,
    /// Hand the request to the TU (an ACK that matched an Accepted INVITE transaction, RFC 2543 style).
    PassUp,
}

/// An INVITE or non-INVITE server transaction.
#[derive(Debug)]
pub struct ServerTransaction {
    kind: TxKind,
    state: ServerState,
    config: TimerConfig,
    timers: TimerTable,
    destination: SocketAddr,
    transport: Transport,
    last_response: Option<Bytes>,
    /// Transmissions of the final non-2xx response (Timer G).
    sent: u32,
    outbox: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
}

impl ServerTransaction {
    /// A transaction for a new request whose responses go to `destination` (already the RFC 3581 address).
    pub fn new(
        kind: TxKind,
        config: TimerConfig,
        destination: SocketAddr,
        transport: Transport,
    ) -> Self {
        Self {
            kind,
            state: match kind {
                TxKind::Invite => ServerState::Proceeding,
                TxKind::NonInvite => ServerState::Trying,
            },
            config,
            timers: TimerTable::default(),
            destination,
            transport,
            last_response: None,
            sent: 0,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// INVITE or non-INVITE.
    pub fn kind(&self) -> TxKind {
        self.kind
    }

    /// Whether the transaction is over and can be dropped.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// Whether a final response was sent.
    pub fn has_final(&self) -> bool {
        !matches!(self.state, ServerState::Trying | ServerState::Proceeding)
    }

    /// Where responses go.
    pub fn destination(&self) -> (SocketAddr, Transport) {
        (self.destination, self.transport)
    }

    fn send_last(&mut self) {
        if let Some(r) = &self.last_response {
            self.outbox.push_back(Transmit {
                destination: self.destination,
                transport: self.transport,
                payload: r.clone(),
            });
        }
    }

    /// A retransmission of the request (or, for INVITE, an ACK) matched this transaction.
    pub fn handle_request(&mut self, now: Instant, is_ack: bool) -> ServerDisposition {
        if is_ack {
            return match self.state {
                ServerState::Completed if self.kind == TxKind::Invite => {
                    self.state = ServerState::Confirmed;
                    self.timers.stop(Timer::G);
                    self.timers.stop(Timer::H);
                    self.timers.set(
                        Timer::I,
                        now + self.config.timer_i_k(self.transport.is_reliable()),
                    );
                    ServerDisposition::Absorb
                }
                ServerState::Accepted => ServerDisposition::PassUp,
                _ => ServerDisposition::Absorb,
            };
        }
        // §17.2.1 / §17.2.2: a retransmitted request gets the last response again. In Accepted the 2xx is the
        // UAS core's to retransmit (RFC 6026 §8.7: absorb).
        if matches!(self.state, ServerState::Proceeding | ServerState::Completed) {
            self.send_last();
        }
        ServerDisposition::Absorb
    }

    /// Sends a response (`status`, encoded as `response`) from the TU.
    pub fn send_response(&mut self, now: Instant, status: u16, response: Bytes) {
        if self.has_final() {
            // RFC 6026 §8.6: in Accepted, further 2xx from the TU (its retransmissions) pass through.
            if self.state == ServerState::Accepted && (200..300).contains(&status) {
                self.outbox.push_back(Transmit {
                    destination: self.destination,
                    transport: self.transport,
                    payload: response,
                });
            }
            return;
        }
        self.last_response = Some(response);
        self.send_last();
        let reliable = self.transport.is_reliable();
        if status < 200 {
            self.state = ServerState::Proceeding;
            return;
        }
        match self.kind {
            TxKind::Invite if status < 300 => {
                self.state = ServerState::Accepted;
                self.timers.set(Timer::L, now + self.config.timeout());
            }
            TxKind::Invite => {
                self.state = ServerState::Completed;
                self.sent = 1;
                if !reliable {
                    self.timers
                        .set(Timer::G, now + self.config.retransmit_interval(1, true));
                }
                self.timers.set(Timer::H, now + self.config.timeout());
            }
            TxKind::NonInvite => {
                self.state = ServerState::Completed;
                self.timers
                    .set(Timer::J, now + self.config.timer_j(reliable));
            }
        }
    }

    /// The transport failed to deliver a response (§17.2.4): the transaction ends.
    pub fn handle_transport_error(&mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.state != ServerState::Terminated {
            self.state = ServerState::Terminated;
            self.timers.stop_all();
            self.events.push_back(TxEvent::Terminated);
        }
    }

    /// Call when `now` has reached [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.timers.pop_expired(now) {
            match t {
                Timer::G if self.state == ServerState::Completed => {
                    self.send_last();
                    self.sent = self.sent.saturating_add(1);
                    self.timers.set(
                        Timer::G,
                        now + self.config.retransmit_interval(self.sent, true),
                    );
                }
                Timer::H => {
                    self.events.push_back(TxEvent::Timeout);
                    self.terminate();
                }
                Timer::I | Timer::J | Timer::L => self.terminate(),
                _ => {}
            }
        }
    }

    /// The next message to send. Changes after `handle_request`, `send_response` and `handle_timeout`.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// The next event (ACK timeout, terminated).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tx(kind: TxKind, transport: Transport) -> ServerTransaction {
        ServerTransaction::new(
            kind,
            TimerConfig::default(),
            "192.0.2.1:5060".parse().unwrap(),
            transport,
        )
    }

    #[test]
    fn invite_non_2xx_timer_g_then_h() {
        let t0 = Instant::now();
        let mut s = tx(TxKind::Invite, Transport::Udp);
        s.send_response(t0, 486, "486".into());
        let mut sends = Vec::new();
        let mut now = t0;
        loop {
            while s.poll_transmit().is_some() {
                sends.push((now - t0).as_millis() as u64);
            }
            let Some(t) = s.poll_timeout() else { break };
            now = t;
            s.handle_timeout(now);
        }
        let gaps: Vec<u64> = sends.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(&gaps[..5], &[500, 1000, 2000, 4000, 4000]);
        assert_eq!((now - t0).as_secs(), 32);
        assert_eq!(s.poll_event(), Some(TxEvent::Timeout));
    }

    #[test]
    fn ack_confirms_then_timer_i() {
        let t0 = Instant::now();
        let mut s = tx(TxKind::Invite, Transport::Udp);
        s.send_response(t0, 486, "486".into());
        let _ = s.poll_transmit();
        assert_eq!(s.handle_request(t0, true), ServerDisposition::Absorb);
        assert_eq!(s.state(), ServerState::Confirmed);
        assert_eq!(s.poll_timeout().unwrap() - t0, Duration::from_secs(5));
        s.handle_timeout(t0 + Duration::from_secs(5));
        assert!(s.is_terminated());
    }

    #[test]
    fn retransmitted_request_gets_last_response() {
        let t0 = Instant::now();
        let mut s = tx(TxKind::NonInvite, Transport::Udp);
        assert_eq!(s.handle_request(t0, false), ServerDisposition::Absorb);
        assert!(s.poll_transmit().is_none(), "nothing to resend in Trying");
        s.send_response(t0, 200, "200".into());
        assert_eq!(s.poll_transmit().unwrap().payload, "200");
        let _ = s.handle_request(t0, false);
        assert_eq!(s.poll_transmit().unwrap().payload, "200");
        assert_eq!(s.poll_timeout().unwrap() - t0, Duration::from_secs(32));
    }

    #[test]
    fn tcp_timer_j_is_zero() {
        let t0 = Instant::now();
        let mut s = tx(TxKind::NonInvite, Transport::Tcp);
        s.send_response(t0, 200, "200".into());
        assert_eq!(s.poll_timeout(), Some(t0));
    }

    #[test]
    fn invite_2xx_accepted_absorbs_retransmissions_until_l() {
        let t0 = Instant::now();
        let mut s = tx(TxKind::Invite, Transport::Udp);
        s.send_response(t0, 100, "100".into());
        s.send_response(t0, 200, "200".into());
        assert_eq!(s.state(), ServerState::Accepted);
        let _ = (s.poll_transmit(), s.poll_transmit());
        assert_eq!(s.handle_request(t0, false), ServerDisposition::Absorb);
        assert!(s.poll_transmit().is_none());
        s.send_response(t0, 200, "200".into());
        assert!(
            s.poll_transmit().is_some(),
            "TU 2xx retransmission passes through"
        );
        assert_eq!(s.poll_timeout().unwrap() - t0, Duration::from_secs(32));
        s.handle_timeout(t0 + Duration::from_secs(32));
        assert!(s.is_terminated());
    }
}
