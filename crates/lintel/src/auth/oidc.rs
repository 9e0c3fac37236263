//! Single sign-on with any OpenID Connect provider, from its discovery document:
//! the authorization-code flow with PKCE (S256), a single-use `state` bound to the
//! browser that started the flow (a cookie) and a `nonce`, the ID token's signature
//! checked against the provider's JWKS and its issuer, audience, expiry and nonce
//! verified. The discovery document and the JWKS are fetched only for configured
//! providers, only from the issuer's origin (or origins the configuration adds), and
//! kept for a while. Accounts are linked by email to a verified account; an
//! unverified account with that email is taken over cleanly (its password, sessions,
//! API keys and second factor are removed); a new address becomes a new account only
//! where the collection allows sign-up. An account with a second factor finishes the
//! sign-in with its code, as a password sign-in does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::access::Caller;
use crate::access::rules;
use crate::auth::accounts::Account;
use crate::auth::audit;
use crate::auth::error::AuthError;
use crate::config::OidcProviderConfig;
use crate::records::service::{apply_writes, write_one};
use crate::runtime::Runtime;
use crate::schema::{Action, Collection};
use crate::store::{Record, Sql, SqlValue, StoreError, WriteError, WriteOp};

/// How long a started sign-in may take, in milliseconds.
pub(crate) const STATE_TTL_MS: i64 = 10 * 60 * 1000;
/// The cookie that binds a started sign-in to its browser.
pub const BINDING_COOKIE: &str = "lintel_oidc";
/// How long a provider's discovery document and JWKS are kept.
pub const PROVIDER_CACHE_TTL: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Deserialize)]
pub(crate) struct Discovery {
    pub(crate) issuer: String,
    pub(crate) authorization_endpoint: String,
    pub(crate) token_endpoint: String,
    pub(crate) jwks_uri: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct IdClaims {
    pub(crate) sub: String,
    #[serde(default)]
    pub(crate) email: Option<String>,
    #[serde(default)]
    pub(crate) email_verified: Option<bool>,
    #[serde(default)]
    pub(crate) nonce: Option<String>,
}

pub(crate) fn provider<'a>(
    state: &'a Runtime,
    name: &str,
) -> Result<&'a OidcProviderConfig, AuthError> {
    state
        .config
        .auth
        .oidc
        .get(name)
        .ok_or_else(|| AuthError::UnknownProvider(name.to_owned()))
}

pub(crate) fn upstream(e: impl std::fmt::Display) -> AuthError {
    tracing::warn!(error = %e, "identity provider request failed");
    AuthError::IdentityProvider
}

/// The discovery documents and key sets of the configured providers, each kept for
/// [`PROVIDER_CACHE_TTL`] in this process. No lock is held across an await.
pub struct ProviderCache {
    ttl: Duration,
    discovery: Mutex<HashMap<String, (Instant, Arc<Discovery>)>>,
    jwks: Mutex<HashMap<String, (Instant, Arc<JwkSet>)>>,
}

impl Default for ProviderCache {
    fn default() -> Self {
        Self::new(PROVIDER_CACHE_TTL)
    }
}

type Entries<T> = Mutex<HashMap<String, (Instant, Arc<T>)>>;

pub(crate) fn fresh<T>(map: &Entries<T>, key: &str, ttl: Duration, now: Instant) -> Option<Arc<T>> {
    let map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.get(key)
        .filter(|(at, _)| now.saturating_duration_since(*at) < ttl)
        .map(|(_, v)| Arc::clone(v))
}

pub(crate) fn keep<T>(map: &Entries<T>, key: &str, value: Arc<T>, ttl: Duration, now: Instant) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
    map.insert(key.to_owned(), (now, value));
}

impl ProviderCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            discovery: Mutex::default(),
            jwks: Mutex::default(),
        }
    }
}

/// Whether `url` is on the issuer's origin or one of `extra` (scheme, host and port
/// alike; http or https only).
pub fn on_allowed_origin(issuer: &str, extra: &[String], url: &str) -> bool {
    let origin = |u: &str| {
        url::Url::parse(u)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .map(|u| u.origin())
    };
    let Some(o) = origin(url) else { return false };
    origin(issuer).as_ref() == Some(&o) || extra.iter().any(|e| origin(e).as_ref() == Some(&o))
}

/// A discovery document's endpoints must stay on the issuer's origin (or one the
/// provider's `endpoint_origins` adds): a document cannot send the browser, the
/// code exchange or the key fetch anywhere else.
pub(crate) fn check_endpoints(p: &OidcProviderConfig, d: &Discovery) -> Result<(), String> {
    for (what, url) in [
        ("authorization_endpoint", &d.authorization_endpoint),
        ("token_endpoint", &d.token_endpoint),
        ("jwks_uri", &d.jwks_uri),
    ] {
        if !on_allowed_origin(&p.issuer, &p.endpoint_origins, url) {
            return Err(format!(
                "the discovery document's {what} ({url}) is not on the issuer's origin"
            ));
        }
    }
    Ok(())
}

pub(crate) async fn discover(
    http: &reqwest::Client,
    cache: &ProviderCache,
    p: &OidcProviderConfig,
) -> Result<Arc<Discovery>, AuthError> {
    if let Some(d) = fresh(&cache.discovery, &p.issuer, cache.ttl, Instant::now()) {
        // Checked at each use: two providers may share an issuer, not their origins.
        check_endpoints(p, &d).map_err(upstream)?;
        return Ok(d);
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        p.issuer.trim_end_matches('/')
    );
    let d: Discovery = http
        .get(url)
        .send()
        .await
        .map_err(upstream)?
        .error_for_status()
        .map_err(upstream)?
        .json()
        .await
        .map_err(upstream)?;
    if d.issuer.trim_end_matches('/') != p.issuer.trim_end_matches('/') {
        return Err(upstream("the discovery document names another issuer"));
    }
    check_endpoints(p, &d).map_err(upstream)?;
    let d = Arc::new(d);
    keep(
        &cache.discovery,
        &p.issuer,
        Arc::clone(&d),
        cache.ttl,
        Instant::now(),
    );
    Ok(d)
}

pub(crate) async fn fetch_jwks(
    http: &reqwest::Client,
    uri: &str,
) -> Result<Arc<JwkSet>, AuthError> {
    let set: JwkSet = http
        .get(uri)
        .send()
        .await
        .map_err(upstream)?
        .error_for_status()
        .map_err(upstream)?
        .json()
        .await
        .map_err(upstream)?;
    Ok(Arc::new(set))
}

pub(crate) fn find_key<'a>(set: &'a JwkSet, kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => set.find(kid),
        None => set.keys.first(),
    }
}

/// The provider's key for an ID token: from the cached JWKS, fetched again once when
/// the token names a key the cached set does not have (the provider rotated its keys).
pub(crate) async fn signing_key(
    http: &reqwest::Client,
    cache: &ProviderCache,
    jwks_uri: &str,
    kid: Option<&str>,
) -> Result<Option<Jwk>, AuthError> {
    if let Some(set) = fresh(&cache.jwks, jwks_uri, cache.ttl, Instant::now())
        && let Some(k) = find_key(&set, kid)
    {
        return Ok(Some(k.clone()));
    }
    let set = fetch_jwks(http, jwks_uri).await?;
    keep(
        &cache.jwks,
        jwks_uri,
        Arc::clone(&set),
        cache.ttl,
        Instant::now(),
    );
    Ok(find_key(&set, kid).cloned())
}

pub(crate) fn redirect_url(state: &Runtime, name: &str, p: &OidcProviderConfig) -> String {
    if p.redirect_url.is_empty() {
        format!(
            "{}/v1/auth/oidc/{name}/callback",
            state.config.auth.public_url.trim_end_matches('/')
        )
    } else {
        p.redirect_url.clone()
    }
}

pub(crate) fn query_map(q: Option<String>) -> Map<String, Value> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

/// Whether the app may be sent back to `url` (its origin is the public URL's or an
/// allowed origin): never an open redirect.
pub(crate) fn allowed_return(state: &Runtime, url: &str) -> bool {
    let origin = |u: &str| {
        url::Url::parse(u)
            .ok()
            .map(|u| u.origin().ascii_serialization())
    };
    let Some(o) = origin(url) else { return false };
    origin(&state.config.auth.public_url).as_deref() == Some(o.as_str())
        || state
            .config
            .auth
            .allowed_origins
            .iter()
            .any(|a| origin(a).as_deref() == Some(o.as_str()))
}

/// The path the binding cookie is limited to: the callback's, as the browser sees it.
pub(crate) fn callback_path(state: &Runtime, name: &str, p: &OidcProviderConfig) -> String {
    url::Url::parse(&redirect_url(state, name, p))
        .ok()
        .map(|u| u.path().to_owned())
        .filter(|path| {
            path.starts_with('/')
                && path
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        })
        .unwrap_or_else(|| "/v1/auth/oidc/".to_owned())
}

/// The `Set-Cookie` value of the binding cookie (`max_age` 0 clears it).
pub(crate) fn binding_cookie(path: &str, value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{BINDING_COOKIE}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

pub(crate) fn refused(detail: &str) -> AuthError {
    AuthError::OidcFailed(detail.to_owned())
}

/// A new verified account for an address the provider vouched for.
pub(crate) async fn create_account(
    state: &Runtime,
    coll: &Arc<Collection>,
    email: &str,
) -> Result<Account, AuthError> {
    let anyone = Caller::anonymous();
    if rules::is_denied_outright(&anyone, coll, Action::Create) {
        return Err(AuthError::SignupClosed);
    }
    // A random password the user never sees; a password reset can set one.
    let hash = state.auth.hasher.hash(crate::ids::secret_token()).await?;
    let now = state.clock.now();
    let mut data = Map::new();
    for f in coll.fields() {
        if let Some(d) = &f.default {
            data.insert(f.name.clone(), d.clone());
        } else {
            data.insert(f.name.clone(), Value::Null);
        }
    }
    data.insert("email".into(), Value::String(email.to_owned()));
    data.insert("verified".into(), Value::Bool(true));
    data.insert("passwordHash".into(), Value::String(hash));
    let record = Record {
        id: crate::ids::record_id(),
        created: now.clone(),
        updated: now,
        version: 1,
        data,
    };
    let meta = crate::store::WriteMeta::by(Some(crate::store::events::account_actor(
        coll.name(),
        &record.id,
    )));
    let written = write_one(
        state,
        WriteOp::Insert {
            coll: Arc::clone(coll),
            record,
        },
        meta,
    )
    .await?
    .ok_or_else(|| AuthError::Internal("insert returned no record".into()))?;
    Ok(Account::User(Arc::clone(coll), written))
}

/// Statement on one of an account's rows in Lintel's own tables.
pub(crate) fn account_rows(
    state: &Runtime,
    head: &str,
    now: Option<i64>,
    coll: &str,
    id: &str,
) -> Sql {
    let mut sql = Sql::new(state.store.dialect());
    sql.push(head);
    if let Some(now) = now {
        sql.bind(SqlValue::Int(now));
    }
    sql.push(" WHERE collection = ")
        .bind(SqlValue::Text(coll.to_owned()))
        .push(" AND user_id = ")
        .bind(SqlValue::Text(id.to_owned()));
    sql
}

/// An unverified account with the address the provider vouched for: whoever made it
/// never proved they own the address, so it goes to the one who just did. In one
/// transaction its password is removed (a password reset sets a new one), every
/// session (and so every refresh token) is revoked, its API keys are revoked, its
/// second factor and pending email tokens are dropped, and it becomes verified.
pub(crate) async fn take_over(
    state: &Runtime,
    caller: &Caller,
    coll: &Arc<Collection>,
    record: Record,
    provider: &str,
) -> Result<Account, AuthError> {
    let now = state.clock.now_ms();
    let (name, id) = (coll.name(), record.id.as_str());
    let mut data = record.data.clone();
    data.insert("passwordHash".into(), Value::Null);
    data.insert("verified".into(), Value::Bool(true));
    let updated = Record {
        id: record.id.clone(),
        created: record.created.clone(),
        updated: state.clock.now(),
        version: record.version + 1,
        data,
    };
    let mut ops = vec![WriteOp::Update {
        coll: Arc::clone(coll),
        record: updated.clone(),
        expected_version: record.version,
    }];
    let sessions = state.auth.sessions.revoke_all_ops(name, id, now);
    let in_transaction = sessions.is_some();
    ops.extend(sessions.unwrap_or_default());
    let sessions_at = 1..ops.len();
    let keys_at = ops.len();
    ops.push(crate::auth::apikeys::revoke_all_op(
        state.store.dialect(),
        name,
        id,
        now,
    ));
    let mut mail_tokens = account_rows(
        state,
        "UPDATE _lintel_auth_tokens SET used = ",
        Some(now),
        name,
        id,
    );
    mail_tokens.push(" AND used IS NULL");
    for sql in [
        account_rows(state, "DELETE FROM _lintel_mfa", None, name, id),
        mail_tokens,
    ] {
        ops.push(WriteOp::System { sql, expect: None });
    }
    let meta = crate::store::WriteMeta::by(Some(crate::store::events::account_actor(name, id)));
    let out = match apply_writes(state, ops, meta).await {
        Ok(out) => out,
        Err(WriteError {
            error: StoreError::VersionConflict,
            ..
        }) => {
            return Err(AuthError::Concurrent(
                "The account changed at the same time; sign in again.",
            ));
        }
        Err(e) => return Err(AuthError::from(e.error)),
    };
    let affected = |i: usize| match out.get(i) {
        Some(crate::store::WriteOutcome::Affected(n)) => *n,
        _ => 0,
    };
    let sessions_revoked = if in_transaction {
        sessions_at.map(affected).sum()
    } else {
        // Sessions kept outside the main store: revoked right after.
        state.auth.sessions.revoke_all(name, id, now).await?
    };
    audit::record(
        state,
        audit::Event::new("account_taken_over", "ok")
            .collection(name)
            .subject(id)
            .ip(caller.ip.clone())
            .detail(json!({
                "provider": provider,
                "reason": "unverified account with the provider's verified email",
                "sessionsRevoked": sessions_revoked,
                "apiKeysRevoked": affected(keys_at),
            })),
    );
    let record = match out.into_iter().next() {
        Some(crate::store::WriteOutcome::Written(r)) => r,
        _ => updated,
    };
    Ok(Account::User(Arc::clone(coll), record))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn doc(issuer: &str, auth: &str, token: &str, jwks: &str) -> Discovery {
        Discovery {
            issuer: issuer.into(),
            authorization_endpoint: auth.into(),
            token_endpoint: token.into(),
            jwks_uri: jwks.into(),
        }
    }

    #[test]
    fn endpoints_stay_on_the_issuers_origin() {
        let iss = "https://id.example.com/tenant/v2";
        let no: &[String] = &[];
        for ok in [
            "https://id.example.com/authorize",
            "https://id.example.com:443/tenant/token",
            "https://ID.example.com/keys?x=1",
        ] {
            assert!(on_allowed_origin(iss, no, ok), "{ok}");
        }
        for bad in [
            "https://evil.example/token",
            "http://id.example.com/token",
            "https://id.example.com:8443/token",
            "https://id.example.com.evil.example/token",
            "https://evil.example/https://id.example.com/",
            "//id.example.com/token",
            "/token",
            "file:///etc/passwd",
            "data:text/plain,x",
            "",
        ] {
            assert!(!on_allowed_origin(iss, no, bad), "{bad}");
        }
        let extra = ["https://oauth2.googleapis.com".to_owned()];
        assert!(on_allowed_origin(
            iss,
            &extra,
            "https://oauth2.googleapis.com/token"
        ));
        assert!(!on_allowed_origin(
            iss,
            &extra,
            "https://www.googleapis.com/certs"
        ));

        let p = OidcProviderConfig {
            issuer: iss.into(),
            ..Default::default()
        };
        let good = "https://id.example.com";
        assert!(check_endpoints(&p, &doc(iss, good, good, good)).is_ok());
        let evil = "https://evil.example/x";
        for (d, what) in [
            (doc(iss, evil, good, good), "authorization_endpoint"),
            (doc(iss, good, evil, good), "token_endpoint"),
            (doc(iss, good, good, evil), "jwks_uri"),
        ] {
            let e = check_endpoints(&p, &d).unwrap_err();
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn cache_entries_expire() {
        let cache = ProviderCache::new(Duration::from_secs(600));
        let t0 = Instant::now();
        assert!(fresh(&cache.discovery, "a", cache.ttl, t0).is_none());
        keep(
            &cache.discovery,
            "a",
            Arc::new(doc("a", "", "", "")),
            cache.ttl,
            t0,
        );
        assert!(
            fresh(
                &cache.discovery,
                "a",
                cache.ttl,
                t0 + Duration::from_secs(599)
            )
            .is_some()
        );
        assert!(
            fresh(
                &cache.discovery,
                "a",
                cache.ttl,
                t0 + Duration::from_secs(600)
            )
            .is_none()
        );
        assert!(fresh(&cache.discovery, "b", cache.ttl, t0).is_none());
    }

    #[test]
    fn the_binding_cookie() {
        assert_eq!(
            binding_cookie("/v1/auth/oidc/g/callback", "abc", 600, false),
            "lintel_oidc=abc; Path=/v1/auth/oidc/g/callback; HttpOnly; SameSite=Lax; Max-Age=600"
        );
        assert_eq!(
            binding_cookie("/p", "", 0, true),
            "lintel_oidc=; Path=/p; HttpOnly; SameSite=Lax; Max-Age=0; Secure"
        );
    }

    /// A provider on 127.0.0.1 that counts the requests for its discovery document
    /// and its JWKS; the JWKS gains the key `k2` after the first fetch (a rotation).
    async fn counting_provider(
        token_endpoint: Option<&str>,
    ) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let (docs, keys) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let token = token_endpoint.map_or_else(|| format!("{issuer}/token"), str::to_owned);
        let body = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": token,
            "jwks_uri": format!("{issuer}/jwks"),
        });
        let (d, k) = (docs.clone(), keys.clone());
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    d.fetch_add(1, Ordering::SeqCst);
                    let body = body.clone();
                    async move { axum::Json(body) }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let n = k.fetch_add(1, Ordering::SeqCst);
                    let key = |kid: &str| json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": "AQAB", "e": "AQAB"});
                    let keys = if n == 0 { vec![key("k1")] } else { vec![key("k1"), key("k2")] };
                    async move { axum::Json(json!({ "keys": keys })) }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (issuer, docs, keys)
    }

    #[tokio::test]
    async fn discovery_and_keys_are_cached_and_keys_fetched_again_for_an_unknown_kid() {
        let (issuer, docs, keys) = counting_provider(None).await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let cache = ProviderCache::default();
        let p = OidcProviderConfig {
            issuer: issuer.clone(),
            ..Default::default()
        };
        let d = discover(&http, &cache, &p).await.unwrap();
        discover(&http, &cache, &p).await.unwrap();
        assert_eq!(docs.load(Ordering::SeqCst), 1, "discovery read once");
        let key = |kid: &'static str| signing_key(&http, &cache, &d.jwks_uri, Some(kid));
        assert!(key("k1").await.unwrap().is_some());
        assert!(key("k1").await.unwrap().is_some());
        assert_eq!(keys.load(Ordering::SeqCst), 1, "JWKS read once");
        assert!(
            key("k2").await.unwrap().is_some(),
            "a rotated-in key is found"
        );
        assert_eq!(
            keys.load(Ordering::SeqCst),
            2,
            "an unknown kid: fetched again once"
        );
        assert!(key("k2").await.unwrap().is_some());
        assert_eq!(keys.load(Ordering::SeqCst), 2, "and kept");
        assert!(key("nope").await.unwrap().is_none());
        assert_eq!(
            keys.load(Ordering::SeqCst),
            3,
            "one fetch per unknown kid, no more"
        );

        // Without a cache lifetime every sign-in reads them again.
        let uncached = ProviderCache::new(Duration::ZERO);
        discover(&http, &uncached, &p).await.unwrap();
        assert_eq!(docs.load(Ordering::SeqCst), 2);

        // A document that sends the code exchange elsewhere is refused, and not kept.
        let (evil, evil_docs, _) = counting_provider(Some("http://127.0.0.2:9/token")).await;
        let p = OidcProviderConfig {
            issuer: evil,
            ..Default::default()
        };
        for _ in 0..2 {
            let e = discover(&http, &cache, &p).await.unwrap_err();
            assert!(matches!(e, AuthError::IdentityProvider), "{e}");
        }
        assert_eq!(evil_docs.load(Ordering::SeqCst), 2);
    }
}
