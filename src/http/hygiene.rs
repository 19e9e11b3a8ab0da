//! What every answer carries for browsers and proxies, and how bodies are compressed.
//!
//! - Security headers on every answer: `X-Content-Type-Options: nosniff` and
//!   `Referrer-Policy: no-referrer`; on the pages (`/ui/`, `/api/docs`) a
//!   `Content-Security-Policy` that lets them load only wald's own scripts and call only
//!   wald's API, and `X-Frame-Options: DENY`; `Cache-Control: no-store` on the API's
//!   answers (statuses and messages are never kept by a cache).
//! - CORS: off unless `[http.cors] allowed_origins` names origins.
//! - Answers compressed (gzip, brotli) for clients that ask with `Accept-Encoding`.
//! - Request bodies compressed with `Content-Encoding: gzip`, `zstd` or `br` on the
//!   write routes ([`decompress_requests`]); the body limit counts the decompressed
//!   bytes as they come, so a decompression bomb is answered 413 after
//!   `max_body_bytes`.
//! - An answer given before its request's body was read to the end (a 413, a 401, a
//!   body that does not decompress) says `Connection: close`: the server closes such a
//!   connection, and a client must not send its next request on it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use http_body::Body as _;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::decompression::RequestDecompressionLayer;

use crate::service::CorsConfig;

/// The pages' policy: their own files, inline styles (the API documentation sets
/// them), images inline, calls to wald's own API only, never in a frame.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `router` with CORS for the configured origins (none: browsers then refuse
/// cross-origin calls).
pub fn with_cors<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    cors: &CorsConfig,
) -> Router<S> {
    match cors_layer(cors) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The layer that compresses answers (gzip, brotli) for clients that ask; not on the
/// write routes, whose answers are a few hundred bytes.
pub fn compress_answers() -> CompressionLayer {
    CompressionLayer::new().gzip(true).br(true)
}

/// The layer that decompresses request bodies (`gzip`, `zstd`, `br`); other encodings
/// are answered 415.
pub fn decompress_requests() -> RequestDecompressionLayer {
    RequestDecompressionLayer::new()
        .gzip(true)
        .zstd(true)
        .br(true)
}

/// Sets the security headers on an answer; `page` for the pages a browser renders.
pub fn secure(headers: &mut HeaderMap, page: bool) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if page {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    } else if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// Watches an HTTP/1 request's body: the flag says, once the request is answered,
/// whether the body was read to its end. An answer given before that must say
/// `Connection: close` ([`close_if_unread`]). None for HTTP/2, which resets the one
/// stream instead.
pub fn watch_body(request: Request) -> (Request, Option<Arc<AtomicBool>>) {
    if request.version() >= axum::http::Version::HTTP_2 {
        return (request, None);
    }
    let (parts, body) = request.into_parts();
    let ended = Arc::new(AtomicBool::new(body.is_end_stream()));
    let body = axum::body::Body::new(Watched {
        body,
        ended: ended.clone(),
    });
    (Request::from_parts(parts, body), Some(ended))
}

/// Adds `Connection: close` to an answer given before its request's body was read to
/// its end. The rest of that body is still on the connection, so the server closes it
/// after the answer; without the header a client would send its next request on a
/// connection about to close, and lose it.
pub fn close_if_unread(headers: &mut HeaderMap, ended: Option<&AtomicBool>) {
    if ended.is_some_and(|ended| !ended.load(Ordering::Acquire)) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// A request body that notes when it has been read to its end.
struct Watched {
    body: axum::body::Body,
    ended: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.body.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The status page and the API documentation, which a browser renders.
pub fn is_page(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/") || path.starts_with("/api/docs")
}

/// CORS for the configured origins, or none (browsers then refuse cross-origin calls).
fn cors_layer(config: &CorsConfig) -> Option<CorsLayer> {
    if config.allowed_origins.is_empty() {
        return None;
    }
    let origin = if config.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("tracestate"),
            ])
            .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}
