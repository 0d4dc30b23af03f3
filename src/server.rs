//! Wiring: the transports' router, the backend API (`/v1/publish`, `/v1/presence`), the demo files, tower
//! layers, and graceful shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use stickless_transports::{Fault, Lifecycle, Rejection};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{Any, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::error::CoreError;
use crate::gateway::Gateway;
use crate::store::Store;

struct Api<S> {
    gateway: Gateway<S>,
    api_key: Option<String>,
    max_body: usize,
    /// The most messages in one batch publish.
    max_batch: usize,
}

/// The whole application router for one node.
pub fn router<S: Store>(gateway: Gateway<S>, config: &Config, lifecycle: Lifecycle) -> Router {
    // A batch publish may carry several messages of max_message_bytes each.
    let max_body = config.max_message_bytes.saturating_mul(config.max_frames_per_send.max(1));
    let api = Arc::new(Api {
        gateway: gateway.clone(),
        api_key: config.api_key.clone(),
        max_body,
        max_batch: config.max_frames_per_send.max(1),
    });
    let backend = Router::new()
        .route("/v1/publish", post(publish::<S>))
        .route("/v1/presence", get(presence::<S>))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(api);
    let cors = CorsLayer::new().allow_origin(Any).allow_methods([Method::GET, Method::POST]).allow_headers([
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        "last-event-id".parse().expect("valid header"),
    ]);
    stickless_transports::router(gateway, config.transport(), lifecycle)
        .merge(backend)
        .fallback_service(ServeDir::new(&config.web_dir))
        .layer(cors)
        .layer(CatchPanicLayer::custom(|_| {
            Rejection::new(Fault::Unavailable, "internal", "the server failed on this request").into_response()
        }))
        .layer(TraceLayer::new_for_http())
}

/// Serves until SIGINT/SIGTERM or `shutdown` is cancelled, then ends live connections and waits for them.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, lifecycle: Lifecycle) -> std::io::Result<()> {
    let token = lifecycle.shutdown.clone();
    tokio::spawn({
        let token = token.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: closing live connections");
            token.cancel();
        }
    });
    axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await?;
    lifecycle.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), lifecycle.tasks.wait()).await;
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

/// One message of a publish body: `{channel, data, idempotency_key?}`. Read field by field, so `"data": null`
/// is data like any other value.
fn publish_item<'a>(
    fields: &HashMap<String, &'a RawValue>,
) -> Result<(String, &'a RawValue, Option<String>), CoreError> {
    let text = |name: &str| fields.get(name).and_then(|v| serde_json::from_str::<Option<String>>(v.get()).ok());
    let channel =
        text("channel").flatten().ok_or_else(|| CoreError::InvalidFrame("`channel` must be a string".into()))?;
    let data = fields.get("data").copied().ok_or_else(|| CoreError::InvalidFrame("`data` is required".into()))?;
    let key = match text("idempotency_key") {
        Some(key) => key,
        None if fields.contains_key("idempotency_key") => {
            return Err(CoreError::InvalidFrame("`idempotency_key` must be a string".into()));
        }
        None => None,
    };
    Ok((channel, data, key))
}

fn object(text: &str) -> Result<HashMap<String, &RawValue>, CoreError> {
    serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            CoreError::MalformedJson(e.to_string())
        } else {
            CoreError::InvalidFrame("expected {channel, data} or {messages: [...]}".into())
        }
    })
}

async fn publish<S: Store>(
    State(api): State<Arc<Api<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        api.authorize(&headers)?;
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => CoreError::PayloadTooLarge(api.max_body),
            _ => CoreError::InvalidFrame("could not read the body".into()),
        })?;
        let text = std::str::from_utf8(&body).map_err(|e| CoreError::MalformedJson(e.to_string()))?;
        let fields = object(text)?;
        let Some(messages) = fields.get("messages") else {
            let (channel, data, key) = publish_item(&fields)?;
            return api.gateway.publish(&channel, data, key.as_deref()).await;
        };
        let messages: Vec<HashMap<String, &RawValue>> = serde_json::from_str(messages.get())
            .map_err(|_| CoreError::InvalidFrame("`messages` is an array of {channel, data}".into()))?;
        if messages.len() > api.max_batch {
            return Err(CoreError::TooManyFrames(api.max_batch));
        }
        let mut results = Vec::with_capacity(messages.len());
        for fields in &messages {
            let stored = match publish_item(fields) {
                Ok((channel, data, key)) => api.gateway.publish(&channel, data, key.as_deref()).await,
                Err(err) => Err(err),
            };
            results.push(stored.unwrap_or_else(
                |err| serde_json::json!({ "error": { "code": err.code(), "message": err.to_string() } }),
            ));
        }
        Ok(serde_json::json!({ "results": results }))
    }
    .await;
    answer(result)
}

#[derive(Deserialize)]
struct PresenceQuery {
    channel: Option<String>,
}

async fn presence<S: Store>(
    State(api): State<Arc<Api<S>>>,
    headers: HeaderMap,
    query: Result<Query<PresenceQuery>, QueryRejection>,
) -> Response {
    let result = async {
        api.authorize(&headers)?;
        let channel = query.ok().and_then(|q| q.0.channel).ok_or(CoreError::InvalidChannel)?;
        let pids = api.gateway.presence(&channel).await?;
        Ok(serde_json::json!({ "channel": channel, "pids": pids }))
    }
    .await;
    answer(result)
}

impl<S> Api<S> {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), CoreError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compare every byte, so the time taken does not tell how much of a guess was right.
        let same = given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same {
            Ok(())
        } else {
            Err(CoreError::Unauthorized)
        }
    }
}

fn answer(result: Result<serde_json::Value, CoreError>) -> Response {
    match result {
        Ok(value) => ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response(),
        Err(err) => Rejection::from(err).into_response(),
    }
}
