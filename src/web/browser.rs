//! `POST /api/webrtc`: a call from the browser (cargo features `http` and `webrtc`).
//!
//! The widget sends its SDP offer; the handler applies the phone path's abuse protection (the same per-IP token
//! bucket, the form token when configured, the topic rule), answers the offer with an engine browser leg
//! ([`Engine::browser_call`]), parks the leg ([`BrowserLegs`]) and submits an ordinary callback request whose
//! visitor is that leg. The answer comes back with the request's public id: status, server-sent events and
//! `DELETE /api/callbacks/{id}` work as for a phone request. Waiting browser legs are capped by [`BrowserLegs`];
//! when the cap is reached the call is refused with 503.
//!
//! `POST /api/webrtc/{id}/hangup` is the visitor hanging up in the page: the browser leg is hung up as a phone
//! visitor's BYE would end it, so a conversation ends `completed` (a cancel would record it as cancelled). A leg
//! still parked (not dialled yet by its flow) has no call to end: it is dropped and its request cancelled.

use std::time::Instant;

use axum::extract::{Path, Request, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::api::{admit_json, api_error, error, non_empty, wall_clock, Reject};
use super::{ApiError, WebState};
use crate::callback::calls::{is_browser_target, BrowserLegs};
use crate::callback::NewRequest;
use crate::net::webrtc::{BrowserOptions, WebRtcError, MAX_OFFER};
use crate::Engine;

/// What the web layer needs to take calls from the browser: the engine that answers offers, where legs wait for
/// their request ([`EngineCalls::browser_legs`](crate::callback::calls::EngineCalls::browser_legs)), and the
/// browser legs' settings.
#[derive(Debug, Clone)]
pub struct BrowserGateway {
    /// The engine.
    pub engine: Engine,
    /// The adapter's parked legs.
    pub legs: BrowserLegs,
    /// Settings of browser legs.
    pub options: BrowserOptions,
}

#[derive(Debug, Deserialize)]
struct CallBody {
    offer: String,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    page: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    language: Option<String>,
}

pub(super) async fn call(AxState(state): AxState<WebState>, req: Request) -> Response {
    let Some(gw) = state.inner.browser.get().cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "calls from the browser are not enabled",
        );
    };
    let inner = &state.inner;
    let rejected = |r: Reject| inner.rejections.count(r);
    // The offer is larger than a phone form: its own cap.
    let (b, ip): (CallBody, _) =
        match admit_json(&state, req, MAX_OFFER + 2048, "browser call").await {
            Ok(v) => v,
            Err(r) => return r,
        };
    let now = Instant::now();
    if let Some(t) = &inner.tokens {
        if let Err(e) = t.verify(b.token.as_deref().unwrap_or(""), wall_clock().timestamp()) {
            rejected(Reject::Token);
            return error(
                StatusCode::FORBIDDEN,
                &format!("{e}: reload the page and try again"),
            );
        }
    }
    let topic = non_empty(b.topic);
    let topics = &inner.config.topics;
    let mut skills = std::collections::BTreeSet::new();
    if !topics.is_empty() {
        match &topic {
            Some(t) if topics.contains(t) => {
                skills.insert(t.clone());
            }
            Some(_) => {
                rejected(Reject::Invalid);
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Please choose one of the topics offered.",
                );
            }
            None => {}
        }
    }
    if gw.legs.len() >= gw.legs.cap() {
        rejected(Reject::Browser);
        return api_error(&ApiError::Unavailable);
    }
    let (leg, answer) = match gw.engine.browser_call(&b.offer, &gw.options).await {
        Ok(x) => x,
        Err(e @ (WebRtcError::TooLarge | WebRtcError::NoG711 | WebRtcError::WebRtc(_))) => {
            rejected(Reject::Browser);
            tracing::info!(%ip, error = %e, "browser call refused: offer");
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Your browser's audio offer cannot be used (G.711 audio is needed).",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "browser call failed");
            return api_error(&ApiError::Unavailable);
        }
    };
    let key = match gw.legs.park(leg, now) {
        Ok(k) => k,
        Err(_) => {
            rejected(Reject::Browser);
            return api_error(&ApiError::Unavailable);
        }
    };
    let req = NewRequest {
        phone: key.clone(),
        topic,
        skills,
        page_url: non_empty(b.page),
        language: non_empty(b.language),
        ..NewRequest::default()
    };
    match inner.api.submit(req).await {
        Ok(s) => {
            let id = state.public_id(s.id);
            tracing::info!(request = %s.id, %ip, "browser call accepted");
            let mut r = (
                StatusCode::CREATED,
                Json(json!({
                    "id": id,
                    "state": s.state.as_str(),
                    "answer": answer,
                })),
            )
                .into_response();
            if let Ok(v) = header::HeaderValue::from_str(&format!("/api/callbacks/{id}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => {
            // Dropping the parked leg hangs it up.
            drop(gw.legs.take(&key));
            if let ApiError::Invalid(_) = e {
                rejected(Reject::Invalid);
            }
            api_error(&e)
        }
    }
}

/// `POST /api/webrtc/{id}/hangup`: hangs up the browser leg of request `id` (the holder of the public id).
pub(super) async fn hangup(AxState(state): AxState<WebState>, Path(id): Path<String>) -> Response {
    let Some(gw) = state.inner.browser.get().cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "calls from the browser are not enabled",
        );
    };
    let Some(rid) = state.inner.keys.open(&id) else {
        return error(StatusCode::NOT_FOUND, "no such request");
    };
    let key = match state.inner.api.status(rid).await {
        Ok(Some(v)) if is_browser_target(&v.phone) => v.phone,
        Ok(_) => return error(StatusCode::NOT_FOUND, "no such call from the browser"),
        Err(e) => return api_error(&e),
    };
    // Still parked (the flow has not dialled it yet, e.g. an agent is being called first): the visitor is gone
    // before the call began, so the request is cancelled too, rather than left to dial a dead leg.
    if let Some(parked) = gw.legs.take(&key) {
        drop(parked);
        let cancelled = state.inner.api.cancel(rid).await.unwrap_or(false);
        tracing::info!(request = %rid, cancelled, "waiting browser call hung up by the visitor");
        return Json(json!({ "id": id, "hung_up": true, "cancelled": cancelled })).into_response();
    }
    let ended = || error(StatusCode::CONFLICT, "the call is already over");
    let Some(leg) = gw.legs.leg_id(&key) else {
        return ended();
    };
    match gw.engine.hangup_leg(leg).await {
        Ok(()) => {
            tracing::info!(request = %rid, "browser call hung up by the visitor");
            Json(json!({ "id": id, "hung_up": true })).into_response()
        }
        Err(_) => ended(),
    }
}
