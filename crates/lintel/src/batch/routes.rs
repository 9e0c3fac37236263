//! `POST /v1/batch`: parsing the operations, preparing each with the records
//! service, applying them in one transaction, and the per-operation results.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Caller;
use crate::access::render::render;
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::records::service::{self, store_error};
use crate::records::validate::Mode;
use crate::state::AppState;
use crate::store::{StoreError, WriteError, WriteOp, WriteOutcome};

pub const MAX_OPERATIONS: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(batch))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[schema(min_items = 1, max_items = 100)]
    pub operations: Vec<BatchOperation>,
}

/// One operation: `POST .../records`, or `PUT`/`PATCH`/`DELETE .../records/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BatchOperation {
    pub method: String,
    /// `/v1/collections/{collection}/records[/{id}]`, or `/v1/jobs` to enqueue a job
    /// in the same transaction (the `/v1` is optional).
    #[schema(pattern = "^(/v1)?(/collections/[^/]+/records(/[^/]+)?|/jobs)$")]
    pub path: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub body: Option<Value>,
    /// The record's ETag, as the If-Match header of a single request.
    #[serde(default)]
    pub if_match: Option<String>,
}

fn parse_path(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    let rest = rest.strip_prefix("/collections/")?;
    let mut parts = rest.split('/');
    let coll = parts.next().filter(|s| !s.is_empty())?;
    if parts.next()? != "records" {
        return None;
    }
    let id = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    if parts.next().is_some() {
        return None;
    }
    Some((coll.to_owned(), id))
}

fn body_object(op: &BatchOperation) -> Result<Map<String, Value>, ApiError> {
    match &op.body {
        Some(Value::Object(m)) => Ok(m.clone()),
        _ => Err(ApiError::field(
            "body",
            "invalid_body",
            "must be a JSON object",
        )),
    }
}

async fn prepare(
    state: &AppState,
    caller: &Caller,
    op: &BatchOperation,
) -> Result<(service::Prepared, u16), ApiError> {
    let Some((coll, id)) = parse_path(&op.path) else {
        return Err(ApiError::field(
            "path",
            "invalid_path",
            "must be /v1/collections/{collection}/records or .../records/{id}",
        ));
    };
    let coll = service::collection(state, &coll)?;
    let method = op.method.to_ascii_uppercase();
    // A new password ends the account's sessions, which a batch cannot do atomically.
    if coll.is_auth()
        && method != "POST"
        && op
            .body
            .as_ref()
            .is_some_and(|b| b.get("password").is_some())
    {
        return Err(ApiError::field(
            "body.password",
            "not_in_batch",
            "change a password with a single PATCH of the account",
        ));
    }
    match (method.as_str(), id) {
        ("POST", None) => Ok((
            service::prepare_create(
                state,
                caller,
                &coll,
                body_object(op)?,
                &crate::files::Fresh::default(),
            )
            .await?,
            201,
        )),
        ("PUT", Some(id)) | ("PATCH", Some(id)) => {
            let mode = if method == "PUT" {
                Mode::Replace
            } else {
                Mode::Patch
            };
            let op = service::prepare_update(
                state,
                caller,
                &coll,
                &id,
                body_object(op)?,
                service::UpdateHow {
                    mode,
                    if_match: op.if_match.as_deref(),
                    fresh: &crate::files::Fresh::default(),
                },
            )
            .await?;
            Ok((op, 200))
        }
        ("DELETE", Some(id)) => Ok((
            service::prepare_delete(state, caller, &coll, &id, op.if_match.as_deref())
                .await?
                .into(),
            204,
        )),
        _ => Err(ApiError::field(
            "method",
            "invalid_method",
            "POST on .../records, or PUT, PATCH, DELETE on .../records/{id}",
        )),
    }
}

fn failed(index: usize, op: &BatchOperation, err: ApiError) -> ApiError {
    let mut out = ApiError::new(
        err.status,
        err.code,
        format!(
            "Operation {index} ({} {}) failed, so none was applied: {}",
            op.method, op.path, err.detail
        ),
    );
    out.errors = err.errors;
    out.extra = err.extra;
    out.retry_after = err.retry_after;
    out.with_extra("failedOperation", Value::from(index))
}

#[utoipa::path(
    post,
    path = "/v1/batch",
    tag = "batch",
    summary = "Apply up to 100 record operations (and job enqueues) in one transaction",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "All applied: `{results: [{status, body}]}` in order", body = Value),
        (status = 400, description = "An operation is invalid; nothing applied (`failedOperation` names it)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "An operation addresses a missing record or collection; nothing applied", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "An If-Match is stale; nothing applied", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<BatchRequest>,
) -> Result<Response, ApiError> {
    if req.operations.is_empty() || req.operations.len() > MAX_OPERATIONS {
        return Err(ApiError::field(
            "operations",
            "invalid_count",
            format!("must hold 1 to {MAX_OPERATIONS} operations"),
        ));
    }
    // Each update is checked against the record as it was before the batch, so two
    // operations on one record cannot both apply: refuse that up front, clearly.
    let mut targets: Vec<(usize, (String, String))> = Vec::new();
    for (i, op) in req.operations.iter().enumerate() {
        if let Some((coll, Some(id))) = parse_path(&op.path) {
            if let Some((j, _)) = targets.iter().find(|(_, t)| t.0 == coll && t.1 == id) {
                return Err(failed(
                    i,
                    op,
                    ApiError::field(
                        "path",
                        "duplicate_target",
                        format!(
                            "operation {j} already addresses this record; one operation per record"
                        ),
                    ),
                ));
            }
            targets.push((i, (coll, id)));
        }
    }
    // Every operation is checked (input, rules, If-Match) before any password is
    // hashed: a batch that fails costs no hashing.
    let mut prepared = Vec::with_capacity(req.operations.len());
    let mut steps = Vec::with_capacity(req.operations.len());
    for (i, op) in req.operations.iter().enumerate() {
        if is_jobs_path(&op.path) {
            let job = prepare_job(&state, &caller, op).map_err(|e| failed(i, op, e))?;
            steps.push(Step::Job(Box::new(job)));
            continue;
        }
        let (w, status) = prepare(&state, &caller, op)
            .await
            .map_err(|e| failed(i, op, e))?;
        prepared.push(w);
        steps.push(Step::Record(status));
    }
    let ready = service::finish(&state, &caller, prepared).await?;
    let mut ready = ready.into_iter();
    let now = state.clock.now_ms();
    // The flat list of writes, and for each operation the range of it that is its own.
    let mut ops: Vec<WriteOp> = Vec::new();
    let mut spans = Vec::with_capacity(steps.len());
    let mut shown = Vec::with_capacity(steps.len());
    for step in &steps {
        let start = ops.len();
        match step {
            Step::Record(_) => {
                let r = ready
                    .next()
                    .ok_or_else(|| ApiError::internal("a batch operation prepared no write"))?;
                shown.push(match (&r.op, r.written) {
                    (
                        WriteOp::Insert { coll, .. } | WriteOp::Update { coll, .. },
                        Some(written),
                    ) => Some((coll.clone(), written)),
                    _ => None,
                });
                ops.push(r.op);
            }
            Step::Job(job) => {
                shown.push(None);
                ops.extend(crate::jobs::service::enqueue_ops(
                    state.store.dialect(),
                    job,
                    now,
                ));
            }
        }
        spans.push(start..ops.len());
    }
    let outcomes = match service::apply_writes(&state, ops, caller.write_meta(now)).await {
        Ok(o) => o,
        Err(WriteError { index, error }) => {
            let i = spans
                .iter()
                .position(|s| s.contains(&index))
                .unwrap_or(0)
                .min(req.operations.len() - 1);
            let op = &req.operations[i];
            let err = match error {
                // Without If-Match a lost race is a conflict, not a failed precondition.
                StoreError::VersionConflict if op.if_match.is_none() => ApiError::conflict(
                    "conflict",
                    "The record changed while the batch was prepared; retry the batch.",
                ),
                other => ApiError::from(store_error(other)),
            };
            return Err(failed(i, op, err));
        }
    };
    let mut results: Vec<Value> = Vec::with_capacity(steps.len());
    let mut any_job = false;
    for ((step, span), shown) in steps.iter().zip(spans).zip(shown) {
        let out = outcomes.get(span).unwrap_or(&[]);
        results.push(match step {
            Step::Record(status) => match (out.first(), shown) {
                (Some(WriteOutcome::Written(r)), Some((coll, written))) => {
                    json!({ "status": status, "body": Value::Object(render(&coll, written.show(r), None)) })
                }
                _ => json!({ "status": status, "body": Value::Null }),
            },
            Step::Job(_) => {
                let (job, created) = crate::jobs::service::enqueued(out)?;
                any_job |= created;
                json!({ "status": if created { 201 } else { 200 }, "body": job.to_json(false) })
            }
        });
    }
    if any_job {
        state.jobs.wake.notify_one();
    }
    Ok(axum::Json(json!({ "results": results })).into_response())
}

/// What one operation of a batch does.
enum Step {
    /// A record write answering this status.
    Record(u16),
    /// A job to enqueue.
    Job(Box<crate::jobs::NewJob>),
}

fn is_jobs_path(path: &str) -> bool {
    matches!(path, "/v1/jobs" | "/jobs")
}

/// A job enqueued in a batch: superusers only (an API key needs `jobs:write`).
fn prepare_job(
    state: &AppState,
    caller: &Caller,
    op: &BatchOperation,
) -> Result<crate::jobs::NewJob, ApiError> {
    if !op.method.eq_ignore_ascii_case("POST") {
        return Err(ApiError::field(
            "method",
            "invalid_method",
            "jobs are enqueued with POST /v1/jobs",
        ));
    }
    if !caller.is_superuser() {
        return Err(if caller.is_anonymous() {
            ApiError::unauthorized("Enqueuing a job needs a superuser.")
        } else {
            ApiError::forbidden("forbidden", "Enqueuing a job needs a superuser.")
        });
    }
    if !caller.area_allows("jobs", "write") {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "insufficient_scope",
            "The API key's scopes do not include jobs:write.",
        ));
    }
    let input: crate::jobs::model::NewJobInput =
        serde_json::from_value(op.body.clone().unwrap_or(Value::Null))
            .map_err(|e| ApiError::field("body", "invalid_body", format!("a job: {e}")))?;
    let job = crate::jobs::model::check(&input, "body.", false).map_err(ApiError::validation)?;
    crate::jobs::service::check_destination(state, &job, "body.")?;
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::parse_path;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("/v1/collections/posts/records"),
            Some(("posts".into(), None))
        );
        assert_eq!(
            parse_path("/collections/posts/records/abc"),
            Some(("posts".into(), Some("abc".into())))
        );
        assert_eq!(parse_path("/v1/collections/posts"), None);
        assert_eq!(parse_path("/v1/collections/posts/records/a/b"), None);
    }
}
