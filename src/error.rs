//! The core's errors, each with the stable code clients see (docs/PROTOCOL.md, "HTTP errors").

use stickless_transports::{Fault, Rejection};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("the body or frame is not JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidFrame(String),
    #[error("unknown frame type `{0}`")]
    UnknownType(String),
    #[error("channel names match [A-Za-z0-9_.:/-]{{1,128}}")]
    InvalidChannel,
    #[error("invalid position: {0}")]
    InvalidPosition(&'static str),
    #[error("at most {0} frames per send")]
    TooManyFrames(usize),
    #[error("at most {0} subscriptions per session")]
    TooManySubscriptions(usize),
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("unknown or expired session; create a new one and re-subscribe with `since`")]
    SessionUnknown,
    #[error("data is over max_message_bytes ({0})")]
    PayloadTooLarge(usize),
    #[error("the store did not answer, so this is not acknowledged (usually not stored); retry with the same id or idempotency_key: {0}")]
    StoreUnavailable(String),
}

impl CoreError {
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::MalformedJson(_) => "malformed_json",
            CoreError::InvalidFrame(_) => "invalid_frame",
            CoreError::UnknownType(_) => "unknown_type",
            CoreError::InvalidChannel => "invalid_channel",
            CoreError::InvalidPosition(_) => "invalid_position",
            CoreError::TooManyFrames(_) => "too_many_frames",
            CoreError::TooManySubscriptions(_) => "too_many_subscriptions",
            CoreError::Unauthorized => "unauthorized",
            CoreError::Forbidden(_) => "forbidden",
            CoreError::SessionUnknown => "session_unknown",
            CoreError::PayloadTooLarge(_) => "payload_too_large",
            CoreError::StoreUnavailable(_) => "store_unavailable",
        }
    }

    fn fault(&self) -> Fault {
        match self {
            CoreError::Unauthorized => Fault::Unauthorized,
            CoreError::Forbidden(_) => Fault::Forbidden,
            CoreError::SessionUnknown => Fault::NotFound,
            CoreError::PayloadTooLarge(_) => Fault::TooLarge,
            CoreError::StoreUnavailable(_) => Fault::Unavailable,
            _ => Fault::BadRequest,
        }
    }
}

impl From<StoreError> for CoreError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::TooManySubscriptions(n) => CoreError::TooManySubscriptions(n),
            StoreError::Unavailable(msg) => CoreError::StoreUnavailable(msg),
        }
    }
}

impl From<CoreError> for Rejection {
    fn from(err: CoreError) -> Self {
        Rejection::new(err.fault(), err.code(), err.to_string())
    }
}
