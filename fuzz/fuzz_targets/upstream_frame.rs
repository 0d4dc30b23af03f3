//! Upstream frames (WebSocket messages, POST /v1/send bodies) and message data's depth scan.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickless::protocol::{json_depth, Upstream};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Upstream::Publish { data, .. }) = Upstream::parse(bytes) {
        let _ = json_depth(&data);
    }
});
