//! Signed access tokens (JWT, HS256 or EdDSA) and the opaque secrets used for refresh
//! tokens, session cookies, API keys and email links (random, stored only as SHA-256).

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;

/// Seconds an access token is still accepted after its `exp`.
const EXPIRY_LEEWAY_SECS: i64 = 5;

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
    /// Set only on file and realtime tokens ([`FILE_AUDIENCE`], [`REALTIME_AUDIENCE`]),
    /// which are never access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// The audience of file tokens: they open file downloads and nothing else.
pub const FILE_AUDIENCE: &str = "lintel-files";
/// The audience of realtime tokens: they open realtime and Yjs connections only.
pub const REALTIME_AUDIENCE: &str = "lintel-realtime";

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
    /// Builds the keys from configuration; `stored` is the HS256 secret kept in the
    /// store, used when none is configured. Blocking (reads key files).
    pub fn load(cfg: &AuthConfig, stored: &str) -> anyhow::Result<Self> {
        let (algorithm, encoding, decoding) = match cfg.jwt_algorithm.to_ascii_uppercase().as_str()
        {
            "HS256" => {
                let secret = if cfg.jwt_secret.0.is_empty() {
                    stored.to_owned()
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
        // Expiry is checked in `verify`, against the server's clock.
        validation.validate_exp = false;
        validation.leeway = EXPIRY_LEEWAY_SECS as u64;
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

    /// Signs an access token for an account and session, issued at `now_ms`.
    pub fn issue(
        &self,
        collection: &str,
        id: &str,
        session: &str,
        now_ms: i64,
    ) -> anyhow::Result<String> {
        let now = now_ms / 1000;
        let claims = Claims {
            sub: id.to_owned(),
            col: collection.to_owned(),
            sid: session.to_owned(),
            iss: self.issuer.clone(),
            iat: now,
            exp: now + self.access_ttl_secs as i64,
            aud: None,
        };
        encode(&Header::new(self.algorithm), &claims, &self.encoding).context("signing a token")
    }

    /// Signs a token for one purpose (`audience`) for an account and session (or
    /// `admin`), valid `ttl_secs`.
    pub fn issue_for(
        &self,
        audience: &str,
        collection: &str,
        id: &str,
        session: &str,
        now_ms: i64,
        ttl_secs: u64,
    ) -> anyhow::Result<String> {
        let now = now_ms / 1000;
        let claims = Claims {
            sub: id.to_owned(),
            col: collection.to_owned(),
            sid: session.to_owned(),
            iss: self.issuer.clone(),
            iat: now,
            exp: now + i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2),
            aud: Some(audience.into()),
        };
        encode(&Header::new(self.algorithm), &claims, &self.encoding)
            .context("signing a purpose token")
    }

    /// Checks a purpose token: signature, issuer, audience and expiry (no leeway).
    pub fn verify_for(&self, audience: &str, token: &str, now_ms: i64) -> Option<Claims> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|d| d.claims)
            .filter(|c| c.aud.as_deref() == Some(audience))
            .filter(|c| c.exp > now_ms.div_euclid(1000))
    }

    /// Checks an access token's signature, issuer and expiry (against `now_ms`, with
    /// the same five seconds of leeway for clocks that differ between instances).
    pub fn verify(&self, token: &str, now_ms: i64) -> Option<Claims> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|d| d.claims)
            // A file or realtime token is no access token.
            .filter(|c| c.aud.is_none())
            .filter(|c| c.exp + EXPIRY_LEEWAY_SECS >= now_ms.div_euclid(1000))
    }
}

/// The HS256 secret kept in the store: generated by the first instance that needs it
/// and read by every other, so instances sharing a store accept each other's tokens.
pub async fn stored_secret(store: &dyn crate::store::Store) -> anyhow::Result<String> {
    use crate::store::{Sql, SqlValue, WriteOp};
    let mut insert = Sql::new(store.dialect());
    insert
        .push("INSERT INTO _lintel_secrets (name, value) VALUES (")
        .bind_all([
            SqlValue::Text("jwt_hs256".into()),
            SqlValue::Text(format!(
                "{}{}",
                crate::ids::secret_token(),
                crate::ids::secret_token()
            )),
        ])
        .push(") ON CONFLICT (name) DO NOTHING");
    store
        .write(vec![WriteOp::System {
            sql: insert,
            expect: None,
        }])
        .await
        .map_err(|e| anyhow::anyhow!("storing the token signing key: {}", e.error))?;
    let mut select = Sql::new(store.dialect());
    select
        .push("SELECT value FROM _lintel_secrets WHERE name = ")
        .bind(SqlValue::Text("jwt_hs256".into()));
    let rows = store
        .query_rows(select)
        .await
        .map_err(|e| anyhow::anyhow!("reading the token signing key: {e}"))?;
    rows.first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the token signing key is missing from the store"))
}

/// The HS256 secret an earlier version kept in the store, if any (to be moved into the
/// key file; see [`forget_stored_secret`]).
pub async fn take_stored_secret(store: &dyn crate::store::Store) -> anyhow::Result<Option<String>> {
    use crate::store::{Sql, SqlValue};
    let mut select = Sql::new(store.dialect());
    select
        .push("SELECT value FROM _lintel_secrets WHERE name = ")
        .bind(SqlValue::Text("jwt_hs256".into()));
    let rows = store
        .query_rows(select)
        .await
        .map_err(|e| anyhow::anyhow!("reading the token signing key: {e}"))?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_str())
        .map(str::to_owned))
}

/// Deletes the store's copy of the HS256 secret once it lives in the key file.
pub async fn forget_stored_secret(store: &dyn crate::store::Store) -> anyhow::Result<()> {
    use crate::store::{Sql, SqlValue, WriteOp};
    let mut delete = Sql::new(store.dialect());
    delete
        .push("DELETE FROM _lintel_secrets WHERE name = ")
        .bind(SqlValue::Text("jwt_hs256".into()));
    store
        .write(vec![WriteOp::System {
            sql: delete,
            expect: None,
        }])
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("removing the token signing key from the store: {}", e.error))
}

/// SHA-256 of a secret, as hex: what the store keeps instead of the secret.
pub fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
