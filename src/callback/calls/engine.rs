//! [`CallControl`] over rappel's SIP call layer ([`Engine`]): the adapter the service uses in production.
//!
//! The engine's API is async and hands out one [`Leg`] object per call (events on the leg, dropping it hangs up).
//! The adapter keeps the trait's commands non-blocking by queueing them to one adapter task that owns every
//! [`Leg`]: it places calls, plays, bridges and drops legs in order, and forwards each leg's events as
//! `(CallId, CallEvent)`. A hung-up leg is dropped from the table at once, so none of its later events reaches
//! the service.
//!
//! A dial whose target is a browser-leg key ([`is_browser_target`]) takes the leg parked in the adapter's
//! [`BrowserLegs`] (already answered) instead of placing a SIP call; an unknown key fails the dial.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use tokio::sync::mpsc;

use super::browser::{is_browser_target, BrowserLegs};
use super::{CallControl, CallEvent, CallId, Dial};
use crate::call::{BridgeOptions, CallOptions, EndCause, LegEvent, OnHangup};
use crate::callback::event::CallFailure;
use crate::media::player::Playlist;
use crate::net::engine::{Engine, Leg};

enum Cmd {
    Dial(CallId, Dial),
    Play(CallId, Playlist),
    Bridge(CallId, CallId, Option<std::path::PathBuf>),
    HangUp(CallId),
}

/// RTP totals over the legs whose end the adapter read (a leg it hung up itself is dropped unread, so it is not
/// counted): what a deployment logs to show that media flowed.
#[derive(Debug, Default)]
pub struct MediaTotals {
    /// Legs counted.
    pub legs: std::sync::atomic::AtomicU64,
    /// RTP packets received from those legs' peers.
    pub packets_in: std::sync::atomic::AtomicU64,
    /// RTP packets sent to those legs' peers.
    pub packets_out: std::sync::atomic::AtomicU64,
}

/// The engine adapter (see the module docs).
#[derive(Debug)]
pub struct EngineCalls {
    totals: std::sync::Arc<MediaTotals>,
    browser: BrowserLegs,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedReceiver<(CallId, CallEvent)>,
    next: u64,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Dial(c, d) => write!(f, "Dial({c}, {})", d.target),
            Cmd::Play(c, _) => write!(f, "Play({c})"),
            Cmd::Bridge(a, b, _) => write!(f, "Bridge({a}, {b})"),
            Cmd::HangUp(c) => write!(f, "HangUp({c})"),
        }
    }
}

/// Maps a failed leg to the callback core's reason.
pub fn failure_of(status: Option<u16>, cause: EndCause) -> CallFailure {
    match (status, cause) {
        (Some(486 | 600), _) => CallFailure::Busy,
        (Some(408 | 480 | 487), _) | (_, EndCause::RingTimeout) => CallFailure::NoAnswer,
        (Some(603), _) => CallFailure::Rejected,
        _ => CallFailure::Failed,
    }
}

impl EngineCalls {
    /// An adapter over `engine`. `options` is the template of every call (From, credentials, codecs...); the
    /// ring timeout comes from each [`Dial`]. When `from_template` is set, `{caller_id}` in it is replaced by the
    /// dial's caller ID and used as the From URI. Must be called inside a tokio runtime (it spawns its task).
    pub fn new(engine: Engine, options: CallOptions, from_template: Option<String>) -> EngineCalls {
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, events) = mpsc::unbounded_channel();
        let totals = std::sync::Arc::new(MediaTotals::default());
        let browser = BrowserLegs::default();
        tokio::spawn(run(
            engine,
            options,
            from_template,
            cmd_rx,
            ev_tx,
            totals.clone(),
            browser.clone(),
        ));
        EngineCalls {
            totals,
            browser,
            cmds,
            events,
            next: 0,
        }
    }
}

impl EngineCalls {
    /// The RTP totals of ended legs, shared (readable after the adapter moved into the service).
    pub fn media_totals(&self) -> std::sync::Arc<MediaTotals> {
        self.totals.clone()
    }

    /// Where browser legs are parked for this adapter to take when their request dials them (shared).
    pub fn browser_legs(&self) -> BrowserLegs {
        self.browser.clone()
    }
}

impl CallControl for EngineCalls {
    fn release(&mut self, target: &str) {
        // Dropping the leg hangs it up: the engine closes its peer connection and frees its relay leg.
        if let Some(leg) = self.browser.take(target) {
            tracing::info!(leg = ?leg.id(), "parked browser leg released: its request is over");
            drop(leg);
        }
    }

    fn dial(&mut self, dial: Dial) -> CallId {
        self.next += 1;
        let id = CallId(self.next);
        let _ = self.cmds.send(Cmd::Dial(id, dial));
        id
    }

    fn play(&mut self, call: CallId, media: Playlist) {
        let _ = self.cmds.send(Cmd::Play(call, media));
    }

    fn bridge(&mut self, a: CallId, b: CallId) {
        let _ = self.cmds.send(Cmd::Bridge(a, b, None));
    }

    fn bridge_recorded(&mut self, a: CallId, b: CallId, path: std::path::PathBuf) {
        let _ = self.cmds.send(Cmd::Bridge(a, b, Some(path)));
    }

    fn hang_up(&mut self, call: CallId) {
        let _ = self.cmds.send(Cmd::HangUp(call));
    }

    async fn next_event(&mut self) -> Option<(CallId, CallEvent)> {
        self.events.recv().await
    }
}

/// What the service sees of a leg event; `None` for events it does not use.
fn map(ev: LegEvent) -> Option<(CallEvent, bool)> {
    Some(match ev {
        LegEvent::Ringing => (CallEvent::Ringing, false),
        LegEvent::Answered => (CallEvent::Answered, false),
        LegEvent::PlayFinished => (CallEvent::PlayFinished, false),
        LegEvent::Dtmf { digit, .. } => (CallEvent::Dtmf(digit.to_char()), false),
        LegEvent::Failed { status, cause } => (CallEvent::Failed(failure_of(status, cause)), true),
        LegEvent::Ended { .. } => (CallEvent::HungUp, true),
        _ => return None,
    })
}

/// The next event of any leg (pending while there is none).
async fn next_leg_event(legs: &mut HashMap<CallId, Leg>) -> (CallId, Option<LegEvent>) {
    poll_fn(|cx| {
        for (id, leg) in legs.iter_mut() {
            // `Leg::next_event` is an mpsc receive: cancel-safe, so a fresh future per poll loses nothing.
            let fut = pin!(leg.next_event());
            if let Poll::Ready(ev) = fut.poll(cx) {
                return Poll::Ready((*id, ev));
            }
        }
        Poll::Pending
    })
    .await
}

async fn run(
    engine: Engine,
    options: CallOptions,
    from_template: Option<String>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<(CallId, CallEvent)>,
    totals: std::sync::Arc<MediaTotals>,
    browser: BrowserLegs,
) {
    let mut legs: HashMap<CallId, Leg> = HashMap::new();
    loop {
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Cmd::Dial(id, dial) if is_browser_target(&dial.target) => {
                        match browser.take(&dial.target) {
                            Some(leg) => {
                                legs.insert(id, leg);
                            }
                            None => {
                                tracing::info!(%id, "browser leg gone before its request dialled it");
                                let _ = events.send((id, CallEvent::Failed(CallFailure::Failed)));
                            }
                        }
                    }
                    Cmd::Dial(id, dial) => {
                        let mut opts = options.clone().ring_timeout(dial.ring_timeout);
                        if let Some(t) = &from_template {
                            opts.from = Some(t.replace("{caller_id}", &dial.caller_id));
                        }
                        match engine.call(&dial.target, opts).await {
                            Ok(leg) => {
                                legs.insert(id, leg);
                            }
                            Err(e) => {
                                tracing::warn!(%id, target = %dial.target, error = %e, "call not placed");
                                let _ = events.send((id, CallEvent::Failed(CallFailure::Failed)));
                            }
                        }
                    }
                    Cmd::Play(id, playlist) => {
                        if let Some(leg) = legs.get(&id) {
                            if let Err(e) = leg.play(playlist).await {
                                tracing::debug!(%id, error = %e, "play");
                            }
                        }
                    }
                    Cmd::Bridge(a, b, record) => {
                        if let (Some(la), Some(lb)) = (legs.get(&a), legs.get(&b)) {
                            let opts = BridgeOptions {
                                on_hangup: OnHangup::KeepOther,
                                record,
                                ..BridgeOptions::default()
                            };
                            // The bridge handle may go: the legs govern the calls, the flow ends them.
                            if let Err(e) = engine.bridge(la, lb, opts).await {
                                tracing::warn!(%a, %b, error = %e, "bridge failed");
                            }
                        }
                    }
                    Cmd::HangUp(id) => {
                        // Dropping the leg sends CANCEL or BYE; its later events are never read.
                        legs.remove(&id);
                    }
                }
            }
            (id, ev) = next_leg_event(&mut legs) => {
                let Some(ev) = ev else {
                    legs.remove(&id);
                    continue;
                };
                if let LegEvent::Ended { cdr, .. } = &ev {
                    use std::sync::atomic::Ordering::Relaxed;
                    totals.legs.fetch_add(1, Relaxed);
                    totals.packets_in.fetch_add(cdr.media.packets_in, Relaxed);
                    totals.packets_out.fetch_add(cdr.media.packets_out, Relaxed);
                }
                if let Some((out, last)) = map(ev) {
                    if last {
                        legs.remove(&id);
                    }
                    let _ = events.send((id, out));
                }
            }
        }
    }
}
