//! The backend API: `POST /v1/publish` (one message or a batch) and `GET /v1/presence`, behind an optional
//! bearer key. Applications call it; clients never need it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::Error;
use crate::gateway::Gateway;
use crate::model::{ChannelName, Cursor};
use crate::protocol::{ErrorBody, ErrorCode, PresenceAnswer, ProtocolError, Published};
use crate::settings::Settings;
use crate::store::Store;

struct Api<S> {
    gateway: Gateway<S>,
    api_key: Option<String>,
    max_body: usize,
    /// The most messages in one batch publish.
    max_batch: usize,
}

/// The backend routes.
pub(super) fn router<S: Store>(gateway: Gateway<S>, settings: &Settings) -> Router {
    // A batch publish may carry several messages of max_message_bytes each.
    let max_body = settings.max_message_bytes.saturating_mul(settings.max_frames_per_send);
    let api =
        Arc::new(Api { gateway, api_key: settings.api_key.clone(), max_body, max_batch: settings.max_frames_per_send });
    Router::new()
        .route("/v1/publish", post(publish::<S>))
        .route("/v1/presence", get(presence::<S>))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(api)
}

fn stored<'a>(channel: &'a ChannelName, cursor: &'a Cursor) -> Published<'a> {
    Published::Stored { channel, epoch: &cursor.epoch, offset: cursor.offset }
}

/// One message of a publish body: `{channel, data, idempotency_key?}`. Read field by field, so `"data": null`
/// is data like any other value.
fn publish_item<'a>(fields: &HashMap<String, &'a RawValue>) -> Result<(String, &'a RawValue, Option<String>), Error> {
    let text = |name: &str| fields.get(name).and_then(|v| serde_json::from_str::<Option<String>>(v.get()).ok());
    let channel = text("channel").flatten().ok_or_else(|| Error::invalid("`channel` must be a string"))?;
    let data = fields.get("data").copied().ok_or_else(|| Error::invalid("`data` is required"))?;
    let key = match text("idempotency_key") {
        Some(key) => key,
        None if fields.contains_key("idempotency_key") => {
            return Err(Error::invalid("`idempotency_key` must be a string"));
        }
        None => None,
    };
    Ok((channel, data, key))
}

fn object(text: &str) -> Result<HashMap<String, &RawValue>, Error> {
    serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Error::Protocol(ProtocolError::MalformedJson(e.to_string()))
        } else {
            Error::invalid("expected {channel, data} or {messages: [...]}")
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
            StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge(api.max_body),
            _ => Error::invalid("could not read the body"),
        })?;
        let text =
            std::str::from_utf8(&body).map_err(|e| Error::Protocol(ProtocolError::MalformedJson(e.to_string())))?;
        let fields = object(text)?;
        let Some(messages) = fields.get("messages") else {
            let (channel, data, key) = publish_item(&fields)?;
            let (channel, cursor) = api.gateway.publish(&channel, data, key.as_deref()).await?;
            return Ok(stored(&channel, &cursor).encode());
        };
        let messages: Vec<HashMap<String, &RawValue>> = serde_json::from_str(messages.get())
            .map_err(|_| Error::invalid("`messages` is an array of {channel, data}"))?;
        if messages.len() > api.max_batch {
            return Err(Error::TooManyFrames(api.max_batch));
        }
        let items: Vec<_> = messages.iter().map(publish_item).collect();
        let valid: Vec<(&str, &RawValue, Option<&str>)> = items
            .iter()
            .filter_map(|item| item.as_ref().ok())
            .map(|(c, d, k)| (c.as_str(), *d, k.as_deref()))
            .collect();
        let mut published = api.gateway.publish_all(&valid).await.into_iter();
        let outcomes: Vec<Result<_, Error>> = items
            .into_iter()
            .map(|item| item.and_then(|_| published.next().unwrap_or_else(|| Err(Error::invalid("no outcome")))))
            .collect();
        let results = outcomes
            .iter()
            .map(|outcome| match outcome {
                Ok((channel, cursor)) => stored(channel, cursor),
                Err(err) => Published::Failed(ErrorBody::new(err.code(), err.message())),
            })
            .collect();
        Ok(Published::Batch { results }.encode())
    }
    .await;
    answer(&api.gateway, result)
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
        let channel = query.ok().and_then(|q| q.0.channel).ok_or(Error::plain(ErrorCode::InvalidChannel))?;
        let (channel, pids) = api.gateway.presence(&channel).await?;
        Ok(PresenceAnswer { channel: &channel, pids: &pids }.encode())
    }
    .await;
    answer(&api.gateway, result)
}

impl<S> Api<S> {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Error> {
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
            Err(Error::plain(ErrorCode::Unauthorized))
        }
    }
}

fn answer<S: Store>(gateway: &Gateway<S>, result: Result<Bytes, Error>) -> Response {
    match result {
        Ok(body) => {
            let mut response = body.into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(err) => gateway.refused(None, err).rejection().into_response(),
    }
}
