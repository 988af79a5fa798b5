//! Keeping a registration with a trunk alive (RFC 3261 §10), sans-IO.
//!
//! [`RegistrationAgent`] drives the endpoint's REGISTER primitives ([`Endpoint::register`],
//! [`Endpoint::refresh_register`]): it refreshes the binding before it expires, retries after failures with an
//! exponential back-off (never sooner than a `Retry-After`), follows a 423 Interval Too Brief to the registrar's `Min-Expires`, and removes the
//! binding (`Expires: 0`) on shutdown. 401/407 challenges are answered inside the endpoint from the request's
//! credentials; a challenge it cannot answer arrives here as a failure.
//!
//! Each REGISTER it sends may be given a response deadline ([`RegistrationAgent::set_response_deadline`]): a
//! registrar that sends nothing back at all within it counts as a failure with no status, like Timer F but sooner,
//! so the owner can fail over to the registrar's next server (RFC 3263 §4.3).
//!
//! Like the endpoint, it never reads the clock: the owner feeds it the endpoint's events
//! ([`RegistrationAgent::handle_event`]) and calls [`RegistrationAgent::handle_timeout`] at
//! [`RegistrationAgent::poll_timeout`].
//!
//! # When it refreshes
//!
//! After a 2xx granting `g` seconds, the next REGISTER goes out after `min(g/2, g − margin)` (`g/2` alone when
//! `g ≤ margin`), never sooner than `floor` ([`RegistrationPolicy`]). With the defaults (margin 32 s, floor 1 s):
//! 3600 s → 1800 s, 60 s → 28 s, 40 s → 8 s, 4 s → 2 s.

use crate::sip::endpoint::{Endpoint, EndpointError, Event, RegisterRequest, RegistrationHandle};
use crate::sip::message::{HeaderName, StatusCode};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most this many 423 answers in a row are followed before counting a failure.
const MAX_423_IN_A_ROW: u32 = 3;

/// Timing of refreshes and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationPolicy {
    /// Refresh at least this long before the binding expires (when the binding is longer than this).
    pub margin: Duration,
    /// Never refresh sooner than this after a success.
    pub floor: Duration,
    /// The first retry after a failure waits this long; each further failure doubles it.
    pub retry_min: Duration,
    /// The longest wait between retries.
    pub retry_max: Duration,
}

impl Default for RegistrationPolicy {
    /// Margin 32 s, floor 1 s, retries from 2 s doubling up to 300 s.
    fn default() -> Self {
        Self {
            margin: Duration::from_secs(32),
            floor: Duration::from_secs(1),
            retry_min: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
        }
    }
}

impl RegistrationPolicy {
    /// How long after a 2xx granting `granted` seconds to send the refresh (see the module docs).
    pub fn refresh_delay(&self, granted: u32) -> Duration {
        let g = Duration::from_secs(u64::from(granted));
        let half = g / 2;
        let delay = match g.checked_sub(self.margin) {
            Some(m) if !m.is_zero() => half.min(m),
            _ => half,
        };
        delay.max(self.floor)
    }

    /// The wait before the retry that follows the `failures`-th failure in a row (1-based).
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.retry_min
            .saturating_mul(1u32 << shift)
            .min(self.retry_max)
    }
}

/// Where the registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationState {
    /// Not started.
    Idle,
    /// A REGISTER is in flight (first, refresh or retry).
    Registering,
    /// Bound until `until`; the refresh goes out at `refresh_at`.
    Registered {
        /// When the binding expires at the registrar.
        until: Instant,
        /// When the refresh will be sent.
        refresh_at: Instant,
    },
    /// The last attempt failed; the next one goes out at `at`.
    Retrying {
        /// When the next REGISTER goes out.
        at: Instant,
    },
    /// The removing REGISTER (`Expires: 0`) is in flight.
    Unregistering,
    /// Removed (or given up at shutdown). Nothing more happens.
    Unregistered,
}

/// What the agent tells its owner. Drain with [`RegistrationAgent::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationEvent {
    /// The registrar accepted the binding for `expires` seconds.
    Registered {
        /// The lifetime granted.
        expires: u32,
    },
    /// An attempt failed: the registrar's final status (`None` for no answer, Timer F), and when we retry.
    Failed {
        /// The status, if a final response came.
        status: Option<StatusCode>,
        /// The wait before the retry.
        retry_in: Duration,
    },
    /// The binding was removed at shutdown (`removed` false when the registrar did not confirm it).
    Unregistered {
        /// Whether the registrar answered the removal with a 2xx.
        removed: bool,
    },
}

/// Keeps one registration alive. See the module docs.
#[derive(Debug)]
pub struct RegistrationAgent {
    request: RegisterRequest,
    policy: RegistrationPolicy,
    handle: Option<RegistrationHandle>,
    state: RegistrationState,
    /// The lifetime we ask for (raised by a 423).
    expires: u32,
    failures: u32,
    in_a_row_423: u32,
    /// Shutdown was asked while a REGISTER was in flight: remove the binding when it completes.
    stop_after: bool,
    /// Each REGISTER sent is given up when nothing at all came back this long after it.
    response_deadline: Option<Duration>,
    events: VecDeque<RegistrationEvent>,
}

impl RegistrationAgent {
    /// An agent for `request` (its `expires` is the lifetime asked for).
    pub fn new(request: RegisterRequest, policy: RegistrationPolicy) -> Self {
        Self {
            expires: request.expires,
            request,
            policy,
            handle: None,
            state: RegistrationState::Idle,
            failures: 0,
            in_a_row_423: 0,
            stop_after: false,
            response_deadline: None,
            events: VecDeque::new(),
        }
    }

    /// Gives each REGISTER sent from now on `d` to draw a response, any response (a 100 Trying is enough): if
    /// none came by then, the attempt fails with no status ([`RegistrationEvent::Failed`] `{ status: None, .. }`)
    /// without waiting for Timer F ([`Endpoint::set_register_response_deadline`]). `None` (the default) waits for
    /// Timer F. Meant for a registrar that is one of several servers: the owner then tries the next one.
    pub fn set_response_deadline(&mut self, d: Option<Duration>) {
        self.response_deadline = d;
    }

    /// Sends the first REGISTER.
    pub fn start(&mut self, now: Instant, ep: &mut Endpoint) -> Result<(), EndpointError> {
        if self.handle.is_some() {
            return Ok(());
        }
        let mut req = self.request.clone();
        req.expires = self.expires;
        let h = ep.register(now, req)?;
        self.handle = Some(h);
        self.state = RegistrationState::Registering;
        self.arm_deadline(now, ep, h);
        Ok(())
    }

    /// Puts the response deadline, if any, on the REGISTER just sent.
    fn arm_deadline(&self, now: Instant, ep: &mut Endpoint, h: RegistrationHandle) {
        if let Some(d) = self.response_deadline {
            // Only fails when nothing is in flight, which cannot be right after a send.
            let _ = ep.set_register_response_deadline(h, now + d);
        }
    }

    /// The endpoint's handle for this registration, once started.
    pub fn handle(&self) -> Option<RegistrationHandle> {
        self.handle
    }

    /// Where the registration stands.
    pub fn state(&self) -> RegistrationState {
        self.state
    }

    /// The lifetime currently asked for (the configured one, or a 423's `Min-Expires`).
    pub fn requested_expires(&self) -> u32 {
        self.expires
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RegistrationEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            RegistrationState::Registered { refresh_at, .. } => Some(refresh_at),
            RegistrationState::Retrying { at } => Some(at),
            _ => None,
        }
    }

    /// Sends the refresh or retry that is due.
    pub fn handle_timeout(&mut self, now: Instant, ep: &mut Endpoint) {
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.send(now, ep, self.expires);
        }
    }

    fn send(&mut self, now: Instant, ep: &mut Endpoint, expires: u32) {
        let Some(h) = self.handle else { return };
        match ep.refresh_register(now, h, expires) {
            Ok(()) => {
                self.arm_deadline(now, ep, h);
                self.state = if expires == 0 {
                    RegistrationState::Unregistering
                } else {
                    RegistrationState::Registering
                };
            }
            // One is in flight: its outcome decides what comes next.
            Err(EndpointError::RequestPending) => {}
            Err(_) => {
                // The endpoint forgot the registration: nothing more can be sent.
                self.state = RegistrationState::Unregistered;
                self.events
                    .push_back(RegistrationEvent::Unregistered { removed: false });
            }
        }
    }

    /// Feeds an endpoint event. Returns true when it was about this registration (and so consumed).
    pub fn handle_event(&mut self, now: Instant, ep: &mut Endpoint, ev: &Event) -> bool {
        let Some(h) = self.handle else { return false };
        let status = match ev {
            Event::Registration { reg, status, .. } if *reg == h => Some(*status),
            Event::RegistrationTimeout { reg } if *reg == h => None,
            _ => return false,
        };
        let granted = match ev {
            Event::Registration { expires, .. } => *expires,
            _ => None,
        };
        if self.state == RegistrationState::Unregistering {
            self.state = RegistrationState::Unregistered;
            ep.drop_registration(h);
            let removed = status.is_some_and(|s| s.is_success());
            self.events
                .push_back(RegistrationEvent::Unregistered { removed });
            return true;
        }
        if self.stop_after {
            self.send(now, ep, 0);
            return true;
        }
        match status {
            Some(s) if s.is_success() => {
                let expires = granted.unwrap_or(self.expires);
                if expires == 0 {
                    // The registrar removed our binding while we asked to keep it.
                    self.fail(now, status);
                    return true;
                }
                self.failures = 0;
                self.in_a_row_423 = 0;
                let until = now + Duration::from_secs(u64::from(expires));
                let refresh_at = now + self.policy.refresh_delay(expires);
                self.state = RegistrationState::Registered { until, refresh_at };
                self.events
                    .push_back(RegistrationEvent::Registered { expires });
            }
            Some(s) if s.as_u16() == 423 => {
                let min = ep
                    .registration_headers(h)
                    .and_then(|hd| hd.get(&HeaderName::MinExpires))
                    .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u32>().ok());
                self.in_a_row_423 += 1;
                match min {
                    Some(m) if m > self.expires && self.in_a_row_423 <= MAX_423_IN_A_ROW => {
                        self.expires = m;
                        self.send(now, ep, m);
                    }
                    _ => self.fail(now, status),
                }
            }
            Some(_) => {
                // A registrar's Retry-After (503, 480...) is a floor for the wait (RFC 3261 §20.33).
                let after = ep
                    .registration_headers(h)
                    .and_then(|hd| hd.get(&HeaderName::RetryAfter))
                    .and_then(|v| retry_after(v));
                self.fail_after(now, status, after);
            }
            None => self.fail(now, status),
        }
        true
    }

    fn fail(&mut self, now: Instant, status: Option<StatusCode>) {
        self.fail_after(now, status, None);
    }

    fn fail_after(&mut self, now: Instant, status: Option<StatusCode>, at_least: Option<Duration>) {
        self.failures = self.failures.saturating_add(1);
        let retry_in = self
            .policy
            .retry_delay(self.failures)
            .max(at_least.unwrap_or_default());
        self.state = RegistrationState::Retrying { at: now + retry_in };
        self.events
            .push_back(RegistrationEvent::Failed { status, retry_in });
    }

    /// Removes the binding: sends `Expires: 0` now, or when the REGISTER in flight completes. Ends in
    /// [`RegistrationEvent::Unregistered`]. Before any REGISTER was sent it ends at once.
    pub fn shutdown(&mut self, now: Instant, ep: &mut Endpoint) {
        match self.state {
            RegistrationState::Idle => {
                self.state = RegistrationState::Unregistered;
                self.events
                    .push_back(RegistrationEvent::Unregistered { removed: false });
            }
            RegistrationState::Registering => self.stop_after = true,
            RegistrationState::Registered { .. } | RegistrationState::Retrying { .. } => {
                self.send(now, ep, 0)
            }
            RegistrationState::Unregistering | RegistrationState::Unregistered => {}
        }
    }
}

/// The delta-seconds of a Retry-After value (`120 (busy);duration=60`), capped at a day.
fn retry_after(v: &[u8]) -> Option<Duration> {
    let end = v
        .iter()
        .position(|b| !b.is_ascii_digit() && *b != b' ')
        .unwrap_or(v.len());
    let secs: u64 = std::str::from_utf8(v.get(..end)?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(86_400)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_delays() {
        let p = RegistrationPolicy::default();
        let s = Duration::from_secs;
        assert_eq!(p.refresh_delay(3600), s(1800));
        assert_eq!(p.refresh_delay(60), s(28));
        assert_eq!(p.refresh_delay(40), s(8));
        assert_eq!(p.refresh_delay(33), s(1), "33 − 32 = 1");
        assert_eq!(p.refresh_delay(32), s(16));
        assert_eq!(p.refresh_delay(4), s(2));
        assert_eq!(p.refresh_delay(1), s(1), "floor");
        assert_eq!(p.refresh_delay(0), s(1), "floor");
        assert_eq!(p.refresh_delay(u32::MAX), s(u64::from(u32::MAX)) / 2);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(retry_after(b"120"), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after(b"18000;duration=3600"),
            Some(Duration::from_secs(18000))
        );
        assert_eq!(retry_after(b"5 (busy)"), Some(Duration::from_secs(5)));
        assert_eq!(
            retry_after(b"99999999999"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(retry_after(b"soon"), None);
    }

    #[test]
    fn retry_backoff_doubles_to_a_cap() {
        let p = RegistrationPolicy::default();
        let got: Vec<u64> = (1..=10).map(|n| p.retry_delay(n).as_secs()).collect();
        assert_eq!(got, vec![2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(p.retry_delay(u32::MAX).as_secs(), 300);
    }
}
