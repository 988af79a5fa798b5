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
//! One thread per recording ([`start`]) owns the file and a [`Recorder`], which aligns the two sides on one
//! timeline (by arrival of each side's first packet, then by RTP timestamp; gaps are silence). When every
//! tap of the recording is gone (the engine removes them from the relay when the bridge ends), the thread
//! writes up to that moment, finalises the WAV header and reports a [`RecordingReport`].

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
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
/// How often the writer thread drains the ring and writes.
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

/// Starts a recording to `path` (created or truncated) at `now`: the visitor on the left channel, the agent
/// on the right. Returns the two taps to install on the relay's legs ([`crate::net::rtp_io::RelayDriver::set_tap`])
/// and the handle that reports the end. The file is created before this returns.
pub fn start(path: &Path, now: Instant) -> Result<(RecordTap, RecordTap, Recording), RecordError> {
    let io_err = |source| RecordError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::create(path).map_err(io_err)?;
    let recorder =
        Recorder::new(BufWriter::new(file), now, Law::Ulaw, Law::Ulaw).map_err(|source| {
            RecordError::Wav {
                path: path.to_owned(),
                source,
            }
        })?;
    let (visitor, agent, rx) = taps(RING_FRAMES);
    let (done_tx, done_rx) = oneshot::channel();
    let owned = path.to_owned();
    let counter = visitor.dropped.clone();
    std::thread::Builder::new()
        .name("rappel-rec".into())
        .spawn(move || {
            let r = write_loop(recorder, rx, &owned, &counter);
            let _ = done_tx.send(r);
        })
        .map_err(io_err)?;
    Ok((visitor, agent, Recording { rx: done_rx }))
}

fn write_loop(
    mut rec: Recorder<BufWriter<File>>,
    rx: FrameReceiver,
    path: &Path,
    dropped: &AtomicU64,
) -> Result<RecordingReport, RecordError> {
    let wav_err = |source| RecordError::Wav {
        path: path.to_owned(),
        source,
    };
    let mut packets = 0u64;
    loop {
        std::thread::sleep(TICK);
        let d = rx.drain(&mut rec).map_err(wav_err)?;
        packets += d.packets;
        if d.closed {
            // `finish_at` flushes the buffered writer (WavWriter::finish).
            let (_, frames) = rec.finish_at(Instant::now()).map_err(wav_err)?;
            return Ok(RecordingReport {
                path: path.to_owned(),
                frames,
                packets,
                dropped: dropped.load(Ordering::Relaxed),
            });
        }
        rec.advance(Instant::now()).map_err(wav_err)?;
    }
}
