//! Record operations independent of HTTP framing: building and validating writes,
//! reading, listing, expanding relations and rendering records. Used by the records
//! routes and by the batch endpoint, so both apply exactly the same rules.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::access::permit::{self, Granted, Visible, Written};
use crate::access::render::render;
use crate::access::{Caller, Refusal, rules};
use crate::auth::{audit, password};
use crate::error::ApiError;
use crate::records::query::{ListParams, ListPlan, PageMode, encode_cursor, plan};
use crate::records::validate::{Mode, validate_document, validate_table};
use crate::schema::kinds::is_record_id;
use crate::schema::{Action, Collection, FieldType};
use crate::state::AppState;
use crate::store::sql::select_by_ids;
use crate::store::{Record, StoreError, WriteError, WriteOp, WriteOutcome};

/// Maps a store failure on a record to its HTTP outcome.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("No record with that id in this collection."),
        StoreError::VersionConflict => ApiError::precondition_failed(
            "The record changed since the version given in If-Match; fetch it again.",
        ),
        StoreError::Constraint(errors) => ApiError::validation(errors),
        StoreError::Referenced(by) => ApiError::conflict(
            "record_referenced",
            format!("The record is still referenced by {by}; remove those references first."),
        ),
        StoreError::Schema(msg) => {
            tracing::warn!(error = %msg, "write raced a schema change");
            ApiError::conflict(
                "schema_changed",
                "The collection changed during the request; retry it.",
            )
        }
        StoreError::Unavailable(msg) => {
            tracing::warn!(error = %msg, "store unavailable");
            ApiError::unavailable("store_unavailable", "The store is busy; retry shortly.", 1)
        }
        StoreError::Internal(msg) => ApiError::internal(msg),
    }
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
pub fn collection(state: &AppState, name: &str) -> Result<Arc<Collection>, ApiError> {
    state
        .catalog()
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("No collection named '{}'.", truncate(name))))
}

fn truncate(s: &str) -> String {
    s.chars().take(48).collect()
}

/// 403 for an action the rules refuse (401 for anonymous callers), recorded in the
/// audit log.
pub fn denied(state: &AppState, caller: &Caller, coll: &Collection, action: Action) -> ApiError {
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
pub fn refused(state: &AppState, caller: &Caller, r: Refusal) -> ApiError {
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
    ApiError::from(r)
}

/// Refuses fields only superusers may set (and the password hash, which nobody sets).
/// On update, a protected field sent back unchanged (a PUT of the whole record) passes.
fn check_protected(
    caller: &Caller,
    coll: &Collection,
    input: &Map<String, Value>,
    current: Option<&Record>,
) -> Result<(), ApiError> {
    let updating = current.is_some();
    let mut errors = crate::error::FieldErrors::new();
    for (k, v) in input {
        let Some(f) = coll.field(k) else { continue };
        if current.is_some_and(|r| r.data.get(k) == Some(v)) && k != "passwordHash" {
            continue;
        }
        if coll.is_auth() && k == "passwordHash" {
            crate::error::push_field_error(
                &mut errors,
                k,
                "protected",
                "set the password with 'password'",
            );
        } else if coll.is_auth() && k == "email" && updating && !caller.is_superuser() {
            crate::error::push_field_error(
                &mut errors,
                k,
                "protected",
                "change the email with POST /v1/auth/request-email-change",
            );
        } else if f.protected && !caller.is_superuser() {
            crate::error::push_field_error(
                &mut errors,
                k,
                "protected",
                "only superusers can set this field",
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Takes `password` (and `oldPassword`) out of an auth record's input and returns the
/// new hash; checks the old password for callers other than superusers.
/// Takes `password` (and `oldPassword`) out of the input and checks the new password
/// against the rules; the plain text is hashed later, in [`finish`], once every check
/// of the request has passed.
async fn take_password(
    state: &AppState,
    caller: &Caller,
    coll_name: &str,
    input: &mut Map<String, Value>,
    current: Option<&Record>,
) -> Result<Option<String>, ApiError> {
    let old = input.remove("oldPassword");
    let Some(pw) = input.remove("password") else {
        return if current.is_none() {
            Err(ApiError::field("password", "required", "is required"))
        } else {
            Ok(None)
        };
    };
    let Value::String(pw) = pw else {
        return Err(ApiError::field(
            "password",
            "invalid_type",
            "must be a string",
        ));
    };
    let email = match (input.get("email"), current) {
        (Some(Value::String(e)), _) => e.clone(),
        (_, Some(r)) => r
            .data
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        _ => String::new(),
    };
    if let (Some(current), false) = (current, caller.is_superuser()) {
        let ok = match old {
            Some(Value::String(o)) => {
                charge_hashes(state, caller, 1)?;
                password::check_current(
                    state,
                    coll_name,
                    current,
                    caller.ip.clone(),
                    o,
                    "password_change_failed",
                )
                .await?
            }
            _ => false,
        };
        if !ok {
            return Err(ApiError::field(
                "oldPassword",
                "invalid",
                "the current password is needed to set a new one",
            ));
        }
    }
    password::check(&state.config.auth, &pw, &email)
        .map_err(|(code, msg)| ApiError::field("password", code, msg))?;
    Ok(Some(pw))
}

/// Spends the caller's address's budget for password hashing (the `auth` rate-limit
/// rule): 429 once it is used up.
fn charge_hashes(state: &AppState, caller: &Caller, units: u32) -> Result<(), ApiError> {
    let Some(limiter) = state.limiter.as_ref() else {
        return Ok(());
    };
    if caller.is_superuser() {
        return Ok(());
    }
    let ip = caller.ip.as_deref().and_then(|s| s.parse().ok());
    limiter.charge("auth", ip, units).map_err(|secs| {
        let mut err = ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many password operations from this address; retry in {secs} s."),
        );
        err.retry_after = Some(secs);
        err
    })
}

/// A relation may name only records the writer may view: an id it cannot see is
/// refused exactly like one that does not exist (so ids cannot be probed either).
/// References the record already held are kept without a check.
async fn check_relation_access(
    state: &AppState,
    caller: &Caller,
    coll: &Collection,
    record: &Record,
    previous: Option<&Record>,
) -> Result<(), ApiError> {
    for (field, target, ids) in crate::store::write::relation_targets(coll, record) {
        let held: BTreeSet<&str> = match previous.and_then(|p| p.data.get(&field)) {
            Some(Value::String(s)) => std::iter::once(s.as_str()).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => BTreeSet::new(),
        };
        let new: Vec<String> = ids
            .into_iter()
            .filter(|id| !held.contains(id.as_str()))
            .collect();
        if new.is_empty() {
            continue;
        }
        let refused = || ApiError::validation(crate::store::write::missing_target(&field, &target));
        let Some(target_coll) = state.catalog().get(&target) else {
            return Err(refused());
        };
        // A key's scopes bind superusers too; past them, superusers see everything.
        if !caller.scope_allows(&target, Action::View) {
            return Err(refused());
        }
        if caller.is_superuser() {
            continue;
        }
        let mut visible = 0usize;
        for chunk in new.chunks(500) {
            let sql = select_by_ids(state.store.dialect(), &target_coll, chunk);
            for rec in state
                .store
                .query_records(target_coll.clone(), sql)
                .await
                .map_err(store_error)?
            {
                if rules::allows(
                    caller,
                    &target_coll,
                    Action::View,
                    &rec,
                    None,
                    &state.clock.now(),
                ) {
                    visible += 1;
                }
            }
        }
        if visible != new.len() {
            return Err(refused());
        }
    }
    Ok(())
}

/// A write prepared from client input: every check done, but a new password not yet
/// hashed (hashing is the costly part, so it runs only once the whole request is
/// known to be valid; see [`finish`]).
pub struct Prepared {
    pub op: WriteOp,
    password: Option<String>,
    /// For creates and updates: the rule passed, so the writer may see the result.
    written: Option<Written>,
}

impl From<WriteOp> for Prepared {
    fn from(op: WriteOp) -> Self {
        Self {
            op,
            password: None,
            written: None,
        }
    }
}

/// A write ready to apply, with what its response may show.
pub struct Ready {
    pub op: WriteOp,
    /// Set for creates and updates (see [`Written`]).
    pub written: Option<Written>,
}

/// Hashes the new passwords of prepared writes (counted against the caller's
/// address's budget first, all at once) and returns the writes to apply.
pub async fn finish(
    state: &AppState,
    caller: &Caller,
    prepared: Vec<Prepared>,
) -> Result<Vec<Ready>, ApiError> {
    let n = prepared.iter().filter(|p| p.password.is_some()).count();
    if n > 0 {
        charge_hashes(state, caller, u32::try_from(n).unwrap_or(u32::MAX))?;
    }
    let mut ops = Vec::with_capacity(prepared.len());
    for p in prepared {
        let mut op = p.op;
        if let Some(pw) = p.password {
            let hash = state.auth.hasher.hash(pw).await?;
            if let WriteOp::Insert { record, .. } | WriteOp::Update { record, .. } = &mut op {
                record
                    .data
                    .insert("passwordHash".into(), Value::String(hash));
            }
        }
        ops.push(Ready {
            op,
            written: p.written,
        });
    }
    Ok(ops)
}

/// A new record from client input, checked against the create rule.
pub async fn prepare_create(
    state: &AppState,
    caller: &Caller,
    coll: &Arc<Collection>,
    mut input: Map<String, Value>,
) -> Result<Prepared, ApiError> {
    caller.require_scope(coll.name(), Action::Create)?;
    if rules::is_denied_outright(caller, coll, Action::Create) {
        return Err(denied(state, caller, coll, Action::Create));
    }
    check_protected(caller, coll, &input, None)?;
    let password = if coll.is_auth() {
        if let Some(Value::String(e)) = input.get_mut("email") {
            *e = crate::auth::routes::normalize_email(e);
        }
        take_password(state, caller, coll.name(), &mut input, None).await?
    } else {
        None
    };
    let body = input.clone();
    let data = if coll.is_document() {
        validate_document(coll, &input).map_err(ApiError::validation)?;
        input
    } else {
        validate_table(coll, &input, Mode::Create).map_err(ApiError::validation)?
    };
    let now = state.clock.now();
    let record = Record {
        id: crate::ids::record_id(),
        created: now.clone(),
        updated: now,
        version: 1,
        data,
    };
    let written = permit::write(
        caller,
        coll,
        Action::Create,
        &record,
        Some(&body),
        &state.clock.now(),
    )
    .map_err(|r| refused(state, caller, r))?;
    check_relation_access(state, caller, coll, &record, None).await?;
    Ok(Prepared {
        op: WriteOp::Insert {
            coll: coll.clone(),
            record,
        },
        password,
        written: Some(written),
    })
}

/// Reads a record the caller may view, or 404 (also when the view rule hides it).
pub async fn get_visible(
    state: &AppState,
    caller: &Caller,
    coll: &Arc<Collection>,
    id: &str,
) -> Result<Granted, ApiError> {
    caller.require_scope(coll.name(), Action::View)?;
    let record = get(state, coll, id).await?;
    permit::view_owned(caller, coll, record, &state.clock.now())
        .ok_or_else(|| store_error(StoreError::NotFound))
}

/// Reads a record by id, or 404 (also for ids that cannot exist).
pub async fn get(
    state: &AppState,
    coll: &Arc<Collection>,
    id: &str,
) -> Result<Arc<Record>, ApiError> {
    if !is_record_id(id) {
        return Err(store_error(StoreError::NotFound));
    }
    if let Some(r) = state.cache.record(coll.name(), id) {
        return Ok(r);
    }
    let before = state.cache.stamp(coll.name());
    let sql = crate::store::sql::select_by_id(state.store.dialect(), coll, id);
    let mut rows = state
        .store
        .query_records(coll.clone(), sql)
        .await
        .map_err(store_error)?;
    let record = Arc::new(
        rows.pop()
            .ok_or_else(|| store_error(StoreError::NotFound))?,
    );
    state.cache.put_record(coll.name(), before, record.clone());
    Ok(record)
}

/// An update of a stored record: PUT (`Mode::Replace`) or PATCH (`Mode::Patch`).
/// A record the caller cannot view is 404; one it can view but not update is 403.
pub async fn prepare_update(
    state: &AppState,
    caller: &Caller,
    coll: &Arc<Collection>,
    id: &str,
    mut input: Map<String, Value>,
    mode: Mode,
    if_match: Option<&str>,
) -> Result<Prepared, ApiError> {
    caller.require_scope(coll.name(), Action::Update)?;
    let current = get_visible(state, caller, coll, id).await?.record().clone();
    check_protected(caller, coll, &input, Some(&current))?;
    if coll.is_auth()
        && let Some(Value::String(e)) = input.get_mut("email")
    {
        *e = crate::auth::routes::normalize_email(e);
    }
    // The rule and If-Match come before the current password is checked, so a
    // record the caller may not change cannot be used to test passwords.
    let mut before = input.clone();
    before.remove("password");
    before.remove("oldPassword");
    let now = state.clock.now();
    permit::write(caller, coll, Action::Update, &current, Some(&before), &now)
        .map_err(|r| refused(state, caller, r))?;
    if let Some(h) = if_match
        && !tag_matches(h, &current, false)
    {
        return Err(store_error(StoreError::VersionConflict));
    }
    let password = if coll.is_auth() {
        take_password(state, caller, coll.name(), &mut input, Some(&current)).await?
    } else {
        None
    };
    let body = input.clone();
    let data = if coll.is_document() {
        let doc = match mode {
            Mode::Patch => merge_patch(current.data.clone(), input),
            _ => input,
        };
        validate_document(coll, &doc).map_err(ApiError::validation)?;
        doc
    } else {
        // PUT replaces the client's fields; the protected ones stay as they were
        // unless a superuser sends them.
        let mut values = validate_table(coll, &input, mode).map_err(ApiError::validation)?;
        if mode == Mode::Replace {
            for f in coll.fields() {
                if (f.protected || f.hidden) && !input.contains_key(&f.name) {
                    values.remove(&f.name);
                }
            }
        }
        let mut data = current.data.clone();
        for (k, v) in values {
            data.insert(k, v);
        }
        data
    };
    let record = Record {
        id: current.id.clone(),
        created: current.created.clone(),
        updated: state.clock.now(),
        version: current.version + 1,
        data,
    };
    // The rule holds for the record as it is and as it will be: a caller cannot move
    // a record into a state it could not have created (another owner, say).
    let written = permit::write(
        caller,
        coll,
        Action::Update,
        &record,
        Some(&body),
        &state.clock.now(),
    )
    .map_err(|r| refused(state, caller, r))?;
    check_relation_access(state, caller, coll, &record, Some(&current)).await?;
    Ok(Prepared {
        op: WriteOp::Update {
            coll: coll.clone(),
            expected_version: current.version,
            record,
        },
        password,
        written: Some(written),
    })
}

/// RFC 7396 JSON merge patch of a document: `null` removes a member.
fn merge_patch(mut target: Map<String, Value>, patch: Map<String, Value>) -> Map<String, Value> {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(&k);
            }
            Value::Object(p) => {
                let base = match target.remove(&k) {
                    Some(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                target.insert(k, Value::Object(merge_patch(base, p)));
            }
            other => {
                target.insert(k, other);
            }
        }
    }
    target
}

/// A delete, checked against the rules and `If-Match` when given.
pub async fn prepare_delete(
    state: &AppState,
    caller: &Caller,
    coll: &Arc<Collection>,
    id: &str,
    if_match: Option<&str>,
) -> Result<WriteOp, ApiError> {
    caller.require_scope(coll.name(), Action::Delete)?;
    let ruled = !matches!(coll.rule(Action::Delete), crate::schema::Rule::Anyone)
        || !matches!(coll.rule(Action::View), crate::schema::Rule::Anyone);
    if ruled && !caller.is_superuser() {
        // The rule was checked against this version: delete only that version.
        let current = get_visible(state, caller, coll, id).await?.record().clone();
        if !rules::allows(
            caller,
            coll,
            Action::Delete,
            &current,
            None,
            &state.clock.now(),
        ) {
            return Err(denied(state, caller, coll, Action::Delete));
        }
        if let Some(h) = if_match
            && !tag_matches(h, &current, false)
        {
            return Err(store_error(StoreError::VersionConflict));
        }
        return Ok(WriteOp::Delete {
            coll: coll.clone(),
            id: id.to_owned(),
            expected_version: Some(current.version),
            referrers: state.catalog().relation_graph(),
        });
    }
    let expected_version = match if_match {
        Some(h) => {
            let current = get(state, coll, id).await?;
            if !tag_matches(h, &current, false) {
                return Err(store_error(StoreError::VersionConflict));
            }
            Some(current.version)
        }
        None => {
            if !is_record_id(id) {
                return Err(store_error(StoreError::NotFound));
            }
            None
        }
    };
    Ok(WriteOp::Delete {
        coll: coll.clone(),
        id: id.to_owned(),
        expected_version,
        referrers: state.catalog().relation_graph(),
    })
}

/// Runs writes in one transaction and keeps the read cache in step with them.
pub async fn apply_writes(
    state: &AppState,
    ops: Vec<WriteOp>,
) -> Result<Vec<WriteOutcome>, WriteError> {
    let targets: Vec<Option<(String, String)>> = ops
        .iter()
        .map(|op| op.target().map(|(c, id)| (c.to_owned(), id.to_owned())))
        .collect();
    // A delete that sets references to null or cascades changes records it does not
    // name: the cache forgets everything then (rare, and always correct).
    let reaches_others = ops.iter().any(|op| {
        matches!(op, WriteOp::Delete { coll, referrers, .. }
            if crate::store::write::delete_reaches_others(referrers, coll.name()))
    });
    // The write and the cache update run to completion in their own task: a request
    // dropped mid-way (time limit, client gone) must not leave a committed write
    // that the cache never heard of.
    let state = state.clone();
    let tasks = state.tasks.clone();
    let task = tasks.spawn(async move {
        let result = state.store.write(ops).await;
        match &result {
            Ok(outcomes) => {
                if reaches_others {
                    state.cache.clear();
                }
                for (target, outcome) in targets.iter().zip(outcomes) {
                    let Some((coll, id)) = target else { continue };
                    let record = match outcome {
                        WriteOutcome::Written(r) => Some(r.clone()),
                        _ => None,
                    };
                    state.cache.written(coll, id, record);
                }
            }
            Err(_) => {
                if reaches_others {
                    state.cache.clear();
                }
                // Nothing of a failed batch is kept, but a failed commit leaves doubt:
                // forget what these records had cached.
                for (coll, id) in targets.iter().flatten() {
                    state.cache.written(coll, id, None);
                }
            }
        }
        result
    });
    match task.await {
        Ok(result) => result,
        Err(e) => Err(WriteError::from(StoreError::Internal(format!(
            "write task failed: {e}"
        )))),
    }
}

/// Runs one write and returns its record (None for a delete).
pub async fn write_one(state: &AppState, op: WriteOp) -> Result<Option<Record>, ApiError> {
    match apply_writes(state, vec![op]).await {
        Ok(mut out) => Ok(match out.pop() {
            Some(WriteOutcome::Written(r)) => Some(r),
            _ => None,
        }),
        Err(WriteError { error, .. }) => Err(store_error(error)),
    }
}

/// The body member that keeps an account's API keys through a password change.
pub const KEEP_API_KEYS: &str = "keepApiKeys";

/// An update with compare-and-set; without If-Match, a lost race is retried on the
/// fresh record (a few times) instead of failing.
pub async fn update(
    state: &AppState,
    caller: &Caller,
    coll: &Arc<Collection>,
    id: &str,
    input: Map<String, Value>,
    mode: Mode,
    if_match: Option<&str>,
) -> Result<(Record, Option<Written>), ApiError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut body = input.clone();
        // A new password revokes the account's API keys too, unless the request says
        // to keep them (`"keepApiKeys": true`).
        let keep_keys =
            coll.is_auth() && matches!(body.remove(KEEP_API_KEYS), Some(Value::Bool(true)));
        let prepared = prepare_update(state, caller, coll, id, body, mode, if_match).await?;
        let new_password = prepared.password.is_some();
        let ready = finish(state, caller, vec![prepared]).await?;
        let written = ready.first().and_then(|r| r.written);
        let mut ops: Vec<WriteOp> = ready.into_iter().map(|r| r.op).collect();
        if new_password && !keep_keys {
            ops.push(crate::auth::apikeys::revoke_all_op(
                state.store.dialect(),
                coll.name(),
                id,
                state.clock.now_ms(),
            ));
        }
        match apply_writes(state, ops).await {
            Ok(out) => {
                if let Some(WriteOutcome::Written(r)) = out.into_iter().next() {
                    if new_password {
                        // A new password ends every session of the account.
                        let n = state
                            .auth
                            .sessions
                            .revoke_all(coll.name(), id, state.clock.now_ms())
                            .await
                            .map_err(store_error)?;
                        audit::record(
                            state,
                            audit::Event::new("password_changed", "ok")
                                .actor(caller.actor())
                                .collection(coll.name())
                                .subject(id)
                                .ip(caller.ip.clone())
                                .detail(json!({
                                    "sessionsRevoked": n,
                                    "apiKeysRevoked": !keep_keys,
                                })),
                        );
                    }
                    return Ok((r, written));
                }
                return Err(ApiError::internal("update returned no record"));
            }
            Err(WriteError {
                error: StoreError::VersionConflict,
                ..
            }) if if_match.is_none() && attempts < 5 => continue,
            Err(WriteError {
                error: StoreError::VersionConflict,
                ..
            }) if if_match.is_none() => {
                return Err(ApiError::conflict(
                    "write_contention",
                    "The record is being changed by others too often; retry.",
                ));
            }
            Err(WriteError { error, .. }) => return Err(store_error(error)),
        }
    }
}

/// A page of records with its metadata.
pub struct ListPage {
    pub plan: ListPlan,
    /// The rows read: the page, plus one more when there is a next page.
    rows: Arc<Vec<Record>>,
    pub total: Option<i64>,
    pub has_more: bool,
    /// The list grant the query was built with.
    permit: permit::ListPermit,
}

impl ListPage {
    /// The records of this page, as the caller may see them.
    pub fn records(&self) -> Vec<Visible<'_>> {
        self.permit
            .admit(&self.rows[..self.rows.len().min(self.plan.per_page)])
    }

    /// The last record of the page (for cursors).
    pub fn last(&self) -> Option<&Record> {
        self.rows[..self.rows.len().min(self.plan.per_page)].last()
    }
}

pub async fn list(
    state: &AppState,
    caller: &Caller,
    coll: &Arc<Collection>,
    params: &ListParams,
) -> Result<ListPage, ApiError> {
    let permit = permit::list(caller, coll).map_err(|r| refused(state, caller, r))?;
    let now = state.clock.now();
    let auth = caller.auth_fields();
    let env = crate::store::filter::Env {
        now: &now,
        auth: auth.as_ref(),
        body: None,
    };
    let plan = plan(
        coll,
        params,
        state.store.dialect(),
        &env,
        permit.condition(),
    )?;
    // One stamp, taken before any read, guards both cached parts.
    let before = state.cache.stamp(coll.name());
    let page_key = format!("{}\u{0}{:?}", plan.select.text, plan.select.params);
    let rows = async {
        if let Some(rows) = state.cache.page(coll.name(), &page_key) {
            return Ok(rows);
        }
        let rows = Arc::new(
            state
                .store
                .query_records(coll.clone(), plan.select.clone())
                .await?,
        );
        state
            .cache
            .put_page(coll.name(), before, page_key.clone(), rows.clone());
        Ok(rows)
    };
    let (rows, total) = match &plan.count {
        Some(c) => {
            let key = format!("{}\u{0}{:?}", c.text, c.params);
            match state.cache.count(coll.name(), &key) {
                Some(n) => (rows.await.map_err(store_error)?, Some(n)),
                None => {
                    let (rows, total) = tokio::join!(rows, state.store.query_count(c.clone()));
                    let total = total.map_err(store_error)?;
                    state.cache.put_count(coll.name(), before, key, total);
                    (rows.map_err(store_error)?, Some(total))
                }
            }
        }
        None => (rows.await.map_err(store_error)?, None),
    };
    let has_more = rows.len() > plan.per_page;
    Ok(ListPage {
        plan,
        rows,
        total,
        has_more,
        permit,
    })
}

/// Renders records, with relations expanded when asked.
pub async fn render_many(
    state: &AppState,
    caller: &Caller,
    coll: &Arc<Collection>,
    records: &[Visible<'_>],
    fields: Option<&[String]>,
    expand: &[String],
) -> Result<Vec<Value>, ApiError> {
    let mut expanded: HashMap<String, HashMap<String, Value>> = HashMap::new();
    for name in expand {
        let Some(f) = coll.field(name).filter(|f| !f.hidden) else {
            continue;
        };
        if f.field_type != FieldType::Relation {
            continue;
        }
        let Some(target) = f.collection.as_deref().and_then(|t| state.catalog().get(t)) else {
            continue;
        };
        let mut ids = BTreeSet::new();
        for r in records {
            match r.record().data.get(name) {
                Some(Value::String(s)) => {
                    ids.insert(s.clone());
                }
                Some(Value::Array(a)) => {
                    ids.extend(a.iter().filter_map(|v| v.as_str().map(str::to_owned)))
                }
                _ => {}
            }
        }
        let ids: Vec<String> = ids.into_iter().collect();
        let mut found = HashMap::new();
        for chunk in ids.chunks(500) {
            let sql = select_by_ids(state.store.dialect(), &target, chunk);
            for rec in state
                .store
                .query_records(target.clone(), sql)
                .await
                .map_err(store_error)?
            {
                // An expanded record is shown only to callers who may view it.
                if let Some(v) = permit::view(caller, &target, &rec, &state.clock.now()) {
                    found.insert(rec.id.clone(), Value::Object(render(&target, v, None)));
                }
            }
        }
        expanded.insert(name.clone(), found);
    }
    Ok(records
        .iter()
        .map(|&v| {
            let r = v.record();
            let mut obj = render(coll, v, fields);
            if !expand.is_empty() {
                let mut ex = Map::new();
                for name in expand {
                    let Some(found) = expanded.get(name) else {
                        continue;
                    };
                    let v = match r.data.get(name) {
                        Some(Value::String(s)) => found.get(s).cloned().unwrap_or(Value::Null),
                        Some(Value::Array(a)) => Value::Array(
                            a.iter()
                                .filter_map(|v| v.as_str().and_then(|s| found.get(s).cloned()))
                                .collect(),
                        ),
                        _ => Value::Null,
                    };
                    ex.insert(name.clone(), v);
                }
                obj.insert("expand".into(), Value::Object(ex));
            }
            Value::Object(obj)
        })
        .collect())
}

/// The list response body and its links.
pub fn list_body(
    coll: &str,
    page: &ListPage,
    items: Vec<Value>,
    query: &str,
) -> (Value, Vec<(String, String)>) {
    let base = format!("/v1/collections/{coll}/records");
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "page" && k != "cursor")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let href = |extra: Option<(&str, String)>| {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &kept {
            ser.append_pair(k, v);
        }
        if let Some((k, v)) = extra {
            ser.append_pair(k, &v);
        }
        let q = ser.finish();
        if q.is_empty() {
            base.clone()
        } else {
            format!("{base}?{q}")
        }
    };
    let mut links = Vec::new();
    let mut body = Map::new();
    match &page.plan.mode {
        PageMode::Offset { page: n } => {
            let n = *n;
            links.push(("self".to_owned(), href(Some(("page", n.to_string())))));
            let last_page = page
                .total
                .map(|t| ((t as usize).div_ceil(page.plan.per_page)).max(1));
            if page.has_more {
                links.push(("next".to_owned(), href(Some(("page", (n + 1).to_string())))));
            }
            if n > 1 {
                let prev = last_page.map_or(n - 1, |l| (n - 1).min(l));
                links.push(("prev".to_owned(), href(Some(("page", prev.to_string())))));
            }
            body.insert("page".into(), Value::from(n));
            body.insert("perPage".into(), Value::from(page.plan.per_page));
            body.insert(
                "totalItems".into(),
                page.total.map_or(Value::Null, Value::from),
            );
            body.insert(
                "totalPages".into(),
                last_page.map_or(Value::Null, Value::from),
            );
        }
        PageMode::Cursor { .. } => {
            links.push(("self".to_owned(), href(None)));
            let next = if page.has_more {
                page.last().map(|r| encode_cursor(&page.plan, r))
            } else {
                None
            };
            if let Some(c) = &next {
                links.push(("next".to_owned(), href(Some(("cursor", c.clone())))));
            }
            body.insert("perPage".into(), Value::from(page.plan.per_page));
            body.insert(
                "totalItems".into(),
                page.total.map_or(Value::Null, Value::from),
            );
            body.insert("nextCursor".into(), next.map_or(Value::Null, Value::String));
        }
    }
    let mut link_obj = Map::new();
    for (rel, h) in &links {
        link_obj.insert(rel.clone(), json!({ "href": h }));
    }
    let mut out = Map::new();
    out.insert("items".into(), Value::Array(items));
    out.extend(body);
    out.insert("_links".into(), Value::Object(link_obj));
    (Value::Object(out), links)
}
