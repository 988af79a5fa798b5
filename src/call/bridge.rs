//! The B2BUA bridge as a sans-IO state machine: two answered legs, wired through the relay.
//!
//! A [`BridgeCore`] knows which two legs it joins and what to do when things happen to them; it gives out
//! [`BridgeCommand`]s (connect the legs in the relay, make one side hear hold music or silence, hang a leg up,
//! report the end) and never touches the endpoint or the relay itself. Codec alignment is decided before the
//! bridge starts by [`plan`].
//!
//! Policies:
//! - **One side hangs up** ([`OnHangup`]): hang the other side up, or keep it (it hears silence and the bridge
//!   ends; the application may bridge it again, e.g. to another agent).
//! - **A party holds** (a re-INVITE from its phone making our side `recvonly`/`inactive`): the other party hears
//!   the configured hold music (or silence); on resume the two are connected again.
//! - **Transfer** ([`BridgeCore::transfer`]): one side is unbridged and the kept side is connected to a new leg
//!   without being dropped; the replaced leg is hung up or released as [`OnHangup`] says for transfers.

use super::cdr::{BridgeCdr, MediaCounters};
use crate::sdp::{bridge_mode, BridgeMode, Codec};
use std::time::Instant;

/// What happens to the other side when one side of a bridge hangs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnHangup {
    /// Hang the other side up too.
    #[default]
    HangUpOther,
    /// Keep the other side's call up (it hears silence); the bridge ends.
    KeepOther,
}

/// What a leg hears when not connected to its partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// The bridge's hold music (a player on that leg).
    Music,
    /// Nothing.
    Silence,
}

/// What the bridge asks of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BridgeCommand {
    /// Connect two legs in the relay (each hears the other; stops any player on them).
    Connect(u64, u64),
    /// Make `leg` hear music or silence.
    Listen(u64, Listen),
    /// Hang `leg` up.
    Hangup(u64),
    /// The bridge ended: here is its record (media counters are filled in by the engine).
    Ended(Box<BridgeCdr>),
}

/// How to connect two legs given their negotiated codecs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Same codec: connect now.
    Connect,
    /// Re-INVITE leg B offering only this codec (leg A's), then connect.
    AlignB(Codec),
    /// PCMU↔PCMA that could not be aligned: connect, the relay transcodes (see [`crate::media::relay`]).
    Transcode,
    /// No common ground.
    Incompatible,
}

/// Decides how to join leg A (codec `a`) and leg B (codec `b`). `aligned_once` says a re-INVITE to align was
/// already tried.
pub fn plan(a: &Codec, b: &Codec, aligned_once: bool) -> Plan {
    match bridge_mode(a, b) {
        BridgeMode::Forward => Plan::Connect,
        BridgeMode::TranscodeG711 { .. } if !aligned_once => Plan::AlignB(a.clone()),
        BridgeMode::TranscodeG711 { .. } => Plan::Transcode,
        BridgeMode::Incompatible => Plan::Incompatible,
    }
}

/// The bridge state machine. See the module docs.
#[derive(Debug)]
pub struct BridgeCore {
    id: u64,
    a: u64,
    b: u64,
    on_hangup: OnHangup,
    on_transfer: OnHangup,
    music: bool,
    held: [bool; 2],
    legs: Vec<u64>,
    transfers: u32,
    start: Instant,
    start_unix_ms: u64,
    ended: bool,
    commands: Vec<BridgeCommand>,
}

impl BridgeCore {
    /// A bridge of legs `a` and `b` starting at `now`: queues the connect. `music` says hold music is configured;
    /// `on_transfer` is what happens to the replaced leg of a transfer.
    pub fn new(
        id: u64,
        now: Instant,
        start_unix_ms: u64,
        (a, b): (u64, u64),
        on_hangup: OnHangup,
        on_transfer: OnHangup,
        music: bool,
    ) -> Self {
        Self {
            id,
            a,
            b,
            on_hangup,
            on_transfer,
            music,
            held: [false; 2],
            legs: vec![a, b],
            transfers: 0,
            start: now,
            start_unix_ms,
            ended: false,
            commands: vec![BridgeCommand::Connect(a, b)],
        }
    }

    /// The bridge id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The two legs currently joined.
    pub fn legs(&self) -> (u64, u64) {
        (self.a, self.b)
    }

    /// Whether the bridge has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether `leg` is one of the two joined legs.
    pub fn has(&self, leg: u64) -> bool {
        !self.ended && (leg == self.a || leg == self.b)
    }

    fn other(&self, leg: u64) -> u64 {
        if leg == self.a {
            self.b
        } else {
            self.a
        }
    }

    fn side(&self, leg: u64) -> usize {
        usize::from(leg != self.a)
    }

    fn finish(&mut self, now: Instant, by_leg: Option<u64>) {
        self.ended = true;
        let cdr = BridgeCdr {
            bridge: self.id,
            legs: self.legs.clone(),
            start_unix_ms: self.start_unix_ms,
            duration_ms: u64::try_from(now.saturating_duration_since(self.start).as_millis())
                .unwrap_or(u64::MAX),
            transfers: self.transfers,
            ended_by_leg: by_leg,
            a_media: MediaCounters::default(),
            b_media: MediaCounters::default(),
        };
        self.commands.push(BridgeCommand::Ended(Box::new(cdr)));
    }

    /// `leg` ended (either party hung up, or a timer of ours ended it).
    pub fn leg_ended(&mut self, now: Instant, leg: u64) {
        if !self.has(leg) {
            return;
        }
        let other = self.other(leg);
        match self.on_hangup {
            OnHangup::HangUpOther => self.commands.push(BridgeCommand::Hangup(other)),
            OnHangup::KeepOther => self
                .commands
                .push(BridgeCommand::Listen(other, Listen::Silence)),
        }
        self.finish(now, Some(leg));
    }

    /// The party on `leg` put us on hold (`true`) or resumed (`false`).
    pub fn remote_hold(&mut self, leg: u64, on: bool) {
        if !self.has(leg) {
            return;
        }
        let s = self.side(leg);
        if self.held[s] == on {
            return;
        }
        self.held[s] = on;
        let other = self.other(leg);
        if on {
            let l = if self.music {
                Listen::Music
            } else {
                Listen::Silence
            };
            self.commands.push(BridgeCommand::Listen(other, l));
        } else if !self.held[1 - s] {
            self.commands.push(BridgeCommand::Connect(self.a, self.b));
        }
    }

    /// Replaces `old` (one of the joined legs) by `new`: the kept side is connected to `new` and never dropped;
    /// `old` is hung up or released per the transfer policy.
    pub fn transfer(&mut self, old: u64, new: u64) -> bool {
        if !self.has(old) || new == self.a || new == self.b {
            return false;
        }
        let kept = self.other(old);
        if old == self.a {
            self.a = new;
        } else {
            self.b = new;
        }
        self.held = [false; 2];
        self.legs.push(new);
        self.transfers += 1;
        self.commands.push(BridgeCommand::Connect(kept, new));
        match self.on_transfer {
            OnHangup::HangUpOther => self.commands.push(BridgeCommand::Hangup(old)),
            OnHangup::KeepOther => self
                .commands
                .push(BridgeCommand::Listen(old, Listen::Silence)),
        }
        true
    }

    /// The application ends the bridge: both legs stay up and hear silence.
    pub fn end(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        self.commands
            .push(BridgeCommand::Listen(self.a, Listen::Silence));
        self.commands
            .push(BridgeCommand::Listen(self.b, Listen::Silence));
        self.finish(now, None);
    }

    /// Takes the queued commands, in order.
    #[must_use]
    pub fn take_commands(&mut self) -> Vec<BridgeCommand> {
        std::mem::take(&mut self.commands)
    }
}
