//! Long-polling: `GET /v1/poll` holds the request until frames are ready or the poll timeout passes.
//!
//! The request carries the session and position, so nothing is kept between polls and the next one may go to
//! any node. The core encodes the answer around the frames' shared bytes.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

use crate::{json_response, AttachParams, Ending, Outbound, Port, Shared, Transport};

const DRAINING: Ending = Ending { close_code: 1012, reason: "draining" };

pub(crate) async fn poll<P: Port>(State(shared): State<Shared<P>>, params: AttachParams) -> Response {
    let _permit = match shared.admit() {
        Ok(permit) => permit,
        Err(rejection) => return rejection.into_response(),
    };
    let attached = match shared.port.attach(params.into_attach(Transport::LongPolling, true)).await {
        Ok(attached) => attached,
        Err(rejection) => return rejection.into_response(),
    };
    let mut position = attached.position;
    let mut frames: Vec<Bytes> = Vec::new();
    let waiting = tokio::time::Instant::now();
    let mut waited = std::time::Duration::ZERO;
    if attached.created {
        // A new session learns its id first; its next poll carries it.
        frames.push(attached.welcome);
    } else {
        let mut feed = attached.feed;
        let first = tokio::select! {
            item = feed.next() => item,
            _ = tokio::time::sleep(shared.config.poll_timeout) => None,
            // A draining node answers a waiting poll with when to come back.
            _ = shared.drain.cancelled() => Some(Outbound { frame: shared.port.reconnect().0, position: None, end: Some(DRAINING) }),
            _ = shared.shutdown.cancelled() => None,
        };
        waited = waiting.elapsed();
        let mut next = first;
        while let Some(out) = next {
            if let Some(p) = out.position {
                position = p;
            }
            frames.push(out.frame);
            if out.end.is_some() || frames.len() >= shared.config.max_batch {
                break;
            }
            // Take whatever else is ready now; a batch never waits for more.
            next = feed.next().now_or_never().flatten();
        }
    }
    shared.port.poll_answered(waited, frames.len());
    json_response(shared.port.poll_response(&attached.session, &position, &frames))
}
