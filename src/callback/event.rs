//! Request states and the typed events that move a request between them.
//!
//! Every state change of a request is one [`RequestEvent`]: a timestamp, what happened ([`EventKind`], data in the
//! variants) and the state the request is in afterwards. The history of a request is the list of its events; the
//! store appends each one (and the new state) before the service acts on the commands that came with it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The state of a callback request. Names (snake case) are the ones the HTTP API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Waiting for a due time in the future (wished time, next opening, or retry backoff).
    Scheduled,
    /// Due, waiting for a free callback slot (or, agent-first, for a free agent).
    Queued,
    /// The visitor's phone is being called.
    CallingVisitor,
    /// Confirmation strategy: the visitor answered and is asked to press 1.
    Confirming,
    /// The visitor is on the line, on hold, and no agent is being called.
    Holding,
    /// An agent is being called (the visitor holds, or, agent-first, is not called yet).
    CallingAgent,
    /// Visitor and agent are bridged.
    Connected,
    /// Final: the conversation took place and ended.
    Completed,
    /// Final: the visitor could not be connected; kept for a manual callback.
    Missed,
    /// Final: cancelled through the API.
    Cancelled,
}

impl State {
    /// All states, in flow order.
    pub const ALL: [State; 10] = [
        State::Scheduled,
        State::Queued,
        State::CallingVisitor,
        State::Confirming,
        State::Holding,
        State::CallingAgent,
        State::Connected,
        State::Completed,
        State::Missed,
        State::Cancelled,
    ];

    /// Whether the request is finished.
    pub fn is_final(self) -> bool {
        matches!(self, State::Completed | State::Missed | State::Cancelled)
    }

    /// Whether a call leg may be up (the request takes a callback slot).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            State::CallingVisitor
                | State::Confirming
                | State::Holding
                | State::CallingAgent
                | State::Connected
        )
    }

    /// The API name (`calling_visitor`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Queued => "queued",
            State::CallingVisitor => "calling_visitor",
            State::Confirming => "confirming",
            State::Holding => "holding",
            State::CallingAgent => "calling_agent",
            State::Connected => "connected",
            State::Completed => "completed",
            State::Missed => "missed",
            State::Cancelled => "cancelled",
        }
    }

    /// Parses an API name.
    pub fn from_name(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Why a request waits for a due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScheduleReason {
    /// The visitor asked for this time.
    Requested,
    /// The centre is closed at the due time; moved to the next opening.
    OutsideHours,
    /// Backoff before the next attempt to reach the visitor.
    Retry,
}

/// Why a call attempt to a phone (visitor or agent) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallFailure {
    /// Busy (486/600).
    Busy,
    /// Rang without answer (ring timeout or 408/480).
    NoAnswer,
    /// Rejected (603 Decline from an agent).
    Rejected,
    /// Any other failure (network, 4xx/5xx).
    Failed,
    /// Confirmation strategy: answered but the key was not pressed.
    NotConfirmed,
}

/// Why a request ended as missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissReason {
    /// Every attempt to reach the visitor failed.
    RetriesExhausted,
    /// The visitor held for the maximum hold time without an agent.
    MaxHold,
    /// The visitor hung up while holding (a human may call back).
    VisitorHungUp,
    /// The service stopped while the call was up; policy marked it for a manual callback.
    Interrupted,
}

/// What the restart recovery did with an interrupted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecoveryAction {
    /// Kept as it was (scheduled or queued).
    Kept,
    /// Put back in the queue for a new attempt.
    Requeued,
    /// Marked missed.
    MarkedMissed,
}

/// What happened to a request. Durations are carried as [`Duration`] (stored as milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The request was accepted.
    Submitted,
    /// The request waits until `due`.
    Scheduled {
        /// When it becomes due.
        due: DateTime<Utc>,
        /// Why.
        reason: ScheduleReason,
    },
    /// The request is due and waits for a slot.
    Queued,
    /// Calling the visitor (attempt counts from 1).
    CallingVisitor {
        /// Attempt number.
        attempt: u32,
    },
    /// The visitor answered.
    VisitorAnswered,
    /// The visitor pressed the confirmation key.
    Confirmed,
    /// An attempt to reach the visitor failed.
    AttemptFailed {
        /// Attempt number.
        attempt: u32,
        /// Why.
        reason: CallFailure,
    },
    /// The visitor is on hold, no agent being called.
    Holding,
    /// An agent is being called; `context` is the request's free-form context for the agent's screen.
    CallingAgent {
        /// Agent name.
        agent: String,
        /// The request's topic (whispered to the agent).
        topic: Option<String>,
        /// The request's context.
        context: Option<String>,
    },
    /// The agent did not take the call.
    AgentFailed {
        /// Agent name.
        agent: String,
        /// Why.
        reason: CallFailure,
    },
    /// The agent missed too many calls in a row and was paused.
    AgentAutoPaused {
        /// Agent name.
        agent: String,
    },
    /// The agent answered (the whisper plays next).
    AgentAnswered {
        /// Agent name.
        agent: String,
    },
    /// Visitor and agent bridged.
    Connected {
        /// Agent name.
        agent: String,
        /// How long the visitor held (zero agent-first).
        #[serde(with = "millis")]
        hold: Duration,
        /// From the request's due time to the bridge.
        #[serde(with = "millis")]
        time_to_connect: Duration,
    },
    /// The conversation ended.
    Completed {
        /// Talk time.
        #[serde(with = "millis")]
        talk: Duration,
    },
    /// Final: missed.
    Missed {
        /// Why.
        reason: MissReason,
    },
    /// Final: cancelled through the API.
    Cancelled,
    /// Restart recovery found the request in `from`.
    Recovered {
        /// State found in the store.
        from: State,
        /// What was done.
        action: RecoveryAction,
    },
}

/// One state change of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEvent {
    /// When (UTC, from the `now` passed in).
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// The state after the event.
    pub state: State,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
