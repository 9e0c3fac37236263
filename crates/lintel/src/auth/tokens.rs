//! Signed access tokens (JWT, HS256 or EdDSA) and the opaque secrets used for refresh
//! tokens, session cookies, API keys and email links (random, stored only as SHA-256).

use std::path::Path;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The account id.
    pub sub: String,
    /// The auth collection of the account (`_superusers` for superusers).
    pub col: String,
    /// The session (refresh-token family) the token belongs to; revoking it ends the
    /// token at once.
    pub sid: String,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
}

/// The keys tokens are signed and checked with.
pub struct Keys {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub issuer: String,
    pub access_ttl_secs: u64,
}

impl Keys {
    /// Builds the keys from configuration; a missing HS256 secret is generated once
    /// into `<data_dir>/jwt-secret`. Blocking (reads files).
    pub fn load(cfg: &AuthConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let (algorithm, encoding, decoding) = match cfg.jwt_algorithm.to_ascii_uppercase().as_str()
        {
            "HS256" => {
                let secret = if cfg.jwt_secret.0.is_empty() {
                    crate::app::secret_file(&data_dir.join("jwt-secret"), "the token signing key")?
                } else {
                    cfg.jwt_secret.0.clone()
                };
                anyhow::ensure!(
                    secret.len() >= 32,
                    "auth.jwt_secret must be at least 32 characters"
                );
                (
                    Algorithm::HS256,
                    EncodingKey::from_secret(secret.as_bytes()),
                    DecodingKey::from_secret(secret.as_bytes()),
                )
            }
            "EDDSA" => {
                let private = std::fs::read(&cfg.jwt_private_key_file).with_context(|| {
                    format!(
                        "reading auth.jwt_private_key_file {}",
                        cfg.jwt_private_key_file.display()
                    )
                })?;
                let public = std::fs::read(&cfg.jwt_public_key_file).with_context(|| {
                    format!(
                        "reading auth.jwt_public_key_file {}",
                        cfg.jwt_public_key_file.display()
                    )
                })?;
                (
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_pem(&private)
                        .context("auth.jwt_private_key_file is not an Ed25519 PKCS#8 PEM key")?,
                    DecodingKey::from_ed_pem(&public)
                        .context("auth.jwt_public_key_file is not an Ed25519 public key PEM")?,
                )
            }
            other => anyhow::bail!("auth.jwt_algorithm must be HS256 or EdDSA, not {other}"),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_aud = false;
        Ok(Self {
            algorithm,
            encoding,
            decoding,
            validation,
            issuer: cfg.issuer.clone(),
            access_ttl_secs: cfg.access_ttl_secs,
        })
    }

    /// Signs an access token for an account and session.
    pub fn issue(&self, collection: &str, id: &str, session: &str) -> anyhow::Result<String> {
        let now = crate::clock::now_ms() / 1000;
        let claims = Claims {
            sub: id.to_owned(),
            col: collection.to_owned(),
            sid: session.to_owned(),
            iss: self.issuer.clone(),
            iat: now,
            exp: now + self.access_ttl_secs as i64,
        };
        encode(&Header::new(self.algorithm), &claims, &self.encoding).context("signing a token")
    }

    /// Checks an access token's signature, issuer and expiry.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|d| d.claims)
    }
}

/// SHA-256 of a secret, as hex: what the store keeps instead of the secret.
pub fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
