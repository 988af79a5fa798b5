//! Digest authentication as a UAC (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).
//!
//! This module parses a `WWW-Authenticate` / `Proxy-Authenticate` challenge from its raw header value, computes the
//! digest response (MD5, MD5-sess, SHA-256, SHA-256-sess; `qop=auth` with nonce count and cnonce, or no qop as in
//! RFC 2069) and formats the `Authorization` / `Proxy-Authorization` value. [`DigestClient`] keeps the per-call
//! state: the nonce count per nonce, and the last nonce answered, so that a server that keeps challenging with the
//! same nonce without `stale=true` makes us give up instead of looping.
//!
//! The hashing comes from the `md-5` and `sha2` crates; only the header grammar and the RFC's string assembly are
//! written here, because they are a few dozen lines and the HTTP auth crates assume an HTTP request type.
//!
//! Nothing here reads the clock or draws random numbers: the caller passes the cnonce (the endpoint draws it from its
//! seeded RNG).

use md5::Md5;
use sha2::{Digest as _, Sha256};

/// Longest challenge header value we parse, in bytes. Longer values are rejected, not truncated.
pub const MAX_CHALLENGE_LEN: usize = 4096;

/// How many challenges in a row one request may be answered before we give up, even when each carries a fresh nonce
/// or `stale=true`. RFC 3261 §22.2 only says a UAC should not retry with the same credentials forever.
pub const MAX_CHALLENGES_PER_REQUEST: u32 = 3;

/// Errors from parsing a challenge or answering it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The scheme is not `Digest` (for example `Basic`, which SIP forbids).
    #[error("unsupported authentication scheme")]
    UnsupportedScheme,
    /// The challenge names an algorithm we do not implement.
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// The challenge offers only qop values we do not implement (e.g. only `auth-int`).
    #[error("unsupported qop")]
    UnsupportedQop,
    /// The challenge lacks a required parameter (`realm` or `nonce`).
    #[error("challenge lacks the {0} parameter")]
    MissingParam(&'static str),
    /// The header value does not follow the `auth-param` grammar, or is longer than [`MAX_CHALLENGE_LEN`].
    #[error("malformed challenge")]
    Malformed,
    /// The server challenged again with the nonce we already answered and without `stale=true`: the credentials
    /// are wrong. Retrying would loop.
    #[error("credentials rejected")]
    Rejected,
    /// More than [`MAX_CHALLENGES_PER_REQUEST`] challenges for one request.
    #[error("too many challenges")]
    TooManyChallenges,
}

/// The digest algorithm named in a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// `MD5` (the default when the parameter is absent).
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    fn parse(s: &str) -> Result<Self, AuthError> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Ok(Self::Md5),
            "MD5-SESS" => Ok(Self::Md5Sess),
            "SHA-256" => Ok(Self::Sha256),
            "SHA-256-SESS" => Ok(Self::Sha256Sess),
            _ => Err(AuthError::UnsupportedAlgorithm),
        }
    }

    /// The token as written in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
            Self::Sha256 => "SHA-256",
            Self::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, Self::Md5Sess | Self::Sha256Sess)
    }

    /// Lower-case hex of the hash of `data`.
    fn hash_hex(self, data: &[u8]) -> String {
        match self {
            Self::Md5 | Self::Md5Sess => hex(&Md5::digest(data)),
            Self::Sha256 | Self::Sha256Sess => hex(&Sha256::digest(data)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// A parsed `Digest` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The protection space.
    pub realm: String,
    /// The server nonce.
    pub nonce: String,
    /// Opaque data to echo back.
    pub opaque: Option<String>,
    /// The hash algorithm.
    pub algorithm: Algorithm,
    /// Whether the server offered `qop=auth` (we then use it; RFC 3261 §22.4 recommends it).
    pub qop_auth: bool,
    /// `stale=true`: the nonce expired but the credentials were right; retry with the new nonce.
    pub stale: bool,
}

impl Challenge {
    /// Parses a challenge from a `WWW-Authenticate` or `Proxy-Authenticate` header value such as
    /// `Digest realm="atlanta.com", nonce="84a4cc6f", qop="auth", algorithm=MD5`.
    pub fn parse(value: &[u8]) -> Result<Self, AuthError> {
        if value.len() > MAX_CHALLENGE_LEN {
            return Err(AuthError::Malformed);
        }
        let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed)?;
        let value = value.trim();
        let (scheme, rest) = value
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(AuthError::UnsupportedScheme);
        }
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut algorithm = Algorithm::Md5;
        let mut qop: Option<String> = None;
        let mut stale = false;
        for (name, val) in parse_params(rest)? {
            match name.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(val),
                "nonce" => nonce = Some(val),
                "opaque" => opaque = Some(val),
                "algorithm" => algorithm = Algorithm::parse(&val)?,
                "qop" => qop = Some(val),
                "stale" => stale = val.eq_ignore_ascii_case("true"),
                _ => {} // domain and extensions: ignored (RFC 7616 §3.3)
            }
        }
        let qop_auth = match qop {
            None => false,
            Some(q) => {
                if q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")) {
                    true
                } else {
                    return Err(AuthError::UnsupportedQop);
                }
            }
        };
        Ok(Self {
            realm: realm.ok_or(AuthError::MissingParam("realm"))?,
            nonce: nonce.ok_or(AuthError::MissingParam("nonce"))?,
            opaque,
            algorithm,
            qop_auth,
            stale,
        })
    }
}

/// Splits `name=value, name="quoted value"` pairs. Quoted strings may hold commas and `\"` escapes.
fn parse_params(s: &str) -> Result<Vec<(String, String)>, AuthError> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or(AuthError::Malformed)?;
        let name = rest.get(..eq).ok_or(AuthError::Malformed)?.trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AuthError::Malformed);
        }
        rest = rest.get(eq + 1..).ok_or(AuthError::Malformed)?.trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, e)) => v.push(e),
                        None => return Err(AuthError::Malformed),
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    _ => v.push(c),
                }
            }
            let end = end.ok_or(AuthError::Malformed)?;
            value = v;
            rest = q.get(end..).ok_or(AuthError::Malformed)?;
        } else {
            let end = rest
                .find(|c: char| c == ',' || c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            value = rest.get(..end).ok_or(AuthError::Malformed)?.to_owned();
            rest = rest.get(end..).ok_or(AuthError::Malformed)?;
        }
        out.push((name.to_owned(), value));
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(AuthError::Malformed);
        }
    }
    Ok(out)
}

/// A user's credentials for digest authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
    /// Answer only challenges for this realm; `None` answers any realm.
    pub realm: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("realm", &self.realm)
            .finish()
    }
}

/// The inputs of one digest computation, as in RFC 7616 §3.4.1.
#[derive(Debug, Clone, Copy)]
pub struct DigestInput<'a> {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// User name.
    pub username: &'a str,
    /// Realm.
    pub realm: &'a str,
    /// Password.
    pub password: &'a str,
    /// Request method (`INVITE`, `REGISTER`, ... ; `GET` in the HTTP vectors).
    pub method: &'a str,
    /// The `digest-uri`: the Request-URI as written.
    pub uri: &'a str,
    /// Server nonce.
    pub nonce: &'a str,
    /// `Some((nc, cnonce))` for `qop=auth`; `None` for the RFC 2069 form.
    pub qop_auth: Option<(u32, &'a str)>,
}

/// Computes the `response` parameter (lower-case hex).
pub fn compute_response(i: &DigestInput<'_>) -> String {
    let a = i.algorithm;
    let mut ha1 = a.hash_hex(format!("{}:{}:{}", i.username, i.realm, i.password).as_bytes());
    if a.is_sess() {
        let cnonce = i.qop_auth.map(|(_, c)| c).unwrap_or("");
        ha1 = a.hash_hex(format!("{ha1}:{}:{cnonce}", i.nonce).as_bytes());
    }
    let ha2 = a.hash_hex(format!("{}:{}", i.method, i.uri).as_bytes());
    match i.qop_auth {
        Some((nc, cnonce)) => {
            a.hash_hex(format!("{ha1}:{}:{nc:08x}:{cnonce}:auth:{ha2}", i.nonce).as_bytes())
        }
        None => a.hash_hex(format!("{ha1}:{}:{ha2}", i.nonce).as_bytes()),
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Per-call digest state: the nonce last answered, the nonce count, and how many challenges the current request
/// has had.
#[derive(Debug, Clone)]
pub struct DigestClient {
    credentials: Credentials,
    last_nonce: Option<String>,
    nonce_count: u32,
    challenges_this_request: u32,
}

impl DigestClient {
    /// A client answering with these credentials.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            last_nonce: None,
            nonce_count: 0,
            challenges_this_request: 0,
        }
    }

    /// Call when a request got a response other than 401/407, so that the next request starts a fresh count.
    pub fn request_done(&mut self) {
        self.challenges_this_request = 0;
    }

    /// Answers `challenge` (the raw `WWW-Authenticate` / `Proxy-Authenticate` value) for a request with `method`
    /// and `uri`. `cnonce` is a fresh client nonce. Returns the `Authorization` / `Proxy-Authorization` value.
    ///
    /// Gives up with [`AuthError::Rejected`] when the server repeats the nonce we answered last without
    /// `stale=true`, and with [`AuthError::TooManyChallenges`] after [`MAX_CHALLENGES_PER_REQUEST`].
    pub fn answer(
        &mut self,
        challenge: &[u8],
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> Result<String, AuthError> {
        let ch = Challenge::parse(challenge)?;
        if let Some(r) = &self.credentials.realm {
            if r != &ch.realm {
                return Err(AuthError::Rejected);
            }
        }
        self.challenges_this_request += 1;
        if self.challenges_this_request > MAX_CHALLENGES_PER_REQUEST {
            return Err(AuthError::TooManyChallenges);
        }
        // A repeated nonce means our answer to it was refused: wrong credentials, unless the server says stale.
        // A first challenge of a request (an in-dialog request after a finished one) may reuse a nonce we answered
        // before: then the nonce count goes on.
        if self.challenges_this_request > 1
            && self.last_nonce.as_deref() == Some(ch.nonce.as_str())
            && !ch.stale
        {
            return Err(AuthError::Rejected);
        }
        if self.last_nonce.as_deref() != Some(ch.nonce.as_str()) {
            self.nonce_count = 0;
            self.last_nonce = Some(ch.nonce.clone());
        }
        self.nonce_count = self.nonce_count.saturating_add(1);
        let input = DigestInput {
            algorithm: ch.algorithm,
            username: &self.credentials.username,
            realm: &ch.realm,
            password: &self.credentials.password,
            method,
            uri,
            nonce: &ch.nonce,
            qop_auth: ch.qop_auth.then_some((self.nonce_count, cnonce)),
        };
        let response = compute_response(&input);
        let mut v = format!(
            "Digest username={}, realm={}, nonce={}, uri={}, response={}, algorithm={}",
            quote(&self.credentials.username),
            quote(&ch.realm),
            quote(&ch.nonce),
            quote(uri),
            quote(&response),
            ch.algorithm.as_str()
        );
        if ch.qop_auth {
            v.push_str(&format!(
                ", cnonce={}, qop=auth, nc={:08x}",
                quote(cnonce),
                self.nonce_count
            ));
        }
        if let Some(o) = &ch.opaque {
            v.push_str(&format!(", opaque={}", quote(o)));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_section_3_5_example() {
        let r = compute_response(&DigestInput {
            algorithm: Algorithm::Md5,
            username: "Mufasa",
            realm: "testrealm@host.com",
            password: "Circle Of Life",
            method: "GET",
            uri: "/dir/index.html",
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop_auth: Some((1, "0a4f113b")),
        });
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    fn rfc7616(algorithm: Algorithm) -> String {
        compute_response(&DigestInput {
            algorithm,
            username: "Mufasa",
            realm: "http-auth@example.org",
            password: "Circle of Life",
            method: "GET",
            uri: "/dir/index.html",
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            qop_auth: Some((1, "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")),
        })
    }

    #[test]
    fn rfc7616_section_3_9_1_md5() {
        assert_eq!(rfc7616(Algorithm::Md5), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn rfc7616_section_3_9_1_sha256() {
        assert_eq!(
            rfc7616(Algorithm::Sha256),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn parses_challenge_with_quoted_commas() {
        let c = Challenge::parse(
            br#"Digest realm="a, b", nonce="n\"1", qop="auth,auth-int", algorithm=SHA-256, stale=TRUE, opaque="o""#,
        )
        .unwrap();
        assert_eq!(c.realm, "a, b");
        assert_eq!(c.nonce, "n\"1");
        assert!(c.qop_auth && c.stale);
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(c.opaque.as_deref(), Some("o"));
    }

    #[test]
    fn rejects_bad_challenges() {
        assert_eq!(
            Challenge::parse(b"Basic realm=\"x\""),
            Err(AuthError::UnsupportedScheme)
        );
        assert_eq!(
            Challenge::parse(b"Digest nonce=\"x\""),
            Err(AuthError::MissingParam("realm"))
        );
        assert_eq!(
            Challenge::parse(b"Digest realm=\"x, nonce=1"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            Challenge::parse(b"Digest realm=x nonce=y"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            Challenge::parse(b"Digest realm=x, nonce=y, qop=auth-int"),
            Err(AuthError::UnsupportedQop)
        );
        assert_eq!(
            Challenge::parse(b"Digest realm=x, nonce=y, algorithm=SHA-512"),
            Err(AuthError::UnsupportedAlgorithm)
        );
        assert_eq!(Challenge::parse(&[0xff; 10]), Err(AuthError::Malformed));
        assert_eq!(
            Challenge::parse(&vec![b'a'; MAX_CHALLENGE_LEN + 1]),
            Err(AuthError::Malformed)
        );
    }

    fn client() -> DigestClient {
        DigestClient::new(Credentials {
            username: "bob".into(),
            password: "zanzibar".into(),
            realm: None,
        })
    }

    #[test]
    fn answer_matches_compute_and_counts_nonce() {
        let mut c = client();
        let ch = br#"Digest realm="biloxi.com", nonce="abc", qop="auth", opaque="op""#;
        let v = c.answer(ch, "INVITE", "sip:bob@biloxi.com", "cn").unwrap();
        let want = compute_response(&DigestInput {
            algorithm: Algorithm::Md5,
            username: "bob",
            realm: "biloxi.com",
            password: "zanzibar",
            method: "INVITE",
            uri: "sip:bob@biloxi.com",
            nonce: "abc",
            qop_auth: Some((1, "cn")),
        });
        assert!(v.contains(&format!("response=\"{want}\"")), "{v}");
        assert!(
            v.contains("nc=00000001") && v.contains("opaque=\"op\""),
            "{v}"
        );
        c.request_done();
        // Same nonce on a later request: the count goes on.
        let v = c.answer(ch, "BYE", "sip:bob@biloxi.com", "cn2").unwrap();
        assert!(v.contains("nc=00000002"), "{v}");
    }

    #[test]
    fn same_nonce_without_stale_gives_up() {
        let mut c = client();
        let ch = br#"Digest realm="r", nonce="n1""#;
        assert!(c.answer(ch, "INVITE", "sip:x", "c").is_ok());
        assert_eq!(
            c.answer(ch, "INVITE", "sip:x", "c"),
            Err(AuthError::Rejected)
        );
    }

    #[test]
    fn stale_retries_then_limit() {
        let mut c = client();
        assert!(c
            .answer(br#"Digest realm="r", nonce="n1""#, "INVITE", "sip:x", "c")
            .is_ok());
        assert!(c
            .answer(
                br#"Digest realm="r", nonce="n2", stale=true"#,
                "INVITE",
                "sip:x",
                "c"
            )
            .is_ok());
        assert!(c
            .answer(
                br#"Digest realm="r", nonce="n3", stale=true"#,
                "INVITE",
                "sip:x",
                "c"
            )
            .is_ok());
        assert_eq!(
            c.answer(
                br#"Digest realm="r", nonce="n4", stale=true"#,
                "INVITE",
                "sip:x",
                "c"
            ),
            Err(AuthError::TooManyChallenges)
        );
    }

    #[test]
    fn realm_restriction() {
        let mut c = DigestClient::new(Credentials {
            username: "u".into(),
            password: "p".into(),
            realm: Some("mine".into()),
        });
        assert_eq!(
            c.answer(
                br#"Digest realm="other", nonce="n""#,
                "REGISTER",
                "sip:x",
                "c"
            ),
            Err(AuthError::Rejected)
        );
    }
}
