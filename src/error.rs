//! The one place where a failure becomes what a client sees: an [`ErrorCode`] and a message, told as an HTTP
//! error body, an `error` frame or a WebSocket close ([`Rejection`]).
//!
//! Each layer below has its own small error ([`ModelError`], [`ProtocolError`], [`StoreError`]); this module
//! converts them, and nothing below it depends on it.

use std::borrow::Cow;

use axum::http::StatusCode;
use bytes::Bytes;
use stickless_transports::{Refusal, Rejection};

use crate::auth::hooks::HookUnavailable;
use crate::auth::token::TokenError;
use crate::limits::RetryAfter;
use crate::model::ModelError;
use crate::protocol::{self, Downstream, ErrorCode, ProtocolError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("the application's hook did not answer; nothing was done: {0}")]
    Hook(#[from] HookUnavailable),
    #[error("too many requests; retry in {} ms", .0.0.as_millis())]
    RateLimited(RetryAfter),
    #[error("this node is shutting down; reconnect in {} ms (to another node)", .0.as_millis())]
    Draining(std::time::Duration),
    #[error("at most {0} frames per send")]
    TooManyFrames(usize),
    #[error("data is over max_message_bytes ({0})")]
    PayloadTooLarge(usize),
    #[error("{}", .0.describe())]
    Plain(ErrorCode),
    #[error("{1}")]
    Other(ErrorCode, Cow<'static, str>),
}

impl From<ModelError> for Error {
    fn from(err: ModelError) -> Self {
        Error::Protocol(err.into())
    }
}

impl Error {
    /// A request refused with the `code`'s usual message.
    pub fn plain(code: ErrorCode) -> Self {
        Error::Plain(code)
    }

    /// A request refused with its own message.
    pub fn with(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Error::Other(code, message.into())
    }

    /// A malformed request or frame, with what was wrong.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Error::Protocol(ProtocolError::InvalidFrame(message.into()))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Protocol(err) => err.code(),
            Error::Store(StoreError::TooManySubscriptions(_)) => ErrorCode::TooManySubscriptions,
            Error::Store(StoreError::Unavailable(_)) => ErrorCode::StoreUnavailable,
            // A bound of the store is a quota like the rate limits: one code for clients to back off on.
            Error::Store(StoreError::RateLimited(_) | StoreError::Full(_)) => ErrorCode::RateLimited,
            Error::Token(TokenError::Expired) => ErrorCode::TokenExpired,
            Error::Token(TokenError::Invalid(_)) => ErrorCode::TokenInvalid,
            Error::Hook(_) => ErrorCode::HookUnavailable,
            Error::RateLimited(_) => ErrorCode::RateLimited,
            Error::Draining(_) => ErrorCode::Draining,
            Error::TooManyFrames(_) => ErrorCode::TooManyFrames,
            Error::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Error::Plain(code) | Error::Other(code, _) => *code,
        }
    }

    /// What the client reads: the specific message, or the code's own where a lower layer's would mislead.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Error::Protocol(ProtocolError::Model(ModelError::InvalidSessionId)) => self.code().describe().into(),
            Error::Store(StoreError::Unavailable(cause)) => format!("{}: {cause}", self.code().describe()).into(),
            other => other.to_string().into(),
        }
    }

    /// The `error` frame answering the upstream frame `id`.
    pub fn frame(&self, id: Option<&str>) -> Bytes {
        let retry_after_ms = self.retry_after().map(|wait| wait.as_millis() as u64);
        Downstream::Error { code: self.code(), id, message: &self.message(), retry_after_ms }.encode()
    }

    /// Over a rate limit: when a retry will be let through.
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::RateLimited(RetryAfter(wait))
            | Error::Store(StoreError::RateLimited(RetryAfter(wait)))
            | Error::Draining(wait) => Some(*wait),
            _ => None,
        }
    }

    /// `{"error":{"code","message"}}`.
    pub fn body(&self) -> Bytes {
        protocol::error_body(self.code(), &self.message())
    }

    /// The refusal as the transports tell it.
    pub fn rejection(&self) -> Rejection {
        let code = self.code();
        Rejection {
            code: code.as_str(),
            status: StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            close_code: code.close_code(),
            body: self.body(),
            frame: self.frame(None),
            retry_after: self.retry_after(),
        }
    }
}

impl From<Error> for Rejection {
    fn from(err: Error) -> Self {
        err.rejection()
    }
}

/// The transports' own refusals, worded.
impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TransportDisabled(t) => Error::with(
                ErrorCode::TransportDisabled,
                format!("the {} transport is turned off on this server", t.name()),
            ),
            Refusal::OverCapacity => Error::plain(ErrorCode::OverCapacity),
            // Worded by the gateway, which draws the delay (Gateway::refuse).
            Refusal::Draining => Error::Draining(std::time::Duration::ZERO),
            Refusal::BadQuery(why) => Error::invalid(format!("bad query string: {why}")),
            Refusal::BadBody(why) => Error::invalid(why),
            Refusal::BodyTooLarge => Error::plain(ErrorCode::PayloadTooLarge),
            Refusal::MissingSession => Error::invalid("`session` query parameter is required"),
            Refusal::ForbiddenOrigin => Error::with(ErrorCode::Forbidden, "this Origin may not use this server"),
            Refusal::BinaryMessage => Error::plain(ErrorCode::BinaryUnsupported),
            Refusal::Internal => Error::plain(ErrorCode::Internal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_errors_keep_their_codes_and_useful_messages() {
        let err = Error::from(ModelError::InvalidSessionId);
        assert_eq!(
            (err.code(), err.message()),
            (ErrorCode::SessionUnknown, ErrorCode::SessionUnknown.describe().into())
        );
        let err = Error::from(StoreError::Unavailable("timeout".into()));
        assert_eq!(err.code(), ErrorCode::StoreUnavailable);
        assert!(err.message().ends_with(": timeout"));
        let rejection = Error::from(ModelError::InvalidChannel).rejection();
        assert_eq!(
            (rejection.status, rejection.close_code, rejection.code),
            (StatusCode::BAD_REQUEST, 1008, "invalid_channel")
        );
        let body: serde_json::Value = serde_json::from_slice(&rejection.body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_channel");
    }
}
