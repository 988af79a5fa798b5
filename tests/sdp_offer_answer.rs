//! RFC 3264 offer/answer through LocalSession.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rappel::media::g711::Law;
use rappel::sdp::{
    bridge_mode, BridgeMode, Codec, CodecName, Direction, LocalSession, Sdp, SdpError,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn g711_te() -> Vec<Codec> {
    vec![Codec::pcmu(), Codec::pcma(), Codec::telephone_event(101)]
}

#[test]
fn offer_answer_round_trip_between_two_sessions() {
    let mut a = LocalSession::new(1000, addr("10.0.0.1:4000"));
    let mut b = LocalSession::new(2000, addr("10.0.0.2:5000"));
    let offer = a.offer(&g711_te(), Direction::SendRecv);
    let text = String::from_utf8(offer.to_bytes()).unwrap();
    assert!(text.contains("m=audio 4000 RTP/AVP 0 8 101\r\n"), "{text}");
    assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"));
    assert!(
        text.contains("a=rtcp-mux\r\n")
            && text.contains("a=sendrecv\r\n")
            && text.contains("a=ptime:20\r\n")
    );
    assert!(
        text.starts_with(
            "v=0\r\no=rappel 1000 1000 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        ),
        "{text}"
    );

    // Parse as the remote would.
    let offer_rx = Sdp::parse(&offer.to_bytes()).unwrap();
    // B prefers PCMA and uses PT 96 for telephone-event: the answer keeps the offer's PT 101.
    let supported = vec![Codec::pcma(), Codec::pcmu(), Codec::telephone_event(96)];
    let (answer, nb) = b
        .answer(&offer_rx, &supported, Direction::SendRecv)
        .unwrap();
    assert_eq!(nb.codec, Codec::pcma());
    assert_eq!(
        (
            nb.telephone_event_pt,
            nb.telephone_event_recv_pt,
            nb.recv_pt
        ),
        (Some(101), Some(101), 8)
    );
    assert_eq!(nb.remote_rtp, addr("10.0.0.1:4000"));
    assert_eq!(nb.remote_rtcp, addr("10.0.0.1:4000"), "rtcp-mux agreed");
    assert!(nb.rtcp_mux);
    assert_eq!(
        (nb.direction, nb.ptime, nb.media_index),
        (Direction::SendRecv, 20, 0)
    );
    assert_eq!(answer.media[0].formats, vec!["8", "101"]);

    let answer_rx = Sdp::parse(&answer.to_bytes()).unwrap();
    let na = a.accept_answer(&offer, &answer_rx).unwrap();
    assert_eq!(na.codec, Codec::pcma());
    assert_eq!(na.telephone_event_pt, Some(101));
    assert_eq!(na.remote_rtp, addr("10.0.0.2:5000"));
    assert_eq!(na.direction, Direction::SendRecv);
    assert!(na.rtcp_mux);
}

#[test]
fn version_bumps_on_changed_offer_only() {
    let mut a = LocalSession::new(77, addr("10.0.0.1:4000"));
    let o1 = a.offer(&g711_te(), Direction::SendRecv);
    assert_eq!((o1.origin.session_id, o1.origin.session_version), (77, 77));
    // Same content again (session refresh): version unchanged (RFC 3264 §8).
    let o2 = a.offer(&g711_te(), Direction::SendRecv);
    assert_eq!(o2.origin.session_version, 77);
    // Hold: new content, version + 1.
    let o3 = a.offer(&g711_te(), Direction::SendOnly);
    assert_eq!(o3.origin.session_version, 78);
    assert_eq!(o3.direction(0), Direction::SendOnly);
    a.set_rtp_addr(addr("10.0.0.9:6000"));
    let o4 = a.offer(&g711_te(), Direction::SendRecv);
    assert_eq!(o4.origin.session_version, 79);
    assert_eq!(
        o4.connection.as_ref().unwrap().address,
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9))
    );
    assert_eq!(a.version(), 79);
}

const REMOTE: &str =
    "v=0\r\no=- 5 5 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n";

fn remote(extra: &str) -> Sdp {
    Sdp::parse(format!("{REMOTE}{extra}").as_bytes()).unwrap()
}

fn answer_dir(offer: &Sdp, ours: Direction) -> (Direction, Direction) {
    let mut s = LocalSession::new(1, addr("10.0.0.1:4000"));
    let (ans, n) = s.answer(offer, &g711_te(), ours).unwrap();
    (ans.direction(n.media_index), n.direction)
}

#[test]
fn direction_negotiation() {
    let m = "m=audio 7000 RTP/AVP 0\r\n";
    assert_eq!(
        answer_dir(&remote(&format!("{m}a=sendonly\r\n")), Direction::SendRecv),
        (Direction::RecvOnly, Direction::RecvOnly)
    );
    assert_eq!(
        answer_dir(&remote(&format!("{m}a=recvonly\r\n")), Direction::SendRecv),
        (Direction::SendOnly, Direction::SendOnly)
    );
    assert_eq!(
        answer_dir(&remote(&format!("{m}a=inactive\r\n")), Direction::SendRecv),
        (Direction::Inactive, Direction::Inactive)
    );
    assert_eq!(
        answer_dir(&remote(m), Direction::SendRecv),
        (Direction::SendRecv, Direction::SendRecv)
    );
    // We put them on hold while they offer sendrecv.
    assert_eq!(
        answer_dir(&remote(m), Direction::SendOnly),
        (Direction::SendOnly, Direction::SendOnly)
    );
    // Session-level direction applies when the m-line has none.
    let s = Sdp::parse(format!("{REMOTE}a=sendonly\r\n{m}").as_bytes()).unwrap();
    assert_eq!(answer_dir(&s, Direction::SendRecv).0, Direction::RecvOnly);
    // Old-style hold: c=0.0.0.0 → we must not send; we may still receive.
    let hold = Sdp::parse(b"v=0\r\no=- 5 6 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n").unwrap();
    let mut s = LocalSession::new(1, addr("10.0.0.1:4000"));
    let (ans, n) = s.answer(&hold, &g711_te(), Direction::SendRecv).unwrap();
    assert_eq!(n.direction, Direction::RecvOnly);
    assert!(!n.direction.sends());
    assert!(n.remote_rtp.ip().is_unspecified());
    assert_eq!(ans.direction(0), Direction::RecvOnly);
}

#[test]
fn multiple_audio_lines_first_usable_accepted_rest_rejected() {
    let offer = remote(
        "m=audio 7000 RTP/SAVP 0\r\n\
         m=audio 7002 RTP/AVP 18\r\n\
         m=audio 7004 RTP/AVP 96 8 97\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:97 telephone-event/8000\r\na=ptime:30\r\n\
         m=audio 7006 RTP/AVP 0\r\n\
         m=video 7008 RTP/AVP 31\r\n",
    );
    let mut s = LocalSession::new(1, addr("10.0.0.1:4000"));
    let (ans, n) = s.answer(&offer, &g711_te(), Direction::SendRecv).unwrap();
    assert_eq!(n.media_index, 2);
    assert_eq!(n.codec, Codec::pcma());
    assert_eq!(n.telephone_event_pt, Some(97));
    assert_eq!(n.ptime, 30);
    assert_eq!(n.remote_rtp, addr("198.51.100.7:7004"));
    assert_eq!(
        n.remote_rtcp,
        addr("198.51.100.7:7005"),
        "no rtcp-mux offered: RTP port + 1"
    );
    assert!(!n.rtcp_mux);
    assert_eq!(ans.media.len(), 5);
    let ports: Vec<u16> = ans.media.iter().map(|m| m.port).collect();
    assert_eq!(ports, vec![0, 0, 4000, 0, 0]);
    assert_eq!(ans.media[4].media, "video");
    assert!(!ans.media[2].rtcp_mux());
    assert_eq!(ans.media[2].rtcp().map(|r| r.0), Some(4001));
    // Opus pass-through when both sides support it.
    let mut s = LocalSession::new(1, addr("10.0.0.1:4000"));
    let (_, n) = s
        .answer(
            &offer,
            &[Codec::opus(111), Codec::pcma()],
            Direction::SendRecv,
        )
        .unwrap();
    assert_eq!(n.codec, Codec::opus(96));
    assert_eq!(n.codec.law(), None);
    assert_eq!(
        n.telephone_event_pt, None,
        "we did not list telephone-event"
    );
}

#[test]
fn rtcp_attribute_and_errors() {
    let offer = remote("m=audio 7000 RTP/AVP 0\r\na=rtcp:9000 IN IP4 198.51.100.8\r\n");
    let mut s = LocalSession::new(1, addr("10.0.0.1:4000"));
    let (_, n) = s.answer(&offer, &g711_te(), Direction::SendRecv).unwrap();
    assert_eq!(n.remote_rtcp, addr("198.51.100.8:9000"));

    let g729 = remote("m=audio 7000 RTP/AVP 18\r\n");
    assert_eq!(
        s.answer(&g729, &g711_te(), Direction::SendRecv)
            .unwrap_err(),
        SdpError::NoCommonCodec
    );
    let video = remote("m=video 7000 RTP/AVP 31\r\n");
    assert_eq!(
        s.answer(&video, &g711_te(), Direction::SendRecv)
            .unwrap_err(),
        SdpError::NoAudio
    );
    let no_c = Sdp::parse(b"v=0\r\no=- 5 5 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n")
        .unwrap();
    assert_eq!(
        s.answer(&no_c, &g711_te(), Direction::SendRecv)
            .unwrap_err(),
        SdpError::NoConnection { media: 0 }
    );

    let mut a = LocalSession::new(3, addr("10.0.0.1:4000"));
    let offer = a.offer(&g711_te(), Direction::SendRecv);
    let two = remote("m=audio 7000 RTP/AVP 0\r\nm=audio 7002 RTP/AVP 0\r\n");
    assert_eq!(
        a.accept_answer(&offer, &two).unwrap_err(),
        SdpError::MediaCountMismatch {
            offer: 1,
            answer: 2
        }
    );
    let rejected = remote("m=audio 0 RTP/AVP 0\r\n");
    assert_eq!(
        a.accept_answer(&offer, &rejected).unwrap_err(),
        SdpError::Rejected
    );
    let wrong = remote("m=audio 7000 RTP/AVP 18\r\n");
    assert_eq!(
        a.accept_answer(&offer, &wrong).unwrap_err(),
        SdpError::NoCommonCodec
    );
    // Answer with a hold direction: recvonly answer to our sendrecv → we only send.
    let ro =
        remote("m=audio 7000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n");
    let n = a.accept_answer(&offer, &ro).unwrap();
    assert_eq!(
        (n.direction, n.codec.name, n.telephone_event_pt),
        (Direction::SendOnly, CodecName::Pcmu, Some(101))
    );
    assert!(!n.rtcp_mux);
}

#[test]
fn bridge_modes() {
    assert_eq!(
        bridge_mode(&Codec::pcmu(), &Codec::pcmu()),
        BridgeMode::Forward
    );
    assert_eq!(
        bridge_mode(&Codec::pcmu(), &Codec::pcma()),
        BridgeMode::TranscodeG711 {
            a: Law::Ulaw,
            b: Law::Alaw
        }
    );
    assert_eq!(
        bridge_mode(&Codec::opus(96), &Codec::opus(111)),
        BridgeMode::Forward
    );
    assert_eq!(
        bridge_mode(&Codec::opus(96), &Codec::pcma()),
        BridgeMode::Incompatible
    );
    assert_eq!(
        bridge_mode(&Codec::g722(), &Codec::pcmu()),
        BridgeMode::Incompatible
    );
}

#[test]
fn direction_algebra() {
    use Direction::*;
    for d in [SendRecv, SendOnly, RecvOnly, Inactive] {
        assert_eq!(d.reverse().reverse(), d);
        assert_eq!(d.intersect(SendRecv), d);
        assert_eq!(d.intersect(Inactive), Inactive);
    }
    assert_eq!(SendOnly.reverse(), RecvOnly);
    assert_eq!(SendOnly.intersect(RecvOnly), Inactive);
}

#[test]
fn answer_renumbering_dynamic_types_keeps_both_numbers() {
    let mut a = LocalSession::new(3, addr("10.0.0.1:4000"));
    let offer = a.offer(
        &[Codec::opus(111), Codec::pcmu(), Codec::telephone_event(101)],
        Direction::SendRecv,
    );
    let ans = remote("m=audio 7000 RTP/AVP 96 100\r\na=rtpmap:96 OPUS/48000/2\r\na=rtpmap:100 telephone-event/8000\r\n");
    let n = a.accept_answer(&offer, &ans).unwrap();
    assert_eq!(
        (n.codec.name, n.codec.pt, n.recv_pt),
        (CodecName::Opus, 96, 111)
    );
    assert_eq!(
        (n.telephone_event_pt, n.telephone_event_recv_pt),
        (Some(100), Some(101))
    );
}

#[test]
fn answer_with_old_style_hold_means_we_do_not_send() {
    let mut a = LocalSession::new(3, addr("10.0.0.1:4000"));
    let offer = a.offer(&g711_te(), Direction::SendRecv);
    let hold = Sdp::parse(
        b"v=0\r\no=- 5 6 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\n",
    )
    .unwrap();
    let n = a.accept_answer(&offer, &hold).unwrap();
    assert_eq!(n.direction, Direction::RecvOnly);
    assert!(n.remote_rtp.ip().is_unspecified());
    assert_eq!(n.codec, Codec::pcma());
}
