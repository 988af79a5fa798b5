//! Demo phones: small in-process SIP user agents with real SIP and RTP on loopback.
//!
//! The click-to-call example runs with no outside PBX by dialling these, and tests use them as exact in-process
//! peers. A [`DemoPhone`] answers calls as its [`Behaviour`] says: it rings for a while, answers with PCMU or PCMA,
//! sends a tone every 20 ms to the address the caller's SDP names, counts the RTP it receives, and hangs up after
//! a conversation of a set length; or it answers busy, or never answers.
//!
//! This is a demo and test peer, not part of the media hot path: one tokio task per phone and one 20 ms interval
//! for all of its calls.

use crate::media::dtmf::DtmfReceiver;
use crate::media::g711::Law;
use crate::media::tone::ToneSpec;
use crate::net::sip::{SipClient, SipDriver};
use crate::net::transport::SipTransportConfig;
use crate::sdp::{Codec, Direction, LocalSession, Sdp};
use crate::sip::endpoint::{CallHandle, EndpointConfig, Event};
use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a demo phone treats an incoming call.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Behaviour {
    /// Ring (180) for `ring`, answer, talk for `talk` (sending a tone), then hang up. `talk: None` never hangs up.
    Answer {
        /// Ringing time before the 200.
        ring: Duration,
        /// Conversation length before the phone sends BYE.
        talk: Option<Duration>,
        /// The tone's frequency in hertz.
        tone_hz: f64,
    },
    /// Answer 486 Busy Here.
    Busy,
    /// Ring and never answer.
    NoAnswer,
}

impl Behaviour {
    /// Rings 1 s, talks 10 s with a 440 Hz tone: a demo conversation.
    pub fn demo() -> Behaviour {
        Behaviour::Answer {
            ring: Duration::from_secs(1),
            talk: Some(Duration::from_secs(10)),
            tone_hz: 440.0,
        }
    }
}

/// Counters of one phone, readable while it runs.
#[derive(Debug, Default)]
pub struct PhoneStats {
    /// INVITEs received.
    pub calls: AtomicU64,
    /// Calls answered 200.
    pub answered: AtomicU64,
    /// Calls that ended (BYE either way, CANCEL).
    pub ended: AtomicU64,
    /// RTP packets sent.
    pub rtp_sent: AtomicU64,
    /// RTP packets received.
    pub rtp_received: AtomicU64,
    /// RFC 4733 telephone-event packets received with the payload type this phone negotiated (packets with
    /// another payload type are counted in `rtp_received` only).
    pub dtmf_packets: AtomicU64,
    /// The DTMF digits those packets carried, one per key press, in order.
    pub dtmf_digits: std::sync::Mutex<String>,
}

impl PhoneStats {
    /// The DTMF digits received so far (RFC 4733, the negotiated payload type).
    pub fn digits(&self) -> String {
        self.dtmf_digits
            .lock()
            .map_or_else(|_| String::new(), |d| d.clone())
    }
}

/// A running demo phone. Dropping it stops the phone (its calls end without BYE).
#[derive(Debug)]
pub struct DemoPhone {
    sip: SocketAddr,
    name: String,
    stats: Arc<PhoneStats>,
    task: JoinHandle<()>,
}

impl Drop for DemoPhone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct PhoneCall {
    rtp: Arc<UdpSocket>,
    remote: Option<SocketAddr>,
    law: Law,
    /// The telephone-event payload type the caller sends with (the one in our answer).
    te: Option<u8>,
    ssrc: u32,
    seq: u16,
    ts: u32,
    hangup_at: Option<Instant>,
    answer_at: Option<Instant>,
    answered: bool,
    answer_sdp: Bytes,
    reader: JoinHandle<()>,
}

impl DemoPhone {
    /// Starts a phone named `name` (its SIP user) on `bind` (port 0 picks one), with RTP on the same IP.
    pub async fn start(
        name: &str,
        bind: SocketAddr,
        behaviour: Behaviour,
    ) -> io::Result<DemoPhone> {
        let mut ep = EndpointConfig::new(bind);
        ep.accept_invites(true).user_agent("rappel-demo-phone");
        let mut transport = SipTransportConfig::new(bind);
        transport.tcp = false;
        let driver = SipDriver::start(transport, ep).await?;
        let sip = driver.client.local_addrs()[0];
        let stats = Arc::new(PhoneStats::default());
        let task = tokio::spawn(run(driver, behaviour, stats.clone()));
        Ok(DemoPhone {
            sip,
            name: name.to_owned(),
            stats,
            task,
        })
    }

    /// The phone's SIP address.
    pub fn addr(&self) -> SocketAddr {
        self.sip
    }

    /// The phone's SIP URI, e.g. `sip:alice@127.0.0.1:5080`.
    pub fn uri(&self) -> String {
        format!("sip:{}@{}", self.name, self.sip)
    }

    /// The phone's counters.
    pub fn stats(&self) -> &PhoneStats {
        &self.stats
    }
}

async fn run(driver: SipDriver, behaviour: Behaviour, stats: Arc<PhoneStats>) {
    let SipDriver {
        client,
        mut events,
        task: _task,
    } = driver;
    let ip = client.local_addrs()[0].ip();
    let mut calls: HashMap<CallHandle, PhoneCall> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (tone_hz, ring, talk) = match &behaviour {
        Behaviour::Answer {
            ring,
            talk,
            tone_hz,
        } => (*tone_hz, *ring, *talk),
        _ => (440.0, Duration::ZERO, None),
    };
    // A continuous tone: one 1 s "on" period of the chosen frequency, looped.
    let tone: Vec<i16> = ToneSpec {
        frequencies: vec![tone_hz],
        amplitude: 0.3,
        cadence: vec![Duration::from_secs(1)],
    }
    .render_pcm();
    let mut tone_pos = 0usize;
    let mut session_id = 1u64;
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return };
                match ev {
                    Event::IncomingCall { call, body, .. } => {
                        stats.calls.fetch_add(1, Ordering::Relaxed);
                        session_id += 1;
                        if let Some(mut pc) = incoming(&client, call, &body, &behaviour, ip, session_id).await {
                            {
                                if pc.answer_at.is_some() {
                                    pc.answer_at = Some(Instant::now() + ring);
                                }
                                let rx = pc.rtp.clone();
                                let st = stats.clone();
                                let te = pc.te;
                                pc.reader = tokio::spawn(async move {
                                    let mut buf = [0u8; 2048];
                                    let mut dtmf = DtmfReceiver::new(8000);
                                    while let Ok((n, _)) = rx.recv_from(&mut buf).await {
                                        st.rtp_received.fetch_add(1, Ordering::Relaxed);
                                        let pkt = buf.get(..n).unwrap_or_default();
                                        count_dtmf(&st, &mut dtmf, te, pkt);
                                    }
                                });
                                calls.insert(call, pc);
                            }
                        }
                    }
                    Event::Acked { call, .. } => {
                        if let Some(pc) = calls.get_mut(&call) {
                            pc.hangup_at = talk.map(|t| Instant::now() + t);
                        }
                    }
                    Event::Request { call, method: crate::sip::message::Method::Invite, body } => {
                        // A re-INVITE (hold, unhold, new media address): follow it and answer with our SDP.
                        if let Some(pc) = calls.get_mut(&call) {
                            if let Ok(offer) = Sdp::parse(&body) {
                                if let Some(remote) = offer_remote(&offer) {
                                    pc.remote = Some(remote);
                                }
                            }
                            let sdp = pc.answer_sdp.clone();
                            let _ = client.exec(move |ep, now| ep.answer_invite(now, call, 200, sdp)).await;
                        }
                    }
                    Event::Terminated { call, .. } => {
                        if let Some(pc) = calls.remove(&call) {
                            pc.reader.abort();
                            stats.ended.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let mut frame = [0u8; 12 + 160];
                let mut pcm_used = false;
                let mut hang = Vec::new();
                let mut answer = Vec::new();
                for (call, pc) in calls.iter_mut() {
                    if pc.answer_at.is_some_and(|t| t <= now) {
                        pc.answer_at = None;
                        pc.answered = true;
                        answer.push((*call, pc.answer_sdp.clone()));
                    }
                    if pc.hangup_at.is_some_and(|t| t <= now) {
                        pc.hangup_at = None;
                        hang.push(*call);
                    }
                    let (Some(remote), true) = (pc.remote, pc.answered) else { continue };
                    frame[0] = 0x80;
                    frame[1] = pc.law.payload_type();
                    frame[2..4].copy_from_slice(&pc.seq.to_be_bytes());
                    frame[4..8].copy_from_slice(&pc.ts.to_be_bytes());
                    frame[8..12].copy_from_slice(&pc.ssrc.to_be_bytes());
                    for (i, b) in frame[12..].iter_mut().enumerate() {
                        let s = tone.get((tone_pos + i) % tone.len().max(1)).copied().unwrap_or(0);
                        *b = pc.law.encode(s);
                    }
                    pc.seq = pc.seq.wrapping_add(1);
                    pc.ts = pc.ts.wrapping_add(160);
                    pcm_used = true;
                    if pc.rtp.send_to(&frame, remote).await.is_ok() {
                        stats.rtp_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if pcm_used {
                    tone_pos = (tone_pos + 160) % tone.len().max(1);
                }
                for (call, sdp) in answer {
                    if client.exec(move |ep, now| ep.answer_invite(now, call, 200, sdp)).await.is_ok() {
                        stats.answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for call in hang {
                    let _ = client.exec(move |ep, now| ep.send_bye(now, call)).await;
                }
            }
        }
    }
}

/// Decodes an RFC 4733 packet with the negotiated payload type into `stats` (digits once per key press).
fn count_dtmf(stats: &PhoneStats, rx: &mut DtmfReceiver, te: Option<u8>, pkt: &[u8]) {
    let ts = pkt.get(4..8).and_then(|t| <[u8; 4]>::try_from(t).ok());
    let (Some(te), Some(b1), Some(ts), Some(payload)) = (te, pkt.get(1), ts, pkt.get(12..16))
    else {
        return;
    };
    if b1 & 0x7f != te {
        return;
    }
    stats.dtmf_packets.fetch_add(1, Ordering::Relaxed);
    let ts = u32::from_be_bytes(ts);
    if rx.handle_packet(ts, payload).is_err() {
        return;
    }
    while let Some(ev) = rx.poll_event() {
        if let Ok(mut d) = stats.dtmf_digits.lock() {
            // Bounded: a demo peer keeps the first 256 digits.
            if d.len() < 256 {
                d.push(ev.digit.to_char());
            }
        }
    }
}

/// The caller's RTP address from an offer (first audio stream).
fn offer_remote(offer: &Sdp) -> Option<SocketAddr> {
    let (i, m) = offer.media.iter().enumerate().find(|(_, m)| m.port != 0)?;
    let ip = offer.effective_connection(i)?.address;
    Some(SocketAddr::new(ip, m.port))
}

/// Handles a new INVITE: rings, or rejects, and prepares the call's RTP socket and SDP answer.
async fn incoming(
    client: &SipClient,
    call: CallHandle,
    body: &Bytes,
    behaviour: &Behaviour,
    ip: std::net::IpAddr,
    session_id: u64,
) -> Option<PhoneCall> {
    let reject = |code: u16| async move {
        let _ = client
            .exec(move |ep, now| ep.answer_invite(now, call, code, Bytes::new()))
            .await;
    };
    if *behaviour == Behaviour::Busy {
        reject(486).await;
        return None;
    }
    let Ok(offer) = Sdp::parse(body) else {
        reject(488).await;
        return None;
    };
    let rtp = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).await.ok()?);
    let local = rtp.local_addr().ok()?;
    let mut session = LocalSession::new(session_id, local);
    let Ok((answer, negotiated)) = session.answer(
        &offer,
        &[Codec::pcmu(), Codec::pcma(), Codec::telephone_event(101)],
        Direction::SendRecv,
    ) else {
        reject(488).await;
        return None;
    };
    let law = negotiated.codec.law().unwrap_or(Law::Ulaw);
    let _ = client
        .exec(move |ep, now| ep.answer_invite(now, call, 180, Bytes::new()))
        .await;
    let answer_sdp = if matches!(behaviour, Behaviour::NoAnswer) {
        Bytes::new()
    } else {
        Bytes::from(answer.to_bytes())
    };
    Some(PhoneCall {
        rtp,
        remote: Some(negotiated.remote_rtp),
        law,
        te: negotiated.telephone_event_recv_pt,
        ssrc: 0x5eed_0000 ^ session_id as u32,
        seq: 1,
        ts: 0,
        hangup_at: None,
        answered: false,
        answer_at: if matches!(behaviour, Behaviour::NoAnswer) {
            None
        } else {
            Some(Instant::now())
        },
        answer_sdp,
        reader: tokio::spawn(async {}),
    })
}
