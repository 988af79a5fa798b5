//! The click-to-call HTTP API, web widget and admin page, as an axum [`Router`] any Rust service can mount
//! (cargo feature `http`, on by default).
//!
//! [`router`] serves:
//!
//! | route | what | who |
//! | --- | --- | --- |
//! | `GET /` | demo page with the widget | anyone |
//! | `GET /widget.js`, `/widget.css` | the widget, embeddable with one script tag | anyone (CORS) |
//! | `GET /admin` | admin page (its data calls need the token) | anyone |
//! | `POST /api/callbacks` | submit `{"phone", "at", "topic", "page", "context", "tz", "token"}` → 201 | anyone (CORS) |
//! | `GET /api/callbacks/{id}` | state, queue position, wait, timeline | holder of the id (CORS) |
//! | `DELETE /api/callbacks/{id}` | cancel | holder of the id (CORS) |
//! | `GET /api/callbacks/{id}/events` | that request's events (SSE) | holder of the id (CORS) |
//! | `GET /api/token` | a form token, when tokens are on | anyone (CORS) |
//! | `GET /api/widget-config` | topics, whether a token is needed, whether browser calls are on | anyone (CORS) |
//! | `POST /api/webrtc` | a call from the browser: `{"offer", "topic", "page", "token"}` → 201 `{"id", "state", "answer"}` (feature `webrtc`, once [`WebState::enable_browser_calls`]) | anyone (CORS) |
//! | `POST /api/webrtc/{id}/hangup` | the visitor hangs up a call from the browser | holder of the id (CORS) |
//! | `GET /api/callbacks?state=missed` | list, missed first | `Authorization: Bearer <admin_token>` |
//! | `GET /api/events` | every request's events (SSE) | admin (header or `?access_token=`, as `EventSource` cannot set headers) |
//! | `GET /metrics`, `GET /healthz` | Prometheus text, liveness | anyone |
//!
//! Public request ids carry an HMAC tag ([`abuse::RequestKeys`]) so they cannot be enumerated.
//!
//! The handlers talk to the callback service through the [`CallbackApi`] trait, so the router can be tested (and
//! mounted) against anything that implements it; the tokio callback service implements it.
//!
//! Written on axum because a service that embeds rappel most likely already runs an axum or hyper server and can
//! `merge`/`nest` this router; CORS and the body limit are a few lines here rather than a tower-http dependency.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::sync::broadcast;

use crate::callback::request::RequestError;
use crate::callback::{NewRequest, RequestEvent, RequestId, State, Time};

pub mod abuse;
mod api;
mod assets;
#[cfg(feature = "webrtc")]
mod browser;
mod events;
mod service_api;

use abuse::{FormTokens, PhonePolicy, RateLimiter, RequestKeys, UnknownCountry};
#[cfg(feature = "webrtc")]
pub use browser::BrowserGateway;

/// A boxed future, as the [`CallbackApi`] methods return (the trait is used as `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a submission returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The new request.
    pub id: RequestId,
    /// `scheduled` or `queued`.
    pub state: State,
    /// When the callback is due.
    pub due: Time,
}

/// A request as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestView {
    /// Id.
    pub id: RequestId,
    /// Current state.
    pub state: State,
    /// When the callback is (or was) due.
    pub due: Time,
    /// Requests ahead in the line for an agent (0 = next), while waiting.
    pub queue_position: Option<usize>,
    /// Estimated wait for an agent, while waiting.
    pub estimated_wait: Option<Duration>,
    /// History, oldest first.
    pub events: Vec<RequestEvent>,
    /// The visitor's number (E.164); the public view masks it.
    pub phone: String,
    /// Topic.
    pub topic: Option<String>,
    /// When it was submitted.
    pub created: Time,
}

/// Which requests to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only requests in this state.
    pub state: Option<State>,
    /// At most this many (newest first).
    pub limit: usize,
}

/// Errors of the callback service as the API sees them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request was refused (422).
    #[error(transparent)]
    Invalid(#[from] RequestError),
    /// The number already has an open request (409).
    #[error("the number already has an open request")]
    AlreadyOpen,
    /// The service is stopping or overloaded (503).
    #[error("service unavailable")]
    Unavailable,
    /// Storage failed (500).
    #[error("storage error")]
    Storage,
}

/// The callback service as the web layer uses it.
///
/// Implemented by the tokio [`CallbackService`](crate::callback::service::CallbackService); tests implement it
/// with doubles. Numbers passed in are E.164.
pub trait CallbackApi: Send + Sync + 'static {
    /// Accepts a validated request.
    fn submit(&self, req: NewRequest) -> BoxFuture<'_, Result<Submission, ApiError>>;
    /// A request's state and history, `None` if unknown.
    fn status(&self, id: RequestId) -> BoxFuture<'_, Result<Option<RequestView>, ApiError>>;
    /// Cancels a request; `false` if it is unknown or already final.
    fn cancel(&self, id: RequestId) -> BoxFuture<'_, Result<bool, ApiError>>;
    /// Lists requests.
    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<RequestView>, ApiError>>;
    /// Every request event as it is recorded.
    fn subscribe(&self) -> broadcast::Receiver<(RequestId, RequestEvent)>;
    /// Prometheus text exposition.
    fn metrics(&self) -> BoxFuture<'_, String>;
    /// The open (not final) request for this E.164 number, if any.
    fn open_request_for<'a>(&'a self, e164: &'a str) -> BoxFuture<'a, Option<RequestId>>;
    /// Calls up now.
    fn live_calls(&self) -> usize;
}

/// Settings of the web layer.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Bearer token of the admin endpoints; `None` disables them (403).
    pub admin_token: Option<String>,
    /// Secret of the HMAC tag in public request ids; random by default (then ids handed out before a restart no
    /// longer open their requests: set it to keep them).
    pub id_secret: Vec<u8>,
    /// Secret and lifetime of form tokens; `None`: no token required.
    pub form_token: Option<(Vec<u8>, Duration)>,
    /// Largest request body (bytes); larger gets 413.
    pub max_body_bytes: usize,
    /// Submissions per client IP: burst, and one more per interval.
    pub ip_rate: (u32, Duration),
    /// Submissions per number: burst, and one more per interval.
    pub number_rate: (u32, Duration),
    /// Keys tracked per rate limiter.
    pub rate_limit_keys: usize,
    /// Allowed countries (ISO codes; empty: any). The first is the region of numbers typed without `+`.
    pub allowed_countries: Vec<String>,
    /// E.164 prefixes never called.
    pub denied_prefixes: Vec<String>,
    /// Refuse premium-rate, shared-cost and UAN numbers by type.
    pub deny_premium_types: bool,
    /// Take the client IP from `X-Forwarded-For` (last entry): only behind a reverse proxy that sets it.
    pub trust_forwarded_for: bool,
    /// CORS origins of the widget endpoints (`*` for any).
    pub allowed_origins: Vec<String>,
    /// Topics offered; when non-empty a topic must be one of them and becomes the required agent skill.
    pub topics: Vec<String>,
    /// Furthest wished time accepted.
    pub max_schedule_ahead: Duration,
    /// Server-sent event streams open at once; more get 503.
    pub max_event_streams: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            admin_token: None,
            id_secret: rand::random::<[u8; 32]>().to_vec(),
            form_token: None,
            max_body_bytes: 4096,
            ip_rate: (5, Duration::from_secs(60)),
            number_rate: (2, Duration::from_secs(1800)),
            rate_limit_keys: 100_000,
            allowed_countries: Vec::new(),
            denied_prefixes: Vec::new(),
            deny_premium_types: true,
            trust_forwarded_for: false,
            allowed_origins: vec!["*".to_owned()],
            topics: Vec::new(),
            max_schedule_ahead: Duration::from_secs(90 * 86_400),
            max_event_streams: 1000,
        }
    }
}

impl WebConfig {
    /// From the `[http]` and `[security]` sections of a [`Config`](crate::config::Config).
    pub fn from_config(c: &crate::config::Config) -> Self {
        let h = &c.http;
        let id_secret = h
            .id_secret
            .clone()
            .or_else(|| h.admin_token.as_ref().map(|t| format!("rappel-id:{t}")))
            .map_or_else(|| rand::random::<[u8; 32]>().to_vec(), String::into_bytes);
        WebConfig {
            admin_token: h.admin_token.clone(),
            id_secret,
            form_token: h.form_token_secret.as_ref().map(|s| {
                (
                    s.as_bytes().to_vec(),
                    Duration::from_secs(h.form_token_ttl_s),
                )
            }),
            max_body_bytes: h.max_body_bytes,
            ip_rate: (h.ip_burst, Duration::from_secs(h.ip_refill_s)),
            number_rate: (h.number_burst, Duration::from_secs(h.number_refill_s)),
            allowed_countries: c.security.allowed_countries.clone(),
            denied_prefixes: c.security.denied_prefixes.clone(),
            deny_premium_types: c.security.deny_premium_types,
            trust_forwarded_for: h.trust_forwarded_for,
            allowed_origins: h.allowed_origins.clone(),
            topics: h.topics.clone(),
            ..WebConfig::default()
        }
    }
}

/// Rate limiters shared by the handlers.
#[derive(Debug)]
struct Limits {
    ip: RateLimiter<IpAddr>,
    number: RateLimiter<String>,
}

/// Everything the handlers share: the service, the settings and the abuse-protection state.
#[derive(Clone)]
pub struct WebState {
    inner: Arc<Inner>,
}

struct Inner {
    api: Arc<dyn CallbackApi>,
    config: WebConfig,
    policy: PhonePolicy,
    tokens: Option<FormTokens>,
    keys: RequestKeys,
    limits: Mutex<Limits>,
    /// Serialises "is there an open request for this number?" with the submission.
    submit_lock: tokio::sync::Mutex<()>,
    rejections: api::Rejections,
    /// One permit per open event stream.
    streams: Arc<tokio::sync::Semaphore>,
    /// Calls from the browser, once enabled ([`WebState::enable_browser_calls`]).
    #[cfg(feature = "webrtc")]
    browser: std::sync::OnceLock<BrowserGateway>,
}

impl std::fmt::Debug for WebState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebState")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl WebState {
    /// State over a callback service. Fails on an unknown country code.
    pub fn new(api: Arc<dyn CallbackApi>, config: WebConfig) -> Result<Self, UnknownCountry> {
        let policy = PhonePolicy::new(
            &config.allowed_countries,
            &config.denied_prefixes,
            config.deny_premium_types,
        )?;
        let tokens = config
            .form_token
            .as_ref()
            .map(|(k, ttl)| FormTokens::new(k, *ttl));
        let keys = RequestKeys::new(&config.id_secret);
        let limits = Limits {
            ip: RateLimiter::new(config.ip_rate.0, config.ip_rate.1, config.rate_limit_keys),
            number: RateLimiter::new(
                config.number_rate.0,
                config.number_rate.1,
                config.rate_limit_keys,
            ),
        };
        Ok(WebState {
            inner: Arc::new(Inner {
                api,
                policy,
                tokens,
                keys,
                limits: Mutex::new(limits),
                submit_lock: tokio::sync::Mutex::new(()),
                rejections: api::Rejections::default(),
                streams: Arc::new(tokio::sync::Semaphore::new(config.max_event_streams)),
                #[cfg(feature = "webrtc")]
                browser: std::sync::OnceLock::new(),
                config,
            }),
        })
    }

    /// The public id of a request (what `POST /api/callbacks` returns).
    pub fn public_id(&self, id: RequestId) -> String {
        self.inner.keys.seal(id)
    }

    /// Turns on calls from the browser (`POST /api/webrtc`, the widget's "Call from my browser" button). Only
    /// the first call counts.
    #[cfg(feature = "webrtc")]
    pub fn enable_browser_calls(&self, gateway: BrowserGateway) {
        let _ = self.inner.browser.set(gateway);
    }

    /// Whether calls from the browser are on.
    pub fn browser_calls(&self) -> bool {
        #[cfg(feature = "webrtc")]
        return self.inner.browser.get().is_some();
        #[cfg(not(feature = "webrtc"))]
        false
    }

    /// A fresh form token (when form tokens are on).
    pub fn form_token(&self, now_unix: i64) -> Option<String> {
        self.inner.tokens.as_ref().map(|t| t.issue(now_unix))
    }
}

/// The router: API, widget, admin page, events, metrics and health. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so that rate limits see client addresses (without it all
/// clients share one bucket).
pub fn router(state: WebState) -> Router {
    let limit = state.inner.config.max_body_bytes;
    api::routes(state.clone())
        .merge(assets::routes())
        .layer(axum::extract::DefaultBodyLimit::max(limit))
}
