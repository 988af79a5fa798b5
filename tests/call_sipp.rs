//! The call API against SIPp peers on loopback: two UAS (visitor and agent) bridged through the relay, hold and
//! unhold, BYE from either side, CANCEL on ring timeout and on drop, a trunk that answers 401 first.
//!
//! Each SIPp runs one call and exits 0 only when its scenario ran to the end (it saw exactly the requests it
//! expected). Audio: one peer plays a raw PCMU file generated here, the other echoes (`-rtp_echo`); the relay's
//! per-leg counters in the CDRs show packets crossing the bridge both ways.
//!
//! Needs the `sipp` binary (Debian package `sip-tester`).

use rappel::call::{EndCause, HangupBy};
use rappel::media::g711::Law;
use rappel::sip::auth::Credentials;
use rappel::{BridgeEvent, BridgeOptions, CallOptions, Engine, LegEvent};
use std::time::Duration;

#[path = "support/sipp.rs"]
mod sipp;

#[path = "support/netns.rs"]
mod netns;

use sipp::{band_port, local, Sipp};

/// Upper bound for any one wait.
const WAIT: Duration = Duration::from_secs(20);

fn start(scenario: &str, extra: &[&str]) -> Sipp {
    let addr = local(free_port());
    let media = free_port().to_string();
    let args = [&["-m", "1", "-timeout", "60s", "-mp", &media][..], extra].concat();
    Sipp::uas(scenario, addr, false, &args)
}

fn uas(name: &str, extra: &[&str]) -> Sipp {
    start(&Sipp::scenario(name), extra)
}

/// The playing peer: a raw PCMU file of `secs` of tone, played in a loop, BYE after `talk_ms`.
fn player(talk_ms: u32) -> Sipp {
    player_of(&tone_pcmu(), talk_ms)
}

/// A peer playing the raw PCMU `audio` in a loop, BYE after `talk_ms`.
fn player_of(audio_bytes: &[u8], talk_ms: u32) -> Sipp {
    player_checking(audio_bytes, talk_ms, None)
}

/// [`player_of`], also requiring the INVITE's SDP body to match `sdp_regex` (the scenario fails otherwise).
fn player_checking(audio_bytes: &[u8], talk_ms: u32, sdp_regex: Option<&str>) -> Sipp {
    let dir = tempfile::tempdir().expect("tempdir");
    let audio = dir.path().join("tone.pcmu");
    std::fs::write(&audio, audio_bytes).expect("write audio");
    let tpl = std::fs::read_to_string(format!(
        "{}/tests/sipp/call_peer_bye.xml.in",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("template");
    let mut xml = tpl
        .replace("@AUDIO@", audio.to_str().expect("utf-8 path"))
        .replace("@TALK_MS@", &talk_ms.to_string());
    if let Some(re) = sdp_regex {
        let from = r#"<ereg regexp=".*" search_in="hdr" header="From:" assign_to="remote_from"/>"#;
        let check = format!(
            r#"{from}<ereg regexp="{re}" search_in="body" check_it="true" assign_to="sdp_check"/>"#
        );
        xml = xml.replace(from, &check).replace(
            "</scenario>",
            r#"<Reference variables="sdp_check"/></scenario>"#,
        );
    }
    let sf = dir.path().join("peer.xml");
    std::fs::write(&sf, xml).expect("write scenario");
    let sf = sf.to_str().expect("utf-8 path").to_owned();
    start(&sf, &[]).keep(dir)
}

/// What the playing peer plays: 2 s of a 440 Hz tone in PCMU.
fn tone_pcmu() -> Vec<u8> {
    tone_pcmu_at(440.0)
}

/// 2 s of a `freq` tone in PCMU.
fn tone_pcmu_at(freq: f64) -> Vec<u8> {
    let pcm: Vec<i16> = (0..16_000)
        .map(|i| ((i as f64 * 2.0 * std::f64::consts::PI * freq / 8000.0).sin() * 8000.0) as i16)
        .collect();
    let mut enc = Vec::new();
    Law::Ulaw.encode_into(&pcm, &mut enc);
    enc
}

/// Ports in a band per test process (SIPp needs a few consecutive free ones for RTP).
fn free_port() -> u16 {
    band_port(20_000, 50, 10_000)
}

async fn engine() -> Engine {
    Engine::builder()
        .rtp_ports(40_000, 40_999)
        .start()
        .await
        .expect("engine")
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// Audio both ways through the bridge, then the visitor (`first`) or the agent hangs up and the other is hung
/// up by the bridge.
async fn bridged_call(player_is_visitor: bool) {
    let player = player(2000);
    let echo = uas("call_peer_echo.xml", &["-rtp_echo"]);
    let (v_peer, a_peer) = if player_is_visitor {
        (&player, &echo)
    } else {
        (&echo, &player)
    };
    let e = engine().await;
    let mut visitor = e
        .call(&v_peer.uri("visitor"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent = e
        .call(&a_peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(agent.answered()).await.unwrap();
    let mut bridge = e
        .bridge(&visitor, &agent, BridgeOptions::default())
        .await
        .unwrap();
    let bcdr = within(bridge.ended()).await.unwrap();
    let v = within(visitor.ended()).await.unwrap();
    let a = within(agent.ended()).await.unwrap();
    let (p, q) = if player_is_visitor {
        (&v, &a)
    } else {
        (&a, &v)
    };
    assert_eq!(
        bcdr.ended_by_leg,
        Some(p.leg),
        "the player's BYE ended the bridge"
    );
    assert_eq!(
        (p.hangup_by, p.end_cause),
        (HangupBy::Remote, EndCause::Normal)
    );
    assert_eq!(
        (q.hangup_by, q.end_cause),
        (HangupBy::Local, EndCause::Normal)
    );
    // About 2 s of 20 ms packets from the player; all but those before the bridge crossed it to the echo peer,
    // came back, and crossed it again to the player.
    assert!(p.media.packets_in >= 60, "player sent {:?}", p.media);
    assert!(q.media.packets_out >= 50, "echo peer got {:?}", q.media);
    assert!(q.media.packets_out <= p.media.packets_in);
    assert!(q.media.packets_in >= 40, "echo peer echoed {:?}", q.media);
    assert!(
        p.media.packets_out >= 40,
        "player got the echo {:?}",
        p.media
    );
    assert!(p.media.packets_out <= q.media.packets_in);
    assert!(p.talk_ms >= 1500 && q.talk_ms >= 1000, "{p:?} {q:?}");
    assert_eq!(
        player.finish_within(WAIT).await,
        0,
        "player peer completed its scenario"
    );
    assert_eq!(echo.finish_within(WAIT).await, 0, "echo peer got its BYE");
}

#[tokio::test]
async fn bridge_audio_both_ways_visitor_hangs_up() {
    bridged_call(true).await;
}

#[tokio::test]
async fn bridge_audio_both_ways_agent_hangs_up() {
    bridged_call(false).await;
}

#[tokio::test]
async fn hold_and_unhold_reinvites_reach_the_peer() {
    let peer = uas("call_peer_hold.xml", &[]);
    let e = engine().await;
    let mut leg = e
        .call(&peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(leg.answered()).await.unwrap();
    within(leg.hold()).await.expect("hold accepted");
    within(leg.unhold()).await.expect("unhold accepted");
    leg.hangup().await.unwrap();
    let cdr = within(leg.ended()).await.unwrap();
    assert_eq!(cdr.hangup_by, HangupBy::Local);
    assert_eq!(
        peer.finish_within(WAIT).await,
        0,
        "SIPp saw sendonly, then sendrecv, then BYE"
    );
}

#[tokio::test]
async fn ring_timeout_sends_cancel() {
    let peer = uas("uas_noanswer.xml", &[]);
    let e = engine().await;
    let opts = CallOptions::default().ring_timeout(Duration::from_millis(500));
    let mut leg = e.call(&peer.uri("visitor"), opts).await.unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = within(leg.next_event()).await {
        seen.push(ev);
    }
    assert!(matches!(seen[0], LegEvent::Trying), "{seen:?}");
    assert!(seen.contains(&LegEvent::Ringing), "{seen:?}");
    assert!(
        seen.contains(&LegEvent::Failed {
            status: Some(487),
            cause: EndCause::RingTimeout
        }),
        "{seen:?}"
    );
    let cdr = leg.cdr().unwrap();
    assert_eq!(cdr.end_cause, EndCause::RingTimeout);
    assert!(cdr.ring_ms.is_some() && cdr.answer_ms.is_none());
    assert_eq!(
        peer.finish_within(WAIT).await,
        0,
        "SIPp got the CANCEL and the ACK for its 487"
    );
}

#[tokio::test]
async fn trunk_answering_401_first() {
    let trunk = uas("uas_auth.xml", &[]);
    let e = Engine::builder()
        .rtp_ports(41_000, 41_099)
        .outbound_proxy(Some(trunk.addr))
        .start()
        .await
        .unwrap();
    let opts = CallOptions::default().credentials(Credentials {
        username: "rappel".into(),
        password: "secret".into(),
        realm: None,
    });
    // A host name: only the trunk knows where it goes.
    let mut leg = e
        .call("sip:+33100000000@trunk.example.net", opts)
        .await
        .unwrap();
    within(leg.answered()).await.unwrap();
    drop(leg); // dropping an answered leg sends BYE
    assert_eq!(
        trunk.finish_within(WAIT).await,
        0,
        "SIPp verified the digest and got the BYE"
    );
}

#[tokio::test]
async fn dropping_a_ringing_leg_cancels_it() {
    let peer = uas("uas_noanswer.xml", &[]);
    let e = engine().await;
    let mut leg = e
        .call(&peer.uri("visitor"), CallOptions::default())
        .await
        .unwrap();
    loop {
        match within(leg.next_event()).await {
            Some(LegEvent::Ringing) => break,
            Some(_) => {}
            None => panic!("ended before ringing"),
        }
    }
    drop(leg);
    assert_eq!(peer.finish_within(WAIT).await, 0, "SIPp got the CANCEL");
}

#[tokio::test]
async fn transfer_keeps_the_visitor_up() {
    let visitor_peer = uas("call_peer_echo.xml", &["-rtp_echo"]);
    let agent1_peer = uas("call_peer_echo.xml", &["-rtp_echo"]);
    let agent2_peer = uas("call_peer_echo.xml", &["-rtp_echo"]);
    let e = engine().await;
    let mut visitor = e
        .call(&visitor_peer.uri("v"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent1 = e
        .call(&agent1_peer.uri("a1"), CallOptions::default())
        .await
        .unwrap();
    within(agent1.answered()).await.unwrap();
    let mut bridge = e
        .bridge(&visitor, &agent1, BridgeOptions::default())
        .await
        .unwrap();
    let mut agent2 = e
        .call(&agent2_peer.uri("a2"), CallOptions::default())
        .await
        .unwrap();
    within(agent2.answered()).await.unwrap();
    bridge.transfer(&agent1, &agent2).await.unwrap();
    assert_eq!(
        within(bridge.next_event()).await,
        Some(BridgeEvent::Transferred {
            old: agent1.id(),
            new: agent2.id()
        })
    );
    let a1 = within(agent1.ended()).await.unwrap();
    assert_eq!(
        a1.hangup_by,
        HangupBy::Local,
        "the replaced agent was hung up"
    );
    agent2.hangup().await.unwrap();
    let cdr = within(bridge.ended()).await.unwrap();
    assert_eq!(cdr.legs, vec![visitor.id().0, agent1.id().0, agent2.id().0]);
    assert_eq!(cdr.transfers, 1);
    within(visitor.ended()).await.unwrap();
    for p in [visitor_peer, agent1_peer, agent2_peer] {
        assert_eq!(p.finish_within(WAIT).await, 0);
    }
}

#[tokio::test]
async fn play_reaches_the_peer_and_reports_the_end() {
    use rappel::media::player::{Clip, PlayItem, Playlist};
    let echo = uas("call_peer_echo.xml", &["-rtp_echo"]);
    let e = engine().await;
    let mut leg = e
        .call(&echo.uri("visitor"), CallOptions::default())
        .await
        .unwrap();
    within(leg.answered()).await.unwrap();
    // One second of a 440 Hz tone: 50 frames of 20 ms.
    let pcm = (0..8000)
        .map(|i| ((i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin() * 8000.0) as i16)
        .collect();
    leg.play(Playlist::new().then(PlayItem::Once(Clip::from_pcm(pcm))))
        .await
        .unwrap();
    loop {
        match within(leg.next_event()).await {
            Some(LegEvent::PlayFinished) => break,
            Some(_) => {}
            None => panic!("ended before the playlist finished"),
        }
    }
    leg.hangup().await.unwrap();
    let cdr = within(leg.ended()).await.unwrap();
    assert_eq!(cdr.media.packets_out, 50, "{:?}", cdr.media);
    assert_eq!(cdr.media.bytes_out, 50 * 172);
    assert!(
        cdr.media.packets_in >= 45,
        "SIPp echoed what we played: {:?}",
        cdr.media
    );
    assert_eq!(echo.finish_within(WAIT).await, 0);
}

#[tokio::test]
async fn shutdown_hangs_up_every_leg_and_refuses_new_calls() {
    let p1 = uas("call_peer_echo.xml", &[]);
    let p2 = uas("uas_noanswer.xml", &[]);
    let e = engine().await;
    let mut answered = e.call(&p1.uri("a"), CallOptions::default()).await.unwrap();
    within(answered.answered()).await.unwrap();
    let mut ringing = e.call(&p2.uri("b"), CallOptions::default()).await.unwrap();
    while within(ringing.next_event()).await != Some(LegEvent::Ringing) {}
    within(e.shutdown(rappel::ShutdownMode::HangUp)).await;
    assert_eq!(
        e.call(&p1.uri("c"), CallOptions::default()).await.err(),
        Some(rappel::CallError::Shutdown)
    );
    let a = within(answered.ended()).await.unwrap();
    let b = within(ringing.ended()).await.unwrap();
    assert_eq!(
        (a.end_cause, a.hangup_by),
        (EndCause::Shutdown, HangupBy::Local)
    );
    assert_eq!(b.end_cause, EndCause::Shutdown);
    assert_eq!(p1.finish_within(WAIT).await, 0, "BYE");
    assert_eq!(p2.finish_within(WAIT).await, 0, "CANCEL");
}

#[tokio::test]
async fn dtmf_from_the_peer_becomes_a_leg_event() {
    let peer = uas("call_peer_dtmf.xml", &[]);
    let e = engine().await;
    let mut leg = e
        .call(&peer.uri("visitor"), CallOptions::default())
        .await
        .unwrap();
    within(leg.answered()).await.unwrap();
    let (digit, duration) = loop {
        match within(leg.next_event()).await {
            Some(LegEvent::Dtmf { digit, duration }) => break (digit, duration),
            Some(_) => {}
            None => panic!("ended before any DTMF"),
        }
    };
    assert_eq!(digit.to_char(), '1');
    assert!(duration > Duration::ZERO, "{duration:?}");
    leg.hangup().await.unwrap();
    within(leg.ended()).await.unwrap();
    assert_eq!(peer.finish_within(WAIT).await, 0);
}

#[tokio::test]
async fn agent_pressing_hold_gives_the_visitor_hold_music() {
    use rappel::media::player::{PlayItem, Playlist};
    use rappel::media::tone::{Country, ToneSpec};
    let visitor_peer = uas("call_peer_echo.xml", &["-rtp_echo"]);
    let agent_peer = uas("call_peer_remote_hold.xml", &[]);
    let e = engine().await;
    let mut visitor = e
        .call(&visitor_peer.uri("v"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent = e
        .call(&agent_peer.uri("a"), CallOptions::default())
        .await
        .unwrap();
    within(agent.answered()).await.unwrap();
    let music = Playlist::new().then(PlayItem::Loop {
        clip: ToneSpec::ringback(Country::Fr).render(),
        duration: None,
    });
    let opts = BridgeOptions {
        hold_music: Some(music),
        ..BridgeOptions::default()
    };
    let mut bridge = e.bridge(&visitor, &agent, opts).await.unwrap();
    let mut agent_events = Vec::new();
    while let Some(ev) = within(agent.next_event()).await {
        agent_events.push(ev);
    }
    assert!(
        agent_events.contains(&LegEvent::RemoteHold),
        "{agent_events:?}"
    );
    let bcdr = within(bridge.ended()).await.unwrap();
    assert_eq!(bcdr.ended_by_leg, Some(agent.id().0));
    let v = within(visitor.ended()).await.unwrap();
    // Nobody sent the visitor audio but the music: 1.5 s of hold is about 75 frames.
    assert!(v.media.packets_out >= 50, "{:?}", v.media);
    assert!(
        v.media.packets_in >= 40,
        "the visitor's peer echoed the music: {:?}",
        v.media
    );
    assert_eq!(
        agent_peer.finish_within(WAIT).await,
        0,
        "SIPp got a recvonly answer to its hold, then the 200 to BYE"
    );
    assert_eq!(visitor_peer.finish_within(WAIT).await, 0);
}

#[tokio::test]
async fn bridge_aligns_a_pcma_leg_with_a_pcmu_leg_by_reinvite() {
    let visitor_peer = uas("call_peer_echo.xml", &[]);
    let agent_peer = uas("call_peer_pcma.xml", &[]);
    let e = engine().await;
    let mut visitor = e
        .call(&visitor_peer.uri("v"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent = e
        .call(&agent_peer.uri("a"), CallOptions::default())
        .await
        .unwrap();
    within(agent.answered()).await.unwrap();
    let mut bridge = within(e.bridge(&visitor, &agent, BridgeOptions::default()))
        .await
        .expect("aligned by re-INVITE");
    visitor.hangup().await.unwrap();
    within(bridge.ended()).await.unwrap();
    within(agent.ended()).await.unwrap();
    assert_eq!(
        agent_peer.finish_within(WAIT).await,
        0,
        "SIPp saw the re-INVITE offering PCMU, then BYE"
    );
    assert_eq!(visitor_peer.finish_within(WAIT).await, 0);
}

/// The agent answers PCMA only and refuses the alignment re-INVITE (488): the bridge is made anyway and the
/// relay transcodes. The visitor plays PCMU; the agent echoes what it gets (PCMA) back through the bridge.
#[tokio::test]
async fn bridge_transcodes_when_a_pcma_leg_refuses_alignment() {
    let player = player(3000);
    let echo = uas("call_peer_pcma_refuse.xml", &["-rtp_echo"]);
    let e = engine().await;
    let mut visitor = e
        .call(&player.uri("visitor"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent = e
        .call(&echo.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(agent.answered()).await.unwrap();
    let mut bridge = within(e.bridge(&visitor, &agent, BridgeOptions::default()))
        .await
        .expect("bridged with transcoding after the 488");
    let bcdr = within(bridge.ended()).await.unwrap();
    let p = within(visitor.ended()).await.unwrap();
    let q = within(agent.ended()).await.unwrap();
    assert_eq!(bcdr.ended_by_leg, Some(p.leg), "the player's BYE ended it");
    assert_eq!(
        (q.hangup_by, q.end_cause),
        (HangupBy::Local, EndCause::Normal)
    );
    // About 3 s of PCMU from the player, less the time before the bridge, crossed to the PCMA peer, were
    // echoed, and crossed back to the player.
    assert!(p.media.packets_in >= 100, "player sent {:?}", p.media);
    assert!(q.media.packets_out >= 60, "PCMA peer got {:?}", q.media);
    assert!(q.media.packets_out <= p.media.packets_in);
    assert!(q.media.packets_in >= 50, "PCMA peer echoed {:?}", q.media);
    assert!(
        p.media.packets_out >= 50,
        "player got the echo {:?}",
        p.media
    );
    assert!(p.media.packets_out <= q.media.packets_in);
    // G.711 transcoding keeps the payload length: bytes per packet are equal on both sides.
    assert_eq!(
        q.media.bytes_out * p.media.packets_in,
        p.media.bytes_in * q.media.packets_out
    );
    assert_eq!(player.finish_within(WAIT).await, 0, "player completed");
    assert_eq!(
        echo.finish_within(WAIT).await,
        0,
        "PCMA peer saw the PCMU re-INVITE, answered 488, then BYE"
    );
}

#[tokio::test]
async fn the_visitor_hears_our_ringback_while_the_agent_rings() {
    use rappel::EarlyMedia;
    let visitor_peer = uas("call_peer_echo.xml", &["-rtp_echo"]);
    let agent_peer = uas("uas_noanswer.xml", &[]);
    let e = engine().await;
    let mut visitor = e
        .call(&visitor_peer.uri("v"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    let opts = CallOptions::default()
        .ring_timeout(Duration::from_secs(1))
        .early_media(visitor.id(), EarlyMedia::Ringback);
    let mut agent = e.call(&agent_peer.uri("a"), opts).await.unwrap();
    let a = within(agent.ended()).await.unwrap();
    assert_eq!(a.end_cause, EndCause::RingTimeout);
    // The ringback stopped with the agent's end: whatever the visitor got, it got while the agent rang.
    visitor.hangup().await.unwrap();
    let v = within(visitor.ended()).await.unwrap();
    assert!(
        (35..=60).contains(&v.media.packets_out),
        "about 1 s of 20 ms ringback frames: {:?}",
        v.media
    );
    assert_eq!(agent_peer.finish_within(WAIT).await, 0);
    assert_eq!(visitor_peer.finish_within(WAIT).await, 0);
}

#[tokio::test]
async fn send_dtmf_as_sip_info() {
    let peer = uas("call_peer_info.xml", &[]);
    let e = engine().await;
    let mut leg = e
        .call(&peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(leg.answered()).await.unwrap();
    assert_eq!(
        leg.send_dtmf("5x").await,
        Err(rappel::CallError::InvalidDigit('x'))
    );
    leg.send_dtmf("5").await.unwrap();
    leg.send_dtmf("#").await.unwrap();
    leg.hangup().await.unwrap();
    within(leg.ended()).await.unwrap();
    assert_eq!(
        peer.finish_within(WAIT).await,
        0,
        "SIPp got INFO Signal=5, INFO Signal=#, BYE"
    );
}

/// INFO DTMF goes one request at a time: the peer answers the first INFO 400 ms late, and the second arrives only
/// after that 200 (SIPp refuses a request it does not expect during its pause).
#[tokio::test]
async fn send_dtmf_info_waits_for_each_final_response() {
    let peer = uas("call_peer_info_slow.xml", &[]);
    let e = engine().await;
    let mut leg = e
        .call(&peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(leg.answered()).await.unwrap();
    let t0 = std::time::Instant::now();
    within(leg.send_dtmf_info("5#")).await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "returned once both INFOs were answered: {took:?}"
    );
    leg.hangup().await.unwrap();
    within(leg.ended()).await.unwrap();
    assert_eq!(
        peer.finish_within(WAIT).await,
        0,
        "SIPp got INFO Signal=5, (400 ms) INFO Signal=#, BYE"
    );
}

/// A peer that negotiated telephone-event (as PT 100) gets DTMF in-band: RFC 4733 packets on its SDP address,
/// read here by the test's own UDP socket.
#[tokio::test]
async fn send_dtmf_as_rfc4733_events() {
    use rappel::media::dtmf::TelephoneEvent;
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let tpl = std::fs::read_to_string(Sipp::scenario("call_peer_rfc4733.xml.in")).unwrap();
    let xml = tpl.replace("@RTP_PORT@", &rtp.local_addr().unwrap().port().to_string());
    let sf = dir.path().join("peer.xml");
    std::fs::write(&sf, xml).unwrap();
    let peer = start(sf.to_str().unwrap(), &[]).keep(dir);
    let e = engine().await;
    let mut leg = e
        .call(&peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(leg.answered()).await.unwrap();
    within(leg.send_dtmf("1#")).await.unwrap();
    // Returned once every packet was handed to the relay: 2 digits x (2 start + 3 end) packets.
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    while got.len() < 10 {
        let n = within(rtp.recv(&mut buf)).await.unwrap();
        got.push(buf[..n].to_vec());
    }
    leg.hangup().await.unwrap();
    within(leg.ended()).await.unwrap();
    let field = |p: &[u8]| {
        (
            p[1] & 0x80 != 0,
            p[1] & 0x7f,
            u16::from_be_bytes([p[2], p[3]]),
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            TelephoneEvent::parse(&p[12..]).unwrap(),
        )
    };
    let first_seq = field(&got[0]).2;
    for (digit, event) in [(0usize, 1u8), (1, 11)] {
        let ts = field(&got[digit * 5]).3;
        for i in 0..5 {
            let (marker, pt, seq, t, ev) = field(&got[digit * 5 + i]);
            assert_eq!(got[digit * 5 + i].len(), 16);
            assert_eq!(pt, 100, "the leg's telephone-event PT");
            assert_eq!(marker, i == 0, "marker on the first packet only");
            assert_eq!(seq, first_seq.wrapping_add((digit * 5 + i) as u16));
            assert_eq!(t, ts, "one timestamp per event");
            assert_eq!(
                (ev.event, ev.end),
                (event, i >= 2),
                "digit {digit} packet {i}"
            );
            assert_eq!(ev.duration, [400, 800, 800, 800, 800][i]);
        }
    }
    // The second key starts after the first one's packets and the gap (>= 300 ms = 2400 samples).
    let gap = field(&got[5]).3.wrapping_sub(field(&got[0]).3);
    assert!((2200..8000).contains(&gap), "timestamp step {gap}");
    assert_eq!(peer.finish_within(WAIT).await, 0, "no INFO, then BYE");
}

/// A leg takes at most `MAX_PENDING_DTMF` (64) digits pending: a call beyond fails with `DtmfQueueFull` and
/// sends nothing; the queue stays usable.
#[tokio::test]
async fn send_dtmf_queue_is_capped() {
    use rappel::net::engine::MAX_PENDING_DTMF;
    use rappel::CallError;
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let tpl = std::fs::read_to_string(Sipp::scenario("call_peer_rfc4733.xml.in")).unwrap();
    let xml = tpl.replace("@RTP_PORT@", &rtp.local_addr().unwrap().port().to_string());
    let sf = dir.path().join("peer.xml");
    std::fs::write(&sf, xml).unwrap();
    let peer = start(sf.to_str().unwrap(), &[]).keep(dir);
    let e = engine().await;
    let mut leg = e
        .call(&peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(leg.answered()).await.unwrap();
    assert_eq!(MAX_PENDING_DTMF, 64);
    let full = |pending| {
        Err(CallError::DtmfQueueFull {
            pending,
            limit: MAX_PENDING_DTMF,
        })
    };
    // One call beyond the cap on its own, in-band or as INFO.
    assert_eq!(leg.send_dtmf(&"1".repeat(65)).await, full(0));
    assert_eq!(leg.send_dtmf_info(&"1".repeat(65)).await, full(0));
    // Two calls sent in order (join polls the first first): the second would make 2 + 63 pending.
    let threes = "3".repeat(63);
    let (a, b) = within(async { tokio::join!(leg.send_dtmf("12"), leg.send_dtmf(&threes)) }).await;
    assert_eq!(a, Ok(()));
    assert_eq!(b, full(2));
    // The queue stays usable: two calls queue behind each other.
    let (a, b) = within(async { tokio::join!(leg.send_dtmf("4"), leg.send_dtmf("5")) }).await;
    assert_eq!((a, b), (Ok(()), Ok(())));
    // Keys 1, 2, 4, 5 went out (2 start + 3 end packets each); no packet of a refused call.
    let mut events = Vec::new();
    let mut buf = [0u8; 1500];
    while events.len() < 20 {
        let n = within(rtp.recv(&mut buf)).await.unwrap();
        events.push(buf[12.min(n)]);
    }
    assert_eq!(
        events,
        [1u8, 2, 4, 5]
            .iter()
            .flat_map(|&k| [k; 5])
            .collect::<Vec<_>>()
    );
    leg.hangup().await.unwrap();
    within(leg.ended()).await.unwrap();
    assert_eq!(peer.finish_within(WAIT).await, 0, "no INFO, then BYE");
}

/// The From display name goes on the wire quoted, with `"` and `\` escaped (the SIPp peer checks the header).
#[tokio::test]
async fn from_display_name_is_quoted_and_escaped() {
    let peer = uas("uas_from_display.xml", &[]);
    let e = engine().await;
    let opts = CallOptions::default().from("sip:ann@example.com", Some(r#"Ann "The" \ Agent"#));
    let mut leg = e.call(&peer.uri("v"), opts).await.unwrap();
    let cdr = within(leg.ended()).await.unwrap();
    assert_eq!(cdr.end_cause, EndCause::Rejected(486));
    assert_eq!(
        peer.finish_within(WAIT).await,
        0,
        "SIPp's From regex matched"
    );
}

/// The bridge's record counts from the bridge's start: the visitor's player talks for about a second before the
/// agent is even called; that audio is in the visitor's own record but not in the bridge's.
#[tokio::test]
async fn bridge_cdr_counts_only_the_bridge_lifetime() {
    let player = player(3000);
    let echo = uas("call_peer_echo.xml", &["-rtp_echo"]);
    let e = engine().await;
    let mut visitor = e
        .call(&player.uri("visitor"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    // Not a synchronisation: about 50 packets from the visitor reach the relay before any bridge exists.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut agent = e
        .call(&echo.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(agent.answered()).await.unwrap();
    let mut bridge = e
        .bridge(&visitor, &agent, BridgeOptions::default())
        .await
        .unwrap();
    let b = within(bridge.ended()).await.unwrap();
    let v = within(visitor.ended()).await.unwrap();
    let a = within(agent.ended()).await.unwrap();
    assert!(
        v.media.packets_in >= b.a_media.packets_in + 30,
        "leg {:?} vs bridge {:?}",
        v.media,
        b.a_media
    );
    assert!(b.a_media.packets_in >= 40, "bridged audio {:?}", b.a_media);
    // During the bridge, what the visitor sent is what the agent was sent (both read at the same points).
    assert!(
        b.a_media.packets_in.abs_diff(b.b_media.packets_out) <= 2,
        "{:?} {:?}",
        b.a_media,
        b.b_media
    );
    assert!(b.b_media.packets_out <= a.media.packets_out);
    assert!(b.a_media.packets_out <= v.media.packets_out);
    assert_eq!(b.recording, None, "no recording unless asked");
    assert_eq!(player.finish_within(WAIT).await, 0);
    assert_eq!(echo.finish_within(WAIT).await, 0);
}

/// The transcoded bytes on the wire: the PCMA peer's media address is the test's own socket. Every packet it
/// gets carries PT 8 and a payload that is a run of the player's PCMU file mapped through the PCMU→PCMA table.
#[tokio::test]
async fn transcoded_audio_on_the_wire_is_the_pcma_table_image() {
    use rappel::media::g711::ULAW_TO_ALAW;
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let xml = std::fs::read_to_string(Sipp::scenario("call_peer_pcma_refuse.xml"))
        .unwrap()
        .replace(
            "m=audio [media_port]",
            &format!("m=audio {}", rtp.local_addr().unwrap().port()),
        );
    let sf = dir.path().join("peer.xml");
    std::fs::write(&sf, xml).unwrap();
    let agent_peer = start(sf.to_str().unwrap(), &[]).keep(dir);
    let player = player(4000);
    let e = engine().await;
    let mut visitor = e
        .call(&player.uri("visitor"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent = e
        .call(&agent_peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(agent.answered()).await.unwrap();
    let _bridge = within(e.bridge(&visitor, &agent, BridgeOptions::default()))
        .await
        .expect("bridged with transcoding");
    // The file, twice (the player loops), through the table.
    let image: Vec<u8> = tone_pcmu()
        .repeat(2)
        .iter()
        .map(|&c| ULAW_TO_ALAW[c as usize])
        .collect();
    let raw = tone_pcmu().repeat(2);
    let mut buf = [0u8; 1500];
    for _ in 0..20 {
        let n = within(rtp.recv(&mut buf)).await.unwrap();
        let p = &buf[..n];
        assert_eq!(p[1] & 0x7f, 8, "PCMA payload type");
        let payload = &p[12..];
        assert_eq!(payload.len(), 160);
        assert!(
            image.windows(160).any(|w| w == payload),
            "payload is the PCMA image of the file"
        );
        assert!(
            !raw.windows(160).any(|w| w == payload),
            "not the PCMU bytes"
        );
    }
    visitor.hangup().await.unwrap();
    within(visitor.ended()).await.unwrap();
    within(agent.ended()).await.unwrap();
    assert_eq!(agent_peer.finish_within(WAIT).await, 0);
}

/// RFC 4028 §7.4 through the engine: a 422 is retried in the same call (SIPp follows its scenario only for the
/// same Call-ID) with CSeq 2 and the 422's Min-SE.
#[tokio::test]
async fn a_422_is_retried_in_the_same_call() {
    use rappel::call::leg::SessionTimerOptions;
    let peer = uas("uas_422.xml", &[]);
    let e = engine().await;
    let opts = CallOptions::default().session_timer(SessionTimerOptions {
        expires: 300,
        ..SessionTimerOptions::default()
    });
    let mut leg = e.call(&peer.uri("agent"), opts).await.unwrap();
    within(leg.answered()).await.unwrap();
    leg.hangup().await.unwrap();
    let cdr = within(leg.ended()).await.unwrap();
    assert_eq!(cdr.end_cause, EndCause::Normal);
    assert_eq!(
        peer.finish_within(WAIT).await,
        0,
        "SIPp saw 1 INVITE, then 2 INVITE with Min-SE 1800 in the same call, then BYE"
    );
}

/// Recording a bridge: the visitor's peer plays a 440 Hz file, the agent's a 1000 Hz one. The WAV is stereo
/// 8 kHz, spans the bridge, the left channel carries the visitor's file (sample for sample, where audio is) and
/// the right the agent's, and the CDR reports it.
#[tokio::test]
async fn bridge_recording_visitor_left_agent_right() {
    use rappel::call::OnHangup;
    use rappel::media::tone::goertzel_power;
    use rappel::media::wav::{Wav, WavFormat};
    let (v_audio, a_audio) = (tone_pcmu_at(440.0), tone_pcmu_at(1000.0));
    let v_peer = player_of(&v_audio, 3000);
    let a_peer = player_of(&a_audio, 5000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.wav");
    let e = engine().await;
    let mut visitor = e
        .call(&v_peer.uri("visitor"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent = e
        .call(&a_peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(agent.answered()).await.unwrap();
    let opts = BridgeOptions {
        on_hangup: OnHangup::KeepOther,
        record: Some(path.clone()),
        ..BridgeOptions::default()
    };
    let mut bridge = e.bridge(&visitor, &agent, opts).await.unwrap();
    // The visitor's BYE ends the bridge; the agent stays up until its own BYE.
    let b = within(bridge.ended()).await.unwrap();
    let rec = b.recording.clone().expect("recording in the CDR");
    assert_eq!(rec.path, path);
    assert_eq!(rec.error, None);
    assert_eq!(rec.dropped, 0, "{rec:?}");
    assert!(
        rec.packets >= 150,
        "both sides' packets reached the writer: {rec:?}"
    );
    let wav = Wav::read_from(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(
        (wav.channels, wav.sample_rate, wav.format),
        (2, 8000, WavFormat::Pcm16)
    );
    let pcm = wav.to_pcm();
    let frames = pcm.len() / 2;
    assert_eq!(frames as u64, rec.frames);
    // The file spans the bridge: its start to its end (the writer stops a tick after the end at most).
    let ms = frames as u64 / 8;
    assert!(
        ms + 100 >= b.duration_ms && ms <= b.duration_ms + 300,
        "{ms} ms recorded for a {} ms bridge",
        b.duration_ms
    );
    let left: Vec<i16> = pcm.iter().step_by(2).copied().collect();
    let right: Vec<i16> = pcm.iter().skip(1).step_by(2).copied().collect();
    // Energy: the visitor's tone on the left, the agent's on the right, not the other way round.
    let (l440, l1k) = (goertzel_power(&left, 440.0), goertzel_power(&left, 1000.0));
    let (r440, r1k) = (
        goertzel_power(&right, 440.0),
        goertzel_power(&right, 1000.0),
    );
    assert!(l440 > 100.0 * l1k, "left 440 {l440} vs 1000 {l1k}");
    assert!(r1k > 100.0 * r440, "right 1000 {r1k} vs 440 {r440}");
    // Most of the bridge carries audio on both channels (a few packets at the edges and jitter aside).
    let voiced = |ch: &[i16]| ch.chunks(160).filter(|c| c.iter().any(|&x| x != 0)).count();
    assert!(voiced(&left) * 10 >= frames / 160 * 8, "left mostly audio");
    assert!(
        voiced(&right) * 10 >= frames / 160 * 8,
        "right mostly audio"
    );
    // Sample for sample: 20 ms runs of each channel are runs of that side's decoded file (played in a loop).
    let decode = |a: &[u8]| {
        let mut out = Vec::new();
        Law::Ulaw.decode_into(&a.repeat(2), &mut out);
        out
    };
    let (v_pcm, a_pcm) = (decode(&v_audio), decode(&a_audio));
    let found = |ch: &[i16], src: &[i16]| {
        // From the run after the one where the channel's audio starts: that run begins with silence (the
        // side's first packet lands anywhere in it), and one sample of silence followed by a packet that
        // starts on the tone's own zero (the 1000 Hz tone is zero every 4th sample, packets start on a
        // multiple of 160) passes the filter below without being a run of the file.
        let onset = ch.iter().position(|&x| x != 0).unwrap_or(ch.len()) / 160 + 1;
        // Runs with audio throughout: no three zeros in a row (the tones touch zero only at single samples).
        ch.chunks_exact(160)
            .skip(onset)
            .filter(|c| c.windows(3).all(|w| w.iter().any(|&x| x != 0)))
            .take(50)
            .filter(|c| src.windows(160).any(|w| w == *c))
            .count()
    };
    // All 50. Counting from the channel's start, about one test run in six had failed on one run near the
    // start of the agent's channel, which looked like a one-sample seam between two packets. Not reproduced
    // here in 26 runs (the agent's first packet landed 33-69 samples in; its SIPp starts streaming as the
    // bridge connects, so that offset clusters), and every run after the onset matched in all of them; the
    // likely cause is the onset run itself when the first packet lands one sample in, which the filter
    // admits although it is no run of the file:
    let edge: Vec<i16> = std::iter::once(0)
        .chain(a_pcm[..159].iter().copied())
        .collect();
    assert!(edge.windows(3).all(|w| w.iter().any(|&x| x != 0)));
    assert!(!a_pcm.windows(160).any(|w| w == edge));
    let (l, r) = (found(&left, &v_pcm), found(&right, &a_pcm));
    assert_eq!(l, 50, "left runs are the visitor's file");
    assert_eq!(r, 50, "right runs are the agent's file");
    assert_eq!(found(&left, &a_pcm), 0);
    within(agent.ended()).await.unwrap();
    within(visitor.ended()).await.unwrap();
    assert_eq!(v_peer.finish_within(WAIT).await, 0);
    assert_eq!(a_peer.finish_within(WAIT).await, 0);
}

/// A recorded bridge across a transfer: the right channel carries the first agent's file, then only the second
/// agent's (the replaced leg is untapped, the new one tapped on the same side); the left stays the visitor's.
#[tokio::test]
async fn bridge_recording_follows_a_transfer_on_the_agent_side() {
    use rappel::call::OnHangup;
    use rappel::media::wav::Wav;
    let (v_audio, a1_audio, a2_audio) = (
        tone_pcmu_at(440.0),
        tone_pcmu_at(1000.0),
        tone_pcmu_at(1500.0),
    );
    let v_peer = player_of(&v_audio, 4000);
    let a1_peer = player_of(&a1_audio, 20_000);
    let a2_peer = player_of(&a2_audio, 20_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("transfer.wav");
    let e = engine().await;
    let mut visitor = e
        .call(&v_peer.uri("v"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent1 = e
        .call(&a1_peer.uri("a1"), CallOptions::default())
        .await
        .unwrap();
    within(agent1.answered()).await.unwrap();
    let opts = BridgeOptions {
        on_hangup: OnHangup::KeepOther,
        record: Some(path.clone()),
        ..BridgeOptions::default()
    };
    let mut bridge = e.bridge(&visitor, &agent1, opts).await.unwrap();
    let mut agent2 = e
        .call(&a2_peer.uri("a2"), CallOptions::default())
        .await
        .unwrap();
    within(agent2.answered()).await.unwrap();
    // Not a synchronisation: lets about 50 packets of the first agent reach the recording.
    tokio::time::sleep(Duration::from_secs(1)).await;
    bridge.transfer(&agent1, &agent2).await.unwrap();
    within(agent1.ended()).await.unwrap();
    // The visitor's BYE ends the bridge.
    let b = within(bridge.ended()).await.unwrap();
    let rec = b.recording.clone().expect("recording");
    assert_eq!((rec.error.as_deref(), rec.dropped), (None, 0), "{rec:?}");
    let pcm = Wav::read_from(std::fs::File::open(&path).unwrap())
        .unwrap()
        .to_pcm();
    let left: Vec<i16> = pcm.iter().step_by(2).copied().collect();
    let right: Vec<i16> = pcm.iter().skip(1).step_by(2).copied().collect();
    let decode = |a: &[u8]| {
        let mut out = Vec::new();
        Law::Ulaw.decode_into(&a.repeat(2), &mut out);
        out
    };
    let (v, a1, a2) = (decode(&v_audio), decode(&a1_audio), decode(&a2_audio));
    // Which source each fully voiced 20 ms run of a channel is from (0 none, 1 first, 2 second).
    let sources = |ch: &[i16], x: &[i16], y: &[i16]| -> Vec<u8> {
        ch.chunks_exact(160)
            .filter(|c| c.windows(3).all(|w| w.iter().any(|&s| s != 0)))
            .map(|c| {
                if x.windows(160).any(|w| w == c) {
                    1
                } else if y.windows(160).any(|w| w == c) {
                    2
                } else {
                    0
                }
            })
            .collect()
    };
    let r = sources(&right, &a1, &a2);
    let first_a2 = r
        .iter()
        .position(|&s| s == 2)
        .expect("the second agent is recorded");
    assert!(
        r[..first_a2].iter().filter(|&&s| s == 1).count() >= 20,
        "first agent before: {r:?}"
    );
    assert!(
        !r[first_a2..].contains(&1),
        "no first agent after the transfer: {r:?}"
    );
    assert!(
        r[first_a2..].iter().filter(|&&s| s == 2).count() >= 40,
        "{r:?}"
    );
    let l = sources(&left, &v, &a1);
    assert!(
        l.iter().filter(|&&s| s == 1).count() >= 100,
        "visitor on the left"
    );
    assert!(!l.contains(&2), "no agent on the left");
    agent2.hangup().await.unwrap();
    within(agent2.ended()).await.unwrap();
    within(visitor.ended()).await.unwrap();
    assert_eq!(v_peer.finish_within(WAIT).await, 0);
}

/// Behind one-to-one NAT (emulated): RTP bound to 127.0.0.1, SDP naming the public IP 127.0.0.2, and inside a
/// network namespace with only loopback an iptables DNAT rule forwards 127.0.0.2 to 127.0.0.1. The outer test
/// runs the inner one under `unshare --net` (needs root, as CI is).
#[test]
fn sdp_names_the_public_ip_and_media_arrives_there() {
    netns::run_inner(netns::NAT_127_0_0_2, "inner_sdp_names_the_public_ip");
}

/// The peer's scenario requires `c=IN IP4 127.0.0.2` in the offer, and its RTP, sent there, reaches the leg.
#[tokio::test]
#[ignore = "run by sdp_names_the_public_ip_and_media_arrives_there inside a network namespace"]
async fn inner_sdp_names_the_public_ip() {
    netns::assert_inside();
    let player = player_checking(&tone_pcmu(), 1500, Some(PUBLIC_C_LINE));
    let e = Engine::builder()
        .rtp_public_ip(Some([127, 0, 0, 2].into()))
        .rtp_ports(41_000, 41_999)
        .start()
        .await
        .expect("engine");
    let mut leg = e
        .call(&player.uri("visitor"), CallOptions::default())
        .await
        .unwrap();
    let cdr = within(leg.ended()).await.unwrap();
    assert_eq!(cdr.hangup_by, HangupBy::Remote);
    assert!(
        cdr.media.packets_in >= 50,
        "RTP reached us: {:?}",
        cdr.media
    );
    assert_eq!(
        player.finish_within(WAIT).await,
        0,
        "the offer named the public IP"
    );
}

/// The c= line [`inner_sdp_names_the_public_ip`] requires.
const PUBLIC_C_LINE: &str = r"c=IN IP4 127\.0\.0\.2";

/// RTP bound to every interface with no public IP to advertise is refused at start (`c=0.0.0.0` means hold).
#[tokio::test]
async fn wildcard_rtp_without_a_public_ip_is_refused() {
    let err = Engine::builder()
        .rtp_ip([0, 0, 0, 0].into())
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// DTMF across a bridge to a leg that negotiated no telephone-event: the relay drops the RFC 4733 packets
/// (they would reach that phone as an unknown payload type) and the engine sends the key press as SIP INFO.
/// The agent's SIPp requires an INFO with `Signal=1` before the BYE.
#[tokio::test]
async fn dtmf_to_a_leg_without_telephone_event_goes_as_info() {
    let agent_peer = uas("call_peer_info_one.xml", &[]);
    let visitor_peer = uas("call_peer_dtmf_late.xml", &[]);
    let e = engine().await;
    let mut agent = e
        .call(&agent_peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(agent.answered()).await.unwrap();
    let mut visitor = e
        .call(&visitor_peer.uri("visitor"), CallOptions::default())
        .await
        .unwrap();
    within(visitor.answered()).await.unwrap();
    let _bridge = e
        .bridge(&visitor, &agent, BridgeOptions::default())
        .await
        .unwrap();
    let digit = loop {
        match within(visitor.next_event()).await {
            Some(LegEvent::Dtmf { digit, .. }) => break digit,
            Some(_) => {}
            None => panic!("ended before any DTMF"),
        }
    };
    assert_eq!(digit.to_char(), '1');
    visitor.hangup().await.unwrap();
    within(visitor.ended()).await.unwrap();
    within(agent.ended()).await.unwrap();
    assert_eq!(
        agent_peer.finish_within(WAIT).await,
        0,
        "the agent got INFO Signal=1, then BYE"
    );
    assert_eq!(visitor_peer.finish_within(WAIT).await, 0);
}
