//! Byte-level lexing helpers shared by the parsers: token classes, LWS, quoted strings, comma splitting.

/// `token` characters of RFC 3261 §25.1.
pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// True when every byte is a token character and the slice is not empty.
pub(crate) fn is_token_str(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token(b))
}

/// Space or horizontal tab.
pub(crate) fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `s` without leading and trailing SP/HT.
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_ws(b)).map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or_default()
}

/// Case-insensitive ASCII comparison.
pub(crate) fn eq_ic(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Parses a decimal number of at most `u32` range; `None` on empty, non-digit or overflow.
pub(crate) fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    let mut v: u32 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses a decimal `u16`.
pub(crate) fn parse_u16(s: &[u8]) -> Option<u16> {
    parse_u32(s).and_then(|v| u16::try_from(v).ok())
}

/// A forward-only cursor over a header value.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    pub(crate) s: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Cursor { s, pos: 0 }
    }
    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
    pub(crate) fn skip_ws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
        self.pos > start
    }
    /// Consumes `b` (after optional whitespace) if it is next; whitespace after it is skipped too.
    pub(crate) fn eat_sep(&mut self, b: u8) -> bool {
        let save = self.pos;
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            self.skip_ws();
            true
        } else {
            self.pos = save;
            false
        }
    }
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    /// Takes bytes while `f` holds.
    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        self.s.get(start..self.pos).unwrap_or_default()
    }
    pub(crate) fn token(&mut self) -> Option<&'a [u8]> {
        let t = self.take_while(is_token);
        (!t.is_empty()).then_some(t)
    }
    /// A quoted string including its quotes; `None` if not at `"` or unterminated.
    pub(crate) fn quoted(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        if !self.eat(b'"') {
            return None;
        }
        loop {
            match self.peek() {
                None => {
                    self.pos = start;
                    return None;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    if self.at_end() {
                        self.pos = start;
                        return None;
                    }
                    self.pos += 1;
                }
                Some(b'"') => {
                    self.pos += 1;
                    return self.s.get(start..self.pos);
                }
                Some(_) => self.pos += 1,
            }
        }
    }
}

/// Splits a comma-separated header value into its elements, honouring quoted strings and `<...>`.
/// Elements are trimmed; empty elements are returned as empty slices (callers reject them).
pub(crate) fn split_commas(s: &[u8]) -> CommaSplit<'_> {
    CommaSplit {
        s,
        pos: 0,
        done: false,
    }
}

/// Iterator of [`split_commas`].
#[derive(Debug)]
pub(crate) struct CommaSplit<'a> {
    s: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> Iterator for CommaSplit<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        let start = self.pos;
        let mut in_quote = false;
        let mut in_angle = false;
        let mut i = start;
        while let Some(&b) = self.s.get(i) {
            match b {
                b'\\' if in_quote => i += 1,
                b'"' if !in_angle => in_quote = !in_quote,
                b'<' if !in_quote => in_angle = true,
                b'>' if !in_quote => in_angle = false,
                b',' if !in_quote && !in_angle => {
                    self.pos = i + 1;
                    return Some(trim(self.s.get(start..i).unwrap_or_default()));
                }
                _ => {}
            }
            i += 1;
        }
        self.done = true;
        Some(trim(self.s.get(start..).unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_respect_quotes_and_angles() {
        let v: Vec<&[u8]> = split_commas(br#""a, b" <sip:x;p=1,2>, <sip:y> ,z"#).collect();
        assert_eq!(v, vec![&br#""a, b" <sip:x;p=1,2>"#[..], b"<sip:y>", b"z"]);
    }

    #[test]
    fn numbers_overflow() {
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"0009"), Some(9));
        assert_eq!(parse_u32(b""), None);
        assert_eq!(parse_u32(b"-1"), None);
    }
}
