//! The accept loop and the life of each connection.
//!
//! - A connection that sends nothing is closed after `header_read_timeout`, one with no
//!   request in flight after `idle_timeout` (keep-alive); a client slow to send its
//!   headers is cut `header_read_timeout` after their first byte. These are kept here,
//!   not by hyper, whose header timer also runs while a connection waits idle between
//!   requests.
//! - At most `max_connections` are open (fewer if the file descriptor limit is lower;
//!   the soft limit is raised to the hard one at start). At the limit a new connection
//!   takes the place of the one idle the longest (one that never sent a request first);
//!   when every connection has a request in flight, it is answered 503
//!   `too_many_connections` and closed, instead of failing to be accepted.
//! - A client that shuts down its sending side after its request is still answered.
//! - Requests hyper cannot parse (garbage, a bad header name, a URI or header section
//!   too long) are answered with the API's JSON error, like every other error.
//! - Shutdown stops accepting, lets the requests in flight finish within the drain
//!   deadline, and closes the rest.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::tls::Tls;
use crate::service::ServiceConfig;
use crate::shutdown::{Shutdown, Stopping};

/// How long a connection asked to close, with no request in flight, may take before it
/// is closed outright.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// File descriptors kept for everything but connections (logs, cursors, the status
/// store, connections to targets): at least this many, or a quarter of the limit.
const FD_RESERVE: u64 = 256;

/// What bounds the connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for the requests in flight.
    pub drain: Duration,
}

impl Limits {
    /// The limits `service` sets, the connections within the file descriptor limit
    /// (which this raises as far as it goes; see [`connection_limit`]).
    pub fn of(service: &ServiceConfig) -> Self {
        Self {
            header_read_timeout: service.http.header_read_timeout.get(),
            idle_timeout: service.http.idle_timeout.get(),
            max_connections: connection_limit(service.http.max_connections as usize),
            drain: service.shutdown_timeout.get(),
        }
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` completes, then
/// waits for the requests in flight, at most `limits.drain` long.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .half_close(true);
    let builder = Arc::new(builder);
    let connections = Arc::new(Connections::default());
    let shutdown_connections = Shutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors despite the limit (the rest of the
                        // process holds more than its reserve): make room if a
                        // connection is idle, else wait a little.
                        warn!(error = %e, "Accept failed.");
                        if !connections.evict_idlest() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        continue;
                    }
                };
                let acceptor = tls.as_ref().map(|tls| tls.acceptor());
                if connections.len() >= limits.max_connections && !connections.evict_idlest() {
                    tasks.spawn(refuse(stream, acceptor));
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let connection = connections.open();
                let serve = Serve {
                    app: app.clone(),
                    builder: builder.clone(),
                    connection,
                    connections: connections.clone(),
                    limits,
                    stopping: shutdown_connections.stopping(),
                };
                tasks.spawn(async move {
                    match acceptor {
                        None => serve.run(stream).await,
                        Some(acceptor) => serve.run_tls(stream, acceptor).await,
                    }
                });
            }
            // Reap finished connection tasks as they end, so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    shutdown_connections.stop();
    let drained = tokio::time::timeout(limits.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            seconds = limits.drain.as_secs(),
            "Requests still in flight at the end of the shutdown timeout."
        );
    }
}

/// The connections open now.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
}

impl Connections {
    fn open(&self) -> Arc<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(NO_HEAD),
            closing: AtomicBool::new(false),
            changed: Notify::new(),
        });
        self.lock().insert(id, connection.clone());
        connection
    }

    fn close(&self, connection: &Connection) {
        self.lock().remove(&connection.id);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Asks the connection idle the longest to close (one that never sent a request
    /// before any other); false when every connection has a request in flight.
    fn evict_idlest(&self) -> bool {
        let open = self.lock();
        let idlest = open
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
            .filter(|c| !c.closing.load(Ordering::Acquire))
            .min_by_key(|c| (c.requested.load(Ordering::Acquire), c.idle_since()));
        match idlest {
            Some(connection) => {
                connection.close();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open connection, as its watchdog and the accept loop see it.
struct Connection {
    id: u64,
    accepted: Instant,
    /// Requests being answered now.
    in_flight: AtomicUsize,
    /// Whether a request ever reached the service.
    requested: AtomicBool,
    /// When the last request was answered, in milliseconds after `accepted`.
    idle_since_ms: AtomicU64,
    /// When the first byte of the next request's head arrived, in milliseconds after
    /// `accepted`; [`NO_HEAD`] while none has.
    head_since_ms: AtomicU64,
    /// Asked to close (evicted).
    closing: AtomicBool,
    /// Wakes the watchdog: a request began or ended, or the connection is asked to
    /// close.
    changed: Notify,
}

/// No byte of a next request has arrived.
const NO_HEAD: u64 = u64::MAX;

impl Connection {
    fn idle_since(&self) -> Instant {
        self.accepted + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    fn now_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    /// When the connection is closed, if nothing happens before: `header_read_timeout`
    /// after it opened or after the first byte of a request head, `idle_timeout` after
    /// its last answer; none while a request is in flight.
    fn idle_deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_since_ms.load(Ordering::Acquire);
        Some(if head != NO_HEAD {
            self.accepted + Duration::from_millis(head) + limits.header_read_timeout
        } else if self.requested.load(Ordering::Acquire) {
            self.idle_since() + limits.idle_timeout
        } else {
            self.accepted + limits.header_read_timeout
        })
    }

    /// Bytes arrived: while no request is in flight they begin the next one's head.
    fn received(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self
                .head_since_ms
                .compare_exchange(NO_HEAD, self.now_ms(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// A request reached the service: the connection is busy until the guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.requested.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(NO_HEAD, Ordering::Release);
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

/// A request being answered on a connection.
struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let connection = &self.0;
        connection
            .idle_since_ms
            .store(connection.now_ms(), Ordering::Release);
        connection.in_flight.fetch_sub(1, Ordering::AcqRel);
        connection.changed.notify_one();
    }
}

/// What serving one connection needs.
struct Serve {
    app: Router,
    builder: Arc<Builder<TokioExecutor>>,
    connection: Arc<Connection>,
    connections: Arc<Connections>,
    limits: Limits,
    stopping: Stopping,
}

impl Serve {
    /// The TLS handshake first, within `header_read_timeout` (a client that opens a
    /// connection and sends nothing is cut like one that sends no request), then the
    /// requests over it.
    async fn run_tls(self, stream: TcpStream, acceptor: tokio_rustls::TlsAcceptor) {
        let handshake =
            tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream)).await;
        match handshake {
            Ok(Ok(stream)) => self.run(stream).await,
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed.");
                self.connections.close(&self.connection);
            }
            Err(_) => {
                debug!("TLS handshake timed out.");
                self.connections.close(&self.connection);
            }
        }
    }

    /// Serves the connection until it ends: closed by the client, for idleness,
    /// evicted, or at shutdown (after its requests in flight).
    async fn run<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Serve {
            app,
            builder,
            connection,
            connections,
            limits,
            stopping,
        } = self;
        let inner = TowerToHyperService::new(app);
        let counted = connection.clone();
        let service = hyper::service::service_fn(move |request| {
            let in_flight = counted.begin();
            let answer = hyper::service::Service::call(&inner, request);
            async move {
                let answer = answer.await;
                drop(in_flight);
                answer
            }
        });
        let io = TokioIo::new(Watched::new(stream, connection.clone()));
        let served = builder.serve_connection(io, service);
        tokio::pin!(served);
        // Since when the connection is asked to close gracefully (idle, evicted, or at
        // shutdown): with no request in flight it is closed outright `CLOSE_GRACE` later,
        // since hyper does not end a connection whose request head is half sent.
        let mut closing: Option<Instant> = None;
        loop {
            let deadline = match closing {
                Some(since) => Some(since + CLOSE_GRACE),
                None => connection.idle_deadline(&limits),
            };
            tokio::select! {
                ended = served.as_mut() => {
                    if let Err(e) = ended {
                        debug!(error = %e, "Connection ended with an error.");
                    }
                    break;
                }
                () = connection.changed.notified() => {
                    if closing.is_none() && connection.closing.load(Ordering::Acquire) {
                        closing = Some(Instant::now());
                        served.as_mut().graceful_shutdown();
                    }
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let idle = connection.idle_deadline(&limits);
                    match closing {
                        // Asked to close and still idle after the grace: closed now.
                        Some(_) if connection.in_flight.load(Ordering::Acquire) == 0 => break,
                        Some(_) => {}
                        // Still idle: nothing began since the deadline was taken.
                        None if idle.is_some_and(|d| d <= Instant::now()) => {
                            closing = Some(Instant::now());
                            served.as_mut().graceful_shutdown();
                        }
                        None => {}
                    }
                }
                // At shutdown the requests in flight finish within the drain deadline; the
                // idle connections close at once.
                () = stopping.wait(), if closing.is_none() => {
                    closing = Some(Instant::now());
                    served.as_mut().graceful_shutdown();
                }
            }
        }
        connections.close(&connection);
    }
}

/// Answers a connection over the limit with 503 `too_many_connections` (after the
/// handshake, on TLS), and closes it.
async fn refuse(stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        match tls {
            None => write_refusal(stream).await,
            Some(acceptor) => write_refusal(acceptor.accept(stream).await?).await,
        }
    })
    .await;
}

async fn write_refusal(mut stream: impl AsyncWrite + Unpin) -> io::Result<()> {
    let body = error_body(
        "too_many_connections",
        "the server has as many connections as it takes, each with a request in flight; retry later",
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// The API's JSON error body, for answers made outside the router.
fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"error": {
        "code": code,
        "message": message,
        "request_id": uuid::Uuid::now_v7().to_string(),
    }})
    .to_string()
}

/// The connection's stream as its watchdog sees it: it notes when the bytes of a new
/// request arrive, and it replaces hyper's bodiless answers to requests it cannot
/// parse (400, 414, 431, written before the request reaches the router) with the
/// API's JSON error. The router answers every error with a JSON body, so a head with
/// one of these statuses and `content-length: 0` can only be hyper's own.
struct Watched<S> {
    stream: S,
    connection: Arc<Connection>,
    /// The replacement answer not written yet.
    pending: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    fn new(stream: S, connection: Arc<Connection>) -> Self {
        Self {
            stream,
            connection,
            pending: Vec::new(),
        }
    }

    /// The JSON answer that replaces `head`, if it is hyper's answer to a request it
    /// could not parse.
    fn replacement(head: &[u8]) -> Option<Vec<u8>> {
        let (status, code, message) = if head.starts_with(b"HTTP/1.1 400 ") {
            (
                "400 Bad Request",
                "malformed_request",
                "the request is not valid HTTP/1.1 (its request line or a header could not be parsed)",
            )
        } else if head.starts_with(b"HTTP/1.1 414 ") {
            (
                "414 URI Too Long",
                "uri_too_long",
                "the request's URI is too long",
            )
        } else if head.starts_with(b"HTTP/1.1 431 ") {
            (
                "431 Request Header Fields Too Large",
                "headers_too_large",
                "the request's headers are too large or too many",
            )
        } else {
            return None;
        };
        let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
        let lower = head[..end].to_ascii_lowercase();
        if !lower.windows(19).any(|w| w == b"content-length: 0\r\n")
            && !lower.ends_with(b"content-length: 0")
        {
            return None;
        }
        let body = error_body(code, message);
        Some(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    /// Writes what is left of the replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.connection.received();
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(answer) = Self::replacement(buf) {
            info!(
                status = %String::from_utf8_lossy(&buf[9..12]),
                "A request could not be parsed; answered with a JSON error."
            );
            self.pending = answer;
            // hyper's answer counts as written: ours goes out in its place.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Raises the soft limit of open file descriptors to the hard limit (each connection
/// takes one), and returns how many connections fit in it beside the reserve for
/// everything else, at most `wanted`.
pub fn connection_limit(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return wanted;
    };
    let raised = match hard {
        Some(hard) if hard > soft => {
            let new = rustix::process::Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, new) {
                Ok(()) => {
                    info!(from = soft, to = hard, "File descriptor limit raised.");
                    hard
                }
                Err(e) => {
                    warn!(limit = soft, error = %e, "The file descriptor limit could not be raised.");
                    soft
                }
            }
        }
        None => return wanted,
        Some(_) => soft,
    };
    let room = raised.saturating_sub(FD_RESERVE.max(raised / 4)).max(1);
    let limit = usize::try_from(room).unwrap_or(usize::MAX).min(wanted);
    if limit < wanted {
        warn!(
            max_connections = limit,
            fd_limit = raised,
            "Fewer connections than `max_connections`: the file descriptor limit is lower."
        );
    }
    limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bodiless_parse_error_answers_are_replaced() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let replaced = Watched::<TcpStream>::replacement(hyper).map(String::from_utf8);
        let replaced = replaced.and_then(Result::ok).unwrap_or_default();
        assert!(
            replaced.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{replaced}"
        );
        assert!(
            replaced.contains("\"code\":\"malformed_request\""),
            "{replaced}"
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 99\r\n\r\n{}";
        assert!(Watched::<TcpStream>::replacement(ours).is_none());
        let ok = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
        assert!(Watched::<TcpStream>::replacement(ok).is_none());
        let long = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let long = Watched::<TcpStream>::replacement(long).unwrap_or_default();
        assert!(String::from_utf8_lossy(&long).contains("headers_too_large"));
    }
}
