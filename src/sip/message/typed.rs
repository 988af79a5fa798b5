//! Typed views of the header values a user agent reads and writes: Via, name-addr (From/To/Contact/Route/...),
//! CSeq, Session-Expires, RAck, Reason, Content-Type. Each parses from a header value (`Bytes`, slices kept) and
//! encodes back with [`Via::encode`] and friends.

use super::error::{ParseError, ValueError};
use super::header::HeaderName;
use super::method::Method;
use super::params::{parse_header_params, Params};
use super::scan::{self, Cursor};
use super::uri::{Host, Uri};
use bytes::{BufMut, Bytes, BytesMut};
use std::net::IpAddr;

/// A Via transport.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// SCTP.
    Sctp,
    /// WebSocket (RFC 7118).
    Ws,
    /// Secure WebSocket.
    Wss,
    /// Any other token, as received.
    Other(Bytes),
}

impl Transport {
    /// Maps a transport token (case-insensitive).
    pub fn from_token(t: Bytes) -> Transport {
        match t.to_ascii_uppercase().as_slice() {
            b"UDP" => Transport::Udp,
            b"TCP" => Transport::Tcp,
            b"TLS" => Transport::Tls,
            b"SCTP" => Transport::Sctp,
            b"WS" => Transport::Ws,
            b"WSS" => Transport::Wss,
            _ => Transport::Other(t),
        }
    }
    /// The token as written in a Via.
    pub fn as_str(&self) -> &str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Sctp => "SCTP",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
            Transport::Other(b) => std::str::from_utf8(b).unwrap_or("UNKNOWN"),
        }
    }
    /// True for transports that need stream framing (Content-Length mandatory).
    pub fn is_stream(&self) -> bool {
        matches!(
            self,
            Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss
        )
    }
}

/// The `rport` parameter of a Via (RFC 3581).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RPort {
    /// `;rport` with no value: the client asks for it to be filled in.
    Requested,
    /// `;rport=N` as filled in by the server.
    Value(u16),
}

/// One Via value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The transport.
    pub transport: Transport,
    /// The sent-by host.
    pub host: Host,
    /// The sent-by port.
    pub port: Option<u16>,
    /// Parameters in order (branch, received, rport, maddr, ttl and unknown ones).
    pub params: Params,
}

impl Via {
    /// A Via with a branch parameter, e.g. `Via::new(Transport::Udp, host, Some(5060), "z9hG4bK...")`.
    pub fn new(
        transport: Transport,
        host: Host,
        port: Option<u16>,
        branch: impl Into<Bytes>,
    ) -> Via {
        let mut params = Params::new();
        params.set("branch", Some(branch.into()));
        Via {
            transport,
            host,
            port,
            params,
        }
    }
    /// The branch parameter.
    pub fn branch(&self) -> Option<&Bytes> {
        self.params.value("branch")
    }
    /// True if the branch has the RFC 3261 magic cookie `z9hG4bK`.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(b"z9hG4bK"))
    }
    /// The raw `received` parameter.
    pub fn received(&self) -> Option<&Bytes> {
        self.params.value("received")
    }
    /// The `received` parameter as an address (IPv6 with or without brackets, RFC 5118 §4.5).
    pub fn received_ip(&self) -> Option<IpAddr> {
        let r = self.received()?;
        let r = r
            .strip_prefix(b"[")
            .and_then(|x| x.strip_suffix(b"]"))
            .unwrap_or(r);
        std::str::from_utf8(r).ok()?.parse().ok()
    }
    /// The `rport` parameter.
    pub fn rport(&self) -> Option<RPort> {
        let p = self.params.get("rport")?;
        match &p.value {
            None => Some(RPort::Requested),
            Some(v) => scan::parse_u16(v).map(RPort::Value),
        }
    }
    /// Sets `received` (RFC 3261 §18.2.1).
    pub fn set_received(&mut self, ip: IpAddr) {
        self.params
            .set("received", Some(Bytes::from(ip.to_string())));
    }
    /// Sets `rport=N` (RFC 3581).
    pub fn set_rport(&mut self, port: u16) {
        self.params
            .set("rport", Some(Bytes::from(port.to_string())));
    }

    /// Parses one Via value (`SIP/2.0/UDP host:port;params`, LWS allowed around `/`, `:`, `;`, `=`).
    pub fn parse(v: &Bytes) -> Result<Via, ValueError> {
        let mut c = Cursor::new(v);
        c.skip_ws();
        let name = c.token().ok_or(ValueError::Protocol)?;
        if !c.eat_sep(b'/') {
            return Err(ValueError::Protocol);
        }
        let version = c.token().ok_or(ValueError::Protocol)?;
        if !scan::eq_ic(name, b"SIP") || version != b"2.0" || !c.eat_sep(b'/') {
            return Err(ValueError::Protocol);
        }
        let transport = Transport::from_token(v.slice_ref(c.token().ok_or(ValueError::Protocol)?));
        if !c.skip_ws() {
            return Err(ValueError::Protocol);
        }
        let host_bytes = if c.peek() == Some(b'[') {
            let start = c.pos;
            c.take_while(|b| b != b']');
            if !c.eat(b']') {
                return Err(ValueError::Uri(super::error::UriError::Ipv6));
            }
            c.s.get(start..c.pos).unwrap_or_default()
        } else {
            c.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        let host = Host::parse_in(v, host_bytes).map_err(ValueError::Uri)?;
        let mut port = None;
        if c.eat_sep(b':') {
            port = Some(
                scan::parse_u16(c.take_while(|b| b.is_ascii_digit())).ok_or(ValueError::Number)?,
            );
        }
        let params = parse_header_params(v, &mut c).ok_or(ValueError::Param)?;
        c.skip_ws();
        if !c.at_end() {
            return Err(ValueError::Trailing);
        }
        Ok(Via {
            transport,
            host,
            port,
            params,
        })
    }

    /// Writes the value (`SIP/2.0/UDP host:port;params`).
    pub fn write(&self, out: &mut BytesMut) {
        out.put_slice(b"SIP/2.0/");
        out.put_slice(self.transport.as_str().as_bytes());
        out.put_u8(b' ');
        self.host.write(out);
        if let Some(p) = self.port {
            out.put_u8(b':');
            out.put_slice(p.to_string().as_bytes());
        }
        self.params.write(out);
    }

    /// The value as bytes, ready for [`super::Headers::push`].
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        self.write(&mut b);
        b.freeze()
    }
}

/// A name-addr or addr-spec with header parameters: the value of From, To, Contact, Route, Record-Route,
/// P-Asserted-Identity, Refer-To, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name as received: a quoted string with its quotes, or the tokens.
    pub display_name: Option<Bytes>,
    /// The URI.
    pub uri: Uri,
    /// Header parameters (`;tag=...`, `;expires=...`, `;q=...`).
    pub params: Params,
}

impl NameAddr {
    /// A name-addr with no display name and no parameters.
    pub fn new(uri: Uri) -> NameAddr {
        NameAddr {
            display_name: None,
            uri,
            params: Params::new(),
        }
    }
    /// Sets the display name, quoting and escaping it.
    pub fn with_display_name(mut self, name: &str) -> NameAddr {
        let mut q = Vec::with_capacity(name.len() + 2);
        q.push(b'"');
        for b in name.bytes().filter(|&b| b != b'\r' && b != b'\n') {
            if b == b'"' || b == b'\\' {
                q.push(b'\\');
            }
            q.push(b);
        }
        q.push(b'"');
        self.display_name = Some(Bytes::from(q));
        self
    }
    /// The display name without quotes and escapes (lossy UTF-8).
    pub fn display_name_text(&self) -> Option<String> {
        let d = self.display_name.as_ref()?;
        let Some(inner) = d.strip_prefix(b"\"").and_then(|x| x.strip_suffix(b"\"")) else {
            return Some(String::from_utf8_lossy(d).into_owned());
        };
        let mut out = Vec::with_capacity(inner.len());
        let mut it = inner.iter();
        while let Some(&b) = it.next() {
            if b == b'\\' {
                if let Some(&n) = it.next() {
                    out.push(n);
                }
            } else {
                out.push(b);
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }
    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&Bytes> {
        self.params.value("tag")
    }
    /// Sets the `tag` parameter.
    pub fn set_tag(&mut self, tag: impl Into<Bytes>) {
        self.params.set("tag", Some(tag.into()));
    }

    /// Parses a name-addr (`"Name" <uri>;params`, `Name <uri>`, `<uri>`) or an addr-spec (`uri;params`, where the
    /// URI may not contain `;`, `?` or `,`).
    pub fn parse(v: &Bytes) -> Result<NameAddr, ValueError> {
        let mut c = Cursor::new(v);
        c.skip_ws();
        let mut display_name = None;
        let angle;
        if c.peek() == Some(b'"') {
            let q = c.quoted().ok_or(ValueError::UnterminatedQuote)?;
            display_name = Some(v.slice_ref(q));
            c.skip_ws();
            if c.peek() != Some(b'<') {
                return Err(ValueError::Angle);
            }
            angle = true;
        } else {
            let start = c.pos;
            let mut end = c.pos;
            while c.token().is_some() {
                end = c.pos;
                c.skip_ws();
            }
            if c.peek() == Some(b'<') {
                if end > start {
                    display_name = c.s.get(start..end).map(|d| v.slice_ref(d));
                }
                angle = true;
            } else {
                c.pos = start;
                angle = false;
            }
        }
        let uri = if angle {
            c.eat(b'<');
            let u = c.take_while(|b| b != b'>');
            if !c.eat(b'>') {
                return Err(ValueError::Angle);
            }
            Uri::parse_in(v, u).map_err(ValueError::Uri)?
        } else {
            let u = c.take_while(|b| b != b';' && !scan::is_ws(b));
            if u.iter().any(|&b| b == b'?' || b == b',') {
                return Err(ValueError::NeedsAngleBrackets);
            }
            if u.is_empty() {
                return Err(ValueError::Empty);
            }
            Uri::parse_in(v, u).map_err(ValueError::Uri)?
        };
        let params = parse_header_params(v, &mut c).ok_or(ValueError::Param)?;
        c.skip_ws();
        if !c.at_end() {
            return Err(ValueError::Trailing);
        }
        Ok(NameAddr {
            display_name,
            uri,
            params,
        })
    }

    /// Writes the value, always in name-addr form (`<uri>`).
    pub fn write(&self, out: &mut BytesMut) {
        if let Some(d) = &self.display_name {
            out.put_slice(d);
            out.put_u8(b' ');
        }
        out.put_u8(b'<');
        self.uri.write(out);
        out.put_u8(b'>');
        self.params.write(out);
    }

    /// The value as bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        self.write(&mut b);
        b.freeze()
    }
}

/// The CSeq header: a sequence number and a method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// The sequence number.
    pub seq: u32,
    /// The method.
    pub method: Method,
}

impl CSeq {
    /// Parses `1*DIGIT LWS Method`.
    pub fn parse(v: &Bytes) -> Result<CSeq, ValueError> {
        let mut c = Cursor::new(v);
        c.skip_ws();
        let seq =
            scan::parse_u32(c.take_while(|b| b.is_ascii_digit())).ok_or(ValueError::Number)?;
        if !c.skip_ws() {
            return Err(ValueError::Method);
        }
        let m = c.token().ok_or(ValueError::Method)?;
        let method = Method::from_slice(m, || v.slice_ref(m)).ok_or(ValueError::Method)?;
        c.skip_ws();
        if !c.at_end() {
            return Err(ValueError::Trailing);
        }
        Ok(CSeq { seq, method })
    }
    /// The value as bytes.
    pub fn encode(&self) -> Bytes {
        Bytes::from(format!("{} {}", self.seq, self.method))
    }
}

/// Who refreshes a session timer (RFC 4028).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The UAC refreshes.
    Uac,
    /// The UAS refreshes.
    Uas,
}

/// The Session-Expires header (RFC 4028).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionExpires {
    /// Session interval in seconds.
    pub delta: u32,
    /// The `refresher` parameter, if present and valid.
    pub refresher: Option<Refresher>,
    /// All parameters (including `refresher`).
    pub params: Params,
}

impl SessionExpires {
    /// Parses `delta-seconds *(;params)`.
    pub fn parse(v: &Bytes) -> Result<SessionExpires, ValueError> {
        let (delta, params) = delta_with_params(v)?;
        let refresher = match params.value("refresher") {
            None => None,
            Some(r) if scan::eq_ic(r, b"uac") => Some(Refresher::Uac),
            Some(r) if scan::eq_ic(r, b"uas") => Some(Refresher::Uas),
            Some(_) => return Err(ValueError::Param),
        };
        Ok(SessionExpires {
            delta,
            refresher,
            params,
        })
    }
    /// The value as bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(32);
        b.put_slice(self.delta.to_string().as_bytes());
        let mut params = self.params.clone();
        match self.refresher {
            Some(Refresher::Uac) => params.set("refresher", Some(Bytes::from_static(b"uac"))),
            Some(Refresher::Uas) => params.set("refresher", Some(Bytes::from_static(b"uas"))),
            None => {
                params.remove("refresher");
            }
        }
        params.write(&mut b);
        b.freeze()
    }
}

/// Parses `delta-seconds *(;params)` (Session-Expires, Min-SE, Retry-After).
pub(crate) fn delta_with_params(v: &Bytes) -> Result<(u32, Params), ValueError> {
    let mut c = Cursor::new(v);
    c.skip_ws();
    let delta = scan::parse_u32(c.take_while(|b| b.is_ascii_digit())).ok_or(ValueError::Number)?;
    let params = parse_header_params(v, &mut c).ok_or(ValueError::Param)?;
    c.skip_ws();
    if !c.at_end() {
        return Err(ValueError::Trailing);
    }
    Ok((delta, params))
}

/// The RAck header (RFC 3262).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RAck {
    /// The RSeq of the acknowledged provisional response.
    pub rseq: u32,
    /// The CSeq number of the request.
    pub cseq: u32,
    /// The CSeq method of the request.
    pub method: Method,
}

impl RAck {
    /// Parses `rseq LWS cseq LWS method`.
    pub fn parse(v: &Bytes) -> Result<RAck, ValueError> {
        let mut c = Cursor::new(v);
        c.skip_ws();
        let rseq =
            scan::parse_u32(c.take_while(|b| b.is_ascii_digit())).ok_or(ValueError::Number)?;
        c.skip_ws();
        let cseq =
            scan::parse_u32(c.take_while(|b| b.is_ascii_digit())).ok_or(ValueError::Number)?;
        c.skip_ws();
        let method = Method::from_token(v.slice_ref(c.token().ok_or(ValueError::Method)?))
            .ok_or(ValueError::Method)?;
        c.skip_ws();
        if !c.at_end() {
            return Err(ValueError::Trailing);
        }
        Ok(RAck { rseq, cseq, method })
    }
    /// The value as bytes.
    pub fn encode(&self) -> Bytes {
        Bytes::from(format!("{} {} {}", self.rseq, self.cseq, self.method))
    }
}

/// One Reason value (RFC 3326): `SIP ;cause=487 ;text="..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// The protocol token (`SIP`, `Q.850`, ...).
    pub protocol: Bytes,
    /// Parameters (`cause`, `text`, ...).
    pub params: Params,
}

impl Reason {
    /// Parses one value.
    pub fn parse(v: &Bytes) -> Result<Reason, ValueError> {
        let mut c = Cursor::new(v);
        c.skip_ws();
        let protocol = v.slice_ref(c.token().ok_or(ValueError::Token)?);
        let params = parse_header_params(v, &mut c).ok_or(ValueError::Param)?;
        c.skip_ws();
        if !c.at_end() {
            return Err(ValueError::Trailing);
        }
        Ok(Reason { protocol, params })
    }
    /// The `cause` parameter as a number.
    pub fn cause(&self) -> Option<u16> {
        self.params.value("cause").and_then(|c| scan::parse_u16(c))
    }
    /// The `text` parameter without its quotes.
    pub fn text(&self) -> Option<Bytes> {
        let t = self.params.value("text")?;
        if t.len() >= 2 && t.starts_with(b"\"") && t.ends_with(b"\"") {
            Some(t.slice(1..t.len() - 1))
        } else {
            Some(t.clone())
        }
    }
}

/// A Content-Type (media type with parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    /// Top-level type, e.g. `application`.
    pub ty: Bytes,
    /// Subtype, e.g. `sdp`.
    pub subtype: Bytes,
    /// Parameters (`boundary`, `charset`, ...).
    pub params: Params,
}

impl MediaType {
    /// Parses `type/subtype *(;params)`.
    pub fn parse(v: &Bytes) -> Result<MediaType, ValueError> {
        let mut c = Cursor::new(v);
        c.skip_ws();
        let ty = v.slice_ref(c.token().ok_or(ValueError::Token)?);
        if !c.eat_sep(b'/') {
            return Err(ValueError::Token);
        }
        let subtype = v.slice_ref(c.token().ok_or(ValueError::Token)?);
        let params = parse_header_params(v, &mut c).ok_or(ValueError::Param)?;
        c.skip_ws();
        if !c.at_end() {
            return Err(ValueError::Trailing);
        }
        Ok(MediaType {
            ty,
            subtype,
            params,
        })
    }
    /// True if this is `ty/subtype` (case-insensitive).
    pub fn is(&self, ty: &str, subtype: &str) -> bool {
        scan::eq_ic(&self.ty, ty.as_bytes()) && scan::eq_ic(&self.subtype, subtype.as_bytes())
    }
}

/// Parses a list of tokens (`Require`, `Supported`, `Allow`, ...) from the given values.
pub(crate) fn token_list(
    name: &HeaderName,
    values: impl Iterator<Item = Bytes>,
) -> Result<Vec<Bytes>, ParseError> {
    let mut out = Vec::new();
    for v in values {
        if v.is_empty() {
            // an empty Supported/Require line is allowed (RFC 3261 allows an empty Supported)
            continue;
        }
        if !scan::is_token_str(&v) {
            return Err(ParseError::header(name.clone(), ValueError::Token));
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_lws_and_ipv6() {
        let v = Via::parse(&Bytes::from_static(
            b"SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        ))
        .unwrap_err();
        assert_eq!(v, ValueError::Param); // CRLF is not LWS here: folding is undone by the message parser
        let v = Via::parse(&Bytes::from_static(
            b"SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8",
        ))
        .unwrap();
        assert_eq!(v.transport, Transport::Tcp);
        assert_eq!(v.branch().map(|b| &b[..]), Some(&b"z9hG4bK9ikj8"[..]));
        let v = Via::parse(&Bytes::from_static(
            b"SIP/2.0/UDP [2001:db8::9:1]:6050;received=2001:db8::9:255;rport",
        ))
        .unwrap();
        assert_eq!(v.host, Host::Ipv6("2001:db8::9:1".parse().unwrap()));
        assert_eq!(v.port, Some(6050));
        assert_eq!(v.received_ip(), Some("2001:db8::9:255".parse().unwrap()));
        assert_eq!(v.rport(), Some(RPort::Requested));
        assert!(Via::parse(&Bytes::from_static(b"SIP/2.0/UDP 192.0.2.15;;,;,,")).is_err());
        assert!(Via::parse(&Bytes::from_static(b"SIP/3.0/UDP h")).is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(&Bytes::from_static(
            b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>  ;  tag = 98asjd8",
        ))
        .unwrap();
        assert_eq!(n.tag().map(|b| &b[..]), Some(&b"98asjd8"[..]));
        assert_eq!(n.display_name_text().as_deref(), Some("J Rosenberg \\\""));
        let n = NameAddr::parse(&Bytes::from_static(
            b"caller<sip:caller@example.com>;tag=323",
        ))
        .unwrap();
        assert_eq!(n.display_name.as_deref(), Some(&b"caller"[..]));
        let n = NameAddr::parse(&Bytes::from_static(
            b"sip:user@example.com ;   tag    = 1918181833n",
        ))
        .unwrap();
        assert_eq!(n.tag().map(|b| &b[..]), Some(&b"1918181833n"[..]));
        assert_eq!(
            NameAddr::parse(&Bytes::from_static(b"sip:u@x?Route=y")),
            Err(ValueError::NeedsAngleBrackets)
        );
        assert!(NameAddr::parse(&Bytes::from_static(
            b"\"Mr. J. User <sip:j.user@example.com>"
        ))
        .is_err());
        assert!(NameAddr::parse(&Bytes::from_static(b"< sip:t.watson@example.org >")).is_err());
        assert!(NameAddr::parse(&Bytes::from_static(
            b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43"
        ))
        .is_err());
        let mut n = NameAddr::new(Uri::parse("sip:a@b").unwrap()).with_display_name("A \"B\"");
        n.set_tag("x");
        assert_eq!(&n.encode()[..], b"\"A \\\"B\\\"\" <sip:a@b>;tag=x");
        assert_eq!(NameAddr::parse(&n.encode()).unwrap(), n);
    }

    #[test]
    fn cseq_session_expires_rack() {
        assert_eq!(
            CSeq::parse(&Bytes::from_static(b"0009 INVITE")).unwrap(),
            CSeq {
                seq: 9,
                method: Method::Invite
            }
        );
        assert_eq!(
            CSeq::parse(&Bytes::from_static(b"36893488147419103232 REGISTER")),
            Err(ValueError::Number)
        );
        let s = SessionExpires::parse(&Bytes::from_static(b"1800;refresher=uas")).unwrap();
        assert_eq!((s.delta, s.refresher), (1800, Some(Refresher::Uas)));
        assert_eq!(SessionExpires::parse(&s.encode()).unwrap(), s);
        let r = RAck::parse(&Bytes::from_static(b"776656 1 INVITE")).unwrap();
        assert_eq!((r.rseq, r.cseq, r.method), (776656, 1, Method::Invite));
        let re = Reason::parse(&Bytes::from_static(
            b"SIP ;cause=200 ;text=\"Call completed elsewhere\"",
        ))
        .unwrap();
        assert_eq!(re.cause(), Some(200));
        assert_eq!(re.text().as_deref(), Some(&b"Call completed elsewhere"[..]));
    }
}
