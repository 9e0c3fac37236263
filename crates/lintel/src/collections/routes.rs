//! The collection admin routes: create, list, read, alter and drop, each change
//! written as a migration file and applied in one transaction; and the default
//! `users` collection made at first start.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, FieldErrors, push_field_error};
use crate::http::extract::{Admin, JsonBody};
use crate::http::openapi::ProblemDoc;
use crate::migrations::{
    AlterCollection, FieldUpdate, Migration, PendingFile, RenameField, SchemaOp,
};
use crate::schema::{
    Collection, CollectionSpec, FieldSpec, IndexSpec, Rules, index_name, normalize_spec,
};
use crate::state::AppState;
use crate::store::WriteMeta;
use crate::store::filter::validate_spec;
use crate::store::{StoreError, ddl};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_collections, create_collection))
        .routes(routes!(get_collection, patch_collection, delete_collection))
}

/// Changes to a collection. Applied in this order: drop indexes, drop fields, rename
/// fields, add fields, add indexes, set the schema.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CollectionPatch {
    #[serde(default)]
    pub add_fields: Vec<FieldSpec>,
    #[serde(default)]
    pub rename_fields: Vec<RenameField>,
    #[serde(default)]
    pub drop_fields: Vec<String>,
    #[serde(default)]
    pub add_indexes: Vec<IndexSpec>,
    #[serde(default)]
    pub drop_indexes: Vec<String>,
    /// A new JSON Schema for a document collection; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object)]
    pub schema: Option<Value>,
    /// New access rules (all five at once; a missing one means superusers only).
    #[serde(default)]
    pub rules: Option<Rules>,
    /// New search options of existing fields (`searchable`, `weight`, `language`).
    #[serde(default)]
    pub update_fields: Vec<FieldUpdate>,
    /// The collection's search language (`null`: back to `english`).
    #[serde(default, deserialize_with = "crate::migrations::present_or_null")]
    #[schema(value_type = Option<String>)]
    pub search_language: Option<Option<String>>,
}

/// `Some(value)` whenever the member is present, even when it is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn collection_json(coll: &Collection) -> Value {
    let mut v = serde_json::to_value(&coll.spec).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("created".into(), coll.created.clone().into());
        map.insert("updated".into(), coll.updated.clone().into());
        map.insert(
            "_links".into(),
            json!({
                "self": { "href": format!("/v1/collections/{}", coll.name()) },
                "records": { "href": format!("/v1/collections/{}/records", coll.name()) },
            }),
        );
    }
    v
}

fn admin_audit(state: &AppState, caller: &crate::access::Caller, event: &'static str, name: &str) {
    crate::auth::audit::record(
        state,
        crate::auth::audit::Event::new(event, "ok")
            .actor(caller.actor())
            .collection(name)
            .ip(caller.ip.clone()),
    );
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Checks defaults against their own field rules (needs the compiled patterns).
fn check_defaults(spec: &CollectionSpec) -> FieldErrors {
    let mut errors = FieldErrors::new();
    if spec.fields.iter().all(|f| f.default.is_none()) {
        return errors;
    }
    let Ok(coll) = Collection::compile(spec.clone(), String::new(), String::new()) else {
        return errors;
    };
    for (i, f) in spec.fields.iter().enumerate() {
        if let Some(d) = &f.default
            && !d.is_null()
            && let Err((code, msg)) = crate::schema::kinds::check_value(f, coll.pattern(&f.name), d)
        {
            push_field_error(
                &mut errors,
                format!("fields[{i}].default"),
                code,
                format!("the default {msg}"),
            );
        }
    }
    errors
}

/// Writes the migration file, applies it, then refreshes the catalog. Runs in its own
/// task so a request that times out or is dropped never leaves the schema applied but
/// the file unwritten or the catalog stale.
async fn apply_change(
    state: &AppState,
    meta: WriteMeta,
    name: String,
    up: Vec<SchemaOp>,
    down: Vec<SchemaOp>,
) -> Result<(), ApiError> {
    let state = state.clone();
    let tasks = state.tasks.clone();
    tasks
        .spawn(async move { apply_change_now(&state, meta, name, up, down).await })
        .await
        .map_err(ApiError::internal)?
}

async fn apply_change_now(
    state: &AppState,
    meta: WriteMeta,
    name: String,
    up: Vec<SchemaOp>,
    down: Vec<SchemaOp>,
) -> Result<(), ApiError> {
    let migration = Migration {
        version: state.versions.next(),
        name,
        up,
        down,
    };
    let dir = state.config.migrations_path();
    let staged = {
        let m = migration.clone();
        tokio::task::spawn_blocking(move || PendingFile::stage(&dir, &m))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::internal(format!("writing the migration file: {e}")))?
    };
    let result = state
        .store
        .apply_migration(migration, staged.checksum.clone(), meta)
        .await;
    let file = match result {
        Ok(_) => tokio::task::spawn_blocking(move || staged.commit()).await,
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || staged.discard()).await;
            return Err(match e {
                StoreError::Schema(msg) => ApiError::conflict("schema_conflict", msg),
                StoreError::Unavailable(_) => ApiError::unavailable(
                    "store_unavailable",
                    "The store is busy; retry shortly.",
                    1,
                ),
                other => ApiError::internal(other),
            });
        }
    };
    // The change is committed: the catalog follows it whatever happens to the file.
    state.reload_catalog().await.map_err(ApiError::internal)?;
    file.map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("renaming the migration file: {e}")))
}

#[utoipa::path(
    get,
    path = "/v1/collections",
    tag = "collections",
    summary = "List collections (admin)",
    security(("admin" = [])),
    responses(
        (status = 200, description = "All collections", body = Value),
        (status = 401, description = "Missing or wrong admin token", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn list_collections(_: Admin, State(state): State<AppState>) -> Response {
    let catalog = state.catalog();
    let mut items: Vec<_> = catalog.collections.values().collect();
    items.sort_by(|a, b| a.name().cmp(b.name()));
    let items: Vec<Value> = items.into_iter().map(|c| collection_json(c)).collect();
    no_store(
        axum::Json(json!({ "items": items, "_links": { "self": { "href": "/v1/collections" } } }))
            .into_response(),
    )
}

#[utoipa::path(
    post,
    path = "/v1/collections",
    tag = "collections",
    summary = "Create a collection (admin)",
    security(("admin" = [])),
    request_body = CollectionSpec,
    responses(
        (status = 201, description = "Created", body = Value),
        (status = 400, description = "Invalid definition", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Conflicts with the current schema", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn create_collection(
    Admin(caller): Admin,
    State(state): State<AppState>,
    JsonBody(mut spec): JsonBody<CollectionSpec>,
) -> Result<Response, ApiError> {
    normalize_spec(&mut spec);
    let mut errors = validate_spec(&spec, &state.catalog().names(), false);
    if errors.is_empty() {
        errors = check_defaults(&spec);
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let name = spec.name.clone();
    apply_change(
        &state,
        caller.write_meta(state.clock.now_ms()),
        format!("create_{name}"),
        vec![SchemaOp::CreateCollection { collection: spec }],
        vec![SchemaOp::DropCollection { name: name.clone() }],
    )
    .await?;
    admin_audit(&state, &caller, "collection_created", &name);
    let coll = crate::records::service::collection(&state, &name)?;
    let mut res = (StatusCode::CREATED, axum::Json(collection_json(&coll))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/collections/{name}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(no_store(res))
}

#[utoipa::path(
    get,
    path = "/v1/collections/{name}",
    tag = "collections",
    summary = "Get a collection (admin)",
    security(("admin" = [])),
    params(("name" = String, Path, description = "Collection name")),
    responses(
        (status = 200, description = "The collection", body = Value),
        (status = 401, description = "Missing or wrong admin token", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such collection", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn get_collection(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let coll = crate::records::service::collection(&state, &name)?;
    Ok(no_store(axum::Json(collection_json(&coll)).into_response()))
}

#[utoipa::path(
    patch,
    path = "/v1/collections/{name}",
    tag = "collections",
    summary = "Alter a collection (admin)",
    description = "Add, rename or drop fields; add or drop indexes; replace a document collection's JSON Schema; change fields' search options (`updateFields`) or the `searchLanguage`. When the records already there must be indexed again, the answer is 202 with `Location: /v1/jobs/{id}` (the rebuild job, also under `job`); reads and writes go on meanwhile.",
    security(("admin" = [])),
    params(("name" = String, Path, description = "Collection name")),
    request_body = CollectionPatch,
    responses(
        (status = 200, description = "The altered collection", body = Value),
        (status = 202, description = "Altered; the search index of its records is being rebuilt by the job in `Location`", body = Value),
        (status = 400, description = "Invalid change", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such collection", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn patch_collection(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(patch): JsonBody<CollectionPatch>,
) -> Result<Response, ApiError> {
    let coll = crate::records::service::collection(&state, &name)?;
    let old = coll.spec.clone();
    let mut add_indexes = patch.add_indexes.clone();
    for idx in &mut add_indexes {
        if idx.name.is_none() {
            idx.name = Some(index_name(&old.name, &idx.fields, idx.unique));
        }
    }
    let up = AlterCollection {
        name: old.name.clone(),
        drop_indexes: patch.drop_indexes.clone(),
        drop_fields: patch.drop_fields.clone(),
        rename_fields: patch.rename_fields.clone(),
        add_fields: patch.add_fields.clone(),
        add_indexes: add_indexes.clone(),
        schema: patch.schema.clone(),
        rules: patch.rules.clone(),
        update_fields: patch.update_fields.clone(),
        search_language: patch.search_language.clone(),
    };

    // Check the change against the live schema first, so a bad change gets a 400 and
    // leaves no file behind.
    let mut specs: BTreeMap<String, CollectionSpec> = state
        .catalog()
        .collections
        .values()
        .map(|c| (c.name().to_owned(), c.spec.clone()))
        .collect();
    let planned = ddl::plan(
        state.store.dialect(),
        &[SchemaOp::AlterCollection(up.clone())],
        &mut specs,
    );
    if let Err(msg) = planned {
        let mut errors = FieldErrors::new();
        push_field_error(&mut errors, "changes", "invalid_change", msg.clone());
        let mut err = ApiError::validation(errors);
        err.detail = msg;
        return Err(err);
    }
    if let Some(new_spec) = specs.get(&old.name) {
        let errors = check_defaults(new_spec);
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
    }

    // The inverse, for `lintel migrate down`.
    let dropped_fields: Vec<FieldSpec> = old
        .fields
        .iter()
        .filter(|f| patch.drop_fields.contains(&f.name))
        .cloned()
        .collect();
    let dropped_indexes: Vec<IndexSpec> = old
        .indexes
        .iter()
        .filter(|i| {
            i.name
                .as_ref()
                .is_some_and(|n| patch.drop_indexes.contains(n))
                || i.fields.iter().any(|f| patch.drop_fields.contains(f))
        })
        .cloned()
        .collect();
    let down = AlterCollection {
        name: old.name.clone(),
        drop_indexes: add_indexes.iter().filter_map(|i| i.name.clone()).collect(),
        drop_fields: patch.add_fields.iter().map(|f| f.name.clone()).collect(),
        rename_fields: patch
            .rename_fields
            .iter()
            .rev()
            .map(|r| RenameField {
                from: r.to.clone(),
                to: r.from.clone(),
            })
            .collect(),
        add_fields: dropped_fields,
        add_indexes: dropped_indexes,
        schema: patch
            .schema
            .as_ref()
            .map(|_| old.schema.clone().unwrap_or(Value::Null)),
        rules: patch.rules.as_ref().map(|_| old.rules.clone()),
        update_fields: undo_updates(&old, &patch),
        search_language: patch
            .search_language
            .as_ref()
            .map(|_| old.search_language.clone()),
    };
    apply_change(
        &state,
        caller.write_meta(state.clock.now_ms()),
        format!("alter_{}", old.name),
        vec![SchemaOp::AlterCollection(up)],
        vec![SchemaOp::AlterCollection(down)],
    )
    .await?;
    admin_audit(&state, &caller, "collection_altered", &name);
    let coll = crate::records::service::collection(&state, &name)?;
    // Records already there are indexed again by a job when the change touched what
    // they hold in the index.
    let rebuild = crate::search::ensure(&state, &coll, caller.write_meta(state.clock.now_ms()))
        .await
        .map_err(ApiError::from)?;
    if let Some(job) = rebuild {
        let mut body = collection_json(&coll);
        body["job"] = job.to_json(false);
        let mut res = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&crate::jobs::model::job_href(&job.id)) {
            res.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(no_store(res));
    }
    Ok(no_store(axum::Json(collection_json(&coll)).into_response()))
}

/// The updates that put back the search options a patch changes (fields added by the
/// same patch are dropped by the inverse and need none).
fn undo_updates(old: &CollectionSpec, patch: &CollectionPatch) -> Vec<FieldUpdate> {
    patch
        .update_fields
        .iter()
        .filter(|u| !patch.add_fields.iter().any(|f| f.name == u.name))
        .filter_map(|u| {
            // The inverse renames back first, so it names the field as it was.
            let mut name = u.name.clone();
            for r in patch.rename_fields.iter().rev() {
                if r.to == name {
                    name = r.from.clone();
                }
            }
            let f = old.fields.iter().find(|f| f.name == name)?;
            Some(FieldUpdate {
                name,
                searchable: Some(f.searchable),
                weight: Some(f.weight.clone()),
                language: Some(f.language.clone()),
            })
        })
        .collect()
}

#[utoipa::path(
    delete,
    path = "/v1/collections/{name}",
    tag = "collections",
    summary = "Drop a collection and its records (admin)",
    security(("admin" = [])),
    params(("name" = String, Path, description = "Collection name")),
    responses(
        (status = 204, description = "Dropped"),
        (status = 401, description = "Missing or wrong admin token", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such collection", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Other collections relate to it", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn delete_collection(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let coll = crate::records::service::collection(&state, &name)?;
    let referrers: Vec<String> = state
        .catalog()
        .referrers(coll.name())
        .into_iter()
        .filter(|(c, _)| c.name() != coll.name())
        .map(|(c, f)| format!("{}.{}", c.name(), f.name))
        .collect();
    if !referrers.is_empty() {
        return Err(ApiError::conflict(
            "collection_referenced",
            format!(
                "Relations point at this collection from {}; drop those fields first.",
                referrers.join(", ")
            ),
        ));
    }
    apply_change(
        &state,
        caller.write_meta(state.clock.now_ms()),
        format!("drop_{}", coll.name()),
        vec![SchemaOp::DropCollection {
            name: coll.name().to_owned(),
        }],
        vec![SchemaOp::CreateCollection {
            collection: coll.spec.clone(),
        }],
    )
    .await?;
    admin_audit(&state, &caller, "collection_dropped", &name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// On a fresh project (no collection migration ever applied), creates the built-in
/// `users` auth collection, through a migration file like any other change. Owners
/// see and change their own account; anyone may sign up.
pub async fn ensure_users(state: &AppState) -> anyhow::Result<()> {
    if state.catalog().get("users").is_some() {
        return Ok(());
    }
    let applied = state
        .store
        .applied_migrations()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !applied.is_empty() {
        return Ok(());
    }
    let own = Some("id = @request.auth.id".to_owned());
    let mut spec = CollectionSpec {
        name: "users".into(),
        kind: crate::schema::CollectionKind::Auth,
        fields: vec![FieldSpec {
            max: Some(200.0),
            ..FieldSpec::new("name", crate::schema::FieldType::Text)
        }],
        indexes: Vec::new(),
        schema: None,
        rules: Rules {
            list: own.clone(),
            view: own.clone(),
            create: Some(String::new()),
            update: own.clone(),
            delete: own,
        },
        search_language: None,
    };
    normalize_spec(&mut spec);
    let result = apply_change(
        state,
        WriteMeta::default().at(state.clock.now_ms()),
        "create_users".into(),
        vec![SchemaOp::CreateCollection { collection: spec }],
        vec![SchemaOp::DropCollection {
            name: "users".into(),
        }],
    )
    .await;
    match result {
        Ok(()) => {
            tracing::info!("created the built-in 'users' collection");
            Ok(())
        }
        // Another instance sharing the store created it first.
        Err(_)
            if {
                let _ = state.reload_catalog().await;
                state.catalog().get("users").is_some()
            } =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "creating the users collection: {}",
            e.detail
        )),
    }
}
