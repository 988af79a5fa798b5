//! Typed parse errors and the size limits the parser enforces.

use super::header::HeaderName;

/// Size limits applied while parsing. Anything over a limit is a [`ParseError`], never a large allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest whole message (start line, headers and body) in octets.
    pub max_message: usize,
    /// Most header lines (after unfolding) in one message.
    pub max_headers: usize,
    /// Longest single header line (after unfolding) or start line, in octets.
    pub max_line: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_message: 64 * 1024,
            max_headers: 256,
            max_line: 8 * 1024,
        }
    }
}

/// What was wrong with a URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// No `scheme:` prefix, or the scheme has characters outside RFC 3986's set.
    #[error("missing or invalid scheme")]
    Scheme,
    /// The host part is empty or has characters a host cannot contain.
    #[error("invalid host")]
    Host,
    /// An IPv6 reference `[...]` is unterminated or not a valid IPv6 address.
    #[error("invalid IPv6 reference")]
    Ipv6,
    /// The port is not a decimal number in 0..=65535.
    #[error("invalid port")]
    Port,
    /// The user or password part has a character that must be escaped.
    #[error("invalid user part")]
    User,
    /// A `;param` is malformed.
    #[error("invalid parameter")]
    Param,
    /// A `?header` part is malformed, or present where it is not allowed (Request-URI, bare addr-spec).
    #[error("invalid or misplaced headers component")]
    Headers,
    /// A `%` escape is followed by something other than two hex digits.
    #[error("invalid %-escape")]
    Escape,
    /// Whitespace, control characters or other characters no URI may contain.
    #[error("invalid character in URI")]
    Char,
}

/// What was wrong with a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// The value is empty where the grammar requires content.
    #[error("empty value")]
    Empty,
    /// A number is missing, has non-digits, or overflows its range.
    #[error("invalid or out-of-range number")]
    Number,
    /// A token was expected.
    #[error("expected a token")]
    Token,
    /// A quoted string has no closing quote.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// `<` without `>`, or whitespace inside `<...>`.
    #[error("malformed <...>")]
    Angle,
    /// A display name that is neither a quoted string nor tokens separated by LWS.
    #[error("invalid display name")]
    DisplayName,
    /// An addr-spec with `,`, `;` or `?` not enclosed in `<>`.
    #[error("URI with , ; or ? must be enclosed in <>")]
    NeedsAngleBrackets,
    /// The URI inside the value is invalid.
    #[error("invalid URI: {0}")]
    Uri(UriError),
    /// A `;name=value` parameter is malformed (empty name, stray `;`).
    #[error("invalid parameter")]
    Param,
    /// A `Via` sent-protocol is not `SIP/2.0/transport`.
    #[error("invalid sent-protocol")]
    Protocol,
    /// A method name is not a token.
    #[error("invalid method")]
    Method,
    /// A `Date` that is not an RFC 1123 date in GMT.
    #[error("invalid date")]
    Date,
    /// A comma-separated list has an empty element.
    #[error("empty list element")]
    EmptyElement,
    /// Characters left over after the value's grammar ended.
    #[error("unexpected trailing characters")]
    Trailing,
}

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The message ended before the end of its headers (datagram) or its body.
    #[error("message truncated")]
    Truncated,
    /// The message is larger than [`ParseLimits::max_message`].
    #[error("message of {len} octets exceeds the limit of {max}")]
    MessageTooLarge {
        /// Size seen (or announced by Content-Length).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More header lines than [`ParseLimits::max_headers`].
    #[error("more than {max} header fields")]
    TooManyHeaders {
        /// The limit.
        max: usize,
    },
    /// A line longer than [`ParseLimits::max_line`].
    #[error("line longer than {max} octets")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// The start line is neither `Method SP URI SP SIP/2.0` nor `SIP/2.0 SP code SP reason`.
    #[error("malformed start line")]
    StartLine,
    /// The method of a request line is not a token.
    #[error("invalid method in request line")]
    Method,
    /// The protocol version is not SIP/2.0.
    #[error("unsupported SIP version")]
    Version,
    /// The status code is not three digits in 100..=699.
    #[error("invalid status code")]
    StatusCode,
    /// The Request-URI is invalid.
    #[error("invalid Request-URI: {0}")]
    RequestUri(UriError),
    /// A header line without a colon, with an invalid name, or with control characters.
    #[error("malformed header line {line}")]
    HeaderLine {
        /// 1-based line number within the message.
        line: usize,
    },
    /// A header value does not follow its grammar.
    #[error("invalid {name} header: {error}")]
    Header {
        /// The header.
        name: HeaderName,
        /// What was wrong.
        error: ValueError,
    },
    /// A header that may appear once appears more than once (or with several values).
    #[error("{name} header appears more than once")]
    Duplicate {
        /// The header.
        name: HeaderName,
    },
    /// A header the operation needs is missing.
    #[error("missing {name} header")]
    Missing {
        /// The header.
        name: HeaderName,
    },
    /// Content-Length announces more octets than the datagram carries.
    #[error("Content-Length {declared} exceeds the {available} octets available")]
    BodyTruncated {
        /// Content-Length value.
        declared: usize,
        /// Octets after the header block.
        available: usize,
    },
    /// The CSeq method of a request differs from its request-line method.
    #[error("CSeq method differs from the request method")]
    CSeqMethodMismatch,
    /// A stream-framed message has no Content-Length (RFC 3261 §18.3 makes it mandatory over streams).
    #[error("Content-Length is mandatory on stream transports")]
    MissingContentLength,
}

impl ParseError {
    /// Shorthand for a [`ParseError::Header`].
    pub(crate) fn header(name: HeaderName, error: ValueError) -> Self {
        ParseError::Header { name, error }
    }
}
