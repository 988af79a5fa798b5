//! Bridge recording I/O: taps the relay thread hands packets to, and the writer thread that owns the file.
//!
//! # Hot path
//! The relay thread must never allocate or block per packet. A [`RecordTap`] is a bounded, preallocated
//! channel (`std::sync::mpsc::sync_channel`, an array of [`RING_FRAMES`] fixed-size frames) plus a shared
//! drop counter. [`RecordTap::push`] copies the packet (at most [`MAX_PACKET`] bytes) into a stack frame and
//! `try_send`s it: a memcpy and a few atomics. A full ring (the writer fell behind) or an oversized packet
//! is dropped and counted, never waited for.
//!
//! The writer does not block in `recv` either: it wakes every [`TICK`], drains the ring with `try_recv` and
//! moves the recording forward. So it is never registered as a waiting receiver and a send never has to
//! wake it (no futex call on the relay thread).
//!
//! # Writer
//! One writer thread per process serves every recording ([`start`] starts it on first use, and again if it
//! ever died): a thousand recorded bridges cost one thread waking every [`TICK`], not a thousand. It creates
//! each file (so the caller, the engine's task, never waits on the file system) and owns a [`Recorder`] per
//! recording, which aligns the two sides on one timeline (by arrival of each side's first packet, then by RTP
//! timestamp; gaps are silence). When every tap of a recording is gone (the engine removes them from the
//! relay when the bridge ends), the writer writes up to that moment, finalises the WAV header and reports a
//! [`RecordingReport`]. With no recording running the thread sleeps until the next one starts.
//!
//! The price of one thread: a file system that stalls (a hung network mount) stalls every recording, and
//! after [`RING_FRAMES`] packets (2.5 s) each recording drops and counts what its ring cannot hold; the calls
//! themselves are never held up. Put `record_dir` on local storage.

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError,
    TrySendError,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::oneshot;

use crate::media::g711::Law;
use crate::media::record::{Recorder, Side};
use crate::media::wav::WavError;

/// Largest RTP packet a tap copies (G.711 at 60 ms is 492 bytes); larger ones are dropped and counted.
pub const MAX_PACKET: usize = 512;
/// Frames in a recording's ring (both sides): 2.5 s of 20 ms packets from two legs.
pub const RING_FRAMES: usize = 256;
/// How often the writer thread drains the rings and writes.
pub const TICK: Duration = Duration::from_millis(40);

/// One packet on its way from the relay thread to the writer.
struct Frame {
    side: Side,
    at: Instant,
    len: u16,
    data: [u8; MAX_PACKET],
}

/// The relay thread's end of a recording, for one side. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordTap {
    side: Side,
    tx: SyncSender<Frame>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("side", &self.side)
            .field("len", &self.len)
            .finish()
    }
}

impl RecordTap {
    /// Which channel this tap feeds.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Hands one whole RTP packet, received at `at`, to the writer; drops it (counted) if the ring is
    /// full or the packet is larger than [`MAX_PACKET`]. Never blocks, never allocates.
    #[inline]
    pub fn push(&self, at: Instant, packet: &[u8]) {
        let len = packet.len();
        if len > MAX_PACKET {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut frame = Frame {
            side: self.side,
            at,
            len: len as u16,
            data: [0; MAX_PACKET],
        };
        if let Some(d) = frame.data.get_mut(..len) {
            d.copy_from_slice(packet);
        }
        match self.tx.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Packets dropped so far by every tap of this recording.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Why a recording failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Creating the file or spawning the writer failed.
    #[error("recording {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the WAV failed.
    #[error("recording {path}: {source}")]
    Wav {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: WavError,
    },
    /// The writer thread panicked or went away without a report.
    #[error("recording writer stopped")]
    Stopped,
}

/// What a finished recording did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingReport {
    /// The WAV file.
    pub path: PathBuf,
    /// Samples per channel written (8000 per second).
    pub frames: u64,
    /// RTP packets handed to the writer.
    pub packets: u64,
    /// Packets the taps dropped (ring full, oversized).
    pub dropped: u64,
}

/// The engine's end of a recording: await the report once every tap is gone.
#[derive(Debug)]
pub struct Recording {
    rx: oneshot::Receiver<Result<RecordingReport, RecordError>>,
}

impl Recording {
    /// Waits for the writer to finalise the file.
    pub async fn finished(self) -> Result<RecordingReport, RecordError> {
        self.rx.await.unwrap_or(Err(RecordError::Stopped))
    }
}

/// The writer's end of a recording's ring (see [`taps`]).
#[derive(Debug)]
pub struct FrameReceiver {
    rx: Receiver<Frame>,
}

/// What [`FrameReceiver::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Packets taken from the ring.
    pub packets: u64,
    /// Every tap is gone: nothing more will come.
    pub closed: bool,
}

impl FrameReceiver {
    /// Feeds every packet queued in the ring to `rec` (each on its own side, at its arrival time), without
    /// waiting for more.
    pub fn drain<W: Write + Seek>(&self, rec: &mut Recorder<W>) -> Result<Drained, WavError> {
        let mut packets = 0;
        loop {
            match self.rx.try_recv() {
                Ok(f) => {
                    packets += 1;
                    let pkt = f.data.get(..usize::from(f.len)).unwrap_or(&[]);
                    rec.push_rtp(f.at, f.side, pkt)?;
                }
                Err(TryRecvError::Empty) => {
                    return Ok(Drained {
                        packets,
                        closed: false,
                    })
                }
                Err(TryRecvError::Disconnected) => {
                    return Ok(Drained {
                        packets,
                        closed: true,
                    })
                }
            }
        }
    }
}

/// A recording's ring of `capacity` frames (preallocated now): the visitor's tap, the agent's tap and the
/// writer's end. [`start`] uses [`RING_FRAMES`]; this is for custom writers and benchmarks.
pub fn taps(capacity: usize) -> (RecordTap, RecordTap, FrameReceiver) {
    let (tx, rx) = sync_channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    let tap = |side| RecordTap {
        side,
        tx: tx.clone(),
        dropped: dropped.clone(),
    };
    (tap(Side::Visitor), tap(Side::Agent), FrameReceiver { rx })
}

/// Starts a recording to `path` (created or truncated by the writer thread) at `now`: the visitor on the left
/// channel, the agent on the right. Returns the two taps to install on the relay's legs
/// ([`crate::net::rtp_io::RelayDriver::set_tap`]) and the handle that reports the end. A file that cannot be
/// created is reported by [`Recording::finished`] ([`RecordError::Io`]); packets pushed meanwhile are counted
/// as dropped. Fails at once only if the writer thread cannot be started.
pub fn start(path: &Path, now: Instant) -> Result<(RecordTap, RecordTap, Recording), RecordError> {
    let (visitor, agent, rx) = taps(RING_FRAMES);
    let (done, done_rx) = oneshot::channel();
    let open = Open {
        path: path.to_owned(),
        now,
        rx,
        dropped: visitor.dropped.clone(),
        done,
    };
    submit(open).map_err(|source| RecordError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok((visitor, agent, Recording { rx: done_rx }))
}

/// A recording handed to the writer thread.
struct Open {
    path: PathBuf,
    now: Instant,
    rx: FrameReceiver,
    dropped: Arc<AtomicU64>,
    done: oneshot::Sender<Result<RecordingReport, RecordError>>,
}

/// A recording the writer thread is running.
struct Active {
    rec: Recorder<BufWriter<File>>,
    rx: FrameReceiver,
    path: PathBuf,
    packets: u64,
    dropped: Arc<AtomicU64>,
    done: oneshot::Sender<Result<RecordingReport, RecordError>>,
}

/// The writer thread's control channel (`None` until the first recording).
static WRITER: Mutex<Option<Sender<Open>>> = Mutex::new(None);

/// Hands `open` to the writer thread, starting it if there is none (or it died).
fn submit(open: Open) -> io::Result<()> {
    let mut writer = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    let open = match writer.as_ref() {
        Some(tx) => match tx.send(open) {
            Ok(()) => return Ok(()),
            Err(back) => back.0,
        },
        None => open,
    };
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("rappel-rec".into())
        .spawn(move || write_loop(rx))?;
    // The thread holds `rx` until the process ends: this send cannot fail.
    let _ = tx.send(open);
    *writer = Some(tx);
    Ok(())
}

fn write_loop(ctl: Receiver<Open>) {
    let mut active: Vec<Active> = Vec::new();
    let mut next_tick = Instant::now() + TICK;
    loop {
        let cmd = if active.is_empty() {
            match ctl.recv() {
                Ok(open) => Some(open),
                Err(_) => return,
            }
        } else {
            match ctl.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(open) => Some(open),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(next_tick.saturating_duration_since(Instant::now()));
                    None
                }
            }
        };
        if let Some(open) = cmd {
            if active.is_empty() {
                next_tick = Instant::now() + TICK;
            }
            if let Some(a) = open_recording(open) {
                active.push(a);
            }
            continue;
        }
        let now = Instant::now();
        next_tick = now + TICK;
        let mut i = 0;
        while let Some(a) = active.get_mut(i) {
            match step(a, now) {
                Ok(false) => i += 1,
                Ok(true) => finish(active.swap_remove(i), now, None),
                Err(e) => finish(active.swap_remove(i), now, Some(e)),
            }
        }
    }
}

/// Creates the file and its recorder; a failure is reported to the recording's owner.
fn open_recording(open: Open) -> Option<Active> {
    let Open {
        path,
        now,
        rx,
        dropped,
        done,
    } = open;
    let rec = File::create(&path)
        .map_err(|source| RecordError::Io {
            path: path.clone(),
            source,
        })
        .and_then(|file| {
            Recorder::new(BufWriter::new(file), now, Law::Ulaw, Law::Ulaw).map_err(|source| {
                RecordError::Wav {
                    path: path.clone(),
                    source,
                }
            })
        });
    match rec {
        Ok(rec) => Some(Active {
            rec,
            rx,
            path,
            packets: 0,
            dropped,
            done,
        }),
        Err(e) => {
            let _ = done.send(Err(e));
            None
        }
    }
}

/// Drains one recording's ring and writes up to `now`: `Ok(true)` when every tap is gone.
fn step(a: &mut Active, now: Instant) -> Result<bool, WavError> {
    let d = a.rx.drain(&mut a.rec)?;
    a.packets += d.packets;
    if !d.closed {
        a.rec.advance(now)?;
    }
    Ok(d.closed)
}

/// Finalises a recording whose taps are gone (or that failed with `failed`) and reports it.
fn finish(a: Active, now: Instant, failed: Option<WavError>) {
    let Active {
        rec,
        path,
        packets,
        dropped,
        done,
        ..
    } = a;
    let wav_err = |source| RecordError::Wav {
        path: path.clone(),
        source,
    };
    let report = match failed {
        Some(e) => Err(wav_err(e)),
        // `finish_at` flushes the buffered writer (WavWriter::finish).
        None => rec
            .finish_at(now)
            .map_err(wav_err)
            .map(|(_, frames)| RecordingReport {
                path: path.clone(),
                frames,
                packets,
                dropped: dropped.load(Ordering::Relaxed),
            }),
    };
    let _ = done.send(report);
}
