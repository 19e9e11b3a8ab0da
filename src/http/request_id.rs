//! `X-Request-Id`: taken from the request when the client sent a sane one, else made;
//! returned on every response, in error bodies, and on every log line of the request.

use axum::http::HeaderMap;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, for error bodies.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The request's id: the client's `X-Request-Id` when it is sane (printable ASCII, 1 to
/// 128 bytes), else a new one.
pub fn of(headers: &HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(crate::message::new_id, str::to_string)
}

/// Runs `work` as the request `id`: error bodies made within it carry the id.
pub async fn scope<T>(id: String, work: impl Future<Output = T>) -> T {
    REQUEST_ID.scope(id, work).await
}
