//! Telling a client of a [`Rejection`] over HTTP: its status with its JSON body (both chosen by the core).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::port::Rejection;

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}
