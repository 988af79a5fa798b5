//! The JSON API handlers: submit, status, cancel, list, form token, widget settings, metrics, health.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::to_bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{json, Value};

use super::abuse::{client_key, Masked, PhoneRejection};
use super::events::{describe, event_json};
use super::{ApiError, ListFilter, RequestView, WebState};
use crate::callback::request::RequestError;
use crate::callback::{NewRequest, State, WishedTime};

/// Why a submission was refused, for the `rappel_http_rejected_total` counter.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reject {
    TooLarge,
    Malformed,
    RateIp,
    RateNumber,
    Token,
    Number,
    Invalid,
    AlreadyOpen,
    /// Browser calls: the offer was refused, or too many are waiting.
    Browser,
}

impl Reject {
    const ALL: [Reject; 9] = [
        Reject::TooLarge,
        Reject::Malformed,
        Reject::RateIp,
        Reject::RateNumber,
        Reject::Token,
        Reject::Number,
        Reject::Invalid,
        Reject::AlreadyOpen,
        Reject::Browser,
    ];

    fn name(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::Malformed => "malformed",
            Reject::RateIp => "rate_ip",
            Reject::RateNumber => "rate_number",
            Reject::Token => "form_token",
            Reject::Number => "number",
            Reject::Invalid => "invalid",
            Reject::AlreadyOpen => "already_open",
            Reject::Browser => "browser",
        }
    }
}

/// Counters of refused submissions, by [`Reject`] reason.
#[derive(Debug, Default)]
pub(super) struct Rejections([AtomicU64; 9]);

impl Rejections {
    pub(super) fn count(&self, r: Reject) {
        if let Some(c) = self.0.get(r as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn render(&self) -> String {
        let mut out = String::from(
            "# HELP rappel_http_rejected_total Callback submissions refused by the web layer.\n\
             # TYPE rappel_http_rejected_total counter\n",
        );
        for r in Reject::ALL {
            let n = self
                .0
                .get(r as usize)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            out.push_str(&format!(
                "rappel_http_rejected_total{{reason=\"{}\"}} {n}\n",
                r.name()
            ));
        }
        out
    }
}

pub(super) fn routes(state: WebState) -> Router {
    let public = Router::new()
        .route("/api/callbacks", get(list).post(submit))
        .route("/api/callbacks/{id}", get(status).delete(cancel))
        .route("/api/callbacks/{id}/events", get(super::events::one))
        .route("/api/token", get(token))
        .route("/api/widget-config", get(widget_config));
    #[cfg(feature = "webrtc")]
    let public = public
        .route("/api/webrtc", axum::routing::post(super::browser::call))
        .route(
            "/api/webrtc/{id}/hangup",
            axum::routing::post(super::browser::hangup),
        );
    let public = public.layer(middleware::from_fn_with_state(state.clone(), cors));
    Router::new()
        .merge(public)
        .route("/api/events", get(super::events::all))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

/// A JSON error `{"error": message}` with a status.
pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub(super) fn too_many(retry: Duration, message: &str) -> Response {
    let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

/// CORS for the widget endpoints: answers preflights, and allows the configured origins.
async fn cors(AxState(state): AxState<WebState>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().and_then(|o| {
        let o = o.to_str().ok()?;
        let list = &state.inner.config.allowed_origins;
        if list.iter().any(|a| a == "*") {
            Some(HeaderValue::from_static("*"))
        } else if list.iter().any(|a| a == o) {
            HeaderValue::from_str(o).ok()
        } else {
            None
        }
    });
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if allowed.is_some() {
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, authorization"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(a) = allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, a);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After, Location"),
        );
    }
    resp
}

/// The client address: the connection's, or the last `X-Forwarded-For` entry when trusted.
pub(super) fn client_ip(state: &WebState, headers: &HeaderMap, conn: Option<SocketAddr>) -> IpAddr {
    if state.inner.config.trust_forwarded_for {
        // Only the entry the trusted proxy appended (the last one) counts: earlier ones come from the client.
        let fwd = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|s| s.trim().parse::<IpAddr>().ok());
        if let Some(ip) = fwd {
            return ip;
        }
    }
    conn.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

/// The refusal, unless the request carries the admin bearer token (or `access_token` query parameter when `query`
/// is given).
pub(super) fn admin_denied(
    state: &WebState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<Response> {
    let Some(want) = state.inner.config.admin_token.as_deref() else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "the admin API is disabled (no admin token configured)",
        ));
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query);
    let ok = got.is_some_and(|g| {
        g.len() == want.len()
            && g.bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        None
    } else {
        let mut r = error(StatusCode::UNAUTHORIZED, "admin token required");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(r)
    }
}

/// The submission body. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct SubmitBody {
    phone: String,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    page: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    tz: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    language: Option<String>,
}

pub(super) fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Parses `at`: RFC 3339 with an offset, or a local `YYYY-MM-DDTHH:MM[:SS]` in `tz`.
fn wished_time(at: &str, tz: Option<Tz>) -> Result<WishedTime, &'static str> {
    if let Ok(t) = DateTime::parse_from_rfc3339(at) {
        return Ok(WishedTime::At(t.with_timezone(&Utc)));
    }
    let local = NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M"))
        .map_err(|_| "The date and time are not valid.")?;
    if tz.is_none() {
        return Err("A local date and time needs your time zone.");
    }
    Ok(WishedTime::Local(local))
}

fn request_error_message(e: &RequestError) -> &'static str {
    match e {
        RequestError::BadPhone => PhoneRejection::Invalid.visitor_message(),
        RequestError::TooLong { .. } | RequestError::TooManySkills => {
            "One of the fields is too long."
        }
        RequestError::MissingTimeZone => "A local date and time needs your time zone.",
        RequestError::NeverOpen => "Sorry, no callback can be scheduled at the moment.",
    }
}

pub(super) fn api_error(e: &ApiError) -> Response {
    match e {
        ApiError::Invalid(r) => error(StatusCode::UNPROCESSABLE_ENTITY, request_error_message(r)),
        ApiError::AlreadyOpen => error(
            StatusCode::CONFLICT,
            "A callback to this number is already pending.",
        ),
        ApiError::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The callback service is unavailable, please try again later.",
        ),
        ApiError::Storage => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

/// The wall clock (form tokens, the furthest wished time).
pub(super) fn wall_clock() -> DateTime<Utc> {
    DateTime::<Utc>::from(std::time::SystemTime::now())
}

/// What every JSON POST from the page goes through first: the body cap (declared, then read), the rate limit
/// per client address, then the JSON itself. Gives the body and the client's address key, or the response that
/// refuses the request (counted in the rejections). `what` names the request in the log.
pub(super) async fn admit_json<T: serde::de::DeserializeOwned>(
    state: &WebState,
    req: Request,
    limit: usize,
    what: &str,
) -> Result<(T, IpAddr), Response> {
    let conn = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (parts, body) = req.into_parts();
    let inner = &state.inner;
    let rejected = |r: Reject| inner.rejections.count(r);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        rejected(Reject::TooLarge);
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    }
    let Ok(bytes) = to_bytes(body, limit).await else {
        rejected(Reject::TooLarge);
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    };
    let ip = client_key(client_ip(state, &parts.headers, conn));
    let now = Instant::now();
    let ip_check = inner
        .limits
        .lock()
        .map(|mut l| l.ip.check(&ip, now))
        .map_err(|_| ());
    match ip_check {
        Ok(Ok(())) => {}
        Ok(Err(retry)) => {
            rejected(Reject::RateIp);
            tracing::info!(%ip, "{what} refused: rate limit per address");
            return Err(too_many(
                retry,
                "Too many requests, please try again later.",
            ));
        }
        Err(_) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")),
    }
    match serde_json::from_slice(&bytes) {
        Ok(b) => Ok((b, ip)),
        Err(e) => {
            rejected(Reject::Malformed);
            Err(error(
                StatusCode::BAD_REQUEST,
                &format!("malformed JSON: {e}"),
            ))
        }
    }
}

async fn submit(AxState(state): AxState<WebState>, req: Request) -> Response {
    let inner = &state.inner;
    let rejected = |r: Reject| inner.rejections.count(r);
    let limit = inner.config.max_body_bytes;
    let (b, _ip): (SubmitBody, IpAddr) = match admit_json(&state, req, limit, "callback").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = Instant::now();
    let wall = wall_clock();
    if let Some(t) = &inner.tokens {
        if let Err(e) = t.verify(b.token.as_deref().unwrap_or(""), wall.timestamp()) {
            rejected(Reject::Token);
            return error(
                StatusCode::FORBIDDEN,
                &format!("{e}: reload the page and try again"),
            );
        }
    }
    let e164 = match inner.policy.check(&b.phone) {
        Ok(n) => n,
        Err(r) => {
            rejected(Reject::Number);
            tracing::info!(phone = %Masked(&b.phone), reason = %r, "callback refused: number");
            return error(StatusCode::UNPROCESSABLE_ENTITY, r.visitor_message());
        }
    };
    let invalid = |msg: &str| {
        rejected(Reject::Invalid);
        error(StatusCode::UNPROCESSABLE_ENTITY, msg)
    };
    let topic = non_empty(b.topic);
    let topics = &inner.config.topics;
    let mut skills = std::collections::BTreeSet::new();
    if !topics.is_empty() {
        match &topic {
            Some(t) if topics.contains(t) => {
                skills.insert(t.clone());
            }
            Some(_) => return invalid("Please choose one of the topics offered."),
            None => {}
        }
    }
    let tz = match non_empty(b.tz) {
        None => None,
        Some(name) => match name.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => return invalid("Unknown time zone."),
        },
    };
    let wished = match non_empty(b.at) {
        None => None,
        Some(at) => match wished_time(&at, tz) {
            Ok(w) => Some(w),
            Err(msg) => return invalid(msg),
        },
    };
    let resolved = match wished {
        Some(WishedTime::At(t)) => Some(t),
        Some(WishedTime::Local(l)) => tz.and_then(|tz| {
            l.and_local_timezone(tz)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        }),
        _ => None,
    };
    let ahead = chrono::TimeDelta::from_std(inner.config.max_schedule_ahead)
        .unwrap_or(chrono::TimeDelta::MAX);
    if resolved.is_some_and(|t| t > wall + ahead) {
        return invalid("Please choose a time closer to today.");
    }
    let num_check = inner
        .limits
        .lock()
        .map(|mut l| l.number.check(&e164, now))
        .map_err(|_| ());
    match num_check {
        Ok(Ok(())) => {}
        Ok(Err(retry)) => {
            rejected(Reject::RateNumber);
            tracing::info!(phone = %Masked(&e164), "callback refused: rate limit per number");
            return too_many(
                retry,
                "This number was submitted too often, please try again later.",
            );
        }
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
    let req = NewRequest {
        phone: e164.clone(),
        wished,
        topic,
        skills,
        page_url: non_empty(b.page),
        context: non_empty(b.context),
        visitor_tz: tz,
        language: non_empty(b.language),
        strategy: None,
    };
    let _serial = inner.submit_lock.lock().await;
    if inner.api.open_request_for(&e164).await.is_some() {
        rejected(Reject::AlreadyOpen);
        tracing::info!(phone = %Masked(&e164), "callback refused: already open");
        return api_error(&ApiError::AlreadyOpen);
    }
    match inner.api.submit(req).await {
        Ok(s) => {
            let id = state.public_id(s.id);
            tracing::info!(request = %s.id, phone = %Masked(&e164), state = s.state.as_str(), "callback accepted");
            let mut r = (
                StatusCode::CREATED,
                Json(json!({
                    "id": id,
                    "state": s.state.as_str(),
                    "scheduled_at": s.due.to_rfc3339(),
                })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("/api/callbacks/{id}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => {
            if let ApiError::Invalid(_) = e {
                rejected(Reject::Invalid);
            }
            api_error(&e)
        }
    }
}

/// JSON of a request; `admin` shows the full number.
fn view_json(state: &WebState, v: &RequestView, admin: bool) -> Value {
    let phone = if admin {
        v.phone.clone()
    } else {
        Masked(&v.phone).to_string()
    };
    json!({
        "id": state.public_id(v.id),
        "state": v.state.as_str(),
        "final": v.state.is_final(),
        "scheduled_at": v.due.to_rfc3339(),
        "created_at": v.created.to_rfc3339(),
        "queue_position": v.queue_position,
        "estimated_wait_s": v.estimated_wait.map(|d| d.as_secs()),
        "phone": phone,
        "topic": v.topic,
        "events": v.events.iter().map(event_json).collect::<Vec<_>>(),
        "summary": v.events.last().map(|e| describe(&e.kind)),
    })
}

async fn status(AxState(state): AxState<WebState>, Path(id): Path<String>) -> Response {
    let Some(rid) = state.inner.keys.open(&id) else {
        return error(StatusCode::NOT_FOUND, "no such request");
    };
    match state.inner.api.status(rid).await {
        Ok(Some(v)) => {
            let mut r = Json(view_json(&state, &v, false)).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "no such request"),
        Err(e) => api_error(&e),
    }
}

async fn cancel(AxState(state): AxState<WebState>, Path(id): Path<String>) -> Response {
    let Some(rid) = state.inner.keys.open(&id) else {
        return error(StatusCode::NOT_FOUND, "no such request");
    };
    match state.inner.api.cancel(rid).await {
        Ok(true) => {
            tracing::info!(request = %rid, "callback cancelled through the API");
            Json(json!({ "id": id, "state": State::Cancelled.as_str() })).into_response()
        }
        Ok(false) => match state.inner.api.status(rid).await {
            Ok(Some(v)) => (
                StatusCode::CONFLICT,
                Json(json!({
                    "error": "the request is already finished",
                    "state": v.state.as_str(),
                })),
            )
                .into_response(),
            Ok(None) => error(StatusCode::NOT_FOUND, "no such request"),
            Err(e) => api_error(&e),
        },
        Err(e) => api_error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list(
    AxState(state): AxState<WebState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(r) = admin_denied(&state, &headers, None) {
        return r;
    }
    let filter_state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => match State::from_name(s) {
            Some(st) => Some(st),
            None => return error(StatusCode::BAD_REQUEST, "unknown state"),
        },
    };
    let filter_limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let filter = ListFilter {
        state: filter_state,
        limit: filter_limit,
    };
    match state.inner.api.list(filter).await {
        Ok(mut views) => {
            // Missed first (to call back by hand), then open ones, then the rest; newest first within each.
            views.sort_by_key(|v| {
                let rank = match v.state {
                    State::Missed => 0,
                    s if !s.is_final() => 1,
                    _ => 2,
                };
                (rank, std::cmp::Reverse(v.created), std::cmp::Reverse(v.id))
            });
            views.truncate(filter_limit);
            let items: Vec<Value> = views.iter().map(|v| view_json(&state, v, true)).collect();
            let mut r = Json(json!({ "requests": items })).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => api_error(&e),
    }
}

async fn token(AxState(state): AxState<WebState>) -> Response {
    match state.form_token(wall_clock().timestamp()) {
        Some(t) => {
            let mut r = Json(json!({ "token": t })).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        None => error(StatusCode::NOT_FOUND, "form tokens are not in use"),
    }
}

async fn widget_config(AxState(state): AxState<WebState>) -> Response {
    let c = &state.inner.config;
    Json(json!({
        "topics": c.topics,
        "token_required": c.form_token.is_some(),
        "browser_calls": state.browser_calls(),
        "countries": c.allowed_countries,
    }))
    .into_response()
}

async fn metrics(AxState(state): AxState<WebState>) -> Response {
    let mut text = state.inner.api.metrics().await;
    text.push_str(&state.inner.rejections.render());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
