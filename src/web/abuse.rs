//! Abuse protection for a public click-to-call form.
//!
//! Click-to-call forms are used for toll fraud (making the service call premium-rate numbers) and to call-bomb
//! victims (making it ring someone's phone again and again). The defences here:
//!
//! - [`PhonePolicy`]: numbers are parsed with the `phonenumber` crate (libphonenumber's metadata) and normalised to
//!   E.164; the country must be allowed, no denied prefix may match, and premium-rate, shared-cost and UAN numbers
//!   are refused by type. An E.164 number is `+` and digits only, so the Request-URI the engine builds from it
//!   (`sip:+336…@trunk`) can only ever point at the configured trunk.
//! - [`RateLimiter`]: token buckets per client IP (IPv6 by /64) and per number, in a bounded map.
//! - [`FormTokens`]: an optional expiring HMAC token the page fetches before submitting.
//! - [`RequestKeys`]: public request ids carry an HMAC tag, so ids cannot be enumerated to read or cancel other
//!   visitors' requests.
//! - [`Masked`]: a display wrapper that masks a phone number in logs.
//!
//! Nothing here reads the clock: callers pass `now`.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use phonenumber::{country, Mode, Type};
use sha2::Sha256;

use crate::callback::RequestId;

/// Displays a phone number with all but its first and last digits masked: `+33612345678` shows as
/// `+33 6** ** ** 78`. Use it in every log line that would print a visitor's number.
#[derive(Clone, Copy)]
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits: Vec<char> = self.0.chars().filter(char::is_ascii_digit).collect();
        let plus = self.0.trim_start().starts_with('+');
        if digits.len() < 6 {
            if plus {
                f.write_str("+")?;
            }
            for _ in 0..digits.len() {
                f.write_str("*")?;
            }
            return Ok(());
        }
        let (head, rest) = if plus {
            f.write_str("+")?;
            digits.split_at(2)
        } else {
            digits.split_at(0)
        };
        for c in head {
            write!(f, "{c}")?;
        }
        if !head.is_empty() {
            f.write_str(" ")?;
        }
        // Groups of two from the end; the first group takes an odd leftover.
        let n = rest.len();
        let first = if n % 2 == 1 { 3.min(n) } else { 2.min(n) };
        for (i, c) in rest.iter().enumerate() {
            if i > 0 && i >= first && (i - first) % 2 == 0 {
                f.write_str(" ")?;
            }
            let shown = i == 0 || i + 2 >= n;
            if shown {
                write!(f, "{c}")?;
            } else {
                f.write_str("*")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a number is refused. [`PhoneRejection::visitor_message`] is the text the widget shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PhoneRejection {
    /// Not a phone number, or not a valid one in its numbering plan.
    #[error("invalid phone number")]
    Invalid,
    /// The number's country is not among the allowed ones (`None`: a non-geographic number).
    #[error("country not allowed: {0:?}")]
    CountryNotAllowed(Option<String>),
    /// The number starts with a denied prefix.
    #[error("denied prefix {0}")]
    DeniedPrefix(String),
    /// The numbering plan marks the number premium-rate, shared-cost or UAN.
    #[error("premium-rate or shared-cost number")]
    PremiumRate,
}

impl PhoneRejection {
    /// A message a visitor can read.
    pub fn visitor_message(&self) -> &'static str {
        match self {
            PhoneRejection::Invalid => {
                "This phone number is not valid. Please check it, with the country code (for example +33 6 12 34 56 78)."
            }
            PhoneRejection::CountryNotAllowed(_) => {
                "Sorry, we can only call numbers in the countries we serve."
            }
            PhoneRejection::DeniedPrefix(_) | PhoneRejection::PremiumRate => {
                "Sorry, we cannot call premium-rate or special-rate numbers."
            }
        }
    }
}

/// Which numbers may be called.
#[derive(Debug, Clone, Default)]
pub struct PhonePolicy {
    allowed: Vec<country::Id>,
    denied_prefixes: Vec<String>,
    deny_premium_types: bool,
}

/// A country code the `phonenumber` metadata does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown country code {0:?}")]
pub struct UnknownCountry(pub String);

impl PhonePolicy {
    /// A policy: allowed countries (ISO codes; empty for any, the first is the region for numbers typed without
    /// `+`), denied E.164 prefixes (`+3389`), and whether to refuse premium-rate types.
    pub fn new(
        allowed_countries: &[String],
        denied_prefixes: &[String],
        deny_premium_types: bool,
    ) -> Result<Self, UnknownCountry> {
        let allowed = allowed_countries
            .iter()
            .map(|c| country::Id::from_str(c).map_err(|_| UnknownCountry(c.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PhonePolicy {
            allowed,
            denied_prefixes: denied_prefixes.to_vec(),
            deny_premium_types,
        })
    }

    /// Parses, normalises (E.164) and checks a number typed by a visitor.
    pub fn check(&self, raw: &str) -> Result<String, PhoneRejection> {
        // The longest E.164 number has 15 digits; allow for spaces, dots, brackets and an IDD prefix.
        if raw.len() > 40 || raw.trim().is_empty() {
            return Err(PhoneRejection::Invalid);
        }
        let region = self.allowed.first().copied();
        let number = phonenumber::parse(region, raw).map_err(|_| PhoneRejection::Invalid)?;
        if number.extension().is_some() || !number.is_valid() {
            return Err(PhoneRejection::Invalid);
        }
        let e164 = number.format().mode(Mode::E164).to_string();
        let digits = e164.strip_prefix('+').unwrap_or("");
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PhoneRejection::Invalid);
        }
        if let Some(p) = self
            .denied_prefixes
            .iter()
            .find(|p| e164.starts_with(p.as_str()))
        {
            return Err(PhoneRejection::DeniedPrefix(p.clone()));
        }
        if !self.allowed.is_empty() {
            let id = number.country().id();
            if !id.is_some_and(|id| self.allowed.contains(&id)) {
                return Err(PhoneRejection::CountryNotAllowed(
                    id.map(|i| i.as_ref().to_owned()),
                ));
            }
        }
        if self.deny_premium_types {
            let t = number.number_type(&phonenumber::metadata::DATABASE);
            if matches!(t, Type::PremiumRate | Type::SharedCost | Type::Uan) {
                return Err(PhoneRejection::PremiumRate);
            }
        }
        Ok(e164)
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per key, in memory, with a bounded number of keys.
///
/// Keys live in two generations: when the current one reaches half the cap it becomes the previous one and the old
/// previous one is dropped, so memory stays under the cap and the keys not seen for longest go first. A key dropped
/// this way starts again with a full bucket, which is the state it would have reached anyway unless it was hit
/// within the last generation.
#[derive(Debug)]
pub struct RateLimiter<K> {
    burst: f64,
    refill: Duration,
    half_cap: usize,
    current: HashMap<K, Bucket>,
    previous: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `burst` requests at once, one more every `refill`, at most `cap` keys tracked.
    pub fn new(burst: u32, refill: Duration, cap: usize) -> Self {
        RateLimiter {
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
            half_cap: (cap / 2).max(1),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now`, or returns how long until one is available.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut b = match self.current.get(key).or_else(|| self.previous.get(key)) {
            Some(b) => *b,
            None => Bucket {
                tokens: self.burst,
                at: now,
            },
        };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed / self.refill.as_secs_f64()).min(self.burst);
        b.at = now.max(b.at);
        let result = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - b.tokens) * self.refill.as_secs_f64(),
            ))
        };
        self.previous.remove(key);
        if !self.current.contains_key(key) && self.current.len() >= self.half_cap {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key.clone(), b);
        result
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rate-limit key of a client address: the address for IPv4, its /64 for IPv6 (one subscriber's prefix).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 128 {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| {
            let hi = char::from(*p.first()?).to_digit(16)?;
            let lo = char::from(*p.get(1)?).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// HMAC-SHA256 over `domain || msg` (`None` never happens: HMAC takes keys of any length).
fn mac(key: &[u8], domain: &[u8], msg: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).ok()?;
    m.update(domain);
    m.update(msg);
    Some(m)
}

/// Why a form token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token was sent, or it is not `EXPIRY.HEX`.
    #[error("missing or malformed form token")]
    Malformed,
    /// The token has expired.
    #[error("form token expired")]
    Expired,
    /// The signature does not match.
    #[error("bad form token signature")]
    BadSignature,
}

/// Expiring HMAC form tokens: `"<unix expiry>.<hex HMAC-SHA256(key, expiry)>"`.
///
/// The page fetches one (`GET /api/token`) and sends it with the form. It proves the submitter fetched the page
/// recently from this server, which raises the cost of scripted submissions; it does not replace rate limits.
#[derive(Clone)]
pub struct FormTokens {
    key: Vec<u8>,
    ttl: Duration,
}

impl fmt::Debug for FormTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FormTokens")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl FormTokens {
    /// Tokens signed with `key`, valid for `ttl`.
    pub fn new(key: &[u8], ttl: Duration) -> Self {
        FormTokens {
            key: key.to_vec(),
            ttl,
        }
    }

    /// A token issued at `now_unix` (seconds).
    pub fn issue(&self, now_unix: i64) -> String {
        let exp = now_unix.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX));
        let tag = mac(&self.key, b"form\0", exp.to_string().as_bytes())
            .map(|m| hex(&m.finalize().into_bytes()))
            .unwrap_or_default();
        format!("{exp}.{tag}")
    }

    /// Checks a token at `now_unix`.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<(), TokenError> {
        let (exp, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let exp_n: i64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let tag = unhex(tag).ok_or(TokenError::Malformed)?;
        mac(&self.key, b"form\0", exp.as_bytes())
            .ok_or(TokenError::BadSignature)?
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        if exp_n < now_unix {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

/// Public request ids: `"<id>-<16 hex HMAC tag>"`. Only whoever received the id at submission can read or cancel
/// the request; sequential internal ids cannot be enumerated.
#[derive(Clone)]
pub struct RequestKeys {
    key: Vec<u8>,
}

impl fmt::Debug for RequestKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestKeys")
    }
}

impl RequestKeys {
    /// Keys derived from `secret`.
    pub fn new(secret: &[u8]) -> Self {
        RequestKeys {
            key: secret.to_vec(),
        }
    }

    fn tag(&self, id: RequestId) -> Option<[u8; 8]> {
        let t = mac(&self.key, b"id\0", &id.0.to_be_bytes())?
            .finalize()
            .into_bytes();
        t.get(..8)?.try_into().ok()
    }

    /// The public id of `id`.
    pub fn seal(&self, id: RequestId) -> String {
        format!("{}-{}", id.0, hex(&self.tag(id).unwrap_or_default()))
    }

    /// The request id of a public id, if its tag is right.
    pub fn open(&self, public: &str) -> Option<RequestId> {
        let (n, tag) = public.split_once('-')?;
        if n.len() > 20 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let id = RequestId(n.parse().ok()?);
        let want = unhex(tag)?;
        let got = self.tag(id)?;
        // Constant-time comparison of the truncated tag.
        (want.len() == got.len()
            && want
                .iter()
                .zip(got.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0)
            .then_some(id)
    }
}
