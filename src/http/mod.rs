//! HTTP wiring: the transports' router, the backend API, the demo files and tower layers in one [`Router`], and
//! serving it with graceful shutdown.

mod api;
mod events;
mod probes;
mod serve;
mod web;

pub use serve::{serve, shutdown_signal, ServeSettings};

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use stickless_transports::Lifecycle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::error::Error;
use crate::gateway::Gateway;
use crate::protocol::ErrorCode;
use crate::settings::{Settings, WebFiles};
use crate::store::Store;

/// Every route of one node: the transports, `/v1/send`, `/v1/negotiate`, the backend API and the web files.
pub(crate) fn router<S: Store>(gateway: Gateway<S>, settings: &Settings, lifecycle: Lifecycle) -> Router {
    // Built once, told on each panic: not a refusal counted now.
    let internal = Error::plain(ErrorCode::Internal).rejection();
    let lifecycle_drain = lifecycle.drain.clone();
    // CORS for the client endpoints only, from the same list as the WebSocket Origin check; the backend API
    // (`/v1/publish`, `/v1/presence`) is for servers and answers no browser page.
    let clients = stickless_transports::router(gateway.clone(), settings.transport(), lifecycle).layer(cors(settings));
    let probes = probes::router(gateway.clone(), lifecycle_drain);
    let mut router = clients.merge(api::router(gateway, settings)).merge(probes);
    router = match &settings.web {
        WebFiles::Off => router,
        WebFiles::Embedded => router.fallback(web::embedded),
        WebFiles::Dir(dir) => router.fallback_service(ServeDir::new(dir)),
    };
    // A 503 is an answer (not ready, draining, store unavailable) counted in /metrics, not an ERROR line per
    // health check.
    let trace = TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG));
    let (timeout, limit) =
        (settings.body_timeout, settings.max_message_bytes.saturating_mul(settings.max_frames_per_send));
    router
        .layer(axum::middleware::from_fn(move |request, next| body_deadline(timeout, limit, request, next)))
        .layer(CatchPanicLayer::custom(move |_| internal.clone().into_response()))
        .layer(trace)
}

/// Reads a request's whole body within `timeout` before the route sees it, so a client that sends its body a
/// byte at a time (slowloris) is answered 408 and cut rather than holding a connection and a task for ever. Every
/// body stickless accepts is small and read whole anyway; `limit` is the largest (a batch publish).
async fn body_deadline(timeout: Duration, limit: usize, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let refused = |code, message: String| {
        let mut response = Error::with(code, message).rejection().into_response();
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    };
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(err)) => refused(ErrorCode::PayloadTooLarge, format!("the request body is over {limit} bytes ({err})")),
        Err(_) => refused(ErrorCode::RequestTimeout, format!("the request body did not arrive within {timeout:?}")),
    }
}

fn cors(settings: &Settings) -> CorsLayer {
    let origins: Vec<HeaderValue> = settings.allowed_origins.iter().filter_map(|o| o.parse().ok()).collect();
    let allow = if settings.allowed_origins.is_empty() || settings.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins)
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, HeaderName::from_static("last-event-id")])
        // A page may read when to retry a rate-limited request.
        .expose_headers([header::RETRY_AFTER])
}
