//! Proofs of access. A record leaves the server only through [`super::render`], which
//! takes a [`Visible`]; a `Visible` can only be made here, by the check that grants
//! it. So a read, list, expansion (and later a file download, a realtime delivery or
//! a search hit) that forgot its access check does not compile.
//!
//! The grants:
//! - [`view`]: the caller's key scopes and the collection's view rule allow this record;
//! - [`ListPermit`]: the list rule as a condition the query must carry; rows of a query
//!   built with it are admitted;
//! - [`Written`]: the create or update rule passed for a record the caller wrote, so
//!   the response may show what was written;
//! - [`own_account`]: an account's own record, shown to that account once it has proved
//!   who it is (sign-in, `me`).

use std::sync::Arc;

use lintel_filter::Expr;
use serde_json::{Map, Value};

use super::rules::{self, ListAccess};
use super::{Caller, Refusal};
use crate::schema::{Action, Collection, Rule};
use crate::store::Record;

/// A record the caller may see. Made only by this module's grants.
#[derive(Debug, Clone, Copy)]
pub struct Visible<'a> {
    record: &'a Record,
}

impl<'a> Visible<'a> {
    /// The record this proof is about.
    pub fn record(self) -> &'a Record {
        self.record
    }
}

/// Grants `record` when the caller's key scopes and the view rule allow it.
pub fn view<'a>(
    caller: &Caller,
    coll: &Collection,
    record: &'a Record,
    now: &str,
) -> Option<Visible<'a>> {
    (caller.scope_allows(coll.name(), Action::View)
        && rules::allows(caller, coll, Action::View, record, None, now))
    .then_some(Visible { record })
}

/// Grants an account's own record to that account (hidden fields still never leave).
/// Callers hold the record because the account just proved who it is: a sign-in, a
/// token, a session.
pub fn own_account(record: &Record) -> Visible<'_> {
    Visible { record }
}

/// What the caller may list in one collection: all of it, or the rows for which the
/// rule holds (the condition every list query of this permit must include).
#[derive(Debug, Clone)]
pub struct ListPermit {
    coll: Arc<Collection>,
    /// The caller passes the rule whatever the row (superusers, an empty rule).
    all: bool,
}

impl ListPermit {
    /// The rule's condition, to be compiled into the list query (None: every row).
    pub fn condition(&self) -> Option<&Expr> {
        if self.all {
            return None;
        }
        match self.coll.rule(Action::List) {
            Rule::Expr(e) => Some(e),
            // `list` grants no permit for a superusers-only rule to anyone else.
            Rule::Anyone | Rule::Superusers => None,
        }
    }

    /// Admits the rows of a query built with this permit's [`condition`](Self::condition).
    pub fn admit<'a>(&self, rows: &'a [Record]) -> Vec<Visible<'a>> {
        rows.iter().map(|record| Visible { record }).collect()
    }
}

/// Grants a list of `coll` to the caller, or says why not.
pub fn list(caller: &Caller, coll: &Arc<Collection>) -> Result<ListPermit, Refusal> {
    caller.require_scope(coll.name(), Action::List)?;
    let all = match rules::list_access(caller, coll) {
        ListAccess::All => true,
        ListAccess::Filter(_) => false,
        ListAccess::Denied => {
            return Err(Refusal::Rule {
                collection: coll.name().to_owned(),
                action: Action::List,
                anonymous: caller.is_anonymous(),
            });
        }
    };
    Ok(ListPermit {
        coll: coll.clone(),
        all,
    })
}

/// Proof that a create or update rule passed: the writer may see what it wrote.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    _granted: (),
}

impl Written {
    /// The record as stored by the write this proof was granted for.
    pub fn show(self, record: &Record) -> Visible<'_> {
        Visible { record }
    }
}

/// Grants a create (`record` as it would be written, `body` the request body) or an
/// update (`record` as it is and, separately, as it will be: call it for both).
pub fn write(
    caller: &Caller,
    coll: &Collection,
    action: Action,
    record: &Record,
    body: Option<&Map<String, Value>>,
    now: &str,
) -> Result<Written, Refusal> {
    debug_assert!(matches!(action, Action::Create | Action::Update));
    if rules::allows(caller, coll, action, record, body, now) {
        Ok(Written { _granted: () })
    } else {
        Err(Refusal::Rule {
            collection: coll.name().to_owned(),
            action,
            anonymous: caller.is_anonymous(),
        })
    }
}

/// An owned record the caller may view (for reads that keep the record past the
/// check, such as a single-record read followed by an update).
#[derive(Debug, Clone)]
pub struct Granted {
    record: std::sync::Arc<Record>,
}

impl Granted {
    pub fn record(&self) -> &std::sync::Arc<Record> {
        &self.record
    }

    pub fn visible(&self) -> Visible<'_> {
        Visible {
            record: &self.record,
        }
    }
}

/// [`view`] for a record held by `Arc`.
pub fn view_owned(
    caller: &Caller,
    coll: &Collection,
    record: std::sync::Arc<Record>,
    now: &str,
) -> Option<Granted> {
    view(caller, coll, &record, now)
        .is_some()
        .then_some(Granted { record })
}
