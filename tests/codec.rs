//! Codec behaviour beyond the RFC vectors: compact forms, folding, multi-values, IPv6, builders, round-trip,
//! stream framing, stateless error responses, and no panics on mangled input.

use bytes::Bytes;
use rappel::sip::message::{
    error_response_for, CSeq, HeaderName, Host, Message, Method, NameAddr, ParseError, ParseLimits,
    Request, Response, StatusCode, StreamFramer, Transport, Uri, Via,
};

const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;rport, SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK2\r\n\
f: \"Alice, A.\" <sip:alice@example.com>;tag=9fxced76sl\r\n\
t: Bob <sip:bob@example.com>\r\n\
i: 3848276298220188511@192.0.2.1\r\n\
CSeq: 1 INVITE\r\n\
m: <sip:alice@192.0.2.1>, <sip:alice@[2001:db8::1]:5070;transport=tcp>\r\n\
Subject: a folded\r\n\
\x20\tsubject line\r\n\
k: timer, 100rel\r\n\
c: application/sdp\r\n\
l: 4\r\n\
\r\n\
v=0\r\n";

fn parse(s: &str) -> Message {
    Message::parse_datagram(Bytes::copy_from_slice(s.as_bytes())).expect("parses")
}

#[test]
fn compact_forms_folding_multivalue_ipv6() {
    let m = parse(INVITE);
    let h = m.headers();
    assert_eq!(
        h.call_id().unwrap(),
        Bytes::from_static(b"3848276298220188511@192.0.2.1")
    );
    let vias = h.via().unwrap();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[1].transport, Transport::Tcp);
    assert_eq!(vias[1].host, Host::Ipv6("2001:db8::1".parse().unwrap()));
    assert_eq!(vias[1].port, Some(5070));
    let contacts = h.contacts().unwrap();
    assert_eq!(contacts.len(), 2);
    assert_eq!(contacts[1].uri.port(), Some(5070));
    assert_eq!(
        h.from().unwrap().display_name_text().as_deref(),
        Some("Alice, A.")
    );
    assert_eq!(
        h.get(&HeaderName::Subject).map(|v| v.to_vec()),
        Some(b"a folded subject line".to_vec())
    );
    assert_eq!(
        h.supported().unwrap(),
        vec![Bytes::from_static(b"timer"), Bytes::from_static(b"100rel")]
    );
    assert!(h.content_type().unwrap().unwrap().is("application", "SDP"));
    assert_eq!(m.body().as_ref(), b"v=0\r");
    assert!(m.check().is_ok());
}

#[test]
fn values_are_slices_of_the_input() {
    let data = Bytes::copy_from_slice(INVITE.as_bytes());
    let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
    let m = Message::parse_datagram(data.clone()).unwrap();
    let call_id = m.headers().get(&HeaderName::CallId).unwrap();
    assert!(
        range.contains(&(call_id.as_ptr() as usize)),
        "Call-ID value is not copied"
    );
    assert!(
        range.contains(&(m.body().as_ptr() as usize)),
        "body is not copied"
    );
}

#[test]
fn round_trip_rewrites_content_length() {
    let mut m = parse(INVITE);
    if let Message::Request(r) = &mut m {
        r.body = Bytes::from_static(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n");
    }
    let wire = m.to_bytes();
    let again = Message::parse_datagram(wire.clone()).unwrap();
    assert_eq!(
        again.headers().content_length().unwrap(),
        Some(m.body().len())
    );
    assert_eq!(again.body(), m.body());
    assert_eq!(again.headers().via().unwrap(), m.headers().via().unwrap());
    assert_eq!(again.to_bytes(), wire);
}

#[test]
fn builders_and_response_for_request() {
    let uri = Uri::parse("sip:alice@127.0.0.1:5080").unwrap();
    let mut req = Request::new(Method::Invite, uri.clone());
    req.push_via(&Via::new(
        Transport::Udp,
        Host::Ipv4("127.0.0.1".parse().unwrap()),
        Some(5060),
        "z9hG4bKabc",
    ));
    let mut from =
        NameAddr::new(Uri::parse("sip:rappel@127.0.0.1").unwrap()).with_display_name("Rappel");
    from.set_tag("ftag");
    req.set_from(&from);
    req.set_to(&NameAddr::new(uri));
    req.set_call_id("cid@127.0.0.1");
    req.set_cseq(1, Method::Invite);
    req.set_max_forwards(70);
    req.set_body("application/sdp", "v=0\r\n");
    let msg = Message::Request(req.clone());
    let parsed = Message::parse_datagram(msg.to_bytes()).unwrap();
    assert!(parsed.check().is_ok());
    let preq = parsed.as_request().unwrap();
    assert_eq!(preq.uri.to_string(), "sip:alice@127.0.0.1:5080");
    assert_eq!(
        preq.headers.cseq().unwrap(),
        CSeq {
            seq: 1,
            method: Method::Invite
        }
    );
    assert_eq!(
        preq.headers.top_via().unwrap().branch().map(|b| b.to_vec()),
        Some(b"z9hG4bKabc".to_vec())
    );

    let mut resp = Response::for_request(preq, StatusCode::RINGING);
    resp.set_to_tag("ttag");
    assert_eq!(resp.reason.as_ref(), b"Ringing");
    assert_eq!(
        resp.headers.to().unwrap().tag().map(|b| b.to_vec()),
        Some(b"ttag".to_vec())
    );
    resp.set_to_tag("other");
    assert_eq!(
        resp.headers.to().unwrap().tag().map(|b| b.to_vec()),
        Some(b"other".to_vec())
    );
    assert_eq!(
        resp.headers.from().unwrap().tag().map(|b| b.to_vec()),
        Some(b"ftag".to_vec())
    );
    assert_eq!(resp.headers.via().unwrap(), preq.headers.via().unwrap());
    assert_eq!(
        resp.headers.call_id().unwrap(),
        preq.headers.call_id().unwrap()
    );
    assert!(!resp.headers.contains(&HeaderName::ContentType));
    let wire = Message::Response(resp).to_bytes();
    assert!(wire.starts_with(b"SIP/2.0 180 Ringing\r\n"));
    assert!(wire.ends_with(b"Content-Length: 0\r\n\r\n"));
}

#[test]
fn datagram_framing() {
    // missing Content-Length over UDP: the body is the rest
    let m = parse("MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\nhello");
    assert_eq!(m.body().as_ref(), b"hello");
    // extra octets dropped
    let m = parse("MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 2\r\n\r\nhello");
    assert_eq!(m.body().as_ref(), b"he");
    let bad = |s: &str| Message::parse_datagram(Bytes::copy_from_slice(s.as_bytes())).unwrap_err();
    assert_eq!(
        bad("MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 20\r\n\r\nhello"),
        ParseError::BodyTruncated {
            declared: 20,
            available: 5
        }
    );
    assert!(matches!(
        bad("MESSAGE sip:a@b SIP/2.0\r\nl: -1\r\n\r\n"),
        ParseError::Header { .. }
    ));
    assert!(matches!(
        bad("MESSAGE sip:a@b SIP/2.0\r\nl: 99999999999999999999999\r\n\r\n"),
        ParseError::Header { .. }
    ));
    assert_eq!(
        bad("MESSAGE sip:a@b SIP/2.0\r\nl: 0\r\n"),
        ParseError::Truncated
    );
    assert_eq!(
        bad("MESSAGE sip:a@b SIP/2.0\r\nno colon\r\n\r\n"),
        ParseError::HeaderLine { line: 2 }
    );
    assert_eq!(
        bad("MESSAGE sip:a@b SIP/2.0\r\nX: a\rb\r\n\r\n"),
        ParseError::HeaderLine { line: 2 }
    );
    // limits
    let limits = ParseLimits {
        max_message: 1000,
        max_headers: 3,
        max_line: 50,
    };
    let many = "OPTIONS sip:a@b SIP/2.0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
    assert_eq!(
        Message::parse_datagram_with(Bytes::from_static(many.as_bytes()), &limits).unwrap_err(),
        ParseError::TooManyHeaders { max: 3 }
    );
    let long = format!("OPTIONS sip:a@b SIP/2.0\r\nX: {}\r\n\r\n", "a".repeat(60));
    assert_eq!(
        Message::parse_datagram_with(Bytes::from(long), &limits).unwrap_err(),
        ParseError::LineTooLong { max: 50 }
    );
    let big = Bytes::from(vec![b'a'; 70_000]);
    assert!(matches!(
        Message::parse_datagram(big).unwrap_err(),
        ParseError::MessageTooLarge { .. }
    ));
}

fn two_messages() -> (Vec<u8>, Message, Message) {
    let a = parse(INVITE);
    let b = parse("SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\nContent-Length: 3\r\n\r\nabc");
    let mut wire = b"\r\n\r\n".to_vec(); // keep-alive before the first message
    wire.extend_from_slice(&a.to_bytes());
    wire.extend_from_slice(b"\r\n"); // pong between messages
    wire.extend_from_slice(&b.to_bytes());
    (wire, a, b)
}

#[test]
fn stream_split_at_every_boundary() {
    let (wire, a, b) = two_messages();
    for cut in 0..=wire.len() {
        let mut f = StreamFramer::default();
        let mut got = Vec::new();
        for chunk in [&wire[..cut], &wire[cut..]] {
            f.push(chunk).unwrap();
            while let Some(m) = f.pop().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![a.clone(), b.clone()], "cut at {cut}");
        assert_eq!(f.buffered(), 0);
    }
    // byte by byte
    let mut f = StreamFramer::default();
    let mut n = 0;
    for byte in &wire {
        f.push(std::slice::from_ref(byte)).unwrap();
        while f.pop().unwrap().is_some() {
            n += 1;
        }
    }
    assert_eq!(n, 2);
}

#[test]
fn stream_two_messages_in_one_chunk() {
    let (wire, a, b) = two_messages();
    let mut f = StreamFramer::default();
    f.push(&wire).unwrap();
    assert_eq!(f.pop().unwrap(), Some(a));
    assert_eq!(f.pop().unwrap(), Some(b));
    assert_eq!(f.pop().unwrap(), None);
}

#[test]
fn stream_errors_poison_the_framer() {
    let limits = ParseLimits {
        max_message: 200,
        ..ParseLimits::default()
    };
    // oversize Content-Length: refused as soon as the head is in, without waiting for the body
    let mut f = StreamFramer::new(limits);
    f.push(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    assert!(matches!(f.pop(), Err(ParseError::MessageTooLarge { .. })));
    assert!(f.pop().is_err() && f.push(b"x").is_err());
    assert_eq!(f.buffered(), 0);
    // overflowing / negative Content-Length
    for cl in ["18446744073709551616", "-5", "4294967296"] {
        let mut f = StreamFramer::new(limits);
        f.push(format!("MESSAGE sip:a@b SIP/2.0\r\nContent-Length: {cl}\r\n\r\n").as_bytes())
            .unwrap();
        assert!(
            matches!(
                f.pop(),
                Err(ParseError::Header {
                    name: HeaderName::ContentLength,
                    ..
                })
            ),
            "{cl}"
        );
    }
    // missing Content-Length
    let mut f = StreamFramer::new(limits);
    f.push(b"MESSAGE sip:a@b SIP/2.0\r\n\r\n").unwrap();
    assert_eq!(f.pop(), Err(ParseError::MissingContentLength));
    // a header block that never ends is bounded
    let mut f = StreamFramer::new(limits);
    let mut err = None;
    for _ in 0..100 {
        if let Err(e) = f
            .push(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")
            .and_then(|_| f.pop().map(|_| ()))
        {
            err = Some(e);
            break;
        }
        assert!(f.buffered() <= 2 * 200);
    }
    assert!(matches!(err, Some(ParseError::MessageTooLarge { .. })));
    // garbage start line
    let mut f = StreamFramer::default();
    f.push(b"HELLO\r\n\r\n").unwrap();
    assert_eq!(f.pop(), Err(ParseError::StartLine));
}

#[test]
fn stateless_error_response_for_malformed_request() {
    let raw = Bytes::from_static(
        b"INVITE sip:bob@example.com SIP/7.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:bob@example.com>\r\nCall-ID: x@y\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    );
    let err = Message::parse_datagram(raw.clone()).unwrap_err();
    assert_eq!(err, ParseError::Version);
    let resp = error_response_for(&raw, &err, "t1").unwrap();
    assert_eq!(resp.status, StatusCode::VERSION_NOT_SUPPORTED);
    assert_eq!(
        resp.headers.top_via().unwrap().branch().map(|b| b.to_vec()),
        Some(b"z9hG4bK1".to_vec())
    );
    assert_eq!(
        resp.headers.to().unwrap().tag().map(|b| b.to_vec()),
        Some(b"t1".to_vec())
    );
    assert!(Message::parse_datagram(Message::Response(resp).to_bytes())
        .unwrap()
        .check()
        .is_ok());

    let bad_cl = Bytes::from_static(
        b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK2\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:bob@example.com>\r\nCall-ID: x@y\r\nCSeq: 1 OPTIONS\r\nContent-Length: -3\r\n\r\n",
    );
    let err = Message::parse_datagram(bad_cl.clone()).unwrap_err();
    assert_eq!(
        error_response_for(&bad_cl, &err, "t").unwrap().status,
        StatusCode::BAD_REQUEST
    );
    // never for a response or an ACK, nor without the headers needed to route it
    let resp = Bytes::from_static(b"SIP/2.0 200 OK\r\nVia: x\r\nl: -1\r\n\r\n");
    assert!(error_response_for(&resp, &ParseError::StatusCode, "t").is_none());
    let ack = Bytes::from_static(b"ACK sip:a@b SIP/3.0\r\nVia: SIP/2.0/UDP h\r\n\r\n");
    assert!(error_response_for(&ack, &ParseError::Version, "t").is_none());
    let noid = Bytes::from_static(b"BYE sip:a@b SIP/3.0\r\nVia: SIP/2.0/UDP h\r\n\r\n");
    assert!(error_response_for(&noid, &ParseError::Version, "t").is_none());
}

/// Deterministic mangling of every vector (truncations, byte flips, inserted CR/LF/SP/quotes): parsing, checking,
/// validating, writing and error responses must never panic, and anything that parses must re-parse after writing.
#[test]
fn mangled_vectors_never_panic() {
    let mut files = Vec::new();
    for sub in ["rfc4475", "rfc5118"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors")
            .join(sub);
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if !p.ends_with("MANIFEST.tsv") {
                files.push(std::fs::read(p).unwrap());
            }
        }
    }
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let specials = [
        b'\r', b'\n', b' ', b'"', b'<', b'>', b',', b';', b':', b'%', b'[', b']', 0, 0xff,
    ];
    let mut parsed = 0;
    for f in &files {
        for i in 0..200 {
            let mut d = f.clone();
            match i % 3 {
                0 => d.truncate((next() as usize) % (d.len() + 1)),
                1 => {
                    for _ in 0..(1 + next() % 4) {
                        let pos = (next() as usize) % d.len();
                        d[pos] = specials[(next() as usize) % specials.len()];
                    }
                }
                _ => {
                    let pos = (next() as usize) % (d.len() + 1);
                    d.insert(pos, specials[(next() as usize) % specials.len()]);
                }
            }
            let raw = Bytes::from(d);
            match Message::parse_datagram(raw.clone()) {
                Ok(m) => {
                    parsed += 1;
                    let _ = m.check();
                    if let Message::Request(r) = &m {
                        let _ = rappel::sip::message::validate_request(r, &Default::default());
                    }
                    let again =
                        Message::parse_datagram(m.to_bytes()).expect("written form re-parses");
                    assert_eq!(again.body(), m.body());
                }
                Err(e) => {
                    if let Some(resp) = error_response_for(&raw, &e, "tag") {
                        Message::parse_datagram(Message::Response(resp).to_bytes())
                            .expect("error response parses");
                    }
                }
            }
            let mut f = StreamFramer::default();
            let _ = f.push(&raw).and_then(|_| f.pop());
        }
    }
    assert!(
        parsed > 100,
        "mangling left some messages parseable ({parsed})"
    );
}

#[test]
fn rejection_responses_carry_what_the_rfc_asks() {
    use rappel::sip::message::{validate_request, RejectReason, UaPolicy};
    let policy = UaPolicy::default();
    let base = "OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:bob@example.com>\r\nCall-ID: c@h\r\nCSeq: 2 OPTIONS\r\nMax-Forwards: 70\r\n";
    let req = |extra: &str| {
        let m = parse(&format!("{base}{extra}Content-Length: 0\r\n\r\n"));
        m.as_request().cloned().unwrap()
    };
    assert_eq!(validate_request(&req(""), &policy), Ok(()));
    assert_eq!(
        validate_request(&req("Require: timer\r\n"), &policy),
        Ok(())
    );

    let r = req("Require: foo, timer\r\nProxy-Require: bar\r\n");
    let rej = validate_request(&r, &policy).unwrap_err();
    assert_eq!(rej.status, StatusCode::BAD_EXTENSION);
    assert_eq!(
        rej.reason,
        RejectReason::BadExtension(vec![Bytes::from_static(b"foo"), Bytes::from_static(b"bar")])
    );
    let resp = rej.response(&r, &policy, "tt");
    assert_eq!(
        resp.headers.unsupported().unwrap(),
        vec![Bytes::from_static(b"foo"), Bytes::from_static(b"bar")]
    );
    assert_eq!(
        resp.headers.to().unwrap().tag().map(|t| t.to_vec()),
        Some(b"tt".to_vec())
    );

    let mut r = req("");
    r.set_body("text/plain", "hi");
    let rej = validate_request(&r, &policy).unwrap_err();
    assert_eq!(rej.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = rej.response(&r, &policy, "tt");
    assert_eq!(
        resp.headers.get(&HeaderName::Accept).map(|v| v.to_vec()),
        Some(b"application/sdp".to_vec())
    );

    let rej = validate_request(&req("CSeq: 3 OPTIONS\r\n"), &policy).unwrap_err();
    assert_eq!(
        rej.reason,
        RejectReason::Malformed(ParseError::Duplicate {
            name: HeaderName::CSeq
        })
    );
    let mf0 = base.replace("Max-Forwards: 70", "Max-Forwards: 0");
    let r = parse(&format!("{mf0}Content-Length: 0\r\n\r\n"));
    assert_eq!(
        validate_request(r.as_request().unwrap(), &policy)
            .unwrap_err()
            .status,
        StatusCode::TOO_MANY_HOPS
    );
    let tel = base.replace("OPTIONS sip:bob@example.com", "OPTIONS tel:+15551234");
    let r = parse(&format!("{tel}Content-Length: 0\r\n\r\n"));
    assert_eq!(
        validate_request(r.as_request().unwrap(), &policy)
            .unwrap_err()
            .status,
        StatusCode::UNSUPPORTED_URI_SCHEME
    );
}
