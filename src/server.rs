//! Wiring: the transports' router, the backend API (`/v1/publish`, `/v1/presence`), the demo files, tower
//! layers, and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method};
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
}

/// The whole application router for one node.
pub fn router<S: Store>(gateway: Gateway<S>, config: &Config, lifecycle: Lifecycle) -> Router {
    let api = Arc::new(Api {
        gateway: gateway.clone(),
        api_key: config.api_key.clone(),
        // A batch publish may carry several messages of max_message_bytes each.
        max_body: config.max_message_bytes.saturating_mul(config.max_frames_per_send.max(1)),
    });
    let backend = Router::new()
        .route("/v1/publish", post(publish::<S>))
        .route("/v1/presence", get(presence::<S>))
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

#[derive(Deserialize)]
struct PublishOne<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    idempotency_key: Option<String>,
    #[serde(borrow)]
    messages: Option<Vec<PublishOne<'a>>>,
}

async fn publish<S: Store>(
    State(api): State<Arc<Api<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        api.authorize(&headers)?;
        let body = body.map_err(|_| CoreError::InvalidFrame("could not read the body".into()))?;
        if body.len() > api.max_body {
            return Err(CoreError::PayloadTooLarge(api.max_body));
        }
        let parsed: PublishBody = serde_json::from_slice(&body).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                CoreError::MalformedJson(e.to_string())
            } else {
                CoreError::InvalidFrame(e.to_string())
            }
        })?;
        if let Some(messages) = parsed.messages {
            let mut results = Vec::with_capacity(messages.len());
            for m in messages {
                results.push(match api.gateway.publish(&m.channel, m.data, m.idempotency_key.as_deref()).await {
                    Ok(stored) => stored,
                    Err(err) => serde_json::json!({ "error": { "code": err.code(), "message": err.to_string() } }),
                });
            }
            return Ok(serde_json::json!({ "results": results }));
        }
        let (Some(channel), Some(data)) = (parsed.channel, parsed.data) else {
            return Err(CoreError::InvalidFrame("expected {channel, data} or {messages: [...]}".into()));
        };
        api.gateway.publish(&channel, data, parsed.idempotency_key.as_deref()).await
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
