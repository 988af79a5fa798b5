//! The relay driver over real loopback sockets: two endpoints bridged through two legs, a bleeding third
//! party, then generated frames on one leg. Counts and header continuity checked at both ends.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use bytes::Bytes;
use rappel::media::relay::{DropReason, LegConfig, RelayConfig, Source};
use rappel::media::rtp::{write_header, RtpHeader};
use rappel::net::rtp_io::{Backend, DriverConfig, RelayDriver};

fn endpoint() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn packet(seq: u16, ssrc: u32) -> [u8; 172] {
    let mut p = [0u8; 172];
    write_header(
        p.first_chunk_mut().unwrap(),
        false,
        0,
        seq,
        u32::from(seq) * 160,
        ssrc,
    );
    p[12..16].copy_from_slice(&u32::from(seq).to_be_bytes());
    p
}

/// Receive `n` packets; return (marker, seq, ssrc, payload tag, source) for each.
fn recv_n(s: &UdpSocket, n: usize) -> Vec<(bool, u16, u32, u32, SocketAddr)> {
    let mut buf = [0u8; 1500];
    (0..n)
        .map(|_| {
            let (len, from) = s.recv_from(&mut buf).expect("packet within 5 s");
            assert_eq!(len, 172);
            let h = RtpHeader::new(&mut buf[..len]).unwrap();
            let (m, seq, ssrc) = (h.marker(), h.sequence(), h.ssrc());
            (
                m,
                seq,
                ssrc,
                u32::from_be_bytes(buf[12..16].try_into().unwrap()),
                from,
            )
        })
        .collect()
}

#[test]
fn bridges_two_endpoints_over_loopback_epoll() {
    bridges_two_endpoints(Backend::Epoll, 41000);
}

#[test]
fn bridges_two_endpoints_over_loopback_io_uring() {
    bridges_two_endpoints(Backend::IoUring, 42000);
}

fn bridges_two_endpoints(backend: Backend, port_min: u16) {
    let cfg = DriverConfig {
        relay: RelayConfig {
            port_min,
            port_max: port_min + 999,
            ..Default::default()
        },
        backend,
        // No twin: this test blasts 50 packets per burst, and packets still queued on the leg's socket when the
        // twin opens can be relayed after the twin's first ones (see the module docs); the order is checked
        // packet by packet here. Bleed counting with twins is checked in `connected_leg_relatches`.
        connect_latched: false,
        ..Default::default()
    };
    let (driver, mut events) = RelayDriver::spawn(cfg).unwrap();
    let running = driver.stats().wait().unwrap().backend;
    if running != backend {
        // Only io_uring may fall back (a kernel or sandbox that refuses it): then this exercises the fallback.
        assert_eq!((backend, running), (Backend::IoUring, Backend::Epoll));
        eprintln!("io_uring refused here: testing the epoll fallback");
    }
    let (ea, eb, bleed) = (endpoint(), endpoint(), endpoint());
    let la = driver
        .add_leg(LegConfig::g711(Some(ea.local_addr().unwrap())))
        .wait()
        .unwrap()
        .unwrap();
    let lb = driver
        .add_leg(LegConfig::g711(Some(eb.local_addr().unwrap())))
        .wait()
        .unwrap()
        .unwrap();
    driver.connect(la.id, lb.id).wait().unwrap().unwrap();

    const N: u16 = 300;
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for chunk in 0..N / 50 {
        for i in chunk * 50..(chunk + 1) * 50 {
            ea.send_to(&packet(i, 0xa), la.rtp).unwrap();
            eb.send_to(&packet(i, 0xb), lb.rtp).unwrap();
            if i % 10 == 0 {
                bleed.send_to(&packet(i, 0xbad), la.rtp).unwrap();
            }
        }
        got_b.extend(recv_n(&eb, 50));
        got_a.extend(recv_n(&ea, 50));
    }
    for (got, from_leg) in [(&got_a, la.rtp), (&got_b, lb.rtp)] {
        assert_eq!(got.len(), usize::from(N));
        let ssrc = got[0].2;
        for (k, w) in got.windows(2).enumerate() {
            assert_eq!(w[1].1, w[0].1.wrapping_add(1), "seq continuous at {k}");
            assert_eq!(w[1].2, ssrc);
            assert!(!w[1].0);
        }
        assert!(
            got.iter().all(|p| p.4 == from_leg),
            "symmetric: sent from the leg's own port"
        );
        assert!(
            got.iter().enumerate().all(|(i, p)| p.3 == i as u32),
            "payload order kept"
        );
        assert_ne!(ssrc, 0xa);
        assert_ne!(ssrc, 0xb);
    }
    let sa = driver.leg_stats(la.id).wait().unwrap().unwrap();
    let sb = driver.leg_stats(lb.id).wait().unwrap().unwrap();
    assert_eq!(
        (sa.packets_in, sa.packets_out, sb.packets_in, sb.packets_out),
        (300, 300, 300, 300)
    );
    assert_eq!(
        sa.dropped(DropReason::WrongSource),
        30,
        "bleed packets dropped and counted"
    );
    assert_eq!(sa.bytes_in, 300 * 172);

    // Hold music on leg B: same SSRC, sequence continues, marker on the first frame.
    let last_b = got_b.last().unwrap().1;
    driver
        .set_source(lb.id, Source::Generated)
        .wait()
        .unwrap()
        .unwrap();
    for i in 0..10 {
        driver.send_generated(lb.id, 0, Bytes::from_static(&[0x7f; 160]), 160, i == 0);
    }
    let music = recv_n(&eb, 10);
    assert!(music[0].0 && music[1..].iter().all(|p| !p.0));
    for (k, p) in music.iter().enumerate() {
        assert_eq!(p.1, last_b.wrapping_add(1 + k as u16));
        assert_eq!(p.2, got_b[0].2);
    }

    let st = driver.stats().wait().unwrap();
    assert_eq!(st.packets_in, 630);
    assert_eq!(st.packets_out, 610);
    assert_eq!(st.send_failures, 0);
    let ev = events.try_recv().unwrap();
    assert!(matches!(
        ev,
        rappel::net::rtp_io::DriverEvent::Relay(rappel::media::relay::Event::Latched { .. })
    ));
    driver.remove_leg(la.id).wait().unwrap().unwrap();
    // A frame for a removed leg is refused and counted, not sent.
    driver.send_generated(la.id, 0, Bytes::from_static(&[0x7f; 160]), 160, false);
    let st = driver.stats().wait().unwrap();
    assert_eq!((st.generated_refused, st.packets_out), (1, 610));
    driver.shutdown().unwrap();
}

/// rtcp-mux over real sockets: our RTCP report leaves from the leg's RTP port to the peer's RTP address, and the
/// peer's BYE on our RTP port is consumed (event), not forwarded.
fn rtcp_mux_over_loopback(backend: Backend, port_min: u16) {
    use rappel::media::relay::Event;
    use rappel::media::rtp::looks_like_rtcp;
    use rappel::net::rtp_io::DriverEvent;
    let cfg = DriverConfig {
        relay: RelayConfig {
            port_min,
            port_max: port_min + 99,
            rtcp_interval: Duration::from_millis(40),
            inactivity_timeout: Duration::from_millis(100),
            ..Default::default()
        },
        backend,
        ..Default::default()
    };
    let (driver, mut events) = RelayDriver::spawn(cfg).unwrap();
    let (ea, eb) = (endpoint(), endpoint());
    let mut ca = LegConfig::g711(Some(ea.local_addr().unwrap()));
    ca.rtcp_mux = true;
    let la = driver.add_leg(ca).wait().unwrap().unwrap();
    let lb = driver
        .add_leg(LegConfig::g711(Some(eb.local_addr().unwrap())))
        .wait()
        .unwrap()
        .unwrap();
    driver.connect(la.id, lb.id).wait().unwrap().unwrap();
    ea.send_to(&packet(1, 0xa), la.rtp).unwrap();
    assert_eq!(recv_n(&eb, 1).len(), 1, "RTP forwarded to B");
    // The relay's report for leg A arrives on A's RTP socket, from the leg's RTP port.
    let mut buf = [0u8; 1500];
    let (len, from) = ea.recv_from(&mut buf).expect("an RTCP report within 5 s");
    assert!(looks_like_rtcp(&buf[..len]), "second byte {}", buf[1]);
    assert_eq!(from, la.rtp);
    // The peer's BYE on our RTP port: consumed, raises the event, B hears nothing of it.
    let bye = [0x81u8, 203, 0, 1, 0, 0, 0, 0xa];
    ea.send_to(&bye, la.rtp).unwrap();
    loop {
        match events.blocking_recv().expect("driver alive") {
            DriverEvent::Relay(Event::Bye { leg }) => {
                assert_eq!(leg, la.id);
                break;
            }
            _ => continue,
        }
    }
    let sa = driver.leg_stats(la.id).wait().unwrap().unwrap();
    assert_eq!((sa.rtcp_in, sa.packets_in), (1, 1));
    let sb = driver.leg_stats(lb.id).wait().unwrap().unwrap();
    assert_eq!(sb.packets_out, 1, "only the RTP packet was forwarded");
    driver.shutdown().unwrap();
}

#[test]
fn rtcp_mux_over_loopback_epoll() {
    rtcp_mux_over_loopback(Backend::Epoll, 43000);
}

#[test]
fn rtcp_mux_over_loopback_io_uring() {
    rtcp_mux_over_loopback(Backend::IoUring, 43200);
}

/// Wait for the relay event `want` on leg `leg`, skipping others.
fn wait_event(
    events: &mut rappel::net::rtp_io::DriverEvents,
    want: impl Fn(&rappel::media::relay::Event) -> bool,
) {
    use rappel::net::rtp_io::DriverEvent;
    loop {
        match events.blocking_recv().expect("driver alive") {
            DriverEvent::Relay(e) if want(&e) => return,
            _ => continue,
        }
    }
}

/// UDP sockets bound to local port `port` (IPv4, from `/proc/net/udp`): the remote address of each, `None`
/// when unconnected.
fn sockets_on_port(port: u16) -> Vec<Option<SocketAddr>> {
    let addr = |hex: &str| -> Option<SocketAddr> {
        let (ip, port) = hex.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddr::from((
            std::net::Ipv4Addr::from(u32::from_be(ip)),
            port,
        )))
    };
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            let (local, remote) = (addr(f.next()?)?, addr(f.next()?)?);
            (local.port() == port).then_some((remote.port() != 0).then_some(remote))
        })
        .collect()
}

/// With `connect_latched` (the default) a latched leg gets a twin RTP socket on the same port, connected to its
/// peer: the peer's datagrams and the sends to it go through the twin, other sources still reach the relay on
/// the leg's unconnected socket and are counted; a new remote address (re-INVITE) closes the twin so the leg can
/// latch to the new peer, and the port stays exclusive throughout.
fn connected_leg_relatches(backend: Backend, port_min: u16) {
    use rappel::media::relay::Event;
    let cfg = DriverConfig {
        relay: RelayConfig {
            port_min,
            port_max: port_min + 99,
            ..Default::default()
        },
        backend,
        ..Default::default()
    };
    assert!(cfg.connect_latched, "connecting is the default");
    let (driver, mut events) = RelayDriver::spawn(cfg).unwrap();
    let (ea, eb, ex) = (endpoint(), endpoint(), endpoint());
    let (a_addr, x_addr) = (ea.local_addr().unwrap(), ex.local_addr().unwrap());
    let la = driver
        .add_leg(LegConfig::g711(Some(a_addr)))
        .wait()
        .unwrap()
        .unwrap();
    let lb = driver
        .add_leg(LegConfig::g711(Some(eb.local_addr().unwrap())))
        .wait()
        .unwrap()
        .unwrap();
    driver.connect(la.id, lb.id).wait().unwrap().unwrap();
    let tag = |v: Vec<(bool, u16, u32, u32, SocketAddr)>| v[0].3;

    ea.send_to(&packet(1, 0xa), la.rtp).unwrap();
    assert_eq!(tag(recv_n(&eb, 1)), 1);
    // The event is passed on after the socket was connected.
    wait_event(
        &mut events,
        |e| matches!(e, Event::Latched { leg, addr } if *leg == la.id && *addr == a_addr),
    );
    let mut on_port = sockets_on_port(la.rtp.port());
    on_port.sort();
    assert_eq!(
        on_port,
        [None, Some(a_addr)],
        "the leg's socket and its twin"
    );
    assert_eq!(
        UdpSocket::bind(la.rtp).unwrap_err().kind(),
        std::io::ErrorKind::AddrInUse,
        "the port stays exclusive"
    );
    // Another source: dropped and counted by the relay, so B's next packet is A's.
    for i in 0..5 {
        ex.send_to(&packet(100 + i, 0xbad), la.rtp).unwrap();
    }
    ea.send_to(&packet(2, 0xa), la.rtp).unwrap();
    assert_eq!(tag(recv_n(&eb, 1)), 2);
    let sa = driver.leg_stats(la.id).wait().unwrap().unwrap();
    assert_eq!(
        (sa.packets_in, sa.dropped(DropReason::WrongSource)),
        (2, 5),
        "other sources reach the relay and are counted while connected"
    );

    // Re-INVITE: the peer moves to X. The socket must be disconnected or X could never latch.
    driver
        .with_relay(move |r, _| r.set_remote(la.id, Some(x_addr), None))
        .wait()
        .unwrap()
        .unwrap();
    ex.send_to(&packet(3, 0xc), la.rtp).unwrap();
    assert_eq!(tag(recv_n(&eb, 1)), 3, "the new peer's packet is relayed");
    wait_event(
        &mut events,
        |e| matches!(e, Event::Latched { leg, addr } if *leg == la.id && *addr == x_addr),
    );
    // Now connected to X: A's packets are dropped (and counted).
    ea.send_to(&packet(4, 0xa), la.rtp).unwrap();
    ex.send_to(&packet(5, 0xc), la.rtp).unwrap();
    assert_eq!(tag(recv_n(&eb, 1)), 5);
    let sa = driver.leg_stats(la.id).wait().unwrap().unwrap();
    assert_eq!(sa.dropped(DropReason::WrongSource), 6);
    let on_port = sockets_on_port(la.rtp.port());
    assert!(
        on_port.contains(&None) && !on_port.contains(&Some(a_addr)),
        "the leg's socket stays, the old twin is closed: {on_port:?}"
    );
    // And B's packets go to X now, through the connected socket.
    eb.send_to(&packet(6, 0xb), lb.rtp).unwrap();
    let got = recv_n(&ex, 1);
    assert_eq!((got[0].3, got[0].4), (6, la.rtp));
    assert_eq!(driver.stats().wait().unwrap().send_failures, 0);
    driver.shutdown().unwrap();
}

#[test]
fn connected_leg_relatches_epoll() {
    connected_leg_relatches(Backend::Epoll, 43400);
}

#[test]
fn connected_leg_relatches_io_uring() {
    connected_leg_relatches(Backend::IoUring, 43600);
}

/// A peer floods RFC 4733 packets while nobody reads the driver's events: the queue stays bounded (each key
/// press is passed on as its start and first end packet, new presses beyond the room are dropped and counted),
/// the state event (latched) is not lost, and digits are reported again once the reader resumes. Synchronised
/// on the driver's counters, not on time.
#[test]
fn telephone_event_flood_leaves_the_event_queue_bounded() {
    use rappel::media::dtmf::{Digit, DtmfReceiver};
    use rappel::media::relay::Event;
    use rappel::net::rtp_io::{DriverEvent, DriverEvents, DTMF_CAPACITY, STATE_CAPACITY};
    let cfg = DriverConfig {
        relay: RelayConfig {
            port_min: 43800,
            port_max: 43899,
            ..Default::default()
        },
        backend: Backend::Epoll,
        ..Default::default()
    };
    let (driver, mut events) = RelayDriver::spawn(cfg).unwrap();
    let ea = endpoint();
    let mut c = LegConfig::g711(Some(ea.local_addr().unwrap()));
    c.telephone_event_pt = Some(101);
    let la = driver.add_leg(c).wait().unwrap().unwrap();
    // One press: 7 packets of growing duration, then 3 end packets, all with the press's timestamp.
    let mut seq = 0u16;
    let mut press = |ts: u32, key: u8| {
        for i in 0..10u16 {
            let mut p = [0u8; 16];
            write_header(p.first_chunk_mut().unwrap(), i == 0, 101, seq, ts, 0xd7);
            seq = seq.wrapping_add(1);
            let end = if i >= 7 { 0x80 } else { 0 };
            p[12] = key;
            p[13] = end | 10;
            p[14..16].copy_from_slice(&(160 * (i.min(7) + 1)).to_be_bytes());
            ea.send_to(&p, la.rtp).unwrap();
        }
    };
    // Waits until the driver received `n` packets in all (they are small: the socket buffer holds a batch).
    let handled = |n: u64| loop {
        if driver.stats().wait().unwrap().packets_in >= n {
            return;
        }
        std::thread::yield_now();
    };
    let presses = 4 * DTMF_CAPACITY as u32;
    for k in 0..presses {
        press(k * 2000, (k % 10) as u8);
        if k % 8 == 7 {
            handled(u64::from(k + 1) * 10);
        }
    }
    handled(u64::from(presses) * 10);
    // Bounded: the latched event plus a full telephone-event queue.
    assert_eq!(events.len(), 1 + DTMF_CAPACITY);
    assert!(events.len() <= STATE_CAPACITY + DTMF_CAPACITY);
    let s = driver.stats().wait().unwrap().events;
    let total = u64::from(presses) * 10;
    assert_eq!(
        s.dtmf_coalesced + s.dtmf_dropped + DTMF_CAPACITY as u64,
        total,
        "{s:?}"
    );
    assert_eq!(s.dtmf_coalesced, (DTMF_CAPACITY as u64 / 2) * 8, "{s:?}");
    // The reader resumes: the state event first, then the presses that fit, each reported once.
    let mut dec = DtmfReceiver::new(8000);
    let mut read = |events: &mut DriverEvents| {
        let mut digits = Vec::new();
        let mut states = Vec::new();
        while let Some(DriverEvent::Relay(e)) = events.try_recv() {
            match e {
                Event::TelephoneEvent {
                    timestamp, payload, ..
                } => {
                    dec.handle_packet(timestamp, &payload).unwrap();
                    while let Some(ev) = dec.poll_event() {
                        digits.push(ev.digit);
                    }
                }
                other => states.push(other),
            }
        }
        (digits, states)
    };
    let (digits, states) = read(&mut events);
    assert!(
        matches!(states[..], [Event::Latched { leg, .. }] if leg == la.id),
        "{states:?}"
    );
    assert_eq!(digits.len(), DTMF_CAPACITY / 2);
    assert_eq!(&digits[..3], &[Digit::D0, Digit::D1, Digit::D2]);
    // A new press after the flood goes through.
    press(presses * 2000, 11);
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(events.blocking_recv().expect("driver alive"));
    }
    for e in got {
        let DriverEvent::Relay(Event::TelephoneEvent {
            timestamp, payload, ..
        }) = e
        else {
            panic!("{e:?}");
        };
        dec.handle_packet(timestamp, &payload).unwrap();
    }
    assert_eq!(dec.poll_event().map(|e| e.digit), Some(Digit::Hash));
    driver.shutdown().unwrap();
}
