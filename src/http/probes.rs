//! The operator's endpoints: `/healthz` (the process serves), `/readyz` (this node can serve clients: not
//! draining, the store answers and live delivery works, checked at most once a second), and `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::gateway::Gateway;
use crate::store::Store;

/// How long a readiness answer is reused: load balancers probe often, and each check is a Redis round trip.
const READY_FOR: Duration = Duration::from_secs(1);

struct Probes<S> {
    gateway: Gateway<S>,
    /// Cancelled when the node drains: not ready from that moment.
    drain: CancellationToken,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

pub(super) fn router<S: Store>(gateway: Gateway<S>, drain: CancellationToken) -> Router {
    let probes = Arc::new(Probes { gateway, drain, last: Mutex::new(None) });
    Router::new()
        .route("/healthz", get(|| async { json(StatusCode::OK, r#"{"status":"ok"}"#.into()) }))
        .route("/readyz", get(ready::<S>))
        .route("/metrics", get(metrics::<S>))
        .with_state(probes)
}

async fn ready<S: Store>(State(probes): State<Arc<Probes<S>>>) -> Response {
    if probes.drain.is_cancelled() {
        return json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#.into());
    }
    if let Some(why) = probes.gateway.overloaded() {
        let body = serde_json::json!({ "status": "not_ready", "reason": why }).to_string();
        return json(StatusCode::SERVICE_UNAVAILABLE, body);
    }
    let cached = probes.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let result = match cached {
        Some((at, result)) if at.elapsed() < READY_FOR => result,
        _ => {
            let result = probes.gateway.ready().await.map_err(|err: Error| err.message().into_owned());
            *probes.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), result.clone()));
            result
        }
    };
    match result {
        Ok(()) => json(StatusCode::OK, r#"{"status":"ready"}"#.into()),
        Err(why) => {
            let body = serde_json::json!({ "status": "not_ready", "reason": why }).to_string();
            json(StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

async fn metrics<S: Store>(State(probes): State<Arc<Probes<S>>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], probes.gateway.metrics(probes.drain.is_cancelled())).into_response()
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
