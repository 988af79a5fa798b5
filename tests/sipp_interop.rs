//! Interop with SIPp (a SIP implementation nobody here wrote) acting as UAS, on loopback.
//!
//! Each test starts one `sipp` process with a scenario from `tests/sipp/`, places one call through rappel's SIP
//! driver, and checks both sides: the events rappel reports, and SIPp's exit status (0 only when its scenario ran to
//! the end, i.e. it saw exactly the requests it expected: ACK, CANCEL, BYE, the authenticated INVITE...).
//!
//! The tests need the `sipp` binary (Debian package `sip-tester`; `scripts/test.sh` installs it). Without it they
//! fail with a message saying so.

use bytes::Bytes;
use rappel::net::sip::{SipClient, SipDriver};
use rappel::net::transport::SipTransportConfig;
use rappel::sip::auth::Credentials;
use rappel::sip::endpoint::{CallHandle, EndpointConfig, Event, InviteRequest, TerminationReason};
use rappel::sip::message::StatusCode;
use rappel::sip::transaction::Transport;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// Waits this long at most for any one expected event.
const EVENT_WAIT: Duration = Duration::from_secs(20);

#[path = "support/sipp.rs"]
mod sipp;

use sipp::{free_port, localhost, Sipp};

/// Starts `sipp` as UAS with `scenario` on a free loopback port, for one call over UDP/IPv4.
fn uas(scenario: &str) -> Sipp {
    uas_on(scenario, localhost(), false)
}

/// Starts `sipp` as UAS with `scenario` on a free port of `ip`, for one call, over TCP when `tcp`.
fn uas_on(scenario: &str, ip: std::net::IpAddr, tcp: bool) -> Sipp {
    let addr = SocketAddr::new(ip, free_port(ip));
    let media = free_port(ip).to_string();
    let extra = ["-m", "1", "-timeout", "60s", "-mp", &media];
    Sipp::uas(&Sipp::scenario(scenario), addr, tcp, &extra)
}

fn free_udp_port() -> u16 {
    free_port(localhost())
}

async fn start_driver() -> SipDriver {
    start_driver_on("127.0.0.1:0".parse().unwrap(), Transport::Udp).await
}

async fn start_driver_on(bind: SocketAddr, transport: Transport) -> SipDriver {
    let mut ep = EndpointConfig::new(bind);
    ep.user_agent("rappel-test").transport(transport);
    SipDriver::start(SipTransportConfig::new(bind), ep)
        .await
        .expect("start SIP driver")
}

fn offer(rtp_port: u16) -> Bytes {
    Bytes::from(format!(
        "v=0\r\no=rappel 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=sendrecv\r\n"
    ))
}

async fn invite(
    client: &SipClient,
    target: SocketAddr,
    credentials: Option<Credentials>,
) -> CallHandle {
    let req = InviteRequest {
        target: format!("sip:visitor@{target}"),
        from: "sip:rappel@127.0.0.1".into(),
        to: None,
        next_hop: target,
        transport: None,
        sdp: offer(free_udp_port()),
        credentials,
        extra_headers: vec![],
    };
    client
        .exec(move |ep, now| ep.start_invite(now, req))
        .await
        .expect("driver")
        .expect("start_invite")
}

/// The next event about `call`, skipping others.
async fn next_event(events: &mut mpsc::Receiver<Event>, call: CallHandle) -> Event {
    loop {
        let ev = tokio::time::timeout(EVENT_WAIT, events.recv())
            .await
            .expect("timed out waiting for an event")
            .expect("driver stopped");
        let about = match &ev {
            Event::Provisional { call, .. }
            | Event::Answered { call, .. }
            | Event::Terminated { call, .. }
            | Event::Response { call, .. }
            | Event::Request { call, .. }
            | Event::Acked { call, .. }
            | Event::TransactionTimeout { call, .. }
            | Event::IncomingCall { call, .. } => *call,
            _ => continue,
        };
        if about == call {
            return ev;
        }
    }
}

async fn wait_answered(events: &mut mpsc::Receiver<Event>, call: CallHandle) -> Bytes {
    loop {
        match next_event(events, call).await {
            Event::Provisional { .. } => continue,
            Event::Answered { body, .. } => return body,
            other => panic!("expected Answered, got {other:?}"),
        }
    }
}

async fn hang_up(client: &SipClient, events: &mut mpsc::Receiver<Event>, call: CallHandle) {
    client
        .exec(move |ep, now| ep.send_bye(now, call))
        .await
        .expect("driver")
        .expect("send_bye");
    loop {
        match next_event(events, call).await {
            Event::Terminated { reason, .. } => {
                assert_eq!(reason, TerminationReason::LocalBye);
                return;
            }
            Event::Response { .. } => continue,
            other => panic!("expected Terminated after BYE, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn answered_call_then_bye() {
    let sipp = uas("uas_answer.xml");
    let mut d = start_driver().await;
    let call = invite(&d.client, sipp.addr, None).await;
    let answer = wait_answered(&mut d.events, call).await;
    assert!(
        answer.starts_with(b"v=0"),
        "the 200 carries SIPp's SDP answer"
    );
    hang_up(&d.client, &mut d.events, call).await;
    assert_eq!(sipp.finish().await, 0, "SIPp saw INVITE, ACK and BYE");
}

#[tokio::test]
async fn answered_call_over_ipv6() {
    let sipp = uas_on("uas_answer.xml", "::1".parse().unwrap(), false);
    let mut d = start_driver_on("[::1]:0".parse().unwrap(), Transport::Udp).await;
    let call = invite(&d.client, sipp.addr, None).await;
    wait_answered(&mut d.events, call).await;
    hang_up(&d.client, &mut d.events, call).await;
    assert_eq!(
        sipp.finish().await,
        0,
        "SIPp saw INVITE, ACK and BYE over IPv6"
    );
}

#[tokio::test]
async fn answered_call_over_tcp() {
    let sipp = uas_on("uas_answer.xml", "127.0.0.1".parse().unwrap(), true);
    let mut d = start_driver_on("127.0.0.1:0".parse().unwrap(), Transport::Tcp).await;
    let call = invite(&d.client, sipp.addr, None).await;
    wait_answered(&mut d.events, call).await;
    hang_up(&d.client, &mut d.events, call).await;
    assert_eq!(
        sipp.finish().await,
        0,
        "SIPp saw INVITE, ACK and BYE over TCP"
    );
}

#[tokio::test]
async fn busy_here() {
    let sipp = uas("uas_busy.xml");
    let mut d = start_driver().await;
    let call = invite(&d.client, sipp.addr, None).await;
    match next_event(&mut d.events, call).await {
        Event::Terminated { reason, .. } => {
            assert_eq!(reason, TerminationReason::Rejected(StatusCode::BUSY_HERE))
        }
        other => panic!("expected a 486 rejection, got {other:?}"),
    }
    assert_eq!(sipp.finish().await, 0, "SIPp got the ACK for its 486");
}

#[tokio::test]
async fn no_answer_then_cancel_at_ring_timeout() {
    let ring_timeout = Duration::from_millis(1500);
    let sipp = uas("uas_noanswer.xml");
    let mut d = start_driver().await;
    let call = invite(&d.client, sipp.addr, None).await;
    match next_event(&mut d.events, call).await {
        Event::Provisional { status, .. } => assert_eq!(status, StatusCode::RINGING),
        other => panic!("expected 180, got {other:?}"),
    }
    // Nothing else may arrive before the ring timeout: the callee never answers.
    let early = tokio::time::timeout(ring_timeout, next_event(&mut d.events, call)).await;
    assert!(
        early.is_err(),
        "unexpected event before the ring timeout: {early:?}"
    );
    d.client
        .exec(move |ep, now| ep.send_cancel(now, call))
        .await
        .expect("driver")
        .expect("send_cancel");
    match next_event(&mut d.events, call).await {
        Event::Terminated { reason, .. } => assert_eq!(reason, TerminationReason::Cancelled),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert_eq!(
        sipp.finish().await,
        0,
        "SIPp saw the CANCEL and the ACK for its 487"
    );
}

#[tokio::test]
async fn digest_challenge_answered() {
    let sipp = uas("uas_auth.xml");
    let mut d = start_driver().await;
    let creds = Credentials {
        username: "rappel".into(),
        password: "secret".into(),
        realm: None,
    };
    let call = invite(&d.client, sipp.addr, Some(creds)).await;
    wait_answered(&mut d.events, call).await;
    hang_up(&d.client, &mut d.events, call).await;
    assert_eq!(
        sipp.finish().await,
        0,
        "SIPp verified our digest credentials"
    );
}

/// A UDP proxy between rappel and SIPp that drops one datagram in five in each direction (20 %), decided by a
/// counter so a run is repeatable: towards SIPp it drops datagrams 0, 5, 10... (the first INVITE is lost), towards
/// rappel datagrams 1, 6, 11... (the first 200 OK is lost). It counts what it dropped. It adds itself as a
/// Record-Route to the responses it passes, so ACK and BYE come through it too rather than straight to SIPp's
/// Contact.
struct LossyProxy {
    /// Where rappel sends (the proxy's rappel-facing socket).
    addr: SocketAddr,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    async fn start(upstream: SocketAddr) -> LossyProxy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let (d, f) = (dropped.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            let (mut up, mut down) = (0usize, 0usize);
            let mut rappel: Option<SocketAddr> = None;
            let (mut b1, mut b2) = (vec![0u8; 65_535], vec![0u8; 65_535]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut b1) => {
                        let Ok((n, from)) = r else { return };
                        rappel = Some(from);
                        up += 1;
                        if (up - 1) % 5 == 0 { d.fetch_add(1, Ordering::Relaxed); continue; }
                        f.fetch_add(1, Ordering::Relaxed);
                        let _ = back.send_to(&b1[..n], upstream).await;
                    }
                    r = back.recv_from(&mut b2) => {
                        let Ok((n, _)) = r else { return };
                        let Some(to) = rappel else { continue };
                        down += 1;
                        if (down - 1) % 5 == 1 { d.fetch_add(1, Ordering::Relaxed); continue; }
                        f.fetch_add(1, Ordering::Relaxed);
                        let _ = front.send_to(&record_route(&b2[..n], addr), to).await;
                    }
                }
            }
        });
        LossyProxy {
            addr,
            dropped,
            forwarded,
            task,
        }
    }
}

/// Inserts `Record-Route: <sip:ADDR;lr>` after the start line of a response.
fn record_route(msg: &[u8], addr: SocketAddr) -> Vec<u8> {
    let Some(eol) = msg.windows(2).position(|w| w == b"\r\n") else {
        return msg.to_vec();
    };
    let mut out = msg[..eol + 2].to_vec();
    out.extend_from_slice(format!("Record-Route: <sip:{addr};lr>\r\n").as_bytes());
    out.extend_from_slice(&msg[eol + 2..]);
    out
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn answered_call_survives_20_percent_loss() {
    use std::sync::atomic::Ordering;
    let sipp = uas("uas_answer.xml");
    let proxy = LossyProxy::start(sipp.addr).await;
    let mut d = start_driver().await;
    let req = InviteRequest {
        target: format!("sip:visitor@{}", sipp.addr),
        from: "sip:rappel@127.0.0.1".into(),
        to: None,
        next_hop: proxy.addr,
        transport: None,
        sdp: offer(free_udp_port()),
        credentials: None,
        extra_headers: vec![],
    };
    let call = d
        .client
        .exec(move |ep, now| ep.start_invite(now, req))
        .await
        .expect("driver")
        .expect("start_invite");
    wait_answered(&mut d.events, call).await;
    hang_up(&d.client, &mut d.events, call).await;
    assert_eq!(sipp.finish().await, 0, "SIPp completed its scenario");
    let (dropped, forwarded) = (
        proxy.dropped.load(Ordering::Relaxed),
        proxy.forwarded.load(Ordering::Relaxed),
    );
    println!("lossy proxy: {dropped} dropped, {forwarded} forwarded");
    assert!(
        dropped >= 2,
        "the proxy must have lost the first INVITE and the first 200"
    );
    assert!(
        forwarded >= 6,
        "INVITE, ACK and BYE up, 180 and both 200s down go through the proxy"
    );
}
