//! RFC 3261 §17 timers (with RFC 6026's L and M) as an enum plus a table of deadlines, and the one place that
//! computes retransmission intervals.
//!
//! | timer | owner | value | meaning |
//! |---|---|---|---|
//! | A | INVITE client | T1, doubling without cap | INVITE retransmission (unreliable only) |
//! | B | INVITE client | 64·T1 | transaction timeout |
//! | D | INVITE client | 32 s unreliable, 0 reliable | wait for response retransmissions in Completed |
//! | E | non-INVITE client | T1 doubling to T2; T2 in Proceeding | request retransmission (unreliable only) |
//! | F | non-INVITE client | 64·T1 | transaction timeout |
//! | G | INVITE server | T1 doubling to T2 | non-2xx final response retransmission (unreliable only) |
//! | H | INVITE server | 64·T1 | wait for ACK |
//! | I | INVITE server | T4 unreliable, 0 reliable | absorb ACK retransmissions in Confirmed |
//! | J | non-INVITE server | 64·T1 unreliable, 0 reliable | absorb request retransmissions in Completed |
//! | K | non-INVITE client | T4 unreliable, 0 reliable | absorb response retransmissions in Completed |
//! | L | INVITE server | 64·T1 | Accepted: absorb INVITE retransmissions after a 2xx (RFC 6026 §8.7) |
//! | M | INVITE client | 64·T1 | Accepted: pass 2xx retransmissions and forked 2xx to the TU (RFC 6026 §8.4) |
//!
//! Timer C is a proxy timer and is not used by a UA.

use std::time::{Duration, Instant};

/// Protocol timer base values, per endpoint (RFC 3261 §17.1.1.1 and table 4). Not globals: each endpoint (and each
/// test) carries its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate, default 500 ms.
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses, default 4 s.
    pub t2: Duration,
    /// Maximum duration a message remains in the network, default 5 s.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// Sets T1.
    pub fn t1(&mut self, v: Duration) -> &mut Self {
        self.t1 = v;
        self
    }
    /// Sets T2.
    pub fn t2(&mut self, v: Duration) -> &mut Self {
        self.t2 = v;
        self
    }
    /// Sets T4.
    pub fn t4(&mut self, v: Duration) -> &mut Self {
        self.t4 = v;
        self
    }

    /// 64·T1: Timers B, F, H, L, M, J (unreliable).
    pub fn timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// The interval before retransmission number `sent` (1 = the first retransmission after the original send):
    /// T1·2^(sent-1), capped at T2 when `cap_at_t2` (Timers E and G and the UAS 2xx retransmission of §13.3.1.4),
    /// uncapped for Timer A. This is the only place the doubling is computed.
    pub fn retransmit_interval(&self, sent: u32, cap_at_t2: bool) -> Duration {
        let shift = sent.saturating_sub(1).min(20);
        let d = self.t1.saturating_mul(1u32 << shift);
        if cap_at_t2 {
            d.min(self.t2)
        } else {
            d
        }
    }

    /// Timer D: 32 s for unreliable transports (RFC 3261 table 4: "> 32 s"), zero for reliable.
    pub fn timer_d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            Duration::from_secs(32)
        }
    }

    /// Timers I and K: T4 for unreliable transports, zero for reliable.
    pub fn timer_i_k(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t4
        }
    }

    /// Timer J: 64·T1 for unreliable transports, zero for reliable.
    pub fn timer_j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.timeout()
        }
    }
}

/// A transaction timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// INVITE client retransmission.
    A = 0,
    /// INVITE client timeout.
    B = 1,
    /// INVITE client Completed linger.
    D = 2,
    /// non-INVITE client retransmission.
    E = 3,
    /// non-INVITE client timeout.
    F = 4,
    /// INVITE server response retransmission.
    G = 5,
    /// INVITE server wait for ACK.
    H = 6,
    /// INVITE server Confirmed linger.
    I = 7,
    /// non-INVITE server Completed linger.
    J = 8,
    /// non-INVITE client Completed linger.
    K = 9,
    /// INVITE server Accepted linger (RFC 6026).
    L = 10,
    /// INVITE client Accepted linger (RFC 6026).
    M = 11,
}

const ALL: [Timer; 12] = [
    Timer::A,
    Timer::B,
    Timer::D,
    Timer::E,
    Timer::F,
    Timer::G,
    Timer::H,
    Timer::I,
    Timer::J,
    Timer::K,
    Timer::L,
    Timer::M,
];

/// Deadlines of the running timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimerTable {
    data: [Option<Instant>; 12],
}

impl TimerTable {
    /// Starts (or restarts) `timer` to fire at `at`.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.data[timer as usize] = Some(at);
    }

    /// The deadline of `timer`, if running.
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.data[timer as usize]
    }

    /// Stops `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.data[timer as usize] = None;
    }

    /// Stops every timer.
    pub fn stop_all(&mut self) {
        self.data = [None; 12];
    }

    /// The earliest deadline.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.data.iter().flatten().min().copied()
    }

    /// Removes and returns a timer whose deadline is at or before `now`, earliest first.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let t = ALL
            .iter()
            .copied()
            .filter(|t| self.data[*t as usize].is_some_and(|d| d <= now))
            .min_by_key(|t| self.data[*t as usize])?;
        self.data[t as usize] = None;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_invite_intervals_double_to_t2() {
        let c = TimerConfig::default();
        let got: Vec<u64> = (1..=7)
            .map(|n| c.retransmit_interval(n, true).as_millis() as u64)
            .collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 4000, 4000, 4000]);
    }

    #[test]
    fn invite_intervals_double_without_cap() {
        let c = TimerConfig::default();
        let got: Vec<u64> = (1..=6)
            .map(|n| c.retransmit_interval(n, false).as_millis() as u64)
            .collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 16000]);
        // Huge counts neither overflow nor panic.
        assert!(c.retransmit_interval(u32::MAX, false) >= Duration::from_secs(16));
    }

    #[test]
    fn reliable_transports_zero_lingers() {
        let c = TimerConfig::default();
        assert_eq!(c.timer_d(true), Duration::ZERO);
        assert_eq!(c.timer_i_k(true), Duration::ZERO);
        assert_eq!(c.timer_j(true), Duration::ZERO);
        assert_eq!(c.timer_d(false), Duration::from_secs(32));
        assert_eq!(c.timer_i_k(false), Duration::from_secs(5));
        assert_eq!(c.timer_j(false), Duration::from_secs(32));
    }

    #[test]
    fn table_pops_earliest_first() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        t.set(Timer::B, t0 + Duration::from_secs(32));
        t.set(Timer::A, t0 + Duration::from_millis(500));
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(t.pop_expired(t0), None);
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(40)), Some(Timer::A));
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(40)), Some(Timer::B));
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(40)), None);
        assert_eq!(t.next_timeout(), None);
    }
}
