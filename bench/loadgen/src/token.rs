//! Connection tokens: the gateway is measured with auth on, as users run it, so every simulated client presents
//! an HS256 JWT minted here with the secret the orchestrator gave the gateway (`--token-secret`).

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

/// Mints one token per client (`sub` = `u<index>`) allowed to subscribe and publish on `bench*` channels.
pub struct Minter {
    key: EncodingKey,
    exp: u64,
}

impl Minter {
    pub fn new(secret: &str) -> Minter {
        let now = crate::clock::now_us() / 1_000_000;
        // Valid for a day: no benchmark run comes near it, so no refresh traffic is measured.
        Minter { key: EncodingKey::from_secret(secret.as_bytes()), exp: now + 86_400 }
    }

    pub fn token(&self, index: usize) -> String {
        let claims = json!({
            "sub": format!("u{index}"),
            "exp": self.exp,
            "stickless": {"subscribe": ["bench*"], "publish": ["bench*"]},
        });
        encode(&Header::new(Algorithm::HS256), &claims, &self.key).expect("HS256 signing of a JSON object cannot fail")
    }
}
