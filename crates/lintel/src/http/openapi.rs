//! The OpenAPI 3.1 document. It is assembled from the same `#[utoipa::path]`
//! annotations that register the routes (utoipa-axum's `routes!`), so the document and
//! the route table cannot drift apart.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The problem+json error body (RFC 9457), as every error response carries it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ProblemDoc {
    /// A URI naming the problem type.
    #[schema(rename = "type")]
    type_uri: String,
    title: String,
    status: u16,
    detail: String,
    /// A stable, machine-readable code.
    code: String,
    /// Per-field errors: `{"field": {"code", "message"}}`.
    #[schema(value_type = Object)]
    errors: Option<serde_json::Value>,
    /// The id of the request, as in the X-Request-Id header and the logs.
    #[schema(rename = "requestId")]
    request_id: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lintel",
        description = "A backend in one binary: collections, records, and the HTTP edge around them. \
                       Every path is under /v1; the same paths without the prefix are served by the \
                       version in the Api-Version request header. Errors are application/problem+json.",
    ),
    modifiers(&AdminSecurity),
    components(schemas(ProblemDoc)),
    tags(
        (name = "collections", description = "Collection management (admin token)"),
        (name = "records", description = "The records of a collection"),
        (name = "batch", description = "Many record operations in one transaction"),
        (name = "system", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct AdminSecurity;

impl Modify for AdminSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
