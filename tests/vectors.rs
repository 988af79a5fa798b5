//! RFC 4475 and RFC 5118 conformance: every entry of `tests/vectors/rfc4475/MANIFEST.tsv` gets the outcome the
//! manifest gives, every RFC 5118 file the outcome its name gives (see tests/vectors/README.md); plus a round trip
//! on every vector that parses.

use bytes::Bytes;
use rappel::sip::message::{validate_request, Message, ParseError, RejectReason, UaPolicy};
use std::path::{Path, PathBuf};

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(sub)
}

fn load(path: &Path) -> Bytes {
    Bytes::from(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Parses, checks and (requests) validates.
    Accepted,
    /// Parse error or check error, or a validation rejection for malformation.
    Rejected,
    /// Well-formed, but the UA answers with this status.
    App(u16),
}

fn outcome(data: Bytes) -> (Outcome, String) {
    let msg = match Message::parse_datagram(data) {
        Ok(m) => m,
        Err(e) => return (Outcome::Rejected, format!("parse: {e}")),
    };
    match &msg {
        Message::Response(_) => match msg.check() {
            Ok(()) => (Outcome::Accepted, String::new()),
            Err(e) => (Outcome::Rejected, format!("check: {e}")),
        },
        Message::Request(r) => match validate_request(r, &UaPolicy::default()) {
            Ok(()) => (Outcome::Accepted, String::new()),
            Err(rej) => match rej.reason {
                RejectReason::Malformed(e) => (Outcome::Rejected, format!("validate: {e}")),
                other => (
                    Outcome::App(rej.status.as_u16()),
                    format!("validate: {other}"),
                ),
            },
        },
    }
}

/// Parse -> write -> parse gives the same message (headers, URI, body), and the written form is a fixed point.
fn assert_round_trip(name: &str, data: Bytes) {
    let Ok(msg) = Message::parse_datagram(data) else {
        return;
    };
    let wire = msg.to_bytes();
    let again = Message::parse_datagram(wire.clone())
        .unwrap_or_else(|e| panic!("{name}: re-parse failed: {e}\n{wire:?}"));
    assert_eq!(again.body(), msg.body(), "{name}: body");
    let names = |m: &Message| {
        m.headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.clone()))
            .collect::<Vec<_>>()
    };
    let (mut a, mut b) = (names(&msg), names(&again));
    // Content-Length is rewritten from the body; compare everything else exactly.
    a.retain(|(n, _)| n != "Content-Length");
    b.retain(|(n, _)| n != "Content-Length");
    assert_eq!(a, b, "{name}: headers");
    match (&msg, &again) {
        (Message::Request(x), Message::Request(y)) => {
            assert_eq!(x.method, y.method, "{name}");
            assert_eq!(x.uri, y.uri, "{name}");
        }
        (Message::Response(x), Message::Response(y)) => {
            assert_eq!(x.status, y.status, "{name}");
            assert_eq!(x.reason, y.reason, "{name}");
        }
        _ => panic!("{name}: kind changed"),
    }
    assert_eq!(again.to_bytes(), wire, "{name}: write is not a fixed point");
    assert_eq!(
        again.headers().content_length().ok().flatten(),
        Some(again.body().len()),
        "{name}: Content-Length must match the body"
    );
}

#[test]
fn rfc4475_manifest() {
    let manifest = std::fs::read_to_string(dir("rfc4475").join("MANIFEST.tsv")).expect("manifest");
    let mut failures = Vec::new();
    let mut count = 0;
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let (name, expect) = (cols[0], cols[2]);
        let data = load(&dir("rfc4475").join(format!("{name}.dat")));
        let (got, why) = outcome(data.clone());
        eprintln!("{name}\t{expect}\t{got:?}\t{why}");
        let ok = match expect {
            "parse" => got == Outcome::Accepted,
            "reject" => got == Outcome::Rejected,
            "either" => matches!(got, Outcome::Accepted | Outcome::Rejected),
            app => {
                let code: u16 = app
                    .strip_prefix("app:")
                    .and_then(|c| c.parse().ok())
                    .expect("app:N");
                got == Outcome::App(code)
            }
        };
        if !ok {
            failures.push(format!("{name}: expected {expect}, got {got:?} ({why})"));
        }
        assert_round_trip(name, data);
        count += 1;
    }
    assert_eq!(count, 49, "every manifest entry is a vector");
    assert!(
        failures.is_empty(),
        "RFC 4475 failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn rfc5118_vectors() {
    let mut names: Vec<String> = std::fs::read_dir(dir("rfc5118"))
        .expect("rfc5118 dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "MANIFEST.tsv")
        .collect();
    names.sort();
    assert_eq!(names.len(), 12);
    let mut failures = Vec::new();
    for name in &names {
        let data = load(&dir("rfc5118").join(name));
        let (got, why) = outcome(data.clone());
        // README: ipv6-bad and ipv6-bug-abnf-3-colons are invalid; port-ambiguous is a valid IPv6 address with no
        // port (RFC 5118 §4.4); the others parse.
        let want = match name.as_str() {
            "ipv6-bad" | "ipv6-bug-abnf-3-colons" => Outcome::Rejected,
            _ => Outcome::Accepted,
        };
        eprintln!("{name}\t{want:?}\t{got:?}\t{why}");
        if got != want {
            failures.push(format!("{name}: expected {want:?}, got {got:?} ({why})"));
        }
        assert_round_trip(name, data);
    }
    assert!(
        failures.is_empty(),
        "RFC 5118 failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn specific_vector_details() {
    // port-ambiguous: the whole bracket is the address, no port.
    let m = Message::parse_datagram(load(&dir("rfc5118").join("port-ambiguous"))).unwrap();
    let r = m.as_request().unwrap();
    assert_eq!(r.uri.to_string(), "sip:[2001:db8::10:5070]");
    assert_eq!(r.uri.port(), None);
    // dblreq: the first message is kept, the rest of the datagram dropped.
    let m = Message::parse_datagram(load(&dir("rfc4475").join("dblreq.dat"))).unwrap();
    assert_eq!(m.body().len(), 0);
    // wsinv: folding, compact forms, LWS everywhere.
    let m = Message::parse_datagram(load(&dir("rfc4475").join("wsinv.dat"))).unwrap();
    let h = m.headers();
    assert_eq!(h.max_forwards().unwrap(), Some(68));
    assert_eq!(h.cseq().unwrap().seq, 9);
    let vias = h.via().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(
        vias[2].branch().map(|b| b.to_vec()),
        Some(b"z9hG4bK30239".to_vec())
    );
    assert_eq!(
        h.to().unwrap().tag().map(|b| b.to_vec()),
        Some(b"1918181833n".to_vec())
    );
    assert_eq!(
        h.from().unwrap().tag().map(|b| b.to_vec()),
        Some(b"98asjd8".to_vec())
    );
    assert_eq!(m.body().len(), 150);
    // badvers: a typed version error.
    assert_eq!(
        Message::parse_datagram(load(&dir("rfc4475").join("badvers.dat"))).unwrap_err(),
        ParseError::Version
    );
    // esc01: escaped user part decodes.
    let m = Message::parse_datagram(load(&dir("rfc4475").join("esc01.dat"))).unwrap();
    let to = m.headers().to().unwrap();
    assert_eq!(to.uri.as_sip().unwrap().user_unescaped().unwrap(), b"user");
    // longreq: 34 Via lines including compact and odd-case names.
    let m = Message::parse_datagram(load(&dir("rfc4475").join("longreq.dat"))).unwrap();
    assert!(m.headers().via().unwrap().len() >= 30);
}
