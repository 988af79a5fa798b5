//! Media packets from the network: RTP header, RTCP compound and RFC 4733 telephone-event parsing never panic,
//! and the sans-IO relay's per-packet entry points (`handle_rtp`, `handle_rtcp`) fed arbitrary packets from
//! arbitrary sources on a set-up bridge never panic, never change a packet's length and only forward to a bridged
//! leg. Housekeeping (`handle_timeout`, `poll_rtcp`, events) runs between packets as simulated time advances.
//!
//! Input: records of `[op, source, len, bytes...]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rappel::media::dtmf::{DtmfReceiver, TelephoneEvent};
use rappel::media::relay::{Action, LegConfig, Latching, Relay, RelayConfig, Source};
use rappel::media::rtp::{parse_rtcp, RtpHeader};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SOURCES: [&str; 6] = [
    "198.51.100.1:4000",
    "198.51.100.1:4001",
    "198.51.100.2:5000",
    "198.51.100.2:5001",
    "203.0.113.9:6000",
    "[2001:db8::1]:4000",
];

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let addr = |i: u8| -> SocketAddr { SOURCES[usize::from(i) % SOURCES.len()].parse().unwrap() };
    let cfg = RelayConfig { port_min: 40000, port_max: 40007, seed: 1, ..RelayConfig::default() };
    let mut relay = Relay::new(cfg, t0);
    let mut a_cfg = LegConfig::g711(Some(addr(0)));
    a_cfg.latching = Latching::Learn;
    a_cfg.telephone_event_pt = Some(101);
    a_cfg.rtcp_mux = true;
    a_cfg.record = true;
    let mut b_cfg = LegConfig::g711(Some(addr(2)));
    b_cfg.telephone_event_pt = Some(96);
    let a = relay.add_leg(t0, a_cfg).unwrap();
    let b = relay.add_leg(t0, b_cfg).unwrap();
    relay.connect(a, b).unwrap();
    let legs = [a, b];
    let mut dtmf = DtmfReceiver::new(8000);
    let mut out = [0u8; 1500];

    let mut rest = data;
    while let [op, src, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (pkt, next) = tail.split_at(n);
        rest = next;
        let from = addr(*src);
        let leg = legs[usize::from(op & 1)];

        // The parsers on their own.
        let mut buf = pkt.to_vec();
        if let Ok(h) = RtpHeader::new(&mut buf) {
            let _ = (h.payload_type(), h.marker(), h.sequence(), h.timestamp(), h.ssrc());
            if let Some(p) = pkt.get(12..) {
                let _ = TelephoneEvent::parse(p);
                let _ = dtmf.handle_packet(h.timestamp(), p);
            }
        }
        for item in parse_rtcp(pkt).take(64) {
            let _ = item;
        }
        while dtmf.poll_event().is_some() {}

        match (op >> 1) % 4 {
            0 | 1 => {
                let mut buf = pkt.to_vec();
                match relay.handle_rtp(now, leg, from, &mut buf) {
                    Action::Forward { via, .. } => {
                        assert_eq!(buf.len(), pkt.len(), "rewritten in place");
                        assert!(legs.contains(&via) && via != leg, "forwarded from the other leg");
                    }
                    Action::Drop(_) | Action::Consumed => {}
                }
            }
            2 => {
                let _ = relay.handle_rtcp(now, leg, from, pkt);
            }
            _ => {
                // Time passes; sometimes the bridge changes.
                now += Duration::from_millis(u64::from(*src) * 40);
                match op >> 3 {
                    1 => {
                        let _ = relay.set_source(leg, Source::Silence);
                    }
                    2 => {
                        let _ = relay.connect(a, b);
                    }
                    3 => {
                        let _ = relay.set_hold(now, leg, true);
                    }
                    _ => {}
                }
                relay.handle_timeout(now);
                while let Some(t) = relay.poll_rtcp(now, &mut out) {
                    assert!(t.len <= out.len());
                    let _ = parse_rtcp(&out[..t.len]).count();
                }
                dtmf.flush();
            }
        }
        while relay.poll_event().is_some() {}
    }
});
