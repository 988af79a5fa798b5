//! Building requests and responses: constructors, typed header setters, RFC 3261 §8.2.6 responses.

use super::header::HeaderName;
use super::method::{Method, StatusCode};
use super::typed::{CSeq, NameAddr, Via};
use super::uri::Uri;
use super::{Headers, Request, Response};
use bytes::Bytes;

impl Request {
    /// A request with no headers and an empty body.
    pub fn new(method: Method, uri: Uri) -> Request {
        Request {
            method,
            uri,
            headers: Headers::with_capacity(12),
            body: Bytes::new(),
        }
    }
    /// Adds a Via on top of the others.
    pub fn push_via(&mut self, via: &Via) {
        self.headers.push_front(HeaderName::Via, via.encode());
    }
    /// Sets From.
    pub fn set_from(&mut self, from: &NameAddr) {
        self.headers.set(HeaderName::From, from.encode());
    }
    /// Sets To.
    pub fn set_to(&mut self, to: &NameAddr) {
        self.headers.set(HeaderName::To, to.encode());
    }
    /// Sets Call-ID.
    pub fn set_call_id(&mut self, call_id: impl Into<Bytes>) {
        self.headers.set(HeaderName::CallId, call_id.into());
    }
    /// Sets CSeq.
    pub fn set_cseq(&mut self, seq: u32, method: Method) {
        self.headers
            .set(HeaderName::CSeq, CSeq { seq, method }.encode());
    }
    /// Sets Max-Forwards.
    pub fn set_max_forwards(&mut self, n: u8) {
        self.headers
            .set(HeaderName::MaxForwards, Bytes::from(n.to_string()));
    }
    /// Sets Contact to one value.
    pub fn set_contact(&mut self, contact: &NameAddr) {
        self.headers.set(HeaderName::Contact, contact.encode());
    }
    /// Sets the body and its Content-Type (Content-Length is written from the body).
    pub fn set_body(&mut self, content_type: &str, body: impl Into<Bytes>) {
        self.headers.set(
            HeaderName::ContentType,
            Bytes::copy_from_slice(content_type.as_bytes()),
        );
        self.body = body.into();
    }
}

impl Response {
    /// A response with the default reason phrase, no headers and an empty body.
    pub fn new(status: StatusCode) -> Response {
        Response {
            status,
            reason: Bytes::from_static(status.default_reason().as_bytes()),
            headers: Headers::with_capacity(12),
            body: Bytes::new(),
        }
    }

    /// A response to `req` (RFC 3261 §8.2.6.2): copies every Via (in order), From, To, Call-ID and CSeq, and for a
    /// 100 Trying the Timestamp (§8.2.6.1).
    /// Add a To tag with [`Response::set_to_tag`] when the response creates or belongs to a dialog.
    pub fn for_request(req: &Request, status: StatusCode) -> Response {
        let mut r = Response::new(status);
        let trying = status == StatusCode::TRYING;
        for (name, value) in req.headers.iter() {
            if (trying && *name == HeaderName::Timestamp)
                || matches!(
                    name,
                    HeaderName::Via
                        | HeaderName::From
                        | HeaderName::To
                        | HeaderName::CallId
                        | HeaderName::CSeq
                )
            {
                r.headers.push(name.clone(), value.clone());
            }
        }
        r
    }

    /// Sets the tag of the To header: appended if there is none, replaced otherwise. Does nothing without a To.
    pub fn set_to_tag(&mut self, tag: &str) {
        let Some(to) = self.headers.get(&HeaderName::To).cloned() else {
            return;
        };
        let new = match NameAddr::parse(&to) {
            Ok(mut na) if na.tag().is_some() => {
                na.set_tag(Bytes::copy_from_slice(tag.as_bytes()));
                na.encode()
            }
            _ => {
                let mut v = Vec::with_capacity(to.len() + 5 + tag.len());
                v.extend_from_slice(&to);
                v.extend_from_slice(b";tag=");
                v.extend_from_slice(tag.as_bytes());
                Bytes::from(v)
            }
        };
        self.headers.set(HeaderName::To, new);
    }

    /// Sets the body and its Content-Type.
    pub fn set_body(&mut self, content_type: &str, body: impl Into<Bytes>) {
        self.headers.set(
            HeaderName::ContentType,
            Bytes::copy_from_slice(content_type.as_bytes()),
        );
        self.body = body.into();
    }
}
