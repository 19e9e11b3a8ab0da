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
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use http_body::Body as _;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::decompression::RequestDecompressionLayer;

use crate::service::CorsConfig;

/// The pages' policy: their own files, inline styles (the API documentation sets
/// them), images inline, calls to wald's own API only, never in a frame.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `router` with the security headers, CORS and compressed answers.
pub fn layers<S: Clone + Send + Sync + 'static>(router: Router<S>, cors: &CorsConfig) -> Router<S> {
    let router = router
        .layer(middleware::from_fn(close_when_body_unread))
        .layer(middleware::from_fn(security_headers))
        .layer(CompressionLayer::new().gzip(true).br(true));
    match cors_layer(cors) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The layer that decompresses request bodies (`gzip`, `zstd`, `br`); other encodings
/// are answered 415.
pub fn decompress_requests() -> RequestDecompressionLayer {
    RequestDecompressionLayer::new()
        .gzip(true)
        .zstd(true)
        .br(true)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let page = is_page(request.uri().path());
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
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
    response
}

/// Adds `Connection: close` to an HTTP/1 answer given before the request's body was
/// read to its end. The rest of that body is still on the connection, so the server
/// closes it after the answer; without the header a client would send its next request
/// on a connection about to close, and lose it. (HTTP/2 resets the one stream instead.)
async fn close_when_body_unread(request: Request, next: Next) -> Response {
    if request.version() >= axum::http::Version::HTTP_2 {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let ended = Arc::new(AtomicBool::new(body.is_end_stream()));
    let body = axum::body::Body::new(Watched {
        body,
        ended: ended.clone(),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !ended.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
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
fn is_page(path: &str) -> bool {
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
