//! Deleting a record: the delete rule against the version read, If-Match.

use super::*;

/// A delete, checked against the rules and `If-Match` when given.
pub async fn prepare_delete(
    state: &Runtime,
    caller: &Caller,
    coll: &Arc<Collection>,
    id: &str,
    if_match: Option<&str>,
) -> Result<WriteOp, RecordError> {
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
            now: state.clock.now(),
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
        now: state.clock.now(),
    })
}
