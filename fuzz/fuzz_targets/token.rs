//! Connection tokens: any text verifies or is refused, and only a token signed with the key verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickless::auth::token::{TokenSettings, Verifier};

fuzz_target!(|text: &str| {
    let settings = TokenSettings { hs256_secret: Some("a shared secret of at least thirty-two bytes!".into()), ..Default::default() };
    let verifier = Verifier::load(&settings).unwrap().unwrap();
    let _ = verifier.verify(text);
});
