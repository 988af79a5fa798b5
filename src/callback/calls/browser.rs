//! Browser legs waiting for their request's flow: how a visitor calling from the browser becomes "the visitor's
//! call" of a callback request without a second flow.
//!
//! The web layer answers the browser's offer (an answered [`Leg`], see
//! [`Engine::browser_call`](crate::net::engine::Engine::browser_call)), parks the leg here under a fresh random
//! key (`webrtc:` and 24 hex digits) and submits an ordinary request whose phone is that key. When the flow
//! "calls the visitor", the service dials the key as the target ([`is_browser_target`]) and [`EngineCalls`]
//! takes the parked leg instead of placing a SIP call: its first event is already `Answered`, and from there the
//! flow (greeting, hold music, agent, bridge, hang-up) is the phone request's.
//!
//! The key is unguessable (96 random bits) and the phone path of the web layer only accepts E.164 numbers, so a
//! visitor cannot submit someone else's key. Parked legs are capped. A leg whose request ends without dialling
//! it (cancelled, missed) is taken and dropped (hung up: peer connection closed, relay leg freed) as soon as the
//! request is final ([`CallControl::release`](super::CallControl::release)); the time to live is the backstop for
//! a leg whose request was never submitted or is queued past it.
//!
//! [`EngineCalls`]: super::EngineCalls

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::call::LegId;
use crate::net::engine::Leg;

/// The prefix of browser-leg keys.
pub const BROWSER_PREFIX: &str = "webrtc:";

/// Whether `target` (a request's phone, a dial target) names a parked browser leg.
pub fn is_browser_target(target: &str) -> bool {
    target
        .strip_prefix(BROWSER_PREFIX)
        .is_some_and(|k| k.len() == 24 && k.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The registry is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many browser calls waiting")]
pub struct BrowserLegsFull;

#[derive(Debug)]
struct Parked {
    leg: Leg,
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    parked: HashMap<String, Parked>,
    /// Every key's leg id, parked or taken (for [`BrowserLegs::leg_id`]), with when it was parked.
    ids: HashMap<String, (LegId, Instant)>,
}

/// Parked browser legs, shared by the web layer (which parks) and [`EngineCalls`](super::EngineCalls) (which
/// takes). Cheap to clone.
#[derive(Debug, Clone)]
pub struct BrowserLegs {
    inner: Arc<Mutex<Inner>>,
    cap: usize,
    ttl: Duration,
}

impl BrowserLegs {
    /// At most `cap` parked legs; a leg not taken within `ttl` is hung up at the next [`Self::park`].
    pub fn new(cap: usize, ttl: Duration) -> Self {
        BrowserLegs {
            inner: Arc::new(Mutex::new(Inner::default())),
            cap,
            ttl,
        }
    }

    /// Parks `leg` and returns its key. Legs older than the TTL are dropped first.
    pub fn park(&self, leg: Leg, now: Instant) -> Result<String, BrowserLegsFull> {
        let mut m = self.inner.lock().map_err(|_| BrowserLegsFull)?;
        let ttl = self.ttl;
        m.parked
            .retain(|_, p| now.saturating_duration_since(p.at) < ttl);
        // A call lasts less than the TTL, so an id older than twice the TTL names a leg long gone.
        m.ids
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl.saturating_mul(2));
        if m.parked.len() >= self.cap || m.ids.len() >= self.cap.saturating_mul(4) {
            return Err(BrowserLegsFull);
        }
        let key = format!("{BROWSER_PREFIX}{:024x}", rand::random::<u128>() >> 32);
        m.ids.insert(key.clone(), (leg.id(), now));
        m.parked.insert(key.clone(), Parked { leg, at: now });
        Ok(key)
    }

    /// Takes the leg parked under `key`.
    pub fn take(&self, key: &str) -> Option<Leg> {
        self.inner.lock().ok()?.parked.remove(key).map(|p| p.leg)
    }

    /// The id of the leg parked under `key`, parked or already taken by its request (to hang it up through
    /// [`Engine::hangup_leg`](crate::net::engine::Engine::hangup_leg) when the visitor hangs up in the page).
    pub fn leg_id(&self, key: &str) -> Option<LegId> {
        self.inner.lock().ok()?.ids.get(key).map(|x| x.0)
    }

    /// The most legs parked at once.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Legs parked now.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |m| m.parked.len())
    }

    /// Whether no leg is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for BrowserLegs {
    /// 1000 legs, one hour.
    fn default() -> Self {
        BrowserLegs::new(1000, Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_recognised_and_others_not() {
        assert!(is_browser_target("webrtc:0123456789abcdef01234567"));
        assert!(!is_browser_target("webrtc:0123"));
        assert!(!is_browser_target("webrtc:0123456789abcdef0123456g"));
        assert!(!is_browser_target("+33612345678"));
        assert!(!is_browser_target("sip:webrtc:0123456789abcdef01234567@x"));
    }
}
