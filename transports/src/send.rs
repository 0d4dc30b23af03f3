//! `POST /v1/send`: upstream frames for clients whose downstream is SSE or long-polling.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::{json_response, AttachParams, Port, Refusal, Shared};

pub(crate) async fn send<P: Port>(
    State(shared): State<Shared<P>>,
    params: AttachParams,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let refuse = |refusal| shared.port.refuse(refusal).into_response();
    let body = match body {
        Ok(body) if body.len() <= shared.config.max_message_bytes => body,
        Ok(_) => return refuse(Refusal::BodyTooLarge),
        Err(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => return refuse(Refusal::BodyTooLarge),
        Err(err) => return refuse(Refusal::BadBody(err.body_text())),
    };
    let Some(session) = params.session() else {
        return refuse(Refusal::MissingSession);
    };
    match shared.port.send(session, &body).await {
        Ok(replies) => json_response(replies),
        Err(rejection) => rejection.into_response(),
    }
}
