//! The HTTP load generator: `connections` keep-alive HTTP/1.1 connections, each sending
//! the same POST again as soon as the answer came (a closed loop). By Little's law the
//! requests in flight are `connections` = throughput × latency, so the connection count
//! is what gives group commit requests to share a sync; each table's notes show the
//! product measured. It runs on a runtime of its own, on two threads, like `wrk -t2`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::report::{Sample, quantile_ms};

/// POSTs `body` to `path` from `connections` connections for `period`: requests per
/// second and latency. Any answer but 2xx is an error.
pub fn post(
    address: SocketAddr,
    path: &'static str,
    body: Bytes,
    connections: usize,
    period: Duration,
) -> crate::Result<Sample> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let started = Instant::now();
        let deadline = started + period;
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let body = body.clone();
            clients.spawn(async move {
                let stream = tokio::net::TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let request = Request::post(path)
                        .header("host", "bench")
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone()))?;
                    let sent = Instant::now();
                    let response = sender.send_request(request).await?;
                    let status = response.status();
                    response.into_body().collect().await?;
                    if !status.is_success() {
                        return Err(format!("answered {status}").into());
                    }
                    latencies.push(sent.elapsed().as_micros() as u32);
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies)
            });
        }
        let mut latencies = Vec::new();
        while let Some(done) = clients.join_next().await {
            latencies.extend(done?.map_err(|e| e.to_string())?);
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        Ok(Sample {
            value: latencies.len() as f64 / elapsed,
            p50_ms: Some(quantile_ms(&latencies, 0.5)),
            p99_ms: Some(quantile_ms(&latencies, 0.99)),
        })
    })
}
