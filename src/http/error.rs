//! API errors: each has a stable machine code and an HTTP status, and is answered as
//! `{"error": {"code", "message", "request_id"}}`. Internal details go to the log, never
//! into the answer.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::request_id::current_request_id;
use crate::source::WriteError;
use crate::source::schema::Violation;

/// Every error answer: `{"error": {"code", "message", "request_id"}}`; a timed-out
/// write also says `"durability": "unknown"`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// `unknown` when a write may or may not have become durable (504).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<String>,
    /// A batch none of whose messages was valid: each message's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<BatchResult>>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `namespace_not_found`.
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
    /// The request's `X-Request-Id`, also on every log line of the request.
    pub request_id: Option<String>,
    /// `schema_violation`: each way the payload breaks the namespace's schema (at most
    /// 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<Violation>>,
}

/// One message of a batch: 202 with its id, or its error.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResult {
    pub index: usize,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// For a message repeated with its idempotency key: the transaction of its first
    /// write, which holds it (the batch's transaction does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// True when the message was written before with the same idempotency key and
    /// body; nothing was appended for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub repeated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The documentation of an error answer, shared by every route.
#[derive(utoipa::ToResponse)]
#[response(description = "An error, with a stable code")]
pub struct ErrorResponse(#[allow(dead_code)] ErrorBody);

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("{0}")]
    InvalidMessage(String),
    #[error("no message of the batch is valid; see each result")]
    InvalidBatch(Vec<BatchResult>),
    #[error("no API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")]
    MissingKey,
    #[error("the API key is not valid for namespace `{0}`")]
    InvalidKey(String),
    #[error("the API key is not allowed to write to namespace `{0}`")]
    Forbidden(String),
    #[error("this route needs the admin key, and none is set: set `admin_key_sha256` in wald.toml")]
    AdminDisabled,
    #[error("the admin key is not valid")]
    InvalidAdminKey,
    #[error("namespace `{0}` does not exist")]
    NamespaceNotFound(String),
    #[error("namespace `{namespace}` has no target `{target}`")]
    TargetNotFound { namespace: String, target: String },
    #[error("the request body is larger than the limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("a message payload is larger than the namespace's limit of {0} bytes")]
    MessageTooLarge(u64),
    #[error("the payload does not satisfy the namespace's schema; see `violations`")]
    SchemaViolation(Vec<Violation>),
    #[error("namespace `{0}` cannot take writes now; retry later")]
    Unavailable(String),
    #[error("the backend of namespace `{namespace}` is unreachable; retry later ({reason})")]
    BackendUnavailable { namespace: String, reason: String },
    #[error(
        "namespace `{namespace}` is on the {backend} backend, which this route does not serve; use the backend's own tools (docs/operations.md)"
    )]
    UnsupportedByBackend {
        namespace: String,
        backend: &'static str,
    },
    #[error("the backend did not confirm the write; it may or may not be durable ({0})")]
    DurabilityUnknown(String),
    #[error("namespace `{0}` has too many writes waiting for durability; retry later")]
    Overloaded(String),
    #[error("namespace `{namespace}` is over its rate limit; retry after {retry_after} s")]
    RateLimited { namespace: String, retry_after: u64 },
    #[error("the disk of namespace `{0}` is full; retry later")]
    StorageFull(String),
    #[error(
        "free space under the data directory `{0}` is below `min_free_disk`; writes are taken again once space is back"
    )]
    StorageLow(String),
    #[error("transaction `{0}` is unknown, or older than the status store's retention")]
    TransactionNotFound(String),
    #[error("the transaction status store is unavailable; retry later")]
    StatusUnavailable,
    #[error("no such route")]
    RouteNotFound,
    #[error("this route does not take {0}; the `Allow` header says what it takes")]
    MethodNotAllowed(String),
    /// An error answer made without a JSON body (an extractor's rejection, a static
    /// asset not found), given one: its status and its text.
    #[error("{1}")]
    Http(StatusCode, String),
    #[error("an internal error; the request id leads to it in the log")]
    Internal,
    #[error("idempotency key `{0}` was used with another body")]
    IdempotencyConflict(String),
    #[error("a write with idempotency key `{0}` is in progress; retry later")]
    IdempotencyInProgress(String),
    #[error("the request took longer than {0} s; a write in it may or may not be durable")]
    TimedOut(u64),
    #[error("the request did not arrive in full within {0} s; nothing was written")]
    RequestTimeout(u64),
}

impl ApiError {
    /// The stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Malformed(_) => "malformed_request",
            ApiError::InvalidMessage(_) | ApiError::InvalidBatch(_) => "invalid_message",
            ApiError::MissingKey => "missing_api_key",
            ApiError::InvalidKey(_) => "invalid_api_key",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::AdminDisabled => "admin_disabled",
            ApiError::InvalidAdminKey => "invalid_api_key",
            ApiError::NamespaceNotFound(_) => "namespace_not_found",
            ApiError::TargetNotFound { .. } => "target_not_found",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::MessageTooLarge(_) => "message_too_large",
            ApiError::SchemaViolation(_) => "schema_violation",
            ApiError::Unavailable(_) => "namespace_unavailable",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::BackendUnavailable { .. } => "backend_unavailable",
            ApiError::UnsupportedByBackend { .. } => "unsupported_by_backend",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::StorageFull(_) => "storage_full",
            ApiError::StorageLow(_) => "storage_low",
            ApiError::RouteNotFound => "route_not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Http(status, _) => code_of_status(*status),
            ApiError::Internal => "internal_error",
            ApiError::TransactionNotFound(_) => "transaction_not_found",
            ApiError::StatusUnavailable => "status_unavailable",
            ApiError::TimedOut(_) | ApiError::DurabilityUnknown(_) => "durability_unknown",
            ApiError::IdempotencyConflict(_) => "idempotency_conflict",
            ApiError::IdempotencyInProgress(_) => "idempotency_in_progress",
            ApiError::RequestTimeout(_) => "request_timeout",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) | ApiError::InvalidMessage(_) | ApiError::InvalidBatch(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::MissingKey | ApiError::InvalidKey(_) | ApiError::InvalidAdminKey => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) | ApiError::AdminDisabled => StatusCode::FORBIDDEN,
            ApiError::NamespaceNotFound(_)
            | ApiError::TargetNotFound { .. }
            | ApiError::TransactionNotFound(_)
            | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::SchemaViolation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Http(status, _) => *status,
            ApiError::BodyTooLarge(_) | ApiError::MessageTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Unavailable(_)
            | ApiError::StorageFull(_)
            | ApiError::StorageLow(_)
            | ApiError::Overloaded(_)
            | ApiError::BackendUnavailable { .. }
            | ApiError::StatusUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TimedOut(_) | ApiError::DurabilityUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::UnsupportedByBackend { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::IdempotencyConflict(_) | ApiError::IdempotencyInProgress(_) => {
                StatusCode::CONFLICT
            }
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
                request_id: current_request_id(),
                violations: match self {
                    ApiError::SchemaViolation(violations) => Some(violations.clone()),
                    _ => None,
                },
            },
            durability: matches!(self, ApiError::TimedOut(_) | ApiError::DurabilityUnknown(_))
                .then(|| "unknown".to_string()),
            results: match self {
                ApiError::InvalidBatch(results) => Some(results.clone()),
                _ => None,
            },
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Malformed(message) => ApiError::Malformed(message),
            WriteError::Invalid(message) => ApiError::InvalidMessage(message),
            WriteError::TooLarge(limit) => ApiError::MessageTooLarge(limit),
            WriteError::SchemaViolation(violations) => ApiError::SchemaViolation(violations),
            WriteError::KeyConflict(key) => ApiError::IdempotencyConflict(key),
            WriteError::KeyInProgress(key) => ApiError::IdempotencyInProgress(key),
            WriteError::Overloaded(namespace) => ApiError::Overloaded(namespace),
            WriteError::RateLimited {
                namespace,
                retry_after,
            } => ApiError::RateLimited {
                namespace,
                retry_after,
            },
            WriteError::Unavailable(namespace) => ApiError::Unavailable(namespace),
            WriteError::BackendUnavailable { namespace, reason } => {
                ApiError::BackendUnavailable { namespace, reason }
            }
            WriteError::StorageFull(namespace) => ApiError::StorageFull(namespace),
            WriteError::DurabilityUnknown(reason) => ApiError::DurabilityUnknown(reason),
            WriteError::Internal => ApiError::Internal,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_SECONDS),
            _ => None,
        };
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The code of an error answer that came without one, by its status.
fn code_of_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "malformed_request",
        401 => "missing_api_key",
        404 => "route_not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "body_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "invalid_message",
        431 => "headers_too_large",
        500 => "internal_error",
        503 => "unavailable",
        _ if status.is_client_error() => "bad_request",
        _ => "internal_error",
    }
}

/// Every error answer is the API's JSON error: an answer of 400 or more without a
/// JSON body (axum's rejections of a path or query, the API page's assets, a 405) is
/// given one, with a code from its status and its text as the message; its headers
/// (`Allow`, `Retry-After`) stay.
pub async fn as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The bodies given here are short texts; anything longer is cut.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let text = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let json = ApiError::Http(status, text).into_response();
    let (json_parts, json_body) = json.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &json_parts.headers {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, json_body)
}
