//! The OpenAPI 3.1 document. Its static part is assembled from the same
//! `#[utoipa::path]` annotations that register the routes (utoipa-axum's `routes!`), so
//! the document and the route table cannot drift apart. The part that depends on the
//! schema (per-collection record schemas and paths, and the request-body bounds that
//! name collections) is added from the live catalog by [`crate::http::catalog_doc`];
//! [`Document`] keeps the result until the catalog changes.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::ApiError;
use crate::schema::Catalog;

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
                       version in the Api-Version request header. Errors are application/problem+json. \
                       Each collection has its own paths (`/v1/collections/<name>/records`) with \
                       `<Name>Record`, `<Name>Create` and `<Name>Update` schemas made from its \
                       definition; the document follows schema changes.",
    ),
    modifiers(&AdminSecurity),
    components(schemas(ProblemDoc)),
    tags(
        (name = "collections", description = "Collection management (admin token)"),
        (name = "records", description = "The records of a collection"),
        (name = "batch", description = "Many record operations in one transaction"),
        (name = "webhooks", description = "Signed deliveries of events to other services (superusers)"),
        (name = "jobs", description = "The durable job queue, its workers and schedules"),
        (name = "events", description = "The log of committed changes (superusers)"),
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

/// The document served at `/v1/openapi.json` and the client types at `/v1/types.ts`:
/// the static part (serialised once at start) plus the current catalog, built on the
/// first request after each catalog change and kept until the next one.
pub struct Document {
    base: Value,
    password_min: usize,
    built: Mutex<Option<Built>>,
}

/// What was built for one catalog snapshot. Holding the snapshot keeps its address
/// unique, so pointer equality says "the same catalog" exactly (a reload always
/// installs a new snapshot, even when the generation number goes down on a revert).
struct Built {
    catalog: Arc<Catalog>,
    json: Bytes,
    typescript: Bytes,
}

impl Document {
    pub fn new(openapi: &utoipa::openapi::OpenApi, password_min: usize) -> anyhow::Result<Self> {
        let base = serde_json::to_value(openapi)?;
        Ok(Self {
            base,
            password_min,
            built: Mutex::new(None),
        })
    }

    /// The shortest password new accounts take (the configured minimum, at least 8).
    pub fn password_min(&self) -> usize {
        self.password_min
    }

    /// The OpenAPI document (JSON) and the TypeScript types for `catalog`.
    pub fn current(&self, catalog: Arc<Catalog>) -> Result<(Bytes, Bytes), ApiError> {
        if let Some(b) = self.lock().as_ref()
            && Arc::ptr_eq(&b.catalog, &catalog)
        {
            return Ok((b.json.clone(), b.typescript.clone()));
        }
        // Built outside the lock: a few milliseconds of CPU, once per schema change.
        let doc = crate::http::catalog_doc::build(&self.base, &catalog, self.password_min);
        let json = Bytes::from(serde_json::to_vec(&doc).map_err(ApiError::internal)?);
        let typescript = Bytes::from(crate::http::typescript::generate(
            &catalog,
            self.password_min,
        ));
        *self.lock() = Some(Built {
            catalog,
            json: json.clone(),
            typescript: typescript.clone(),
        });
        Ok((json, typescript))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Built>> {
        match self.built.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}
