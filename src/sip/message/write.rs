//! Serialisation. Header values are written as stored; Content-Length is always rewritten from the body.

use super::header::{HeaderName, Headers};
use super::{Request, Response};
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt::Write as _;

fn write_headers(headers: &Headers, body: &Bytes, out: &mut BytesMut) {
    let mut wrote_length = false;
    for (name, value) in headers.iter() {
        if *name == HeaderName::ContentLength {
            if !wrote_length {
                write_content_length(body.len(), out);
                wrote_length = true;
            }
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
    if !wrote_length {
        write_content_length(body.len(), out);
    }
    out.put_slice(b"\r\n");
    out.put_slice(body);
}

fn write_content_length(len: usize, out: &mut BytesMut) {
    // fmt::Write for BytesMut never fails.
    let _ = write!(out, "Content-Length: {len}\r\n");
}

impl Request {
    /// Writes the request (Content-Length from the body).
    pub fn write(&self, out: &mut BytesMut) {
        out.reserve(256 + self.body.len());
        out.put_slice(self.method.as_str().as_bytes());
        out.put_u8(b' ');
        self.uri.write(out);
        out.put_slice(b" SIP/2.0\r\n");
        write_headers(&self.headers, &self.body, out);
    }
    /// The request in wire form.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.write(&mut b);
        b.freeze()
    }
}

impl Response {
    /// Writes the response (Content-Length from the body).
    pub fn write(&self, out: &mut BytesMut) {
        out.reserve(256 + self.body.len());
        let _ = write!(out, "SIP/2.0 {} ", self.status.as_u16());
        out.put_slice(&self.reason);
        out.put_slice(b"\r\n");
        write_headers(&self.headers, &self.body, out);
    }
    /// The response in wire form.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.write(&mut b);
        b.freeze()
    }
}
