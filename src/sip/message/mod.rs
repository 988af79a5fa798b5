//! The SIP message codec: parse a message from a [`bytes::Bytes`] buffer and write it back.
//!
//! # Why our own codec
//!
//! The obvious crate, `rsip`, has been unmaintained since 2022, rejects compact header names (`i:`, `v:`, `m:`)
//! and folded header lines, both of which RFC 3261 requires a receiver to accept (RFC 4475 tests them), and copies
//! every header into `String`s. rappel needs a parser that is zero-copy over the received datagram (`Bytes`
//! slices, one allocation for the header list), strict enough to refuse what RFC 4475 says to refuse, bounded in
//! what it buffers, and never panicking on hostile input. This module is that parser, written from RFC 3261
//! §7, §19, §20 and §25, RFC 5118 (IPv6) and RFC 4475 (torture tests, in `tests/vectors/`).
//!
//! # Layers
//!
//! - **Framing** ([`Message::parse_datagram`], [`StreamFramer`]): finds where a message ends. Over UDP the body
//!   ends at Content-Length (extra octets dropped; no Content-Length means "the rest"); over TCP Content-Length is
//!   mandatory and the buffer is capped.
//! - **Parsing** ([`Message::parse`] and the above): start line (SIP/2.0 only), Request-URI, header lines (folding
//!   undone, compact names mapped, names case-insensitive). Header *values* are kept as raw `Bytes` slices; only
//!   folded values are copied. Lines must end in CRLF (RFC 3261 §7); a bare CR or LF is an error.
//! - **Typed views** ([`Headers::via`], [`Headers::from`], [`Headers::cseq`], ...): parse values on demand;
//!   comma-separated lines are split into separate values.
//! - **Checking** ([`Message::check`]): parses every header rappel understands and enforces single-valued headers:
//!   what RFC 4475 calls malformed.
//! - **Validation** ([`validate_request`]): the user agent's policy (Max-Forwards, Require, URI scheme, Content-Type)
//!   giving the status to answer with, and [`error_response_for`] to answer malformed requests statelessly.
//! - **Writing** ([`Message::write`], [`Message::to_bytes`]): Content-Length is always recomputed from the body.
//!
//! ```
//! use bytes::Bytes;
//! use rappel::sip::message::{Message, Response, StatusCode};
//!
//! let raw = Bytes::from_static(
//!     b"OPTIONS sip:rappel@127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
//!       f: <sip:a@127.0.0.1>;tag=1\r\nt: <sip:rappel@127.0.0.1>\r\ni: abc\r\nCSeq: 7 OPTIONS\r\nl: 0\r\n\r\n",
//! );
//! let msg = Message::parse_datagram(raw).unwrap();
//! let req = msg.as_request().unwrap();
//! assert_eq!(req.headers.cseq().unwrap().seq, 7);
//! assert_eq!(req.headers.top_via().unwrap().port, Some(5070));
//!
//! let mut ok = Response::for_request(req, StatusCode::OK);
//! ok.set_to_tag("x1");
//! let wire = Message::from(ok).to_bytes();
//! assert!(wire.starts_with(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"));
//! ```

mod accessors;
mod build;
mod error;
mod framing;
mod header;
mod method;
mod params;
mod parse;
mod scan;
mod typed;
mod uri;
mod validate;
mod write;

pub use error::{ParseError, ParseLimits, UriError, ValueError};
pub use framing::StreamFramer;
pub use header::{HeaderName, Headers};
pub use method::{Method, StatusClass, StatusCode};
pub use params::{Param, Params};
pub use typed::{
    CSeq, MediaType, NameAddr, RAck, RPort, Reason, Refresher, SessionExpires, Transport, Via,
};
pub use uri::{unescape, AbsoluteUri, Host, SipUri, Uri};
pub use validate::{error_response_for, validate_request, RejectReason, Rejection, UaPolicy};

use bytes::{Bytes, BytesMut};

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The Request-URI.
    pub uri: Uri,
    /// The header fields.
    pub headers: Headers,
    /// The body (possibly empty).
    pub body: Bytes,
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: StatusCode,
    /// The reason phrase as received (possibly empty; may be UTF-8).
    pub reason: Bytes,
    /// The header fields.
    pub headers: Headers,
    /// The body (possibly empty).
    pub body: Bytes,
}

/// A SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

impl Message {
    /// The header fields.
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }
    /// The header fields, mutably.
    pub fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => &mut r.headers,
            Message::Response(r) => &mut r.headers,
        }
    }
    /// The body.
    pub fn body(&self) -> &Bytes {
        match self {
            Message::Request(r) => &r.body,
            Message::Response(r) => &r.body,
        }
    }
    /// The request, if this is one.
    pub fn as_request(&self) -> Option<&Request> {
        match self {
            Message::Request(r) => Some(r),
            Message::Response(_) => None,
        }
    }
    /// The response, if this is one.
    pub fn as_response(&self) -> Option<&Response> {
        match self {
            Message::Response(r) => Some(r),
            Message::Request(_) => None,
        }
    }

    /// Parses a message received as one UDP datagram, with default limits (see [`Message::parse_datagram_with`]).
    pub fn parse_datagram(data: Bytes) -> Result<Message, ParseError> {
        framing::parse_datagram(data, &ParseLimits::default())
    }

    /// Parses a datagram: leading CRLFs are skipped, the body ends at Content-Length (extra octets are dropped,
    /// RFC 3261 §18.3), a missing Content-Length means the body is the rest of the datagram.
    pub fn parse_datagram_with(data: Bytes, limits: &ParseLimits) -> Result<Message, ParseError> {
        framing::parse_datagram(data, limits)
    }

    /// Parses one complete message (same as [`Message::parse_datagram`]).
    pub fn parse(data: Bytes) -> Result<Message, ParseError> {
        Message::parse_datagram(data)
    }

    /// Parses every header value rappel has a typed view for and enforces headers that may appear once: the
    /// strict syntax check RFC 4475 expects of a receiver. [`validate_request`] calls it first.
    pub fn check(&self) -> Result<(), ParseError> {
        validate::check(self)
    }

    /// Writes the message; Content-Length is always set to the body length.
    pub fn write(&self, out: &mut BytesMut) {
        match self {
            Message::Request(r) => r.write(out),
            Message::Response(r) => r.write(out),
        }
    }

    /// The message in wire form.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(512 + self.body().len());
        self.write(&mut b);
        b.freeze()
    }
}

impl From<Request> for Message {
    fn from(r: Request) -> Message {
        Message::Request(r)
    }
}

impl From<Response> for Message {
    fn from(r: Response) -> Message {
        Message::Response(r)
    }
}

/// True for a datagram that only carries CRLFs (a keep-alive, RFC 5626 §4.4.1), which is not a parse error.
pub fn is_keepalive(data: &[u8]) -> bool {
    !data.is_empty() && data.iter().all(|&b| b == b'\r' || b == b'\n')
}
