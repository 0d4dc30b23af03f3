//! `POST /v1/send`: upstream frames for clients whose downstream is SSE or long-polling.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::error::rejections;
use crate::{json_response, AttachParams, Fault, Port, Rejection, Shared};

pub(crate) async fn send<P: Port>(
    State(shared): State<Shared<P>>,
    AttachParams(query): AttachParams,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(err) => return rejections::body(err).into_response(),
    };
    if body.len() > shared.config.max_message_bytes {
        return too_large().into_response();
    }
    let Some(session) = query.session.filter(|s| !s.is_empty()) else {
        return Rejection::new(Fault::BadRequest, "invalid_frame", "`session` query parameter is required")
            .into_response();
    };
    match shared.port.send(&session, &body).await {
        Ok(replies) => json_response(replies),
        Err(rejection) => rejection.into_response(),
    }
}

fn too_large() -> Rejection {
    Rejection::new(Fault::TooLarge, "payload_too_large", "the request body is over max_message_bytes")
}
