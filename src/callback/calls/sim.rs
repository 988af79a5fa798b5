//! An in-process phone network with scripted phones: a [`CallControl`] without SIP, for demos and for the
//! kill-and-restart test of the service.
//!
//! Each dialled target gets a [`PhoneScript`] from a user function (which may count calls per target, e.g. busy
//! the first time, answer the second). Timings run on tokio's clock, so a test with paused time drives them.
//! Playback lasts the playlist's length and then reports [`CallEvent::PlayFinished`]; a bridged phone with a
//! `talk` time hangs up that long after the bridge.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::{playlist_duration, CallControl, CallEvent, CallId, Dial};
use crate::callback::event::CallFailure;
use crate::media::player::Playlist;

/// How a simulated phone behaves when called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneScript {
    /// Time from the dial to the phone ringing.
    pub ring_after: Duration,
    /// Time from the dial to the answer or failure.
    pub answer_after: Duration,
    /// `None`: answers; `Some(f)`: fails with `f` instead.
    pub fails: Option<CallFailure>,
    /// Once bridged, hangs up after this long (`None`: stays until hung up).
    pub talk: Option<Duration>,
    /// Once answered, presses this digit after this long.
    pub dtmf: Option<(Duration, char)>,
}

impl PhoneScript {
    /// Rings at once, answers after `answer_after`, talks `talk` once bridged.
    pub fn answers(answer_after: Duration, talk: Duration) -> PhoneScript {
        PhoneScript {
            ring_after: Duration::ZERO,
            answer_after,
            fails: None,
            talk: Some(talk),
            dtmf: None,
        }
    }

    /// Fails with `failure` after `after`.
    pub fn fails(after: Duration, failure: CallFailure) -> PhoneScript {
        PhoneScript {
            ring_after: Duration::ZERO,
            answer_after: after,
            fails: Some(failure),
            talk: None,
            dtmf: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Ring,
    Answer,
    FarHangUp,
    Dtmf(char),
    PlayDone(u64),
}

#[derive(Debug)]
struct SimCall {
    script: PhoneScript,
    answered: bool,
    play_gen: u64,
}

/// Scripted phones answering in-process (see the module docs).
pub struct SimulatedCalls {
    script: Box<dyn FnMut(&Dial) -> PhoneScript + Send>,
    calls: HashMap<CallId, SimCall>,
    steps: BTreeMap<(Instant, u64), (CallId, Step)>,
    seq: u64,
    next_id: u64,
    dialled: Vec<Dial>,
}

impl std::fmt::Debug for SimulatedCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedCalls")
            .field("calls", &self.calls.len())
            .field("pending", &self.steps.len())
            .finish()
    }
}

impl SimulatedCalls {
    /// A network where each dialled call behaves as `script` says.
    pub fn new(script: impl FnMut(&Dial) -> PhoneScript + Send + 'static) -> SimulatedCalls {
        SimulatedCalls {
            script: Box::new(script),
            calls: HashMap::new(),
            steps: BTreeMap::new(),
            seq: 0,
            next_id: 1,
            dialled: Vec::new(),
        }
    }

    /// Calls in progress.
    pub fn live(&self) -> usize {
        self.calls.len()
    }

    /// Every call dialled so far, in order.
    pub fn dialled(&self) -> &[Dial] {
        &self.dialled
    }

    fn at(&mut self, after: Duration, call: CallId, step: Step) {
        self.seq += 1;
        self.steps
            .insert((Instant::now() + after, self.seq), (call, step));
    }
}

impl CallControl for SimulatedCalls {
    fn dial(&mut self, dial: Dial) -> CallId {
        let id = CallId(self.next_id);
        self.next_id += 1;
        let mut script = (self.script)(&dial);
        // The call layer gives up at the ring timeout like a real one would.
        if script.answer_after > dial.ring_timeout {
            script.answer_after = dial.ring_timeout;
            script.fails = Some(CallFailure::NoAnswer);
        }
        self.at(script.ring_after.min(script.answer_after), id, Step::Ring);
        self.at(script.answer_after, id, Step::Answer);
        self.dialled.push(dial);
        self.calls.insert(
            id,
            SimCall {
                script,
                answered: false,
                play_gen: 0,
            },
        );
        id
    }

    fn play(&mut self, call: CallId, media: Playlist) {
        let Some(c) = self.calls.get_mut(&call).filter(|c| c.answered) else {
            return;
        };
        c.play_gen += 1;
        let gen = c.play_gen;
        if let Some(d) = playlist_duration(&media) {
            self.at(d, call, Step::PlayDone(gen));
        }
    }

    fn bridge(&mut self, a: CallId, b: CallId) {
        for id in [a, b] {
            let Some(c) = self.calls.get_mut(&id).filter(|c| c.answered) else {
                continue;
            };
            c.play_gen += 1;
            if let Some(talk) = c.script.talk {
                self.at(talk, id, Step::FarHangUp);
            }
        }
    }

    fn hang_up(&mut self, call: CallId) {
        self.calls.remove(&call);
    }

    async fn next_event(&mut self) -> Option<(CallId, CallEvent)> {
        loop {
            let Some((&(when, seq), _)) = self.steps.first_key_value() else {
                // Nothing scheduled: wait to be dropped (a command adds steps between two awaits).
                return std::future::pending().await;
            };
            tokio::time::sleep_until(when).await;
            // Popped only after the sleep: dropping this future loses nothing.
            let Some((call, step)) = self.steps.remove(&(when, seq)) else {
                continue;
            };
            let Some(c) = self.calls.get_mut(&call) else {
                continue;
            };
            let event = match step {
                Step::Ring if !c.answered => CallEvent::Ringing,
                Step::Answer => match c.script.fails {
                    Some(f) => {
                        self.calls.remove(&call);
                        CallEvent::Failed(f)
                    }
                    None => {
                        c.answered = true;
                        if let Some((after, digit)) = c.script.dtmf {
                            self.at(after, call, Step::Dtmf(digit));
                        }
                        CallEvent::Answered
                    }
                },
                Step::FarHangUp => {
                    self.calls.remove(&call);
                    CallEvent::HungUp
                }
                Step::Dtmf(d) => CallEvent::Dtmf(d),
                Step::PlayDone(gen) if gen == c.play_gen => CallEvent::PlayFinished,
                _ => continue,
            };
            return Some((call, event));
        }
    }
}
