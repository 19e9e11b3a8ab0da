//! The write routes: `POST /api/v1/wal/write` (one message) and
//! `POST /api/v1/wal/write/batch` (many messages for one namespace, answered per
//! message). A write is answered 202 only after the namespace's backend confirmed it.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::auth::authorize;
use super::error::{ApiError, BatchResult, ErrorResponse};
use super::state::AppState;
use crate::message::Durability;
use crate::runtime::Namespace;
use crate::source::{self, BatchIn, MessageIn, WriteError, WriteProgress};
use crate::telemetry::traces::{self, TraceContext};

/// The answer to a write: it is durable (or written, see `durability`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WriteAccepted {
    pub message_id: String,
    /// Look it up at `/api/v1/wal/transaction/{id}/status`.
    pub transaction_id: String,
    pub durability: Durability,
    /// True when an earlier write with the same idempotency key and body got these ids
    /// and nothing was appended now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeated: bool,
}

/// The answer to a batch some of whose messages were accepted: one result per
/// message, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchAccepted {
    /// Shared by the batch's accepted messages.
    pub transaction_id: String,
    /// How durable the accepted messages are.
    pub durability: Durability,
    pub results: Vec<BatchResult>,
}

#[utoipa::path(post, path = "/api/v1/wal/write", tag = "write",
    request_body = MessageIn,
    security((), ("api_key" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "Durable on the namespace's backend", body = WriteAccepted),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse),
        (status = 403, response = ErrorResponse), (status = 404, response = ErrorResponse),
        (status = 408, response = ErrorResponse),
        (status = 409, response = ErrorResponse), (status = 413, response = ErrorResponse),
        (status = 422, response = ErrorResponse),
        (status = 429, response = ErrorResponse), (status = 503, response = ErrorResponse),
        (status = 504, response = ErrorResponse),
    ))]
pub async fn write(
    State(state): State<Arc<AppState>>,
    progress: Option<axum::Extension<WriteProgress>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WriteAccepted>), ApiError> {
    let (mut message, body): (MessageIn, Bytes) = parse_body(&state, body)?;
    let namespace_name = message
        .namespace
        .clone()
        .ok_or_else(|| ApiError::Malformed("missing field `namespace`".into()))?;
    let namespace = find_namespace(&state, &namespace_name, &headers)?;
    let status = state.supervisor.status();
    let (span, trace) = traces::write(&namespace_name, 1, incoming_trace(&headers));
    message.trace = trace;
    let accepted = source::write(&namespace, status, message, &body, progress.map(|p| p.0))
        .await
        .map_err(|e| refused(&namespace, e));
    if let Ok(accepted) = &accepted {
        span.attribute("wald.transaction_id", accepted.transaction_id.clone());
    }
    end_span(span, &accepted);
    let accepted = accepted?;
    Ok((
        StatusCode::ACCEPTED,
        Json(WriteAccepted {
            message_id: accepted.message_id,
            transaction_id: accepted.transaction_id,
            durability: accepted.durability,
            repeated: accepted.repeated,
        }),
    ))
}

#[utoipa::path(post, path = "/api/v1/wal/write/batch", tag = "write",
    request_body = BatchIn,
    security((), ("api_key" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "The accepted messages are durable together; see each result", body = BatchAccepted),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse), (status = 408, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
        (status = 429, response = ErrorResponse), (status = 503, response = ErrorResponse),
        (status = 504, response = ErrorResponse),
    ))]
pub async fn write_batch(
    State(state): State<Arc<AppState>>,
    progress: Option<axum::Extension<WriteProgress>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BatchAccepted>), ApiError> {
    let (mut batch, _): (BatchIn, Bytes) = parse_body(&state, body)?;
    let namespace = find_namespace(&state, &batch.namespace, &headers)?;
    let status = state.supervisor.status();
    let (span, trace) = traces::write(
        &batch.namespace,
        batch.messages.len(),
        incoming_trace(&headers),
    );
    for message in &mut batch.messages {
        message.trace = trace.clone();
    }
    let written = source::write_batch(&namespace, status, batch, progress.map(|p| p.0))
        .await
        .map_err(|e| refused(&namespace, e));
    if let Ok(written) = &written {
        span.attribute("wald.transaction_id", written.transaction_id.clone());
    }
    end_span(span, &written);
    let written = written?;
    let results: Vec<BatchResult> = written
        .results
        .into_iter()
        .enumerate()
        .map(|(index, result)| match result {
            Ok(accepted) => BatchResult {
                index,
                status: StatusCode::ACCEPTED.as_u16(),
                message_id: Some(accepted.message_id),
                // A repeat belongs to its first write's transaction, not the batch's.
                transaction_id: accepted.repeated.then_some(accepted.transaction_id),
                repeated: accepted.repeated,
                error: None,
            },
            Err(e) => {
                let e = refused(&namespace, e);
                BatchResult {
                    index,
                    status: e.status().as_u16(),
                    message_id: None,
                    transaction_id: None,
                    repeated: false,
                    error: Some(e.body().error),
                }
            }
        })
        .collect();
    if results.iter().all(|r| r.error.is_some()) {
        return Err(ApiError::InvalidBatch(results));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchAccepted {
            transaction_id: written.transaction_id,
            durability: written.durability,
            results,
        }),
    ))
}

/// The writer's trace context: its `traceparent` and `tracestate` headers.
fn incoming_trace(headers: &HeaderMap) -> Option<TraceContext> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    TraceContext::parse(text("traceparent"), text("tracestate"))
}

/// Ends a write's span with what became of the write.
fn end_span<T>(span: traces::Span, result: &Result<T, ApiError>) {
    let (error, status) = match result {
        Ok(_) => (None, StatusCode::ACCEPTED),
        Err(e) => (Some(e.to_string()), e.status()),
    };
    span.attribute("http.response.status_code", i64::from(status.as_u16()));
    span.end(error.as_deref());
}

/// A refused write as an answer, counted among the namespace's refusals by its code.
fn refused(namespace: &Namespace, e: WriteError) -> ApiError {
    let e = ApiError::from(e);
    namespace.counters.refused(e.code());
    e
}

/// The request body as `T`, within the body limit and the JSON depth limit.
fn parse_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(T, Bytes), ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge(state.service.http.max_body_bytes.bytes())
        } else {
            // Mostly a body that ended before its declared `Content-Length`.
            ApiError::Malformed(format!(
                "the request body could not be read in full ({})",
                rejection.body_text()
            ))
        }
    })?;
    let max_depth = state.service.http.max_json_depth as usize;
    if json_depth(&body) > max_depth {
        return Err(ApiError::Malformed(format!(
            "JSON nested deeper than {max_depth} levels"
        )));
    }
    let parsed = serde_json::from_slice(&body).map_err(|e| ApiError::Malformed(e.to_string()))?;
    Ok((parsed, body))
}

/// The namespace a write goes to, once the caller may write to it and there is room
/// for the write: free space under `data_dir` is not below `min_free_disk`, when the
/// namespace's log or the status store lives there.
fn find_namespace(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
) -> Result<Arc<Namespace>, ApiError> {
    let running = state.running();
    let namespace = running
        .namespaces
        .get(name)
        .ok_or_else(|| ApiError::NamespaceNotFound(name.to_string()))?;
    authorize(headers, namespace, running.namespaces.values())?;
    let on_data_dir = namespace.pipeline.config.producer.is_embedded()
        || state.supervisor.status().kind() == "embedded";
    if on_data_dir && state.resources.storage_low() {
        let e = ApiError::StorageLow(state.service.data_dir.display().to_string());
        namespace.counters.refused(e.code());
        return Err(e);
    }
    Ok(namespace.clone())
}

/// How deeply `bytes` nest arrays and objects, strings skipped; a cheap bound checked
/// before parsing so that a deep document costs no recursion.
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_skips_strings() {
        assert_eq!(json_depth(br#"{"a": [1, {"b": "[[[{{{"}]}"#), 3);
        assert_eq!(json_depth(br#""\"[""#), 0);
        assert_eq!(json_depth(b"[[[[]]]]"), 4);
    }
}
