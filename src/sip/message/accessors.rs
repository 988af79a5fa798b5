//! Typed accessors on [`Headers`]: parse the values a user agent reads, on demand.
//!
//! Single-valued accessors read the first line of their header (use [`super::Message::check`] to refuse
//! duplicates); list accessors split comma-separated lines into separate values.

use super::error::{ParseError, ValueError};
use super::header::{HeaderName, Headers};
use super::scan;
use super::typed::{self, CSeq, MediaType, NameAddr, RAck, Reason, SessionExpires, Via};
use bytes::Bytes;

fn single(h: &Headers, name: HeaderName) -> Result<(&Bytes, HeaderName), ParseError> {
    match h.get(&name) {
        Some(v) => Ok((v, name)),
        None => Err(ParseError::Missing { name }),
    }
}

fn optional_u32(h: &Headers, name: HeaderName) -> Result<Option<u32>, ParseError> {
    match h.get(&name) {
        None => Ok(None),
        Some(v) => scan::parse_u32(v)
            .map(Some)
            .ok_or(ParseError::header(name, ValueError::Number)),
    }
}

fn name_addrs(h: &Headers, name: HeaderName) -> Result<Vec<NameAddr>, ParseError> {
    h.values(&name)
        .map(|v| {
            if v.is_empty() {
                return Err(ParseError::header(name.clone(), ValueError::EmptyElement));
            }
            NameAddr::parse(&v).map_err(|e| ParseError::header(name.clone(), e))
        })
        .collect()
}

impl Headers {
    /// Every Via value, top first (several per line are split).
    pub fn via(&self) -> Result<Vec<Via>, ParseError> {
        self.values(&HeaderName::Via)
            .map(|v| Via::parse(&v).map_err(|e| ParseError::header(HeaderName::Via, e)))
            .collect()
    }
    /// The topmost Via value.
    pub fn top_via(&self) -> Result<Via, ParseError> {
        let v = self
            .values(&HeaderName::Via)
            .next()
            .ok_or(ParseError::Missing {
                name: HeaderName::Via,
            })?;
        Via::parse(&v).map_err(|e| ParseError::header(HeaderName::Via, e))
    }
    /// The From header.
    pub fn from(&self) -> Result<NameAddr, ParseError> {
        let (v, n) = single(self, HeaderName::From)?;
        NameAddr::parse(v).map_err(|e| ParseError::header(n, e))
    }
    /// The To header.
    pub fn to(&self) -> Result<NameAddr, ParseError> {
        let (v, n) = single(self, HeaderName::To)?;
        NameAddr::parse(v).map_err(|e| ParseError::header(n, e))
    }
    /// The Call-ID (`word ["@" word]`, no whitespace).
    pub fn call_id(&self) -> Result<Bytes, ParseError> {
        let (v, n) = single(self, HeaderName::CallId)?;
        if v.is_empty() {
            return Err(ParseError::header(n, ValueError::Empty));
        }
        if v.iter().any(|&b| b <= b' ' || b >= 0x7f) {
            return Err(ParseError::header(n, ValueError::Trailing));
        }
        Ok(v.clone())
    }
    /// The CSeq header.
    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        let (v, n) = single(self, HeaderName::CSeq)?;
        CSeq::parse(v).map_err(|e| ParseError::header(n, e))
    }
    /// Contact values (several per line are split). A `Contact: *` (REGISTER only) is an error here; see
    /// [`Headers::is_contact_star`].
    pub fn contacts(&self) -> Result<Vec<NameAddr>, ParseError> {
        name_addrs(self, HeaderName::Contact)
    }
    /// True if the Contact header is `*` (RFC 3261 §10.2.2).
    pub fn is_contact_star(&self) -> bool {
        self.get(&HeaderName::Contact)
            .is_some_and(|v| &v[..] == b"*")
    }
    /// Record-Route values, in order.
    pub fn record_route(&self) -> Result<Vec<NameAddr>, ParseError> {
        name_addrs(self, HeaderName::RecordRoute)
    }
    /// Route values, in order.
    pub fn route(&self) -> Result<Vec<NameAddr>, ParseError> {
        name_addrs(self, HeaderName::Route)
    }
    /// P-Asserted-Identity values (RFC 3325).
    pub fn p_asserted_identity(&self) -> Result<Vec<NameAddr>, ParseError> {
        name_addrs(self, HeaderName::PAssertedIdentity)
    }
    /// Max-Forwards (0..=255), `None` if absent.
    pub fn max_forwards(&self) -> Result<Option<u8>, ParseError> {
        match self.get(&HeaderName::MaxForwards) {
            None => Ok(None),
            Some(v) => scan::parse_u32(v)
                .and_then(|n| u8::try_from(n).ok())
                .map(Some)
                .ok_or(ParseError::header(
                    HeaderName::MaxForwards,
                    ValueError::Number,
                )),
        }
    }
    /// Content-Length, `None` if absent. Several lines are an error.
    pub fn content_length(&self) -> Result<Option<usize>, ParseError> {
        let mut it = self.get_all(&HeaderName::ContentLength);
        let Some(v) = it.next() else { return Ok(None) };
        if it.next().is_some() {
            return Err(ParseError::Duplicate {
                name: HeaderName::ContentLength,
            });
        }
        let n = scan::parse_u32(v).ok_or(ParseError::header(
            HeaderName::ContentLength,
            ValueError::Number,
        ))?;
        usize::try_from(n)
            .map(Some)
            .map_err(|_| ParseError::header(HeaderName::ContentLength, ValueError::Number))
    }
    /// Content-Type, `None` if absent.
    pub fn content_type(&self) -> Result<Option<MediaType>, ParseError> {
        match self.get(&HeaderName::ContentType) {
            None => Ok(None),
            Some(v) => MediaType::parse(v)
                .map(Some)
                .map_err(|e| ParseError::header(HeaderName::ContentType, e)),
        }
    }
    /// Expires (delta-seconds), `None` if absent.
    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        optional_u32(self, HeaderName::Expires)
    }
    /// Session-Expires (RFC 4028), `None` if absent.
    pub fn session_expires(&self) -> Result<Option<SessionExpires>, ParseError> {
        match self.get(&HeaderName::SessionExpires) {
            None => Ok(None),
            Some(v) => SessionExpires::parse(v)
                .map(Some)
                .map_err(|e| ParseError::header(HeaderName::SessionExpires, e)),
        }
    }
    /// Min-SE in seconds (RFC 4028), `None` if absent.
    pub fn min_se(&self) -> Result<Option<u32>, ParseError> {
        match self.get(&HeaderName::MinSe) {
            None => Ok(None),
            Some(v) => typed::delta_with_params(v)
                .map(|(d, _)| Some(d))
                .map_err(|e| ParseError::header(HeaderName::MinSe, e)),
        }
    }
    /// Option tags of Require.
    pub fn require(&self) -> Result<Vec<Bytes>, ParseError> {
        typed::token_list(&HeaderName::Require, self.values(&HeaderName::Require))
    }
    /// Option tags of Proxy-Require.
    pub fn proxy_require(&self) -> Result<Vec<Bytes>, ParseError> {
        typed::token_list(
            &HeaderName::ProxyRequire,
            self.values(&HeaderName::ProxyRequire),
        )
    }
    /// Option tags of Supported.
    pub fn supported(&self) -> Result<Vec<Bytes>, ParseError> {
        typed::token_list(&HeaderName::Supported, self.values(&HeaderName::Supported))
    }
    /// Option tags of Unsupported.
    pub fn unsupported(&self) -> Result<Vec<Bytes>, ParseError> {
        typed::token_list(
            &HeaderName::Unsupported,
            self.values(&HeaderName::Unsupported),
        )
    }
    /// Methods of Allow.
    pub fn allow(&self) -> Result<Vec<Bytes>, ParseError> {
        typed::token_list(&HeaderName::Allow, self.values(&HeaderName::Allow))
    }
    /// True if `tag` is listed in Supported or Require (case-insensitive).
    pub fn has_option_tag(&self, tag: &str) -> bool {
        [HeaderName::Supported, HeaderName::Require]
            .iter()
            .any(|n| self.values(n).any(|v| scan::eq_ic(&v, tag.as_bytes())))
    }
    /// RSeq (RFC 3262), `None` if absent.
    pub fn rseq(&self) -> Result<Option<u32>, ParseError> {
        optional_u32(self, HeaderName::RSeq)
    }
    /// RAck (RFC 3262), `None` if absent.
    pub fn rack(&self) -> Result<Option<RAck>, ParseError> {
        match self.get(&HeaderName::RAck) {
            None => Ok(None),
            Some(v) => RAck::parse(v)
                .map(Some)
                .map_err(|e| ParseError::header(HeaderName::RAck, e)),
        }
    }
    /// Reason values (RFC 3326).
    pub fn reason(&self) -> Result<Vec<Reason>, ParseError> {
        self.values(&HeaderName::Reason)
            .map(|v| Reason::parse(&v).map_err(|e| ParseError::header(HeaderName::Reason, e)))
            .collect()
    }
    /// Privacy values (RFC 3323), `;`-separated tokens.
    pub fn privacy(&self) -> Result<Vec<Bytes>, ParseError> {
        let mut out = Vec::new();
        for line in self.get_all(&HeaderName::Privacy) {
            for p in line.split(|&b| b == b';') {
                let p = scan::trim(p);
                if !scan::is_token_str(p) {
                    return Err(ParseError::header(HeaderName::Privacy, ValueError::Token));
                }
                out.push(line.slice_ref(p));
            }
        }
        Ok(out)
    }
    /// Raw values of an authentication header (WWW-Authenticate, Proxy-Authenticate, Authorization,
    /// Proxy-Authorization): one per line, not split at commas (digest parameters contain commas).
    pub fn auth_values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.get_all(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(lines: &[(&str, &'static str)]) -> Headers {
        let mut h = Headers::new();
        for (n, v) in lines {
            h.push(
                HeaderName::parse(n).unwrap(),
                Bytes::from_static(v.as_bytes()),
            );
        }
        h
    }

    #[test]
    fn multi_values_split() {
        let hs = h(&[
            (
                "v",
                "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b;branch=z9hG4bK2",
            ),
            ("Via", "SIP/2.0/UDP c;branch=z9hG4bK3"),
            ("m", "\"A, B\" <sip:a,b@x>;q=0.5, <sip:b@y>"),
            ("Supported", "timer, 100rel"),
        ]);
        let vias = hs.via().unwrap();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[1].branch().map(|b| &b[..]), Some(&b"z9hG4bK2"[..]));
        assert_eq!(hs.top_via().unwrap(), vias[0]);
        let c = hs.contacts().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].display_name_text().as_deref(), Some("A, B"));
        assert_eq!(c[0].params.value("q").map(|b| &b[..]), Some(&b"0.5"[..]));
        assert!(hs.has_option_tag("100REL"));
        assert!(!hs.has_option_tag("replaces"));
    }

    #[test]
    fn scalars() {
        let hs = h(&[
            ("Max-Forwards", "300"),
            ("l", "12"),
            ("l", "12"),
            ("Expires", "10000000000"),
        ]);
        assert!(hs.max_forwards().is_err());
        assert_eq!(
            hs.content_length(),
            Err(ParseError::Duplicate {
                name: HeaderName::ContentLength
            })
        );
        assert!(hs.expires().is_err());
        assert_eq!(
            hs.call_id(),
            Err(ParseError::Missing {
                name: HeaderName::CallId
            })
        );
    }
}
