//! SDP parsing and writing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rappel::sdp::{
    AddrType, Attribute, AttributeKind, Connection, Direction, LineProblem, RtpMap, Sdp, SdpError,
    MAX_SDP_BYTES, MAX_SDP_LINES,
};

const OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844527 IN IP4 host.example.com\r\n\
s=-\r\n\
i=A call\r\n\
c=IN IP4 192.0.2.10\r\n\
b=AS:64\r\n\
t=0 0\r\n\
a=sendrecv\r\n\
a=tool:test\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=maxptime:150\r\n\
a=rtcp:53020 IN IP4 192.0.2.11\r\n\
a=sendonly\r\n\
a=x-unknown:something here\r\n\
m=audio 49180 RTP/AVP 111\r\n\
c=IN IP6 2001:db8::1\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-mux\r\n\
m=video 0 RTP/AVP 31\r\n";

#[test]
fn parses_every_modelled_line() {
    let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
    assert_eq!(sdp.origin.username, "alice");
    assert_eq!(sdp.origin.session_id, 2890844526);
    assert_eq!(sdp.origin.session_version, 2890844527);
    assert_eq!(sdp.origin.addr_type, AddrType::Ip4);
    assert_eq!(sdp.origin.address, "host.example.com");
    assert_eq!(sdp.session_name, "-");
    assert_eq!(
        sdp.connection,
        Some(Connection::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))))
    );
    assert_eq!(sdp.timing, (0, 0));
    assert_eq!(sdp.other.len(), 2);
    assert_eq!(
        (sdp.other[0].kind, sdp.other[0].value.as_str()),
        ('i', "A call")
    );
    assert_eq!(sdp.media.len(), 3);

    let m = &sdp.media[0];
    assert_eq!(
        (m.media.as_str(), m.port, m.protocol.as_str()),
        ("audio", 49170, "RTP/AVP")
    );
    assert_eq!(m.payload_types().collect::<Vec<_>>(), vec![0, 8, 101]);
    assert_eq!(
        m.rtpmap(101),
        Some(&RtpMap {
            pt: 101,
            encoding: "telephone-event".into(),
            clock_rate: 8000,
            channels: None
        })
    );
    assert_eq!(m.fmtp(101), Some("0-16"));
    assert_eq!((m.ptime(), m.maxptime()), (Some(20), Some(150)));
    let (port, c) = m.rtcp().unwrap();
    assert_eq!(
        (port, c.unwrap().address),
        (53020, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)))
    );
    assert!(!m.rtcp_mux());
    assert_eq!(sdp.direction(0), Direction::SendOnly);
    assert!(m.attributes.contains(&Attribute::Other {
        name: "x-unknown".into(),
        value: Some("something here".into())
    }));

    let m1 = &sdp.media[1];
    assert_eq!(
        m1.connection.as_ref().unwrap().address,
        IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap())
    );
    assert_eq!(m1.rtpmap(111).unwrap().channels, Some(2));
    assert!(m1.rtcp_mux());
    assert_eq!(
        sdp.direction(1),
        Direction::SendRecv,
        "session-level default"
    );
    assert_eq!(
        sdp.effective_connection(0).unwrap().address,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))
    );
    assert_eq!(sdp.media[2].port, 0);
}

#[test]
fn write_then_parse_is_identity_and_keeps_unknown_lines() {
    let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
    let bytes = sdp.to_bytes();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.contains("a=x-unknown:something here\r\n"));
    assert!(text.contains("b=AS:64\r\n"));
    assert!(text.contains("i=A call\r\n"));
    assert_eq!(Sdp::parse(&bytes).unwrap(), sdp);
    // Our serialisation of a canonical body is byte-identical.
    assert_eq!(text, OFFER);
}

#[test]
fn lenient_on_lf_blank_lines_missing_t_and_decimal_ptime() {
    let body = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns= \n\nc=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 0\na=ptime:20.0\n";
    let sdp = Sdp::parse(body.as_bytes()).unwrap();
    assert_eq!(sdp.timing, (0, 0));
    assert_eq!(sdp.session_name, " ");
    assert_eq!(sdp.media[0].ptime(), Some(20));
    // Multicast suffix kept.
    let mc = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 h\r\ns=x\r\nc=IN IP4 224.2.1.1/127/3\r\nt=0 0\r\n")
        .unwrap();
    assert_eq!(
        mc.connection.as_ref().unwrap().multicast.as_deref(),
        Some("127/3")
    );
    assert!(String::from_utf8(mc.to_bytes())
        .unwrap()
        .contains("c=IN IP4 224.2.1.1/127/3\r\n"));
}

fn line_err(body: &str) -> (usize, LineProblem) {
    match Sdp::parse(body.as_bytes()) {
        Err(SdpError::Line { line, problem }) => (line, problem),
        other => panic!("expected a line error for {body:?}, got {other:?}"),
    }
}

#[test]
fn typed_errors_with_line_numbers() {
    let head = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n";
    assert_eq!(line_err("v=1\r\n"), (1, LineProblem::BadVersion));
    assert_eq!(
        line_err("o=- 1 1 IN IP4 a\r\n"),
        (1, LineProblem::BadVersion)
    );
    assert_eq!(
        line_err(&format!("{head}garbage\r\n")),
        (5, LineProblem::Syntax)
    );
    assert_eq!(
        line_err(&format!("{head}c=IN IP4 not-an-ip\r\n")),
        (5, LineProblem::BadConnection)
    );
    assert_eq!(
        line_err(&format!("{head}c=IN IP6 10.0.0.1\r\n")),
        (5, LineProblem::BadConnection)
    );
    assert_eq!(
        line_err(&format!("{head}m=audio notaport RTP/AVP 0\r\n")),
        (5, LineProblem::BadMedia)
    );
    assert_eq!(
        line_err(&format!("{head}m=audio 70000 RTP/AVP 0\r\n")),
        (5, LineProblem::BadMedia)
    );
    assert_eq!(
        line_err(&format!("{head}m=audio 1 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n")),
        (6, LineProblem::BadAttribute(AttributeKind::RtpMap))
    );
    assert_eq!(
        line_err(&format!("{head}a=ptime:abc\r\n")),
        (5, LineProblem::BadAttribute(AttributeKind::Ptime))
    );
    assert_eq!(
        line_err(&format!("{head}a=rtcp:x\r\n")),
        (5, LineProblem::BadAttribute(AttributeKind::Rtcp))
    );
    assert_eq!(
        line_err(&format!("{head}a=rtcp-mux:1\r\n")),
        (5, LineProblem::BadAttribute(AttributeKind::Flag))
    );
    assert_eq!(
        line_err(&format!("{head}s=again\r\n")),
        (5, LineProblem::Duplicate('s'))
    );
    assert_eq!(
        line_err(&format!("{head}m=audio 1 RTP/AVP 0\r\nt=0 0\r\n")),
        (6, LineProblem::Misplaced('t'))
    );
    assert_eq!(
        line_err("v=0\r\no=- x 1 IN IP4 a\r\n"),
        (2, LineProblem::BadOrigin)
    );
    assert_eq!(line_err("v=0\r\n1=1\r\n"), (2, LineProblem::Syntax));
    assert_eq!(
        Sdp::parse(b"v=0\r\ns=-\r\n"),
        Err(SdpError::Missing { field: 'o' })
    );
    assert_eq!(Sdp::parse(b""), Err(SdpError::Missing { field: 'v' }));
    let bad_utf8 = [b"v=0\r\ni=".as_slice(), &[0xC3, 0x28], b"\r\n"].concat();
    assert_eq!(
        Sdp::parse(&bad_utf8),
        Err(SdpError::Line {
            line: 2,
            problem: LineProblem::NotUtf8
        })
    );
}

#[test]
fn caps_on_size_and_lines() {
    let big = vec![b'a'; MAX_SDP_BYTES + 1];
    assert!(matches!(Sdp::parse(&big), Err(SdpError::TooLarge { .. })));
    let mut many = String::from("v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\n");
    for _ in 0..MAX_SDP_LINES {
        many.push_str("a=x\r\n");
    }
    assert!(many.len() <= MAX_SDP_BYTES);
    assert_eq!(
        Sdp::parse(many.as_bytes()),
        Err(SdpError::TooManyLines { max: MAX_SDP_LINES })
    );
}

#[test]
fn mutated_input_never_panics() {
    let mut rng = SmallRng::seed_from_u64(7);
    let base = OFFER.as_bytes();
    for _ in 0..20_000 {
        let mut v = base.to_vec();
        for _ in 0..rng.random_range(1..8) {
            let i = rng.random_range(0..v.len());
            match rng.random_range(0..4) {
                0 => v[i] = rng.random(),
                1 => {
                    v.remove(i);
                }
                2 => v.insert(
                    i,
                    *b"=:/ \r\n0".get(rng.random_range(0..7)).unwrap_or(&b'x'),
                ),
                _ => v.truncate(i),
            }
            if v.is_empty() {
                break;
            }
        }
        if let Ok(sdp) = Sdp::parse(&v) {
            // Whatever parses must survive a write/parse round trip.
            assert_eq!(Sdp::parse(&sdp.to_bytes()).as_ref(), Ok(&sdp));
        }
    }
}
