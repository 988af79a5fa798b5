//! Persistence of requests and their history, behind the [`Store`] trait (SQLite now, PostgreSQL later).
//!
//! A request is inserted once; each [`RequestEvent`] is then appended together with the request's new state, due
//! time and attempt count in one transaction. The service persists the dispatcher's events before executing its
//! commands, so the store is never behind what the call layer did. [`recover`] runs at start-up: requests still
//! scheduled or queued keep their due time; those interrupted mid-call are requeued or marked missed by policy,
//! with a `recovered` event in their history (written before they are handed back to the dispatcher).

use chrono::{DateTime, Utc};

use super::event::{EventKind, MissReason, RecoveryAction, RequestEvent, State};
use super::request::{CallbackRequest, RequestId};
use super::Time;

pub mod memory;
pub mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// Cap on rows returned by [`Store::list`].
pub const MAX_LIST: usize = 1000;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value could not be (de)serialised.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A stored value is not what this version writes.
    #[error("corrupt row: {0}")]
    Corrupt(&'static str),
    /// The database was written by a newer schema.
    #[error("schema version {found} is newer than {supported}")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest this build knows.
        supported: i64,
    },
    /// Appending to a request that does not exist.
    #[error("no request {0}")]
    UnknownRequest(RequestId),
    /// Inserting a request id twice.
    #[error("request {0} already stored")]
    Duplicate(RequestId),
}

/// A request's current row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSummary {
    /// The request.
    pub request: CallbackRequest,
    /// Current state.
    pub state: State,
    /// Current due time.
    pub due: Time,
    /// Attempts made.
    pub attempts: u32,
    /// Time of the last event.
    pub updated_at: Time,
}

/// A request with its whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Current row.
    pub summary: RequestSummary,
    /// Every event, oldest first.
    pub events: Vec<RequestEvent>,
}

/// Which requests to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this state.
    pub state: Option<State>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
    /// At most this many (capped at [`MAX_LIST`]; 0 means the cap).
    pub limit: usize,
}

/// Request storage.
pub trait Store {
    /// Stores a new request in `state` due at `due` (its events follow with [`Store::append_event`]).
    fn insert_request(
        &mut self,
        req: &CallbackRequest,
        state: State,
        due: Time,
    ) -> Result<(), StoreError>;
    /// Appends an event and applies its new state (and due time, attempt count) atomically.
    fn append_event(&mut self, id: RequestId, event: &RequestEvent) -> Result<(), StoreError>;
    /// A request with its history.
    fn load(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError>;
    /// Requests by state and creation date, oldest first.
    fn list(&self, filter: &ListFilter) -> Result<Vec<RequestSummary>, StoreError>;
    /// Every request not in a final state, with history.
    fn list_unfinished(&self) -> Result<Vec<RequestRecord>, StoreError>;
    /// The largest id stored.
    fn max_id(&self) -> Result<Option<RequestId>, StoreError>;
}

/// What to do with requests interrupted mid-call by a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryPolicy {
    /// Queue them again (attempt count kept; missed if no attempt is left). The default.
    #[default]
    Retry,
    /// Mark them missed for a manual callback.
    MarkMissed,
}

/// A request to hand back to the dispatcher after recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The request.
    pub request: CallbackRequest,
    /// `scheduled` or `queued`.
    pub state: State,
    /// Due time.
    pub due: Time,
    /// Attempts made.
    pub attempts: u32,
}

/// Loads unfinished requests, writes a `recovered` event (and the new state) for each, and returns those to resume.
///
/// Scheduled and queued requests are kept. A request interrupted while connected is marked missed (the conversation
/// was cut; a human decides). Others mid-call are requeued (keeping their due time, so their place in the queue) under [`RecoveryPolicy::Retry`] if
/// `max_attempts` is not used up, else marked missed.
pub fn recover(
    store: &mut dyn Store,
    policy: RecoveryPolicy,
    max_attempts: u32,
    now: Time,
) -> Result<Vec<Resumed>, StoreError> {
    let mut resumed = Vec::new();
    for rec in store.list_unfinished()? {
        let s = rec.summary;
        let id = s.request.id;
        let (action, state, due) = match s.state {
            State::Scheduled | State::Queued => (RecoveryAction::Kept, s.state, s.due),
            State::Connected => (RecoveryAction::MarkedMissed, State::Missed, s.due),
            _ if policy == RecoveryPolicy::Retry && s.attempts < max_attempts.max(1) => {
                (RecoveryAction::Requeued, State::Queued, s.due)
            }
            _ => (RecoveryAction::MarkedMissed, State::Missed, s.due),
        };
        let kind = EventKind::Recovered {
            from: s.state,
            action,
        };
        let interim = if state == State::Missed {
            s.state
        } else {
            state
        };
        store.append_event(
            id,
            &RequestEvent {
                at: now,
                kind,
                state: interim,
            },
        )?;
        if state == State::Missed {
            let kind = EventKind::Missed {
                reason: MissReason::Interrupted,
            };
            store.append_event(
                id,
                &RequestEvent {
                    at: now,
                    kind,
                    state: State::Missed,
                },
            )?;
        } else {
            resumed.push(Resumed {
                request: s.request,
                state,
                due,
                attempts: s.attempts,
            });
        }
    }
    Ok(resumed)
}
