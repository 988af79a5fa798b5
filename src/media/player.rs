//! Media players (announcements, music on hold, tones) paced by ONE shared schedule.
//!
//! [`PlayerSet`] is sans-IO: it owns every player of the process and a single tick grid
//! (`epoch + k * tick`, 20 ms by default). The driver keeps one timer on [`PlayerSet::poll_timeout`], calls
//! [`PlayerSet::handle_timeout`] when it fires, then drains [`PlayerSet::poll_frame`] and
//! [`PlayerSet::poll_event`]. There is no task or timer per player: 1 000 players cost one wake-up per tick.
//! Within a tick, frames come out in [`PlayerId`] order (deterministic).
//!
//! Pacing rules:
//! - A player started at `now` sends its first frame at the first tick at or after `now` (at most one
//!   tick of start latency — the price of sharing the grid), then one frame every `ptime` (a whole number
//!   of ticks). Tick instants are computed as `epoch + k * tick`, never by adding intervals, so they do not
//!   drift.
//! - If `handle_timeout` runs late, the missed ticks are caught up: up to [`PlayerSet::max_catch_up`] ticks
//!   (default 5, i.e. 100 ms) are emitted as frames; older missed ticks are skipped — the audio position and
//!   the frame timestamp advance as if they had been played (so music stays in real time and the receiver
//!   sees a timestamp gap) and the next emitted frame carries `new_item = true` so the relay sets the marker.
//!
//! A [`Playlist`] is a sequence of [`PlayItem`]s (clip once, clip looped forever or for a duration, silence),
//! e.g. an announcement then looped music. When the last item ends, the frame holding its last samples is
//! padded with silence and [`PlayerEvent::Finished`] follows.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use rappel::media::g711::Law;
//! use rappel::media::player::{PlayItem, PlayerEvent, PlayerId, PlayerOptions, PlayerSet, Playlist};
//! use rappel::media::tone::{Country, ToneSpec};
//!
//! let epoch = Instant::now(); // the driver's clock; tests pass simulated instants
//! let mut players = PlayerSet::new(epoch);
//! let ringback = ToneSpec::ringback(Country::Fr).render();
//! let playlist =
//!     Playlist::new().then(PlayItem::Loop { clip: ringback, duration: Some(Duration::from_secs(1)) });
//! players.start(epoch, PlayerId(1), playlist, PlayerOptions::new(Law::Alaw)).unwrap();
//! let mut frames = 0;
//! while let Some(at) = players.poll_timeout() {
//!     players.handle_timeout(at); // a driver sleeps until `at` first
//!     while let Some((_id, frame)) = players.poll_frame() {
//!         assert_eq!(frame.payload.len(), 160);
//!         frames += 1;
//!     }
//! }
//! assert_eq!(frames, 50);
//! assert_eq!(players.poll_event(), Some(PlayerEvent::Finished(PlayerId(1))));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::g711::Law;
use super::wav::{Wav, WavError};

/// Samples per second of everything the player handles.
pub const RATE: u32 = 8000;

/// A piece of 8 kHz mono 16-bit PCM audio, cheap to clone (shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clip(Arc<[i16]>);

impl Clip {
    /// Wraps PCM samples (8 kHz mono).
    pub fn from_pcm(pcm: Vec<i16>) -> Clip {
        Clip(pcm.into())
    }

    /// Decodes a WAV file that must be 8 kHz mono (16-bit PCM or G.711).
    pub fn from_wav(wav: &Wav) -> Result<Clip, WavError> {
        Ok(Clip::from_pcm(wav.to_telephony_pcm()?))
    }

    /// The samples.
    pub fn pcm(&self) -> &[i16] {
        &self.0
    }

    /// Length in samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the clip has no samples.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Duration at 8 kHz.
    pub fn duration(&self) -> Duration {
        samples_to_duration(self.0.len() as u64)
    }
}

/// One entry of a playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayItem {
    /// Play the clip once.
    Once(Clip),
    /// Play the clip in a loop, forever (`None`) or for a duration. An empty clip ends at once.
    Loop {
        /// The clip to loop.
        clip: Clip,
        /// How long to loop; `None` for ever (until [`PlayerSet::stop`]).
        duration: Option<Duration>,
    },
    /// Silence for a duration.
    Silence(Duration),
}

/// A sequence of items played one after the other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Playlist {
    /// The items in play order.
    pub items: Vec<PlayItem>,
}

impl Playlist {
    /// An empty playlist.
    pub fn new() -> Playlist {
        Playlist::default()
    }

    /// Appends an item (builder style).
    pub fn then(mut self, item: PlayItem) -> Playlist {
        self.items.push(item);
        self
    }
}

/// Identifies a player; chosen by the caller (e.g. the call leg id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlayerId(pub u64);

/// Per-player encoding options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerOptions {
    /// The leg's codec.
    pub law: Law,
    /// Packetisation time; a whole, non-zero multiple of the set's tick.
    pub ptime: Duration,
}

impl PlayerOptions {
    /// 20 ms frames in `law`.
    pub fn new(law: Law) -> PlayerOptions {
        PlayerOptions {
            law,
            ptime: Duration::from_millis(20),
        }
    }
}

/// One encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// G.711 payload: `ptime * 8` bytes (160 for 20 ms).
    pub payload: Vec<u8>,
    /// The codec of `payload`.
    pub law: Law,
    /// True on the first frame of a new playlist item (or after skipped ticks): set the RTP marker.
    pub new_item: bool,
    /// RTP timestamp offset: samples since the player started (wrapping), including skipped frames.
    pub timestamp: u32,
    /// The tick this frame was due at.
    pub due: Instant,
}

/// Something a player reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlayerEvent {
    /// The playlist ended; the player is gone.
    Finished(PlayerId),
}

/// Why a player could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlayerError {
    /// `ptime` is zero or not a whole multiple of the tick.
    #[error("ptime {ptime:?} is not a non-zero multiple of the tick {tick:?}")]
    BadPtime {
        /// The requested ptime.
        ptime: Duration,
        /// The set's tick.
        tick: Duration,
    },
}

fn samples_to_duration(n: u64) -> Duration {
    Duration::from_micros(n.saturating_mul(1_000_000) / RATE as u64)
}

fn duration_to_samples(d: Duration) -> u64 {
    (d.as_micros().min(u64::MAX as u128 / 8) as u64) * RATE as u64 / 1_000_000
}

/// The item being played, with its position.
#[derive(Debug)]
struct Cursor {
    pcm: Option<Clip>,
    looped: bool,
    pos: usize,
    /// Samples left to play; `None` for ever.
    remaining: Option<u64>,
}

impl Cursor {
    fn new(item: PlayItem) -> Cursor {
        match item {
            PlayItem::Once(clip) => {
                let n = clip.len() as u64;
                Cursor {
                    pcm: Some(clip),
                    looped: false,
                    pos: 0,
                    remaining: Some(n),
                }
            }
            PlayItem::Loop { clip, duration } => {
                let remaining = if clip.is_empty() {
                    Some(0)
                } else {
                    duration.map(duration_to_samples)
                };
                Cursor {
                    pcm: Some(clip),
                    looped: true,
                    pos: 0,
                    remaining,
                }
            }
            PlayItem::Silence(d) => Cursor {
                pcm: None,
                looped: false,
                pos: 0,
                remaining: Some(duration_to_samples(d)),
            },
        }
    }
}

#[derive(Debug)]
struct Player {
    items: VecDeque<PlayItem>,
    cur: Option<Cursor>,
    opts: PlayerOptions,
    samples_per_frame: usize,
    every: u64,
    next_tick: u64,
    timestamp: u32,
    marker: bool,
}

impl Player {
    fn done(&self) -> bool {
        self.cur.is_none() && self.items.is_empty()
    }

    /// Produces (or, with `out = None`, skips) `n` samples. Pads with silence past the end of the playlist.
    fn fill(&mut self, mut n: usize, mut out: Option<&mut Vec<i16>>) {
        while n > 0 {
            if self.cur.is_none() {
                match self.items.pop_front() {
                    Some(item) => {
                        self.cur = Some(Cursor::new(item));
                        self.marker = true;
                    }
                    None => {
                        if let Some(o) = out.as_deref_mut() {
                            o.extend(std::iter::repeat_n(0, n));
                        }
                        return;
                    }
                }
            }
            let Some(c) = self.cur.as_mut() else { return };
            let mut take = n as u64;
            if let Some(r) = c.remaining {
                take = take.min(r);
            }
            if let Some(clip) = &c.pcm {
                let len = clip.len();
                if out.is_none() && c.looped && len > 0 {
                    // Skipping through a loop: jump, however many laps that is.
                    c.pos = ((c.pos as u64 + take) % len as u64) as usize;
                } else {
                    take = take.min(len.saturating_sub(c.pos) as u64);
                    let t = take as usize;
                    if let Some(o) = out.as_deref_mut() {
                        o.extend_from_slice(clip.pcm().get(c.pos..c.pos + t).unwrap_or(&[]));
                    }
                    c.pos += t;
                    if c.pos >= len && c.looped {
                        c.pos = 0;
                    }
                }
            } else if let Some(o) = out.as_deref_mut() {
                o.extend(std::iter::repeat_n(0, take as usize));
            }
            if let Some(r) = c.remaining.as_mut() {
                *r -= take;
                if *r == 0 {
                    self.cur = None;
                }
            }
            n -= take as usize;
        }
    }

    /// Drops items that are already over (zero length), so `done` is accurate.
    fn settle(&mut self) {
        loop {
            if self.cur.is_none() {
                match self.items.pop_front() {
                    Some(item) => {
                        self.cur = Some(Cursor::new(item));
                        self.marker = true;
                    }
                    None => return,
                }
            }
            if matches!(
                self.cur,
                Some(Cursor {
                    remaining: Some(0),
                    ..
                })
            ) {
                self.cur = None;
            } else {
                return;
            }
        }
    }
}

/// Every player of the process, paced by one tick grid. See the module docs.
#[derive(Debug)]
pub struct PlayerSet {
    epoch: Instant,
    tick: Duration,
    /// Index of the next tick not yet processed.
    next_tick: u64,
    players: BTreeMap<PlayerId, Player>,
    frames: VecDeque<(PlayerId, Frame)>,
    events: VecDeque<PlayerEvent>,
    max_catch_up: u64,
    scratch: Vec<i16>,
}

impl PlayerSet {
    /// A set with a 20 ms tick grid anchored at `epoch`.
    pub fn new(epoch: Instant) -> PlayerSet {
        PlayerSet::with_tick(epoch, Duration::from_millis(20))
    }

    /// A set with a custom tick (e.g. 10 ms to serve 10 ms ptime legs). A zero tick is raised to 1 ms.
    pub fn with_tick(epoch: Instant, tick: Duration) -> PlayerSet {
        PlayerSet {
            epoch,
            tick: tick.max(Duration::from_millis(1)),
            next_tick: 0,
            players: BTreeMap::new(),
            frames: VecDeque::new(),
            events: VecDeque::new(),
            max_catch_up: 5,
            scratch: Vec::new(),
        }
    }

    /// How many missed ticks are still emitted when `handle_timeout` runs late (older ones are skipped).
    pub fn max_catch_up(&self) -> u64 {
        self.max_catch_up
    }

    /// Sets [`PlayerSet::max_catch_up`] (at least 1).
    pub fn set_max_catch_up(&mut self, ticks: u64) {
        self.max_catch_up = ticks.max(1);
    }

    /// The tick interval.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Number of active players.
    pub fn len(&self) -> usize {
        self.players.len()
    }

    /// Whether no player is active.
    pub fn is_empty(&self) -> bool {
        self.players.is_empty()
    }

    /// Whether `id` is playing.
    pub fn is_playing(&self, id: PlayerId) -> bool {
        self.players.contains_key(&id)
    }

    fn tick_at(&self, k: u64) -> Instant {
        let nanos = (self.tick.as_nanos() as u64).saturating_mul(k);
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Index of the last tick at or before `now` (None before the epoch).
    fn tick_index(&self, now: Instant) -> Option<u64> {
        let since = now.checked_duration_since(self.epoch)?;
        Some((since.as_nanos() / self.tick.as_nanos()) as u64)
    }

    /// Starts (or replaces: no event for the old one) the player `id`. Its first frame is due at the first
    /// tick at or after `now`. An empty playlist finishes at once.
    pub fn start(
        &mut self,
        now: Instant,
        id: PlayerId,
        playlist: Playlist,
        opts: PlayerOptions,
    ) -> Result<(), PlayerError> {
        let tick_ns = self.tick.as_nanos();
        let p_ns = opts.ptime.as_nanos();
        if p_ns == 0 || p_ns % tick_ns != 0 || p_ns > 1_000_000_000 {
            return Err(PlayerError::BadPtime {
                ptime: opts.ptime,
                tick: self.tick,
            });
        }
        let first = match now.checked_duration_since(self.epoch) {
            Some(d) => d.as_nanos().div_ceil(tick_ns) as u64,
            None => 0,
        }
        .max(self.next_tick);
        let mut player = Player {
            items: playlist.items.into(),
            cur: None,
            opts,
            samples_per_frame: duration_to_samples(opts.ptime) as usize,
            every: (p_ns / tick_ns) as u64,
            next_tick: first,
            timestamp: 0,
            marker: true,
        };
        player.settle();
        if player.done() {
            self.players.remove(&id);
            self.events.push_back(PlayerEvent::Finished(id));
            return Ok(());
        }
        self.players.insert(id, player);
        Ok(())
    }

    /// Stops `id` without a [`PlayerEvent::Finished`] event. Returns whether it was playing.
    pub fn stop(&mut self, id: PlayerId) -> bool {
        self.players.remove(&id).is_some()
    }

    /// The next tick at which some player has a frame due, or `None` if nothing plays.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.players
            .values()
            .map(|p| p.next_tick)
            .min()
            .map(|k| self.tick_at(k))
    }

    /// Processes every tick up to `now`: queues the due frames (see the module docs for late calls).
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(current) = self.tick_index(now) else {
            return;
        };
        if current < self.next_tick {
            return;
        }
        // Ticks before `emit_from` are skipped, the rest emitted.
        let emit_from = (current + 1)
            .saturating_sub(self.max_catch_up)
            .max(self.next_tick);
        let mut finished = Vec::new();
        // Skip phase: advance each player by the frames it had due before `emit_from`, in one go.
        if emit_from > self.next_tick {
            for (id, p) in self.players.iter_mut() {
                if p.next_tick < emit_from {
                    let frames = (emit_from - p.next_tick).div_ceil(p.every);
                    let samples = frames.saturating_mul(p.samples_per_frame as u64);
                    // Skip in bounded steps so `fill`'s usize arithmetic stays small.
                    let mut left = samples;
                    while left > 0 && !p.done() {
                        let step = left.min(1 << 20);
                        p.fill(step as usize, None);
                        left -= step;
                    }
                    p.timestamp = p.timestamp.wrapping_add(samples as u32);
                    p.next_tick += frames * p.every;
                    p.marker = true;
                    if p.done() {
                        finished.push(*id);
                    }
                }
            }
            for id in finished.drain(..) {
                self.players.remove(&id);
                self.events.push_back(PlayerEvent::Finished(id));
            }
        }
        for k in emit_from..=current {
            let due = self.tick_at(k);
            for (id, p) in self.players.iter_mut() {
                if p.next_tick != k {
                    continue;
                }
                self.scratch.clear();
                p.fill(p.samples_per_frame, Some(&mut self.scratch));
                let mut payload = Vec::with_capacity(self.scratch.len());
                p.opts.law.encode_into(&self.scratch, &mut payload);
                let frame = Frame {
                    payload,
                    law: p.opts.law,
                    new_item: p.marker,
                    timestamp: p.timestamp,
                    due,
                };
                p.marker = false;
                p.timestamp = p.timestamp.wrapping_add(p.samples_per_frame as u32);
                p.next_tick += p.every;
                p.settle();
                self.frames.push_back((*id, frame));
                if p.done() {
                    finished.push(*id);
                }
            }
            for id in finished.drain(..) {
                self.players.remove(&id);
                self.events.push_back(PlayerEvent::Finished(id));
            }
        }
        self.next_tick = current + 1;
    }

    /// The next queued frame.
    pub fn poll_frame(&mut self) -> Option<(PlayerId, Frame)> {
        self.frames.pop_front()
    }

    /// The next player event.
    pub fn poll_event(&mut self) -> Option<PlayerEvent> {
        self.events.pop_front()
    }
}
