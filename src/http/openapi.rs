//! The API's OpenAPI document, generated from the handlers' annotations and served at
//! `/api/openapi.json`, with a documentation page at `/api/docs` whose assets are inside
//! the binary (it works with no internet).

use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa_swagger_ui::SwaggerUi;

use super::{admin, dlq, error, health, ingest, messages, metrics, transaction};

#[derive(OpenApi)]
#[openapi(
    info(title = "wald", description = "A write-ahead-log service: durable HTTP ingest, delivery to many targets, DLQ and replay."),
    paths(
        ingest::write,
        ingest::write_batch,
        health::namespaces,
        health::namespace_status,
        messages::recent,
        metrics::namespace_metrics,
        transaction::transaction_status,
        dlq::list,
        dlq::replay,
        health::health,
        health::liveness,
        health::readiness,
        metrics::prometheus,
        admin::pipelines,
        admin::reload,
        admin::plan,
        admin::pause,
        admin::resume,
    ),
    components(
        schemas(error::ErrorBody, crate::consumer::replay::EntryState),
        responses(error::ErrorResponse)
    ),
    modifiers(&Security),
    tags(
        (name = "write", description = "Durable writes"),
        (name = "status", description = "Namespaces, transactions and metrics"),
        (name = "dlq", description = "Dead-letter queues (admin key)"),
        (name = "health", description = "Probes"),
        (name = "admin", description = "Pipelines, reload and plan (admin key)"),
    )
)]
pub struct ApiDoc;

/// The two ways to send a namespace's API key.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `/api/openapi.json` and the documentation page at `/api/docs`.
pub fn routes() -> SwaggerUi {
    SwaggerUi::new("/api/docs").url("/api/openapi.json", ApiDoc::openapi())
}
