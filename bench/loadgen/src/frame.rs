//! The downstream frames a subscriber reads (docs/PROTOCOL.md), parsed only as far as the bench needs: the
//! type, where a message sits in its channel (channel, epoch, offset) and the publisher's payload
//! `{"r":round,"seq":n,"ts":microseconds}`. Raw axum's frames have no epoch or offset; those stay `None`.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default, borrow)]
    pub epoch: Option<&'a str>,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub data: Option<Payload>,
}

/// What the bench's publisher puts in a message's `data`.
#[derive(Debug, Deserialize, Clone, Copy)]
pub struct Payload {
    #[serde(default)]
    pub r: u64,
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub ts: u64,
}

/// A long-poll answer: `{"node","session","position","frames":[...]}`.
#[derive(Debug, Deserialize)]
pub struct PollAnswer<'a> {
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub position: Option<String>,
    #[serde(default, borrow)]
    pub frames: Vec<Frame<'a>>,
}

/// The data a publisher sends for message `seq` of round `r`, stamped now.
pub fn payload_json(r: u64, seq: u64) -> String {
    format!(r#"{{"r":{r},"seq":{seq},"ts":{}}}"#, crate::clock::now_us())
}
