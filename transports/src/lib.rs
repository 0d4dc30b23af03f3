//! HTTP framing for stickless: WebSocket, Server-Sent Events and long-polling over one session model.
//!
//! Each transport lives in its own module and only frames bytes; what a session sees is decided by the core
//! behind the [`Port`] trait. The transports are registered in one place, [`Transport::ALL`] and
//! [`Transport::route`]: adding a fourth one (HTTP streaming, say) is a module, a variant and a match arm here,
//! and no change in the core.

pub mod error;
pub mod long_polling;
pub mod port;
pub mod send;
pub mod sse;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use port::{Attach, Attached, Client, Ending, Outbound, Port, Refusal, Rejection};

/// The transports this crate knows, in the order a client should try them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    Sse,
    LongPolling,
}

impl Transport {
    /// Every transport, in fallback order.
    pub const ALL: [Transport; 3] = [Transport::WebSocket, Transport::Sse, Transport::LongPolling];

    /// The name clients and operators use.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPolling => "long-polling",
        }
    }

    /// The path it is served at.
    pub fn path(self) -> &'static str {
        match self {
            Transport::WebSocket => "/v1/ws",
            Transport::Sse => "/v1/sse",
            Transport::LongPolling => "/v1/poll",
        }
    }

    /// Parses an operator's name for a transport (`ws`, `websocket`, `sse`, `poll`, `long-polling`).
    pub fn parse(name: &str) -> Option<Transport> {
        match name.trim().to_ascii_lowercase().as_str() {
            "websocket" | "ws" => Some(Transport::WebSocket),
            "sse" | "eventsource" => Some(Transport::Sse),
            "long-polling" | "polling" | "poll" => Some(Transport::LongPolling),
            _ => None,
        }
    }

    fn route<P: Port>(self) -> MethodRouter<Shared<P>> {
        match self {
            // `any`: HTTP/2 extended CONNECT upgrades with a method other than GET.
            Transport::WebSocket => any(websocket::attach::<P>),
            Transport::Sse => get(sse::attach::<P>),
            Transport::LongPolling => get(long_polling::poll::<P>),
        }
    }
}

/// Framing parameters: how often to heartbeat, how long to hold a poll, what sizes to accept. (The core's
/// settings fill it in; their defaults live there.)
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub enabled: Vec<Transport>,
    pub heartbeat: Duration,
    pub poll_timeout: Duration,
    /// The largest WebSocket message or HTTP body accepted.
    pub max_message_bytes: usize,
    /// The most frames one poll response carries.
    pub max_batch: usize,
    /// The most live connections (WebSocket, SSE, waiting polls) this node holds.
    pub max_connections: usize,
    /// Origins allowed to open a WebSocket; empty allows any (CORS does not cover WebSocket).
    pub allowed_origins: Vec<String>,
    /// The most bytes a WebSocket may have queued for a client that does not read (pongs included).
    pub send_buffer: usize,
    /// How long one write to a client may wait for it to read; past it the connection is cut.
    pub write_timeout: Duration,
}

/// State shared by every transport handler.
pub struct Shared<P> {
    port: P,
    config: Arc<TransportConfig>,
    connections: Arc<Semaphore>,
    drain: CancellationToken,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl<P: Clone> Clone for Shared<P> {
    fn clone(&self) -> Self {
        Shared {
            port: self.port.clone(),
            config: self.config.clone(),
            connections: self.connections.clone(),
            drain: self.drain.clone(),
            shutdown: self.shutdown.clone(),
            tasks: self.tasks.clone(),
        }
    }
}

impl<P: Port> Shared<P> {
    /// Takes a slot for one live connection, held for as long as the connection is open; none while draining.
    fn admit(&self) -> Result<OwnedSemaphorePermit, Rejection> {
        if self.drain.is_cancelled() {
            return Err(self.port.refuse(Refusal::Draining));
        }
        self.connections.clone().try_acquire_owned().map_err(|_| self.port.refuse(Refusal::OverCapacity))
    }
}

/// Handles that let the server drain and end live connections, and wait for them.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// Cancelled when the node starts draining: new attaches are refused, and every connection is told to
    /// reconnect after a random delay (a `reconnect` frame) and ends.
    pub drain: CancellationToken,
    /// Cancelled on shutdown: SSE streams end, polls return, WebSockets close with 1001.
    pub shutdown: CancellationToken,
    /// Tracks upgraded WebSocket tasks, which the HTTP server does not wait for.
    pub tasks: TaskTracker,
}

/// The router serving every enabled transport, `/v1/send` and `/v1/negotiate`.
pub fn router<P: Port>(port: P, config: TransportConfig, lifecycle: Lifecycle) -> Router {
    let shared = Shared {
        port,
        connections: Arc::new(Semaphore::new(config.max_connections)),
        config: Arc::new(config),
        drain: lifecycle.drain,
        shutdown: lifecycle.shutdown,
        tasks: lifecycle.tasks,
    };
    let send = post(send::send::<P>).layer(DefaultBodyLimit::max(shared.config.max_message_bytes));
    let mut router = Router::new().route("/v1/negotiate", get(negotiate::<P>)).route("/v1/send", send);
    for transport in Transport::ALL {
        let route = if shared.config.enabled.contains(&transport) {
            transport.route::<P>()
        } else {
            // Refused per request, so each refusal is counted as it happens.
            any(move |State(shared): State<Shared<P>>| async move {
                shared.port.refuse(Refusal::TransportDisabled(transport))
            })
        };
        router = router.route(transport.path(), route);
    }
    router.with_state(shared)
}

async fn negotiate<P: Port>(State(shared): State<Shared<P>>) -> Response {
    json_response(shared.port.negotiate(&shared.config.enabled, shared.config.poll_timeout))
}

/// The query every attach endpoint accepts.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AttachQuery {
    session: Option<String>,
    position: Option<String>,
    channels: Option<String>,
    /// A connection token, for clients that cannot set headers (EventSource).
    token: Option<String>,
}

impl AttachQuery {
    fn into_attach(self, transport: Transport, track_position: bool, mut client: Client) -> Attach {
        client.token = self.token.filter(|t| !t.is_empty()).or(client.token);
        Attach {
            transport: transport.name(),
            session: self.session.filter(|s| !s.is_empty()),
            position: self.position.filter(|s| !s.is_empty()),
            channels: self.channels.filter(|s| !s.is_empty()),
            track_position,
            client,
        }
    }
}

/// The attach query and the client it comes from: `Query<AttachQuery>` whose rejection is our JSON error
/// rather than axum's plain text, and the request refused at once when its Origin is not allowed.
pub(crate) struct AttachParams(AttachQuery, Client);

impl AttachParams {
    pub(crate) fn into_attach(self, transport: Transport, track_position: bool) -> Attach {
        self.0.into_attach(transport, track_position, self.1)
    }

    pub(crate) fn session(&self) -> Option<&str> {
        self.0.session.as_deref().filter(|s| !s.is_empty())
    }
}

impl<P: Port> FromRequestParts<Shared<P>> for AttachParams {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, shared: &Shared<P>) -> Result<Self, Self::Rejection> {
        if !origin_allowed(&shared.config.allowed_origins, &parts.headers) {
            return Err(shared.port.refuse(Refusal::ForbiddenOrigin));
        }
        let query = Query::<AttachQuery>::from_request_parts(parts, shared)
            .await
            .map_err(|err| shared.port.refuse(Refusal::BadQuery(err.body_text())))?;
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
        let headers = parts
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned());
        Ok(AttachParams(query.0, Client { peer, token, headers }))
    }
}

/// Whether a request's Origin may use this server. Requests without one are not from a browser page (or are
/// same-origin GETs), which the check exists to tell apart.
pub(crate) fn origin_allowed(allowed: &[String], headers: &axum::http::HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) => allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)),
        None => true,
    }
}

pub(crate) fn json_response(body: impl Into<axum::body::Body>) -> Response {
    let mut response = body.into().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use axum::http::Uri;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a client puts in the attach query, it parses or is refused (a 400 `invalid_frame`).
        #[test]
        fn any_attach_query_parses_or_is_refused(query in "[ -~]{0,300}") {
            if let Ok(uri) = format!("/v1/poll?{query}").parse::<Uri>() {
                let _ = Query::<AttachQuery>::try_from_uri(&uri);
            }
        }

        /// A well-formed query says what it holds, percent-escapes and repeated keys included.
        #[test]
        fn a_well_formed_attach_query_says_what_it_holds(
            session in "[a-f0-9]{0,32}",
            position in "[A-Za-z0-9@,~._:-]{0,80}",
            channels in "[A-Za-z0-9_.:/,-]{0,80}",
            token in "[A-Za-z0-9._-]{0,80}",
        ) {
            let escaped = channels.replace(':', "%3A").replace('/', "%2F");
            let uri: Uri = format!("/v1/sse?session={session}&position={position}&channels={escaped}&token={token}")
                .parse()
                .unwrap();
            let Query(query) = Query::<AttachQuery>::try_from_uri(&uri).unwrap();
            let attach = query.into_attach(Transport::Sse, true, Client::default());
            prop_assert_eq!(attach.session, Some(session).filter(|s| !s.is_empty()));
            prop_assert_eq!(attach.position, Some(position).filter(|s| !s.is_empty()));
            prop_assert_eq!(attach.channels, Some(channels).filter(|s| !s.is_empty()));
            prop_assert_eq!(attach.client.token, Some(token).filter(|s| !s.is_empty()));
        }
    }
}
