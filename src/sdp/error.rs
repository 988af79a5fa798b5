//! SDP errors: parse errors carry the 1-based line number and what was wrong with it.

/// What was wrong with one SDP line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LineProblem {
    /// Not of the form `x=value` with `x` a letter.
    Syntax,
    /// Not valid UTF-8.
    NotUtf8,
    /// The first line is not `v=0`.
    BadVersion,
    /// `o=` does not have six fields with numeric id/version and IN IP4/IP6.
    BadOrigin,
    /// `c=` is not `IN IP4|IP6 <address>`, or the address does not match its type.
    BadConnection,
    /// `t=` is not two integers.
    BadTiming,
    /// `m=` is not `<media> <port>[/<n>] <proto> <fmt>...`.
    BadMedia,
    /// A known attribute with a malformed value.
    BadAttribute(AttributeKind),
    /// A line that may appear once (`v=`, `o=`, `s=`, `c=` per level, `t=`) appeared twice.
    Duplicate(char),
    /// A session-level line after the first `m=` line that only belongs at session level (`o=`, `s=`, `t=`).
    Misplaced(char),
}

/// Attributes whose values we check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttributeKind {
    /// `a=rtpmap`
    RtpMap,
    /// `a=fmtp`
    Fmtp,
    /// `a=ptime`
    Ptime,
    /// `a=maxptime`
    MaxPtime,
    /// `a=rtcp`
    Rtcp,
    /// A flag attribute (`a=rtcp-mux`, `a=sendrecv`, ...) that was given a value.
    Flag,
}

/// Errors from parsing SDP and from offer/answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is larger than [`super::MAX_SDP_BYTES`].
    #[error("SDP too large: {len} bytes (max {max})")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// More lines than [`super::MAX_SDP_LINES`].
    #[error("SDP has more than {max} lines")]
    TooManyLines {
        /// The cap.
        max: usize,
    },
    /// A malformed line.
    #[error("SDP line {line}: {problem:?}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        problem: LineProblem,
    },
    /// A required line (`v=`, `o=`, `s=`) is missing.
    #[error("SDP is missing its {field}= line")]
    Missing {
        /// The line type letter.
        field: char,
    },
    /// The offer has no audio m-line we could use.
    #[error("no usable audio stream")]
    NoAudio,
    /// No codec in common on any audio m-line.
    #[error("no codec in common")]
    NoCommonCodec,
    /// The chosen audio stream has no connection address (neither media- nor session-level `c=`).
    #[error("m-line {media} has no connection address")]
    NoConnection {
        /// Index of the m-line.
        media: usize,
    },
    /// The answer does not have as many m-lines as the offer (RFC 3264 §6).
    #[error("answer has {answer} m-lines, offer had {offer}")]
    MediaCountMismatch {
        /// m-lines in the offer.
        offer: usize,
        /// m-lines in the answer.
        answer: usize,
    },
    /// The answer rejected (port 0) every audio stream we offered.
    #[error("answer rejected every audio stream")]
    Rejected,
}
