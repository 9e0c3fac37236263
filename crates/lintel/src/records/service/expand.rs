//! Rendering records for a response, with relations expanded where the caller may
//! view the related records.

use super::*;

/// Renders records, with relations expanded when asked.
pub async fn render_many(
    state: &Runtime,
    caller: &Caller,
    coll: &Arc<Collection>,
    records: &[Visible<'_>],
    fields: Option<&[String]>,
    expand: &[String],
) -> Result<Vec<Value>, RecordError> {
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
