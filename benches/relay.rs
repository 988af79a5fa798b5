//! Per-packet cost of the relay's sans-IO hot path: `Relay::handle_rtp` on a connected, latched leg
//! (lookup, checks, counters, receiver stats, continuity rewrite, PT map, in-place header write), and the same
//! between a PCMU and a PCMA leg (plus the 160-byte in-place PCMU→PCMA table rewrite of the payload).
//! Each iteration also restores the input header of a packet used 32 iterations later (a 12-byte write, a few
//! ns), because handling rewrote it in place.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rappel::media::g711::Law;
use rappel::media::relay::{Action, LegConfig, Relay, RelayConfig};
use rappel::media::rtp::write_header;

fn bench(c: &mut Criterion) {
    let t0 = Instant::now();
    let a_addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let b_addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    for (legs, transcode) in [(2usize, false), (4000, false), (2, true)] {
        let mut relay = Relay::new(
            RelayConfig {
                port_min: 10000,
                port_max: 60000,
                ..Default::default()
            },
            t0,
        );
        let mut pairs = Vec::new();
        for _ in 0..legs / 2 {
            let (mut ca, mut cb) = (LegConfig::g711(Some(a_addr)), LegConfig::g711(Some(b_addr)));
            if transcode {
                (ca.codec, cb.codec) = (Some(Law::Ulaw), Some(Law::Alaw));
            }
            let a = relay.add_leg(t0, ca).unwrap();
            let b = relay.add_leg(t0, cb).unwrap();
            relay.connect(a, b).unwrap();
            pairs.push(a);
        }
        // A ring of packets: the header of a slot is restored 32 iterations before it is used again, so the
        // measurement does not include store-to-load forwarding stalls a kernel-filled buffer would not have.
        const RING: usize = 64;
        let mut ring = vec![[0u8; 172]; RING];
        for (k, p) in ring.iter_mut().enumerate() {
            write_header(
                p.first_chunk_mut().unwrap(),
                false,
                0,
                k as u16,
                k as u32 * 160,
                0x1234,
            );
        }
        let mut seq = 0u16;
        let mut i = 0usize;
        let mut r = 0usize;
        let now = t0 + Duration::from_millis(10);
        let name = if transcode {
            format!("handle_rtp_transcode/{legs}_legs")
        } else {
            format!("handle_rtp/{legs}_legs")
        };
        g.bench_function(name, |bch| {
            bch.iter(|| {
                seq = seq.wrapping_add(1);
                let ahead = seq.wrapping_add(RING as u16 / 2);
                let restore = &mut ring[(r + RING / 2) % RING];
                write_header(
                    restore.first_chunk_mut().unwrap(),
                    false,
                    0,
                    ahead,
                    u32::from(ahead) * 160,
                    0x1234,
                );
                let pkt = &mut ring[r];
                r = (r + 1) % RING;
                let leg = pairs[i];
                i += 1;
                if i == pairs.len() {
                    i = 0;
                }
                let act = relay.handle_rtp(
                    now,
                    black_box(leg),
                    black_box(a_addr),
                    black_box(&mut pkt[..]),
                );
                // Consume what a driver consumes (destination and sending leg) without spilling the whole enum.
                match act {
                    Action::Forward { to, via, .. } => black_box((to.port(), via.index())),
                    _ => panic!("packet not forwarded"),
                }
            })
        });
    }
    g.finish();
}

/// The relay thread's cost of recording: `handle_rtp` on a 2-leg bridge with the leg's record flag off (one
/// bool read) and on with the packet copied into a recording's ring ([`RecordTap::push`]). The ring is drained
/// outside the timed part every 128 packets (the writer thread does that in the engine), so every push takes
/// the successful path, not the cheaper "ring full" drop. Also the writer's per-packet cost
/// (`Recorder::push_rtp`: decode and place 160 samples) into memory.
fn bench_record(c: &mut Criterion) {
    use rappel::media::record::{Recorder, Side};
    use rappel::net::record_io::taps;
    let t0 = Instant::now();
    let a_addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let b_addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let mut g = c.benchmark_group("relay_record");
    g.throughput(Throughput::Elements(1));
    for record in [false, true] {
        let mut relay = Relay::new(RelayConfig::default(), t0);
        let mut ca = LegConfig::g711(Some(a_addr));
        ca.record = record;
        let a = relay.add_leg(t0, ca).unwrap();
        let b = relay.add_leg(t0, LegConfig::g711(Some(b_addr))).unwrap();
        relay.connect(a, b).unwrap();
        let (tap, _agent, rx) = taps(256);
        let mut sink =
            Recorder::new(std::io::Cursor::new(Vec::new()), t0, Law::Ulaw, Law::Ulaw).unwrap();
        let mut pkt = [0u8; 172];
        let mut seq = 0u16;
        let now = t0 + Duration::from_millis(10);
        let name = if record {
            "handle_rtp/tap_on"
        } else {
            "handle_rtp/tap_off"
        };
        g.bench_function(name, |bch| {
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(128);
                    left -= n;
                    let start = Instant::now();
                    for _ in 0..n {
                        seq = seq.wrapping_add(1);
                        write_header(
                            pkt.first_chunk_mut().unwrap(),
                            false,
                            0,
                            seq,
                            u32::from(seq) * 160,
                            0x1234,
                        );
                        match relay.handle_rtp(now, black_box(a), black_box(a_addr), &mut pkt[..]) {
                            Action::Forward { to, via, record } => {
                                if record {
                                    tap.push(now, &pkt);
                                }
                                black_box((to.port(), via.index()));
                            }
                            _ => panic!("packet not forwarded"),
                        }
                    }
                    total += start.elapsed();
                    // The writer's work, untimed; a fresh recorder keeps the in-memory file small.
                    let _ = rx.drain(&mut sink);
                    sink =
                        Recorder::new(std::io::Cursor::new(Vec::new()), t0, Law::Ulaw, Law::Ulaw)
                            .unwrap();
                }
                assert_eq!(tap.dropped(), 0);
                total
            })
        });
    }
    // The writer's side: one 20 ms packet per side, in order, into an in-memory WAV.
    let mut rec =
        Recorder::new(std::io::Cursor::new(Vec::new()), t0, Law::Ulaw, Law::Ulaw).unwrap();
    let mut pkt = [0x55u8; 172];
    let mut k = 0u32;
    let mut base = t0;
    g.bench_function("writer/push_rtp", |bch| {
        bch.iter(|| {
            k += 1;
            let side = if k % 2 == 0 {
                Side::Visitor
            } else {
                Side::Agent
            };
            let frame = k / 2;
            write_header(
                pkt.first_chunk_mut().unwrap(),
                false,
                0,
                frame as u16,
                frame * 160,
                7,
            );
            let at = base + Duration::from_millis(u64::from(frame) * 20);
            rec.push_rtp(at, side, black_box(&pkt)).unwrap();
            if k % 100_000 == 0 {
                // Bound the in-memory file.
                base = at;
                rec = Recorder::new(std::io::Cursor::new(Vec::new()), base, Law::Ulaw, Law::Ulaw)
                    .unwrap();
                k = 0;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_record);
criterion_main!(benches);
