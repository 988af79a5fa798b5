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

criterion_group!(benches, bench);
criterion_main!(benches);
