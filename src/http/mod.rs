//! HTTP wiring: the transports' router, the backend API, the demo files and tower layers in one [`Router`], and
//! serving it with graceful shutdown.

mod api;
mod probes;
mod web;

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::response::IntoResponse;
use axum::Router;
use stickless_transports::{Lifecycle, Port, Refusal};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::gateway::Gateway;
use crate::settings::{Settings, WebFiles};
use crate::store::Store;

/// Every route of one node: the transports, `/v1/send`, `/v1/negotiate`, the backend API and the web files.
pub(crate) fn router<S: Store>(gateway: Gateway<S>, settings: &Settings, lifecycle: Lifecycle) -> Router {
    let internal = gateway.refuse(Refusal::Internal);
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
    router.layer(CatchPanicLayer::custom(move |_| internal.clone().into_response())).layer(trace)
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

/// Serves `app` until SIGINT/SIGTERM (or `lifecycle.drain`), then drains: `/readyz` turns 503, new attaches are
/// refused, every connection is told when to reconnect and ends; then the server stops, letting in-flight
/// requests finish, and this returns within `drain_timeout` of the signal.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    lifecycle: Lifecycle,
    (drain_window, drain_timeout): (Duration, Duration),
) -> std::io::Result<()> {
    let (drain, shutdown) = (lifecycle.drain.clone(), lifecycle.shutdown.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = drain.cancelled() => {}
            _ = shutdown.cancelled() => return,
        }
        tracing::info!("draining: every client is told when to reconnect; exiting within {drain_timeout:?}");
        drain.cancel();
        // Told connections end at once. The node keeps answering for the drain window (at most half the drain
        // timeout): load balancers see /readyz 503 and clients that still arrive get 503 `draining` with when to
        // come back, rather than a refused connection. Then it stops accepting and finishes what is in flight.
        tokio::time::sleep(drain_window.min(drain_timeout / 2)).await;
        shutdown.cancel();
    });
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let stopped = lifecycle.shutdown.clone();
    let served = axum::serve(listener, app).with_graceful_shutdown(stopped.clone().cancelled_owned());
    // The drain's timeout counts from the signal: what the window took is not given again.
    let left = drain_timeout.saturating_sub(drain_window.min(drain_timeout / 2));
    tokio::select! {
        result = served => result?,
        _ = async { stopped.cancelled().await; tokio::time::sleep(left).await } => {
            tracing::warn!("drain timeout: exiting with requests still in flight");
        }
    }
    lifecycle.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5).min(drain_timeout), lifecycle.tasks.wait()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
