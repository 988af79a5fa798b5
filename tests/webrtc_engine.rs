//! The engine's browser leg without a browser: a webrtc-rs peer in the test plays the browser (full ICE,
//! controlling, DTLS-SRTP, PCMU) against `Engine::browser_call`. The leg hears a prompt, is bridged to a SIP
//! [`DemoPhone`] (SRTP on one side, RTP on the other, media counted both ways), and ends when the SIP side hangs
//! up; a second leg whose "browser" stops sending ends by the inactivity timeout (within the timeout plus 1 s: it
//! is checked every 500 ms).
//!
//! DTMF: the "browser" offers telephone-event/8000 on payload type 110 and sends RFC 4733 events for `1#`; the
//! engine reports them as typed [`LegEvent::Dtmf`] on the browser leg, and the bridged SIP phone receives them
//! with its own telephone-event payload type (101). Digits sent on the browser leg reach the browser on 110.
//!
//! Cancel: a browser leg parked for a request that is cancelled before dialling it is released at once.

#[path = "support/netns.rs"]
mod netns;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rappel::call::{EndCause, HangupBy};
use rappel::demo::{Behaviour, DemoPhone};
use rappel::media::player::{PlayItem, Playlist};
use rappel::media::tone::ToneSpec;
use rappel::net::webrtc::BrowserOptions;
use rappel::{BridgeOptions, CallOptions, Engine, LegEvent};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};

const WAIT: Duration = Duration::from_secs(30);

struct Handler {
    gathered: mpsc::UnboundedSender<()>,
    connected: mpsc::UnboundedSender<()>,
    /// Every connection state after `connected`.
    later: mpsc::UnboundedSender<RTCPeerConnectionState>,
    received: Arc<AtomicU64>,
    events: Arc<AtomicU64>,
}

/// The fake browser's telephone-event payload type (Chromium uses 126; anything but the SIP side's 101).
const TE: u8 = 110;

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(());
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            let _ = self.connected.send(());
        } else {
            let _ = self.later.send(state);
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let received = self.received.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                match ev {
                    TrackRemoteEvent::OnRtpPacket(p) => {
                        received.fetch_add(1, Relaxed);
                        if p.header.payload_type == TE {
                            events.fetch_add(1, Relaxed);
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

/// The test's "browser": a webrtc-rs offerer sending PCMU.
struct FakeBrowser {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    received: Arc<AtomicU64>,
    /// RFC 4733 packets received (payload type [`TE`]).
    events: Arc<AtomicU64>,
    connected: mpsc::UnboundedReceiver<()>,
    /// Connection states other than `connected`, in order.
    later: mpsc::UnboundedReceiver<RTCPeerConnectionState>,
    offer: String,
}

const SSRC: u32 = 0x5eed;

fn codec(mime: &str, pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate: 8000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

async fn fake_browser() -> FakeBrowser {
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    media
        .register_codec(codec("audio/telephone-event", TE), RtpCodecKind::Audio)
        .unwrap();
    let (gtx, mut gathered) = mpsc::unbounded_channel();
    let (ctx, connected) = mpsc::unbounded_channel();
    let (ltx, later) = mpsc::unbounded_channel();
    let received = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    // No mDNS (the NAT test runs in a namespace with only loopback, where its socket cannot be opened).
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Handler {
                gathered: gtx,
                connected: ctx,
                later: ltx,
                received: received.clone(),
                events: events.clone(),
            }))
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .unwrap(),
    );
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "browser".to_owned(),
        "mic".to_owned(),
        "mic".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(SSRC),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: "audio/PCMU".to_owned(),
                clock_rate: 8000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
            ..Default::default()
        }],
    )));
    pc.add_track(track.clone() as Arc<dyn TrackLocal>)
        .await
        .unwrap();
    // Offer PCMU and telephone-event, as a browser whose codecs the widget restricted.
    for t in pc.get_transceivers().await {
        t.set_codec_preferences(vec![
            codec("audio/PCMU", 0),
            codec("audio/telephone-event", TE),
        ])
        .await
        .unwrap();
    }
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    tokio::time::timeout(WAIT, gathered.recv())
        .await
        .expect("gathering completes");
    let offer = pc.local_description().await.unwrap().sdp;
    FakeBrowser {
        pc,
        track,
        received,
        events,
        connected,
        later,
        offer,
    }
}

impl FakeBrowser {
    async fn answer(&mut self, sdp: String) {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(sdp).unwrap())
            .await
            .unwrap();
        tokio::time::timeout(WAIT, self.connected.recv())
            .await
            .expect("the browser side connects");
    }

    /// Sends 20 ms PCMU frames until the returned sender is dropped; counts the frames written.
    fn talk(&self) -> (tokio::sync::oneshot::Sender<()>, Arc<AtomicU64>) {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let track = self.track.clone();
        let sent = Arc::new(AtomicU64::new(0));
        let count = sent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for seq in 0u16.. {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tick.tick() => {}
                }
                let p = rtc::rtp::packet::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type: 0,
                        sequence_number: seq,
                        timestamp: u32::from(seq) * 160,
                        ssrc: SSRC,
                        ..Default::default()
                    },
                    payload: bytes::Bytes::from(vec![0xffu8; 160]),
                };
                if track.write_rtp(p).await.is_ok() {
                    count.fetch_add(1, Relaxed);
                }
            }
        });
        (stop, sent)
    }
}

impl FakeBrowser {
    /// Sends `digits` as RFC 4733 events (as a browser's `insertDTMF`: three updates of 20 ms, the end packet
    /// three times), on the audio stream's SSRC, with payload type [`TE`]; sequence numbers from `seq`.
    async fn send_digits(&self, digits: &[u8], mut seq: u16) {
        for (k, &event) in digits.iter().enumerate() {
            let ts = 1_000_000 + k as u32 * 8000;
            for (i, end) in [(1u16, false), (2, false), (3, true), (3, true), (3, true)] {
                let duration = i * 160;
                let mut payload = vec![event, if end { 0x80 | 10 } else { 10 }];
                payload.extend_from_slice(&duration.to_be_bytes());
                let p = rtc::rtp::packet::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type: TE,
                        marker: i == 1 && !end,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc: SSRC,
                        ..Default::default()
                    },
                    payload: bytes::Bytes::from(payload),
                };
                seq = seq.wrapping_add(1);
                self.track.write_rtp(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// UDP sockets open in this process: socket fds whose inode is in `/proc/self/net/udp{,6}`.
fn udp_sockets() -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|l| inodes.contains(&l.to_string_lossy().into_owned()))
            .count()
    })
}

/// The tests of this file one at a time (one counts the process's sockets).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn engine() -> Engine {
    let base = 28000 + (std::process::id() % 20) as u16 * 100;
    Engine::builder()
        .rtp_ports(base, base + 99)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_leg_hears_prompts_is_bridged_to_sip_and_ends_with_it() {
    let _serial = SERIAL.lock().await;
    let engine = engine().await;
    let mut browser = fake_browser().await;
    let opts = BrowserOptions::default();
    let (mut leg, answer) = engine.browser_call(&browser.offer, &opts).await.unwrap();
    assert!(answer.contains("a=ice-lite"), "{answer}");
    assert_eq!(leg.next_event().await, Some(LegEvent::Answered));
    browser.answer(answer).await;
    let _talking = browser.talk();

    // A prompt: half a second of tone, then PlayFinished; the browser received it.
    let clip = ToneSpec {
        frequencies: vec![660.0],
        amplitude: 0.2,
        cadence: vec![Duration::from_millis(500)],
    }
    .render();
    leg.play(Playlist::new().then(PlayItem::Once(clip)))
        .await
        .unwrap();
    assert_eq!(leg.next_event().await, Some(LegEvent::PlayFinished));
    let heard = browser.received.load(Relaxed);
    assert!(
        heard >= 15,
        "the browser heard {heard} packets of a 25-frame prompt"
    );
    assert_eq!(leg.hold().await, Err(rappel::CallError::Unsupported));

    // Bridged to a SIP phone: RTP both ways.
    let phone = DemoPhone::start(
        "agent",
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::Answer {
            ring: Duration::ZERO,
            talk: None,
            tone_hz: 523.0,
        },
    )
    .await
    .unwrap();
    let mut agent = engine
        .call(&phone.uri(), CallOptions::default())
        .await
        .unwrap();
    agent.answered().await.unwrap();
    let mut bridge = engine
        .bridge(&leg, &agent, BridgeOptions::default())
        .await
        .unwrap();
    let at_bridge = browser.received.load(Relaxed);
    until("browser RTP at the SIP phone", || {
        phone.stats().rtp_received.load(Relaxed) >= 50
    })
    .await;
    until("the phone's RTP at the browser", || {
        browser.received.load(Relaxed) >= at_bridge + 50
    })
    .await;

    // The SIP side hangs up: the bridge hangs up the browser leg (its peer connection closed).
    agent.hangup().await.unwrap();
    let cdr = tokio::time::timeout(WAIT, leg.ended())
        .await
        .expect("browser leg ends")
        .expect("record");
    assert_eq!(
        (cdr.hangup_by, cdr.end_cause),
        (HangupBy::Local, EndCause::Normal)
    );
    assert!(
        cdr.media.packets_in >= 50 && cdr.media.packets_out >= 50,
        "{cdr:?}"
    );
    let bcdr = tokio::time::timeout(WAIT, bridge.ended()).await.unwrap();
    assert!(bcdr.is_some());
    let _ = browser.pc.close().await;

    // A browser that goes silent (a dead tab) is ended by the inactivity timeout.
    let mut browser = fake_browser().await;
    let opts = BrowserOptions {
        inactivity: Duration::from_secs(2),
        ..BrowserOptions::default()
    };
    let (mut leg, answer) = engine.browser_call(&browser.offer, &opts).await.unwrap();
    browser.answer(answer).await;
    let (talking, sent) = browser.talk();
    until("the browser sent 25 frames", || sent.load(Relaxed) >= 25).await;
    drop(talking);
    let t0 = Instant::now();
    let cdr = tokio::time::timeout(WAIT, leg.ended())
        .await
        .expect("silent leg ends")
        .expect("record");
    assert_eq!(cdr.end_cause, EndCause::Timeout);
    assert!(cdr.media.packets_in > 0, "{cdr:?}");
    eprintln!(
        "silent browser leg ended {} ms after its last packet (inactivity 2 s)",
        t0.elapsed().as_millis()
    );
    let _ = browser.pc.close().await;
    tokio::time::timeout(WAIT, engine.shutdown(rappel::ShutdownMode::HangUp))
        .await
        .expect("engine stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_from_the_browser_is_reported_and_relayed_to_sip_in_its_payload_type() {
    let _serial = SERIAL.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let engine = engine().await;
    let mut browser = fake_browser().await;
    assert!(
        browser
            .offer
            .contains(&format!("a=rtpmap:{TE} telephone-event/8000")),
        "{}",
        browser.offer
    );
    let (mut leg, answer) = engine
        .browser_call(&browser.offer, &BrowserOptions::default())
        .await
        .unwrap();
    assert!(
        answer.contains(&format!("a=rtpmap:{TE} telephone-event/8000")),
        "telephone-event answered: {answer}"
    );
    assert_eq!(leg.next_event().await, Some(LegEvent::Answered));
    browser.answer(answer).await;
    let phone = DemoPhone::start(
        "agent",
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::Answer {
            ring: Duration::ZERO,
            talk: None,
            tone_hz: 523.0,
        },
    )
    .await
    .unwrap();
    let mut agent = engine
        .call(&phone.uri(), CallOptions::default())
        .await
        .unwrap();
    agent.answered().await.unwrap();
    let _bridge = engine
        .bridge(&leg, &agent, BridgeOptions::default())
        .await
        .unwrap();
    // Some audio first: the relay latches on the glue socket.
    let (talking, sent) = browser.talk();
    until("the browser sent 10 frames", || sent.load(Relaxed) >= 10).await;
    drop(talking);
    // The events continue the stream's sequence numbers (SRTP's replay window follows them).
    let next = u16::try_from(sent.load(Relaxed)).unwrap() + 50;
    browser.send_digits(&[1, 11], next).await;

    let mut digits = String::new();
    while digits.len() < 2 {
        match tokio::time::timeout(WAIT, leg.next_event())
            .await
            .expect("DTMF events")
        {
            Some(LegEvent::Dtmf { digit, .. }) => digits.push(digit.to_char()),
            Some(LegEvent::Ended { .. }) | None => panic!("the leg ended; digits {digits:?}"),
            Some(_) => {}
        }
    }
    assert_eq!(digits, "1#");
    until("the phone decoded both digits", || {
        phone.stats().digits() == "1#"
    })
    .await;
    let packets = phone.stats().dtmf_packets.load(Relaxed);
    assert!(
        packets >= 6,
        "RFC 4733 packets with PT 101 at the phone: {packets}"
    );

    // The other way: digits sent on the browser leg reach the browser with its payload type.
    leg.send_dtmf("5").await.unwrap();
    until("RFC 4733 at the browser", || {
        browser.events.load(Relaxed) >= 3
    })
    .await;

    drop(agent);
    tokio::time::timeout(WAIT, leg.ended())
        .await
        .expect("browser leg ends");
    let _ = browser.pc.close().await;
    tokio::time::timeout(WAIT, engine.shutdown(rappel::ShutdownMode::HangUp))
        .await
        .expect("engine stops");
}

/// A request from the browser cancelled before it dialled its parked leg: the leg is released at once (its
/// sockets closed: peer connection, glue, relay leg; the browser sees its connection end), not at the parking
/// TTL of one hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_releases_its_parked_browser_leg_at_once() {
    let _serial = SERIAL.lock().await;
    use rappel::callback::calls::EngineCalls;
    use rappel::callback::service::{CallbackService, ServiceConfig, SystemClock};
    use rappel::callback::store::MemoryStore;
    use rappel::callback::NewRequest;

    let engine = engine().await;
    let calls = EngineCalls::new(engine.clone(), CallOptions::default(), None);
    let legs = calls.browser_legs();
    // The request is for ten minutes from now: it waits and does not dial its visitor before the cancel.
    let svc = CallbackService::start(
        ServiceConfig::default(),
        MemoryStore::new(),
        calls,
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let mut browser = fake_browser().await;
    let sockets = udp_sockets();
    let (leg, answer) = engine
        .browser_call(&browser.offer, &BrowserOptions::default())
        .await
        .unwrap();
    browser.answer(answer).await;
    let _talking = browser.talk();
    let key = legs.park(leg, Instant::now()).unwrap();
    let during = udp_sockets();
    // The peer connection's socket, the glue socket, the relay leg's RTP and RTCP sockets.
    assert!(during >= sockets + 4, "{sockets} -> {during}");
    let sub = svc
        .submit(NewRequest {
            phone: key.clone(),
            wished: Some(rappel::callback::WishedTime::At(
                chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
                    + chrono::Duration::minutes(10),
            )),
            ..NewRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(legs.len(), 1);
    assert!(svc.cancel(sub.id).await.unwrap());
    until("the parked leg released", || legs.is_empty()).await;
    assert!(legs.take(&key).is_none());
    let t0 = Instant::now();
    until(
        "the leg's sockets closed (peer connection, glue, relay)",
        || udp_sockets() <= sockets,
    )
    .await;
    let state = tokio::time::timeout(WAIT, async {
        loop {
            match browser.later.recv().await {
                Some(
                    s @ (RTCPeerConnectionState::Closed
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Disconnected),
                ) => return Some(s),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .expect("the browser sees its peer connection end");
    eprintln!(
        "cancelled browser request: browser peer connection {state:?} {} ms after the leg was released",
        t0.elapsed().as_millis()
    );
    let _ = browser.pc.close().await;
    svc.shutdown().await;
    tokio::time::timeout(WAIT, engine.shutdown(rappel::ShutdownMode::HangUp))
        .await
        .expect("engine stops");
}

/// Behind one-to-one NAT (emulated): the engine binds every interface and advertises 127.0.0.2, and inside a
/// network namespace that has only loopback an iptables DNAT rule forwards 127.0.0.2 to 127.0.0.1 (replies are
/// translated back, as a cloud VM's NAT does). The outer test runs the inner one under `unshare --net` (needs root, as CI is).
#[test]
fn browser_leg_behind_one_to_one_nat_advertises_the_public_ip() {
    netns::run_inner(netns::NAT_127_0_0_2, "inner_browser_leg_behind_nat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by browser_leg_behind_one_to_one_nat_advertises_the_public_ip inside a network namespace"]
async fn inner_browser_leg_behind_nat() {
    netns::assert_inside();
    // Bound to every interface (the namespace has only loopback), as `sip.listen = "0.0.0.0:…"` does.
    let engine = Engine::builder()
        .rtp_ip([0, 0, 0, 0].into())
        .rtp_public_ip(Some([127, 0, 0, 2].into()))
        .rtp_ports(28000, 28099)
        .start()
        .await
        .unwrap();
    let mut browser = fake_browser().await;
    let opts = BrowserOptions {
        bind_ip: [0, 0, 0, 0].into(),
        public_ip: Some("127.0.0.2".parse().unwrap()),
        ..BrowserOptions::default()
    };
    let (mut leg, answer) = engine.browser_call(&browser.offer, &opts).await.unwrap();
    let candidates: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(!candidates.is_empty(), "{answer}");
    assert!(
        candidates.iter().all(|c| c.contains(" 127.0.0.2 ")),
        "every host candidate names the public IP: {candidates:?}"
    );
    assert_eq!(leg.next_event().await, Some(LegEvent::Answered));
    // ICE, DTLS and SRTP through the NAT: the browser connects, and audio flows both ways.
    browser.answer(answer).await;
    let (_talking, _sent) = browser.talk();
    let clip = ToneSpec {
        frequencies: vec![660.0],
        amplitude: 0.2,
        cadence: vec![Duration::from_millis(500)],
    }
    .render();
    leg.play(Playlist::new().then(PlayItem::Once(clip)))
        .await
        .unwrap();
    assert_eq!(leg.next_event().await, Some(LegEvent::PlayFinished));
    until("the prompt reached the browser", || {
        browser.received.load(Relaxed) >= 15
    })
    .await;
    leg.hangup().await.unwrap();
    let cdr = tokio::time::timeout(WAIT, leg.ended())
        .await
        .expect("leg ends")
        .expect("record");
    assert!(cdr.media.packets_in >= 10, "browser audio arrived: {cdr:?}");
    let _ = browser.pc.close().await;
}
