//! A second factor: TOTP (RFC 6238, SHA-1, 6 digits, 30-second steps, one step of
//! clock skew) with single-use recovery codes. Enrolment gives a secret and an
//! `otpauth://` URI (for a QR code); confirming with a first code turns it on and
//! returns ten recovery codes. Each code works once: the last accepted step is kept.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha1::Sha1;
use utoipa::ToSchema;

use crate::access::{Caller, Via};
use crate::auth::error::AuthError;
use crate::auth::tokens;
use crate::runtime::Runtime;
use crate::store::{Sql, SqlValue, StoreError, WriteError, WriteOp};

pub(crate) const STEP: u64 = 30;
pub(crate) const DIGITS: u32 = 6;
pub(crate) const RECOVERY_CODES: usize = 10;

/// RFC 4648 base32 without padding.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

pub fn unbase32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buf = (buf << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

/// The code for a time step (RFC 4226 HOTP over the step counter).
pub fn code_at(secret: &[u8], step: u64) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[19] & 0x0f) as usize;
    let bin = (u32::from(h[offset]) & 0x7f) << 24
        | u32::from(h[offset + 1]) << 16
        | u32::from(h[offset + 2]) << 8
        | u32::from(h[offset + 3]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(DIGITS),
        width = DIGITS as usize
    )
}

/// The step a code matches within one step of `now` (seconds), if any.
pub fn matching_step(secret: &[u8], code: &str, now: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now / STEP;
    [current.saturating_sub(1), current, current + 1]
        .into_iter()
        .find(|&s| {
            let want = code_at(secret, s);
            crate::ids::constant_time_eq(
                &crate::ids::token_digest(&want),
                &crate::ids::token_digest(code),
            )
        })
}

pub(crate) struct Factor {
    pub(crate) secret: String,
    pub(crate) enabled: bool,
    pub(crate) last_step: i64,
    pub(crate) recovery: String,
}

pub(crate) async fn load(
    state: &Runtime,
    coll: &str,
    id: &str,
) -> Result<Option<Factor>, AuthError> {
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT secret, enabled, last_step, recovery FROM _lintel_mfa WHERE collection = ")
        .bind(SqlValue::Text(coll.to_owned()))
        .push(" AND user_id = ")
        .bind(SqlValue::Text(id.to_owned()));
    let rows = state.store.query_rows(sql).await?;
    Ok(rows.first().map(|r| Factor {
        secret: r
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        enabled: r.get(1).and_then(Value::as_i64) == Some(1),
        last_step: r.get(2).and_then(Value::as_i64).unwrap_or(0),
        recovery: r.get(3).and_then(Value::as_str).unwrap_or("[]").to_owned(),
    }))
}

pub(crate) async fn write(state: &Runtime, ops: Vec<WriteOp>) -> Result<(), StoreError> {
    state
        .store
        .write(ops)
        .await
        .map(|_| ())
        .map_err(|WriteError { error, .. }| error)
}

pub(crate) fn now_secs(state: &Runtime) -> u64 {
    (state.clock.now_ms() / 1000).max(0) as u64
}

/// Uses a TOTP code or a recovery code once; false when neither is valid.
pub(crate) async fn consume(
    state: &Runtime,
    coll: &str,
    id: &str,
    f: &Factor,
    totp: Option<&str>,
    recovery: Option<&str>,
) -> Result<bool, AuthError> {
    if let Some(code) = totp {
        let Some(secret) = unbase32(&f.secret) else {
            return Ok(false);
        };
        let Some(step) = matching_step(&secret, code, now_secs(state)) else {
            return Ok(false);
        };
        if step as i64 <= f.last_step {
            return Ok(false);
        }
        let mut sql = Sql::new(state.store.dialect());
        sql.push("UPDATE _lintel_mfa SET last_step = ")
            .bind(SqlValue::Int(step as i64))
            .push(" WHERE collection = ")
            .bind(SqlValue::Text(coll.to_owned()))
            .push(" AND user_id = ")
            .bind(SqlValue::Text(id.to_owned()))
            .push(" AND last_step < ")
            .bind(SqlValue::Int(step as i64));
        return match write(
            state,
            vec![WriteOp::System {
                sql,
                expect: Some(1),
            }],
        )
        .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound) => Ok(false),
            Err(e) => Err(AuthError::from(e)),
        };
    }
    if let Some(code) = recovery {
        let mut codes: Vec<String> = serde_json::from_str(&f.recovery).unwrap_or_default();
        let digest = tokens::digest(code.trim());
        let Some(pos) = codes.iter().position(|c| *c == digest) else {
            return Ok(false);
        };
        codes.remove(pos);
        let new = serde_json::to_string(&codes).map_err(|e| AuthError::Internal(e.to_string()))?;
        let mut sql = Sql::new(state.store.dialect());
        sql.push("UPDATE _lintel_mfa SET recovery = ")
            .bind(SqlValue::Text(new))
            .push(" WHERE collection = ")
            .bind(SqlValue::Text(coll.to_owned()))
            .push(" AND user_id = ")
            .bind(SqlValue::Text(id.to_owned()))
            .push(" AND recovery = ")
            .bind(SqlValue::Text(f.recovery.clone()));
        return match write(
            state,
            vec![WriteOp::System {
                sql,
                expect: Some(1),
            }],
        )
        .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound) => Ok(false),
            Err(e) => Err(AuthError::from(e)),
        };
    }
    Ok(false)
}

/// At sign-in: passes when the account has no second factor, or a valid code is given.
pub async fn check_login(
    state: &Runtime,
    coll: &str,
    id: &str,
    totp: Option<&str>,
    recovery: Option<&str>,
) -> Result<(), AuthError> {
    let Some(f) = load(state, coll, id).await?.filter(|f| f.enabled) else {
        return Ok(());
    };
    if totp.is_none() && recovery.is_none() {
        return Err(AuthError::MfaRequired);
    }
    if consume(state, coll, id, &f, totp, recovery).await? {
        Ok(())
    } else {
        Err(AuthError::InvalidMfa)
    }
}

pub(crate) fn no_api_keys(caller: &Caller) -> Result<(), AuthError> {
    if matches!(caller.via, Via::ApiKey { .. } | Via::AdminToken) {
        return Err(AuthError::FactorNeedsAccount);
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CodeRequest {
    /// A current TOTP code.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: Option<String>,
    /// A recovery code (disable only).
    #[serde(default)]
    pub recovery_code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", 8 digits there;
        // the 6-digit codes are the last six digits.
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59 / 30), "287082");
        assert_eq!(code_at(secret, 1111111109 / 30), "081804");
        assert_eq!(code_at(secret, 2000000000 / 30), "279037");
        assert_eq!(matching_step(secret, "287082", 59), Some(1));
        assert_eq!(matching_step(secret, "287082", 59 + 90), None);
        assert_eq!(matching_step(secret, "28708", 59), None);
    }

    #[test]
    fn base32_round_trip() {
        let raw = [0u8, 1, 2, 250, 251, 252, 9, 10, 11, 12];
        assert_eq!(unbase32(&base32(&raw)).as_deref(), Some(&raw[..]));
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }
}
