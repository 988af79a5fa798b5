//! The demo phones, called by rappel's own SIP driver over loopback: ringing, answer, a tone both ways, hang-up.

use bytes::Bytes;
use rappel::demo::{Behaviour, DemoPhone};
use rappel::media::g711::Law;
use rappel::media::tone::goertzel_power;
use rappel::net::sip::SipDriver;
use rappel::net::transport::SipTransportConfig;
use rappel::sip::endpoint::{CallHandle, EndpointConfig, Event, InviteRequest, TerminationReason};
use rappel::sip::message::StatusCode;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

async fn caller() -> SipDriver {
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    SipDriver::start(SipTransportConfig::new(bind), EndpointConfig::new(bind))
        .await
        .unwrap()
}

fn offer(rtp: SocketAddr) -> Bytes {
    Bytes::from(format!(
        "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 8\r\n\
         a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n",
        rtp.port()
    ))
}

async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("event in time")
        .expect("driver running")
}

async fn invite(d: &SipDriver, phone: &DemoPhone, rtp: SocketAddr) -> CallHandle {
    let req = InviteRequest {
        target: phone.uri(),
        from: "sip:rappel@127.0.0.1".into(),
        to: None,
        next_hop: phone.addr(),
        transport: None,
        sdp: offer(rtp),
        credentials: None,
        extra_headers: vec![],
    };
    d.client
        .exec(move |ep, now| ep.start_invite(now, req))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn answers_sends_a_tone_receives_ours_and_hangs_up() {
    let phone = DemoPhone::start(
        "alice",
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::Answer {
            ring: Duration::from_millis(200),
            talk: Some(Duration::from_millis(1500)),
            tone_hz: 440.0,
        },
    )
    .await
    .unwrap();
    let mut d = caller().await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let call = invite(&d, &phone, rtp.local_addr().unwrap()).await;
    match next(&mut d.events).await {
        Event::Provisional { status, .. } => assert_eq!(status, StatusCode::RINGING),
        e => panic!("expected 180, got {e:?}"),
    }
    match next(&mut d.events).await {
        Event::Answered { body, .. } => assert!(body.starts_with(b"v=0")),
        e => panic!("expected 200, got {e:?}"),
    }
    // Receive the phone's tone and answer each packet with one of ours.
    let mut pcm = Vec::new();
    let mut buf = [0u8; 2048];
    let mut received = 0;
    while received < 25 {
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), rtp.recv_from(&mut buf))
            .await
            .expect("RTP from the phone")
            .unwrap();
        assert_eq!(n, 172, "20 ms of G.711 plus the RTP header");
        assert_eq!(buf[1] & 0x7f, 0, "PCMU, the first codec offered");
        Law::Ulaw.decode_into(&buf[12..n], &mut pcm);
        rtp.send_to(&buf[..n], from).await.unwrap();
        received += 1;
    }
    assert!(
        goertzel_power(&pcm, 440.0) > 100.0 * goertzel_power(&pcm, 1000.0),
        "the phone sends its 440 Hz tone"
    );
    // The phone hangs up by itself after its conversation.
    loop {
        match next(&mut d.events).await {
            Event::Terminated { call: c, reason } if c == call => {
                assert_eq!(reason, TerminationReason::RemoteBye);
                break;
            }
            _ => continue,
        }
    }
    let s = phone.stats();
    assert_eq!(s.calls.load(Ordering::Relaxed), 1);
    assert_eq!(s.answered.load(Ordering::Relaxed), 1);
    assert!(s.rtp_received.load(Ordering::Relaxed) >= 20);
}

#[tokio::test]
async fn busy_phone_answers_486() {
    let phone = DemoPhone::start("bob", "127.0.0.1:0".parse().unwrap(), Behaviour::Busy)
        .await
        .unwrap();
    let mut d = caller().await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    invite(&d, &phone, rtp.local_addr().unwrap()).await;
    match next(&mut d.events).await {
        Event::Terminated { reason, .. } => {
            assert_eq!(reason, TerminationReason::Rejected(StatusCode::BUSY_HERE))
        }
        e => panic!("expected 486, got {e:?}"),
    }
}

#[tokio::test]
async fn unanswered_phone_rings_until_cancelled() {
    let phone = DemoPhone::start("carol", "127.0.0.1:0".parse().unwrap(), Behaviour::NoAnswer)
        .await
        .unwrap();
    let mut d = caller().await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let call = invite(&d, &phone, rtp.local_addr().unwrap()).await;
    match next(&mut d.events).await {
        Event::Provisional { status, .. } => assert_eq!(status, StatusCode::RINGING),
        e => panic!("expected 180, got {e:?}"),
    }
    d.client
        .exec(move |ep, now| ep.send_cancel(now, call))
        .await
        .unwrap()
        .unwrap();
    match next(&mut d.events).await {
        Event::Terminated { reason, .. } => assert_eq!(reason, TerminationReason::Cancelled),
        e => panic!("expected Cancelled, got {e:?}"),
    }
    assert_eq!(phone.stats().rtp_sent.load(Ordering::Relaxed), 0);
}
