//! PlayerSet pacing in simulated time.

use std::time::{Duration, Instant};

use rappel::media::g711::{self, Law};
use rappel::media::player::{
    Clip, PlayItem, PlayerError, PlayerEvent, PlayerId, PlayerOptions, PlayerSet, Playlist,
};
use rappel::media::tone::{goertzel_power, Country, ToneSpec};
use rappel::media::wav::{build_wav, Wav, WavFormat};

const MS20: Duration = Duration::from_millis(20);

fn ramp(n: usize) -> Clip {
    Clip::from_pcm((0..n).map(|i| (i as i16).wrapping_mul(7)).collect())
}

#[test]
fn thousand_players_one_timer_fifty_frames_per_second() {
    let epoch = Instant::now();
    let mut set = PlayerSet::new(epoch);
    let music = ToneSpec::ringback(Country::Us).render();
    for i in 0..1000u64 {
        // Staggered starts inside the first tick interval: all share tick 1.
        let start = epoch + Duration::from_micros(1 + i * 19);
        let law = if i % 2 == 0 { Law::Ulaw } else { Law::Alaw };
        let pl = Playlist::new().then(PlayItem::Loop {
            clip: music.clone(),
            duration: None,
        });
        set.start(start, PlayerId(i), pl, PlayerOptions::new(law))
            .unwrap();
    }
    let mut counts = vec![0u32; 1000];
    let mut wakeups = 0u32;
    // 4 s simulated keeps this debug-build test short; the 10-minute drift test below uses fewer players.
    let end = epoch + Duration::from_secs(4) + MS20 / 2;
    while let Some(t) = set.poll_timeout() {
        if t > end {
            break;
        }
        wakeups += 1;
        // Every wake-up is exactly on the grid.
        assert_eq!(t, epoch + MS20 * wakeups);
        set.handle_timeout(t);
        while let Some((id, f)) = set.poll_frame() {
            assert_eq!(f.payload.len(), 160);
            assert_eq!(f.due, t);
            assert_eq!(f.timestamp, (wakeups - 1) * 160);
            assert_eq!(f.new_item, wakeups == 1);
            counts[id.0 as usize] += 1;
        }
    }
    // 4 s: ticks 1..=200 (the first tick after start is tick 1).
    assert_eq!(wakeups, 200);
    assert!(
        counts.iter().all(|&c| c == 200),
        "every player sends exactly 50 frames per second"
    );
    assert_eq!(set.poll_event(), None);
}

#[test]
fn timing_exact_over_ten_minutes() {
    let epoch = Instant::now();
    let mut set = PlayerSet::new(epoch);
    let start = epoch + Duration::from_millis(3);
    let pl = Playlist::new().then(PlayItem::Loop {
        clip: ramp(1234),
        duration: None,
    });
    set.start(
        start,
        PlayerId(1),
        pl.clone(),
        PlayerOptions::new(Law::Ulaw),
    )
    .unwrap();
    let opts30 = PlayerOptions {
        law: Law::Alaw,
        ptime: Duration::from_millis(40),
    };
    set.start(start, PlayerId(2), pl, opts30).unwrap();
    let mut n1 = 0u64;
    let mut n2 = 0u64;
    let mut last = epoch;
    while let Some(t) = set.poll_timeout() {
        if t > epoch + Duration::from_secs(600) {
            break;
        }
        assert!(t > last);
        last = t;
        set.handle_timeout(t);
        while let Some((id, f)) = set.poll_frame() {
            if id == PlayerId(1) {
                n1 += 1;
                assert_eq!(f.due, epoch + MS20 * n1 as u32);
                // Content follows the looped clip exactly.
                let first = ((n1 - 1) * 160 % 1234) as usize;
                assert_eq!(
                    g711::ulaw_decode(f.payload[0]),
                    g711::ulaw_decode(g711::ulaw_encode(ramp(1234).pcm()[first]))
                );
            } else {
                n2 += 1;
                assert_eq!(f.payload.len(), 320);
                assert_eq!(f.timestamp, (n2 as u32 - 1) * 320);
                assert_eq!(
                    f.due,
                    epoch + MS20 + Duration::from_millis(40) * (n2 as u32 - 1)
                );
            }
        }
    }
    assert_eq!(n1, 600 * 50);
    assert_eq!(n2, 600 * 25);
}

#[test]
fn announcement_then_music_then_finish() {
    let epoch = Instant::now();
    let mut set = PlayerSet::new(epoch);
    // Announcement as a generated WAV (no binary blob): 250 ms of a 440 Hz tone in A-law.
    let ann_pcm = ToneSpec {
        frequencies: vec![440.0],
        amplitude: 0.5,
        cadence: vec![Duration::from_millis(250)],
    }
    .render_pcm();
    let mut ann_alaw = Vec::new();
    Law::Alaw.encode_into(&ann_pcm, &mut ann_alaw);
    let path = std::env::temp_dir().join(format!("rappel-{}-announcement.wav", std::process::id()));
    std::fs::write(
        &path,
        build_wav(WavFormat::G711(Law::Alaw), 1, 8000, &ann_alaw),
    )
    .unwrap();
    let wav = Wav::read_from(std::fs::File::open(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).ok();
    let ann = Clip::from_wav(&wav).unwrap();
    assert_eq!(ann.duration(), Duration::from_millis(250));
    let music = ToneSpec {
        frequencies: vec![1000.0],
        amplitude: 0.5,
        cadence: vec![Duration::from_millis(100)],
    }
    .render();
    let pl = Playlist::new()
        .then(PlayItem::Once(ann))
        .then(PlayItem::Silence(Duration::from_millis(50)))
        .then(PlayItem::Loop {
            clip: music,
            duration: Some(Duration::from_millis(300)),
        });
    set.start(epoch, PlayerId(9), pl, PlayerOptions::new(Law::Ulaw))
        .unwrap();
    let mut frames = Vec::new();
    while let Some(t) = set.poll_timeout() {
        set.handle_timeout(t);
        while let Some((_, f)) = set.poll_frame() {
            frames.push(f);
        }
    }
    // 250 + 50 + 300 = 600 ms = 30 frames, the first at the epoch itself.
    assert_eq!(frames.len(), 30);
    assert_eq!(frames[0].due, epoch);
    assert_eq!(set.poll_event(), Some(PlayerEvent::Finished(PlayerId(9))));
    assert_eq!(set.poll_event(), None);
    assert!(set.is_empty());
    // Markers: frame 0 (start), frame 12 (silence starts mid-frame at 250 ms = 12.5 frames), frame 15 (music).
    let markers: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.new_item)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(markers, vec![0, 12, 15]);
    let pcm = |f: &rappel::media::player::Frame| {
        f.payload
            .iter()
            .map(|&b| g711::ulaw_decode(b))
            .collect::<Vec<_>>()
    };
    let ann_part: Vec<i16> = frames[..12].iter().flat_map(pcm).collect();
    let music_part: Vec<i16> = frames[15..].iter().flat_map(pcm).collect();
    assert!(goertzel_power(&ann_part, 440.0) > 100.0 * goertzel_power(&ann_part, 1000.0));
    assert!(goertzel_power(&music_part, 1000.0) > 100.0 * goertzel_power(&music_part, 440.0));
    assert!(pcm(&frames[13]).iter().all(|&s| s == 0), "silence");
}

#[test]
fn late_timeout_catches_up_within_bound_then_skips() {
    let epoch = Instant::now();
    let mut set = PlayerSet::new(epoch);
    let pl = Playlist::new().then(PlayItem::Loop {
        clip: ramp(8000),
        duration: None,
    });
    set.start(epoch, PlayerId(1), pl, PlayerOptions::new(Law::Ulaw))
        .unwrap();
    set.handle_timeout(epoch);
    assert_eq!(set.poll_frame().unwrap().1.timestamp, 0);
    // 50 ms late for tick 1 → ticks 1 and 2 (3 is not due yet) both emitted.
    set.handle_timeout(epoch + Duration::from_millis(50));
    let f: Vec<_> = std::iter::from_fn(|| set.poll_frame())
        .map(|(_, f)| f)
        .collect();
    assert_eq!(
        f.iter().map(|f| f.timestamp).collect::<Vec<_>>(),
        vec![160, 320]
    );
    assert!(f.iter().all(|f| !f.new_item));
    assert_eq!(set.poll_timeout(), Some(epoch + MS20 * 3));
    // 1 s late: only the last 5 ticks (46..=50) come out; ticks 3..=45 are skipped but counted.
    set.handle_timeout(epoch + Duration::from_millis(1000));
    let f: Vec<_> = std::iter::from_fn(|| set.poll_frame())
        .map(|(_, f)| f)
        .collect();
    assert_eq!(f.len(), 5);
    assert_eq!(f[0].timestamp, 46 * 160);
    assert_eq!(f[0].due, epoch + MS20 * 46);
    assert!(f[0].new_item && !f[1].new_item);
    // The audio position advanced with the skipped ticks: the first sample is sample 46*160 of the ramp.
    assert_eq!(
        f[0].payload[0],
        g711::ulaw_encode(ramp(8000).pcm()[46 * 160])
    );
    assert_eq!(set.poll_timeout(), Some(epoch + MS20 * 51));
}

#[test]
fn skipping_past_the_end_finishes() {
    let epoch = Instant::now();
    let mut set = PlayerSet::new(epoch);
    set.start(
        epoch,
        PlayerId(3),
        Playlist::new().then(PlayItem::Silence(Duration::from_millis(100))),
        PlayerOptions::new(Law::Alaw),
    )
    .unwrap();
    set.handle_timeout(epoch + Duration::from_secs(5));
    assert_eq!(set.poll_frame(), None);
    assert_eq!(set.poll_event(), Some(PlayerEvent::Finished(PlayerId(3))));
    assert_eq!(set.poll_timeout(), None);
}

#[test]
fn start_stop_and_errors() {
    let epoch = Instant::now();
    let mut set = PlayerSet::new(epoch);
    assert!(matches!(
        set.start(
            epoch,
            PlayerId(1),
            Playlist::new(),
            PlayerOptions {
                law: Law::Ulaw,
                ptime: Duration::from_millis(30)
            }
        ),
        Err(PlayerError::BadPtime { .. })
    ));
    // Empty playlist and empty looped clip finish at once.
    set.start(
        epoch,
        PlayerId(1),
        Playlist::new(),
        PlayerOptions::new(Law::Ulaw),
    )
    .unwrap();
    let empty_loop = Playlist::new().then(PlayItem::Loop {
        clip: Clip::from_pcm(vec![]),
        duration: None,
    });
    set.start(
        epoch,
        PlayerId(2),
        empty_loop,
        PlayerOptions::new(Law::Ulaw),
    )
    .unwrap();
    assert_eq!(set.poll_event(), Some(PlayerEvent::Finished(PlayerId(1))));
    assert_eq!(set.poll_event(), Some(PlayerEvent::Finished(PlayerId(2))));
    assert_eq!(set.poll_timeout(), None);
    let forever = Playlist::new().then(PlayItem::Loop {
        clip: ramp(10),
        duration: None,
    });
    set.start(
        epoch + Duration::from_millis(5),
        PlayerId(3),
        forever,
        PlayerOptions::new(Law::Ulaw),
    )
    .unwrap();
    assert_eq!(set.poll_timeout(), Some(epoch + MS20));
    assert!(set.stop(PlayerId(3)));
    assert!(!set.stop(PlayerId(3)));
    assert_eq!(set.poll_timeout(), None);
    assert_eq!(set.poll_event(), None);
}

/// The full-scale version: 1 000 players for 10 simulated minutes (30 M frames). Too slow for a debug
/// build; run with `cargo test --release --test media_player -- --ignored`.
#[test]
#[ignore]
fn thousand_players_ten_minutes_full_scale() {
    let epoch = Instant::now();
    let mut set = PlayerSet::new(epoch);
    let music = ToneSpec::ringback(Country::Uk).render();
    for i in 0..1000u64 {
        let pl = Playlist::new().then(PlayItem::Loop {
            clip: music.clone(),
            duration: None,
        });
        set.start(
            epoch + Duration::from_micros(1 + 7 * i),
            PlayerId(i),
            pl,
            PlayerOptions::new(Law::Ulaw),
        )
        .unwrap();
    }
    let mut counts = vec![0u32; 1000];
    let mut wakeups = 0u32;
    let end = epoch + Duration::from_secs(600);
    while let Some(t) = set.poll_timeout() {
        if t > end {
            break;
        }
        wakeups += 1;
        assert_eq!(t, epoch + MS20 * wakeups);
        set.handle_timeout(t);
        while let Some((id, f)) = set.poll_frame() {
            assert_eq!((f.due, f.timestamp), (t, (wakeups - 1) * 160));
            counts[id.0 as usize] += 1;
        }
    }
    assert_eq!(wakeups, 30_000);
    assert!(counts.iter().all(|&c| c == 30_000));
}
