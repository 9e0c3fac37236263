//! Record operations, one file per operation (create, read, update, delete, list,
//! expand) and the write path they share. Used by the records routes and by the batch
//! endpoint, so both apply exactly the same rules. Access is decided through
//! `crate::access`: a record leaves only as a `Visible` some grant made.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::access::permit::{self, Granted, Visible, Written};
use crate::access::render::render;
use crate::access::{Caller, Refusal, rules};
use crate::auth::{audit, password};
use crate::records::error::RecordError;
use crate::records::query::{ListParams, ListPlan, PageMode, encode_cursor, plan};
use crate::records::validate::{Mode, validate_document, validate_table};
use crate::runtime::Runtime;
use crate::schema::kinds::is_record_id;
use crate::schema::{Action, Collection, FieldType};
use crate::store::sql::select_by_ids;
use crate::store::{Record, StoreError, WriteError, WriteMeta, WriteOp, WriteOutcome};

mod create;
mod delete;
mod expand;
mod list;
mod read;
mod update;
mod write;

pub use create::{may_create, prepare_create};
pub use delete::prepare_delete;
pub use expand::render_many;
pub use list::{ListPage, add_search_members, list, list_body};
pub use read::{get, get_visible};
pub use update::{KEEP_API_KEYS, UpdateHow, may_update, prepare_update, update};
pub use write::{Prepared, Ready, apply_writes, finish, write_one};
use write::{check_protected, check_relation_access, take_password};

/// A store failure on a record (the edge words a missing record and a stale
/// `If-Match` for the records API).
pub fn store_error(e: StoreError) -> RecordError {
    RecordError::Store(e)
}

/// The entity tag of a record version.
pub fn etag(record: &Record) -> String {
    format!("\"{}-{}\"", record.id, record.version)
}

/// Whether an `If-Match` / `If-None-Match` value matches the record's tag. `W/` tags
/// only count when `weak` (If-None-Match uses weak comparison, If-Match strong).
pub fn tag_matches(header: &str, record: &Record, weak: bool) -> bool {
    let current = etag(record);
    header.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        match t.strip_prefix("W/") {
            Some(w) => weak && w == current,
            None => t == current,
        }
    })
}

/// Looks a collection up, or 404.
pub fn collection(state: &Runtime, name: &str) -> Result<Arc<Collection>, RecordError> {
    state
        .catalog()
        .get(name)
        .ok_or_else(|| RecordError::UnknownCollection(name.to_owned()))
}

/// 403 for an action the rules refuse (401 for anonymous callers), recorded in the
/// audit log.
pub fn denied(state: &Runtime, caller: &Caller, coll: &Collection, action: Action) -> RecordError {
    refused(
        state,
        caller,
        Refusal::Rule {
            collection: coll.name().to_owned(),
            action,
            anonymous: caller.is_anonymous(),
        },
    )
}

/// An access refusal as the client sees it; rule refusals go to the audit log.
pub fn refused(state: &Runtime, caller: &Caller, r: Refusal) -> RecordError {
    if let Refusal::Rule {
        collection, action, ..
    } = &r
    {
        audit::record_denial(
            state,
            caller.actor(),
            caller.ip.clone(),
            collection,
            action.as_str(),
        );
    }
    RecordError::Refused(r)
}
