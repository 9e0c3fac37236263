//! Reading one record: from the read cache or the store, granted by the view rule.

use super::*;

/// Reads a record the caller may view, or 404 (also when the view rule hides it).
pub async fn get_visible(
    state: &Runtime,
    caller: &Caller,
    coll: &Arc<Collection>,
    id: &str,
) -> Result<Granted, RecordError> {
    caller.require_scope(coll.name(), Action::View)?;
    let record = get(state, coll, id).await?;
    permit::view_owned(caller, coll, record, &state.clock.now())
        .ok_or_else(|| store_error(StoreError::NotFound))
}

/// Reads a record by id, or 404 (also for ids that cannot exist).
pub async fn get(
    state: &Runtime,
    coll: &Arc<Collection>,
    id: &str,
) -> Result<Arc<Record>, RecordError> {
    if !is_record_id(id) {
        return Err(store_error(StoreError::NotFound));
    }
    state
        .cache
        .record(coll.name(), id, || async {
            let sql = crate::store::sql::select_by_id(state.store.dialect(), coll, id);
            let mut rows = state.store.query_records(coll.clone(), sql).await?;
            Ok(rows.pop().map(Arc::new))
        })
        .await
        .map_err(store_error)?
        .ok_or_else(|| store_error(StoreError::NotFound))
}
