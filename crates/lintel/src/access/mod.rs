//! Access: who is calling ([`Caller`]: the principal and how it proved itself), what
//! the collection rules allow it ([`rules`]), and the proofs a capability must hold
//! before a record leaves the server ([`permit`]; [`render`] takes nothing else).
//! Every capability that shows records (records, batch, and later files, realtime and
//! search) decides access here, so all of them apply the same rules. Resolving the
//! caller from a request is the edge's work (`auth::caller`).

pub mod permit;
pub mod render;
pub mod rules;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::schema::{Action, Collection};
use crate::store::Record;

/// The name superusers go by wherever an auth collection is named.
pub const SUPERUSERS: &str = "_superusers";

/// Why access was refused, before any audit or HTTP shape is given to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An API key's scopes do not cover the action (403 `insufficient_scope`).
    Scope { collection: String, action: Action },
    /// The collection's rule refuses the caller (401 for anonymous callers, else 403;
    /// the capability records it in the audit log).
    Rule {
        collection: String,
        action: Action,
        anonymous: bool,
    },
}

/// The account behind a request.
#[derive(Debug, Clone)]
pub enum Principal {
    Anonymous,
    /// A superuser account, or the admin token (id `admin`).
    Superuser {
        id: String,
        email: String,
    },
    /// A record of an auth collection.
    User {
        coll: Arc<Collection>,
        record: Arc<Record>,
    },
    /// Another service, known by the identity in its verified client certificate
    /// (mutual TLS). Rules see it as `@request.auth.collection = "_services"`.
    Service {
        name: String,
    },
}

/// The collection name services go by in rules.
pub const SERVICES: &str = "_services";

impl Principal {
    /// The account as its owner sees it (hidden fields left out), or null.
    pub fn json(&self) -> Value {
        match self {
            Principal::Anonymous => Value::Null,
            Principal::Superuser { id, email } => superuser_json(id, email),
            Principal::User { coll, record } => user_json(coll, record),
            Principal::Service { name } => {
                serde_json::json!({ "id": name, "collection": SERVICES })
            }
        }
    }
}

/// An auth record as its owner sees it (hidden fields left out).
pub fn user_json(coll: &Collection, record: &Record) -> Value {
    let mut m = render::render(coll, permit::own_account(record), None);
    m.insert("collection".into(), coll.name().into());
    Value::Object(m)
}

/// A superuser as clients see it.
pub fn superuser_json(id: &str, email: &str) -> Value {
    serde_json::json!({ "id": id, "email": email, "collection": SUPERUSERS })
}

/// How the caller proved who it is.
#[derive(Debug, Clone)]
pub enum Via {
    Nothing,
    AdminToken,
    Token {
        session: String,
    },
    Cookie {
        session: String,
    },
    ApiKey {
        id: String,
        scopes: Vec<String>,
    },
    /// A verified client certificate (mutual TLS).
    ClientCert,
}

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub via: Via,
    /// The client address, for the audit log.
    pub ip: Option<String>,
    /// The request came over TLS.
    pub tls: bool,
}

impl Caller {
    pub fn anonymous() -> Self {
        Self {
            principal: Principal::Anonymous,
            via: Via::Nothing,
            ip: None,
            tls: false,
        }
    }

    pub fn is_superuser(&self) -> bool {
        matches!(self.principal, Principal::Superuser { .. })
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self.principal, Principal::Anonymous)
    }

    /// The account as (collection, id), for sessions and keys.
    pub fn account(&self) -> Option<(&str, &str)> {
        match &self.principal {
            Principal::Anonymous => None,
            Principal::Superuser { id, .. } => Some((SUPERUSERS, id)),
            Principal::User { coll, record } => Some((coll.name(), &record.id)),
            Principal::Service { .. } => None,
        }
    }

    /// The session this request belongs to, if any.
    pub fn session(&self) -> Option<&str> {
        match &self.via {
            Via::Token { session } | Via::Cookie { session } => Some(session),
            _ => None,
        }
    }

    /// `@request.auth.*`: the account's visible fields, its id and its collection.
    pub fn auth_fields(&self) -> Option<Map<String, Value>> {
        match &self.principal {
            Principal::Anonymous => None,
            Principal::Superuser { id, email } => {
                let mut m = Map::new();
                m.insert("id".into(), id.clone().into());
                m.insert("email".into(), email.clone().into());
                m.insert("collection".into(), SUPERUSERS.into());
                Some(m)
            }
            Principal::Service { name } => {
                let mut m = Map::new();
                m.insert("id".into(), name.clone().into());
                m.insert("collection".into(), SERVICES.into());
                Some(m)
            }
            Principal::User { coll, record } => {
                let mut m = Map::new();
                m.insert("id".into(), record.id.clone().into());
                m.insert("collection".into(), coll.name().into());
                m.insert("created".into(), record.created.clone().into());
                m.insert("updated".into(), record.updated.clone().into());
                for (k, v) in &record.data {
                    if !coll.is_hidden(k) {
                        m.insert(k.clone(), v.clone());
                    }
                }
                Some(m)
            }
        }
    }

    /// Whether an API key's scopes cover `action` on `collection` (always true for
    /// other credentials).
    pub fn scope_allows(&self, collection: &str, action: Action) -> bool {
        let Via::ApiKey { scopes, .. } = &self.via else {
            return true;
        };
        scopes.iter().any(|s| {
            let Some((c, a)) = s.split_once(':') else {
                return false;
            };
            let coll_ok = c == "*" || c == collection;
            let act_ok = a == "*"
                || a == action.as_str()
                || (a == "read" && matches!(action, Action::List | Action::View))
                || (a == "write"
                    && matches!(action, Action::Create | Action::Update | Action::Delete));
            coll_ok && act_ok
        })
    }

    /// The caller as the audit log names it.
    pub fn actor(&self) -> String {
        let who = match &self.principal {
            Principal::Anonymous => "anonymous".to_owned(),
            Principal::Superuser { id, .. } => format!("{SUPERUSERS}/{id}"),
            Principal::User { coll, record } => format!("{}/{}", coll.name(), record.id),
            Principal::Service { name } => format!("{SERVICES}/{name}"),
        };
        match &self.via {
            Via::ApiKey { id, .. } => format!("{who} (api key {id})"),
            Via::AdminToken => "admin token".to_owned(),
            _ => who,
        }
    }

    /// The caller as events name it: `{"type", "id"?, "collection"?, "apiKey"?}`.
    pub fn event_actor(&self) -> Value {
        let mut m = Map::new();
        let (kind, id, coll) = match &self.principal {
            Principal::Anonymous => ("anonymous", None, None),
            Principal::Superuser { id, .. } => ("superuser", Some(id.clone()), None),
            Principal::User { coll, record } => (
                "user",
                Some(record.id.clone()),
                Some(coll.name().to_owned()),
            ),
            Principal::Service { name } => ("service", Some(name.clone()), None),
        };
        let kind = if matches!(self.via, Via::AdminToken) {
            "admin"
        } else {
            kind
        };
        m.insert("type".into(), kind.into());
        if let Some(id) = id {
            m.insert("id".into(), id.into());
        }
        if let Some(c) = coll {
            m.insert("collection".into(), c.into());
        }
        if let Via::ApiKey { id, .. } = &self.via {
            m.insert("apiKey".into(), id.clone().into());
        }
        Value::Object(m)
    }

    /// The actor and request of the writes this caller makes, at `now_ms`.
    pub fn write_meta(&self, now_ms: i64) -> crate::store::WriteMeta {
        crate::store::WriteMeta::by(Some(self.event_actor())).at(now_ms)
    }

    /// Whether an API key's scopes grant `access` (`read`, `write`, `work`) to an admin
    /// area (`jobs`, `events`...): `<area>:<access>` or `<area>:*` (always true for
    /// other credentials; whether the caller is a superuser is asked separately).
    pub fn area_allows(&self, area: &str, access: &str) -> bool {
        let Via::ApiKey { scopes, .. } = &self.via else {
            return true;
        };
        scopes.iter().any(|s| {
            s.split_once(':')
                .is_some_and(|(a, x)| a == area && (x == access || x == "*"))
        })
    }

    /// Refused unless an API key's scopes allow the action.
    pub fn require_scope(&self, collection: &str, action: Action) -> Result<(), Refusal> {
        if self.scope_allows(collection, action) {
            Ok(())
        } else {
            Err(Refusal::Scope {
                collection: collection.to_owned(),
                action,
            })
        }
    }
}
