//! Message framing: one message per UDP datagram, or a byte stream (TCP/TLS) cut into messages by Content-Length.

use super::error::{ParseError, ParseLimits};
use super::header::Headers;
use super::parse::{self, StartLine};
use super::{Message, Request, Response};
use bytes::{Buf, Bytes, BytesMut};

fn assemble(start: StartLine, headers: Headers, body: Bytes) -> Message {
    match start {
        StartLine::Request { method, uri } => Message::Request(Request {
            method,
            uri,
            headers,
            body,
        }),
        StartLine::Response { status, reason } => Message::Response(Response {
            status,
            reason,
            headers,
            body,
        }),
    }
}

pub(crate) fn parse_datagram(data: Bytes, limits: &ParseLimits) -> Result<Message, ParseError> {
    if data.len() > limits.max_message {
        return Err(ParseError::MessageTooLarge {
            len: data.len(),
            max: limits.max_message,
        });
    }
    let skip = parse::leading_crlf(&data);
    let (start, headers, head_end) = parse::parse_head(&data, skip, limits)?;
    let available = data.len() - head_end;
    let body = match headers.content_length()? {
        Some(n) if n > available => {
            return Err(ParseError::BodyTruncated {
                declared: n,
                available,
            })
        }
        Some(n) => data.slice(head_end..head_end + n),
        None => data.slice(head_end..),
    };
    Ok(assemble(start, headers, body))
}

/// Cuts a byte stream (TCP, TLS) into messages (RFC 3261 §18.3): push received bytes with [`StreamFramer::push`],
/// then call [`StreamFramer::pop`] until it returns `Ok(None)`.
///
/// CRLF keep-alives between messages are skipped. Content-Length is mandatory. A message larger than
/// [`ParseLimits::max_message`] (or a header block that does not end within it) is an error; after an error the
/// framer stays failed and the connection should be closed, since the stream can no longer be resynchronised.
/// The buffer never holds more than `max_message` plus one pushed chunk.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    limits: ParseLimits,
    /// Where to resume searching for the end of the header block.
    scanned: usize,
    /// A parsed head waiting for its body: start line, headers, body length.
    pending: Option<(StartLine, Headers, usize)>,
    failed: Option<ParseError>,
    finder: memchr::memmem::Finder<'static>,
}

impl Default for StreamFramer {
    fn default() -> Self {
        StreamFramer::new(ParseLimits::default())
    }
}

impl StreamFramer {
    /// A framer with the given limits.
    pub fn new(limits: ParseLimits) -> Self {
        StreamFramer {
            buf: BytesMut::new(),
            limits,
            scanned: 0,
            pending: None,
            failed: None,
            finder: parse::head_end_finder(),
        }
    }

    /// Appends received bytes. Fails if the buffer would exceed twice the message limit (call [`StreamFramer::pop`]
    /// after every push) or if the framer already failed.
    pub fn push(&mut self, data: &[u8]) -> Result<(), ParseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let cap = self.limits.max_message.saturating_mul(2);
        let len = self.buf.len().saturating_add(data.len());
        if len > cap {
            return self.fail(ParseError::MessageTooLarge {
                len,
                max: self.limits.max_message,
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Octets buffered and not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn fail<T>(&mut self, e: ParseError) -> Result<T, ParseError> {
        self.failed = Some(e.clone());
        self.buf = BytesMut::new();
        self.pending = None;
        Err(e)
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn pop(&mut self) -> Result<Option<Message>, ParseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pending.is_none() {
            let skip = parse::leading_crlf(&self.buf);
            if skip > 0 {
                self.buf.advance(skip);
                self.scanned = 0;
            }
            let from = self.scanned.saturating_sub(3);
            let Some(head_end) = parse::find_head_end(&self.finder, &self.buf, from) else {
                self.scanned = self.buf.len();
                if self.buf.len() > self.limits.max_message {
                    let len = self.buf.len();
                    return self.fail(ParseError::MessageTooLarge {
                        len,
                        max: self.limits.max_message,
                    });
                }
                return Ok(None);
            };
            if head_end > self.limits.max_message {
                return self.fail(ParseError::MessageTooLarge {
                    len: head_end,
                    max: self.limits.max_message,
                });
            }
            let head = self.buf.split_to(head_end).freeze();
            self.scanned = 0;
            let (start, headers) = match parse::parse_head(&head, 0, &self.limits) {
                Ok((start, headers, _)) => (start, headers),
                Err(e) => return self.fail(e),
            };
            let body_len = match headers.content_length() {
                Ok(Some(n)) => n,
                Ok(None) => return self.fail(ParseError::MissingContentLength),
                Err(e) => return self.fail(e),
            };
            match head_end.checked_add(body_len) {
                Some(total) if total <= self.limits.max_message => {}
                total => {
                    let len = total.unwrap_or(usize::MAX);
                    return self.fail(ParseError::MessageTooLarge {
                        len,
                        max: self.limits.max_message,
                    });
                }
            }
            self.pending = Some((start, headers, body_len));
        }
        let ready = self
            .pending
            .as_ref()
            .is_some_and(|(_, _, n)| self.buf.len() >= *n);
        if !ready {
            return Ok(None);
        }
        let Some((start, headers, n)) = self.pending.take() else {
            return Ok(None);
        };
        let body = self.buf.split_to(n).freeze();
        Ok(Some(assemble(start, headers, body)))
    }
}
