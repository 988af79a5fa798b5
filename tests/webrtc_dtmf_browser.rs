//! DTMF from a real browser: a headless Chromium page makes a WebRTC offer (an oscillator as the microphone,
//! codecs restricted to PCMU and telephone-event/8000 as the widget does), [`Engine::browser_call`] answers it,
//! the leg is bridged to a SIP [`DemoPhone`], and the page sends `1#` with `RTCDTMFSender.insertDTMF`.
//! Checked: the answer keeps the browser's telephone-event payload type, the engine reports
//! [`LegEvent::Dtmf`] `1` then `#` on the browser leg, and the phone receives RFC 4733 packets with its own
//! telephone-event payload type (101, the browser's is Chromium's choice) carrying `1#`.
//!
//! Needs `chromium` (`apt-get install -y chromium`); without it the test says so and passes vacuously.

#[path = "web_support/browser.rs"]
mod browser;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use browser::{chromium, launch_with};
use rappel::demo::{Behaviour, DemoPhone};
use rappel::net::webrtc::{offered_telephone_event, BrowserOptions};
use rappel::{BridgeOptions, CallOptions, Engine, LegEvent};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes the page's peer connection and returns its offer (all candidates gathered).
const OFFER: &str = "(async () => {
    const ctx = new AudioContext();
    const osc = ctx.createOscillator();
    const dst = ctx.createMediaStreamDestination();
    osc.connect(dst); osc.start();
    const pc = new RTCPeerConnection();
    window.pc = pc;
    const track = dst.stream.getAudioTracks()[0];
    pc.addTrack(track, dst.stream);
    const tr = pc.getTransceivers()[0];
    const codecs = RTCRtpReceiver.getCapabilities('audio').codecs.filter(c =>
        /^audio\\/PCMU$/i.test(c.mimeType) || (/^audio\\/telephone-event$/i.test(c.mimeType) && c.clockRate === 8000));
    tr.setCodecPreferences(codecs);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise(r => {
        if (pc.iceGatheringState === 'complete') return r();
        pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') r(); });
        setTimeout(r, 3000);
    });
    return pc.localDescription.sdp;
})()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_insert_dtmf_reaches_the_engine_and_the_sip_phone() {
    let Some(exe) = chromium() else {
        eprintln!("chromium not installed: browser test not run (apt-get install -y chromium)");
        return;
    };
    let base = 27000 + (std::process::id() % 20) as u16 * 100;
    let engine = Engine::builder()
        .rtp_ports(base, base + 99)
        .start()
        .await
        .unwrap();
    let (_browser, mut cdp) =
        launch_with(&exe, &["--autoplay-policy=no-user-gesture-required"]).await;
    let offer = cdp.eval(OFFER).await;
    let offer = offer.as_str().expect("an offer").to_owned();
    let te = offered_telephone_event(&offer).expect("Chromium offers telephone-event/8000");
    let (mut leg, answer) = engine
        .browser_call(&offer, &BrowserOptions::default())
        .await
        .unwrap();
    assert!(
        answer.contains(&format!("a=rtpmap:{te} telephone-event/8000")),
        "{answer}"
    );
    assert_eq!(leg.next_event().await, Some(LegEvent::Answered));
    cdp.call(
        "Runtime.evaluate",
        json!({
            "expression": format!(
                "window.pc.setRemoteDescription({{ type: 'answer', sdp: {} }}).then(() => true)",
                json!(answer)
            ),
            "awaitPromise": true,
            "returnByValue": true,
        }),
    )
    .await;
    cdp.wait_for("window.pc.connectionState === 'connected'")
        .await;

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
    until("the browser's audio at the phone", || {
        phone.stats().rtp_received.load(Relaxed) >= 25
    })
    .await;
    assert_ne!(
        te, 101,
        "the test needs the two sides' payload types to differ"
    );
    let sent = cdp
        .eval(
            "(() => { const s = window.pc.getSenders()[0];
                      if (!s.dtmf || !s.dtmf.canInsertDTMF) return false;
                      s.dtmf.insertDTMF('1#', 100, 70); return true; })()",
        )
        .await;
    assert_eq!(sent, json!(true), "the page's RTCDTMFSender can send");

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
    until("the phone decoded 1#", || phone.stats().digits() == "1#").await;
    let packets = phone.stats().dtmf_packets.load(Relaxed);
    eprintln!(
        "browser telephone-event PT {te}; phone got {packets} RFC 4733 packets on PT 101, digits {:?}",
        phone.stats().digits()
    );
    assert!(packets >= 4, "{packets}");

    drop(agent);
    tokio::time::timeout(WAIT, leg.ended())
        .await
        .expect("browser leg ends");
    tokio::time::timeout(WAIT, engine.shutdown(rappel::ShutdownMode::HangUp))
        .await
        .expect("engine stops");
}
