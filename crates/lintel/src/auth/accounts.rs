//! Accounts: an auth record or a superuser, found by email or id, and the email
//! normalisation that makes one address one account.

use std::sync::Arc;

use serde_json::Value;

use crate::access::{Caller, Principal, Via};
use crate::auth::error::AuthError;
use crate::auth::{SUPERUSERS, superusers};
use crate::runtime::Runtime;
use crate::schema::Collection;
use crate::store::{Record, Sql, SqlValue};

/// Normalised email: trimmed and lower-cased, so one address is one account.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// An account found for sign-in.
pub enum Account {
    Superuser(superusers::Superuser),
    User(Arc<Collection>, Record),
}

impl Account {
    pub fn collection(&self) -> &str {
        match self {
            Account::Superuser(_) => SUPERUSERS,
            Account::User(c, _) => c.name(),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Account::Superuser(s) => &s.id,
            Account::User(_, r) => &r.id,
        }
    }

    /// The account's email address.
    pub fn email(&self) -> String {
        match self {
            Account::Superuser(s) => s.email.clone(),
            Account::User(_, r) => r
                .data
                .get("email")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }

    pub(crate) fn password_hash(&self) -> Option<&str> {
        match self {
            Account::Superuser(s) => Some(&s.password_hash),
            Account::User(_, r) => r.data.get("passwordHash").and_then(Value::as_str),
        }
    }

    pub fn json(&self) -> Value {
        match self {
            Account::Superuser(s) => crate::access::superuser_json(&s.id, &s.email),
            Account::User(c, r) => user_json(c, r),
        }
    }
}

pub use crate::access::user_json;

/// An auth collection by name, or a 400 naming the field.
pub fn auth_collection(state: &Runtime, name: &str) -> Result<Arc<Collection>, AuthError> {
    state
        .catalog()
        .get(name)
        .filter(|c| c.is_auth())
        .ok_or_else(|| {
            AuthError::field("collection", "unknown_collection", "not an auth collection")
        })
}

/// Finds an account by email in a collection (or the superusers).
pub async fn find_account(
    state: &Runtime,
    collection: &str,
    email: &str,
) -> Result<Option<Account>, AuthError> {
    if collection == SUPERUSERS {
        return Ok(superusers::by_email(state.store.as_ref(), email)
            .await?
            .map(Account::Superuser));
    }
    let coll = auth_collection(state, collection)?;
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT ");
    crate::store::sql::record_columns(&mut sql, &coll);
    sql.push(" FROM ")
        .ident(coll.name())
        .push(" WHERE ")
        .column(coll.name(), "email")
        .push(" = ")
        .bind(SqlValue::Text(email.to_owned()));
    let mut rows = state.store.query_records(coll.clone(), sql).await?;
    Ok(rows.pop().map(|r| Account::User(coll, r)))
}

/// Finds an account by collection and id (or a superuser).
pub async fn account_by_id(
    state: &Runtime,
    collection: &str,
    id: &str,
) -> Result<Option<Account>, AuthError> {
    if collection == SUPERUSERS {
        return Ok(superusers::get(state.store.as_ref(), id)
            .await?
            .map(Account::Superuser));
    }
    let Some(coll) = state.catalog().get(collection).filter(|c| c.is_auth()) else {
        return Ok(None);
    };
    match crate::records::service::get(state, &coll, id).await {
        Ok(r) => Ok(Some(Account::User(coll, Record::clone(&r)))),
        Err(crate::records::error::RecordError::Store(crate::store::StoreError::NotFound)) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Loads the account a session or key belongs to; None when it no longer exists.
pub async fn load_principal(
    state: &Runtime,
    collection: &str,
    id: &str,
) -> Result<Option<Principal>, AuthError> {
    if collection == SUPERUSERS {
        return Ok(superusers::get(state.store.as_ref(), id).await?.map(|s| {
            Principal::Superuser {
                id: s.id,
                email: s.email,
            }
        }));
    }
    let Some(coll) = state.catalog().get(collection).filter(|c| c.is_auth()) else {
        return Ok(None);
    };
    match crate::records::service::get(state, &coll, id).await {
        Ok(record) => Ok(Some(Principal::User { coll, record })),
        Err(crate::records::error::RecordError::Store(crate::store::StoreError::NotFound)) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Used by handlers that manage the signed-in account itself (sessions, second
/// factor, email, API keys): an API key acts on data, never on the account, so it is
/// refused here whatever its scopes.
pub fn require_account(caller: &Caller) -> Result<(&str, &str), AuthError> {
    if matches!(caller.via, Via::ApiKey { .. }) {
        return Err(AuthError::ApiKeyNotAllowed);
    }
    caller.account().ok_or(AuthError::SignInRequired)
}
