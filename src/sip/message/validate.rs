//! Strict header checking, a user agent's request validation (which status to answer), and stateless error
//! responses for requests too malformed to parse.

use super::error::{ParseError, ValueError};
use super::header::{HeaderName, Headers};
use super::method::{Method, StatusCode};
use super::parse;
use super::scan;
use super::typed::{MediaType, NameAddr};
use super::{Message, Request, Response};
use bytes::{Bytes, BytesMut};

/// Headers that may appear at most once.
const SINGLE: &[HeaderName] = &[
    HeaderName::CallId,
    HeaderName::CSeq,
    HeaderName::From,
    HeaderName::To,
    HeaderName::MaxForwards,
    HeaderName::ContentLength,
    HeaderName::ContentType,
    HeaderName::Expires,
    HeaderName::Date,
    HeaderName::MinExpires,
    HeaderName::RSeq,
    HeaderName::RAck,
    HeaderName::SessionExpires,
    HeaderName::MinSe,
];

fn hdr(name: HeaderName) -> impl Fn(ValueError) -> ParseError {
    move |e| ParseError::header(name.clone(), e)
}

/// See [`Message::check`].
pub(crate) fn check(msg: &Message) -> Result<(), ParseError> {
    match msg {
        Message::Request(r) => check_parts(&r.headers, Some(&r.method)),
        Message::Response(r) => check_parts(&r.headers, None),
    }
}

/// Checks headers; `method` is the request method (CSeq must carry the same), `None` for a response.
fn check_parts(h: &Headers, method: Option<&Method>) -> Result<(), ParseError> {
    for name in SINGLE {
        if h.count(name) > 1 {
            return Err(ParseError::Duplicate { name: name.clone() });
        }
    }
    h.via()?;
    for (name, f) in [
        (HeaderName::From, Headers::from as fn(&Headers) -> _),
        (HeaderName::To, Headers::to),
    ] {
        if h.contains(&name) {
            f(h)?;
        }
    }
    if h.contains(&HeaderName::CallId) {
        h.call_id()?;
    }
    if h.contains(&HeaderName::CSeq) {
        let cseq = h.cseq()?;
        if method.is_some_and(|m| *m != cseq.method) {
            return Err(ParseError::CSeqMethodMismatch);
        }
    }
    h.max_forwards()?;
    h.content_length()?;
    h.content_type()?;
    h.expires()?;
    if !h.is_contact_star() {
        h.contacts()?;
    }
    h.route()?;
    h.record_route()?;
    h.p_asserted_identity()?;
    h.require()?;
    h.proxy_require()?;
    h.supported()?;
    h.unsupported()?;
    h.session_expires()?;
    h.min_se()?;
    h.rseq()?;
    h.rack()?;
    h.reason()?;
    if let Some(d) = h.get(&HeaderName::Date) {
        check_date(d).map_err(hdr(HeaderName::Date))?;
    }
    if let Some(r) = h.get(&HeaderName::RetryAfter) {
        let digits = r.iter().take_while(|b| b.is_ascii_digit()).count();
        scan::parse_u32(r.get(..digits).unwrap_or_default()).ok_or(ParseError::header(
            HeaderName::RetryAfter,
            ValueError::Number,
        ))?;
    }
    for w in h.values(&HeaderName::Warning) {
        // warn-code = 3DIGIT SP warn-agent SP warn-text
        let ok = w.len() > 4
            && w.get(..3).is_some_and(|c| c.iter().all(u8::is_ascii_digit))
            && w.get(3) == Some(&b' ');
        if !ok {
            return Err(ParseError::header(HeaderName::Warning, ValueError::Number));
        }
    }
    Ok(())
}

/// RFC 1123 date in GMT: `Sat, 13 Nov 2010 23:29:00 GMT`.
fn check_date(d: &[u8]) -> Result<(), ValueError> {
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let parts: Vec<&[u8]> = d.split(|&b| b == b' ').collect();
    let digits = |s: &[u8], n: usize| s.len() == n && s.iter().all(u8::is_ascii_digit);
    let ok = match parts.as_slice() {
        [day, dd, mon, yyyy, time, gmt] => {
            day.strip_suffix(b",").is_some_and(|d| DAYS.contains(&d))
                && digits(dd, 2)
                && MONTHS.contains(mon)
                && digits(yyyy, 4)
                && time.len() == 8
                && time.split(|&b| b == b':').all(|p| digits(p, 2))
                && *gmt == b"GMT"
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ValueError::Date)
    }
}

/// What a user agent accepts; [`validate_request`] answers anything else with an error status.
#[derive(Debug, Clone)]
pub struct UaPolicy {
    /// Request-URI schemes served (default `sip`, `sips`); others get 416.
    pub schemes: Vec<String>,
    /// Option tags understood (default `100rel`, `timer`, `replaces`); an unknown one in Require or Proxy-Require
    /// gets 420.
    pub supported: Vec<String>,
    /// Body types accepted and produced (default `application/sdp`); others get 415.
    pub content_types: Vec<(String, String)>,
    /// Answer Max-Forwards: 0 with 483 (RFC 4475 §3.3.11). Default true.
    pub reject_zero_max_forwards: bool,
}

impl Default for UaPolicy {
    fn default() -> Self {
        UaPolicy {
            schemes: vec!["sip".into(), "sips".into()],
            supported: vec!["100rel".into(), "timer".into(), "replaces".into()],
            content_types: vec![("application".into(), "sdp".into())],
            reject_zero_max_forwards: true,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// A header does not follow its grammar (RFC 4475 §3.1.2).
    #[error("malformed request: {0}")]
    Malformed(ParseError),
    /// A mandatory header (Via, From, To, Call-ID, CSeq) is missing.
    #[error("missing {0} header")]
    MissingHeader(HeaderName),
    /// Max-Forwards is 0.
    #[error("Max-Forwards is zero")]
    TooManyHops,
    /// The Request-URI scheme is not served.
    #[error("unsupported Request-URI scheme")]
    UnsupportedScheme,
    /// Require or Proxy-Require lists option tags we do not support (they go in Unsupported).
    #[error("unsupported extensions required")]
    BadExtension(Vec<Bytes>),
    /// The body type, or every type the sender accepts, is not one we handle.
    #[error("unsupported media type")]
    UnsupportedMediaType,
}

/// A refused request: the status to answer and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct Rejection {
    /// The status to answer with.
    pub status: StatusCode,
    /// Why.
    pub reason: RejectReason,
}

impl Rejection {
    fn new(status: StatusCode, reason: RejectReason) -> Self {
        Rejection { status, reason }
    }

    /// The response to send: [`Response::for_request`] with the status, a To tag, `Unsupported` for 420 and
    /// `Accept` for 415 (RFC 3261 §8.2.2-8.2.3).
    pub fn response(&self, req: &Request, policy: &UaPolicy, to_tag: &str) -> Response {
        let mut r = Response::for_request(req, self.status);
        if let Ok(to) = req.headers.to() {
            if to.tag().is_none() {
                r.set_to_tag(to_tag);
            }
        }
        match &self.reason {
            RejectReason::BadExtension(tags) => {
                let joined = tags
                    .iter()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ");
                r.headers.push(HeaderName::Unsupported, Bytes::from(joined));
            }
            RejectReason::UnsupportedMediaType => {
                let accept = policy
                    .content_types
                    .iter()
                    .map(|(t, s)| format!("{t}/{s}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                r.headers.push(HeaderName::Accept, Bytes::from(accept));
            }
            _ => {}
        }
        r
    }
}

fn media_ok(policy: &UaPolicy, m: &MediaType) -> bool {
    policy.content_types.iter().any(|(t, s)| m.is(t, s))
}

/// Checks a received request as a user agent server (RFC 3261 §8.2): syntax ([`Message::check`], 400),
/// mandatory headers (400), Max-Forwards (483), Request-URI scheme (416), Require/Proxy-Require (420), body type
/// and Accept (415). `Ok` means the request can be processed.
pub fn validate_request(req: &Request, policy: &UaPolicy) -> Result<(), Rejection> {
    let bad = |e| Rejection::new(StatusCode::BAD_REQUEST, RejectReason::Malformed(e));
    let h = &req.headers;
    check_parts(h, Some(&req.method)).map_err(bad)?;
    for name in [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
    ] {
        if !h.contains(&name) {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                RejectReason::MissingHeader(name),
            ));
        }
    }
    if policy.reject_zero_max_forwards && h.max_forwards().map_err(bad)? == Some(0) {
        return Err(Rejection::new(
            StatusCode::TOO_MANY_HOPS,
            RejectReason::TooManyHops,
        ));
    }
    if !policy
        .schemes
        .iter()
        .any(|s| s.eq_ignore_ascii_case(req.uri.scheme()))
    {
        return Err(Rejection::new(
            StatusCode::UNSUPPORTED_URI_SCHEME,
            RejectReason::UnsupportedScheme,
        ));
    }
    if !matches!(req.method, Method::Ack | Method::Cancel) {
        let mut unknown: Vec<Bytes> = Vec::new();
        for tag in h
            .require()
            .map_err(bad)?
            .into_iter()
            .chain(h.proxy_require().map_err(bad)?)
        {
            if !policy
                .supported
                .iter()
                .any(|s| scan::eq_ic(s.as_bytes(), &tag))
            {
                unknown.push(tag);
            }
        }
        if !unknown.is_empty() {
            return Err(Rejection::new(
                StatusCode::BAD_EXTENSION,
                RejectReason::BadExtension(unknown),
            ));
        }
    }
    let media = Rejection::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        RejectReason::UnsupportedMediaType,
    );
    if !req.body.is_empty() {
        match h.content_type().map_err(bad)? {
            Some(m) if media_ok(policy, &m) || m.ty.eq_ignore_ascii_case(b"multipart") => {}
            _ => return Err(media),
        }
    }
    if matches!(req.method, Method::Invite | Method::Update | Method::Prack)
        && h.contains(&HeaderName::Accept)
    {
        let accepts_ours = h.values(&HeaderName::Accept).any(|a| {
            let Ok(m) = MediaType::parse(&a) else {
                return false;
            };
            media_ok(policy, &m)
                || (&m.ty[..] == b"*" || media_ok_ty(policy, &m.ty)) && &m.subtype[..] == b"*"
        });
        // An empty Accept line means "no body" and is acceptable for requests without one.
        let empty = h.get_all(&HeaderName::Accept).all(|v| v.is_empty());
        if !accepts_ours && !empty {
            return Err(media);
        }
    }
    Ok(())
}

fn media_ok_ty(policy: &UaPolicy, ty: &[u8]) -> bool {
    policy
        .content_types
        .iter()
        .any(|(t, _)| scan::eq_ic(t.as_bytes(), ty))
}

/// For a request that failed to parse, builds the stateless error response (400, or 505 for a wrong version,
/// 513 for an oversize message) from whatever Via, From, To, Call-ID and CSeq can be salvaged from `raw`, so the
/// sender stops retransmitting. `None` if `raw` is a response, an ACK, or lacks one of those headers. `to_tag` is
/// added to To when it has none.
pub fn error_response_for(raw: &Bytes, err: &ParseError, to_tag: &str) -> Option<Response> {
    let skip = parse::leading_crlf(raw);
    let end = parse::find_head_end(&parse::head_end_finder(), raw, skip)
        .unwrap_or(raw.len())
        .min(raw.len());
    let head = raw.get(skip..end)?;
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next()?;
    let method_end = first.iter().position(|&b| b == b' ')?;
    let method = first.get(..method_end)?;
    if !scan::is_token_str(method)
        || method == b"ACK"
        || scan::eq_ic(first.get(..4).unwrap_or_default(), b"SIP/")
    {
        return None;
    }
    let status = match err {
        ParseError::Version => StatusCode::VERSION_NOT_SUPPORTED,
        ParseError::MessageTooLarge { .. } => StatusCode::MESSAGE_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut resp = Response::new(status);
    let wanted = [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
    ];
    let mut current: Option<(HeaderName, BytesMut)> = None;
    let flush = |cur: &mut Option<(HeaderName, BytesMut)>, resp: &mut Response| {
        if let Some((n, v)) = cur.take() {
            let v = scan::trim(&v);
            if !v.is_empty() && !v.contains(&b'\r') {
                resp.headers.push(n, Bytes::copy_from_slice(v));
            }
        }
    };
    for line in lines {
        if line.first().is_some_and(|&b| scan::is_ws(b)) {
            if let Some((_, v)) = current.as_mut() {
                v.extend_from_slice(b" ");
                v.extend_from_slice(scan::trim(line));
            }
            continue;
        }
        flush(&mut current, &mut resp);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = scan::trim(line.get(..colon)?);
        let Some(name) = HeaderName::from_bytes(Bytes::copy_from_slice(name)) else {
            continue;
        };
        if wanted.contains(&name) {
            current = Some((name, BytesMut::from(line.get(colon + 1..)?)));
        }
    }
    flush(&mut current, &mut resp);
    for name in &wanted {
        if !resp.headers.contains(name) {
            return None;
        }
    }
    let to = resp.headers.get(&HeaderName::To)?.clone();
    if NameAddr::parse(&to).map_or(true, |n| n.tag().is_none()) && !to_tag.is_empty() {
        resp.set_to_tag(to_tag);
    }
    Some(resp)
}
