//! Small readers for the header fields the transaction and dialog layers key on (Via branch and sent-by, From/To
//! tag, CSeq, the URI of a name-addr), working on raw header values.
//!
//! The codec parses these too; these helpers exist so that matching works on exactly the bytes the peer sent and
//! never fails on an extension the typed parsers reject. They never panic and never allocate more than the input.

/// The parts of a Via value used for matching and response routing (RFC 3261 §17.2.3, §18.2.2, RFC 3581).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ViaParts<'a> {
    /// `UDP`, `TCP`, ...
    pub(crate) transport: &'a str,
    /// sent-by host as written (IPv6 with brackets).
    pub(crate) host: &'a str,
    /// sent-by port.
    pub(crate) port: Option<u16>,
    /// The branch parameter.
    pub(crate) branch: Option<&'a str>,
    /// Whether an `rport` parameter is present (with or without a value).
    pub(crate) rport: bool,
}

impl ViaParts<'_> {
    /// `host:port` as written, used as the sent-by part of a server transaction key.
    pub(crate) fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host.to_ascii_lowercase()),
            None => self.host.to_ascii_lowercase(),
        }
    }
}

/// Parses one Via value: `SIP/2.0/UDP host:port;branch=z9hG4bK...;rport`.
pub(crate) fn via(value: &[u8]) -> Option<ViaParts<'_>> {
    let s = std::str::from_utf8(value).ok()?.trim();
    // sent-protocol = name "/" version "/" transport, with optional LWS around the slashes (RFC 3261 §25.1).
    let (name, rest) = s.split_once('/')?;
    let (_version, rest) = rest.split_once('/')?;
    let rest = rest.trim_start();
    let tend = rest.find(|c: char| c.is_ascii_whitespace())?;
    let (transport, rest) = (rest.get(..tend)?, rest.get(tend..)?);
    if !name.trim().eq_ignore_ascii_case("SIP") {
        return None;
    }
    let rest = rest.trim_start();
    let (sent_by, params) = match rest.find(';') {
        Some(i) => (rest.get(..i)?.trim(), rest.get(i + 1..)?),
        None => (rest.trim(), ""),
    };
    let (host, port) = split_host_port(sent_by)?;
    let mut branch = None;
    let mut rport = false;
    for p in params.split(';') {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (p.trim(), None),
        };
        if k.eq_ignore_ascii_case("branch") {
            branch = v;
        } else if k.eq_ignore_ascii_case("rport") {
            rport = true;
        }
    }
    Some(ViaParts {
        transport: transport.trim(),
        host,
        port,
        branch,
        rport,
    })
}

fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if s.is_empty() {
        return None;
    }
    if s.starts_with('[') {
        let end = s.find(']')?;
        let host = s.get(..=end)?;
        let rest = s.get(end + 1..)?;
        return match rest.strip_prefix(':') {
            Some(p) => Some((host, Some(p.trim().parse().ok()?))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p.trim().parse().ok()?))),
        None => Some((s, None)),
    }
}

/// The header parameters of a name-addr / addr-spec value (From, To, Contact, Route): the part after `>` when the
/// URI is in angle brackets, else after the first `;`.
fn header_params(value: &[u8]) -> &[u8] {
    let mut in_quote = false;
    let mut i = 0;
    let mut after_angle = None;
    while let Some(&b) = value.get(i) {
        match b {
            b'"' => in_quote = !in_quote,
            b'\\' if in_quote => i += 1,
            b'<' if !in_quote => {
                let close = value
                    .get(i..)
                    .and_then(|r| r.iter().position(|&c| c == b'>'));
                match close {
                    Some(c) => after_angle = Some(i + c + 1),
                    None => return &[],
                }
                break;
            }
            _ => {}
        }
        i += 1;
    }
    match after_angle {
        Some(a) => value.get(a..).unwrap_or(&[]),
        None => match value.iter().position(|&c| c == b';') {
            Some(p) => value.get(p..).unwrap_or(&[]),
            None => &[],
        },
    }
}

/// The value of header parameter `name` (case-insensitive) in a From/To/Contact value.
pub(crate) fn param<'a>(value: &'a [u8], name: &str) -> Option<&'a [u8]> {
    for p in header_params(value).split(|&b| b == b';') {
        let mut kv = p.splitn(2, |&b| b == b'=');
        let k = kv.next()?.trim_ascii();
        if k.eq_ignore_ascii_case(name.as_bytes()) {
            return Some(kv.next().unwrap_or(&[]).trim_ascii());
        }
    }
    None
}

/// The `tag` parameter of a From or To value.
pub(crate) fn tag(value: &[u8]) -> Option<&[u8]> {
    param(value, "tag").filter(|t| !t.is_empty())
}

/// The URI of a name-addr (inside `<>`) or addr-spec (up to the first `;`).
pub(crate) fn uri_of(value: &[u8]) -> &[u8] {
    let v = value.trim_ascii();
    if let Some(start) = v.iter().position(|&b| b == b'<') {
        let rest = v.get(start + 1..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == b'>').unwrap_or(rest.len());
        return rest.get(..end).unwrap_or(&[]).trim_ascii();
    }
    let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
    v.get(..end).unwrap_or(&[]).trim_ascii()
}

/// CSeq `number method`.
pub(crate) fn cseq(value: &[u8]) -> Option<(u32, &str)> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (n, m) = s.split_once(|c: char| c.is_ascii_whitespace())?;
    Some((n.parse().ok()?, m.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_parts() {
        let v =
            via(b"SIP/2.0/UDP 192.0.2.1:5062;rport;branch=z9hG4bKabc;received=1.2.3.4").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.1");
        assert_eq!(v.port, Some(5062));
        assert_eq!(v.branch, Some("z9hG4bKabc"));
        assert!(v.rport);
        let v = via(b"SIP / 2.0 / TCP [2001:db8::1];branch=x").unwrap();
        assert_eq!(
            (v.host, v.port, v.transport),
            ("[2001:db8::1]", None, "TCP")
        );
        assert!(via(b"garbage").is_none());
        assert!(via(b"SIP/2.0/UDP host:99999").is_none());
    }

    #[test]
    fn tags_and_uris() {
        assert_eq!(
            tag(b"\"A;tag=no\" <sip:a@b;tag=no>;tag=yes"),
            Some(&b"yes"[..])
        );
        assert_eq!(tag(b"sip:a@b;tag=t1"), Some(&b"t1"[..]));
        assert_eq!(tag(b"<sip:a@b>"), None);
        assert_eq!(tag(b"<sip:a@b"), None);
        assert_eq!(uri_of(b"\"X\" <sip:x@y;lr>;expires=3"), b"sip:x@y;lr");
        assert_eq!(uri_of(b"sip:x@y;tag=1"), b"sip:x@y");
        assert_eq!(cseq(b"42 INVITE"), Some((42, "INVITE")));
        assert_eq!(cseq(b"x INVITE"), None);
    }
}
