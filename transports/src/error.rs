//! Telling a client of a [`Rejection`] over HTTP: its status with its JSON body (both chosen by the core).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::port::Rejection;

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits this long is under the limit again.
            let secs = wait.as_millis().div_ceil(1000).max(1);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
        }
        response
    }
}
