//! The browser leg: a WebRTC peer (webrtc-rs) glued to an ordinary relay leg (cargo feature `webrtc`).
//!
//! A visitor can call from the browser: the page sends an SDP offer, [`accept`] answers it with a webrtc-rs
//! `PeerConnection` (ICE-lite, DTLS-SRTP, one audio track, PCMU or PCMA only: Opus is left out because the relay
//! transcodes only between the G.711 laws, and every browser offers G.711; plus telephone-event/8000 when the
//! offer has it, for DTMF from `RTCDTMFSender.insertDTMF`). SRTP ends here. Towards the rest of rappel the peer
//! is a plain RTP endpoint: one UDP socket on [`BrowserOptions::bind_ip`] (the *glue socket*) exchanges clear
//! RTP with a normal relay leg, whose remote address is the glue socket. So the relay, the players (greeting, hold music) and bridges
//! treat a browser leg like a SIP leg; only signalling differs (no SIP dialog: the engine closes the peer
//! connection where it would send BYE).
//!
//! One tokio task per browser leg ([`accept`] spawns it) owns the peer connection and the glue socket:
//! - browser → relay: the remote track's RTP packets (decrypted by webrtc-rs) are re-serialised and sent from
//!   the glue socket to the relay leg, telephone-event packets included (same SSRC, their own payload type:
//!   the relay leg knows it as [`Accepted::telephone_event`] and decodes them as it does a SIP peer's);
//! - relay → browser: datagrams from the relay leg's address are parsed and written to the local track (with
//!   the track's SSRC; the audio payload type, or the telephone-event one for RFC 4733 packets);
//! - the end: the owner drops or fires its [`PeerHandle`] (hang-up from our side), the connection fails or
//!   closes (ICE consent lost, DTLS alert), or no RTP came from the browser for
//!   [`BrowserOptions::inactivity`] (a dead tab). The task then closes the peer connection (webrtc-rs stops
//!   its driver only on an explicit `close`) and reports a [`PeerEnd`] through the callback given to
//!   [`accept`].
//!
//! webrtc-rs is used because DTLS-SRTP and ICE are large and security-sensitive; writing them was never the
//! point. Its async layer spawns its own tasks; `tests/webrtc_browser.rs` counts UDP sockets, fds, tokio tasks
//! and RSS over ten calls to show that none of them outlives a call in our use.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::shared::marshal::{Marshal, Unmarshal};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};

use crate::media::g711::Law;

/// Largest offer accepted (bytes). Browser audio offers are 2–4 kB.
pub const MAX_OFFER: usize = 16 * 1024;

/// Settings of browser legs.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// Address the peer connection's UDP socket binds (its ICE host candidate), and the glue socket's IP.
    pub bind_ip: IpAddr,
    /// End the leg when no RTP came from the browser for this long (a closed or crashed tab).
    pub inactivity: Duration,
    /// Give up when ICE gathering (our host candidate) is not complete within this.
    pub gather_timeout: Duration,
    /// The IP to advertise instead of `bind_ip` in the answer's host candidates and `c=` line: the public IP
    /// of a host behind one-to-one NAT (a cloud VM). The browser's connectivity checks go there and the NAT
    /// forwards them; as an ICE-lite answerer we never send checks of our own. (webrtc-rs 0.21.1 stores a
    /// `nat_1to1_ips` setting but does not apply it, hence the rewrite in [`advertise`].)
    pub public_ip: Option<IpAddr>,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        BrowserOptions {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            inactivity: Duration::from_secs(10),
            gather_timeout: Duration::from_secs(5),
            public_ip: None,
        }
    }
}

/// Why a browser offer could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebRtcError {
    /// The offer is larger than [`MAX_OFFER`].
    #[error("offer larger than {MAX_OFFER} bytes")]
    TooLarge,
    /// The offer has no audio m-line offering PCMU (0) or PCMA (8).
    #[error("the offer has no PCMU or PCMA audio")]
    NoG711,
    /// webrtc-rs refused the offer or failed to answer it.
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    /// ICE gathering did not complete in time.
    #[error("ICE gathering timed out")]
    GatherTimeout,
    /// A socket could not be bound.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The engine refused the leg (shutting down, no RTP ports).
    #[error(transparent)]
    Call(#[from] crate::call::CallError),
}

/// How a browser leg ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEnd {
    /// Our side closed it ([`PeerHandle`] fired or dropped).
    Closed,
    /// The peer connection failed or was closed by the browser (ICE or DTLS).
    Failed,
    /// No RTP from the browser for [`BrowserOptions::inactivity`].
    Inactive,
}

/// Closes the browser leg when fired or dropped.
#[derive(Debug)]
pub struct PeerHandle {
    close: Option<oneshot::Sender<()>>,
}

impl PeerHandle {
    /// Closes the peer connection; the end is reported as [`PeerEnd::Closed`].
    pub fn close(mut self) {
        if let Some(c) = self.close.take() {
            let _ = c.send(());
        }
    }
}

/// An answered browser offer.
#[derive(Debug)]
pub struct Accepted {
    /// The SDP answer for the browser (all candidates included: no trickle).
    pub answer: String,
    /// The negotiated G.711 law.
    pub law: Law,
    /// The glue socket: the relay leg sends the browser's audio here.
    pub glue: SocketAddr,
    /// Closes the leg.
    pub handle: PeerHandle,
    /// RTP packets from the browser forwarded to the relay so far.
    pub from_browser: Arc<AtomicU64>,
    /// The telephone-event/8000 payload type both sides use (RFC 4733 DTMF), when the offer had it.
    pub telephone_event: Option<u8>,
}

/// The law to use for an offer: PCMU if its audio m-line lists payload type 0, else PCMA (8), else `None`.
/// (Browsers use the static numbers for G.711.)
pub fn offered_law(offer: &str) -> Option<Law> {
    let m = offer.lines().find(|l| l.starts_with("m=audio "))?;
    let formats: Vec<&str> = m.split_whitespace().skip(3).collect();
    if formats.contains(&"0") {
        Some(Law::Ulaw)
    } else if formats.contains(&"8") {
        Some(Law::Alaw)
    } else {
        None
    }
}

/// The payload type of telephone-event/8000 in the offer's audio m-line, if it offers it (browsers also offer
/// telephone-event/48000 with Opus: that one is not used, the audio is G.711 at 8 kHz).
pub fn offered_telephone_event(offer: &str) -> Option<u8> {
    let mut in_audio = false;
    let mut formats: Vec<&str> = Vec::new();
    for line in offer.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            if in_audio {
                break;
            }
            in_audio = m.starts_with("audio ");
            formats = m.split_whitespace().skip(3).collect();
            continue;
        }
        if !in_audio {
            continue;
        }
        let Some((pt, enc)) = line
            .strip_prefix("a=rtpmap:")
            .and_then(|r| r.split_once(' '))
        else {
            continue;
        };
        if enc.trim().eq_ignore_ascii_case("telephone-event/8000") && formats.contains(&pt) {
            return pt.parse().ok();
        }
    }
    None
}

fn telephone_event_codec(pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_TELEPHONE_EVENT
                .to_owned(),
            clock_rate: 8000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

fn codec(law: Law) -> RTCRtpCodecParameters {
    let (mime, pt) = match law {
        Law::Ulaw => (
            rtc::peer_connection::configuration::media_engine::MIME_TYPE_PCMU,
            0,
        ),
        Law::Alaw => (
            rtc::peer_connection::configuration::media_engine::MIME_TYPE_PCMA,
            8,
        ),
    };
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

enum PeerEvent {
    Gathered,
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
}

struct Handler {
    tx: mpsc::UnboundedSender<PeerEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.tx.send(PeerEvent::Gathered);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send(PeerEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tx.send(PeerEvent::Track(track));
    }
}

/// Answers a browser's offer and starts the leg's task: RTP goes between the browser and `relay_rtp` (the relay
/// leg's RTP address) through the glue socket. `on_end` is called once, when the leg is over.
pub async fn accept(
    offer: &str,
    relay_rtp: SocketAddr,
    opts: &BrowserOptions,
    on_end: impl FnOnce(PeerEnd) + Send + 'static,
) -> Result<Accepted, WebRtcError> {
    if offer.len() > MAX_OFFER {
        return Err(WebRtcError::TooLarge);
    }
    let law = offered_law(offer).ok_or(WebRtcError::NoG711)?;
    // The glue and the relay leg talk over loopback when either is bound to every interface: a datagram sent to
    // 0.0.0.0 arrives from 127.0.0.1, which the relay's strict latching and the glue's source check would refuse.
    let relay_rtp = SocketAddr::new(local_ip(relay_rtp.ip()), relay_rtp.port());
    let glue = UdpSocket::bind(SocketAddr::new(local_ip(opts.bind_ip), 0)).await?;
    let glue_addr = glue.local_addr()?;

    let mut media = MediaEngine::default();
    let params = codec(law);
    media.register_codec(params.clone(), RtpCodecKind::Audio)?;
    let te = offered_telephone_event(offer);
    if let Some(pt) = te {
        media.register_codec(telephone_event_codec(pt), RtpCodecKind::Audio)?;
    }
    // No mDNS: as an ICE-lite server we learn the browser's address from its checks (peer-reflexive), so
    // `.local` candidates are of no use, and a host without multicast (a container, a namespace with only
    // loopback) would fail to open the mDNS socket.
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_lite(true)
        .with_include_loopback_candidate(opts.bind_ip.is_loopback())
        .build();
    let (tx, mut events) = mpsc::unbounded_channel();
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Handler { tx }))
            .with_udp_addrs(vec![SocketAddr::new(opts.bind_ip, 0)])
            .build()
            .await?,
    );
    match negotiate(&*pc, offer, law, (params, te), opts, &mut events).await {
        Ok((answer, track, ssrc, early)) => {
            let answer = match opts.public_ip {
                Some(ip) => advertise(&answer, ip),
                None => answer,
            };
            // What the answer kept (webrtc-rs answers with the offer's payload type when it matches).
            let te = te.filter(|pt| answer_has_telephone_event(&answer, *pt));
            let (close, closed) = oneshot::channel();
            let from_browser = Arc::new(AtomicU64::new(0));
            let glue = Arc::new(glue);
            tokio::spawn(run(
                Glue {
                    pc,
                    glue,
                    relay_rtp,
                    track,
                    ssrc,
                    pt: law.payload_type(),
                    te,
                    inactivity: opts.inactivity,
                    from_browser: from_browser.clone(),
                },
                early,
                events,
                closed,
                on_end,
            ));
            Ok(Accepted {
                answer,
                law,
                glue: glue_addr,
                handle: PeerHandle { close: Some(close) },
                from_browser,
                telephone_event: te,
            })
        }
        Err(e) => {
            let _ = pc.close().await;
            Err(e)
        }
    }
}

/// `sdp` with every host candidate's address and every `c=` line naming `ip` instead (candidates that then
/// repeat an address and port are dropped). Other candidate types and lines are kept as they are.
pub fn advertise(sdp: &str, ip: IpAddr) -> String {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut seen = Vec::new();
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let end = &line[body.len()..];
        if body.starts_with("c=IN ") {
            out.push_str(&format!("c=IN {family} {ip}{end}"));
            continue;
        }
        if let Some(rest) = body.strip_prefix("a=candidate:") {
            // foundation component transport priority address port typ type [...]
            let f: Vec<&str> = rest.split(' ').collect();
            if f.len() >= 8 && f[6] == "typ" && f[7] == "host" {
                let key = (f[1].to_owned(), f[2].to_ascii_lowercase(), f[5].to_owned());
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                let mut g = f.clone();
                let ip_s = ip.to_string();
                g[4] = &ip_s;
                out.push_str("a=candidate:");
                out.push_str(&g.join(" "));
                out.push_str(end);
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

/// `ip`, or the loopback address of its family when it is unspecified (`0.0.0.0`, `::`).
fn local_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    }
}

fn answer_has_telephone_event(answer: &str, pt: u8) -> bool {
    let want = format!("a=rtpmap:{pt} ");
    answer.lines().any(|l| {
        l.strip_prefix(want.as_str())
            .is_some_and(|enc| enc.trim().eq_ignore_ascii_case("telephone-event/8000"))
    })
}

async fn negotiate(
    pc: &dyn PeerConnection,
    offer: &str,
    law: Law,
    (params, te): (RTCRtpCodecParameters, Option<u8>),
    opts: &BrowserOptions,
    events: &mut mpsc::UnboundedReceiver<PeerEvent>,
) -> Result<(String, Arc<TrackLocalStaticRTP>, u32, Vec<PeerEvent>), WebRtcError> {
    let ssrc = rand::random::<u32>();
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "rappel".to_owned(),
        format!("rappel-{law:?}"),
        "rappel-audio".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: params.rtp_codec.clone(),
            ..Default::default()
        }],
    )));
    pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
    if let Some(pt) = te {
        // A track's transceiver offers and sends only the track's codec: add telephone-event.
        for t in pc.get_transceivers().await {
            t.set_codec_preferences(vec![params.clone(), telephone_event_codec(pt)])
                .await?;
        }
    }
    pc.set_remote_description(RTCSessionDescription::offer(offer.to_owned())?)
        .await?;
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer).await?;
    // No trickle ICE: wait until our (host) candidate is in the local description. Track and state events that
    // arrive meanwhile are kept for the leg's task.
    let mut early = Vec::new();
    let gathered = tokio::time::timeout(opts.gather_timeout, async {
        while let Some(ev) = events.recv().await {
            match ev {
                PeerEvent::Gathered => return true,
                other => early.push(other),
            }
        }
        false
    })
    .await;
    if gathered != Ok(true) {
        return Err(WebRtcError::GatherTimeout);
    }
    let sdp = pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .ok_or(WebRtcError::GatherTimeout)?;
    Ok((sdp, track, ssrc, early))
}

struct Glue {
    pc: Arc<dyn PeerConnection>,
    glue: Arc<UdpSocket>,
    relay_rtp: SocketAddr,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    pt: u8,
    /// The telephone-event payload type, when negotiated: such packets keep it on their way to the browser.
    te: Option<u8>,
    inactivity: Duration,
    from_browser: Arc<AtomicU64>,
}

/// Forwards one remote track's RTP to the relay leg until the track ends.
async fn forward_track(
    track: Arc<dyn TrackRemote>,
    glue: Arc<UdpSocket>,
    relay_rtp: SocketAddr,
    count: Arc<AtomicU64>,
) {
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(p) => {
                if let Ok(b) = p.marshal() {
                    if glue.send_to(&b, relay_rtp).await.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

async fn run(
    g: Glue,
    early: Vec<PeerEvent>,
    mut events: mpsc::UnboundedReceiver<PeerEvent>,
    mut closed: oneshot::Receiver<()>,
    on_end: impl FnOnce(PeerEnd) + Send + 'static,
) {
    let mut buf = vec![0u8; 2048];
    let mut readers = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut seen = 0u64;
    let mut quiet_since = tokio::time::Instant::now();
    // Events that arrived while the answer was being made (a track, a state change): handled first.
    for ev in early {
        match ev {
            PeerEvent::Track(t) => {
                readers.spawn(forward_track(
                    t,
                    g.glue.clone(),
                    g.relay_rtp,
                    g.from_browser.clone(),
                ));
            }
            PeerEvent::State(RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) => {
                return finish(g, readers, PeerEnd::Failed, on_end).await;
            }
            _ => {}
        }
    }
    let end = loop {
        tokio::select! {
            _ = &mut closed => break PeerEnd::Closed,
            ev = events.recv() => match ev {
                Some(PeerEvent::Track(t)) => {
                    readers.spawn(forward_track(t, g.glue.clone(), g.relay_rtp, g.from_browser.clone()));
                }
                Some(PeerEvent::State(RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)) => {
                    break PeerEnd::Failed;
                }
                Some(_) => {}
                None => break PeerEnd::Failed,
            },
            r = g.glue.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                // Only the relay leg may feed the browser.
                if from != g.relay_rtp {
                    continue;
                }
                let Some(mut data) = buf.get(..n) else { continue };
                if let Ok(mut p) = rtc::rtp::packet::Packet::unmarshal(&mut data) {
                    p.header.ssrc = g.ssrc;
                    if g.te != Some(p.header.payload_type) {
                        p.header.payload_type = g.pt;
                    }
                    // Fails until the DTLS handshake bound the track: those frames are dropped.
                    let _ = g.track.write_rtp(p).await;
                }
            }
            _ = tick.tick() => {
                let now_seen = g.from_browser.load(Ordering::Relaxed);
                let now = tokio::time::Instant::now();
                if now_seen != seen {
                    seen = now_seen;
                    quiet_since = now;
                } else if now.duration_since(quiet_since) >= g.inactivity {
                    break PeerEnd::Inactive;
                }
            }
        }
    };
    finish(g, readers, end, on_end).await;
}

async fn finish(
    g: Glue,
    mut readers: tokio::task::JoinSet<()>,
    end: PeerEnd,
    on_end: impl FnOnce(PeerEnd),
) {
    if let Err(e) = g.pc.close().await {
        tracing::debug!(error = %e, "peer connection close");
    }
    readers.abort_all();
    while readers.join_next().await.is_some() {}
    drop(g);
    on_end(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 110 126\r\n\
        a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 127\r\na=rtpmap:127 telephone-event/8000\r\n";

    #[test]
    fn advertise_puts_the_public_ip_in_host_candidates_and_c_lines() {
        let answer = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\n\
            a=candidate:1 1 udp 2130706431 10.0.1.5 50000 typ host\r\n\
            a=candidate:2 1 udp 2130706431 172.17.0.1 50000 typ host\r\n\
            a=candidate:3 1 udp 1694498815 198.51.100.9 50000 typ srflx raddr 10.0.1.5 rport 50000\r\n\
            a=end-of-candidates\r\n";
        let out = advertise(answer, "203.0.113.7".parse().unwrap());
        assert_eq!(
            out,
            "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 203.0.113.7\r\n\
            a=candidate:1 1 udp 2130706431 203.0.113.7 50000 typ host\r\n\
            a=candidate:3 1 udp 1694498815 198.51.100.9 50000 typ srflx raddr 10.0.1.5 rport 50000\r\n\
            a=end-of-candidates\r\n",
            "host candidates renamed (the duplicate dropped), srflx and o= kept"
        );
        let v6 = advertise("c=IN IP4 0.0.0.0\n", "2001:db8::7".parse().unwrap());
        assert_eq!(v6, "c=IN IP6 2001:db8::7\n");
        // Short or odd candidate lines are kept, never indexed out of range.
        assert_eq!(
            advertise("a=candidate:1 1 udp\r\n", "203.0.113.7".parse().unwrap()),
            "a=candidate:1 1 udp\r\n"
        );
    }

    #[test]
    fn telephone_event_at_8000_in_the_audio_line_is_found() {
        assert_eq!(offered_telephone_event(OFFER), Some(126));
        assert_eq!(offered_law(OFFER), Some(Law::Ulaw));
        // Listed in an rtpmap but not in the m-line's formats, or only at 48 kHz: not offered.
        let not_listed = OFFER.replace(" 110 126\r\n", " 110\r\n");
        assert_eq!(offered_telephone_event(&not_listed), None);
        assert_eq!(offered_telephone_event("m=audio 9 RTP/AVP 0\r\n"), None);
        assert!(answer_has_telephone_event(
            "a=rtpmap:126 telephone-event/8000\r\n",
            126
        ));
        assert!(!answer_has_telephone_event(
            "a=rtpmap:126 telephone-event/8000\r\n",
            101
        ));
    }
}
