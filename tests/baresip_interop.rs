//! The call API against baresip 1.0, a real SIP phone nobody here wrote, on loopback.
//!
//! Each baresip answers (at once, or when told: ringing, early media), sends a tone of its own (its microphone is
//! a generated WAV file) and records what it receives (`sndfile` `*-dec.wav`): the tests look at those recordings
//! with a Goertzel detector to tell who heard what and in which order (our prompt, hold music and ringback, the
//! other party's tone). baresip is driven over ctrl_tcp (accept, hang up, hold, resume, list calls, send DTMF)
//! and reports its calls' ends there; what it logs tells the rest (DTMF received, re-INVITEs, codecs).
//!
//! The engine places calls only: a phone calling it is refused (403), which is checked too.
//!
//! Needs the `baresip` binary (Debian package `baresip-core`; `scripts/test.sh` installs it).

use rappel::call::{EndCause, HangupBy};
use rappel::media::player::{Clip, PlayItem, Playlist};
use rappel::media::tone::goertzel_power;
use rappel::{BridgeOptions, CallOptions, EarlyMedia, Engine, Leg, LegEvent};
use std::time::Duration;

#[path = "support/baresip.rs"]
mod baresip;

use baresip::{tone, Baresip, Setup, WAIT};

/// The visitor's phone sends this tone.
const VISITOR_HZ: f64 = 440.0;
/// The agent's phone sends this tone.
const AGENT_HZ: f64 = 1000.0;
/// Our announcement to the visitor.
const PROMPT_HZ: f64 = 700.0;
/// Our hold music to the visitor.
const MUSIC_HZ: f64 = 300.0;
/// The second agent's phone (transfers) sends this tone.
const AGENT2_HZ: f64 = 1400.0;
/// Every tone a recording may carry.
const TONES: [f64; 5] = [VISITOR_HZ, AGENT_HZ, PROMPT_HZ, MUSIC_HZ, AGENT2_HZ];

/// Samples per analysed block (50 ms at 8 kHz: 20 Hz bins, far finer than the tones' spacing).
const BLOCK: usize = 400;
/// Audio of the bridge each phone must have received before the call is hung up: 1.5 s.
const BRIDGED_SAMPLES: usize = 12_000;
/// Skipped after the bridge starts in the analysis (jitter buffers, the last frames of what played before).
const SETTLE_SAMPLES: usize = 4_000;

async fn engine() -> Engine {
    Engine::builder()
        .rtp_ports(44_000, 44_999)
        .start()
        .await
        .expect("engine")
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// The visitor's phone: sends [`VISITOR_HZ`], answers at once.
fn visitor(codecs: &str) -> Setup<'_> {
    Setup {
        user: "visitor",
        tone_hz: VISITOR_HZ,
        codecs,
        answermode: "auto",
    }
}

/// The agent's phone: sends [`AGENT_HZ`], answers as `answermode` says.
fn agent<'a>(codecs: &'a str, answermode: &'a str) -> Setup<'a> {
    Setup {
        user: "agent",
        tone_hz: AGENT_HZ,
        codecs,
        answermode,
    }
}

async fn phones(visitor_codecs: &str, agent_codecs: &str) -> (Baresip, Baresip) {
    tokio::join!(
        Baresip::start(visitor(visitor_codecs)),
        Baresip::start(agent(agent_codecs, "auto")),
    )
}

/// The tone that dominates each 50 ms block of `pcm`: `Some(hz)` of [`TONES`] when one carries over 90 % of the
/// tones' power and the block is not near-silent, `None` otherwise.
fn labels(pcm: &[i16]) -> Vec<Option<u32>> {
    pcm.chunks_exact(BLOCK)
        .map(|b| {
            let p: Vec<f64> = TONES.iter().map(|&f| goertzel_power(b, f)).collect();
            let total: f64 = p.iter().sum();
            let (i, best) = p
                .iter()
                .copied()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .unwrap_or((0, 0.0));
            // A sine of amplitude A gives about A²/4; the phones and our player use 8000 (1.6e7).
            (best > 1e6 && best > 0.9 * total).then(|| TONES[i] as u32)
        })
        .collect()
}

fn count(labels: &[Option<u32>], hz: f64) -> usize {
    labels.iter().filter(|l| **l == Some(hz as u32)).count()
}

/// How many times `needle` occurs in the phone's log.
fn log_count(p: &Baresip, needle: &str) -> usize {
    p.log().matches(needle).count()
}

/// Waits for the leg's next event `want` (skipping others), failing on the leg's end.
async fn leg_event(leg: &mut Leg, want: LegEvent) {
    loop {
        match within(leg.next_event()).await {
            Some(ev) if ev == want => return,
            Some(LegEvent::Ended { .. }) | None => panic!("leg ended waiting for {want:?}"),
            Some(_) => {}
        }
    }
}

/// The visitor is called, hears a prompt then hold music, the agent is called and the two are bridged; after
/// 1.5 s of bridged audio at both phones, the engine hangs up the visitor and the bridge hangs up the agent.
/// Checks what each phone recorded and the relay's counters.
async fn bridged_tones(visitor_codecs: &str, agent_codecs: &str) -> (Baresip, Baresip) {
    let (vp, ap) = phones(visitor_codecs, agent_codecs).await;
    let (mut vctl, mut actl) = (vp.ctrl().await, ap.ctrl().await);
    let e = engine().await;

    let mut visitor = e.call(&vp.uri(), CallOptions::default()).await.unwrap();
    within(visitor.answered()).await.unwrap();
    let prompt = Clip::from_pcm(tone(PROMPT_HZ, 4_800));
    let music = Clip::from_pcm(tone(MUSIC_HZ, 1_600));
    visitor
        .play(
            Playlist::new()
                .then(PlayItem::Once(prompt))
                .then(PlayItem::Loop {
                    clip: music,
                    duration: Some(Duration::from_millis(800)),
                }),
        )
        .await
        .unwrap();
    let mut agent = e.call(&ap.uri(), CallOptions::default()).await.unwrap();
    within(agent.answered()).await.unwrap();
    leg_event(&mut visitor, LegEvent::PlayFinished).await;

    // Where the bridge starts in each phone's recording.
    let (v0, a0) = (vp.received_samples(), ap.received_samples());
    let mut bridge = e
        .bridge(&visitor, &agent, BridgeOptions::default())
        .await
        .unwrap();
    vp.wait_received(v0 + BRIDGED_SAMPLES).await;
    ap.wait_received(a0 + BRIDGED_SAMPLES).await;
    visitor.hangup().await.unwrap();

    let bcdr = within(bridge.ended()).await.unwrap();
    let vcdr = within(visitor.ended()).await.unwrap();
    let acdr = within(agent.ended()).await.unwrap();
    assert_eq!(bcdr.ended_by_leg, Some(vcdr.leg));
    assert_eq!(
        (
            vcdr.hangup_by,
            vcdr.end_cause,
            acdr.hangup_by,
            acdr.end_cause
        ),
        (
            HangupBy::Local,
            EndCause::Normal,
            HangupBy::Local,
            EndCause::Normal
        )
    );
    // Both phones got their BYE.
    within(vctl.event("CALL_CLOSED")).await;
    within(actl.event("CALL_CLOSED")).await;
    assert_eq!(vctl.active_calls().await, 0);
    assert_eq!(actl.active_calls().await, 0);

    // The relay's view: each phone sent over 1.5 s of 20 ms packets across the bridge and received as many.
    for (side, m) in [("visitor", bcdr.a_media), ("agent", bcdr.b_media)] {
        assert!(m.packets_in >= 60, "{side} sent {m:?}");
        assert!(m.packets_out >= 60, "{side} received {m:?}");
    }
    // What went out to one leg in the bridge came in from the other (the visitor also got our prompt and music
    // before, counted in its own record).
    assert!(bcdr.a_media.packets_out <= bcdr.b_media.packets_in + 5);
    assert!(bcdr.b_media.packets_out <= bcdr.a_media.packets_in + 5);
    assert!(vcdr.media.packets_out >= bcdr.a_media.packets_out + 50);

    // The phones' view.
    let heard_v = labels(&vp.received().await);
    let heard_a = labels(&ap.received().await);
    let (vb, ab) = (v0 / BLOCK, a0 / BLOCK);
    let (before, after) = heard_v.split_at(vb.min(heard_v.len()));
    let after = &after[(SETTLE_SAMPLES / BLOCK).min(after.len())..];
    // Before the bridge: the prompt (600 ms) then the music (800 ms), nothing of either phone.
    assert!(count(before, PROMPT_HZ) >= 8, "prompt: {before:?}");
    assert!(count(before, MUSIC_HZ) >= 10, "music: {before:?}");
    let last_prompt = before.iter().rposition(|l| *l == Some(PROMPT_HZ as u32));
    let first_music = before.iter().position(|l| *l == Some(MUSIC_HZ as u32));
    assert!(last_prompt < first_music, "prompt before music: {before:?}");
    assert_eq!(count(before, AGENT_HZ) + count(before, VISITOR_HZ), 0);
    // After: the agent's tone, never the visitor's own.
    assert!(after.len() >= 15, "{} blocks after the bridge", after.len());
    assert!(
        count(after, AGENT_HZ) * 10 >= after.len() * 9,
        "visitor heard the agent: {after:?}"
    );
    assert_eq!(count(after, VISITOR_HZ), 0, "{after:?}");
    let after_a = &heard_a[(ab + SETTLE_SAMPLES / BLOCK).min(heard_a.len())..];
    assert!(
        after_a.len() >= 15,
        "{} blocks after the bridge",
        after_a.len()
    );
    assert!(
        count(after_a, VISITOR_HZ) * 10 >= after_a.len() * 9,
        "agent heard the visitor: {after_a:?}"
    );
    assert_eq!(count(after_a, AGENT_HZ), 0, "{after_a:?}");
    (vp, ap)
}

#[tokio::test]
async fn visitor_hears_prompt_music_then_agent_and_agent_hears_visitor() {
    bridged_tones("PCMU,PCMA", "PCMU,PCMA").await;
}

/// The agent's phone cannot take PCMA: it accepts the aligning re-INVITE (PCMA + telephone-event) with only
/// telephone-event, which disables its audio; the leg re-offers PCMU and the relay transcodes.
#[tokio::test]
async fn pcma_only_visitor_bridged_to_pcmu_only_agent() {
    let (_, ap) = bridged_tones("PCMA", "PCMU").await;
    assert_eq!(log_count(&ap, "got re-INVITE"), 2, "align, then restore");
    assert_eq!(log_count(&ap, "Set audio encoder: PCMA"), 0, "{}", ap.log());
}

/// The agent's phone answered PCMU but also takes PCMA: the aligning re-INVITE switches it to PCMA, and the
/// relay forwards without transcoding.
#[tokio::test]
async fn pcma_only_visitor_and_agent_aligned_by_reinvite() {
    let (_, ap) = bridged_tones("PCMA", "PCMU,PCMA").await;
    let log = ap.log();
    assert!(log.contains("Set audio encoder: PCMU"), "{log}");
    assert!(log.contains("Set audio encoder: PCMA"), "aligned: {log}");
}

/// The visitor's phone hangs up (ctrl_tcp `hangup`): the engine sees its BYE and hangs up the agent, whose phone
/// gets a BYE.
#[tokio::test]
async fn phone_hangs_up_and_engine_hangs_up_the_other_phone() {
    let (vp, ap) = phones("PCMU", "PCMU").await;
    let (mut vctl, mut actl) = (vp.ctrl().await, ap.ctrl().await);
    let e = engine().await;
    let mut visitor = e.call(&vp.uri(), CallOptions::default()).await.unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent = e.call(&ap.uri(), CallOptions::default()).await.unwrap();
    within(agent.answered()).await.unwrap();
    assert_eq!(vctl.active_calls().await, 1);
    assert_eq!(actl.active_calls().await, 1);
    let a0 = ap.received_samples();
    let mut bridge = e
        .bridge(&visitor, &agent, BridgeOptions::default())
        .await
        .unwrap();
    // Some of the visitor's audio reached the agent's phone, then the visitor hangs up.
    ap.wait_received(a0 + 2_400).await;
    vctl.command("hangup", "").await;

    let vcdr = within(visitor.ended()).await.unwrap();
    let acdr = within(agent.ended()).await.unwrap();
    let bcdr = within(bridge.ended()).await.unwrap();
    assert_eq!(
        (vcdr.hangup_by, vcdr.end_cause),
        (HangupBy::Remote, EndCause::Normal),
        "the visitor's BYE"
    );
    assert_eq!(
        (acdr.hangup_by, acdr.end_cause),
        (HangupBy::Local, EndCause::Normal),
        "the bridge hung up the agent"
    );
    assert_eq!(bcdr.ended_by_leg, Some(vcdr.leg));
    assert!(bcdr.b_media.packets_out > 0, "{bcdr:?}");
    within(actl.event("CALL_CLOSED")).await;
    assert_eq!(actl.active_calls().await, 0);
    assert_eq!(vctl.active_calls().await, 0);
}

/// RFC 4733 both ways on one leg: the phone sends digits (ctrl_tcp `sndcode`), the engine reports each as a
/// [`LegEvent::Dtmf`]; the engine sends digits, the phone reports each.
#[tokio::test]
async fn dtmf_both_ways_with_a_phone() {
    let vp = Baresip::start(visitor("PCMU")).await;
    let mut vctl = vp.ctrl().await;
    let e = engine().await;
    let mut visitor = e.call(&vp.uri(), CallOptions::default()).await.unwrap();
    within(visitor.answered()).await.unwrap();

    let sent = "159#*0";
    for c in sent.chars() {
        vctl.command("sndcode", &c.to_string()).await;
    }
    let mut got = String::new();
    while got.len() < sent.len() {
        match within(visitor.next_event()).await {
            Some(LegEvent::Dtmf { digit, duration }) => {
                assert!(duration > Duration::ZERO, "{digit:?} lasted {duration:?}");
                got.push(digit.to_char());
            }
            Some(LegEvent::Ended { .. }) | None => panic!("leg ended; digits so far {got:?}"),
            Some(_) => {}
        }
    }
    assert_eq!(got, sent);

    // Our digits, while the phone hears music: baresip's jitter buffer hands a packet on when later ones
    // arrive, so the last digit needs audio after it, as in any real call.
    visitor
        .play(Playlist::new().then(PlayItem::Loop {
            clip: Clip::from_pcm(tone(MUSIC_HZ, 1_600)),
            duration: None,
        }))
        .await
        .unwrap();
    visitor.send_dtmf("42D").await.unwrap();
    assert_eq!(vp.wait_dtmf(3).await, "42D");
    for _ in 0..3 {
        within(vctl.event("CALL_DTMF_END")).await;
    }
    // And as SIP INFO (application/dtmf-relay).
    visitor.send_dtmf_info("9*").await.unwrap();
    assert_eq!(vp.wait_dtmf_info(2).await, "9*");
    visitor.hangup().await.unwrap();
    within(visitor.ended()).await.unwrap();
    within(vctl.event("CALL_CLOSED")).await;
}

/// The visitor's phone puts the bridged call on hold (its re-INVITE, ctrl_tcp `hold`) and takes it back
/// (`resume`): the engine reports both, the agent hears our hold music in between and the visitor before and
/// after.
#[tokio::test]
async fn phone_holds_and_resumes_the_other_hears_music_meanwhile() {
    let (vp, ap) = phones("PCMU", "PCMU").await;
    let mut vctl = vp.ctrl().await;
    let e = engine().await;
    let mut visitor = e.call(&vp.uri(), CallOptions::default()).await.unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent = e.call(&ap.uri(), CallOptions::default()).await.unwrap();
    within(agent.answered()).await.unwrap();
    let music = Playlist::new().then(PlayItem::Loop {
        clip: Clip::from_pcm(tone(MUSIC_HZ, 1_600)),
        duration: None,
    });
    let opts = BridgeOptions {
        hold_music: Some(music),
        ..BridgeOptions::default()
    };
    let a0 = ap.received_samples();
    let mut bridge = e.bridge(&visitor, &agent, opts).await.unwrap();
    ap.wait_received(a0 + 8_000).await;

    vctl.command("hold", "").await;
    leg_event(&mut visitor, LegEvent::RemoteHold).await;
    let a1 = ap.received_samples();
    ap.wait_received(a1 + 8_000).await;
    vctl.command("resume", "").await;
    leg_event(&mut visitor, LegEvent::RemoteResume).await;
    let a2 = ap.received_samples();
    ap.wait_received(a2 + 8_000).await;
    agent.hangup().await.unwrap();
    let bcdr = within(bridge.ended()).await.unwrap();
    assert_eq!(bcdr.ended_by_leg, Some(agent.id().0));
    within(visitor.ended()).await.unwrap();

    let heard = labels(&ap.received().await);
    let part = |from: usize, to: usize| {
        let (from, to) = ((from + SETTLE_SAMPLES) / BLOCK, to / BLOCK);
        heard[from.min(heard.len())..to.min(heard.len())].to_vec()
    };
    for (what, hz, blocks) in [
        ("visitor before hold", VISITOR_HZ, part(a0, a1)),
        ("music during hold", MUSIC_HZ, part(a1, a2)),
        (
            "visitor after resume",
            VISITOR_HZ,
            part(a2, heard.len() * BLOCK),
        ),
    ] {
        assert!(blocks.len() >= 8, "{what}: {blocks:?}");
        assert!(
            count(&blocks, hz) * 10 >= blocks.len() * 9,
            "{what}: {blocks:?}"
        );
    }
}

/// Digits pressed on the visitor's phone during the bridge: the engine reports them on the visitor's leg, and
/// the relay passes them on to the agent's phone as RFC 4733 events.
#[tokio::test]
async fn dtmf_from_a_phone_crosses_the_bridge() {
    let (vp, ap) = phones("PCMU", "PCMU").await;
    let mut vctl = vp.ctrl().await;
    let e = engine().await;
    let mut visitor = e.call(&vp.uri(), CallOptions::default()).await.unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent = e.call(&ap.uri(), CallOptions::default()).await.unwrap();
    within(agent.answered()).await.unwrap();
    let _bridge = e
        .bridge(&visitor, &agent, BridgeOptions::default())
        .await
        .unwrap();
    let a0 = ap.received_samples();
    ap.wait_received(a0 + 1_600).await;
    let sent = "73#";
    for c in sent.chars() {
        vctl.command("sndcode", &c.to_string()).await;
    }
    let mut got = String::new();
    while got.len() < sent.len() {
        match within(visitor.next_event()).await {
            Some(LegEvent::Dtmf { digit, .. }) => got.push(digit.to_char()),
            Some(LegEvent::Ended { .. }) | None => panic!("leg ended; digits so far {got:?}"),
            Some(_) => {}
        }
    }
    assert_eq!(got, sent, "the engine's view");
    assert_eq!(ap.wait_dtmf(sent.len()).await, sent, "the agent's phone");
    agent.hangup().await.unwrap();
    within(visitor.ended()).await.unwrap();
}

/// The engine takes no inbound calls: a phone calling it gets 403 Forbidden (the endpoint's documented answer
/// to an INVITE out of a dialog), and the engine stays usable.
#[tokio::test]
async fn a_phone_calling_the_engine_is_declined() {
    let vp = Baresip::start(visitor("PCMU")).await;
    let mut vctl = vp.ctrl().await;
    let e = engine().await;
    let target = format!("sip:rappel@{}", e.sip_addrs()[0]);
    vctl.command("dial", &target).await;
    let closed = within(vctl.event("CALL_CLOSED")).await;
    let why = closed["param"].as_str().unwrap_or_default();
    assert!(why.starts_with("403"), "{closed}");
    assert_eq!(vctl.active_calls().await, 0);
    // Then the same phone is called by the engine and answers.
    let mut leg = e.call(&vp.uri(), CallOptions::default()).await.unwrap();
    within(leg.answered()).await.unwrap();
    leg.hangup().await.unwrap();
    within(leg.ended()).await.unwrap();
}

/// The agent's phone rings (180, answered on ctrl_tcp `accept`): meanwhile the visitor hears our ringback (the
/// French one, 440 Hz, which the visitor's phone cannot hear from itself), then the agent once bridged.
#[tokio::test]
async fn visitor_hears_ringback_while_the_agent_phone_rings() {
    let (vp, ap) = tokio::join!(
        Baresip::start(visitor("PCMU")),
        Baresip::start(agent("PCMU", "manual")),
    );
    let mut actl = ap.ctrl().await;
    let e = engine().await;
    let mut visitor = e.call(&vp.uri(), CallOptions::default()).await.unwrap();
    within(visitor.answered()).await.unwrap();
    let opts = CallOptions::default().early_media(visitor.id(), EarlyMedia::Ringback);
    let mut agent = e.call(&ap.uri(), opts).await.unwrap();
    leg_event(&mut agent, LegEvent::Ringing).await;
    let v0 = vp.received_samples();
    vp.wait_received(v0 + 8_000).await;
    actl.command("accept", "").await;
    leg_event(&mut agent, LegEvent::Answered).await;
    let v1 = vp.received_samples();
    let _bridge = e
        .bridge(&visitor, &agent, BridgeOptions::default())
        .await
        .unwrap();
    vp.wait_received(v1 + 8_000).await;
    visitor.hangup().await.unwrap();
    within(agent.ended()).await.unwrap();

    let heard = labels(&vp.received().await);
    let ringing = &heard[(v0 / BLOCK).min(heard.len())..(v1 / BLOCK).min(heard.len())];
    assert!(ringing.len() >= 15, "{ringing:?}");
    assert!(
        count(ringing, VISITOR_HZ) * 10 >= ringing.len() * 9,
        "ringback: {ringing:?}"
    );
    let bridged = &heard[((v1 + SETTLE_SAMPLES) / BLOCK).min(heard.len())..];
    assert!(bridged.len() >= 8, "{bridged:?}");
    assert!(
        count(bridged, AGENT_HZ) * 10 >= bridged.len() * 9,
        "the agent: {bridged:?}"
    );
}

/// The agent's phone sends 183 with SDP first (its `early` answer mode), then 200 on `accept`: the leg reports
/// the early media, takes the answer, and the bridge carries audio both ways. (baresip 1.0 sends no audio in its
/// early session, so there is nothing to forward meanwhile.)
#[tokio::test]
async fn phone_answering_after_183_with_sdp_is_bridged() {
    let (vp, ap) = tokio::join!(
        Baresip::start(visitor("PCMU")),
        Baresip::start(agent("PCMU", "early")),
    );
    let mut actl = ap.ctrl().await;
    let e = engine().await;
    let mut visitor = e.call(&vp.uri(), CallOptions::default()).await.unwrap();
    within(visitor.answered()).await.unwrap();
    let opts = CallOptions::default().early_media(visitor.id(), EarlyMedia::Forward);
    let mut agent = e.call(&ap.uri(), opts).await.unwrap();
    leg_event(&mut agent, LegEvent::EarlyMedia).await;
    actl.command("accept", "").await;
    leg_event(&mut agent, LegEvent::Answered).await;
    let (v0, a0) = (vp.received_samples(), ap.received_samples());
    let _bridge = e
        .bridge(&visitor, &agent, BridgeOptions::default())
        .await
        .unwrap();
    vp.wait_received(v0 + 8_000).await;
    ap.wait_received(a0 + 8_000).await;
    agent.hangup().await.unwrap();
    within(visitor.ended()).await.unwrap();

    for (who, p, from, hz) in [
        ("visitor", &vp, v0, AGENT_HZ),
        ("agent", &ap, a0, VISITOR_HZ),
    ] {
        let heard = labels(&p.received().await);
        let bridged = &heard[((from + SETTLE_SAMPLES) / BLOCK).min(heard.len())..];
        assert!(bridged.len() >= 8, "{who}: {bridged:?}");
        assert!(
            count(bridged, hz) * 10 >= bridged.len() * 9,
            "{who} heard the other: {bridged:?}"
        );
    }
}

/// A phone that rings and is not answered is cancelled at the ring timeout: the leg fails with 487, the phone
/// drops the call, and the leg's record carries the call's Call-ID.
#[tokio::test]
async fn ring_timeout_cancels_a_ringing_phone() {
    let ap = Baresip::start(agent("PCMU", "manual")).await;
    let mut actl = ap.ctrl().await;
    let e = engine().await;
    let opts = CallOptions::default().ring_timeout(Duration::from_millis(800));
    let mut leg = e.call(&ap.uri(), opts).await.unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = within(leg.next_event()).await {
        seen.push(ev);
    }
    assert!(seen.contains(&LegEvent::Ringing), "{seen:?}");
    assert!(
        seen.contains(&LegEvent::Failed {
            status: Some(487),
            cause: EndCause::RingTimeout
        }),
        "{seen:?}"
    );
    let cdr = leg.cdr().unwrap().clone();
    assert_eq!((cdr.answer_ms, cdr.talk_ms), (None, 0));
    let closed = within(actl.event("CALL_CLOSED")).await;
    assert_eq!(actl.active_calls().await, 0);
    // The record of a call never answered names it as the phone does.
    assert_eq!(cdr.call_id.as_deref(), closed["id"].as_str(), "{closed}");
}

/// The ringing phone rejects the call (ctrl_tcp `hangup` before answering): the leg fails with the phone's
/// status (486).
#[tokio::test]
async fn ringing_phone_rejects_the_call() {
    let ap = Baresip::start(agent("PCMU", "manual")).await;
    let mut actl = ap.ctrl().await;
    let e = engine().await;
    let mut leg = e.call(&ap.uri(), CallOptions::default()).await.unwrap();
    leg_event(&mut leg, LegEvent::Ringing).await;
    actl.command("hangup", "").await;
    let mut seen = Vec::new();
    while let Some(ev) = within(leg.next_event()).await {
        seen.push(ev);
    }
    assert_eq!(
        seen.first(),
        Some(&LegEvent::Failed {
            status: Some(486),
            cause: EndCause::Rejected(486)
        }),
        "baresip answers 486 Busy Here: {seen:?}"
    );
    let cdr = leg.cdr().unwrap();
    assert_eq!(
        (cdr.hangup_by, cdr.sip_status, cdr.answer_ms),
        (HangupBy::Remote, Some(486), None)
    );
    assert!(cdr.ring_ms.is_some());
    within(actl.event("CALL_CLOSED")).await;
}

/// The visitor, bridged to one agent's phone, is transferred to a second agent's phone: the first gets a BYE,
/// the visitor hears the second agent, and the second hears the visitor.
#[tokio::test]
async fn visitor_transferred_from_one_phone_to_another() {
    let (vp, ap, bp) = tokio::join!(
        Baresip::start(visitor("PCMU")),
        Baresip::start(agent("PCMU", "auto")),
        Baresip::start(Setup {
            user: "agent2",
            tone_hz: AGENT2_HZ,
            codecs: "PCMU",
            answermode: "auto",
        }),
    );
    let mut actl = ap.ctrl().await;
    let e = engine().await;
    let mut visitor = e.call(&vp.uri(), CallOptions::default()).await.unwrap();
    within(visitor.answered()).await.unwrap();
    let mut agent = e.call(&ap.uri(), CallOptions::default()).await.unwrap();
    within(agent.answered()).await.unwrap();
    let v0 = vp.received_samples();
    let mut bridge = e
        .bridge(&visitor, &agent, BridgeOptions::default())
        .await
        .unwrap();
    vp.wait_received(v0 + 8_000).await;

    let mut agent2 = e.call(&bp.uri(), CallOptions::default()).await.unwrap();
    within(agent2.answered()).await.unwrap();
    let b0 = bp.received_samples();
    let v1 = vp.received_samples();
    bridge.transfer(&agent, &agent2).await.unwrap();
    let acdr = within(agent.ended()).await.unwrap();
    assert_eq!(
        acdr.hangup_by,
        HangupBy::Local,
        "the replaced agent is hung up"
    );
    within(actl.event("CALL_CLOSED")).await;
    vp.wait_received(v1 + 8_000).await;
    bp.wait_received(b0 + 8_000).await;
    visitor.hangup().await.unwrap();
    let bcdr = within(bridge.ended()).await.unwrap();
    within(agent2.ended()).await.unwrap();
    assert_eq!(bcdr.transfers, 1);
    assert_eq!(bcdr.legs, vec![visitor.id().0, agent.id().0, agent2.id().0]);

    let heard = labels(&vp.received().await);
    let part = |from: usize, to: usize| {
        let (from, to) = ((from + SETTLE_SAMPLES) / BLOCK, to / BLOCK);
        heard[from.min(heard.len())..to.min(heard.len())].to_vec()
    };
    let first = part(v0, v1);
    let second = part(v1, heard.len() * BLOCK);
    for (who, hz, blocks) in [("agent", AGENT_HZ, first), ("agent2", AGENT2_HZ, second)] {
        assert!(blocks.len() >= 8, "{who}: {blocks:?}");
        assert!(
            count(&blocks, hz) * 10 >= blocks.len() * 9,
            "visitor heard {who}: {blocks:?}"
        );
    }
    let heard2 = labels(&bp.received().await);
    let bridged2 = &heard2[((b0 + SETTLE_SAMPLES) / BLOCK).min(heard2.len())..];
    assert!(bridged2.len() >= 8, "{bridged2:?}");
    assert!(
        count(bridged2, VISITOR_HZ) * 10 >= bridged2.len() * 9,
        "agent2 heard the visitor: {bridged2:?}"
    );
}

/// The engine puts the phone on hold (re-INVITE `sendonly`) and takes it back (`sendrecv`): the phone accepts
/// both with answers the leg takes, the call stays up, and our music goes on throughout. (What the phone hears
/// is not checked here: after a re-INVITE that keeps its codec, baresip 1.0 records no more received audio,
/// between two baresips as well.)
#[tokio::test]
async fn engine_holds_and_resumes_a_phone() {
    let vp = Baresip::start(visitor("PCMU")).await;
    let mut vctl = vp.ctrl().await;
    let e = engine().await;
    let mut leg = e.call(&vp.uri(), CallOptions::default()).await.unwrap();
    within(leg.answered()).await.unwrap();
    leg.play(Playlist::new().then(PlayItem::Loop {
        clip: Clip::from_pcm(tone(MUSIC_HZ, 1_600)),
        duration: None,
    }))
    .await
    .unwrap();
    vp.wait_received(4_000).await;
    within(leg.hold())
        .await
        .expect("the phone accepts our hold");
    within(leg.unhold())
        .await
        .expect("the phone accepts our resume");
    // Both re-INVITEs reached the phone and were answered (the leg took the answers: hold() and unhold()).
    assert_eq!(log_count(&vp, "got re-INVITE"), 2, "{}", vp.log());
    assert_eq!(vctl.active_calls().await, 1);
    leg.hangup().await.unwrap();
    let cdr = within(leg.ended()).await.unwrap();
    within(vctl.event("CALL_CLOSED")).await;
    // 20 ms packets of music from the answer to the end, hold included (a few lost to start-up at most).
    assert!(cdr.media.packets_out + 10 >= cdr.talk_ms / 20, "{cdr:?}");
}
