//! Web callback, the product core: call the visitor, hold them, connect the right agent, never lose a request.
//!
//! Everything here is sans-IO: no sockets, no tasks, no clock reads. The driver passes `now` ([`Time`], a UTC
//! instant) into every call and executes the commands that come out.
//!
//! - [`request`]: a submitted request, validated (phone number, wished time, topic, skills, context, time zone).
//! - [`schedule`]: business hours (time zone, weekly schedule, closed dates) and DST-safe wished times.
//! - [`agents`]: the agents pool (sign in/out, pause, busy, wrap-up, longest idle first, auto-pause, wait estimate).
//! - [`flow`]: one request's state machine (visitor-first, confirmation, agent-first).
//! - [`queue`]: the [`Dispatcher`] over all requests (order, cap, hours gating, agent offers).
//! - [`event`]: states and the typed events of a request's history.
//! - [`store`]: the storage trait, its SQLite backend and restart recovery.
//! - [`metrics`]: Prometheus text exposition.
//! - [`webhook`]: HMAC-SHA256 signature of event deliveries.
//! - [`calls`]: what the service needs from a call layer ([`calls::CallControl`]), prompts' audio.
//! - [`service`]: the tokio service running all of the above ([`service::CallbackService`]).
//!
//! The service loop keeps "persist before act": after each call into the dispatcher, write every
//! [`poll_event`](queue::Dispatcher::poll_event) to the [`Store`](store::Store), then execute every
//! [`poll_command`](queue::Dispatcher::poll_command); sleep until [`poll_timeout`](queue::Dispatcher::poll_timeout).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

pub mod agents;
pub mod calls;
pub mod event;
pub mod flow;
pub mod metrics;
pub mod queue;
pub mod request;
pub mod schedule;
pub mod service;
pub mod store;
pub mod webhook;

pub use agents::{AgentConfig, AgentStatus, Agents, AgentsPolicy};
pub use event::{CallFailure, EventKind, MissReason, RequestEvent, State};
pub use flow::{Command, Flow, FlowConfig, Input, Leg, Prompt};
pub use queue::{CallbackConfig, Dispatcher, RequestStatus, Submitted};
pub use request::{CallbackRequest, NewRequest, RequestId, Strategy, WishedTime};
pub use schedule::BusinessHours;

/// The one clock type of the callback core: a UTC instant passed in by the driver.
pub type Time = DateTime<Utc>;

/// `t + d`, saturating at the largest representable instant.
pub(crate) fn add(t: Time, d: Duration) -> Time {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `now - earlier` as a [`Duration`], zero if `now` is before.
pub(crate) fn since(earlier: Time, now: Time) -> Duration {
    (now - earlier).to_std().unwrap_or_default()
}
