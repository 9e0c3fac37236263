//! `/v1/jobs` and `/v1/schedules`: enqueue and manage jobs (superusers; API keys scoped
//! `jobs:read`/`jobs:write`), the worker protocol (superusers' keys scoped `jobs:work`),
//! and schedules (`schedules:read`/`schedules:write`). A caller other than a superuser
//! sees only the jobs it started (imports and exports).

use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{Caller, Principal};
use crate::error::ApiError;
use crate::http::extract::{Admin, JsonBody};
use crate::http::openapi::ProblemDoc;
use crate::jobs::error::JobError;
use crate::jobs::model::{Job, JobStatus, NewJobInput, check, valid_name};
use crate::jobs::schedules::{self, NewSchedule, SchedulePatch};
use crate::jobs::service::{self, Failed};
use crate::jobs::store::{ClaimFilter, ListFilter};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(claim))
        .routes(routes!(complete_many))
        .routes(routes!(fail_many))
        .routes(routes!(get_job, delete_job))
        .routes(routes!(retry_job))
        .routes(routes!(cancel_job))
        .routes(routes!(heartbeat))
        .routes(routes!(complete))
        .routes(routes!(fail))
        .routes(routes!(create_schedule, list_schedules))
        .routes(routes!(get_schedule, patch_schedule, delete_schedule))
}

/// The most jobs one claim, complete or fail call handles.
const MAX_BATCH: usize = 1000;

/// A caller allowed to work jobs: a superuser (or the admin token); an API key needs
/// `jobs:work` (or `jobs:*`).
pub struct Worker(pub Caller);

impl FromRequestParts<AppState> for Worker {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.is_superuser() {
            if !caller.area_allows("jobs", "work") {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    "The API key's scopes do not include jobs:work.",
                ));
            }
            Ok(Worker(caller))
        } else if caller.is_anonymous() {
            Err(ApiError::unauthorized(
                "Workers authenticate with a superuser's API key scoped jobs:work.",
            ))
        } else {
            Err(ApiError::forbidden(
                "forbidden",
                "This endpoint is for workers (superusers' keys scoped jobs:work).",
            ))
        }
    }
}

/// The account a caller other than a superuser is (`<collection>/<id>`): whose jobs it
/// may read.
pub fn owner_of(caller: &Caller) -> Option<String> {
    match &caller.principal {
        Principal::User { coll, record } => Some(format!("{}/{}", coll.name(), record.id)),
        Principal::Superuser { id, .. } => Some(format!("_superusers/{id}")),
        Principal::Service { name } => Some(format!("_services/{name}")),
        Principal::Anonymous => None,
    }
}

/// Whether `caller` may read `job`: superusers (keys need `jobs:read`), or the caller
/// who started it.
fn may_read(caller: &Caller, job: &Job) -> Result<bool, ApiError> {
    let own = job.owner.is_some() && job.owner == owner_of(caller);
    if caller.is_superuser() {
        if !caller.area_allows("jobs", "read") && !own {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "The API key's scopes do not include jobs:read.",
            ));
        }
        return Ok(true);
    }
    Ok(own)
}

fn job_response(status: StatusCode, job: &Job, with_lease: bool) -> Response {
    let mut res = (status, axum::Json(job.to_json(with_lease))).into_response();
    if status == StatusCode::CREATED
        && let Ok(v) = axum::http::HeaderValue::from_str(&crate::jobs::model::job_href(&job.id))
    {
        res.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    res
}

#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    summary = "Enqueue a job (superusers; keys need jobs:write)",
    request_body = Value,
    responses(
        (status = 201, description = "The new job", body = Value),
        (status = 200, description = "A job with the same uniqueKey is queued or running: that job", body = Value),
        (status = 400, description = "Invalid job (the field and why)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a superuser, or a key without jobs:write", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn create_job(
    State(state): State<AppState>,
    Admin(caller): Admin,
    JsonBody(input): JsonBody<NewJobInput>,
) -> Result<Response, ApiError> {
    let job = check(&input, "", false).map_err(ApiError::validation)?;
    service::check_destination(&state, &job, "")?;
    let (job, created) =
        service::enqueue(&state, &job, caller.write_meta(state.clock.now_ms())).await?;
    Ok(job_response(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &job,
        false,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    summary = "List jobs, newest first (superusers; others see the jobs they started)",
    params(
        ("status" = Option<String>, Query, description = "queued, running, retrying, succeeded, dead or cancelled"),
        ("queue" = Option<String>, Query, description = "Only this queue"),
        ("kind" = Option<String>, Query, description = "Only this kind"),
        ("page" = Option<i64>, Query, description = "Page number (default 1)"),
        ("perPage" = Option<i64>, Query, description = "Jobs per page (default 30, max 500)"),
    ),
    responses(
        (status = 200, description = "`{items, page, perPage, totalItems}`", body = Value),
        (status = 400, description = "A parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if caller.is_anonymous() {
        return Err(ApiError::unauthorized(
            "Listing jobs needs a signed-in caller.",
        ));
    }
    let mut filter = ListFilter::default();
    let (mut page, mut per_page) = (1, 30);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "status" => {
                filter.status = Some(JobStatus::parse(&v).ok_or_else(|| {
                    ApiError::field(
                        "status",
                        "invalid",
                        "queued, running, retrying, succeeded, dead or cancelled",
                    )
                })?);
            }
            "queue" if valid_name(&v) => filter.queue = Some(v.into_owned()),
            "kind" if valid_name(&v) => filter.kind = Some(v.into_owned()),
            "queue" | "kind" => {
                return Err(ApiError::field(
                    &k,
                    "invalid",
                    "1 to 64 letters, digits, '_', '.', ':' or '-'",
                ));
            }
            "page" => page = crate::http::extract::page_param(&v, "page", 1_000_000)?,
            "perPage" => per_page = crate::http::extract::page_param(&v, "perPage", 500)?,
            other => {
                let other: String = other.chars().take(32).collect();
                return Err(ApiError::field(
                    &other,
                    "unknown_parameter",
                    "not a parameter of this endpoint (status, queue, kind, page, perPage)",
                ));
            }
        }
    }
    let superuser = caller.is_superuser() && caller.area_allows("jobs", "read");
    if !superuser {
        filter.owner = Some(owner_of(&caller).unwrap_or_default());
    }
    let (items, total) = service::list(&state, &filter, page, per_page).await?;
    let items: Vec<Value> = items.iter().map(|j| j.to_json(false)).collect();
    Ok(axum::Json(json!({
        "items": items,
        "page": page,
        "perPage": per_page,
        "totalItems": total,
    }))
    .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    summary = "Read a job (superusers; others only the jobs they started)",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = Value),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such job (or not yours)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if caller.is_anonymous() {
        return Err(ApiError::unauthorized(
            "Reading a job needs a signed-in caller.",
        ));
    }
    let job = service::get(&state, &id).await?;
    if !may_read(&caller, &job)? {
        return Err(JobError::NotFound.into());
    }
    Ok(job_response(StatusCode::OK, &job, false))
}

#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    summary = "Delete a finished job (superusers; keys need jobs:write)",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such job", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The job has not finished (`invalid_status`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn delete_job(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    service::delete(&state, &id).await?;
    let (nd, csv) = (format!("{id}.ndjson"), format!("{id}.csv"));
    crate::jobs::transfer::remove_files(&state, &[&nd, &csv]).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry",
    tag = "jobs",
    summary = "Run a dead, cancelled or waiting job again now, attempts counted from zero",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job, queued", body = Value),
        (status = 404, description = "No such job", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The job is queued, running or succeeded (`invalid_status`), or its uniqueKey is taken (`duplicate_job`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn retry_job(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = service::retry(&state, &id).await?;
    Ok(job_response(StatusCode::OK, &job, false))
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    summary = "Cancel a job that has not finished (a running job's worker loses its lease)",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job, cancelled", body = Value),
        (status = 404, description = "No such job", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The job has finished (`invalid_status`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn cancel_job(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = service::cancel(&state, &id).await?;
    Ok(job_response(StatusCode::OK, &job, false))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimRequest {
    #[serde(default)]
    queues: Vec<String>,
    #[serde(default)]
    kinds: Vec<String>,
    max: Option<i64>,
    lease: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/v1/jobs/claim",
    tag = "jobs",
    summary = "Claim due jobs under a lease (workers: keys scoped jobs:work)",
    request_body = Value,
    responses(
        (status = 200, description = "`{items: [...]}`: up to `max` jobs, each with `leaseId` and `leaseExpiresAt`", body = Value),
        (status = 400, description = "Invalid request", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a worker", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn claim(
    State(state): State<AppState>,
    _: Worker,
    JsonBody(req): JsonBody<ClaimRequest>,
) -> Result<Response, ApiError> {
    let max = req.max.unwrap_or(1);
    if !(1..=MAX_BATCH as i64).contains(&max) {
        return Err(ApiError::field(
            "max",
            "out_of_range",
            format!("a whole number from 1 to {MAX_BATCH}"),
        ));
    }
    let lease = req.lease.unwrap_or(30);
    if !(1..=3600).contains(&lease) {
        return Err(ApiError::field(
            "lease",
            "out_of_range",
            "seconds, from 1 to 3600",
        ));
    }
    if req
        .kinds
        .iter()
        .any(|k| crate::jobs::model::BUILTIN_KINDS.contains(&k.as_str()))
    {
        return Err(ApiError::field(
            "kinds",
            "reserved",
            "http, mail, import, export and housekeeping jobs are run by Lintel itself",
        ));
    }
    for (field, list) in [("queues", &req.queues), ("kinds", &req.kinds)] {
        if list.len() > 100 || list.iter().any(|n| !valid_name(n)) {
            return Err(ApiError::field(
                field,
                "invalid",
                "at most 100 names of 1 to 64 letters, digits, '_', '.', ':' or '-'",
            ));
        }
    }
    let filter = ClaimFilter {
        queues: req.queues,
        kinds: req.kinds,
    };
    let jobs = service::claim(&state, &filter, max, lease * 1000).await?;
    let items: Vec<Value> = jobs.iter().map(|j| j.to_json(true)).collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LeaseBody {
    lease_id: String,
    #[serde(default)]
    progress: Value,
    #[serde(default)]
    result: Value,
}

fn check_size(field: &str, v: &Value) -> Result<(), ApiError> {
    if v.to_string().len() > crate::jobs::model::MAX_PAYLOAD_BYTES {
        return Err(ApiError::field(
            field,
            "too_large",
            format!(
                "at most {} bytes of JSON",
                crate::jobs::model::MAX_PAYLOAD_BYTES
            ),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/heartbeat",
    tag = "jobs",
    summary = "Extend a lease by its length (and record `progress`)",
    params(("id" = String, Path, description = "Job id")),
    request_body = Value,
    responses(
        (status = 200, description = "The job with its new leaseExpiresAt", body = Value),
        (status = 409, description = "The lease is no longer the job's (`lease_lost`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn heartbeat(
    State(state): State<AppState>,
    _: Worker,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<LeaseBody>,
) -> Result<Response, ApiError> {
    check_size("progress", &body.progress)?;
    let job = service::heartbeat(&state, &id, &body.lease_id, &body.progress).await?;
    Ok(job_response(StatusCode::OK, &job, true))
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/complete",
    tag = "jobs",
    summary = "End a leased job in success with its `result`",
    params(("id" = String, Path, description = "Job id")),
    request_body = Value,
    responses(
        (status = 200, description = "The job, succeeded", body = Value),
        (status = 409, description = "The lease is no longer the job's (`lease_lost`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn complete(
    State(state): State<AppState>,
    _: Worker,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<LeaseBody>,
) -> Result<Response, ApiError> {
    check_size("result", &body.result)?;
    let job = service::complete(&state, &id, &body.lease_id, &body.result).await?;
    Ok(job_response(StatusCode::OK, &job, false))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailBody {
    lease_id: String,
    error: Option<String>,
    retry: Option<bool>,
    retry_after: Option<i64>,
    #[serde(default)]
    result: Value,
}

fn failed(b: &FailBody) -> Result<Failed, ApiError> {
    check_size("result", &b.result)?;
    if b.retry_after.is_some_and(|s| !(0..=86_400).contains(&s)) {
        return Err(ApiError::field(
            "retryAfter",
            "out_of_range",
            "seconds, from 0 to 86400",
        ));
    }
    Ok(Failed {
        error: b.error.clone().unwrap_or_else(|| "failed".into()),
        retry: b.retry.unwrap_or(true),
        retry_after_ms: b.retry_after.map(|s| s * 1000),
        delay_ms: None,
        result: b.result.clone(),
    })
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/fail",
    tag = "jobs",
    summary = "End a leased attempt in failure: retried after a backoff, or dead (`retry: false` or attempts used up)",
    params(("id" = String, Path, description = "Job id")),
    request_body = Value,
    responses(
        (status = 200, description = "The job, retrying or dead", body = Value),
        (status = 409, description = "The lease is no longer the job's (`lease_lost`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn fail(
    State(state): State<AppState>,
    _: Worker,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<FailBody>,
) -> Result<Response, ApiError> {
    let f = failed(&body)?;
    let job = service::fail(&state, &id, &body.lease_id, &f).await?;
    Ok(job_response(StatusCode::OK, &job, false))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CompleteItem {
    id: String,
    lease_id: String,
    #[serde(default)]
    result: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Items<T> {
    items: Vec<T>,
}

fn item_results(ids: impl Iterator<Item = String>, results: Vec<service::ItemResult>) -> Response {
    let items: Vec<Value> = ids
        .zip(results)
        .map(|(id, r)| match r {
            Ok(job) => json!({ "id": id, "status": 200, "job": job.to_json(false) }),
            Err(e) => {
                let p = ApiError::from(e).problem();
                json!({ "id": id, "status": p.status, "code": p.code, "detail": p.detail })
            }
        })
        .collect();
    axum::Json(json!({ "items": items })).into_response()
}

fn check_items<T>(items: &[T]) -> Result<(), ApiError> {
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::field(
            "items",
            "invalid_count",
            format!("1 to {MAX_BATCH} items"),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/jobs/complete",
    tag = "jobs",
    summary = "Complete many leased jobs in one call: `{items: [{id, leaseId, result}]}`",
    request_body = Value,
    responses(
        (status = 200, description = "`{items: [{id, status, job | code}]}` in order", body = Value),
    )
)]
async fn complete_many(
    State(state): State<AppState>,
    _: Worker,
    JsonBody(body): JsonBody<Items<CompleteItem>>,
) -> Result<Response, ApiError> {
    check_items(&body.items)?;
    for (i, it) in body.items.iter().enumerate() {
        check_size(&format!("items[{i}].result"), &it.result)?;
    }
    let args: Vec<(String, String, Value)> = body
        .items
        .iter()
        .map(|i| (i.id.clone(), i.lease_id.clone(), i.result.clone()))
        .collect();
    let results = service::complete_many(&state, &args).await?;
    Ok(item_results(body.items.into_iter().map(|i| i.id), results))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailItem {
    id: String,
    #[serde(flatten)]
    body: FailBody,
}

#[utoipa::path(
    post,
    path = "/v1/jobs/fail",
    tag = "jobs",
    summary = "Fail many leased attempts in one call: `{items: [{id, leaseId, error, retry}]}`",
    request_body = Value,
    responses(
        (status = 200, description = "`{items: [{id, status, job | code}]}` in order", body = Value),
    )
)]
async fn fail_many(
    State(state): State<AppState>,
    _: Worker,
    JsonBody(body): JsonBody<Items<Value>>,
) -> Result<Response, ApiError> {
    check_items(&body.items)?;
    let mut args = Vec::with_capacity(body.items.len());
    for (i, raw) in body.items.iter().enumerate() {
        let item: FailItem = serde_json::from_value(raw.clone()).map_err(|e| {
            ApiError::field(
                &format!("items[{i}]"),
                "invalid",
                format!("{{id, leaseId, error, retry, retryAfter, result}}: {e}"),
            )
        })?;
        args.push((
            item.id.clone(),
            item.body.lease_id.clone(),
            failed(&item.body)?,
        ));
    }
    let ids: Vec<String> = args.iter().map(|a| a.0.clone()).collect();
    let results = service::fail_many(&state, &args).await?;
    Ok(item_results(ids.into_iter(), results))
}

#[utoipa::path(
    post,
    path = "/v1/schedules",
    tag = "jobs",
    summary = "Create a schedule: a job enqueued on each cron slot (superusers; keys need schedules:write)",
    request_body = Value,
    responses(
        (status = 201, description = "The schedule", body = Value),
        (status = 400, description = "Invalid name, cron, timezone or job", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "A schedule with this name exists (`schedule_exists`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn create_schedule(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(input): JsonBody<NewSchedule>,
) -> Result<Response, ApiError> {
    let s = schedules::create(&state, input).await?;
    let mut res = (StatusCode::CREATED, axum::Json(s.clone())).into_response();
    if let Some(href) = s["_links"]["self"]["href"].as_str()
        && let Ok(v) = axum::http::HeaderValue::from_str(href)
    {
        res.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    Ok(res)
}

#[utoipa::path(
    get,
    path = "/v1/schedules",
    tag = "jobs",
    summary = "List schedules by name",
    responses((status = 200, description = "`{items: [...]}`", body = Value))
)]
async fn list_schedules(State(state): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    let items = schedules::list(&state).await?;
    Ok(axum::Json(json!({ "items": items })).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/schedules/{id}",
    tag = "jobs",
    summary = "Read a schedule",
    params(("id" = String, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The schedule", body = Value),
        (status = 404, description = "No such schedule", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn get_schedule(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(schedules::get(&state, &id).await?).into_response())
}

#[utoipa::path(
    patch,
    path = "/v1/schedules/{id}",
    tag = "jobs",
    summary = "Pause or resume a schedule: `{\"paused\": true|false}` (resuming counts the next slot from now)",
    params(("id" = String, Path, description = "Schedule id")),
    request_body = Value,
    responses(
        (status = 200, description = "The schedule", body = Value),
        (status = 404, description = "No such schedule", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn patch_schedule(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<SchedulePatch>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(schedules::set_paused(&state, &id, patch.paused).await?).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/schedules/{id}",
    tag = "jobs",
    summary = "Delete a schedule (the jobs it enqueued stay)",
    params(("id" = String, Path, description = "Schedule id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such schedule", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn delete_schedule(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    schedules::delete(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The import and export routes (they sit under the collection's path).
pub fn transfer_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import))
        .routes(routes!(export))
        .routes(routes!(job_result))
        .routes(routes!(job_events))
}

/// Creates `<data_dir>/jobs` (private to the owner) if it is not there yet.
async fn make_folder(state: &AppState) -> Result<(), ApiError> {
    let dir = crate::jobs::transfer::folder(state);
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::internal(format!("creating the jobs folder: {e}")))
}

fn accepted(job: &Job) -> Response {
    let mut res = (StatusCode::ACCEPTED, axum::Json(job.to_json(false))).into_response();
    let h = res.headers_mut();
    if let Ok(v) = axum::http::HeaderValue::from_str(&crate::jobs::model::job_href(&job.id)) {
        h.insert(axum::http::header::LOCATION, v);
    }
    h.insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    res
}

/// An import or export needs a signed-in caller allowed the action on the collection.
fn transfer_caller(
    state: &AppState,
    caller: &Caller,
    name: &str,
    action: crate::schema::Action,
) -> Result<std::sync::Arc<crate::schema::Collection>, ApiError> {
    let coll = crate::records::service::collection(state, name)?;
    if caller.is_anonymous() {
        return Err(ApiError::unauthorized(
            "Imports and exports need a signed-in caller.",
        ));
    }
    caller.require_scope(coll.name(), action)?;
    if crate::access::rules::is_denied_outright(caller, &coll, action) {
        return Err(ApiError::forbidden(
            "forbidden",
            "The collection's rules do not allow this.",
        ));
    }
    Ok(coll)
}

#[utoipa::path(
    post,
    path = "/v1/collections/{name}/import",
    tag = "jobs",
    summary = "Import NDJSON or CSV rows as a job (202); the body is streamed to disk",
    params(
        ("name" = String, Path, description = "Collection name"),
        ("mode" = Option<String>, Query, description = "atomic (default: all or nothing) or partial (good rows kept)"),
    ),
    request_body(content = String, content_type = "application/x-ndjson"),
    responses(
        (status = 202, description = "The import job; `Location` names it", body = Value),
        (status = 400, description = "Bad mode", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Over jobs.import_max_bytes", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Not application/x-ndjson or text/csv", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn import(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use crate::jobs::transfer::{Format, caller_ref, file_path, local_queue};
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let coll = transfer_caller(&state, &caller, &name, crate::schema::Action::Create)?;
    let mut mode = "atomic".to_owned();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (k.as_ref(), v.as_ref()) {
            ("mode", "atomic" | "partial") => mode = v.into_owned(),
            ("mode", _) => return Err(ApiError::field("mode", "invalid", "atomic or partial")),
            (other, _) => {
                let other: String = other.chars().take(32).collect();
                return Err(ApiError::field(
                    &other,
                    "unknown_parameter",
                    "not a parameter of this endpoint (mode)",
                ));
            }
        }
    }
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match ct.as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Format::Ndjson,
        "text/csv" => Format::Csv,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send application/x-ndjson (one JSON object per line) or text/csv (a header row first).",
            ));
        }
    };
    let file = format!("{}.in", crate::ids::record_id());
    let path = file_path(&state, &file).ok_or_else(|| ApiError::internal("bad spool name"))?;
    make_folder(&state).await?;
    // Removes the spool file if the request ends before the job owns it (an error,
    // or the client going away mid-upload).
    struct Spool(Option<std::path::PathBuf>);
    impl Drop for Spool {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let mut guard = Spool(Some(path.clone()));
    let max = state.config.jobs.import_max_bytes;
    let spooled = async {
        let mut out = tokio::io::BufWriter::new(
            tokio::fs::File::create(&path)
                .await
                .map_err(ApiError::internal)?,
        );
        let mut stream = body.into_data_stream();
        let mut total: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| {
                ApiError::bad_request("invalid_body", "The request body could not be read.")
            })?;
            total += chunk.len() as u64;
            if total > max {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("An import takes at most {max} bytes (jobs.import_max_bytes)."),
                ));
            }
            out.write_all(&chunk).await.map_err(ApiError::internal)?;
        }
        out.flush().await.map_err(ApiError::internal)?;
        Ok::<_, ApiError>(())
    }
    .await;
    spooled?;
    let mut job = crate::jobs::NewJob::of(
        "import",
        json!({ "collection": coll.name(), "mode": mode, "format": format.as_str(), "file": file, "as": caller_ref(&caller) }),
    );
    job.queue = local_queue(&state);
    job.owner = owner_of(&caller);
    job.max_attempts = 3;
    job.timeout_ms = 3600 * 1000;
    let (job, _) = service::enqueue(&state, &job, caller.write_meta(state.clock.now_ms())).await?;
    guard.0 = None;
    Ok(accepted(&job))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    format: Option<String>,
    filter: Option<String>,
    sort: Option<String>,
    fields: Option<Vec<String>>,
}

#[utoipa::path(
    post,
    path = "/v1/collections/{name}/export",
    tag = "jobs",
    summary = "Export the records the caller may list, as NDJSON or CSV, as a job (202)",
    params(("name" = String, Path, description = "Collection name")),
    request_body = Value,
    responses(
        (status = 202, description = "The export job; its result links the download", body = Value),
        (status = 400, description = "Bad format, filter, sort or fields", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn export(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ExportRequest>,
) -> Result<Response, ApiError> {
    use crate::jobs::transfer::{Format, caller_ref, local_queue};
    let coll = transfer_caller(&state, &caller, &name, crate::schema::Action::List)?;
    let format = match req.format.as_deref() {
        None => Format::Ndjson,
        Some(f) => {
            Format::parse(f).ok_or_else(|| ApiError::field("format", "invalid", "ndjson or csv"))?
        }
    };
    if let Some(f) = &req.fields
        && (f.is_empty() || f.len() > 200)
    {
        return Err(ApiError::field("fields", "invalid", "1 to 200 field names"));
    }
    // The filter, sort and fields are checked now, with the caller's list rule, so a
    // bad one is a 400 here rather than a dead job later.
    let params = crate::records::query::ListParams {
        filter: req.filter.clone(),
        sort: req.sort.clone(),
        fields: req.fields.as_ref().map(|f| f.join(",")),
        per_page: Some("1".into()),
        skip_total: Some("true".into()),
        cursor: Some(String::new()),
        ..Default::default()
    };
    crate::records::service::list(&state, &caller, &coll, &params).await?;
    make_folder(&state).await?;
    let mut job = crate::jobs::NewJob::of(
        "export",
        json!({ "collection": coll.name(), "format": format.as_str(), "filter": req.filter, "sort": req.sort, "fields": req.fields, "as": caller_ref(&caller) }),
    );
    job.queue = local_queue(&state);
    job.owner = owner_of(&caller);
    job.max_attempts = 3;
    job.timeout_ms = 3600 * 1000;
    let (job, _) = service::enqueue(&state, &job, caller.write_meta(state.clock.now_ms())).await?;
    Ok(accepted(&job))
}

/// A job the caller may read (superusers, or the caller who started it), or 404.
async fn readable_job(state: &AppState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    if caller.is_anonymous() {
        return Err(ApiError::unauthorized(
            "Reading a job needs a signed-in caller.",
        ));
    }
    let job = service::get(state, id).await?;
    if !may_read(caller, &job)? {
        return Err(JobError::NotFound.into());
    }
    Ok(job)
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/result",
    tag = "jobs",
    summary = "Download an export's file (the caller who started it, or superusers)",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The file, streamed", content_type = "application/x-ndjson"),
        (status = 404, description = "No such job, not yours, or no file", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The export has not succeeded (yet)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn job_result(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = readable_job(&state, &caller, &id).await?;
    if job.kind != "export" {
        return Err(ApiError::not_found(
            "Only export jobs have a file to download.",
        ));
    }
    if job.status != JobStatus::Succeeded {
        return Err(JobError::Status {
            status: job.status.as_str(),
            wanted: "succeeded",
        }
        .into());
    }
    let format = job.result["format"]
        .as_str()
        .and_then(crate::jobs::transfer::Format::parse)
        .ok_or_else(|| ApiError::not_found("The export has no file."))?;
    let path = job.result["file"]
        .as_str()
        .and_then(|f| crate::jobs::transfer::file_path(&state, f))
        .ok_or_else(|| ApiError::not_found("The export has no file."))?;
    let file = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError::not_found("The export's file is gone (purged, or on another instance).")
    })?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    let mut res = axum::body::Body::from_stream(stream).into_response();
    let h = res.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(format.media_type()),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!(
        "attachment; filename=\"{}.{}\"",
        job.payload["collection"].as_str().unwrap_or("export"),
        format.as_str()
    )) {
        h.insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "jobs",
    summary = "Server-Sent Events of a job: `progress` while it runs, then one `status` and the end",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "text/event-stream", content_type = "text/event-stream"),
        (status = 404, description = "No such job (or not yours)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn job_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let first = readable_job(&state, &caller, &id).await?;
    let permit = state
        .jobs
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable(
                "too_many_streams",
                "Too many job event streams are open; poll GET /v1/jobs/{id} instead.",
                5,
            )
        })?;
    let rt = crate::runtime::Runtime::clone(&state);
    // Polls the job (each poll one indexed read), sending progress when it changes;
    // a job that does not finish within a day ends the stream too.
    let stream = futures_util::stream::unfold(
        (Some(first), Value::Null, false, 0u32),
        move |(job, mut last, done, polls)| {
            let rt = rt.clone();
            let id = id.clone();
            // Held as long as the stream is polled; released when it ends or drops.
            let _held = &permit;
            async move {
                if done || polls > 86_400 * 4 {
                    return None;
                }
                let job = match job {
                    Some(j) => j,
                    None => {
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                        service::get(&rt, &id).await.ok()?
                    }
                };
                if job.status.is_final() {
                    let e = Event::default()
                        .event("status")
                        .json_data(json!({ "status": job.status.as_str(), "job": job.to_json(false) }))
                        .ok()?;
                    return Some((Ok::<_, std::convert::Infallible>(vec![e]), (None, last, true, polls + 1)));
                }
                let p = &job.progress;
                let now = json!({ "processed": p["processed"].as_u64().unwrap_or(0), "failed": p["failed"].as_u64().unwrap_or(0), "total": p.get("total").cloned().unwrap_or(Value::Null) });
                let mut out = Vec::new();
                if now != last {
                    if let Ok(e) = Event::default().event("progress").json_data(&now) {
                        out.push(e);
                    }
                    last = now;
                }
                Some((Ok(out), (None, last, false, polls + 1)))
            }
        },
    )
    .flat_map(|r: Result<Vec<Event>, std::convert::Infallible>| {
        futures_util::stream::iter(r.unwrap_or_default().into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
