//! SIP URIs (RFC 3261 §19.1, with RFC 5118 IPv6 references); other schemes (tel, http, ...) are kept opaque.

use super::error::UriError;
use super::params::{Param, Params};
use super::scan;
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The host part of a SIP URI or Via.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name, as received (compare case-insensitively).
    Domain(Bytes),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address (written as a `[...]` reference).
    Ipv6(Ipv6Addr),
}

impl Host {
    /// Parses a host: a name, a dotted IPv4 address or a bracketed IPv6 reference.
    pub fn parse_bytes(b: &Bytes) -> Result<Host, UriError> {
        Host::parse_in(b, b)
    }

    /// Parses the host `b`, a subslice of `src` (domain names become slices of `src`).
    pub(crate) fn parse_in(src: &Bytes, b: &[u8]) -> Result<Host, UriError> {
        if let Some(inner) = b.strip_prefix(b"[") {
            let inner = inner.strip_suffix(b"]").ok_or(UriError::Ipv6)?;
            let s = std::str::from_utf8(inner).map_err(|_| UriError::Ipv6)?;
            return s
                .parse::<Ipv6Addr>()
                .map(Host::Ipv6)
                .map_err(|_| UriError::Ipv6);
        }
        if b.is_empty()
            || !b
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
        {
            return Err(UriError::Host);
        }
        if b.iter().all(|&c| c.is_ascii_digit() || c == b'.') {
            let s = std::str::from_utf8(b).map_err(|_| UriError::Host)?;
            return s
                .parse::<Ipv4Addr>()
                .map(Host::Ipv4)
                .map_err(|_| UriError::Host);
        }
        Ok(Host::Domain(src.slice_ref(b)))
    }

    /// The IP address, if the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Domain(_) => None,
            Host::Ipv4(a) => Some(IpAddr::V4(*a)),
            Host::Ipv6(a) => Some(IpAddr::V6(*a)),
        }
    }

    pub(crate) fn write(&self, out: &mut BytesMut) {
        match self {
            Host::Domain(d) => out.put_slice(d),
            other => out.put_slice(other.to_string().as_bytes()),
        }
    }
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Host {
        match ip {
            IpAddr::V4(a) => Host::Ipv4(a),
            IpAddr::V6(a) => Host::Ipv6(a),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(&String::from_utf8_lossy(d)),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
        }
    }
}

/// A `sip:` or `sips:` URI. Text parts keep their %-escapes as received (use [`unescape`] to decode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `sips:` rather than `sip:`.
    pub secure: bool,
    /// The user part, escaped as received.
    pub user: Option<Bytes>,
    /// The password, escaped as received.
    pub password: Option<Bytes>,
    /// The host.
    pub host: Host,
    /// The port, if given.
    pub port: Option<u16>,
    /// URI parameters (`;transport=tcp;lr`).
    pub params: Params,
    /// The raw `?headers` component without the `?`.
    pub headers: Option<Bytes>,
}

impl SipUri {
    /// A `sip:` URI for `host` with no user, port or parameters.
    pub fn new(host: Host) -> Self {
        SipUri {
            secure: false,
            user: None,
            password: None,
            host,
            port: None,
            params: Params::new(),
            headers: None,
        }
    }
    /// The user part with %-escapes decoded.
    pub fn user_unescaped(&self) -> Option<Vec<u8>> {
        self.user.as_deref().map(unescape)
    }
    /// The `transport` parameter.
    pub fn transport(&self) -> Option<&Bytes> {
        self.params.value("transport")
    }
    /// True if the `lr` parameter is present (a loose router, RFC 3261 §16.12).
    pub fn is_loose_router(&self) -> bool {
        self.params.contains("lr")
    }
}

/// A URI of a scheme other than sip/sips, kept opaque (e.g. `tel:+15551234`, `http://...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteUri {
    /// The scheme, as received.
    pub scheme: Bytes,
    /// Everything after `scheme:`.
    pub rest: Bytes,
}

/// A URI as found in a Request-URI or a name-addr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri {
    /// `sip:` or `sips:`.
    Sip(SipUri),
    /// Any other scheme, opaque.
    Other(AbsoluteUri),
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        )
}

/// Checks that `s` only has `unreserved`, `extra` characters and valid `%HH` escapes.
fn check_chars(s: &[u8], extra: &[u8], err: UriError) -> Result<(), UriError> {
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            let ok = s.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(UriError::Escape);
            }
            i += 3;
            continue;
        }
        if !is_unreserved(b) && !extra.contains(&b) {
            return Err(err);
        }
        i += 1;
    }
    Ok(())
}

/// Decodes `%HH` escapes; invalid escapes are kept literally.
pub fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            if let (Some(h), Some(l)) = (s.get(i + 1).and_then(hex), s.get(i + 2).and_then(hex)) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

const USER_EXTRA: &[u8] = b"&=+$,;?/";
const PASSWORD_EXTRA: &[u8] = b"&=+$,";
const PARAM_EXTRA: &[u8] = b"[]/:&+$";
const HEADERS_EXTRA: &[u8] = b"[]/?:+$=&";

impl Uri {
    /// Parses a URI from text, e.g. `Uri::parse("sip:alice@127.0.0.1:5080")`.
    pub fn parse(s: &str) -> Result<Uri, UriError> {
        Uri::parse_bytes(&Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Parses a URI from bytes; text parts are slices of `b`.
    pub fn parse_bytes(b: &Bytes) -> Result<Uri, UriError> {
        Uri::parse_in(b, b)
    }

    /// Parses the URI `b`, a subslice of `src`; text parts become slices of `src`.
    pub(crate) fn parse_in(src: &Bytes, b: &[u8]) -> Result<Uri, UriError> {
        let colon = memchr::memchr(b':', b).ok_or(UriError::Scheme)?;
        let scheme = b.get(..colon).ok_or(UriError::Scheme)?;
        let valid_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
        if !valid_scheme {
            return Err(UriError::Scheme);
        }
        let rest = b.get(colon + 1..).unwrap_or_default();
        if rest
            .iter()
            .any(|&c| c <= b' ' || c >= 0x7f || matches!(c, b'<' | b'>' | b'"'))
        {
            return Err(UriError::Char);
        }
        let secure = if scan::eq_ic(scheme, b"sip") {
            false
        } else if scan::eq_ic(scheme, b"sips") {
            true
        } else {
            if rest.is_empty() {
                return Err(UriError::Char);
            }
            return Ok(Uri::Other(AbsoluteUri {
                scheme: src.slice_ref(scheme),
                rest: src.slice_ref(rest),
            }));
        };
        parse_sip(src, secure, rest).map(Uri::Sip)
    }

    /// The scheme in lower case for sip/sips, as received otherwise.
    pub fn scheme(&self) -> &str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Other(o) => std::str::from_utf8(&o.scheme).unwrap_or(""),
        }
    }
    /// The SIP URI, if this is one.
    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            Uri::Other(_) => None,
        }
    }
    /// The SIP URI, mutably, if this is one.
    pub fn as_sip_mut(&mut self) -> Option<&mut SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            Uri::Other(_) => None,
        }
    }
    /// The host of a SIP URI.
    pub fn host(&self) -> Option<&Host> {
        self.as_sip().map(|u| &u.host)
    }
    /// The port of a SIP URI.
    pub fn port(&self) -> Option<u16> {
        self.as_sip().and_then(|u| u.port)
    }

    /// Writes the URI in wire form.
    pub fn write(&self, out: &mut BytesMut) {
        match self {
            Uri::Other(o) => {
                out.put_slice(&o.scheme);
                out.put_u8(b':');
                out.put_slice(&o.rest);
            }
            Uri::Sip(u) => {
                out.put_slice(if u.secure { b"sips:" } else { b"sip:" });
                if let Some(user) = &u.user {
                    out.put_slice(user);
                    if let Some(pw) = &u.password {
                        out.put_u8(b':');
                        out.put_slice(pw);
                    }
                    out.put_u8(b'@');
                }
                u.host.write(out);
                if let Some(p) = u.port {
                    out.put_u8(b':');
                    out.put_slice(p.to_string().as_bytes());
                }
                u.params.write(out);
                if let Some(h) = &u.headers {
                    out.put_u8(b'?');
                    out.put_slice(h);
                }
            }
        }
    }
}

impl From<SipUri> for Uri {
    fn from(u: SipUri) -> Uri {
        Uri::Sip(u)
    }
}

impl std::str::FromStr for Uri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Uri, UriError> {
        Uri::parse(s)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = BytesMut::new();
        self.write(&mut b);
        f.write_str(&String::from_utf8_lossy(&b))
    }
}

/// Position of the first byte of `s` in `set`, or `s.len()`.
fn find_any(s: &[u8], set: &[u8]) -> usize {
    s.iter().position(|c| set.contains(c)).unwrap_or(s.len())
}

fn parse_sip(src: &Bytes, secure: bool, rest: &[u8]) -> Result<SipUri, UriError> {
    // userinfo: everything before the first '@' ('@' cannot appear unescaped after the host).
    let (user, password, hp) = match memchr::memchr(b'@', rest) {
        Some(at) => {
            let userinfo = rest.get(..at).unwrap_or_default();
            let (u, p) = match memchr::memchr(b':', userinfo) {
                Some(c) => (userinfo.get(..c).unwrap_or_default(), userinfo.get(c + 1..)),
                None => (userinfo, None),
            };
            if u.is_empty() {
                return Err(UriError::User);
            }
            check_chars(u, USER_EXTRA, UriError::User)?;
            if let Some(p) = p {
                check_chars(p, PASSWORD_EXTRA, UriError::User)?;
            }
            (
                Some(src.slice_ref(u)),
                p.map(|p| src.slice_ref(p)),
                rest.get(at + 1..).unwrap_or_default(),
            )
        }
        None => (None, None, rest),
    };
    let host_end = if hp.first() == Some(&b'[') {
        memchr::memchr(b']', hp)
            .map(|e| e + 1)
            .ok_or(UriError::Ipv6)?
    } else {
        find_any(hp, b":;?")
    };
    let host = Host::parse_in(src, hp.get(..host_end).unwrap_or_default())?;
    let mut rest = hp.get(host_end..).unwrap_or_default();
    let mut port = None;
    if let Some(r) = rest.strip_prefix(b":") {
        let end = find_any(r, b";?");
        port = Some(scan::parse_u16(r.get(..end).unwrap_or_default()).ok_or(UriError::Port)?);
        rest = r.get(end..).unwrap_or_default();
    }
    let mut params = Params::new();
    while let Some(r) = rest.strip_prefix(b";") {
        let end = find_any(r, b";?");
        let p = r.get(..end).unwrap_or_default();
        let (name, value) = match memchr::memchr(b'=', p) {
            Some(eq) => (p.get(..eq).unwrap_or_default(), p.get(eq + 1..)),
            None => (p, None),
        };
        if name.is_empty() || value.is_some_and(<[u8]>::is_empty) {
            return Err(UriError::Param);
        }
        check_chars(name, PARAM_EXTRA, UriError::Param)?;
        if let Some(v) = value {
            check_chars(v, PARAM_EXTRA, UriError::Param)?;
        }
        params.0.push(Param {
            name: src.slice_ref(name),
            value: value.map(|v| src.slice_ref(v)),
        });
        rest = r.get(end..).unwrap_or_default();
    }
    let mut headers = None;
    if let Some(h) = rest.strip_prefix(b"?") {
        if h.is_empty() {
            return Err(UriError::Headers);
        }
        check_chars(h, HEADERS_EXTRA, UriError::Headers)?;
        headers = Some(src.slice_ref(h));
        rest = &[];
    }
    if !rest.is_empty() {
        return Err(UriError::Char);
    }
    Ok(SipUri {
        secure,
        user,
        password,
        host,
        port,
        params,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let u = Uri::parse("sip:alice:pw@127.0.0.1:5080;transport=tcp;lr?subject=x").unwrap();
        let s = u.as_sip().unwrap();
        assert_eq!(s.user.as_deref(), Some(&b"alice"[..]));
        assert_eq!(s.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!(s.host, Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(s.port, Some(5080));
        assert_eq!(s.transport().map(|b| &b[..]), Some(&b"tcp"[..]));
        assert!(s.is_loose_router());
        assert_eq!(
            u.to_string(),
            "sip:alice:pw@127.0.0.1:5080;transport=tcp;lr?subject=x"
        );
    }

    #[test]
    fn ipv6_references() {
        let u = Uri::parse("sips:[2001:db8::10]:5061").unwrap();
        assert_eq!(u.host(), Some(&Host::Ipv6("2001:db8::10".parse().unwrap())));
        assert_eq!(u.port(), Some(5061));
        assert_eq!(u.to_string(), "sips:[2001:db8::10]:5061");
        assert!(Uri::parse("sip:2001:db8::10").is_err());
        assert_eq!(
            Uri::parse("sip:[2001:db8:::192.0.2.1]"),
            Err(UriError::Ipv6)
        );
        assert_eq!(Uri::parse("sip:[2001:db8::1"), Err(UriError::Ipv6));
    }

    #[test]
    fn escapes_and_opaque() {
        let u = Uri::parse("sip:%75se%72@example.com").unwrap();
        assert_eq!(u.as_sip().unwrap().user_unescaped().unwrap(), b"user");
        assert_eq!(Uri::parse("sip:a%zz@x"), Err(UriError::Escape));
        let t = Uri::parse("tel:+1-201-555-0123").unwrap();
        assert_eq!(t.scheme(), "tel");
        assert_eq!(t.to_string(), "tel:+1-201-555-0123");
        assert_eq!(Uri::parse("sip:a b@x"), Err(UriError::Char));
        assert_eq!(Uri::parse("nocolon"), Err(UriError::Scheme));
        assert_eq!(Uri::parse("sip:"), Err(UriError::Host));
    }
}
