//! Updating a record (PUT and PATCH): the update rule before and after, If-Match,
//! document merge patches, password changes, and retries of lost races.

use super::*;

/// How an update is made: PUT or PATCH, the `If-Match` it carries, and the files the
/// request just uploaded.
#[derive(Clone, Copy)]
pub struct UpdateHow<'a> {
    pub mode: Mode,
    pub if_match: Option<&'a str>,
    pub fresh: &'a crate::files::Fresh,
}

/// The refusals of an update that need no body (the key's scope, an update rule this
/// caller can never pass, a record it cannot see): checked before an upload is read.
pub async fn may_update(
    state: &Runtime,
    caller: &Caller,
    coll: &Arc<Collection>,
    id: &str,
) -> Result<(), RecordError> {
    caller.require_scope(coll.name(), Action::Update)?;
    get_visible(state, caller, coll, id).await?;
    if rules::is_denied_outright(caller, coll, Action::Update) {
        return Err(denied(state, caller, coll, Action::Update));
    }
    Ok(())
}

/// An update of a stored record: PUT (`Mode::Replace`) or PATCH (`Mode::Patch`).
/// A record the caller cannot view is 404; one it can view but not update is 403.
pub async fn prepare_update(
    state: &Runtime,
    caller: &Caller,
    coll: &Arc<Collection>,
    id: &str,
    mut input: Map<String, Value>,
    how: UpdateHow<'_>,
) -> Result<Prepared, RecordError> {
    let UpdateHow {
        mode,
        if_match,
        fresh,
    } = how;
    caller.require_scope(coll.name(), Action::Update)?;
    let current = get_visible(state, caller, coll, id).await?.record().clone();
    if !coll.is_document() {
        crate::files::resolve_input(coll, Some(&current), &mut input, &fresh.names)
            .map_err(RecordError::Invalid)?;
    }
    check_protected(caller, coll, &input, Some(&current))?;
    if coll.is_auth()
        && let Some(Value::String(e)) = input.get_mut("email")
    {
        *e = crate::auth::accounts::normalize_email(e);
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
        validate_document(coll, &doc).map_err(RecordError::Invalid)?;
        doc
    } else {
        // PUT replaces the client's fields; the protected ones stay as they were
        // unless a superuser sends them.
        let mut values = validate_table(coll, &input, mode).map_err(RecordError::Invalid)?;
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

/// Tries of an update without If-Match that keeps losing the race to other writers.
const MAX_ATTEMPTS: u32 = 12;

/// The body member that keeps an account's API keys through a password change.
pub const KEEP_API_KEYS: &str = "keepApiKeys";

/// An update with compare-and-set; without If-Match, a lost race is retried on the
/// fresh record (a few times) instead of failing.
pub async fn update(
    state: &Runtime,
    caller: &Caller,
    coll: &Arc<Collection>,
    id: &str,
    input: Map<String, Value>,
    how: UpdateHow<'_>,
) -> Result<(Record, Option<Written>), RecordError> {
    let if_match = how.if_match;
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let mut body = input.clone();
        // A new password revokes the account's API keys too, unless the request says
        // to keep them (`"keepApiKeys": true`).
        let keep_keys =
            coll.is_auth() && matches!(body.remove(KEEP_API_KEYS), Some(Value::Bool(true)));
        let prepared = prepare_update(state, caller, coll, id, body, how).await?;
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
        match apply_writes(state, ops, caller.write_meta(state.clock.now_ms())).await {
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
                return Err(RecordError::Internal("update returned no record".into()));
            }
            Err(WriteError {
                error: StoreError::VersionConflict,
                ..
            }) if if_match.is_none() && attempts < MAX_ATTEMPTS => {
                // Racers that lost together back off apart, or they lose together again.
                let spread = 2.0 * f64::from(attempts) * crate::ids::unit_random();
                tokio::time::sleep(std::time::Duration::from_micros((spread * 1000.0) as u64))
                    .await;
                continue;
            }
            Err(WriteError {
                error: StoreError::VersionConflict,
                ..
            }) if if_match.is_none() => {
                return Err(RecordError::Contention);
            }
            Err(WriteError { error, .. }) => return Err(store_error(error)),
        }
    }
}
