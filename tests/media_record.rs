//! Recorder: two sides with different tones, gaps and jitter, written to a temp file and read back.

use std::fs::OpenOptions;
use std::time::{Duration, Instant};

use rappel::media::g711::Law;
use rappel::media::record::{Recorder, Side};
use rappel::media::tone::{goertzel_power, ToneSpec};
use rappel::media::wav::{Wav, WavFormat};

fn tone(freq: f64, secs: u64) -> Vec<i16> {
    ToneSpec {
        frequencies: vec![freq],
        amplitude: 0.4,
        cadence: vec![Duration::from_secs(secs)],
    }
    .render_pcm()
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("rappel-{}-{}-{name}", std::process::id(), line!()))
}

#[test]
fn stereo_recording_left_visitor_right_agent() {
    let path = temp_path("rec.wav");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let t0 = Instant::now();
    let mut rec = Recorder::new(file, t0, Law::Ulaw, Law::Alaw).unwrap();
    let visitor = tone(440.0, 3);
    let agent = tone(1000.0, 3);
    // 3 s of packets; the agent starts 1 s later; visitor packet 50 is lost; arrival jitter up to 30 ms;
    // visitor timestamps start at a random-looking base near the wrap.
    let vbase = u32::MAX - 5000;
    let abase = 123_456u32;
    let mut events = Vec::new();
    for k in 0..150u32 {
        let jitter = Duration::from_millis((k as u64 * 7) % 30);
        if k != 50 {
            events.push((
                MS(20 * k) + jitter,
                Side::Visitor,
                vbase.wrapping_add(k * 160),
                k as usize,
            ));
        }
        if k >= 50 {
            events.push((
                MS(20 * k) + jitter,
                Side::Agent,
                abase.wrapping_add(k * 160),
                k as usize,
            ));
        }
    }
    events.sort_by_key(|e| e.0);
    for (at, side, ts, k) in events {
        let (pcm, law) = match side {
            Side::Visitor => (&visitor, Law::Ulaw),
            Side::Agent => (&agent, Law::Alaw),
        };
        let mut payload = Vec::new();
        law.encode_into(&pcm[k * 160..(k + 1) * 160], &mut payload);
        rec.push(t0 + at, side, ts, &payload).unwrap();
    }
    rec.advance(t0 + MS(3100)).unwrap();
    drop(rec.finish().unwrap());

    let wav = Wav::read_from(std::fs::File::open(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(
        (wav.channels, wav.sample_rate, wav.format),
        (2, 8000, WavFormat::Pcm16)
    );
    let pcm = wav.to_pcm();
    let left: Vec<i16> = pcm.iter().step_by(2).copied().collect();
    let right: Vec<i16> = pcm.iter().skip(1).step_by(2).copied().collect();
    // The visitor's first packet is anchored at its arrival (t = 0), so the file holds ~3 s.
    assert!(
        (24000..=24000 + 800).contains(&left.len()),
        "length {}",
        left.len()
    );
    let l = &left[..24000];
    let r = &right[..24000];
    assert!(goertzel_power(l, 440.0) > 100.0 * goertzel_power(l, 1000.0));
    assert!(goertzel_power(&r[8000..], 1000.0) > 100.0 * goertzel_power(&r[8000..], 440.0));
    // Agent silent for the first second (up to its first packet's arrival jitter).
    assert!(r[..8000].iter().all(|&s| s == 0));
    assert!(r[8000 + 240..8000 + 400].iter().any(|&s| s != 0));
    // The lost visitor packet is a 20 ms hole of silence; audio either side of it is in place.
    assert!(l[50 * 160..51 * 160].iter().all(|&s| s == 0));
    assert!(
        l[49 * 160..50 * 160].iter().any(|&s| s != 0)
            && l[51 * 160..52 * 160].iter().any(|&s| s != 0)
    );
    // Jittered arrival did not move samples: left equals the source (within G.711 error) outside the hole.
    let err = (0..24000)
        .filter(|i| !(8000..8160).contains(i))
        .map(|i| (l[i] as i32 - visitor[i] as i32).abs())
        .max()
        .unwrap();
    assert!(err <= 13107 / 16 + 16, "max error {err}");
}

#[test]
fn timestamp_jump_reanchors_and_late_packets_drop() {
    let mut out = std::io::Cursor::new(Vec::new());
    let t0 = Instant::now();
    {
        let mut rec = Recorder::new(&mut out, t0, Law::Ulaw, Law::Ulaw).unwrap();
        let loud = vec![0x80u8; 160]; // μ-law max positive
        rec.push(t0, Side::Visitor, 1000, &loud).unwrap();
        // New SSRC: timestamp jumps by hours; placed at its arrival (500 ms), not hours away.
        rec.push(t0 + MS(500), Side::Visitor, 1000 + 8000 * 3600, &loud)
            .unwrap();
        // A packet for a position already written (older than the jitter window) is dropped.
        rec.advance(t0 + MS(2000)).unwrap();
        rec.push(t0 + MS(2000), Side::Agent, 5, &loud).unwrap();
        rec.push(t0 + MS(2000), Side::Agent, 5u32.wrapping_sub(8000), &loud)
            .unwrap();
        assert_eq!(rec.samples_written(), 2000 * 8 - 1600);
        rec.finish().unwrap();
    }
    let wav = Wav::parse(out.get_ref()).unwrap();
    let pcm = wav.to_pcm();
    let left: Vec<i16> = pcm.iter().step_by(2).copied().collect();
    let right: Vec<i16> = pcm.iter().skip(1).step_by(2).copied().collect();
    assert_eq!(left.len(), 16000 + 160);
    assert!(left[..160].iter().all(|&s| s == 32124));
    assert!(left[160..4000].iter().all(|&s| s == 0));
    assert!(left[4000..4160].iter().all(|&s| s == 32124));
    assert!(right[..16000].iter().all(|&s| s == 0));
    assert!(right[16000..].iter().all(|&s| s == 32124));
}

#[allow(non_snake_case)]
fn MS(n: u32) -> Duration {
    Duration::from_millis(n as u64)
}

/// A visitor on PCMU bridged to an agent on PCMA: the relay reports the visitor's packets for recording
/// after transcoding (PCMA bytes, PT 8). `push_rtp` decodes them as A-law, though the visitor's track is μ-law.
#[test]
fn transcoded_packets_are_decoded_with_their_own_law() {
    use rappel::media::g711::{alaw_decode, ulaw_decode};
    use rappel::media::relay::{Action, LegConfig, Relay, RelayConfig};
    use rappel::media::rtp::write_header;
    let t0 = Instant::now();
    let (va, aa) = (
        "192.0.2.1:4000".parse().unwrap(),
        "192.0.2.2:5000".parse().unwrap(),
    );
    let mut relay = Relay::new(RelayConfig::default(), t0);
    let mut cv = LegConfig::g711(Some(va));
    cv.codec = Some(Law::Ulaw);
    cv.record = true;
    cv.telephone_event_pt = Some(101);
    let mut ca = LegConfig::g711(Some(aa));
    ca.codec = Some(Law::Alaw);
    let v = relay.add_leg(t0, cv).unwrap();
    let a = relay.add_leg(t0, ca).unwrap();
    relay.connect(v, a).unwrap();

    let mut out = std::io::Cursor::new(Vec::new());
    // 160 μ-law codes: a ramp through the positive half.
    let codes: Vec<u8> = (0..160u32).map(|i| 0x80 + (i % 128) as u8).collect();
    {
        let mut rec = Recorder::new(&mut out, t0, Law::Ulaw, Law::Alaw).unwrap();
        let mut pkt = vec![0u8; 12];
        write_header(pkt.first_chunk_mut().unwrap(), false, 0, 1, 160, 7);
        pkt.extend_from_slice(&codes);
        let act = relay.handle_rtp(t0, v, va, &mut pkt);
        assert!(matches!(act, Action::Forward { record: true, .. }));
        assert_eq!(
            pkt[1] & 0x7f,
            8,
            "the reported packet is the transcoded one"
        );
        rec.push_rtp(t0, Side::Visitor, &pkt).unwrap();
        // Telephone-event from the visitor: not audio, not recorded.
        let mut te = vec![0u8; 12];
        write_header(te.first_chunk_mut().unwrap(), false, 101, 2, 320, 7);
        te.extend_from_slice(&[1, 0x0a, 0, 160]);
        relay.handle_rtp(t0 + MS(20), v, va, &mut te);
        rec.push_rtp(t0 + MS(20), Side::Visitor, &te).unwrap();
        rec.push_rtp(t0 + MS(20), Side::Visitor, &[0x80, 0])
            .unwrap();
        rec.finish().unwrap();
    }
    let wav = Wav::parse(out.get_ref()).unwrap();
    let left: Vec<i16> = wav.to_pcm().iter().step_by(2).copied().collect();
    assert_eq!(left.len(), 160);
    for (i, &c) in codes.iter().enumerate() {
        let transcoded = rappel::media::g711::ULAW_TO_ALAW[c as usize];
        assert_eq!(left[i], alaw_decode(transcoded), "sample {i}");
        // Within one A-law step of the original μ-law value.
        let orig = i32::from(ulaw_decode(c));
        let step = (orig.abs() / 16).max(16);
        assert!((i32::from(left[i]) - orig).abs() <= step, "sample {i}");
    }
}

fn rtp_packet(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    rappel::media::rtp::write_header(p.first_chunk_mut().unwrap(), false, pt, seq, ts, 9);
    p.extend_from_slice(payload);
    p
}

/// The relay thread's taps: a full ring and an oversized packet drop and count, they never block; what was
/// queued reaches the recorder on the right side and at its arrival time.
#[test]
fn taps_drop_and_count_when_the_ring_is_full() {
    use rappel::net::record_io::{taps, MAX_PACKET};
    let t0 = Instant::now();
    let (visitor, agent, rx) = taps(4);
    let v = rtp_packet(0, 1, 0, &[0x10; 160]);
    let a = rtp_packet(8, 1, 0, &[0x55; 160]);
    visitor.push(t0, &v);
    agent.push(t0, &a);
    visitor.push(t0 + MS(20), &rtp_packet(0, 2, 160, &[0x10; 160]));
    agent.push(t0 + MS(20), &rtp_packet(8, 2, 160, &[0x55; 160]));
    assert_eq!(visitor.dropped(), 0);
    // Ring full: dropped, counted on the shared counter.
    visitor.push(t0 + MS(40), &v);
    agent.push(t0 + MS(40), &a);
    agent.push(t0, &[0u8; MAX_PACKET + 1]);
    assert_eq!((visitor.dropped(), agent.dropped()), (3, 3));
    let mut rec =
        Recorder::new(std::io::Cursor::new(Vec::new()), t0, Law::Ulaw, Law::Ulaw).unwrap();
    let d = rx.drain(&mut rec).unwrap();
    assert_eq!((d.packets, d.closed), (4, false));
    drop((visitor, agent));
    let d = rx.drain(&mut rec).unwrap();
    assert_eq!((d.packets, d.closed), (0, true));
    let (out, frames) = rec.finish_at(t0 + MS(40)).unwrap();
    assert_eq!(frames, 320);
    let pcm = Wav::parse(out.get_ref()).unwrap().to_pcm();
    let (l, r) = (
        rappel::media::g711::ulaw_decode(0x10),
        rappel::media::g711::alaw_decode(0x55),
    );
    assert!(
        pcm.chunks(2).all(|f| f == [l, r]),
        "left μ-law 0x10, right A-law 0x55"
    );
}

/// The writer thread: a recording started on a file and fed through its taps is finalised when they go.
#[test]
fn writer_thread_finalises_the_file_when_the_taps_go() {
    use rappel::net::record_io::start;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.wav");
    let t0 = Instant::now();
    let (visitor, agent, done) = start(&path, t0).unwrap();
    for k in 0..10u16 {
        let ts = u32::from(k) * 160;
        visitor.push(
            t0 + MS(20 * u32::from(k)),
            &rtp_packet(0, k, ts, &[0x20; 160]),
        );
        agent.push(
            t0 + MS(20 * u32::from(k)),
            &rtp_packet(0, k, ts, &[0xa0; 160]),
        );
    }
    drop((visitor, agent));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let report = rt.block_on(done.finished()).unwrap();
    assert_eq!((report.packets, report.dropped), (20, 0));
    assert!(report.frames >= 1600, "{report:?}");
    let wav = Wav::read_from(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!((wav.channels, wav.sample_rate), (2, 8000));
    let pcm = wav.to_pcm();
    assert_eq!(pcm.len() as u64, 2 * report.frames);
    let (l, r) = (
        rappel::media::g711::ulaw_decode(0x20),
        rappel::media::g711::ulaw_decode(0xa0),
    );
    assert!(pcm[..3200].chunks(2).all(|f| f == [l, r]));
}

/// A recording to a file that cannot be created is reported, typed, by its end handle; the taps stay harmless.
#[test]
fn recording_to_a_missing_directory_fails() {
    use rappel::net::record_io::{start, RecordError};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("r.wav");
    let t0 = Instant::now();
    let (visitor, agent, done) = start(&path, t0).unwrap();
    visitor.push(t0, &rtp_packet(0, 0, 0, &[0x20; 160]));
    drop((visitor, agent));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt.block_on(done.finished()).unwrap_err();
    assert!(matches!(err, RecordError::Io { path: p, .. } if p == path));
    assert!(!path.exists());
}

/// Many recordings at once share one writer thread, and each is finalised with its own packets.
#[test]
fn concurrent_recordings_share_one_writer_thread() {
    use rappel::net::record_io::start;
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut running = Vec::new();
    for n in 0..20u16 {
        let path = dir.path().join(format!("r{n}.wav"));
        let (visitor, agent, done) = start(&path, t0).unwrap();
        // Recording n carries n + 1 packets per side.
        for k in 0..=n {
            let ts = u32::from(k) * 160;
            let at = t0 + MS(20 * u32::from(k));
            visitor.push(at, &rtp_packet(0, k, ts, &[0x20; 160]));
            agent.push(at, &rtp_packet(0, k, ts, &[0xa0; 160]));
        }
        running.push((path, visitor, agent, done));
    }
    let writers = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "rappel-rec")
        .count();
    assert_eq!(writers, 1, "one writer thread for 20 recordings");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (n, (path, visitor, agent, done)) in running.into_iter().enumerate() {
        drop((visitor, agent));
        let report = rt.block_on(done.finished()).unwrap();
        assert_eq!(report.path, path);
        assert_eq!((report.packets, report.dropped), (2 * (n as u64 + 1), 0));
        let wav = Wav::read_from(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(wav.to_pcm().len() as u64, 2 * report.frames);
    }
}
