//! Connection tokens: JWTs verified with `jsonwebtoken`, each key pinned to one algorithm (HS256 for a
//! secret, RS256 or ES256 for a public key, whatever a JWKS names), so `alg: none` and algorithm confusion (an
//! HS256 token "signed" with a public key) are refused. The claims become the session's [`Grant`].

use std::path::PathBuf;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::model::{now_secs, Grant, Pattern};

/// Where verification keys come from, and which issuer and audience tokens must name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSettings {
    /// HS256 shared secret.
    pub hs256_secret: Option<String>,
    /// A PEM public key (RSA: RS256; EC P-256: ES256).
    pub public_key: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`); keys are chosen by `kid`.
    pub jwks: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
}

impl TokenSettings {
    pub fn configured(&self) -> bool {
        self.hs256_secret.is_some() || self.public_key.is_some() || self.jwks.is_some()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

struct Key {
    algorithm: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.keys.iter().map(|k| k.algorithm).collect();
        f.debug_struct("Verifier").field("algorithms", &algorithms).finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    stickless: Permissions,
}

#[derive(Deserialize, Default)]
struct Permissions {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    presence: Vec<String>,
}

impl Verifier {
    /// The verifier for `settings`; `None` when no key is configured (then no token is accepted).
    pub fn load(settings: &TokenSettings) -> Result<Option<Verifier>, String> {
        let mut keys = Vec::new();
        if let Some(secret) = &settings.hs256_secret {
            if secret.len() < 32 {
                return Err("the HS256 token secret must be at least 32 bytes".into());
            }
            keys.push(Key { algorithm: Algorithm::HS256, kid: None, key: DecodingKey::from_secret(secret.as_bytes()) });
        }
        if let Some(path) = &settings.public_key {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let key = match (DecodingKey::from_rsa_pem(&pem), DecodingKey::from_ec_pem(&pem)) {
                (Ok(key), _) => Key { algorithm: Algorithm::RS256, kid: None, key },
                (_, Ok(key)) => Key { algorithm: Algorithm::ES256, kid: None, key },
                _ => return Err(format!("{} is not an RSA or EC public key in PEM", path.display())),
            };
            keys.push(key);
        }
        if let Some(path) = &settings.jwks {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|e| format!("{} is not a JWKS: {e}", path.display()))?;
            for jwk in &set.keys {
                let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                    (Some(KeyAlgorithm::RS256), _) | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                    (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
                    (None, AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P256 => {
                        Algorithm::ES256
                    }
                    _ => return Err(format!("{}: only RS256 and ES256 keys are accepted", path.display())),
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{}: {e}", path.display()))?;
                keys.push(Key { algorithm, kid: jwk.common.key_id.clone(), key });
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Verifier { keys, issuer: settings.issuer.clone(), audience: settings.audience.clone() }))
    }

    /// The grant a valid token gives; `sub` and `exp` are required, `nbf`, `iss` and `aud` checked.
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let header = decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.algorithm == header.alg && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid))
            .ok_or_else(|| TokenError::Invalid(format!("{:?} tokens are not accepted here", header.alg)))?;
        let mut validation = Validation::new(key.algorithm);
        // jsonwebtoken checks `aud` and `iss` only when present unless they are required: a configured audience
        // or issuer must also be required, or a token without the claim would pass.
        let mut required = vec!["exp", "sub"];
        required.extend(self.audience.as_ref().map(|_| "aud"));
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        validation.set_required_spec_claims(&required);
        validation.validate_nbf = true;
        validation.leeway = 0;
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let claims = decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::Invalid("not valid yet (nbf)".into()),
                _ => TokenError::Invalid(e.to_string()),
            })?
            .claims;
        // RFC 7519 4.1.4: valid only *before* `exp`. jsonwebtoken still accepts the second of `exp` itself; the
        // hook path refuses it, so tokens do too.
        if claims.exp <= now_secs() {
            return Err(TokenError::Expired);
        }
        if claims.sub.is_empty() {
            return Err(TokenError::Invalid("`sub` is empty".into()));
        }
        let patterns = |list: Vec<String>| list.into_iter().map(Pattern::new).collect();
        Ok(Grant {
            sub: claims.sub,
            exp: claims.exp,
            subscribe: patterns(claims.stickless.subscribe),
            publish: patterns(claims.stickless.publish),
            presence: patterns(claims.stickless.presence),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_expired_from_the_second_of_its_exp() {
        let secret = "a shared secret of at least thirty-two bytes!";
        let verifier = Verifier::load(&TokenSettings { hs256_secret: Some(secret.into()), ..TokenSettings::default() })
            .unwrap()
            .unwrap();
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        let token = |exp: u64| {
            let claims = serde_json::json!({"sub": "u1", "exp": exp});
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
        };
        let now = now_secs();
        assert!(matches!(verifier.verify(&token(now)), Err(TokenError::Expired)));
        assert!(matches!(verifier.verify(&token(now - 1)), Err(TokenError::Expired)));
        assert_eq!(verifier.verify(&token(now + 60)).unwrap().sub, "u1");
    }
}
