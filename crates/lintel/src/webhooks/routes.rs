//! `/v1/webhooks`: manage webhooks, rotate their secret, read and retry their
//! deliveries, send a test. Superusers only (a regular user's key cannot, whatever its
//! scopes); superusers' API keys need `webhooks:read` or `webhooks:write`.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::http::extract::{Admin, JsonBody};
use crate::http::no_store;
use crate::http::openapi::ProblemDoc;
use crate::state::AppState;
use crate::store::{Sql, SqlValue};
use crate::webhooks::{self as hooks, WebhookError, WebhookInput, dispatch};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, patch_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
        .routes(routes!(test_webhook))
}

#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "Create a webhook; its secret is in this answer only (superusers; keys need webhooks:write)",
    request_body = Value,
    responses(
        (status = 201, description = "The webhook and its `secret` (whsec_...)", body = Value),
        (status = 400, description = "Invalid url (or an internal address), events, collection, filter or headers", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a superuser, or a key without webhooks:write", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn create_webhook(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(input): JsonBody<WebhookInput>,
) -> Result<Response, ApiError> {
    let (w, secret) = hooks::create(&state, &input).await?;
    let mut body = w.to_json();
    body["secret"] = Value::String(secret);
    let mut res = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("/v1/webhooks/{}", w.id)) {
        res.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    no_store(&mut res);
    Ok(res)
}

#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "List webhooks (superusers; keys need webhooks:read)",
    responses((status = 200, description = "`{items: [...]}`, oldest first", body = Value))
)]
async fn list_webhooks(State(state): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    let items: Vec<Value> = hooks::list(&state, false)
        .await?
        .iter()
        .map(|w| w.to_json())
        .collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Read a webhook (never its secret)",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The webhook", body = Value),
        (status = 404, description = "No such webhook", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn get_webhook(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(hooks::get(&state, &id).await?.to_json()).into_response())
}

#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Change a webhook (from the next commit on); enabling it again clears its failing state",
    params(("id" = String, Path, description = "Webhook id")),
    request_body = Value,
    responses(
        (status = 200, description = "The webhook", body = Value),
        (status = 400, description = "Invalid field", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn patch_webhook(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<WebhookInput>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(hooks::patch(&state, &id, &input).await?.to_json()).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Delete a webhook and its delivery log",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such webhook", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn delete_webhook(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    hooks::delete(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    summary = "A new secret; the old one keeps signing beside it for 24 hours",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "`{secret}`, shown once", body = Value),
        (status = 404, description = "No such webhook", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn rotate_secret(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let secret = hooks::rotate(&state, &id).await?;
    let mut res = axum::Json(
        json!({ "secret": secret, "previousValidFor": hooks::ROTATION_GRACE_MS / 1000 }),
    )
    .into_response();
    no_store(&mut res);
    Ok(res)
}

fn delivery_json(r: &[Value]) -> Value {
    let at = |i: usize| r.get(i).cloned().unwrap_or(Value::Null);
    let attempts: Value = r
        .get(4)
        .and_then(Value::as_str)
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_else(|| json!([]));
    json!({
        "id": at(0),
        "webhookId": at(0),
        "type": at(1),
        "seq": at(2),
        "status": at(3),
        "attempts": attempts,
        "nextAttemptAt": r.get(5).and_then(Value::as_i64).map(crate::clock::format_ms),
        "created": r.get(6).and_then(Value::as_i64).map(crate::clock::format_ms),
    })
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    summary = "A webhook's deliveries, newest first, each with its attempts",
    params(
        ("id" = String, Path, description = "Webhook id"),
        ("page" = Option<i64>, Query, description = "Page number (default 1)"),
        ("perPage" = Option<i64>, Query, description = "Deliveries per page (default 30, max 200)"),
    ),
    responses(
        (status = 200, description = "`{items, page, perPage, totalItems}`", body = Value),
        (status = 404, description = "No such webhook", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn list_deliveries(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    hooks::get(&state, &id).await?;
    let (mut page, mut per_page) = (1i64, 30i64);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let n = v.parse::<i64>().ok();
        match (k.as_ref(), n) {
            ("page", Some(n)) if (1..=1_000_000).contains(&n) => page = n,
            ("perPage", Some(n)) if (1..=200).contains(&n) => per_page = n,
            ("page" | "perPage", _) => {
                return Err(ApiError::field(&k, "invalid", "a whole number in range"));
            }
            (other, _) => {
                let other: String = other.chars().take(32).collect();
                return Err(ApiError::field(
                    &other,
                    "unknown_parameter",
                    "not a parameter of this endpoint (page, perPage)",
                ));
            }
        }
    }
    let d = state.store.dialect();
    let mut sql = Sql::new(d);
    sql.push("SELECT id, type, seq, status, attempts, next_attempt_at, created FROM _lintel_webhook_deliveries WHERE webhook = ")
        .bind(SqlValue::Text(id.clone()))
        .push(" ORDER BY created DESC, id DESC LIMIT ")
        .bind(SqlValue::Int(per_page))
        .push(" OFFSET ")
        .bind(SqlValue::Int((page - 1) * per_page));
    let rows = state.store.query_rows(sql).await.map_err(ApiError::from)?;
    let mut count = Sql::new(d);
    count
        .push("SELECT COUNT(*) FROM _lintel_webhook_deliveries WHERE webhook = ")
        .bind(SqlValue::Text(id));
    let total = state
        .store
        .query_count(count)
        .await
        .map_err(ApiError::from)?;
    let items: Vec<Value> = rows.iter().map(|r| delivery_json(r)).collect();
    Ok(axum::Json(
        json!({ "items": items, "page": page, "perPage": per_page, "totalItems": total }),
    )
    .into_response())
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery}/retry",
    tag = "webhooks",
    summary = "Send a delivery again now, as one more attempt with the same webhook-id",
    params(
        ("id" = String, Path, description = "Webhook id"),
        ("delivery" = String, Path, description = "Delivery id (msg_...)"),
    ),
    responses(
        (status = 202, description = "Queued: `{id, status: pending}`", body = Value),
        (status = 404, description = "No such webhook or delivery", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "An attempt is in flight (`delivery_in_flight`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn retry_delivery(
    State(state): State<AppState>,
    _: Admin,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    hooks::get(&state, &id).await?;
    let d = state.store.dialect();
    let mut sql = Sql::new(d);
    sql.push("SELECT job, status FROM _lintel_webhook_deliveries WHERE id = ")
        .bind(SqlValue::Text(delivery.clone()))
        .push(" AND webhook = ")
        .bind(SqlValue::Text(id.clone()));
    let rows = state.store.query_rows(sql).await.map_err(ApiError::from)?;
    let Some(row) = rows.first() else {
        return Err(WebhookError::NotFound.into());
    };
    // Waiting behind an ordered webhook's head: sending it now would break the order.
    if row.first().is_some_and(Value::is_null)
        && row.get(1).and_then(Value::as_str) == Some("pending")
    {
        return Err(WebhookError::Waiting.into());
    }
    if let Some(job) = row.first().and_then(Value::as_str)
        && let Ok(j) = crate::jobs::service::get(&state, job).await
        && matches!(
            j.status,
            crate::jobs::JobStatus::Running
                | crate::jobs::JobStatus::Queued
                | crate::jobs::JobStatus::Retrying
        )
    {
        if j.status == crate::jobs::JobStatus::Running {
            return Err(WebhookError::InFlight.into());
        }
        // Waiting for its next try: run it now instead.
        let mut now_sql = Sql::new(d);
        now_sql
            .push("UPDATE _lintel_jobs SET run_at = ")
            .bind(SqlValue::Int(state.clock.now_ms()))
            .push(" WHERE id = ")
            .bind(SqlValue::Text(j.id.clone()))
            .push(" AND status IN ('queued', 'retrying')");
        state
            .store
            .write(vec![crate::store::WriteOp::System {
                sql: now_sql,
                expect: None,
            }])
            .await
            .map_err(|e| ApiError::from(e.error))?;
        state.jobs.wake.notify_one();
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({ "id": delivery, "status": "pending" })),
        )
            .into_response());
    }
    let job_id = crate::ids::record_id();
    // One more attempt of the delivery: no retries of its own.
    let job = dispatch::delivery_job(json!({ "webhook": id, "delivery": delivery }), 1);
    let now = state.clock.now_ms();
    let mut mark = Sql::new(d);
    mark.push("UPDATE _lintel_webhook_deliveries SET status = 'pending', next_attempt_at = ")
        .bind(SqlValue::Int(now))
        .push(", job = ")
        .bind(SqlValue::Text(job_id.clone()))
        .push(" WHERE id = ")
        .bind(SqlValue::Text(delivery.clone()));
    let mut ops = vec![crate::store::WriteOp::System {
        sql: mark,
        expect: Some(1),
    }];
    ops.extend(crate::jobs::service::enqueue_ops_as(d, &job_id, &job, now));
    state
        .store
        .write(ops)
        .await
        .map_err(|e| ApiError::from(e.error))?;
    state.jobs.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": delivery, "status": "pending" })),
    )
        .into_response())
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/test",
    tag = "webhooks",
    summary = "Send a webhook.test event to the webhook now, whatever its events",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 202, description = "The delivery: `{id, status: pending}`", body = Value),
        (status = 404, description = "No such webhook", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn test_webhook(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let w = hooks::get(&state, &id).await?;
    let now = state.clock.now_ms();
    let body = json!({
        "type": "webhook.test",
        "timestamp": crate::clock::format_ms(now),
        "data": { "webhook": w.id },
    })
    .to_string();
    let (delivery, ops) = dispatch::delivery_ops(&state, &w, None, "webhook.test", body, now);
    state
        .store
        .write(ops)
        .await
        .map_err(|e| ApiError::from(e.error))?;
    state.jobs.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": delivery, "status": "pending" })),
    )
        .into_response())
}
