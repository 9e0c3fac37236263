//! Short-lived tokens for one purpose, for places a browser cannot send a header:
//! file downloads (`<img src>`, links) and opening realtime and Yjs connections
//! (EventSource, WebSocket). Who may get one, and the caller one stands for while its
//! session lasts. Such a token is never an access token.

use crate::access::{Caller, Principal, Via};
use crate::runtime::Runtime;
use crate::store::StoreError;

/// Why a caller gets no purpose token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not signed in (401).
    NotSignedIn,
    /// An API key: the key itself is sent instead (403 `api_key_not_allowed`).
    ApiKey,
}

/// Signs a token for `audience`, valid `ttl_secs`, standing for the caller: a
/// signed-in account (bearer token or cookie, bound to its session) or the admin token.
pub fn issue(
    rt: &Runtime,
    caller: &Caller,
    audience: &str,
    ttl_secs: u64,
) -> Result<Result<String, Refusal>, anyhow::Error> {
    let (col, id, sid) = match &caller.via {
        Via::AdminToken => ("_admin".to_owned(), "admin".to_owned(), "admin".to_owned()),
        Via::Token { session } | Via::Cookie { session } => {
            let Some((col, id)) = caller.account() else {
                return Ok(Err(Refusal::NotSignedIn));
            };
            (col.to_owned(), id.to_owned(), session.clone())
        }
        Via::ApiKey { .. } => return Ok(Err(Refusal::ApiKey)),
        Via::Nothing | Via::ClientCert => return Ok(Err(Refusal::NotSignedIn)),
    };
    rt.auth
        .keys
        .issue_for(audience, &col, &id, &sid, rt.clock.now_ms(), ttl_secs)
        .map(Ok)
}

/// The caller a token for `audience` stands for, if it is still good: signed, not
/// expired, and its session still active.
pub async fn caller_of(
    rt: &Runtime,
    audience: &str,
    token: &str,
) -> Result<Option<Caller>, StoreError> {
    let now = rt.clock.now_ms();
    let Some(claims) = rt.auth.keys.verify_for(audience, token, now) else {
        return Ok(None);
    };
    if claims.col == "_admin" && claims.sid == "admin" {
        return Ok(Some(Caller {
            principal: Principal::Superuser {
                id: "admin".into(),
                email: String::new(),
            },
            via: Via::AdminToken,
            ip: None,
            tls: false,
        }));
    }
    let Some(session) = rt
        .auth
        .sessions
        .get(&claims.sid)
        .await?
        .filter(|s| s.active(now) && s.collection == claims.col && s.user_id == claims.sub)
    else {
        return Ok(None);
    };
    let Ok(Some(principal)) =
        crate::auth::accounts::load_principal(rt, &session.collection, &session.user_id).await
    else {
        return Ok(None);
    };
    Ok(Some(Caller {
        principal,
        via: Via::Token {
            session: session.id,
        },
        ip: None,
        tls: false,
    }))
}

/// Whether a long-lived connection's caller still stands: its session active, its API
/// key neither revoked nor expired. Checked at each heartbeat; a failed read counts
/// as standing (the next beat asks again).
pub async fn still_stands(rt: &Runtime, caller: &Caller) -> bool {
    match &caller.via {
        Via::Token { session } | Via::Cookie { session } => {
            let now = rt.clock.now_ms();
            match rt.auth.sessions.get(session).await {
                Ok(Some(s)) => s.active(now),
                Ok(None) => false,
                Err(_) => true,
            }
        }
        Via::ApiKey { id, .. } => crate::auth::apikeys::still_valid(rt, id)
            .await
            .unwrap_or(true),
        Via::Nothing | Via::AdminToken | Via::ClientCert => true,
    }
}
