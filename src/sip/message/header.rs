//! Header names (case-insensitive, compact forms mapped to full names) and the ordered header list.

use super::scan;
use bytes::Bytes;
use std::fmt;

macro_rules! header_names {
    ($( $var:ident => $canon:literal, $lower:literal $(, $compact:literal)?; )*) => {
        /// A header field name. Known names are variants; compact forms (`i`, `m`, `v`, ...) map to their full
        /// name; anything else is [`HeaderName::Other`] and compares case-insensitively.
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub enum HeaderName {
            $(
                #[doc = concat!("`", $canon, "`")]
                $var,
            )*
            /// An extension header, spelled as received.
            Other(Bytes),
        }

        impl HeaderName {
            /// The canonical spelling written on output.
            pub fn as_str(&self) -> &str {
                match self {
                    $( HeaderName::$var => $canon, )*
                    HeaderName::Other(b) => std::str::from_utf8(b).unwrap_or("X-Invalid"),
                }
            }
        }
    };
}

header_names! {
    Accept => "Accept", b"accept";
    AcceptEncoding => "Accept-Encoding", b"accept-encoding";
    AcceptLanguage => "Accept-Language", b"accept-language";
    AlertInfo => "Alert-Info", b"alert-info";
    Allow => "Allow", b"allow";
    AllowEvents => "Allow-Events", b"allow-events", b"u";
    AuthenticationInfo => "Authentication-Info", b"authentication-info";
    Authorization => "Authorization", b"authorization";
    CallId => "Call-ID", b"call-id", b"i";
    CallInfo => "Call-Info", b"call-info";
    Contact => "Contact", b"contact", b"m";
    ContentDisposition => "Content-Disposition", b"content-disposition";
    ContentEncoding => "Content-Encoding", b"content-encoding", b"e";
    ContentLanguage => "Content-Language", b"content-language";
    ContentLength => "Content-Length", b"content-length", b"l";
    ContentType => "Content-Type", b"content-type", b"c";
    CSeq => "CSeq", b"cseq";
    Date => "Date", b"date";
    ErrorInfo => "Error-Info", b"error-info";
    Event => "Event", b"event", b"o";
    Expires => "Expires", b"expires";
    From => "From", b"from", b"f";
    Identity => "Identity", b"identity", b"y";
    InReplyTo => "In-Reply-To", b"in-reply-to";
    MaxForwards => "Max-Forwards", b"max-forwards";
    MimeVersion => "MIME-Version", b"mime-version";
    MinExpires => "Min-Expires", b"min-expires";
    MinSe => "Min-SE", b"min-se";
    Organization => "Organization", b"organization";
    PAssertedIdentity => "P-Asserted-Identity", b"p-asserted-identity";
    PPreferredIdentity => "P-Preferred-Identity", b"p-preferred-identity";
    Priority => "Priority", b"priority";
    Privacy => "Privacy", b"privacy";
    ProxyAuthenticate => "Proxy-Authenticate", b"proxy-authenticate";
    ProxyAuthorization => "Proxy-Authorization", b"proxy-authorization";
    ProxyRequire => "Proxy-Require", b"proxy-require";
    RAck => "RAck", b"rack";
    Reason => "Reason", b"reason";
    RecordRoute => "Record-Route", b"record-route";
    ReferTo => "Refer-To", b"refer-to", b"r";
    ReferredBy => "Referred-By", b"referred-by", b"b";
    ReplyTo => "Reply-To", b"reply-to";
    Require => "Require", b"require";
    RetryAfter => "Retry-After", b"retry-after";
    Route => "Route", b"route";
    RSeq => "RSeq", b"rseq";
    Server => "Server", b"server";
    SessionExpires => "Session-Expires", b"session-expires", b"x";
    Subject => "Subject", b"subject", b"s";
    SubscriptionState => "Subscription-State", b"subscription-state";
    Supported => "Supported", b"supported", b"k";
    Timestamp => "Timestamp", b"timestamp";
    To => "To", b"to", b"t";
    Unsupported => "Unsupported", b"unsupported";
    UserAgent => "User-Agent", b"user-agent";
    Via => "Via", b"via", b"v";
    Warning => "Warning", b"warning";
    WwwAuthenticate => "WWW-Authenticate", b"www-authenticate";
}

/// Maps a lower-case header name (full or compact) to its variant; dispatches on length first so that only a
/// few names are compared.
fn known_from_lower(lower: &[u8]) -> Option<HeaderName> {
    Some(match lower.len() {
        1 => match lower {
            b"u" => HeaderName::AllowEvents,
            b"i" => HeaderName::CallId,
            b"m" => HeaderName::Contact,
            b"e" => HeaderName::ContentEncoding,
            b"l" => HeaderName::ContentLength,
            b"c" => HeaderName::ContentType,
            b"o" => HeaderName::Event,
            b"f" => HeaderName::From,
            b"y" => HeaderName::Identity,
            b"r" => HeaderName::ReferTo,
            b"b" => HeaderName::ReferredBy,
            b"x" => HeaderName::SessionExpires,
            b"s" => HeaderName::Subject,
            b"k" => HeaderName::Supported,
            b"t" => HeaderName::To,
            b"v" => HeaderName::Via,
            _ => return None,
        },
        2 => match lower {
            b"to" => HeaderName::To,
            _ => return None,
        },
        3 => match lower {
            b"via" => HeaderName::Via,
            _ => return None,
        },
        4 => match lower {
            b"cseq" => HeaderName::CSeq,
            b"date" => HeaderName::Date,
            b"from" => HeaderName::From,
            b"rack" => HeaderName::RAck,
            b"rseq" => HeaderName::RSeq,
            _ => return None,
        },
        5 => match lower {
            b"allow" => HeaderName::Allow,
            b"event" => HeaderName::Event,
            b"route" => HeaderName::Route,
            _ => return None,
        },
        6 => match lower {
            b"accept" => HeaderName::Accept,
            b"min-se" => HeaderName::MinSe,
            b"reason" => HeaderName::Reason,
            b"server" => HeaderName::Server,
            _ => return None,
        },
        7 => match lower {
            b"call-id" => HeaderName::CallId,
            b"contact" => HeaderName::Contact,
            b"expires" => HeaderName::Expires,
            b"privacy" => HeaderName::Privacy,
            b"require" => HeaderName::Require,
            b"subject" => HeaderName::Subject,
            b"warning" => HeaderName::Warning,
            _ => return None,
        },
        8 => match lower {
            b"identity" => HeaderName::Identity,
            b"priority" => HeaderName::Priority,
            b"refer-to" => HeaderName::ReferTo,
            b"reply-to" => HeaderName::ReplyTo,
            _ => return None,
        },
        9 => match lower {
            b"call-info" => HeaderName::CallInfo,
            b"supported" => HeaderName::Supported,
            b"timestamp" => HeaderName::Timestamp,
            _ => return None,
        },
        10 => match lower {
            b"alert-info" => HeaderName::AlertInfo,
            b"error-info" => HeaderName::ErrorInfo,
            b"user-agent" => HeaderName::UserAgent,
            _ => return None,
        },
        11 => match lower {
            b"in-reply-to" => HeaderName::InReplyTo,
            b"min-expires" => HeaderName::MinExpires,
            b"referred-by" => HeaderName::ReferredBy,
            b"retry-after" => HeaderName::RetryAfter,
            b"unsupported" => HeaderName::Unsupported,
            _ => return None,
        },
        12 => match lower {
            b"allow-events" => HeaderName::AllowEvents,
            b"content-type" => HeaderName::ContentType,
            b"max-forwards" => HeaderName::MaxForwards,
            b"mime-version" => HeaderName::MimeVersion,
            b"organization" => HeaderName::Organization,
            b"record-route" => HeaderName::RecordRoute,
            _ => return None,
        },
        13 => match lower {
            b"authorization" => HeaderName::Authorization,
            b"proxy-require" => HeaderName::ProxyRequire,
            _ => return None,
        },
        14 => match lower {
            b"content-length" => HeaderName::ContentLength,
            _ => return None,
        },
        15 => match lower {
            b"accept-encoding" => HeaderName::AcceptEncoding,
            b"accept-language" => HeaderName::AcceptLanguage,
            b"session-expires" => HeaderName::SessionExpires,
            _ => return None,
        },
        16 => match lower {
            b"content-encoding" => HeaderName::ContentEncoding,
            b"content-language" => HeaderName::ContentLanguage,
            b"www-authenticate" => HeaderName::WwwAuthenticate,
            _ => return None,
        },
        18 => match lower {
            b"proxy-authenticate" => HeaderName::ProxyAuthenticate,
            b"subscription-state" => HeaderName::SubscriptionState,
            _ => return None,
        },
        19 => match lower {
            b"authentication-info" => HeaderName::AuthenticationInfo,
            b"content-disposition" => HeaderName::ContentDisposition,
            b"p-asserted-identity" => HeaderName::PAssertedIdentity,
            b"proxy-authorization" => HeaderName::ProxyAuthorization,
            _ => return None,
        },
        20 => match lower {
            b"p-preferred-identity" => HeaderName::PPreferredIdentity,
            _ => return None,
        },
        _ => return None,
    })
}

impl HeaderName {
    /// Maps a name as received (any case, compact or full) to a `HeaderName`; `None` if it is not a token.
    pub fn from_bytes(name: Bytes) -> Option<HeaderName> {
        HeaderName::from_slice(&name, || name.clone())
    }

    /// Like [`HeaderName::from_bytes`], but only builds the `Bytes` (with `make`) for an extension header.
    pub(crate) fn from_slice(name: &[u8], make: impl FnOnce() -> Bytes) -> Option<HeaderName> {
        let mut buf = [0u8; 24];
        if let Some(lower) = buf.get_mut(..name.len()) {
            for (d, s) in lower.iter_mut().zip(name.iter()) {
                *d = s.to_ascii_lowercase();
            }
            if let Some(h) = known_from_lower(lower) {
                return Some(h);
            }
        }
        scan::is_token_str(name).then(|| HeaderName::Other(make()))
    }

    /// Parses a header name from a string (see [`HeaderName::from_bytes`]).
    pub fn parse(name: &str) -> Option<HeaderName> {
        HeaderName::from_bytes(Bytes::copy_from_slice(name.as_bytes()))
    }

    /// True for headers whose grammar is a comma-separated list (`Via`, `Contact`, `Route`, `Require`, ...), so one
    /// line may carry several values.
    pub fn is_list(&self) -> bool {
        matches!(
            self,
            HeaderName::Accept
                | HeaderName::AcceptEncoding
                | HeaderName::AcceptLanguage
                | HeaderName::AlertInfo
                | HeaderName::Allow
                | HeaderName::AllowEvents
                | HeaderName::CallInfo
                | HeaderName::Contact
                | HeaderName::ContentEncoding
                | HeaderName::ContentLanguage
                | HeaderName::ErrorInfo
                | HeaderName::InReplyTo
                | HeaderName::PAssertedIdentity
                | HeaderName::PPreferredIdentity
                | HeaderName::ProxyRequire
                | HeaderName::Reason
                | HeaderName::RecordRoute
                | HeaderName::Require
                | HeaderName::Route
                | HeaderName::Supported
                | HeaderName::Unsupported
                | HeaderName::Via
                | HeaderName::Warning
        )
    }
}

impl PartialEq for HeaderName {
    fn eq(&self, other: &HeaderName) -> bool {
        match (self, other) {
            (HeaderName::Other(a), HeaderName::Other(b)) => a.eq_ignore_ascii_case(b),
            (HeaderName::Other(_), _) | (_, HeaderName::Other(_)) => false,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}
impl Eq for HeaderName {}

impl std::hash::Hash for HeaderName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        if let HeaderName::Other(b) = self {
            for c in b.iter() {
                state.write_u8(c.to_ascii_lowercase());
            }
        }
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The header fields of a message, in order. Names compare case-insensitively; a value is the field's text with
/// surrounding whitespace removed and folded lines joined (a slice of the received datagram unless it was folded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    list: Vec<(HeaderName, Bytes)>,
}

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Headers { list: Vec::new() }
    }
    /// An empty list with room for `n` fields.
    pub fn with_capacity(n: usize) -> Self {
        Headers {
            list: Vec::with_capacity(n),
        }
    }
    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.list.len()
    }
    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// The first value of `name` (the whole line: for list headers use [`Headers::values`]).
    pub fn get(&self, name: &HeaderName) -> Option<&Bytes> {
        self.list.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    /// Every line of `name`, in order (raw: comma-separated values on one line are not split).
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.list
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }
    /// Every value of a list header (`Via`, `Contact`, ...), splitting comma-separated lines; quoted strings and
    /// `<...>` may contain commas. Empty elements are yielded as empty `Bytes` so callers can reject them.
    pub fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = Bytes> + 'a {
        self.get_all(name)
            .flat_map(|line| scan::split_commas(line).map(move |s| line.slice_ref(s)))
    }
    /// How many lines of `name` there are.
    pub fn count(&self, name: &HeaderName) -> usize {
        self.list.iter().filter(|(n, _)| n == name).count()
    }
    /// True if `name` is present.
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }
    /// Appends a line.
    pub fn push(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        self.list.push((name, value.into()));
    }
    /// Inserts a line before all others (e.g. a new top `Via`).
    pub fn push_front(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        self.list.insert(0, (name, value.into()));
    }
    /// Replaces every line of `name` by one line at the position of the first (or at the end).
    pub fn set(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        let value = value.into();
        match self.list.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                if let Some(slot) = self.list.get_mut(i) {
                    slot.1 = value;
                }
                let mut idx = 0;
                self.list.retain(|(n, _)| {
                    let keep = idx <= i || *n != name;
                    idx += 1;
                    keep
                });
            }
            None => self.list.push((name, value)),
        }
    }
    /// Removes every line of `name`; returns how many were removed.
    pub fn remove(&mut self, name: &HeaderName) -> usize {
        let before = self.list.len();
        self.list.retain(|(n, _)| n != name);
        before - self.list.len()
    }
    /// Removes and returns the first line of `name`.
    pub fn remove_first(&mut self, name: &HeaderName) -> Option<Bytes> {
        let i = self.list.iter().position(|(n, _)| n == name)?;
        Some(self.list.remove(i).1)
    }
    /// Iterates over `(name, value)` lines in order.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &Bytes)> {
        self.list.iter().map(|(n, v)| (n, v))
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a HeaderName, &'a Bytes);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (HeaderName, Bytes)>,
        fn(&'a (HeaderName, Bytes)) -> (&'a HeaderName, &'a Bytes),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter().map(|(n, v)| (n, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case() {
        assert_eq!(HeaderName::parse("i"), Some(HeaderName::CallId));
        assert_eq!(HeaderName::parse("CALL-id"), Some(HeaderName::CallId));
        assert_eq!(HeaderName::parse("v"), Some(HeaderName::Via));
        assert_eq!(HeaderName::parse("X-Foo"), HeaderName::parse("x-foo"));
        assert_ne!(HeaderName::parse("X-Foo"), HeaderName::parse("x-bar"));
        let set: std::collections::HashSet<_> = ["X-Foo", "x-foo", "i", "Call-ID"]
            .iter()
            .filter_map(|n| HeaderName::parse(n))
            .collect();
        assert_eq!(set.len(), 2);
        assert_eq!(HeaderName::parse("bad name"), None);
        assert_eq!(
            HeaderName::parse("k").map(|h| h.as_str().to_owned()),
            Some("Supported".into())
        );
    }

    #[test]
    fn set_replaces_all() {
        let mut h = Headers::new();
        h.push(HeaderName::Via, "a");
        h.push(HeaderName::To, "t");
        h.push(HeaderName::Via, "b");
        h.set(HeaderName::Via, "c");
        let v: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.clone()))
            .collect();
        assert_eq!(
            v,
            vec![
                ("Via".into(), Bytes::from("c")),
                ("To".into(), Bytes::from("t"))
            ]
        );
        assert_eq!(h.remove(&HeaderName::Via), 1);
        assert!(!h.contains(&HeaderName::Via));
    }
}
