//! Long-polling: `GET /v1/poll` holds the request until frames are ready or the poll timeout passes.
//!
//! The request carries the session and position, so nothing is kept between polls and the next one may go to
//! any node. The response is spliced from the frames' shared bytes rather than re-serialized.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};

use crate::{json_response, AttachParams, Port, Shared, Transport};

pub(crate) async fn poll<P: Port>(State(shared): State<Shared<P>>, AttachParams(query): AttachParams) -> Response {
    let _permit = match shared.admit() {
        Ok(permit) => permit,
        Err(rejection) => return rejection.into_response(),
    };
    let attached = match shared.port.attach(query.into_attach(Transport::LongPolling, true)).await {
        Ok(attached) => attached,
        Err(rejection) => return rejection.into_response(),
    };
    let mut position = attached.position;
    let mut frames: Vec<Bytes> = Vec::new();
    if attached.created {
        // A new session learns its id first; its next poll carries it.
        frames.push(attached.welcome);
    } else {
        let mut feed = attached.feed;
        let first = tokio::select! {
            item = feed.next() => item,
            _ = tokio::time::sleep(shared.config.poll_timeout) => None,
            _ = shared.shutdown.cancelled() => None,
        };
        let mut next = first;
        while let Some(out) = next {
            if let Some(p) = out.position {
                position = p;
            }
            frames.push(out.frame);
            if frames.len() >= shared.config.max_batch {
                break;
            }
            // Take whatever else is ready now; a batch never waits for more.
            next = feed.next().now_or_never().flatten();
        }
    }
    json_response(encode(shared.port.node(), &attached.session, &position, &frames))
}

fn encode(node: &str, session: &str, position: &str, frames: &[Bytes]) -> Bytes {
    let head = serde_json::json!({ "node": node, "session": session, "position": position }).to_string();
    let size = head.len() + frames.iter().map(|f| f.len() + 1).sum::<usize>() + 16;
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(&head.as_bytes()[..head.len() - 1]);
    out.put_slice(b",\"frames\":[");
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(frame);
    }
    out.put_slice(b"]}");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_frames_into_valid_json() {
        let frames = [Bytes::from_static(br#"{"type":"heartbeat"}"#), Bytes::from_static(br#"{"a":1}"#)];
        let body = encode("n1", "s", "c@e@1", &frames);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["frames"].as_array().unwrap().len(), 2);
        assert_eq!(v["position"], "c@e@1");
        let empty: serde_json::Value = serde_json::from_slice(&encode("n1", "s", "", &[])).unwrap();
        assert_eq!(empty["frames"], serde_json::json!([]));
    }
}
