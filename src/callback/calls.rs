//! What the callback service needs from a call layer, and the prompts it plays.
//!
//! [`CallControl`] is the seam between the [service](super::service) and telephony: place a call, play a
//! [`Playlist`] on it, bridge two calls, hang one up; progress comes back as `(CallId, CallEvent)` pairs from
//! [`CallControl::next_event`]. Commands return at once (they only start work); every outcome, including a call
//! that cannot even be placed, arrives later as an event, so the service has one path for failures.
//!
//! Implementations:
//! - [`SimulatedCalls`]: an in-process phone network with scripted answers, for demos and the kill test (no SIP).
//! - [`EngineCalls`]: the adapter over the SIP call layer's [`Engine`](crate::net::engine::Engine).
//!
//! [`Prompts`] maps the flow's [`Prompt`]s to audio: WAV files from disk ([`PromptFiles`]) or generated tones
//! ([`Prompts::tones`]) for demos.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use super::event::CallFailure;
use super::flow::Prompt;
use crate::media::player::{Clip, PlayItem, Playlist};
use crate::media::tone::{Country, ToneSpec};
use crate::media::wav::{Wav, WavError};

mod browser;
mod engine;
mod sim;

pub use browser::{is_browser_target, BrowserLegs, BrowserLegsFull, BROWSER_PREFIX};
pub use engine::{failure_of, EngineCalls, MediaTotals};
pub use sim::{PhoneScript, SimulatedCalls};

/// Identifies one call placed through a [`CallControl`] (unique for the life of that call control).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "call-{}", self.0)
    }
}

/// Progress of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallEvent {
    /// The far end rings (180/183).
    Ringing,
    /// The far end answered (200).
    Answered,
    /// The call ended before answer (busy, no answer, rejected, network...). No further event follows.
    Failed(CallFailure),
    /// The call ended after answer (either side hung up). No further event follows.
    HungUp,
    /// A DTMF digit from the far end.
    Dtmf(char),
    /// The playlist last started on this call played to its end (never for a looped item without end).
    PlayFinished,
}

/// A call to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// Where to call (a SIP URI, or whatever the call layer understands).
    pub target: String,
    /// Caller ID to present.
    pub caller_id: String,
    /// Give up (and report [`CallFailure::NoAnswer`]) after ringing this long.
    pub ring_timeout: Duration,
}

/// The call layer as the callback service uses it.
///
/// Every method but [`next_event`](CallControl::next_event) must return without waiting on the network: it starts
/// the work and reports the outcome as events. Commands on a call that has ended are ignored.
pub trait CallControl: Send + 'static {
    /// Places a call. Its progress arrives as events for the returned id.
    fn dial(&mut self, dial: Dial) -> CallId;
    /// Plays `media` on an answered call, replacing what plays there (and un-bridging it if it was bridged).
    fn play(&mut self, call: CallId, media: Playlist);
    /// Connects the audio of two answered calls (stops playback on both).
    fn bridge(&mut self, a: CallId, b: CallId);
    /// Like [`bridge`](CallControl::bridge), and records the bridge to the WAV file `path` (`a` on the left
    /// channel, `b` on the right). Layers that cannot record just bridge.
    fn bridge_recorded(&mut self, a: CallId, b: CallId, path: std::path::PathBuf) {
        let _ = path;
        self.bridge(a, b)
    }
    /// Ends a call: BYE if answered, CANCEL if ringing. No event follows for it.
    fn hang_up(&mut self, call: CallId);
    /// Cancels a call still ringing (the same as [`hang_up`](CallControl::hang_up) unless the layer distinguishes).
    fn cancel(&mut self, call: CallId) {
        self.hang_up(call)
    }
    /// The request that would dial `target` is over (final) before or after dialling it: release whatever the
    /// layer holds for that target and no call took (a parked browser leg whose request was cancelled: hung up
    /// at once instead of at its time to live). No event follows. Layers that hold nothing ignore it.
    fn release(&mut self, target: &str) {
        let _ = target;
    }
    /// The next event of any call; `None` when the call layer has stopped. Must be cancel-safe (the service
    /// awaits it in a `select!`).
    fn next_event(&mut self) -> impl Future<Output = Option<(CallId, CallEvent)>> + Send;
}

/// WAV files (8 kHz mono, 16-bit PCM or G.711) for each prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptFiles {
    /// Welcome announcement.
    pub greeting: PathBuf,
    /// Hold music (looped).
    pub hold_music: PathBuf,
    /// "We are still connecting you".
    pub still_connecting: PathBuf,
    /// Apology before hanging up.
    pub apology: PathBuf,
    /// "Press 1 to talk to an advisor".
    pub confirm: PathBuf,
    /// Generic whisper to agents.
    pub whisper: PathBuf,
    /// Whisper per topic.
    pub whispers: BTreeMap<String, PathBuf>,
}

/// A prompt file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("prompt file {path}: {source}")]
pub struct PromptError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    #[source]
    pub source: WavError,
}

/// The audio of every prompt, decoded once and shared by all calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompts {
    /// Welcome announcement.
    pub greeting: Clip,
    /// Hold music (looped until the next command on the call).
    pub hold_music: Clip,
    /// "We are still connecting you".
    pub still_connecting: Clip,
    /// Apology before hanging up.
    pub apology: Clip,
    /// "Press 1 to talk to an advisor".
    pub confirm: Clip,
    /// Generic whisper to agents.
    pub whisper: Clip,
    /// Whisper per topic.
    pub whispers: BTreeMap<String, Clip>,
}

fn tone(frequencies: &[f64], cadence_ms: &[u64]) -> Clip {
    ToneSpec {
        frequencies: frequencies.to_vec(),
        amplitude: 0.2,
        cadence: cadence_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
    }
    .render()
}

impl Prompts {
    /// Generated tones standing in for recorded prompts (demos, tests): each prompt is a short distinct tone
    /// sequence; hold music is the French ringback cadence.
    pub fn tones() -> Prompts {
        Prompts {
            greeting: tone(&[660.0], &[300, 100, 300, 100]),
            hold_music: ToneSpec::ringback(Country::Fr).render(),
            still_connecting: tone(&[880.0], &[200, 100, 200, 100]),
            apology: tone(&[330.0], &[600, 200]),
            confirm: tone(&[1000.0], &[250, 100]),
            whisper: tone(&[1200.0], &[150, 50, 150, 50]),
            whispers: BTreeMap::new(),
        }
    }

    /// Loads every prompt from WAV files.
    pub fn load(files: &PromptFiles) -> Result<Prompts, PromptError> {
        let clip = |path: &PathBuf| -> Result<Clip, PromptError> {
            let err = |source| PromptError {
                path: path.clone(),
                source,
            };
            let file = std::fs::File::open(path).map_err(|e| err(WavError::from(e)))?;
            let wav = Wav::read_from(std::io::BufReader::new(file)).map_err(err)?;
            Clip::from_wav(&wav).map_err(err)
        };
        let mut whispers = BTreeMap::new();
        for (topic, path) in &files.whispers {
            whispers.insert(topic.clone(), clip(path)?);
        }
        Ok(Prompts {
            greeting: clip(&files.greeting)?,
            hold_music: clip(&files.hold_music)?,
            still_connecting: clip(&files.still_connecting)?,
            apology: clip(&files.apology)?,
            confirm: clip(&files.confirm)?,
            whisper: clip(&files.whisper)?,
            whispers,
        })
    }

    /// The playlist for `prompt`: hold music loops for ever, everything else plays once.
    pub fn playlist(&self, prompt: &Prompt) -> Playlist {
        let once = |c: &Clip| Playlist::new().then(PlayItem::Once(c.clone()));
        match prompt {
            Prompt::Greeting => once(&self.greeting),
            Prompt::HoldMusic => Playlist::new().then(PlayItem::Loop {
                clip: self.hold_music.clone(),
                duration: None,
            }),
            Prompt::StillConnecting => once(&self.still_connecting),
            Prompt::Apology => once(&self.apology),
            Prompt::Confirm => once(&self.confirm),
            Prompt::Whisper(topic) => once(
                topic
                    .as_ref()
                    .and_then(|t| self.whispers.get(t))
                    .unwrap_or(&self.whisper),
            ),
        }
    }
}

impl Default for Prompts {
    fn default() -> Self {
        Prompts::tones()
    }
}

/// How long a playlist plays, `None` if it loops for ever.
pub fn playlist_duration(p: &Playlist) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for item in &p.items {
        let d = match item {
            PlayItem::Once(c) => c.duration(),
            PlayItem::Loop { clip, .. } if clip.is_empty() => Duration::ZERO,
            PlayItem::Loop { duration, .. } => (*duration)?,
            PlayItem::Silence(d) => *d,
        };
        total = total.saturating_add(d);
    }
    Some(total)
}
