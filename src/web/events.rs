//! Request events as JSON, and the server-sent event streams (`/api/events`, `/api/callbacks/{id}/events`).

use std::convert::Infallible;

use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::OwnedSemaphorePermit;

use super::api::{admin_denied, error};
use super::WebState;
use crate::callback::event::{EventKind, RecoveryAction, ScheduleReason};
use crate::callback::{CallFailure, MissReason, RequestEvent, RequestId};

fn failure(r: CallFailure) -> &'static str {
    match r {
        CallFailure::Busy => "busy",
        CallFailure::NoAnswer => "no answer",
        CallFailure::Rejected => "rejected",
        CallFailure::Failed => "failed",
        CallFailure::NotConfirmed => "not confirmed",
    }
}

/// The event's kind as its API name (`calling_visitor`, `attempt_failed`, ...).
pub(super) fn kind_name(k: &EventKind) -> &'static str {
    match k {
        EventKind::Submitted => "submitted",
        EventKind::Scheduled { .. } => "scheduled",
        EventKind::Queued => "queued",
        EventKind::CallingVisitor { .. } => "calling_visitor",
        EventKind::VisitorAnswered => "visitor_answered",
        EventKind::Confirmed => "confirmed",
        EventKind::AttemptFailed { .. } => "attempt_failed",
        EventKind::Holding => "holding",
        EventKind::CallingAgent { .. } => "calling_agent",
        EventKind::AgentFailed { .. } => "agent_failed",
        EventKind::AgentAutoPaused { .. } => "agent_auto_paused",
        EventKind::AgentAnswered { .. } => "agent_answered",
        EventKind::Connected { .. } => "connected",
        EventKind::Completed { .. } => "completed",
        EventKind::Missed { .. } => "missed",
        EventKind::Cancelled => "cancelled",
        EventKind::Recovered { .. } => "recovered",
    }
}

/// A one-line human description of an event.
pub(super) fn describe(k: &EventKind) -> String {
    match k {
        EventKind::Submitted => "request received".to_owned(),
        EventKind::Scheduled { due, reason } => {
            let why = match reason {
                ScheduleReason::Requested => "as requested",
                ScheduleReason::OutsideHours => "next opening",
                ScheduleReason::Retry => "retry",
            };
            format!("scheduled for {} ({why})", due.to_rfc3339())
        }
        EventKind::Queued => "waiting for a free line".to_owned(),
        EventKind::CallingVisitor { attempt } => format!("calling the visitor (attempt {attempt})"),
        EventKind::VisitorAnswered => "the visitor answered".to_owned(),
        EventKind::Confirmed => "the visitor confirmed".to_owned(),
        EventKind::AttemptFailed { attempt, reason } => {
            format!("attempt {attempt} failed: {}", failure(*reason))
        }
        EventKind::Holding => "the visitor is on hold".to_owned(),
        EventKind::CallingAgent { agent, topic, .. } => match topic {
            Some(t) => format!("calling agent {agent} (topic {t})"),
            None => format!("calling agent {agent}"),
        },
        EventKind::AgentFailed { agent, reason } => {
            format!("agent {agent} did not take the call: {}", failure(*reason))
        }
        EventKind::AgentAutoPaused { agent } => format!("agent {agent} paused after missed calls"),
        EventKind::AgentAnswered { agent } => format!("agent {agent} answered"),
        EventKind::Connected { agent, hold, .. } => {
            format!("connected to {agent} after {} s on hold", hold.as_secs())
        }
        EventKind::Completed { talk } => format!("call ended after {} s", talk.as_secs()),
        EventKind::Missed { reason } => {
            let why = match reason {
                MissReason::RetriesExhausted => "the visitor could not be reached",
                MissReason::MaxHold => "no agent was free in time",
                MissReason::VisitorHungUp => "the visitor hung up while holding",
                MissReason::Interrupted => "the service stopped during the call",
            };
            format!("missed: {why}")
        }
        EventKind::Cancelled => "cancelled".to_owned(),
        EventKind::Recovered { from, action } => {
            let what = match action {
                RecoveryAction::Kept => "kept",
                RecoveryAction::Requeued => "requeued",
                RecoveryAction::MarkedMissed => "marked missed",
            };
            format!("after a restart, found {} and {what}", from.as_str())
        }
    }
}

/// `{"at", "kind", "detail", "state"}`.
pub(super) fn event_json(e: &RequestEvent) -> Value {
    json!({
        "at": e.at.to_rfc3339(),
        "kind": kind_name(&e.kind),
        "detail": describe(&e.kind),
        "state": e.state.as_str(),
    })
}

/// The broadcast receiver as a stream, skipping what a slow reader missed (the status endpoint has the truth).
fn events(
    rx: broadcast::Receiver<(RequestId, RequestEvent)>,
) -> impl Stream<Item = (RequestId, RequestEvent)> {
    stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(item) => return Some((item, rx)),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

fn sse_event(state: &WebState, id: RequestId, e: &RequestEvent) -> Event {
    let mut v = event_json(e);
    if let Some(o) = v.as_object_mut() {
        o.insert("id".to_owned(), Value::String(state.public_id(id)));
        o.insert("final".to_owned(), Value::Bool(e.state.is_final()));
    }
    Event::default().event("state").data(v.to_string())
}

/// A permit for one more open stream (released when the stream is dropped), if under the cap.
fn stream_permit(state: &WebState) -> Option<OwnedSemaphorePermit> {
    state.inner.streams.clone().try_acquire_owned().ok()
}

fn too_many_streams() -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many open event streams, poll the status instead",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenQuery {
    access_token: Option<String>,
}

/// `GET /api/events`: every request's events (admin).
pub(super) async fn all(
    AxState(state): AxState<WebState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    if let Some(r) = admin_denied(&state, &headers, q.access_token.as_deref()) {
        return r;
    }
    let Some(permit) = stream_permit(&state) else {
        return too_many_streams();
    };
    let rx = state.inner.api.subscribe();
    let st = state.clone();
    let s = futures_util::StreamExt::map(events(rx), move |(id, e)| {
        let _held = &permit;
        Ok::<_, Infallible>(sse_event(&st, id, &e))
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// `GET /api/callbacks/{id}/events`: one request's events, ending after its final state.
pub(super) async fn one(AxState(state): AxState<WebState>, Path(id): Path<String>) -> Response {
    let Some(rid) = state.inner.keys.open(&id) else {
        return error(StatusCode::NOT_FOUND, "no such request");
    };
    let Some(permit) = stream_permit(&state) else {
        return too_many_streams();
    };
    let rx = state.inner.api.subscribe();
    let st = state.clone();
    let filtered = stream::unfold((Box::pin(events(rx)), false), move |(mut s, done)| {
        let st = st.clone();
        let _held = &permit;
        async move {
            if done {
                return None;
            }
            loop {
                let (id, e) = futures_util::StreamExt::next(&mut s).await?;
                if id == rid {
                    let fin = e.state.is_final();
                    return Some((Ok::<_, Infallible>(sse_event(&st, id, &e)), (s, fin)));
                }
            }
        }
    });
    Sse::new(filtered)
        .keep_alive(KeepAlive::default())
        .into_response()
}
