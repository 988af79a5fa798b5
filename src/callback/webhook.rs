//! Webhook delivery helpers: the signed body of an event and its retry schedule (the HTTP client is the driver's).
//!
//! The signature is `sha256=<hex HMAC-SHA256(secret, "<unix seconds>.<body>")>`, sent with the timestamp, so a
//! receiver can reject replays (the Stripe/GitHub scheme).

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::event::RequestEvent;
use super::request::RequestId;
use super::Time;

/// The JSON body of one event delivery.
#[derive(Debug, Clone, Serialize)]
struct Body<'a> {
    request: RequestId,
    #[serde(flatten)]
    event: &'a RequestEvent,
}

/// A delivery ready to POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDelivery {
    /// JSON body.
    pub body: String,
    /// Unix seconds used in the signature (send as `X-Rappel-Timestamp`).
    pub timestamp: i64,
    /// `sha256=<hex>` (send as `X-Rappel-Signature`).
    pub signature: String,
}

/// Signs `body` for `timestamp` with `secret`.
pub fn sign(secret: &[u8], timestamp: i64, body: &str) -> String {
    // HMAC accepts keys of any length, so this never fails.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + tag.len() * 2);
    out.push_str("sha256=");
    for b in tag {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// Serialises and signs one event of request `id` at `now`.
pub fn delivery(
    secret: &[u8],
    id: RequestId,
    event: &RequestEvent,
    now: Time,
) -> Result<SignedDelivery, serde_json::Error> {
    let body = serde_json::to_string(&Body { request: id, event })?;
    let timestamp = now.timestamp();
    let signature = sign(secret, timestamp, &body);
    Ok(SignedDelivery {
        body,
        timestamp,
        signature,
    })
}

/// Delay before retry number `retry` (1-based) of a failed delivery: 1 s doubling, capped at 10 min; `None` after
/// `max_retries`.
pub fn retry_delay(retry: u32, max_retries: u32) -> Option<Duration> {
    (retry >= 1 && retry <= max_retries)
        .then(|| Duration::from_secs(1u64.checked_shl(retry - 1).unwrap_or(u64::MAX).min(600)))
}
