//! The trunk side against outside implementations on loopback: SIPp as a UAS sending reliable provisionals
//! (PRACK), SIPp as a registrar (refresh and removal through the `RegistrationAgent`), and RFC 3263 failover with
//! a real DNS server (dnsmasq) pointing at a failing first target and a working second one.
//!
//! Needs `sipp` (Debian `sip-tester`) and `dnsmasq` (Debian `dnsmasq-base`); `scripts/test.sh` installs both.

use bytes::Bytes;
use rappel::net::dns::{Failover, SipResolver, Target};
use rappel::net::sip::{SipClient, SipDriver};
use rappel::net::transport::SipTransportConfig;
use rappel::sip::auth::Credentials;
use rappel::sip::endpoint::{
    CallHandle, EndpointConfig, Event, InviteRequest, RegisterRequest, TerminationReason,
};
use rappel::sip::message::{StatusCode, Uri};
use rappel::sip::register::{RegistrationAgent, RegistrationEvent, RegistrationPolicy};
use rappel::sip::transaction::Transport;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const EVENT_WAIT: Duration = Duration::from_secs(20);

#[path = "support/sipp.rs"]
mod sipp;

#[path = "support/dns.rs"]
mod dns;

use dns::Dns;
use sipp::{free_port, local, localhost, Sipp};

/// SIPp as UAS with `scenario` on 127.0.0.1:`port`, for one call, over TCP when `tcp`.
fn uas(scenario: &str, port: u16, tcp: bool) -> Sipp {
    let media = free_port(localhost()).to_string();
    let extra = ["-m", "1", "-timeout", "60s", "-mp", &media];
    Sipp::uas(&Sipp::scenario(scenario), local(port), tcp, &extra)
}

async fn start_driver(transport: Transport) -> SipDriver {
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut ep = EndpointConfig::new(bind);
    ep.user_agent("rappel-test").transport(transport);
    SipDriver::start(SipTransportConfig::new(bind), ep)
        .await
        .expect("start SIP driver")
}

fn offer() -> Bytes {
    Bytes::from_static(
        b"v=0\r\no=rappel 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
          m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
    )
}

async fn invite(client: &SipClient, target: &str, next_hop: SocketAddr) -> CallHandle {
    let req = InviteRequest {
        target: target.into(),
        from: "sip:rappel@127.0.0.1".into(),
        to: None,
        next_hop,
        transport: None,
        sdp: offer(),
        credentials: None,
        extra_headers: vec![],
    };
    client
        .exec(move |ep, now| ep.start_invite(now, req))
        .await
        .expect("driver")
        .expect("start_invite")
}

async fn next_event(events: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(EVENT_WAIT, events.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("driver stopped")
}

/// Events of `call` up to Answered or Terminated; returns the provisional statuses seen and the outcome.
async fn outcome(
    events: &mut mpsc::Receiver<Event>,
    call: CallHandle,
) -> (Vec<u16>, Result<(), TerminationReason>) {
    let mut prov = Vec::new();
    loop {
        match next_event(events).await {
            Event::Provisional {
                call: c, status, ..
            } if c == call => prov.push(status.as_u16()),
            Event::Answered { call: c, .. } if c == call => return (prov, Ok(())),
            Event::Terminated { call: c, reason } if c == call => return (prov, Err(reason)),
            _ => {}
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
        if let Event::Terminated { call: c, reason } = next_event(events).await {
            if c == call {
                assert_eq!(reason, TerminationReason::LocalBye);
                return;
            }
        }
    }
}

#[tokio::test]
async fn reliable_183_is_pracked() {
    let sipp = uas("uas_prack.xml", free_port(localhost()), false);
    let mut d = start_driver(Transport::Udp).await;
    let call = invite(&d.client, &format!("sip:visitor@{}", sipp.addr), sipp.addr).await;
    let (prov, result) = outcome(&mut d.events, call).await;
    assert_eq!(result, Ok(()));
    assert_eq!(
        prov,
        vec![183],
        "the 183 reported once, its retransmissions not"
    );
    hang_up(&d.client, &mut d.events, call).await;
    assert_eq!(
        sipp.finish().await,
        0,
        "SIPp saw Supported: 100rel, a PRACK with RAck 1 1 INVITE, ACK and BYE"
    );
}

#[tokio::test]
async fn registration_refreshed_and_removed_at_a_registrar() {
    let sipp = uas("registrar.xml", free_port(localhost()), false);
    let mut d = start_driver(Transport::Udp).await;
    let req = RegisterRequest {
        registrar: format!("sip:{}", sipp.addr),
        aor: "sip:rappel@trunk.test".into(),
        next_hop: sipp.addr,
        transport: None,
        expires: 4,
        credentials: Some(Credentials {
            username: "rappel".into(),
            password: "secret".into(),
            realm: None,
        }),
        extra_headers: Vec::new(),
    };
    let agent = Arc::new(Mutex::new(RegistrationAgent::new(
        req,
        RegistrationPolicy::default(),
    )));
    let a = agent.clone();
    d.client
        .exec(move |ep, now| a.lock().unwrap().start(now, ep))
        .await
        .unwrap()
        .unwrap();
    // The owner's loop: endpoint events into the agent, the agent's timer, its events out.
    let mut seen: Vec<(tokio::time::Instant, RegistrationEvent)> = Vec::new();
    let begin = tokio::time::Instant::now();
    let mut shut = false;
    loop {
        let wake = agent.lock().unwrap().poll_timeout();
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        let a = agent.clone();
        let out: Vec<RegistrationEvent> = tokio::select! {
            ev = next_event(&mut d.events) => d.client.exec(move |ep, now| {
                let mut g = a.lock().unwrap();
                assert!(g.handle_event(now, ep, &ev), "{ev:?}");
                std::iter::from_fn(|| g.poll_event()).collect()
            }).await.unwrap(),
            () = sleep => d.client.exec(move |ep, now| {
                let mut g = a.lock().unwrap();
                g.handle_timeout(now, ep);
                std::iter::from_fn(|| g.poll_event()).collect()
            }).await.unwrap(),
        };
        let now = tokio::time::Instant::now();
        for e in out {
            seen.push((now, e));
        }
        let registered = seen
            .iter()
            .filter(|(_, e)| matches!(e, RegistrationEvent::Registered { .. }))
            .count();
        if registered == 2 && !shut {
            shut = true;
            let a = agent.clone();
            d.client
                .exec(move |ep, now| a.lock().unwrap().shutdown(now, ep))
                .await
                .unwrap();
        }
        if matches!(
            seen.last(),
            Some((_, RegistrationEvent::Unregistered { .. }))
        ) {
            break;
        }
        assert!(begin.elapsed() < Duration::from_secs(20), "{seen:?}");
    }
    let kinds: Vec<RegistrationEvent> = seen.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            RegistrationEvent::Registered { expires: 4 },
            RegistrationEvent::Registered { expires: 4 },
            RegistrationEvent::Unregistered { removed: true },
        ]
    );
    // The refresh came about 2 s (4/2) after the first binding, before it expired (SIPp also waits at most 4 s).
    let gap = seen[1].0 - seen[0].0;
    assert!(
        gap >= Duration::from_millis(1900) && gap < Duration::from_secs(4),
        "{gap:?}"
    );
    assert_eq!(
        sipp.finish().await,
        0,
        "SIPp verified credentials and Expires"
    );
}

/// Resolves through dnsmasq, then places the call target after target as `Failover` says.
async fn call_with_failover(
    d: &mut SipDriver,
    resolver: &SipResolver,
    uri: &str,
) -> (Vec<Target>, Vec<Result<(), TerminationReason>>, CallHandle) {
    let targets = resolver.resolve(&Uri::parse(uri).unwrap()).await.unwrap();
    let mut f = Failover::new(targets.clone());
    let mut results = Vec::new();
    let mut t = f.next_target().expect("a target");
    loop {
        let call = invite(&d.client, uri, t.addr).await;
        let (_, r) = outcome(&mut d.events, call).await;
        results.push(r);
        match r {
            Ok(()) => return (targets, results, call),
            Err(reason) => match f.after(&reason) {
                Some(next) => t = next,
                None => panic!("no target left after {results:?}"),
            },
        }
    }
}

#[tokio::test]
async fn dns_srv_failover_from_a_503_to_the_next_priority() {
    let (p1, p2) = (free_port(localhost()), free_port(localhost()));
    let dns = Dns::start(&[
        "--naptr-record=trunk.test,10,50,s,SIP+D2U,,_sip._udp.trunk.test".into(),
        format!("--srv-host=_sip._udp.trunk.test,sip-a.trunk.test,{p1},10,50"),
        format!("--srv-host=_sip._udp.trunk.test,sip-b.trunk.test,{p2},20,50"),
        "--host-record=sip-a.trunk.test,127.0.0.1".into(),
        "--host-record=sip-b.trunk.test,127.0.0.1".into(),
        "--host-record=plain.test,127.0.0.2".into(),
    ]);
    let resolver = SipResolver::with_nameservers(&[dns.addr]).unwrap().seed(1);
    // The other RFC 3263 branches against the same server.
    let udp = |ip: [u8; 4], port| Target {
        transport: Transport::Udp,
        addr: SocketAddr::from((ip, port)),
    };
    let r = |u: &str| Uri::parse(u).unwrap();
    assert_eq!(
        resolver.resolve(&r("sip:plain.test")).await.unwrap(),
        vec![udp([127, 0, 0, 2], 5060)],
        "no NAPTR, no SRV: A on 5060"
    );
    assert_eq!(
        resolver
            .resolve(&r("sip:x@sip-b.trunk.test:5080"))
            .await
            .unwrap(),
        vec![udp([127, 0, 0, 1], 5080)],
        "explicit port: A only"
    );
    assert_eq!(
        resolver.resolve(&r("sip:x@192.0.2.7")).await.unwrap(),
        vec![udp([192, 0, 2, 7], 5060)],
        "numeric host: no DNS"
    );
    assert!(resolver.resolve(&r("sip:nothing.test")).await.is_err());

    let bad = uas("uas_503.xml", p1, false);
    let good = uas("uas_answer.xml", p2, false);
    let mut d = start_driver(Transport::Udp).await;
    let (targets, results, call) =
        call_with_failover(&mut d, &resolver, "sip:visitor@trunk.test").await;
    assert_eq!(
        targets,
        vec![udp([127, 0, 0, 1], p1), udp([127, 0, 0, 1], p2)]
    );
    assert_eq!(
        results,
        vec![
            Err(TerminationReason::Rejected(StatusCode::SERVICE_UNAVAILABLE)),
            Ok(())
        ]
    );
    hang_up(&d.client, &mut d.events, call).await;
    assert_eq!(
        bad.finish().await,
        0,
        "the first target answered 503 and got its ACK"
    );
    assert_eq!(
        good.finish().await,
        0,
        "the call completed through the second target"
    );
}

#[tokio::test]
async fn dns_srv_failover_over_tcp_from_a_dead_target() {
    // Nothing listens on the first target: the TCP connect is refused, the driver reports the transport error,
    // the INVITE ends at once with TransportError and the second target takes the call.
    let (dead, p2) = (free_port(localhost()), free_port(localhost()));
    let dns = Dns::start(&[
        format!("--srv-host=_sip._tcp.tcp.test,sip-a.tcp.test,{dead},10,0"),
        format!("--srv-host=_sip._tcp.tcp.test,sip-b.tcp.test,{p2},20,0"),
        "--host-record=sip-a.tcp.test,127.0.0.1".into(),
        "--host-record=sip-b.tcp.test,127.0.0.1".into(),
    ]);
    let resolver = SipResolver::with_nameservers(&[dns.addr]).unwrap();
    let good = uas("uas_answer.xml", p2, true);
    let mut d = start_driver(Transport::Tcp).await;
    let begin = tokio::time::Instant::now();
    let (targets, results, call) =
        call_with_failover(&mut d, &resolver, "sip:visitor@tcp.test").await;
    let tcp = |port| Target {
        transport: Transport::Tcp,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    assert_eq!(
        targets,
        vec![tcp(dead), tcp(p2)],
        "no NAPTR, no UDP SRV: the TCP SRV"
    );
    assert_eq!(
        results,
        vec![Err(TerminationReason::TransportError), Ok(())]
    );
    assert!(
        begin.elapsed() < Duration::from_secs(10),
        "failed over on the refused connection, not at Timer B (32 s)"
    );
    hang_up(&d.client, &mut d.events, call).await;
    assert_eq!(good.finish().await, 0);
}
