//! The head parser: start line and header fields (folding undone, names mapped), over a `Bytes` buffer.

use super::error::{ParseError, ParseLimits};
use super::header::{HeaderName, Headers};
use super::method::{Method, StatusCode};
use super::scan;
use super::uri::{SipUri, Uri};
use super::UriError;
use bytes::{Bytes, BytesMut};

/// The start line of a message.
#[derive(Debug)]
pub(crate) enum StartLine {
    Request { method: Method, uri: Uri },
    Response { status: StatusCode, reason: Bytes },
}

/// Position of the end of the header block: the index just past the empty line (`CRLF CRLF`), searched from `from`.
pub(crate) fn find_head_end(
    finder: &memchr::memmem::Finder<'_>,
    buf: &[u8],
    from: usize,
) -> Option<usize> {
    let hay = buf.get(from..)?;
    finder.find(hay).map(|i| from + i + 4)
}

/// The searcher for `CRLF CRLF`.
pub(crate) fn head_end_finder() -> memchr::memmem::Finder<'static> {
    memchr::memmem::Finder::new(b"\r\n\r\n")
}

/// Number of leading CRLF pairs (keep-alives and stray line ends before a start line, RFC 3261 §7.5).
pub(crate) fn leading_crlf(buf: &[u8]) -> usize {
    let mut i = 0;
    while buf.get(i..i + 2) == Some(b"\r\n") {
        i += 2;
    }
    i
}

/// Parses the start line and header fields of the message starting at `from` in `buf`, up to and including the
/// empty line. Returns them with the offset just past the empty line (where the body starts).
pub(crate) fn parse_head(
    buf: &Bytes,
    from: usize,
    limits: &ParseLimits,
) -> Result<(StartLine, Headers, usize), ParseError> {
    let mut lines = Lines {
        buf,
        pos: from,
        line_no: 0,
    };
    let (s, e) = lines.next_line(limits)?;
    let start = parse_start_line(buf, buf.get(s..e).unwrap_or_default())?;
    let mut headers = Headers::with_capacity(20);
    loop {
        let (s, e) = lines.next_line(limits)?;
        if s == e {
            return Ok((start, headers, lines.pos));
        }
        let line_no = lines.line_no;
        if headers.len() >= limits.max_headers {
            return Err(ParseError::TooManyHeaders {
                max: limits.max_headers,
            });
        }
        let line = buf.get(s..e).unwrap_or_default();
        let colon = memchr::memchr(b':', line).ok_or(ParseError::HeaderLine { line: line_no })?;
        let raw_name = line.get(..colon).unwrap_or_default();
        // a header name has no leading whitespace (that would be a continuation line) and is a token
        if raw_name.first().is_none_or(|&b| scan::is_ws(b)) {
            return Err(ParseError::HeaderLine { line: line_no });
        }
        let name_end = raw_name
            .iter()
            .rposition(|&b| !scan::is_ws(b))
            .map_or(0, |i| i + 1);
        let name_bytes = raw_name.get(..name_end).unwrap_or_default();
        let name = HeaderName::from_slice(name_bytes, || buf.slice(s..s + name_end))
            .ok_or(ParseError::HeaderLine { line: line_no })?;
        let value = scan::trim(line.get(colon + 1..).unwrap_or_default());
        let value = if lines.peek_is_ws() {
            // Folded continuation lines: join with a single SP (RFC 3261 §7.3.1). The only copy the parser makes.
            let mut f = BytesMut::from(value);
            while lines.peek_is_ws() {
                let (cs, ce) = lines.next_line(limits)?;
                let piece = scan::trim(buf.get(cs..ce).unwrap_or_default());
                if !piece.is_empty() {
                    if !f.is_empty() {
                        f.extend_from_slice(b" ");
                    }
                    f.extend_from_slice(piece);
                }
                if f.len() > limits.max_line {
                    return Err(ParseError::LineTooLong {
                        max: limits.max_line,
                    });
                }
            }
            f.freeze()
        } else {
            buf.slice_ref(value)
        };
        headers.push(name, value);
    }
}

/// Iterates CRLF-terminated lines, as offsets into the buffer.
struct Lines<'a> {
    buf: &'a Bytes,
    pos: usize,
    /// 1-based number of the last line returned.
    line_no: usize,
}

impl Lines<'_> {
    /// The next line's `(start, end)` without its CRLF. A bare CR or LF is an error; running out of input before a
    /// line end is [`ParseError::Truncated`].
    fn next_line(&mut self, limits: &ParseLimits) -> Result<(usize, usize), ParseError> {
        self.line_no += 1;
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(i) = memchr::memchr2(b'\r', b'\n', rest) else {
            return Err(if rest.len() > limits.max_line {
                ParseError::LineTooLong {
                    max: limits.max_line,
                }
            } else {
                ParseError::Truncated
            });
        };
        if i > limits.max_line {
            return Err(ParseError::LineTooLong {
                max: limits.max_line,
            });
        }
        match (rest.get(i), rest.get(i + 1)) {
            (Some(b'\r'), Some(b'\n')) => {}
            (Some(b'\r'), None) => return Err(ParseError::Truncated),
            _ => return Err(ParseError::HeaderLine { line: self.line_no }),
        }
        let start = self.pos;
        self.pos += i + 2;
        Ok((start, start + i))
    }

    fn peek_is_ws(&self) -> bool {
        self.buf.get(self.pos).is_some_and(|&b| scan::is_ws(b))
    }
}

fn is_sip_version(v: &[u8]) -> bool {
    scan::eq_ic(v, b"SIP/2.0")
}

/// `SIP/x.y` of another version.
fn looks_like_version(v: &[u8]) -> bool {
    v.len() > 4 && scan::eq_ic(v.get(..4).unwrap_or_default(), b"SIP/")
}

fn parse_start_line(buf: &Bytes, line: &[u8]) -> Result<StartLine, ParseError> {
    if line.get(..4).is_some_and(|p| scan::eq_ic(p, b"SIP/")) {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp = memchr::memchr(b' ', line).ok_or(ParseError::StartLine)?;
        let version = line.get(..sp).unwrap_or_default();
        if !is_sip_version(version) {
            return Err(ParseError::Version);
        }
        let code = line.get(sp + 1..sp + 4).ok_or(ParseError::StatusCode)?;
        if !code.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::StatusCode);
        }
        let status = scan::parse_u16(code)
            .and_then(StatusCode::new)
            .ok_or(ParseError::StatusCode)?;
        let reason = match line.get(sp + 4) {
            None => Bytes::new(),
            Some(b' ') => buf.slice_ref(line.get(sp + 5..).unwrap_or_default()),
            Some(_) => return Err(ParseError::StatusCode),
        };
        return Ok(StartLine::Response { status, reason });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::StartLine)?;
    let m = line.get(..sp1).unwrap_or_default();
    let method = Method::from_slice(m, || buf.slice_ref(m)).ok_or(ParseError::Method)?;
    let rest = line.get(sp1 + 1..).unwrap_or_default();
    let sp2 = memchr::memchr(b' ', rest).ok_or(ParseError::StartLine)?;
    let uri_bytes = rest.get(..sp2).unwrap_or_default();
    let version = scan::trim(rest.get(sp2 + 1..).unwrap_or_default());
    if !is_sip_version(version) {
        return Err(if looks_like_version(version) {
            ParseError::Version
        } else {
            ParseError::StartLine
        });
    }
    if uri_bytes.is_empty() {
        return Err(ParseError::StartLine);
    }
    let uri = Uri::parse_in(buf, uri_bytes).map_err(ParseError::RequestUri)?;
    if let Uri::Sip(SipUri {
        headers: Some(_), ..
    }) = uri
    {
        // RFC 3261 §19.1.1: headers are not allowed in a Request-URI.
        return Err(ParseError::RequestUri(UriError::Headers));
    }
    Ok(StartLine::Request { method, uri })
}
