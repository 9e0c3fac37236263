//! Writes shared by create, update and batch: protected fields, passwords (checked
//! now, hashed once the whole request is valid), relation access, and applying
//! prepared writes in one transaction with the read cache kept in step.

use super::*;

/// Refuses fields only superusers may set (and the password hash, which nobody sets).
/// On update, a protected field sent back unchanged (a PUT of the whole record) passes.
pub(super) fn check_protected(
    caller: &Caller,
    coll: &Collection,
    input: &Map<String, Value>,
    current: Option<&Record>,
) -> Result<(), RecordError> {
    let updating = current.is_some();
    let mut errors = crate::validation::FieldErrors::new();
    for (k, v) in input {
        let Some(f) = coll.field(k) else { continue };
        if current.is_some_and(|r| r.data.get(k) == Some(v)) && k != "passwordHash" {
            continue;
        }
        if coll.is_auth() && k == "passwordHash" {
            crate::validation::push_field_error(
                &mut errors,
                k,
                "protected",
                "set the password with 'password'",
            );
        } else if coll.is_auth() && k == "email" && updating && !caller.is_superuser() {
            crate::validation::push_field_error(
                &mut errors,
                k,
                "protected",
                "change the email with POST /v1/auth/request-email-change",
            );
        } else if f.protected && !caller.is_superuser() {
            crate::validation::push_field_error(
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
        Err(RecordError::Invalid(errors))
    }
}

/// Takes `password` (and `oldPassword`) out of an auth record's input and returns the
/// new hash; checks the old password for callers other than superusers.
/// Takes `password` (and `oldPassword`) out of the input and checks the new password
/// against the rules; the plain text is hashed later, in [`finish`], once every check
/// of the request has passed.
pub(super) async fn take_password(
    state: &Runtime,
    caller: &Caller,
    coll_name: &str,
    input: &mut Map<String, Value>,
    current: Option<&Record>,
) -> Result<Option<String>, RecordError> {
    let old = input.remove("oldPassword");
    let Some(pw) = input.remove("password") else {
        return if current.is_none() {
            Err(RecordError::field("password", "required", "is required"))
        } else {
            Ok(None)
        };
    };
    let Value::String(pw) = pw else {
        return Err(RecordError::field(
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
            return Err(RecordError::field(
                "oldPassword",
                "invalid",
                "the current password is needed to set a new one",
            ));
        }
    }
    password::check(&state.config.auth, &pw, &email)
        .map_err(|(code, msg)| RecordError::field("password", code, msg))?;
    Ok(Some(pw))
}

/// Spends the caller's address's budget for password hashing (the `auth` rate-limit
/// rule): 429 once it is used up.
fn charge_hashes(state: &Runtime, caller: &Caller, units: u32) -> Result<(), RecordError> {
    let Some(limiter) = state.limiter.as_ref() else {
        return Ok(());
    };
    if caller.is_superuser() {
        return Ok(());
    }
    let ip = caller.ip.as_deref().and_then(|s| s.parse().ok());
    limiter
        .charge("auth", ip, units)
        .map_err(|retry_after| RecordError::HashBudget { retry_after })
}

/// A relation may name only records the writer may view: an id it cannot see is
/// refused exactly like one that does not exist (so ids cannot be probed either).
/// References the record already held are kept without a check.
pub(super) async fn check_relation_access(
    state: &Runtime,
    caller: &Caller,
    coll: &Collection,
    record: &Record,
    previous: Option<&Record>,
) -> Result<(), RecordError> {
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
        let refused = || RecordError::Invalid(crate::store::write::missing_target(&field, &target));
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
    pub(super) password: Option<String>,
    /// For creates and updates: the rule passed, so the writer may see the result.
    pub(super) written: Option<Written>,
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
    state: &Runtime,
    caller: &Caller,
    prepared: Vec<Prepared>,
) -> Result<Vec<Ready>, RecordError> {
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

/// Runs writes in one transaction and keeps the read cache in step with them.
pub async fn apply_writes(
    state: &Runtime,
    ops: Vec<WriteOp>,
    mut meta: WriteMeta,
) -> Result<Vec<WriteOutcome>, WriteError> {
    meta.time_ms.get_or_insert_with(|| state.clock.now_ms());
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
        let result = state.store.write_as(ops, meta).await;
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
                    state.cache.written(coll, id, record).await;
                }
            }
            Err(_) => {
                if reaches_others {
                    state.cache.clear();
                }
                // Nothing of a failed batch is kept, but a failed commit leaves doubt:
                // forget what these records had cached.
                for (coll, id) in targets.iter().flatten() {
                    state.cache.written(coll, id, None).await;
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
pub async fn write_one(
    state: &Runtime,
    op: WriteOp,
    meta: WriteMeta,
) -> Result<Option<Record>, RecordError> {
    match apply_writes(state, vec![op], meta).await {
        Ok(mut out) => Ok(match out.pop() {
            Some(WriteOutcome::Written(r)) => Some(r),
            _ => None,
        }),
        Err(WriteError { error, .. }) => Err(store_error(error)),
    }
}
