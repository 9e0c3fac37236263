//! Creating a record: validation, the create rule (a [`Written`] grant) and relation
//! access.

use super::*;

/// The refusals of a create that need no body (the key's scope, a create rule this
/// caller can never pass): checked before an upload is read.
pub fn may_create(
    state: &Runtime,
    caller: &Caller,
    coll: &Arc<Collection>,
) -> Result<(), RecordError> {
    caller.require_scope(coll.name(), Action::Create)?;
    if rules::is_denied_outright(caller, coll, Action::Create) {
        return Err(denied(state, caller, coll, Action::Create));
    }
    Ok(())
}

/// A new record from client input, checked against the create rule.
pub async fn prepare_create(
    state: &Runtime,
    caller: &Caller,
    coll: &Arc<Collection>,
    mut input: Map<String, Value>,
    fresh: &crate::files::Fresh,
) -> Result<Prepared, RecordError> {
    may_create(state, caller, coll)?;
    if !coll.is_document() {
        crate::files::resolve_input(coll, None, &mut input, &fresh.names)
            .map_err(RecordError::Invalid)?;
    }
    check_protected(caller, coll, &input, None)?;
    let password = if coll.is_auth() {
        if let Some(Value::String(e)) = input.get_mut("email") {
            *e = crate::auth::accounts::normalize_email(e);
        }
        take_password(state, caller, coll.name(), &mut input, None).await?
    } else {
        None
    };
    let body = input.clone();
    let data = if coll.is_document() {
        validate_document(coll, &input).map_err(RecordError::Invalid)?;
        input
    } else {
        validate_table(coll, &input, Mode::Create).map_err(RecordError::Invalid)?
    };
    let now = state.clock.now();
    let record = Record {
        id: fresh.id.clone().unwrap_or_else(crate::ids::record_id),
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
