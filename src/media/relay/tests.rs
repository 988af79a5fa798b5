//! Relay tests in simulated time: no sockets, `Instant`s advanced by hand.

use super::*;
use crate::media::rtp::RtpHeader;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn pkt(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool) -> Vec<u8> {
    let mut p = vec![0u8; 172];
    rtp::write_header(p.first_chunk_mut().unwrap(), marker, pt, seq, ts, ssrc);
    p
}

fn fields(p: &mut [u8]) -> (bool, u8, u16, u32, u32) {
    let h = RtpHeader::new(p).unwrap();
    (
        h.marker(),
        h.payload_type(),
        h.sequence(),
        h.timestamp(),
        h.ssrc(),
    )
}

const A: &str = "192.0.2.1:4000";
const B: &str = "192.0.2.2:5000";

struct Fixture {
    relay: Relay,
    t0: Instant,
    a: LegId,
    b: LegId,
}

fn bridged() -> Fixture {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default(), t0);
    let a = relay.add_leg(t0, LegConfig::g711(Some(addr(A)))).unwrap();
    let b = relay.add_leg(t0, LegConfig::g711(Some(addr(B)))).unwrap();
    relay.connect(a, b).unwrap();
    Fixture { relay, t0, a, b }
}

#[test]
fn forwards_between_connected_legs_with_rewrite() {
    let Fixture {
        mut relay,
        t0,
        a,
        b,
    } = bridged();
    let mut p = pkt(0, 10, 800, 0xaaaa, false);
    let act = relay.handle_rtp(t0, a, addr(A), &mut p);
    assert_eq!(
        act,
        Action::Forward {
            to: addr(B),
            via: b,
            record: false
        }
    );
    let (m, pt, _, _, ssrc) = fields(&mut p);
    assert!(m, "first packet of a source carries the marker");
    assert_eq!((pt, ssrc), (0, relay.outgoing_ssrc(b).unwrap()));
    assert_eq!(p.len(), 172);
    assert_eq!(
        relay.poll_event(),
        Some(Event::Latched {
            leg: a,
            addr: addr(A)
        })
    );
    let s = relay.stats(a).unwrap();
    assert_eq!((s.packets_in, s.bytes_in), (1, 172));
    assert_eq!(relay.stats(b).unwrap().packets_out, 1);
    // Local ports: even RTP, RTCP + 1, distinct per leg.
    let (ra, rca) = relay.local_ports(a).unwrap();
    let (rb, _) = relay.local_ports(b).unwrap();
    assert_eq!((ra % 2, rca), (0, ra + 1));
    assert_ne!(ra, rb);
}

#[test]
fn sdp_latching_is_strict_and_counts_bleed() {
    let Fixture {
        mut relay, t0, a, ..
    } = bridged();
    // Before latching, an unknown source is not accepted in SDP mode.
    let mut p = pkt(0, 1, 0, 1, false);
    assert_eq!(
        relay.handle_rtp(t0, a, addr("198.51.100.9:7000"), &mut p),
        Action::Drop(DropReason::NotLatched)
    );
    assert!(relay.latched(a).is_none());
    let mut p = pkt(0, 2, 160, 1, false);
    assert!(matches!(
        relay.handle_rtp(t0, a, addr(A), &mut p),
        Action::Forward { .. }
    ));
    assert_eq!(relay.latched(a), Some(addr(A)));
    // Same IP, other port: bleed.
    for i in 0..3 {
        let mut p = pkt(0, 3 + i, 320, 1, false);
        assert_eq!(
            relay.handle_rtp(t0, a, addr("192.0.2.1:4002"), &mut p),
            Action::Drop(DropReason::WrongSource)
        );
    }
    let s = relay.stats(a).unwrap();
    assert_eq!(
        (
            s.dropped(DropReason::WrongSource),
            s.dropped(DropReason::NotLatched),
            s.packets_in
        ),
        (3, 1, 1)
    );
}

#[test]
fn nat_learning_window_latches_real_source_then_only_sdp() {
    let t0 = Instant::now();
    let mut relay = Relay::new(
        RelayConfig {
            learning_window: Duration::from_secs(2),
            ..Default::default()
        },
        t0,
    );
    let cfg = LegConfig {
        latching: Latching::Learn,
        ..LegConfig::g711(Some(addr("10.0.0.5:4000")))
    };
    let a = relay.add_leg(t0, cfg.clone()).unwrap();
    let nat = addr("203.0.113.7:61000");
    let mut p = pkt(0, 1, 0, 1, false);
    // Accepted (latched) even without a sink: the drop reason is NoSink, not a latching one.
    assert_eq!(
        relay.handle_rtp(t0 + Duration::from_millis(500), a, nat, &mut p),
        Action::Drop(DropReason::NoSink)
    );
    assert_eq!(relay.latched(a), Some(nat));
    let mut p = pkt(0, 2, 160, 1, false);
    assert_eq!(
        relay.handle_rtp(
            t0 + Duration::from_millis(520),
            a,
            addr("10.0.0.5:4000"),
            &mut p
        ),
        Action::Drop(DropReason::WrongSource)
    );

    // A second leg that hears nothing during its window: afterwards only the SDP address latches.
    let c = relay.add_leg(t0, cfg).unwrap();
    let late = t0 + Duration::from_secs(3);
    let mut p = pkt(0, 1, 0, 2, false);
    assert_eq!(
        relay.handle_rtp(late, c, nat, &mut p),
        Action::Drop(DropReason::NotLatched)
    );
    let mut p = pkt(0, 2, 160, 2, false);
    assert_eq!(
        relay.handle_rtp(late, c, addr("10.0.0.5:4000"), &mut p),
        Action::Drop(DropReason::NoSink)
    );
    assert_eq!(relay.latched(c), Some(addr("10.0.0.5:4000")));
}

/// Visitor leg V hears: greeting (generated) → other leg A1 → hold music (generated) → another agent A2.
/// SSRC constant, sequence +1 per packet, timestamps keep pace with time, marker exactly on each switch.
#[test]
fn continuity_across_source_switches() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default(), t0);
    let v = relay.add_leg(t0, LegConfig::g711(Some(addr(A)))).unwrap();
    let a1 = relay.add_leg(t0, LegConfig::g711(Some(addr(B)))).unwrap();
    let a2 = relay
        .add_leg(t0, LegConfig::g711(Some(addr("192.0.2.3:6000"))))
        .unwrap();
    let ssrc = relay.outgoing_ssrc(v).unwrap();
    let mut out = [0u8; 256];
    let mut seen: Vec<(bool, u16, u32, Instant)> = Vec::new();
    let mut now = t0;
    let step = Duration::from_millis(20);
    let payload = [0xffu8; 160];
    let check = |p: &mut [u8], now: Instant, seen: &mut Vec<(bool, u16, u32, Instant)>| {
        let (m, _, seq, ts, s) = fields(p);
        assert_eq!(s, ssrc);
        seen.push((m, seq, ts, now));
    };

    relay.set_source(v, Source::Generated).unwrap();
    for i in 0..5 {
        let t = relay
            .send_generated(now, v, 0, &payload, 160, i == 0, &mut out)
            .unwrap();
        assert_eq!((t.to, t.len), (addr(A), 172));
        check(&mut out[..t.len], now, &mut seen);
        now += step;
    }
    // Switch 1: the agent's audio (its own seq/ts/SSRC space).
    relay.set_source(v, Source::Leg(a1)).unwrap();
    now += Duration::from_millis(7); // switching is not frame-aligned
    for i in 0..5u16 {
        let mut p = pkt(0, 40000 + i, 9_000_000 + u32::from(i) * 160, 0x1234, false);
        assert!(matches!(
            relay.handle_rtp(now, a1, addr(B), &mut p),
            Action::Forward { .. }
        ));
        check(&mut p, now, &mut seen);
        now += step;
    }
    // Switch 2: hold music.
    relay.set_source(v, Source::Generated).unwrap();
    for i in 0..5 {
        let t = relay
            .send_generated(now, v, 0, &payload, 160, i == 0, &mut out)
            .unwrap();
        check(&mut out[..t.len], now, &mut seen);
        now += step;
    }
    // Packets from A1 no longer reach V.
    let mut p = pkt(0, 40005, 9_000_800, 0x1234, false);
    assert_eq!(
        relay.handle_rtp(now, a1, addr(B), &mut p),
        Action::Drop(DropReason::NoSink)
    );
    // Switch 3: another agent.
    relay.set_source(v, Source::Leg(a2)).unwrap();
    for i in 0..5u16 {
        let mut p = pkt(0, 7 + i, 55 + u32::from(i) * 160, 0x9999, false);
        assert!(matches!(
            relay.handle_rtp(now, a2, addr("192.0.2.3:6000"), &mut p),
            Action::Forward { .. }
        ));
        check(&mut p, now, &mut seen);
        now += step;
    }

    assert_eq!(seen.len(), 20);
    for (i, w) in seen.windows(2).enumerate() {
        let ((_, s0, ts0, t0), (m1, s1, ts1, t1)) = (w[0], w[1]);
        assert_eq!(
            s1,
            s0.wrapping_add(1),
            "sequence continuous at packet {}",
            i + 1
        );
        let switch = (i + 1) % 5 == 0;
        assert_eq!(m1, switch, "marker only on switches, packet {}", i + 1);
        let dt = ts1.wrapping_sub(ts0);
        let wall = duration_to_ticks(t1 - t0, 8000);
        assert_eq!(
            dt,
            wall,
            "timestamp keeps pace with time at packet {}",
            i + 1
        );
    }
    assert!(seen[0].0, "first packet ever carries the marker");
}

#[test]
fn same_leg_new_ssrc_reanchors_with_marker() {
    let Fixture {
        mut relay, t0, a, ..
    } = bridged();
    let mut p = pkt(0, 100, 1000, 1, false);
    relay.handle_rtp(t0, a, addr(A), &mut p);
    let (_, _, s0, ts0, _) = fields(&mut p);
    let mut p = pkt(0, 5, 77, 2, false);
    relay.handle_rtp(t0 + Duration::from_millis(20), a, addr(A), &mut p);
    let (m, _, s1, ts1, _) = fields(&mut p);
    assert!(m);
    assert_eq!((s1, ts1), (s0.wrapping_add(1), ts0.wrapping_add(160)));
}

#[test]
fn telephone_event_pt_is_mapped_both_ways() {
    let Fixture {
        mut relay,
        t0,
        a,
        b,
    } = bridged();
    relay.set_telephone_event_pt(a, Some(101)).unwrap();
    relay.set_telephone_event_pt(b, Some(96)).unwrap();
    let mut p = pkt(101, 1, 0, 1, true);
    relay.handle_rtp(t0, a, addr(A), &mut p);
    assert_eq!(fields(&mut p).1, 96);
    let mut p = pkt(96, 1, 0, 2, true);
    relay.handle_rtp(t0, b, addr(B), &mut p);
    assert_eq!(fields(&mut p).1, 101);
    // Audio PT untouched; a PT that is telephone-event only on the other side untouched too.
    let mut p = pkt(0, 2, 160, 1, false);
    relay.handle_rtp(t0, a, addr(A), &mut p);
    assert_eq!(fields(&mut p).1, 0);
    let mut p = pkt(96, 3, 320, 1, false);
    relay.handle_rtp(t0, a, addr(A), &mut p);
    assert_eq!(fields(&mut p).1, 96);
    // B stops taking telephone-event (a re-INVITE without it): A's events are dropped and counted, not sent
    // to B under a payload type it does not know; A's audio still goes through.
    relay.set_telephone_event_pt(b, None).unwrap();
    let mut p = pkt(101, 4, 480, 1, true);
    assert_eq!(
        relay.handle_rtp(t0, a, addr(A), &mut p),
        Action::Drop(DropReason::NoTelephoneEvent)
    );
    let mut p = pkt(0, 5, 640, 1, false);
    assert!(matches!(
        relay.handle_rtp(t0, a, addr(A), &mut p),
        Action::Forward { .. }
    ));
    let stats = relay.stats(a).unwrap();
    assert_eq!(stats.dropped(DropReason::NoTelephoneEvent), 1);
}

#[test]
fn inactivity_event_and_none_on_hold() {
    let Fixture {
        mut relay,
        t0,
        a,
        b,
    } = bridged();
    relay.set_hold(t0, b, true).unwrap();
    let mut now = t0;
    // A sends for 10 s, then stops; B never sends but is on hold.
    while now < t0 + Duration::from_secs(10) {
        let mut p = pkt(0, 1, 0, 1, false);
        relay.handle_rtp(now, a, addr(A), &mut p);
        now += Duration::from_millis(20);
        relay.handle_timeout(now);
    }
    assert_eq!(
        relay.poll_event(),
        Some(Event::Latched {
            leg: a,
            addr: addr(A)
        })
    );
    assert_eq!(relay.poll_event(), None);
    while now < t0 + Duration::from_secs(45) {
        now = relay.poll_timeout().max(now + Duration::from_millis(1));
        relay.handle_timeout(now);
        if let Some(e) = relay.poll_event() {
            assert_eq!(e, Event::Inactive { leg: a });
            let quiet = now - (t0 + Duration::from_millis(9_980));
            assert!(
                quiet >= Duration::from_secs(30) && quiet <= Duration::from_millis(31_000),
                "{quiet:?}"
            );
            break;
        }
    }
    // Reported once; B (on hold) never.
    relay.handle_timeout(t0 + Duration::from_secs(120));
    assert_eq!(relay.poll_event(), None);
    assert_eq!(relay.stats(a).unwrap().packets_in, 500);
    // B comes off hold: its watchdog restarts from then.
    let resume = t0 + Duration::from_secs(120);
    relay.set_hold(resume, b, false).unwrap();
    relay.handle_timeout(resume + Duration::from_secs(29));
    assert_eq!(relay.poll_event(), None);
    relay.handle_timeout(resume + Duration::from_secs(31));
    assert_eq!(relay.poll_event(), Some(Event::Inactive { leg: b }));
}

#[test]
fn rtcp_is_terminated_and_reports_generated() {
    let Fixture {
        mut relay,
        t0,
        a,
        b,
    } = bridged();
    relay.set_wall_clock(t0, 0xe000_0000_0000_0000);
    let mut now = t0;
    for i in 0..100u16 {
        if i != 50 {
            let mut p = pkt(0, i, u32::from(i) * 160, 0xabc, false);
            relay.handle_rtp(now, a, addr(A), &mut p);
        }
        now += Duration::from_millis(20);
    }
    // Peer A's RTCP: an SR from the right IP is consumed; from elsewhere dropped.
    let mut buf = [0u8; 256];
    let n = rtp::write_report(
        &mut buf,
        0xabc,
        Some(SenderInfo {
            ntp: 0x1234_5678_9abc_def0,
            ..Default::default()
        }),
        None,
        b"a",
    )
    .unwrap();
    assert_eq!(
        relay.handle_rtcp(now, a, addr("198.51.100.1:4001"), &buf[..n]),
        Err(DropReason::NotLatched)
    );
    assert_eq!(
        relay.handle_rtcp(now, a, addr("192.0.2.1:4001"), &buf[..n]),
        Ok(())
    );
    assert_eq!(
        relay.handle_rtcp(now, a, addr("192.0.2.1:4001"), &[0x80, 0]),
        Err(DropReason::Malformed)
    );
    assert_eq!(relay.stats(a).unwrap().rtcp_in, 1);

    // Within 7.5 s (max randomised interval) both legs have a report due.
    relay.handle_timeout(t0 + Duration::from_millis(7_600));
    let later = t0 + Duration::from_millis(7_600);
    let mut reports = Vec::new();
    while let Some(t) = relay.poll_rtcp(later, &mut buf) {
        let items: Vec<_> = parse_rtcp(&buf[..t.len]).collect::<Result<_, _>>().unwrap();
        reports.push((t, items, buf[..t.len].to_vec()));
    }
    assert_eq!(reports.len(), 2);
    let (ta, items_a, raw_a) = reports.iter().find(|r| r.0.via == a).unwrap();
    // Leg A sent nothing (B never sent): RR about A's stream, to A's RTCP port (RTP + 1).
    assert_eq!(ta.to, addr("192.0.2.1:4001"));
    assert_eq!(
        items_a[0],
        RtcpItem::ReceiverReport {
            ssrc: relay.outgoing_ssrc(a).unwrap()
        }
    );
    // Report block: SSRC 0xabc, 1 lost, highest seq 99, LSR = middle bits of the SR's NTP.
    assert_eq!(&raw_a[8..12], &0xabcu32.to_be_bytes());
    assert_eq!(
        u32::from_be_bytes(raw_a[12..16].try_into().unwrap()) & 0xff_ffff,
        1
    );
    assert_eq!(u32::from_be_bytes(raw_a[16..20].try_into().unwrap()), 99);
    assert_eq!(
        u32::from_be_bytes(raw_a[24..28].try_into().unwrap()),
        0x5678_9abc
    );
    // Leg B sent 99 forwarded packets: SR with its own SSRC and counts.
    let (tb, items_b, raw_b) = reports.iter().find(|r| r.0.via == b).unwrap();
    assert_eq!(tb.to, addr("192.0.2.2:5001"));
    assert!(
        matches!(items_b[0], RtcpItem::SenderReport { ssrc, ntp } if ssrc == relay.outgoing_ssrc(b).unwrap() && ntp >> 32 == 0xe000_0007)
    );
    assert_eq!(u32::from_be_bytes(raw_b[20..24].try_into().unwrap()), 99);
    assert_eq!(
        u32::from_be_bytes(raw_b[24..28].try_into().unwrap()),
        99 * 160
    );

    // BYE raises an event.
    let bye = [0x81u8, 203, 0, 1, 0, 0, 0x0a, 0xbc];
    assert_eq!(
        relay.handle_rtcp(now, a, addr("192.0.2.1:4001"), &bye),
        Ok(())
    );
    assert!(std::iter::from_fn(|| relay.poll_event()).any(|e| e == Event::Bye { leg: a }));
}

#[test]
fn ports_are_returned_and_stale_ids_rejected() {
    let t0 = Instant::now();
    let mut relay = Relay::new(
        RelayConfig {
            port_min: 40001,
            port_max: 40005,
            ..Default::default()
        },
        t0,
    );
    let a = relay.add_leg(t0, LegConfig::g711(None)).unwrap();
    let b = relay.add_leg(t0, LegConfig::g711(None)).unwrap();
    assert_eq!(relay.local_ports(a), Some((40002, 40003)));
    assert_eq!(relay.local_ports(b), Some((40004, 40005)));
    assert_eq!(
        relay.add_leg(t0, LegConfig::g711(None)),
        Err(RelayError::PortsExhausted)
    );
    relay.connect(a, b).unwrap();
    relay.remove_leg(a).unwrap();
    assert_eq!(relay.source(b), Some(Source::Silence));
    let c = relay.add_leg(t0, LegConfig::g711(None)).unwrap();
    assert_eq!(relay.local_ports(c), Some((40002, 40003)));
    assert_eq!(
        relay.stats(a),
        None,
        "stale id does not see the reused slot"
    );
    let mut p = pkt(0, 1, 0, 1, false);
    assert_eq!(
        relay.handle_rtp(t0, a, addr(A), &mut p),
        Action::Drop(DropReason::UnknownLeg)
    );
    assert_eq!(relay.leg_count(), 2);
}

#[test]
fn no_destination_and_generated_errors() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default(), t0);
    let a = relay.add_leg(t0, LegConfig::g711(Some(addr(A)))).unwrap();
    let b = relay.add_leg(t0, LegConfig::g711(None)).unwrap();
    relay.connect(a, b).unwrap();
    let mut p = pkt(0, 1, 0, 1, false);
    assert_eq!(
        relay.handle_rtp(t0, a, addr(A), &mut p),
        Action::Drop(DropReason::NoDestination)
    );
    assert_eq!(
        relay.stats(a).unwrap().dropped(DropReason::NoDestination),
        1
    );
    let mut out = [0u8; 64];
    assert_eq!(
        relay.send_generated(t0, a, 0, &[0; 40], 40, true, &mut out),
        Err(RelayError::NotGenerated)
    );
    relay.set_source(a, Source::Generated).unwrap();
    assert_eq!(
        relay.send_generated(t0, a, 0, &[0; 60], 60, true, &mut out),
        Err(RelayError::BufferTooSmall)
    );
    assert_eq!(
        relay.set_source(a, Source::Leg(a)),
        Err(RelayError::SelfSource)
    );
    // Malformed input never panics and is counted.
    for bad in [&mut [][..], &mut [0x80u8; 5][..], &mut [0x00u8; 20][..]] {
        assert_eq!(
            relay.handle_rtp(t0, a, addr(A), bad),
            Action::Drop(DropReason::Malformed)
        );
    }
    assert_eq!(relay.stats(a).unwrap().dropped(DropReason::Malformed), 3);
}

#[test]
fn recording_flag_is_reported_on_forward() {
    let Fixture {
        mut relay,
        t0,
        a,
        b,
    } = bridged();
    relay.set_record(a, true).unwrap();
    let mut p = pkt(0, 1, 0, 1, false);
    assert_eq!(
        relay.handle_rtp(t0, a, addr(A), &mut p),
        Action::Forward {
            to: addr(B),
            via: b,
            record: true
        }
    );
    let mut p = pkt(0, 1, 0, 2, false);
    assert_eq!(
        relay.handle_rtp(t0, b, addr(B), &mut p),
        Action::Forward {
            to: addr(A),
            via: a,
            record: false
        }
    );
}

#[test]
fn rtcp_mux_demuxes_on_the_rtp_port_and_reports_go_to_the_rtp_address() {
    let Fixture {
        mut relay,
        t0,
        a,
        b,
    } = bridged();
    relay.set_rtcp_mux(a, true).unwrap();
    let mut now = t0;
    for i in 0..10u16 {
        let mut p = pkt(0, i, u32::from(i) * 160, 0xabc, false);
        relay.handle_rtp(now, a, addr(A), &mut p);
        now += Duration::from_millis(20);
    }
    let mut buf = [0u8; 256];
    let n = rtp::write_report(&mut buf, 0xabc, Some(SenderInfo::default()), None, b"a").unwrap();
    let sr = buf[..n].to_vec();
    // On the mux leg, an SR on the RTP port from the latched address is consumed, not forwarded.
    let mut p = sr.clone();
    assert_eq!(relay.handle_rtp(now, a, addr(A), &mut p), Action::Consumed);
    assert_eq!(p, sr, "consumed RTCP is not rewritten");
    // From another source: dropped as RTCP (latched to the RTP source), counted.
    let mut p = sr.clone();
    assert_eq!(
        relay.handle_rtp(now, a, addr("192.0.2.1:4999"), &mut p),
        Action::Drop(DropReason::WrongSource)
    );
    // BYE over the mux raises the event.
    let mut bye = [0x81u8, 203, 0, 1, 0, 0, 0x0a, 0xbc];
    assert_eq!(
        relay.handle_rtp(now, a, addr(A), &mut bye),
        Action::Consumed
    );
    assert!(std::iter::from_fn(|| relay.poll_event()).any(|e| e == Event::Bye { leg: a }));
    let st = relay.stats(a).unwrap();
    assert_eq!((st.rtcp_in, st.packets_in), (2, 10));
    assert_eq!(st.dropped(DropReason::WrongSource), 1);
    // Leg B has no rtcp-mux: RTCP on its RTP port stays malformed.
    let mut p = sr.clone();
    assert_eq!(
        relay.handle_rtp(now, b, addr(B), &mut p),
        Action::Drop(DropReason::Malformed)
    );
    assert_eq!(relay.stats(b).unwrap().rtcp_in, 0);

    // Generated reports: A's to its RTP address, flagged for the RTP socket; B's to RTP + 1 as before.
    let later = t0 + Duration::from_millis(7_600);
    relay.handle_timeout(later);
    let mut seen = Vec::new();
    while let Some(t) = relay.poll_rtcp(later, &mut buf) {
        seen.push((t.via, t.to, t.rtcp_mux));
    }
    seen.sort_by_key(|s| s.0 != a);
    assert_eq!(
        seen,
        vec![(a, addr(A), true), (b, addr("192.0.2.2:5001"), false)]
    );
}

#[test]
fn rtcp_mux_from_leg_config_and_switching_it_off() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default(), t0);
    let mut cfg = LegConfig::g711(Some(addr(A)));
    cfg.rtcp_mux = true;
    let a = relay.add_leg(t0, cfg).unwrap();
    let mut buf = [0u8; 64];
    let n = rtp::write_report(&mut buf, 1, None, None, b"x").unwrap();
    // Before any RTP: the RTCP latch accepts the SDP address's IP, as on a separate port.
    let mut p = buf[..n].to_vec();
    assert_eq!(relay.handle_rtp(t0, a, addr(A), &mut p), Action::Consumed);
    relay.set_rtcp_mux(a, false).unwrap();
    let mut p = buf[..n].to_vec();
    assert_eq!(
        relay.handle_rtp(t0, a, addr(A), &mut p),
        Action::Drop(DropReason::Malformed)
    );
    assert_eq!(
        relay.set_rtcp_mux(
            LegId {
                index: 9,
                generation: 0
            },
            true
        ),
        Err(RelayError::UnknownLeg)
    );
}

#[test]
fn transcodes_pcmu_to_pcma_and_back_with_the_tables() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default(), t0);
    let mut ca = LegConfig::g711(Some(addr(A)));
    ca.codec = Some(Law::Ulaw);
    ca.telephone_event_pt = Some(101);
    let mut cb = LegConfig::g711(Some(addr(B)));
    cb.codec = Some(Law::Alaw);
    cb.telephone_event_pt = Some(96);
    let a = relay.add_leg(t0, ca).unwrap();
    let b = relay.add_leg(t0, cb).unwrap();
    relay.connect(a, b).unwrap();
    // Every code once (256 bytes: more than a 20 ms frame, the same per-byte path).
    let codes: Vec<u8> = (0..=255u8).collect();
    let mut p = pkt(0, 1, 160, 0xaaaa, false);
    p.truncate(12);
    p.extend_from_slice(&codes);
    let act = relay.handle_rtp(t0, a, addr(A), &mut p);
    assert!(matches!(act, Action::Forward { via, .. } if via == b));
    assert_eq!(fields(&mut p).1, 8, "PCMU payload type mapped to PCMA");
    assert_eq!(p.len(), 12 + 256, "same length");
    let want: Vec<u8> = codes
        .iter()
        .map(|&c| g711::ULAW_TO_ALAW[c as usize])
        .collect();
    assert_eq!(&p[12..], &want[..]);
    // Back: PCMA from B comes out PCMU on A with the other table.
    let mut q = pkt(8, 1, 160, 0xbbbb, false);
    q.truncate(12);
    q.extend_from_slice(&codes);
    relay.handle_rtp(t0, b, addr(B), &mut q);
    assert_eq!(fields(&mut q).1, 0);
    let want: Vec<u8> = codes
        .iter()
        .map(|&c| g711::ALAW_TO_ULAW[c as usize])
        .collect();
    assert_eq!(&q[12..], &want[..]);
    // Telephone-event is PT-mapped but its payload is not transcoded; comfort noise (13) passes untouched.
    let mut te = pkt(101, 2, 320, 0xaaaa, false);
    te.truncate(16);
    te[12..16].copy_from_slice(&[5, 0x8a, 0x03, 0x20]);
    relay.handle_rtp(t0 + Duration::from_millis(20), a, addr(A), &mut te);
    assert_eq!(fields(&mut te).1, 96);
    assert_eq!(&te[12..], &[5, 0x8a, 0x03, 0x20]);
    let mut cn = pkt(13, 3, 480, 0xaaaa, false);
    cn.truncate(13);
    cn[12] = 0x40;
    relay.handle_rtp(t0 + Duration::from_millis(40), a, addr(A), &mut cn);
    assert_eq!((fields(&mut cn).1, cn[12]), (13, 0x40));
    // Same law on both sides again: forwarded untouched.
    relay.set_codec(b, Some(Law::Ulaw)).unwrap();
    let mut r = pkt(0, 4, 640, 0xaaaa, false);
    r.truncate(12);
    r.extend_from_slice(&codes);
    relay.handle_rtp(t0 + Duration::from_millis(60), a, addr(A), &mut r);
    assert_eq!((fields(&mut r).1, &r[12..]), (0, &codes[..]));
}

#[test]
fn transcoding_skips_csrc_extension_and_padding() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default(), t0);
    let mut ca = LegConfig::g711(Some(addr(A)));
    ca.codec = Some(Law::Alaw);
    let mut cb = LegConfig::g711(Some(addr(B)));
    cb.codec = Some(Law::Ulaw);
    let a = relay.add_leg(t0, ca).unwrap();
    let b = relay.add_leg(t0, cb).unwrap();
    relay.connect(a, b).unwrap();
    // V=2, P=1, X=1, CC=1; one CSRC, a one-word extension, 4 payload bytes, 2 padding bytes.
    let mut p = pkt(8, 1, 160, 0xaaaa, false);
    p.truncate(12);
    p[0] = 0x80 | 0x20 | 0x10 | 1;
    p.extend_from_slice(&[1, 2, 3, 4]); // CSRC
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // extension header + 1 word
    p.extend_from_slice(&[0xd5, 0x55, 0x2a, 0xaa]); // payload
    p.extend_from_slice(&[0, 2]); // padding, count 2
    relay.handle_rtp(t0, a, addr(A), &mut p);
    assert_eq!(&p[12..24], &[1, 2, 3, 4, 0xbe, 0xde, 0, 1, 9, 9, 9, 9]);
    let want: Vec<u8> = [0xd5u8, 0x55, 0x2a, 0xaa]
        .iter()
        .map(|&c| g711::ALAW_TO_ULAW[c as usize])
        .collect();
    assert_eq!(&p[24..28], &want[..]);
    assert_eq!(&p[28..], &[0, 2]);
    // A header announcing more than the packet holds: forwarded, payload left alone, no panic.
    let mut bad = pkt(8, 2, 320, 0xaaaa, false);
    bad.truncate(14);
    bad[0] = 0x80 | 0x0f;
    bad[12] = 0x11;
    relay.handle_rtp(t0, a, addr(A), &mut bad);
    assert_eq!(bad[12], 0x11);
}

#[test]
fn dtmf_events_share_a_timestamp_and_suppress_audio_until_the_last_packet() {
    use crate::media::dtmf::{Digit, DtmfSendOptions, DtmfSender, TelephoneEvent};
    let Fixture {
        mut relay,
        t0,
        a,
        b,
    } = bridged();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    // Audio A -> B for 100 ms.
    let mut last_audio = (0u16, 0u32);
    for k in 0..5u16 {
        let mut p = pkt(0, k, u32::from(k) * 160, 0xaaaa, false);
        relay.handle_rtp(ms(u64::from(k) * 20), a, addr(A), &mut p);
        let (_, _, seq, ts, _) = fields(&mut p);
        last_audio = (seq, ts);
    }
    // The digit 5 to B (PT 101): 100 ms tone in 50 ms steps = 2 start packets, 3 end packets.
    let mut tx = DtmfSender::new(ms(100), &[Digit::D5], DtmfSendOptions::default());
    let mut sent = Vec::new();
    let mut now = ms(100);
    while let Some(due) = tx.poll_timeout() {
        now = due;
        tx.handle_timeout(now);
        while let Some(d) = tx.poll_packet() {
            let mut out = [0u8; 64];
            let t = relay
                .send_event(now, b, 101, d.payload, d.marker, d.last, &mut out)
                .unwrap();
            assert_eq!((t.to, t.via, t.len), (addr(B), b, 16));
            sent.push(out[..16].to_vec());
            // Audio from A meanwhile is suppressed, counted on A.
            if !d.last {
                let mut p = pkt(0, 9, 9 * 160, 0xaaaa, false);
                assert_eq!(
                    relay.handle_rtp(now, a, addr(A), &mut p),
                    Action::Drop(DropReason::Dtmf)
                );
            }
        }
    }
    assert_eq!(sent.len(), 5);
    assert_eq!(relay.stats(a).unwrap().dropped(DropReason::Dtmf), 4);
    let ssrc = relay.outgoing_ssrc(b).unwrap();
    let ts0 = fields(&mut sent[0]).3;
    for (i, p) in sent.iter_mut().enumerate() {
        let (m, pt, seq, ts, s) = fields(p);
        assert_eq!((m, pt, ts, s), (i == 0, 101, ts0, ssrc), "packet {i}");
        assert_eq!(seq, last_audio.0.wrapping_add(1 + i as u16), "packet {i}");
        let ev = TelephoneEvent::parse(&p[12..]).unwrap();
        assert_eq!((ev.event, ev.end), (5, i >= 2), "packet {i}");
        assert_eq!(ev.duration, [400, 800, 800, 800, 800][i], "packet {i}");
    }
    // The event starts where the stream is: 100 ms after the last audio at 80 ms is at least 20 ms on.
    assert!(ts0.wrapping_sub(last_audio.1) >= 160);
    // After the last packet, audio resumes re-anchored, after the event's timestamp.
    let mut p = pkt(0, 10, 10 * 160, 0xaaaa, false);
    assert!(matches!(
        relay.handle_rtp(now + Duration::from_millis(20), a, addr(A), &mut p),
        Action::Forward { .. }
    ));
    let (m, pt, seq, ts, _) = fields(&mut p);
    assert!(m);
    assert_eq!((pt, seq), (0, last_audio.0.wrapping_add(6)));
    // Timed from the event's start (100 ms), not from its last packet (300 ms): 220 ms later.
    assert_eq!(now, ms(300));
    assert_eq!(ts.wrapping_sub(ts0), 1760);
}

#[test]
fn set_remote_unlatches_once_and_the_leg_latches_to_the_new_address() {
    let Fixture {
        mut relay, t0, a, ..
    } = bridged();
    // Not latched yet: changing the address reports nothing.
    relay.set_remote(a, Some(addr(A)), None).unwrap();
    assert_eq!(relay.poll_event(), None);
    let mut p = pkt(0, 1, 0, 1, false);
    assert!(matches!(
        relay.handle_rtp(t0, a, addr(A), &mut p),
        Action::Forward { .. }
    ));
    assert!(matches!(relay.poll_event(), Some(Event::Latched { .. })));
    // Re-INVITE to a new address: the latch is cleared and reported.
    let moved = addr("192.0.2.7:4100");
    relay.set_remote(a, Some(moved), None).unwrap();
    assert_eq!(relay.poll_event(), Some(Event::Unlatched { leg: a }));
    assert_eq!(relay.latched(a), None);
    // The old source is no longer acceptable (SDP latching), the new one latches.
    let mut p = pkt(0, 2, 160, 1, false);
    assert_eq!(
        relay.handle_rtp(t0, a, addr(A), &mut p),
        Action::Drop(DropReason::NotLatched)
    );
    let mut p = pkt(0, 3, 320, 1, false);
    assert!(matches!(
        relay.handle_rtp(t0, a, moved, &mut p),
        Action::Forward { .. }
    ));
    assert_eq!(
        relay.poll_event(),
        Some(Event::Latched {
            leg: a,
            addr: moved
        })
    );
}

#[test]
fn a_dtmf_event_whose_last_packet_has_no_destination_still_ends() {
    let Fixture {
        mut relay,
        t0,
        a,
        b,
    } = bridged();
    let mut out = [0u8; 64];
    relay
        .send_event(t0, b, 101, [5, 0, 1, 0x90], true, false, &mut out)
        .unwrap();
    // B's peer goes away mid-event (a re-INVITE without an address): the end packet cannot be sent.
    relay.set_remote(b, None, None).unwrap();
    assert_eq!(
        relay.send_event(t0, b, 101, [5, 0x80, 3, 0x20], false, true, &mut out),
        Err(RelayError::NoDestination)
    );
    // Once B has an address again, audio from A reaches it: the event is over, not muting B for good.
    relay.set_remote(b, Some(addr(B)), None).unwrap();
    let mut p = pkt(0, 1, 160, 0xaaaa, false);
    assert!(matches!(
        relay.handle_rtp(t0 + Duration::from_millis(20), a, addr(A), &mut p),
        Action::Forward { .. }
    ));
}
