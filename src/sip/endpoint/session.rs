//! Session-timer header values (RFC 4028): `Session-Expires` with its `refresher` parameter, and `Min-SE`.
//!
//! The endpoint only carries these headers (in [`super::InviteRequest::extra_headers`],
//! [`super::Endpoint::send_reinvite_with`], [`super::Endpoint::answer_invite_with`], and back through
//! [`super::Endpoint::last_headers`]); deciding who refreshes and when is the call layer's job.

use crate::sip::dialog::hdr;
use crate::sip::message::{HeaderName, Headers};
use bytes::Bytes;

/// Who refreshes the session (the `refresher` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The UAC of the dialog-creating INVITE (or of the refresh transaction).
    Uac,
    /// The UAS.
    Uas,
}

/// A `Session-Expires` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    /// The session interval in seconds.
    pub delta: u32,
    /// The `refresher` parameter, when present.
    pub refresher: Option<Refresher>,
}

fn number(v: &[u8]) -> Option<u32> {
    let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
    std::str::from_utf8(v.get(..end)?).ok()?.trim().parse().ok()
}

impl SessionExpires {
    /// Parses `delta-seconds *(;param)`; `None` when the number is missing or out of range.
    pub fn parse(v: &[u8]) -> Option<Self> {
        let delta = number(v)?;
        let refresher = match hdr::param(v, "refresher") {
            Some(r) if r.eq_ignore_ascii_case(b"uac") => Some(Refresher::Uac),
            Some(r) if r.eq_ignore_ascii_case(b"uas") => Some(Refresher::Uas),
            _ => None,
        };
        Some(Self { delta, refresher })
    }

    /// The `Session-Expires` header of `h`, if present and well-formed.
    pub fn from_headers(h: &Headers) -> Option<Self> {
        Self::parse(h.get(&HeaderName::SessionExpires)?)
    }

    /// The header to send: `(Session-Expires, "1800;refresher=uac")`.
    pub fn to_header(self) -> (HeaderName, Bytes) {
        let r = match self.refresher {
            Some(Refresher::Uac) => ";refresher=uac",
            Some(Refresher::Uas) => ";refresher=uas",
            None => "",
        };
        (
            HeaderName::SessionExpires,
            Bytes::from(format!("{}{r}", self.delta)),
        )
    }
}

/// The `Min-SE` value of `h` (in a 422 it is the smallest interval the peer accepts).
pub fn min_se(h: &Headers) -> Option<u32> {
    number(h.get(&HeaderName::MinSe)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes() {
        let s = SessionExpires::parse(b"1800 ; refresher=UAS").unwrap();
        assert_eq!(s.delta, 1800);
        assert_eq!(s.refresher, Some(Refresher::Uas));
        assert_eq!(SessionExpires::parse(b"90").unwrap().refresher, None);
        assert_eq!(SessionExpires::parse(b"x;refresher=uac"), None);
        assert_eq!(SessionExpires::parse(b"99999999999"), None);
        let (n, v) = SessionExpires {
            delta: 600,
            refresher: Some(Refresher::Uac),
        }
        .to_header();
        assert_eq!(n, HeaderName::SessionExpires);
        assert_eq!(&v[..], b"600;refresher=uac");
        let mut h = Headers::default();
        h.push(HeaderName::MinSe, Bytes::from_static(b"120;x=y"));
        assert_eq!(min_se(&h), Some(120));
    }
}
