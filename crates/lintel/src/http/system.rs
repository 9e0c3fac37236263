//! Operational endpoints: liveness, readiness, Prometheus metrics and the OpenAPI
//! document.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::http::extract::Admin;
use crate::http::openapi::ProblemDoc;
use crate::ids::{constant_time_eq, token_digest};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(openapi_json))
        .routes(routes!(types_ts))
        .routes(routes!(metrics))
}

#[utoipa::path(get, path = "/v1/health", tag = "system", summary = "Liveness",
    responses((status = 200, description = "The process is up", body = serde_json::Value)))]
async fn health() -> Response {
    let mut res = axum::Json(json!({ "status": "ok" })).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[utoipa::path(get, path = "/v1/ready", tag = "system", summary = "Readiness: the store answers",
    responses(
        (status = 200, description = "Ready", body = serde_json::Value),
        (status = 503, description = "The store does not answer", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn ready(State(state): State<AppState>) -> Result<Response, ApiError> {
    match tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => {
            let mut res = axum::Json(json!({ "status": "ready" })).into_response();
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(res)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::unavailable(
                "not_ready",
                "The store is not reachable.",
                5,
            ))
        }
        Err(_) => Err(ApiError::unavailable(
            "not_ready",
            "The store did not answer in time.",
            5,
        )),
    }
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "system", summary = "This OpenAPI 3.1 document",
    description = "Built from the route annotations and the current collections: each collection has its own paths and `<Name>Record`, `<Name>Create` and `<Name>Update` schemas. Rebuilt after each schema change.",
    responses((status = 200, description = "The document", body = serde_json::Value)))]
async fn openapi_json(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (json, _) = state.openapi.current(state.catalog())?;
    let mut res = (StatusCode::OK, json).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(res)
}

#[utoipa::path(get, path = "/v1/types.ts", tag = "system", summary = "TypeScript types of the collections",
    description = "`<Name>Record`, `<Name>Create` and `<Name>Update` per collection, as `lintel types --lang typescript` writes them.",
    responses((status = 200, description = "A TypeScript module", content_type = "text/plain")))]
async fn types_ts(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (_, ts) = state.openapi.current(state.catalog())?;
    let mut res = (StatusCode::OK, ts).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(res)
}

#[utoipa::path(get, path = "/metrics", tag = "system", summary = "Prometheus metrics (text format)",
    description = "Needs the admin token, a superuser (an API key with `metrics:read`) or `metrics.token`. Not served here when `metrics.listen` is set.",
    security(("admin" = [])),
    responses(
        (status = 200, description = "Metrics", content_type = "text/plain"),
        (status = 401, description = "No credential", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a superuser, or a key without `metrics:read`", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Metrics are served on `metrics.listen` instead", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn metrics(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    if !state.config.metrics.listen.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "No endpoint at this path; see /v1/openapi.json.",
        ));
    }
    let (mut parts, _) = req.into_parts();
    let scraper = !state.config.metrics.token.0.is_empty()
        && crate::http::extract::bearer(&parts.headers).is_some_and(|t| {
            constant_time_eq(
                &token_digest(t),
                &token_digest(&state.config.metrics.token.0),
            )
        });
    if !scraper {
        Admin::from_request_parts(&mut parts, &state).await?;
    }
    Ok(render_metrics(&state))
}

/// The Prometheus text for this process.
pub fn render_metrics(state: &AppState) -> Response {
    let body = state.metrics.render();
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The router of the separate metrics listener (`metrics.listen`): `/metrics` only.
pub fn metrics_listener(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |State(state): State<AppState>| async move { render_metrics(&state) },
            ),
        )
        .with_state(state)
}
