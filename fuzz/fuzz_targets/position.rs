//! Positions, in a query string or an SSE `Last-Event-ID` (`<session>;<position>`), and round trips of what
//! parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickless::model::{Position, SessionId};

fuzz_target!(|text: &str| {
    let (session, position) = text.split_once(';').unwrap_or(("", text));
    let _ = SessionId::parse(session);
    if let Ok(parsed) = Position::parse(position) {
        // What was written with full names reads back the same.
        let again = Position::parse(&parsed.to_string()).expect("a position written by the server parses");
        for (name, cursor) in parsed.0.iter() {
            assert_eq!(again.get(name), Some(cursor));
        }
    }
});
