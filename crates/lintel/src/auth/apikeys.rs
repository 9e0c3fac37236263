//! API keys for servers and other services: `lk_<id>_<secret>`, created by a user or a
//! superuser with scopes (`<collection>:<action>`, `*` for any collection, actions
//! list, view, create, update, delete, read, write or `*`) and an optional expiry,
//! shown once, stored as a digest, revocable. A key acts as its owner, narrowed to
//! its scopes.

use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::access::{Caller, Principal, Via};
use crate::auth::accounts::load_principal;
use crate::auth::error::AuthError;
use crate::auth::tokens;
use crate::runtime::Runtime;
use crate::store::{Sql, SqlValue, WriteOp};
use crate::validation::{FieldErrors, push_field_error};

pub const PREFIX: &str = "lk_";

/// Revokes every active key of an account (part of a credential change's transaction).
pub fn revoke_all_op(
    dialect: crate::store::Dialect,
    collection: &str,
    user_id: &str,
    now_ms: i64,
) -> WriteOp {
    let mut sql = Sql::new(dialect);
    sql.push("UPDATE _lintel_api_keys SET revoked = ")
        .bind(SqlValue::Int(now_ms))
        .push(" WHERE collection = ")
        .bind(SqlValue::Text(collection.to_owned()))
        .push(" AND user_id = ")
        .bind(SqlValue::Text(user_id.to_owned()))
        .push(" AND revoked IS NULL");
    WriteOp::System { sql, expect: None }
}
pub(crate) const ACTIONS: [&str; 8] = [
    "list", "view", "create", "update", "delete", "read", "write", "*",
];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewKey {
    /// 1 to 100 bytes, not only white space.
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    /// `<collection>:<action>` entries, e.g. `posts:read`, `*:list`.
    #[schema(min_items = 1, max_items = 100)]
    pub scopes: Vec<String>,
    /// RFC 3339, in the future; none = no expiry.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// Admin areas a superuser's key can be scoped to (`<area>:read`, `<area>:write` or
/// `<area>:*`); see `http::extract::admin_scope`.
pub const ADMIN_AREAS: [&str; 8] = [
    "collections",
    "files",
    "audit",
    "metrics",
    "events",
    "jobs",
    "schedules",
    "webhooks",
];

pub(crate) fn admin_scope_ok(scope: &str) -> bool {
    scope.split_once(':').is_some_and(|(area, access)| {
        (ADMIN_AREAS.contains(&area) && matches!(access, "read" | "write" | "*"))
            || (area == "jobs" && access == "work")
    })
}

pub(crate) fn check(
    state: &Runtime,
    req: &NewKey,
    superuser: bool,
) -> Result<Option<i64>, AuthError> {
    let mut errors = FieldErrors::new();
    if req.name.trim().is_empty() || req.name.len() > 100 {
        push_field_error(&mut errors, "name", "invalid", "1 to 100 characters");
    }
    if req.scopes.is_empty() || req.scopes.len() > 100 {
        push_field_error(&mut errors, "scopes", "invalid", "1 to 100 scopes");
    }
    let catalog = state.catalog();
    for (i, s) in req.scopes.iter().enumerate() {
        let ok = s
            .split_once(':')
            .is_some_and(|(c, a)| (c == "*" || catalog.get(c).is_some()) && ACTIONS.contains(&a))
            || (superuser && admin_scope_ok(s));
        // `events:read` must not mean both the event log and a collection named
        // `events`: with such a collection, the admin area's scopes are refused (the
        // collection's own actions, `events:list` and `events:view`, still work).
        let ambiguous = superuser
            && admin_scope_ok(s)
            && s.split_once(':')
                .is_some_and(|(area, _)| catalog.get(area).is_some());
        if ambiguous {
            push_field_error(
                &mut errors,
                format!("scopes[{i}]"),
                "ambiguous_scope",
                "names both an admin area and a collection; for the collection use its actions (list, view, create, update, delete), for the area rename the collection",
            );
        } else if !ok {
            push_field_error(
                &mut errors,
                format!("scopes[{i}]"),
                "invalid_scope",
                "must be <collection>:<action> with an existing collection (or *) and one of list, view, create, update, delete, read, write, *; a superuser's key may also hold collections:read|write|*, audit:read|*, metrics:read|*, events:read|*, jobs:read|write|work|*, schedules:read|write|* and webhooks:read|write|*",
            );
        }
    }
    let expires = match req.expires_at.as_deref() {
        None => None,
        Some(t) => {
            match crate::clock::normalize_datetime(t).and_then(|n| crate::clock::ts_seconds(&n)) {
                Some(secs) if secs * 1000 > state.clock.now_ms() => Some(secs * 1000),
                Some(_) => {
                    push_field_error(&mut errors, "expiresAt", "in_past", "must be in the future");
                    None
                }
                None => {
                    push_field_error(
                        &mut errors,
                        "expiresAt",
                        "invalid",
                        "must be an RFC 3339 date-time",
                    );
                    None
                }
            }
        }
    };
    if errors.is_empty() {
        Ok(expires)
    } else {
        Err(AuthError::Invalid(errors))
    }
}

pub(crate) fn ms_to_rfc3339(ms: i64) -> Value {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .map(crate::clock::format_ts)
        .map_or(Value::Null, Value::String)
}

pub(crate) fn key_json(row: &[Value]) -> Value {
    let scopes: Value = row
        .get(3)
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    json!({
        "id": row.first().cloned().unwrap_or(Value::Null),
        "name": row.get(1).cloned().unwrap_or(Value::Null),
        "scopes": scopes,
        "created": row.get(4).and_then(Value::as_i64).map_or(Value::Null, ms_to_rfc3339),
        "expiresAt": row.get(5).and_then(Value::as_i64).map_or(Value::Null, ms_to_rfc3339),
        "revoked": row.get(6).and_then(Value::as_i64).is_some(),
        "lastUsed": row.get(7).and_then(Value::as_i64).map_or(Value::Null, ms_to_rfc3339),
    })
}

/// Whether the API key `id` still stands (neither expired nor revoked): long-lived
/// connections opened with it check at each heartbeat.
pub async fn still_valid(state: &Runtime, id: &str) -> Result<bool, AuthError> {
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT expires, revoked FROM _lintel_api_keys WHERE id = ")
        .bind(SqlValue::Text(id.to_owned()));
    let rows = state.store.query_rows(sql).await?;
    let now = state.clock.now_ms();
    Ok(rows.first().is_some_and(|row| {
        let expired = row
            .first()
            .and_then(Value::as_i64)
            .is_some_and(|e| e <= now);
        let revoked = row.get(1).and_then(Value::as_i64).is_some();
        !expired && !revoked
    }))
}

/// The caller an API key stands for; None when it is unknown, wrong, expired or revoked.
pub async fn authenticate(state: &Runtime, key: &str) -> Result<Option<Caller>, AuthError> {
    let Some((id, secret)) = key
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    if !crate::schema::kinds::is_record_id(id) {
        return Ok(None);
    }
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT key_hash, collection, user_id, scopes, expires, revoked, last_used FROM _lintel_api_keys WHERE id = ")
        .bind(SqlValue::Text(id.to_owned()));
    let rows = state.store.query_rows(sql).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let text = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or_default();
    let stored: [u8; 32] = crate::ids::token_digest(text(0));
    let given = crate::ids::token_digest(&tokens::digest(secret));
    if !crate::ids::constant_time_eq(&stored, &given) {
        return Ok(None);
    }
    let now = state.clock.now_ms();
    let expired = row.get(4).and_then(Value::as_i64).is_some_and(|e| e <= now);
    let revoked = row.get(5).and_then(Value::as_i64).is_some();
    if expired || revoked {
        return Ok(None);
    }
    let scopes: Vec<String> = serde_json::from_str(text(3)).unwrap_or_default();
    let Some(principal) = load_principal(state, text(1), text(2)).await? else {
        return Ok(None);
    };
    // Last use is kept to the minute; writing it on every request would cost a write.
    let last_used = row.get(6).and_then(Value::as_i64).unwrap_or(0);
    if now - last_used > 60_000 {
        let mut sql = Sql::new(state.store.dialect());
        sql.push("UPDATE _lintel_api_keys SET last_used = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE id = ")
            .bind(SqlValue::Text(id.to_owned()));
        let store = state.store.clone();
        state.tasks.spawn(async move {
            let _ = store
                .write(vec![WriteOp::System { sql, expect: None }])
                .await;
        });
    }
    Ok(Some(Caller {
        principal: match principal {
            Principal::Anonymous => return Ok(None),
            p => p,
        },
        via: Via::ApiKey {
            id: id.to_owned(),
            scopes,
        },
        ip: None,
        tls: false,
    }))
}
