//! The widget, the demo page and the admin page: hand-written files compiled into the binary (no front-end build
//! step), served with their content types and caching headers.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("assets/index.html");
const ADMIN_HTML: &str = include_str!("assets/admin.html");
const ADMIN_JS: &str = include_str!("assets/admin.js");
const WIDGET_JS: &str = include_str!("assets/widget.js");
const WIDGET_CSS: &str = include_str!("assets/widget.css");

/// How long browsers and caches may keep the widget files (they are embedded from other sites).
const WIDGET_CACHE: &str = "public, max-age=300";

fn asset(
    body: &'static str,
    content_type: &'static str,
    cache: &'static str,
    cors: bool,
) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if cors {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    r
}

fn page(body: &'static str) -> Response {
    let mut r = asset(body, "text/html; charset=utf-8", "no-cache", false);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { page(INDEX_HTML) }))
        .route("/admin", get(|| async { page(ADMIN_HTML) }))
        .route(
            "/admin.js",
            get(|| async {
                asset(
                    ADMIN_JS,
                    "text/javascript; charset=utf-8",
                    "no-cache",
                    false,
                )
            }),
        )
        .route(
            "/widget.js",
            get(|| async {
                asset(
                    WIDGET_JS,
                    "text/javascript; charset=utf-8",
                    WIDGET_CACHE,
                    true,
                )
            }),
        )
        .route(
            "/widget.css",
            get(|| async { asset(WIDGET_CSS, "text/css; charset=utf-8", WIDGET_CACHE, true) }),
        )
}
