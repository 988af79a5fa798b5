//! The engine's trunk features against outside implementations on loopback: registration with SIPp as registrar
//! (challenge, refresh before expiry, removal at shutdown, also of a binding left behind by a failed round; through
//! an outbound proxy with a preloaded Route; a silent registrar target left after Timer F or the shorter failover
//! timeout), calls to host names resolved through dnsmasq per
//! RFC 3263 with failover to the next SRV target (silent target: Timer B, or the shorter failover timeout; 503),
//! TCP targets found by `;transport=tcp` or a `SIP+D2T` NAPTR record, an outbound proxy given by name,
//! a hang-up while the lookup is still pending, and graceful shutdown in drain mode (the per-call tracing span is
//! in `engine_spans.rs`).
//!
//! Needs `sipp` (Debian `sip-tester`) and `dnsmasq` (Debian `dnsmasq-base`); `scripts/test.sh` installs both.

use rappel::call::{EndCause, HangupBy};
use rappel::net::engine::{RegistrationStatus, TrunkRegistration};
use rappel::sip::auth::Credentials;
use rappel::sip::register::{RegistrationEvent, RegistrationPolicy, RegistrationState};
use rappel::sip::transaction::TimerConfig;
use rappel::{CallOptions, Engine, LegEvent, ShutdownMode};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

#[path = "support/sipp.rs"]
mod sipp;

#[path = "support/dns.rs"]
mod dns;

use dns::Dns;
use sipp::{band_port, free_port, local, localhost, Sipp};

/// Upper bound for any one wait.
const WAIT: Duration = Duration::from_secs(20);

#[track_caller]
fn within<F: std::future::Future>(f: F) -> impl std::future::Future<Output = F::Output> {
    let at = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(WAIT, f).await {
            Ok(v) => v,
            Err(_) => panic!("timed out at {at}"),
        }
    }
}

/// Polls `f` once: its output if it is ready.
async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    tokio::select! {
        biased;
        v = f => Some(v),
        () = std::future::ready(()) => None,
    }
}

/// SIPp as UAS with `scenario` on a free port, for one call.
fn uas(scenario: &str) -> Sipp {
    let port = band_port(42_000, 40, 8_000);
    let media = free_port(localhost()).to_string();
    let extra = ["-m", "1", "-timeout", "60s", "-mp", &media];
    Sipp::uas(&Sipp::scenario(scenario), local(port), false, &extra)
}

/// SIPp as UAS over TCP (`-t t1`) with `scenario` on a free port, for one call.
fn uas_tcp(scenario: &str) -> Sipp {
    let port = band_port(42_000, 40, 8_000);
    let media = free_port(localhost()).to_string();
    let extra = ["-m", "1", "-timeout", "60s", "-mp", &media];
    Sipp::uas(&Sipp::scenario(scenario), local(port), true, &extra)
}

/// A UDP socket that receives and never answers: a target that does not respond.
struct Silent(UdpSocket);

impl Silent {
    fn bind() -> Silent {
        let s = UdpSocket::bind((localhost(), 0)).unwrap();
        s.set_nonblocking(true).unwrap();
        Silent(s)
    }
    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
    /// The first lines of the datagrams received so far.
    fn received(&self) -> Vec<String> {
        self.received_messages()
            .iter()
            .map(|m| m.lines().next().unwrap_or_default().to_owned())
            .collect()
    }
    /// The datagrams received so far.
    fn received_messages(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while let Ok(n) = self.0.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

/// The distinct Call-ID values of `messages`, in order of first appearance.
fn call_ids(messages: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for m in messages {
        let id = m
            .lines()
            .find_map(|l| l.strip_prefix("Call-ID: "))
            .unwrap_or_default()
            .to_owned();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// T1 = 25 ms: Timer B (64·T1) fires after 1.6 s, so a silent target is given up quickly.
fn fast_timers() -> TimerConfig {
    TimerConfig {
        t1: Duration::from_millis(25),
        ..TimerConfig::default()
    }
}

fn builder() -> rappel::EngineBuilder {
    let (min, max) = rtp_range();
    Engine::builder().rtp_ports(min, max).rng_seed(7)
}

/// An RTP port range (40 ports) free at the time of the call: fixed ranges collide with other processes on a
/// shared machine.
fn rtp_range() -> (u16, u16) {
    loop {
        let base = free_port(localhost()) & !1;
        if base < 65_000
            && (base..base + 40).all(|p| std::net::UdpSocket::bind((localhost(), p)).is_ok())
        {
            return (base, base + 39);
        }
    }
}

#[tokio::test]
async fn registers_refreshes_and_unregisters_at_shutdown() {
    let sipp = uas("registrar.xml");
    // The registrar is given by name (with a port: an A lookup, RFC 3263 §4.2).
    let dns = Dns::start(&["--host-record=registrar.test,127.0.0.1".into()]);
    let reg = TrunkRegistration::new(
        format!("sip:registrar.test:{}", sipp.addr.port()),
        "sip:rappel@trunk.test",
    )
    .credentials(Credentials {
        username: "rappel".into(),
        password: "secret".into(),
        realm: None,
    })
    .expires(4);
    let engine = builder()
        .nameservers(vec![dns.addr])
        .register(reg)
        .start()
        .await
        .unwrap();
    let mut status = engine.registration().expect("registering");
    // The first binding, then its refresh (about 2 s later, before the 4 s binding expires).
    let s: RegistrationStatus = within(status.wait_for(|s| s.registrations >= 1))
        .await
        .unwrap()
        .clone();
    assert_eq!(
        s.last_event,
        Some(RegistrationEvent::Registered { expires: 4 })
    );
    assert!(matches!(s.state, RegistrationState::Registered { .. }));
    let first = tokio::time::Instant::now();
    within(status.wait_for(|s| s.registrations >= 2))
        .await
        .unwrap();
    let gap = first.elapsed();
    assert!(
        gap >= Duration::from_millis(1500) && gap < Duration::from_secs(4),
        "refresh after {gap:?}"
    );
    within(engine.shutdown(ShutdownMode::HangUp)).await;
    let s = status.borrow().clone();
    assert_eq!(
        s.last_event,
        Some(RegistrationEvent::Unregistered { removed: true }),
        "shutdown returned after the registrar confirmed the removal"
    );
    assert_eq!(s.state, RegistrationState::Unregistered);
    assert_eq!((s.registrations, s.failures), (2, 0));
    assert_eq!(
        within(sipp.finish()).await,
        0,
        "SIPp verified the credentials, Expires 4 then 0"
    );
}

#[tokio::test]
async fn register_goes_through_the_outbound_proxy_with_a_preloaded_route() {
    // SIPp is both the proxy (reached by name) and the registrar: its scenario checks each REGISTER's
    // Request-URI (the registrar) and `Route: <sip:proxy.test:PORT;lr>`.
    let sipp = uas("registrar_route.xml");
    let dns = Dns::start(&["--host-record=proxy.test,127.0.0.1".into()]);
    let engine = builder()
        .nameservers(vec![dns.addr])
        .outbound_proxy_uri(Some(format!("sip:proxy.test:{}", sipp.addr.port())))
        .register(TrunkRegistration::new("sip:trunk.test", "sip:rappel@trunk.test").expires(4))
        .start()
        .await
        .unwrap();
    let mut status = engine.registration().unwrap();
    let s = within(status.wait_for(|s| s.registrations >= 1))
        .await
        .unwrap()
        .clone();
    assert_eq!(
        s.last_event,
        Some(RegistrationEvent::Registered { expires: 4 })
    );
    within(engine.shutdown(ShutdownMode::HangUp)).await;
    assert_eq!(
        status.borrow().last_event,
        Some(RegistrationEvent::Unregistered { removed: true })
    );
    assert_eq!(
        within(sipp.finish()).await,
        0,
        "SIPp found the Route on the REGISTER and on its removal"
    );
}

#[tokio::test]
async fn registration_fails_over_to_the_next_srv_target() {
    let dead = Silent::bind();
    let sipp = uas("registrar.xml");
    let dns = Dns::start(&[
        format!(
            "--srv-host=_sip._udp.reg.test,a.reg.test,{},10,0",
            dead.port()
        ),
        format!(
            "--srv-host=_sip._udp.reg.test,b.reg.test,{},20,0",
            sipp.addr.port()
        ),
        "--host-record=a.reg.test,127.0.0.1".into(),
        "--host-record=b.reg.test,127.0.0.1".into(),
    ]);
    let reg = TrunkRegistration::new("sip:reg.test", "sip:rappel@reg.test")
        .credentials(Credentials {
            username: "rappel".into(),
            password: "secret".into(),
            realm: None,
        })
        .expires(4);
    // T1 = 100 ms and no failover timeout: Timer F (64·T1) gives up on the silent target after 6.4 s.
    let engine = builder()
        .timers(TimerConfig {
            t1: Duration::from_millis(100),
            ..TimerConfig::default()
        })
        .failover_timeout(None)
        .nameservers(vec![dns.addr])
        .register(reg)
        .start()
        .await
        .unwrap();
    let mut status = engine.registration().unwrap();
    let s = within(status.wait_for(|s| s.registrations >= 2))
        .await
        .unwrap()
        .clone();
    assert_eq!(s.failures, 1, "the silent target, once");
    let got = dead.received();
    assert!(
        !got.is_empty() && got.iter().all(|l| l == "REGISTER sip:reg.test SIP/2.0"),
        "{got:?}"
    );
    within(engine.shutdown(ShutdownMode::HangUp)).await;
    assert_eq!(
        status.borrow().last_event,
        Some(RegistrationEvent::Unregistered { removed: true })
    );
    assert!(
        dead.received().is_empty(),
        "nothing more to the dead target"
    );
    assert_eq!(within(sipp.finish()).await, 0);
}

#[tokio::test]
async fn a_silent_registrar_target_is_left_after_the_failover_timeout() {
    // Default timers (T1 500 ms: Timer F would be 32 s, longer than any wait here) and the default 4 s failover
    // timeout. The REGISTER to the silent first target goes out at 0, 0.5, 1.5 and 3.5 s (the next copy would
    // leave at 7.5 s); at 4 s the engine leaves that target for the second, SIPp, which registers us.
    let dead = Silent::bind();
    let sipp = uas("registrar.xml");
    let dns = Dns::start(&[
        format!(
            "--srv-host=_sip._udp.qreg.test,a.qreg.test,{},10,0",
            dead.port()
        ),
        format!(
            "--srv-host=_sip._udp.qreg.test,b.qreg.test,{},20,0",
            sipp.addr.port()
        ),
        "--host-record=a.qreg.test,127.0.0.1".into(),
        "--host-record=b.qreg.test,127.0.0.1".into(),
    ]);
    let reg = TrunkRegistration::new("sip:qreg.test", "sip:rappel@qreg.test")
        .credentials(Credentials {
            username: "rappel".into(),
            password: "secret".into(),
            realm: None,
        })
        .expires(4);
    let started = tokio::time::Instant::now();
    let engine = builder()
        .nameservers(vec![dns.addr])
        .register(reg)
        .start()
        .await
        .unwrap();
    let mut status = engine.registration().unwrap();
    let s = within(status.wait_for(|s| s.registrations >= 1))
        .await
        .unwrap()
        .clone();
    let took = started.elapsed();
    assert_eq!(
        s.last_event,
        Some(RegistrationEvent::Registered { expires: 4 })
    );
    assert_eq!(s.failures, 1, "the silent target, once");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_millis(7500),
        "registered {took:?} after the start"
    );
    let got = dead.received_messages();
    assert_eq!(
        got.iter()
            .filter(|m| m.starts_with("REGISTER sip:qreg.test SIP/2.0"))
            .count(),
        4,
        "the copies that fit in the 4 s: {got:?}"
    );
    assert_eq!(got.len(), 4, "nothing else: {got:?}");
    assert_eq!(call_ids(&got).len(), 1, "one REGISTER, retransmitted");
    // SIPp's scenario wants the refresh (the last target: no deadline, answered anyway), then the removal.
    within(status.wait_for(|s| s.registrations >= 2))
        .await
        .unwrap();
    within(engine.shutdown(ShutdownMode::HangUp)).await;
    assert_eq!(
        status.borrow().last_event,
        Some(RegistrationEvent::Unregistered { removed: true })
    );
    assert!(
        dead.received().is_empty(),
        "nothing more to the silent target"
    );
    assert_eq!(within(sipp.finish()).await, 0);
}

#[tokio::test]
async fn registration_resolves_again_once_every_target_failed() {
    let (a, b) = (Silent::bind(), Silent::bind());
    let dns = Dns::start(&[
        format!(
            "--srv-host=_sip._udp.dead.test,a.dead.test,{},10,0",
            a.port()
        ),
        format!(
            "--srv-host=_sip._udp.dead.test,b.dead.test,{},20,0",
            b.port()
        ),
        "--host-record=a.dead.test,127.0.0.1".into(),
        "--host-record=b.dead.test,127.0.0.1".into(),
    ]);
    let policy = RegistrationPolicy {
        retry_min: Duration::from_millis(200),
        ..RegistrationPolicy::default()
    };
    let reg = TrunkRegistration::new("sip:dead.test", "sip:rappel@dead.test").policy(policy);
    // T1 = 25 ms: each target is given up after Timer F, 1.6 s.
    let engine = builder()
        .timers(fast_timers())
        .nameservers(vec![dns.addr])
        .register(reg)
        .start()
        .await
        .unwrap();
    let mut status = engine.registration().unwrap();
    // a, b (every target failed: back-off 200 ms, a new resolution), a, b (second round: 400 ms).
    let s = within(status.wait_for(|s| s.failures >= 4))
        .await
        .unwrap()
        .clone();
    assert_eq!(
        s.last_event,
        Some(RegistrationEvent::Failed {
            status: None,
            retry_in: Duration::from_millis(400)
        }),
        "the back-off grows with the rounds"
    );
    assert!(matches!(s.state, RegistrationState::Retrying { .. }));
    let (ma, mb) = (a.received_messages(), b.received_messages());
    assert!(ma
        .iter()
        .chain(&mb)
        .all(|m| m.starts_with("REGISTER sip:dead.test SIP/2.0")));
    assert_eq!(
        call_ids(&ma).len(),
        2,
        "a was tried in both rounds, each a new registration"
    );
    assert_eq!(call_ids(&mb).len(), 2);
    within(engine.shutdown(ShutdownMode::HangUp)).await;
    assert_eq!(
        status.borrow().last_event,
        Some(RegistrationEvent::Unregistered { removed: false })
    );
}

#[tokio::test]
async fn a_binding_left_behind_by_a_failed_round_is_removed_at_shutdown() {
    // a (SIPp) grants 10 s, then refuses the refresh with 503; b never answers. The round ends with every target
    // failed while a's binding still holds: shutdown removes it at a (same Call-ID, Expires: 0), not at b.
    let sipp = uas("registrar_503_then_remove.xml");
    let dead = Silent::bind();
    let dns = Dns::start(&[
        format!(
            "--srv-host=_sip._udp.reg2.test,a.reg2.test,{},10,0",
            sipp.addr.port()
        ),
        format!(
            "--srv-host=_sip._udp.reg2.test,b.reg2.test,{},20,0",
            dead.port()
        ),
        "--host-record=a.reg2.test,127.0.0.1".into(),
        "--host-record=b.reg2.test,127.0.0.1".into(),
    ]);
    // Refresh 1 s after the 10 s grant (margin 9 s); no new round before shutdown (retry 30 s).
    let policy = RegistrationPolicy {
        margin: Duration::from_secs(9),
        retry_min: Duration::from_secs(30),
        ..RegistrationPolicy::default()
    };
    let reg = TrunkRegistration::new("sip:reg2.test", "sip:rappel@reg2.test")
        .expires(10)
        .policy(policy);
    let engine = builder()
        .timers(fast_timers())
        .nameservers(vec![dns.addr])
        .register(reg)
        .start()
        .await
        .unwrap();
    let mut status = engine.registration().unwrap();
    let s = within(status.wait_for(|s| s.failures >= 2))
        .await
        .unwrap()
        .clone();
    assert_eq!(s.registrations, 1);
    assert!(
        matches!(s.state, RegistrationState::Retrying { .. }),
        "every target failed: {s:?}"
    );
    let before = dead.received_messages();
    assert!(!before.is_empty(), "b was tried");
    within(engine.shutdown(ShutdownMode::HangUp)).await;
    assert_eq!(
        status.borrow().last_event,
        Some(RegistrationEvent::Unregistered { removed: true }),
        "a confirmed the removal"
    );
    assert!(dead.received().is_empty(), "nothing more to b");
    assert_eq!(
        within(sipp.finish()).await,
        0,
        "a got Expires: 0 in the registration's Call-ID"
    );
}

#[tokio::test]
async fn registrar_name_that_does_not_resolve_is_retried() {
    let dns = Dns::start(&[]);
    let reg = TrunkRegistration::new("sip:nowhere.test", "sip:rappel@nowhere.test");
    let engine = builder()
        .nameservers(vec![dns.addr])
        .register(reg)
        .start()
        .await
        .unwrap();
    let mut status = engine.registration().unwrap();
    let s = within(status.wait_for(|s| s.failures >= 1))
        .await
        .unwrap()
        .clone();
    assert_eq!(
        s.last_event,
        Some(RegistrationEvent::Failed {
            status: None,
            retry_in: Duration::from_secs(2)
        }),
        "the policy's first back-off"
    );
    assert!(matches!(s.state, RegistrationState::Retrying { .. }));
    within(engine.shutdown(ShutdownMode::HangUp)).await;
    assert_eq!(
        status.borrow().last_event,
        Some(RegistrationEvent::Unregistered { removed: false })
    );
}

#[tokio::test]
async fn call_fails_over_from_a_silent_target_in_srv_priority_order() {
    let first = Silent::bind();
    let last = Silent::bind();
    let good = uas("uas_answer.xml");
    // Listed out of order: priority decides (10, then 20; 30 is never needed).
    let dns = Dns::start(&[
        format!(
            "--srv-host=_sip._udp.trunk.test,c.trunk.test,{},30,10",
            last.port()
        ),
        format!(
            "--srv-host=_sip._udp.trunk.test,b.trunk.test,{},20,10",
            good.addr.port()
        ),
        format!(
            "--srv-host=_sip._udp.trunk.test,a.trunk.test,{},10,10",
            first.port()
        ),
        "--host-record=a.trunk.test,127.0.0.1".into(),
        "--host-record=b.trunk.test,127.0.0.1".into(),
        "--host-record=c.trunk.test,127.0.0.1".into(),
    ]);
    let engine = builder()
        .timers(fast_timers())
        .nameservers(vec![dns.addr])
        .start()
        .await
        .unwrap();
    let mut leg = engine
        .call("sip:visitor@trunk.test", CallOptions::default())
        .await
        .unwrap();
    assert_eq!(within(leg.next_event()).await, Some(LegEvent::Trying));
    within(leg.answered()).await.expect("answered by b");
    let got = first.received();
    assert!(!got.is_empty(), "a (priority 10) was tried first");
    assert!(
        got.iter()
            .all(|l| l == "INVITE sip:visitor@trunk.test SIP/2.0"),
        "{got:?}"
    );
    assert!(last.received().is_empty(), "c (priority 30) was not needed");
    leg.hangup().await.unwrap();
    let cdr = within(leg.ended()).await.unwrap();
    assert_eq!(
        (cdr.end_cause, cdr.hangup_by),
        (EndCause::Normal, HangupBy::Local)
    );
    assert_eq!(
        within(good.finish()).await,
        0,
        "b took the call and the BYE"
    );
}

#[tokio::test]
async fn a_silent_target_is_left_after_the_failover_timeout() {
    // Default timers (T1 500 ms: Timer B would be 32 s) and a 2 s failover timeout. The INVITE to the silent
    // first target goes out at 0, 0.5 and 1.5 s (the next retransmission would be at 3.5 s); at 2 s the engine
    // gives up on it and the second target, SIPp, answers.
    let silent = Silent::bind();
    let good = uas("uas_answer.xml");
    let dns = Dns::start(&[
        format!(
            "--srv-host=_sip._udp.quiet.test,a.quiet.test,{},10,0",
            silent.port()
        ),
        format!(
            "--srv-host=_sip._udp.quiet.test,b.quiet.test,{},20,0",
            good.addr.port()
        ),
        "--host-record=a.quiet.test,127.0.0.1".into(),
        "--host-record=b.quiet.test,127.0.0.1".into(),
    ]);
    let timeout = Duration::from_secs(2);
    let engine = builder()
        .nameservers(vec![dns.addr])
        .failover_timeout(Some(timeout))
        .start()
        .await
        .unwrap();
    let mut leg = engine
        .call("sip:visitor@quiet.test", CallOptions::default())
        .await
        .unwrap();
    assert_eq!(within(leg.next_event()).await, Some(LegEvent::Trying));
    let trying = tokio::time::Instant::now();
    within(leg.answered()).await.expect("answered by b");
    let took = trying.elapsed();
    // The retransmissions the silent target got date the failover: after the third (1.5 s), before the fourth
    // (3.5 s), and long before Timer B.
    let got = silent.received_messages();
    assert_eq!(
        got.iter()
            .filter(|m| m.starts_with("INVITE sip:visitor@quiet.test SIP/2.0"))
            .count(),
        3,
        "{got:?}"
    );
    assert_eq!(call_ids(&got).len(), 1, "one INVITE, retransmitted");
    assert!(
        took >= timeout && took < Duration::from_millis(3500),
        "answered {took:?} after the INVITE left"
    );
    assert!(
        !got.iter().any(|m| m.starts_with("CANCEL")),
        "nothing to cancel without a provisional response"
    );
    leg.hangup().await.unwrap();
    let cdr = within(leg.ended()).await.unwrap();
    assert_eq!(
        (cdr.end_cause, cdr.hangup_by),
        (EndCause::Normal, HangupBy::Local)
    );
    assert_eq!(
        within(good.finish()).await,
        0,
        "b took the call and the BYE"
    );
}

#[tokio::test]
async fn tcp_targets_by_name_are_resolved_and_called_over_tcp() {
    // Two SIPp UASes listening on TCP only. `tcp.test` is reached through `_sip._tcp` SRV records because the
    // URI says `;transport=tcp`; `naptr.test` through a NAPTR record for SIP+D2T (its `_sip._udp` SRV record,
    // a silent UDP socket, must not be used: the NAPTR answer lists TCP only).
    let by_param = uas_tcp("uas_answer.xml");
    let by_naptr = uas_tcp("uas_answer.xml");
    let udp_decoy = Silent::bind();
    let dns = Dns::start(&[
        format!(
            "--srv-host=_sip._tcp.tcp.test,a.tcp.test,{},10,0",
            by_param.addr.port()
        ),
        "--host-record=a.tcp.test,127.0.0.1".into(),
        "--naptr-record=naptr.test,10,50,s,SIP+D2T,,_sip._tcp.naptr.test".into(),
        format!(
            "--srv-host=_sip._tcp.naptr.test,t.naptr.test,{},10,0",
            by_naptr.addr.port()
        ),
        format!(
            "--srv-host=_sip._udp.naptr.test,u.naptr.test,{},10,0",
            udp_decoy.port()
        ),
        "--host-record=t.naptr.test,127.0.0.1".into(),
        "--host-record=u.naptr.test,127.0.0.1".into(),
    ]);
    let engine = builder().nameservers(vec![dns.addr]).start().await.unwrap();
    for target in [
        "sip:visitor@tcp.test;transport=tcp",
        "sip:visitor@naptr.test",
    ] {
        let mut leg = engine.call(target, CallOptions::default()).await.unwrap();
        within(leg.answered())
            .await
            .unwrap_or_else(|e| panic!("{target}: {e:?}"));
        leg.hangup().await.unwrap();
        let cdr = within(leg.ended()).await.unwrap();
        assert_eq!(
            (cdr.end_cause, cdr.hangup_by),
            (EndCause::Normal, HangupBy::Local),
            "{target}"
        );
    }
    assert!(udp_decoy.received().is_empty(), "nothing went over UDP");
    assert_eq!(
        within(by_param.finish()).await,
        0,
        "the SRV target took the call, its ACK and BYE over TCP"
    );
    assert_eq!(within(by_naptr.finish()).await, 0);
}

#[tokio::test]
async fn a_tcp_target_that_never_accepts_holds_up_nothing_and_is_failed_over() {
    // The first `_sip._tcp` target is a listener whose accept queue is full: our SYNs are dropped and the
    // connection stays pending. The engine goes on meanwhile (a call to a UDP peer placed after is answered
    // first), and after the failover timeout the INVITE goes to the second target, SIPp over TCP.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(localhost(), 0)).unwrap();
    let hole = sock.listen(0).unwrap();
    let dead = hole.local_addr().unwrap();
    let _queued = tokio::net::TcpStream::connect(dead).await.unwrap();
    let tcp_peer = uas_tcp("uas_answer.xml");
    let udp_peer = uas("uas_answer.xml");
    let dns = Dns::start(&[
        format!(
            "--srv-host=_sip._tcp.hole.test,a.hole.test,{},10,0",
            dead.port()
        ),
        format!(
            "--srv-host=_sip._tcp.hole.test,b.hole.test,{},20,0",
            tcp_peer.addr.port()
        ),
        "--host-record=a.hole.test,127.0.0.1".into(),
        "--host-record=b.hole.test,127.0.0.1".into(),
    ]);
    let engine = builder()
        .nameservers(vec![dns.addr])
        .failover_timeout(Some(Duration::from_millis(1500)))
        .start()
        .await
        .unwrap();
    let mut named = engine
        .call(
            "sip:visitor@hole.test;transport=tcp",
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(within(named.next_event()).await, Some(LegEvent::Trying));
    let mut other = engine
        .call(&udp_peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(other.answered()).await.expect("the UDP call");
    assert!(
        poll_once(&mut Box::pin(named.answered())).await.is_none(),
        "the TCP call is still waiting for its first target"
    );
    within(named.answered())
        .await
        .expect("answered by b over TCP");
    for mut leg in [named, other] {
        leg.hangup().await.unwrap();
        let cdr = within(leg.ended()).await.unwrap();
        assert_eq!(cdr.end_cause, EndCause::Normal);
    }
    assert_eq!(within(tcp_peer.finish()).await, 0);
    assert_eq!(within(udp_peer.finish()).await, 0);
}

#[tokio::test]
async fn srv_weight_decides_within_a_priority() {
    // Same priority: the weight-1000 target goes first (RFC 2782; the light one would be first for 2 draws in
    // 1002), whichever order the records come in. Were weights ignored, one of the two names would try the light,
    // silent target first.
    let light = Silent::bind();
    let (h1, h2) = (uas("uas_answer.xml"), uas("uas_answer.xml"));
    let srv = |name: &str, host: &str, port: u16, weight: u16| {
        format!("--srv-host=_sip._udp.{name},{host},{port},10,{weight}")
    };
    let dns = Dns::start(&[
        srv("w1.test", "light.test", light.port(), 1),
        srv("w1.test", "heavy.test", h1.addr.port(), 1000),
        srv("w2.test", "heavy.test", h2.addr.port(), 1000),
        srv("w2.test", "light.test", light.port(), 1),
        "--host-record=light.test,127.0.0.1".into(),
        "--host-record=heavy.test,127.0.0.1".into(),
    ]);
    let engine = builder().nameservers(vec![dns.addr]).start().await.unwrap();
    for name in ["w1.test", "w2.test"] {
        let mut leg = engine
            .call(&format!("sip:visitor@{name}"), CallOptions::default())
            .await
            .unwrap();
        within(leg.answered())
            .await
            .expect("answered by the heavy target");
        leg.hangup().await.unwrap();
        within(leg.ended()).await.unwrap();
    }
    assert!(
        light.received().is_empty(),
        "the light target was never tried"
    );
    assert_eq!(within(h1.finish()).await, 0);
    assert_eq!(within(h2.finish()).await, 0);
}

#[tokio::test]
async fn call_through_a_named_outbound_proxy_fails_over_after_a_503() {
    let busy = uas("uas_503.xml");
    let good = uas("uas_answer.xml");
    let dns = Dns::start(&[
        "--naptr-record=proxy.test,10,50,s,SIP+D2U,,_sip._udp.proxy.test".into(),
        format!(
            "--srv-host=_sip._udp.proxy.test,p1.proxy.test,{},10,0",
            busy.addr.port()
        ),
        format!(
            "--srv-host=_sip._udp.proxy.test,p2.proxy.test,{},20,0",
            good.addr.port()
        ),
        "--host-record=p1.proxy.test,127.0.0.1".into(),
        "--host-record=p2.proxy.test,127.0.0.1".into(),
    ]);
    let bad = builder()
        .outbound_proxy_uri(Some("proxy.test".into()))
        .start()
        .await;
    assert_eq!(
        bad.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::InvalidInput)
    );
    let engine = builder()
        .nameservers(vec![dns.addr])
        .outbound_proxy_uri(Some("sip:proxy.test".into()))
        .start()
        .await
        .unwrap();
    // The target's host is never resolved: every request goes to the proxy.
    let mut leg = engine
        .call("sip:visitor@elsewhere.invalid", CallOptions::default())
        .await
        .unwrap();
    within(leg.answered()).await.expect("answered through p2");
    leg.hangup().await.unwrap();
    within(leg.ended()).await.unwrap();
    assert_eq!(
        within(busy.finish()).await,
        0,
        "p1 answered 503 and got its ACK"
    );
    assert_eq!(within(good.finish()).await, 0);

    // Without a proxy, a target name with no record at all: the leg fails without any INVITE.
    let direct = builder().nameservers(vec![dns.addr]).start().await.unwrap();
    let mut leg = direct
        .call("sip:visitor@nothing.test", CallOptions::default())
        .await
        .unwrap();
    let cdr = within(leg.ended()).await.unwrap();
    assert_eq!(cdr.end_cause, EndCause::Error);
}

#[tokio::test]
async fn a_proxy_given_as_uri_is_the_preloaded_route() {
    let proxy = tokio::net::UdpSocket::bind((localhost(), 0)).await.unwrap();
    let port = proxy.local_addr().unwrap().port();
    let engine = builder()
        .outbound_proxy_uri(Some(format!("sip:127.0.0.1:{port}")))
        .start()
        .await
        .unwrap();
    let _leg = engine
        .call("sip:visitor@elsewhere.invalid", CallOptions::default())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(proxy.recv(&mut buf)).await.unwrap();
    let invite = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        invite.starts_with("INVITE sip:visitor@elsewhere.invalid SIP/2.0\r\n"),
        "{invite}"
    );
    assert!(
        invite.contains(&format!("\r\nRoute: <sip:127.0.0.1:{port};lr>\r\n")),
        "{invite}"
    );
}

#[tokio::test]
async fn hang_up_while_resolving_and_other_calls_go_on() {
    // A name server that never answers: the lookup stays pending for seconds.
    let mute = Silent::bind();
    let peer = uas("uas_answer.xml");
    let engine = builder()
        .nameservers(vec![SocketAddr::new(localhost(), mute.port())])
        .start()
        .await
        .unwrap();
    let mut pending = engine
        .call("sip:visitor@slow.test", CallOptions::default())
        .await
        .unwrap();
    // Signalling is not held up by the lookup: a call to an address is answered meanwhile.
    let mut other = engine
        .call(&peer.uri("agent"), CallOptions::default())
        .await
        .unwrap();
    within(other.answered()).await.unwrap();
    assert!(!mute.received().is_empty(), "the lookup went out");
    pending
        .hangup()
        .await
        .expect("still alive: its lookup has not finished");
    let cdr = within(pending.ended()).await.unwrap();
    assert_eq!(
        (cdr.end_cause, cdr.hangup_by),
        (EndCause::Cancelled, HangupBy::Local)
    );
    other.hangup().await.unwrap();
    within(other.ended()).await.unwrap();
    assert_eq!(within(peer.finish()).await, 0);
}

#[tokio::test]
async fn drain_shutdown_waits_for_calls_then_hangs_up_the_rest() {
    let p1 = uas("call_peer_echo.xml");
    let p2 = uas("call_peer_echo.xml");
    let engine = builder().start().await.unwrap();
    let mut a = engine
        .call(&p1.uri("a"), CallOptions::default())
        .await
        .unwrap();
    let mut b = engine
        .call(&p2.uri("b"), CallOptions::default())
        .await
        .unwrap();
    within(a.answered()).await.unwrap();
    within(b.answered()).await.unwrap();
    let shutdown = engine.shutdown(ShutdownMode::Drain(Duration::from_secs(3)));
    tokio::pin!(shutdown);
    // Its first poll refuses new calls; the calls in progress go on.
    assert!(poll_once(&mut shutdown).await.is_none());
    assert_eq!(
        engine
            .call(&p1.uri("c"), CallOptions::default())
            .await
            .err(),
        Some(rappel::CallError::Shutdown)
    );
    a.hangup().await.expect("a is still up during the drain");
    let ca = within(a.ended()).await.unwrap();
    assert_eq!(ca.end_cause, EndCause::Normal);
    assert!(
        poll_once(&mut shutdown).await.is_none(),
        "b is still up: shutdown waits"
    );
    // b is hung up when the drain time is over, and only then does shutdown return.
    let cb = within(b.ended()).await.unwrap();
    assert_eq!(
        (cb.end_cause, cb.hangup_by),
        (EndCause::Shutdown, HangupBy::Local)
    );
    within(shutdown).await;
    assert_eq!(within(p1.finish()).await, 0);
    assert_eq!(within(p2.finish()).await, 0);
}
