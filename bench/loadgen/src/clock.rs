//! One clock for the publisher and every subscriber: wall-clock microseconds, comparable across the processes
//! of one machine (the publisher writes it into the message, the subscriber subtracts it from its own).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}
