//! Turning a [`Rejection`] into the answer a client understands: an HTTP status with a JSON body.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::port::{Fault, Rejection};

impl Fault {
    /// The HTTP status for this class of fault.
    pub fn status(self) -> StatusCode {
        match self {
            Fault::BadRequest => StatusCode::BAD_REQUEST,
            Fault::Unauthorized => StatusCode::UNAUTHORIZED,
            Fault::Forbidden => StatusCode::FORBIDDEN,
            Fault::NotFound => StatusCode::NOT_FOUND,
            Fault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Fault::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl Rejection {
    /// `{"error":{"code":..,"message":..}}`
    pub fn body(&self) -> String {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } }).to_string()
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = self.body();
        (self.kind.status(), [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// Rejections raised by the transports themselves, before the core is asked.
pub(crate) mod rejections {
    use super::*;

    pub fn transport_disabled(name: &str) -> Rejection {
        Rejection::new(
            Fault::NotFound,
            "transport_disabled",
            format!("the {name} transport is turned off on this server"),
        )
    }

    pub fn over_capacity() -> Rejection {
        Rejection::new(Fault::Unavailable, "over_capacity", "this node's connection limit is reached; retry later")
    }

    pub fn bad_query(err: impl std::fmt::Display) -> Rejection {
        Rejection::new(Fault::BadRequest, "invalid_frame", format!("bad query string: {err}"))
    }

    pub fn body(err: axum::extract::rejection::BytesRejection) -> Rejection {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Rejection::new(Fault::TooLarge, "payload_too_large", "the request body is over max_message_bytes")
        } else {
            Rejection::new(Fault::BadRequest, "invalid_frame", err.body_text())
        }
    }

    pub fn forbidden_origin() -> Rejection {
        Rejection::new(Fault::Forbidden, "forbidden", "this Origin may not open a WebSocket here")
    }
}
