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
pub(crate) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let hay = buf.get(from..)?;
    memchr::memmem::find(hay, b"\r\n\r\n").map(|i| from + i + 4)
}

/// Number of leading CRLF pairs (keep-alives and stray line ends before a start line, RFC 3261 §7.5).
pub(crate) fn leading_crlf(buf: &[u8]) -> usize {
    let mut i = 0;
    while buf.get(i..i + 2) == Some(b"\r\n") {
        i += 2;
    }
    i
}

/// Parses `head` (start line and header lines, ending with the empty line) into a start line and headers.
pub(crate) fn parse_head(
    head: &Bytes,
    limits: &ParseLimits,
) -> Result<(StartLine, Headers), ParseError> {
    let mut lines = Lines {
        buf: head,
        pos: 0,
        line_no: 0,
    };
    let first = lines.next_line(limits)?.ok_or(ParseError::StartLine)?;
    let start = parse_start_line(head, &first)?;
    let mut headers = Headers::with_capacity(16);
    while let Some(line) = lines.next_line(limits)? {
        let line_no = lines.line_no;
        if line.is_empty() {
            break;
        }
        if headers.len() >= limits.max_headers {
            return Err(ParseError::TooManyHeaders {
                max: limits.max_headers,
            });
        }
        // Folded continuation lines: join with a single SP (RFC 3261 §7.3.1).
        let mut folded: Option<BytesMut> = None;
        while lines.peek_is_ws() {
            let cont = lines.next_line(limits)?.unwrap_or_default();
            let f = folded.get_or_insert_with(|| BytesMut::from(&line[..]));
            let piece = scan::trim(&cont);
            if !piece.is_empty() {
                f.extend_from_slice(b" ");
                f.extend_from_slice(piece);
            }
            if f.len() > limits.max_line {
                return Err(ParseError::LineTooLong {
                    max: limits.max_line,
                });
            }
        }
        let line = match folded {
            Some(f) => f.freeze(),
            None => line,
        };
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(ParseError::HeaderLine { line: line_no })?;
        let raw_name = line.get(..colon).unwrap_or_default();
        let name_trimmed = scan::trim(raw_name);
        // no leading whitespace on a header name (it would have been a continuation line)
        if raw_name.first().is_some_and(|&b| scan::is_ws(b)) {
            return Err(ParseError::HeaderLine { line: line_no });
        }
        let name = HeaderName::from_bytes(line.slice_ref(name_trimmed))
            .ok_or(ParseError::HeaderLine { line: line_no })?;
        let value = scan::trim(line.get(colon + 1..).unwrap_or_default());
        headers.push(name, line.slice_ref(value));
    }
    Ok((start, headers))
}

/// Iterates CRLF-terminated lines of the head.
struct Lines<'a> {
    buf: &'a Bytes,
    pos: usize,
    /// 1-based number of the last line returned.
    line_no: usize,
}

impl Lines<'_> {
    /// The next line without its CRLF; `None` at the end. A bare CR or LF inside a line is an error.
    fn next_line(&mut self, limits: &ParseLimits) -> Result<Option<Bytes>, ParseError> {
        let rest = match self.buf.get(self.pos..) {
            Some(r) if !r.is_empty() => r,
            _ => return Ok(None),
        };
        self.line_no += 1;
        let lf = memchr::memchr(b'\n', rest).ok_or(ParseError::Truncated)?;
        if lf > limits.max_line {
            return Err(ParseError::LineTooLong {
                max: limits.max_line,
            });
        }
        let line_end = lf
            .checked_sub(1)
            .filter(|&e| rest.get(e) == Some(&b'\r'))
            .ok_or(ParseError::HeaderLine { line: self.line_no })?;
        let line = rest.get(..line_end).unwrap_or_default();
        if memchr::memchr(b'\r', line).is_some() {
            return Err(ParseError::HeaderLine { line: self.line_no });
        }
        let out = self.buf.slice_ref(line);
        self.pos += lf + 1;
        Ok(Some(out))
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

fn parse_start_line(head: &Bytes, line: &Bytes) -> Result<StartLine, ParseError> {
    if line.get(..4).is_some_and(|p| scan::eq_ic(p, b"SIP/")) {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp = line
            .iter()
            .position(|&b| b == b' ')
            .ok_or(ParseError::StartLine)?;
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
            Some(b' ') => head.slice_ref(line.get(sp + 5..).unwrap_or_default()),
            Some(_) => return Err(ParseError::StatusCode),
        };
        return Ok(StartLine::Response { status, reason });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let sp1 = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(ParseError::StartLine)?;
    let method = Method::from_token(line.slice(..sp1)).ok_or(ParseError::Method)?;
    let rest = line.slice(sp1 + 1..);
    let sp2 = rest
        .iter()
        .position(|&b| b == b' ')
        .ok_or(ParseError::StartLine)?;
    let uri_bytes = rest.slice(..sp2);
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
    let uri = Uri::parse_bytes(&uri_bytes).map_err(ParseError::RequestUri)?;
    if let Uri::Sip(SipUri {
        headers: Some(_), ..
    }) = uri
    {
        // RFC 3261 §19.1.1: headers are not allowed in a Request-URI.
        return Err(ParseError::RequestUri(UriError::Headers));
    }
    Ok(StartLine::Request { method, uri })
}
