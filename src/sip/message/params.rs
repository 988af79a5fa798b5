//! `;name=value` parameter lists, used by URIs and by header values (Via, name-addr, Content-Type, ...).

use super::scan::{self, Cursor};
use bytes::{BufMut, Bytes, BytesMut};

/// One parameter: a name and an optional value, both as received (URI parameters keep their %-escapes; header
/// parameter values keep their quotes if they were quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The name (compared case-insensitively).
    pub name: Bytes,
    /// The value, `None` for a flag parameter like `;lr`.
    pub value: Option<Bytes>,
}

/// An ordered list of parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<Param>);

impl Params {
    /// An empty list.
    pub fn new() -> Self {
        Params(Vec::new())
    }
    /// The parameter called `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.0
            .iter()
            .find(|p| scan::eq_ic(&p.name, name.as_bytes()))
    }
    /// The value of `name`, if present with a value.
    pub fn value(&self, name: &str) -> Option<&Bytes> {
        self.get(name).and_then(|p| p.value.as_ref())
    }
    /// True if `name` is present (with or without a value).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    /// Sets `name` to `value`, replacing an existing parameter of that name in place or appending.
    pub fn set(&mut self, name: impl Into<Bytes>, value: Option<Bytes>) {
        let name = name.into();
        match self.0.iter_mut().find(|p| scan::eq_ic(&p.name, &name)) {
            Some(p) => p.value = value,
            None => self.0.push(Param { name, value }),
        }
    }
    /// Removes `name`; returns true if it was present.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|p| !scan::eq_ic(&p.name, name.as_bytes()));
        before != self.0.len()
    }
    /// Iterates in order.
    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.0.iter()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Writes `;name[=value]` for each parameter.
    pub(crate) fn write(&self, out: &mut BytesMut) {
        for p in &self.0 {
            out.put_u8(b';');
            out.put_slice(&p.name);
            if let Some(v) = &p.value {
                out.put_u8(b'=');
                out.put_slice(v);
            }
        }
    }
}

impl std::fmt::Display for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.0 {
            write!(f, ";{}", String::from_utf8_lossy(&p.name))?;
            if let Some(v) = &p.value {
                write!(f, "={}", String::from_utf8_lossy(v))?;
            }
        }
        Ok(())
    }
}

/// Characters allowed in a header parameter value that is not quoted: token characters plus what hosts and IPv6
/// references need (`gen-value = token / host / quoted-string`).
fn is_gen_value(b: u8) -> bool {
    scan::is_token(b) || b == b':' || b == b'[' || b == b']'
}

/// Parses header parameters `*( SEMI generic-param )` from the cursor: LWS is allowed around `;` and `=`.
/// Stops at the end, or at the first character that cannot continue the list (the caller decides if that is an
/// error). Returns `None` on a malformed parameter.
pub(crate) fn parse_header_params(src: &Bytes, c: &mut Cursor<'_>) -> Option<Params> {
    let mut params = Params::new();
    while c.eat_sep(b';') {
        let name = c.token()?;
        let value = if c.eat_sep(b'=') {
            let v = if c.peek() == Some(b'"') {
                c.quoted()?
            } else {
                c.take_while(is_gen_value)
            };
            if v.is_empty() {
                return None;
            }
            Some(src.slice_ref(v))
        } else {
            None
        };
        params.0.push(Param {
            name: src.slice_ref(name),
            value,
        });
    }
    Some(params)
}
