//! Media-plane benchmarks: one PlayerSet tick for 1 000 players, G.711 per frame, SDP parse/answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rappel::media::g711::{self, Law};
use rappel::media::player::{PlayItem, PlayerId, PlayerOptions, PlayerSet, Playlist};
use rappel::media::tone::{Country, ToneSpec};
use rappel::sdp::{Codec, Direction, LocalSession, Sdp};

fn player_tick(c: &mut Criterion) {
    let epoch = Instant::now();
    let mut set = PlayerSet::new(epoch);
    let music = ToneSpec::ringback(Country::Us).render();
    for i in 0..1000u64 {
        let pl = Playlist::new().then(PlayItem::Loop {
            clip: music.clone(),
            duration: None,
        });
        let law = if i % 2 == 0 { Law::Ulaw } else { Law::Alaw };
        set.start(epoch, PlayerId(i), pl, PlayerOptions::new(law))
            .unwrap();
    }
    let mut k = 0u32;
    c.bench_function("player_tick_1000_players", |b| {
        b.iter(|| {
            set.handle_timeout(epoch + Duration::from_millis(20) * k);
            k += 1;
            let mut n = 0;
            while let Some((_, f)) = set.poll_frame() {
                n += f.payload.len();
            }
            black_box(n)
        })
    });
}

fn g711(c: &mut Criterion) {
    let pcm: Vec<i16> = (0..160).map(|i| (i * 397 % 65536 - 32768) as i16).collect();
    c.bench_function("g711_encode_ulaw_160", |b| {
        let mut out = Vec::with_capacity(160);
        b.iter(|| {
            out.clear();
            Law::Ulaw.encode_into(black_box(&pcm), &mut out);
            black_box(out.len())
        })
    });
    c.bench_function("g711_transcode_ulaw_alaw_160", |b| {
        let mut payload = [0x55u8; 160];
        b.iter(|| {
            g711::transcode_in_place(Law::Ulaw, Law::Alaw, black_box(&mut payload));
        })
    });
}

fn sdp(c: &mut Criterion) {
    let offer = LocalSession::new(1, "10.0.0.1:4000".parse::<SocketAddr>().unwrap())
        .offer(
            &[Codec::pcmu(), Codec::pcma(), Codec::telephone_event(101)],
            Direction::SendRecv,
        )
        .to_bytes();
    c.bench_function("sdp_parse_offer", |b| {
        b.iter(|| Sdp::parse(black_box(&offer)).unwrap())
    });
    let parsed = Sdp::parse(&offer).unwrap();
    let mut s = LocalSession::new(2, "10.0.0.2:5000".parse::<SocketAddr>().unwrap());
    let supported = [Codec::pcma(), Codec::pcmu(), Codec::telephone_event(101)];
    c.bench_function("sdp_answer", |b| {
        b.iter(|| {
            s.answer(black_box(&parsed), &supported, Direction::SendRecv)
                .unwrap()
        })
    });
}

criterion_group!(benches, player_tick, g711, sdp);
criterion_main!(benches);
