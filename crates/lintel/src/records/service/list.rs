//! Listing records: the list grant compiled into the query, cached pages and counts,
//! and the response body with its links.

use super::*;

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
    state: &Runtime,
    caller: &Caller,
    coll: &Arc<Collection>,
    params: &ListParams,
) -> Result<ListPage, RecordError> {
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
    use crate::cache::{Kind, Value as Cached};
    // A shared store's search index is rebuilt by jobs that no change feed reports:
    // its search pages are not kept.
    let cacheable = plan.search.is_none() || state.store.dialect() == crate::store::Dialect::Sqlite;
    let select = &plan.select;
    let read_rows = || async {
        let rows = state
            .store
            .query_records(coll.clone(), select.clone())
            .await?;
        Ok(Some(Cached::Page(Arc::new(rows))))
    };
    let rows = async {
        let page = if cacheable {
            let key = format!("{}\u{0}{:?}", select.text, select.params);
            state
                .cache
                .get_or_load(Kind::Page, coll.name(), &key, read_rows)
                .await?
        } else {
            read_rows().await?
        };
        match page {
            Some(Cached::Page(rows)) => Ok(rows),
            _ => Err(StoreError::Internal("a cached page of another kind".into())),
        }
    };
    let count = async {
        let Some(c) = &plan.count else {
            return Ok(None);
        };
        let read_count = || async {
            let n = state.store.query_count(c.clone()).await?;
            Ok(Some(Cached::Count(n)))
        };
        let n = if cacheable {
            let key = format!("{}\u{0}{:?}", c.text, c.params);
            state
                .cache
                .get_or_load(Kind::Count, coll.name(), &key, read_count)
                .await?
        } else {
            read_count().await?
        };
        match n {
            Some(Cached::Count(n)) => Ok(Some(n)),
            _ => Err(StoreError::Internal(
                "a cached count of another kind".into(),
            )),
        }
    };
    let (rows, total) = tokio::join!(rows, count);
    let (rows, total) = (rows.map_err(store_error)?, total.map_err(store_error)?);
    let has_more = rows.len() > plan.per_page;
    Ok(ListPage {
        plan,
        rows,
        total,
        has_more,
        permit,
    })
}

/// A search's additions to each item: `_score`, and with `highlight=1` the
/// `_highlight` snippets of the searchable fields that matched.
pub fn add_search_members(
    coll: &Collection,
    search: &crate::records::query::SearchPlan,
    records: &[Visible<'_>],
    items: &mut [Value],
) {
    use crate::schema::search::{SCORE, highlight};
    for (item, visible) in items.iter_mut().zip(records.iter()) {
        let record = visible.record();
        let Value::Object(map) = item else { continue };
        map.insert(
            SCORE.into(),
            record.data.get(SCORE).cloned().unwrap_or(Value::from(0.0)),
        );
        if search.highlight {
            let mut marks = Map::new();
            for f in coll
                .search()
                .map(|c| c.fields.as_slice())
                .unwrap_or_default()
            {
                if let Some(text) = record.data.get(&f.name).and_then(Value::as_str)
                    && let Some(h) = highlight(text, f.language, &search.query)
                {
                    marks.insert(f.name.clone(), Value::String(h));
                }
            }
            map.insert("_highlight".into(), Value::Object(marks));
        }
    }
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
