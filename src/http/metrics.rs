//! Metrics: `GET /api/v1/wal/namespace/{ns}/metrics` (JSON) and `GET /metrics`
//! (Prometheus text format), both read from the namespaces' counters and logs. Metric
//! names are in [`crate::telemetry::metric`].

use std::fmt::Write;
use std::sync::Arc;

use axum::Json;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{ApiError, ErrorResponse};
use super::state::AppState;
use crate::component::Component;
use crate::consumer::breaker::CircuitState;
use crate::producer::LogStats;
use crate::runtime::Namespace;
use crate::runtime::counters::LATENCY_BUCKETS;
use crate::runtime::supervisor::ReloadResult;
use crate::telemetry::metric;

/// Middleware: counts each request by its route (the pattern, not the path) and status.
pub async fn count(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state.http.count(route, response.status().as_u16());
    response
}

/// Counters of one namespace as JSON: writes accepted and refused, append latency,
/// log appends, records and syncs.
#[utoipa::path(get, path = "/api/v1/wal/namespace/{namespace}/metrics", tag = "status",
    params(("namespace" = String, Path, description = "The namespace's name", example = "demo")),
    responses(
        (status = 200, description = "The namespace's counters", body = Object),
        (status = 404, response = ErrorResponse),
    ))]
pub async fn namespace_metrics(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let namespace = state.namespace(&name)?;
    let counters = &namespace.counters;
    let (_, latency_sum, latency_count) = counters.latency();
    let mut body = json!({
        "namespace": namespace.name(),
        "writes": {
            "accepted_messages": counters.accepted.load(std::sync::atomic::Ordering::Relaxed),
            "payload_bytes": counters.payload_bytes.load(std::sync::atomic::Ordering::Relaxed),
            "refused": counters.refused_by_code(),
            "mean_append_latency_ms": if latency_count == 0 { 0.0 } else { latency_sum * 1000.0 / latency_count as f64 },
        },
    });
    let backend = namespace.backend.as_ref();
    if let (Some(stats), Some(log)) = (
        backend.and_then(|b| b.stats()),
        backend.and_then(|b| b.log_position()),
    ) {
        let LogStats {
            appends,
            records,
            syncs,
            bytes,
        } = stats;
        body["log"] = json!({
            "appends": appends,
            "records": records,
            "syncs": syncs,
            "bytes": bytes,
            "records_per_sync": if syncs == 0 { 0.0 } else { records as f64 / syncs as f64 },
            "next_offset": log.next_offset,
        });
    }
    Ok(Json(body))
}

/// Every metric in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "status",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn prometheus(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    counter_family(
        &mut out,
        metric::NAMESPACE_UP,
        "gauge",
        "1 when the namespace takes writes.",
        &state,
        |n| vec![(String::new(), u64::from(n.unavailable().is_none()))],
    );
    counter_family(
        &mut out,
        metric::WRITE_MESSAGES,
        "counter",
        "Messages acknowledged.",
        &state,
        |n| {
            vec![(
                String::new(),
                n.counters
                    .accepted
                    .load(std::sync::atomic::Ordering::Relaxed),
            )]
        },
    );
    counter_family(
        &mut out,
        metric::WRITE_PAYLOAD_BYTES,
        "counter",
        "Payload bytes acknowledged.",
        &state,
        |n| {
            vec![(
                String::new(),
                n.counters
                    .payload_bytes
                    .load(std::sync::atomic::Ordering::Relaxed),
            )]
        },
    );
    counter_family(
        &mut out,
        metric::WRITE_REFUSED,
        "counter",
        "Write requests refused, by error code.",
        &state,
        |n| {
            n.counters
                .refused_by_code()
                .into_iter()
                .map(|(code, count)| (format!(",code=\"{code}\""), count))
                .collect()
        },
    );
    let log_stat = |stat: fn(&LogStats) -> u64| {
        move |n: &Namespace| {
            let stats = n.backend.as_ref().and_then(|b| b.stats());
            stats.map_or_else(Vec::new, |s| vec![(String::new(), stat(&s))])
        }
    };
    counter_family(
        &mut out,
        metric::LOG_APPENDS,
        "counter",
        "Append requests written to the log.",
        &state,
        log_stat(|s| s.appends),
    );
    counter_family(
        &mut out,
        metric::LOG_RECORDS,
        "counter",
        "Records written to the log.",
        &state,
        log_stat(|s| s.records),
    );
    counter_family(
        &mut out,
        metric::LOG_SYNCS,
        "counter",
        "fdatasync calls of the log; records/syncs is the group-commit factor.",
        &state,
        log_stat(|s| s.syncs),
    );
    counter_family(
        &mut out,
        metric::LOG_BYTES,
        "counter",
        "Bytes written to the log.",
        &state,
        log_stat(|s| s.bytes),
    );
    counter_family(
        &mut out,
        metric::LOG_NEXT_OFFSET,
        "gauge",
        "Offset the next record of the log gets.",
        &state,
        |n| {
            let log = n.backend.as_ref().and_then(|b| b.log_position());
            log.map_or_else(Vec::new, |l| vec![(String::new(), l.next_offset)])
        },
    );

    counter_family(
        &mut out,
        metric::DELIVERIES,
        "counter",
        "Delivery outcomes, by target: delivered, retried (a failed attempt followed by another), dead_lettered, skipped (by a filter).",
        &state,
        |n| {
            n.kept
                .counters
                .snapshot()
                .into_iter()
                .flat_map(|(target, c)| {
                    [
                        ("delivered", c.delivered),
                        ("retried", c.retried),
                        ("dead_lettered", c.dead_lettered),
                        ("skipped", c.skipped),
                    ]
                    .map(|(outcome, count)| {
                        (format!(",target=\"{target}\",outcome=\"{outcome}\""), count)
                    })
                })
                .collect()
        },
    );

    counter_family(
        &mut out,
        metric::CIRCUIT_STATE,
        "gauge",
        "A target's circuit breaker: 1 for the state it is in (closed, open, half_open), 0 for the others.",
        &state,
        |n| {
            n.circuits()
                .into_iter()
                .flat_map(|(target, c)| {
                    [
                        ("closed", CircuitState::Closed),
                        ("open", CircuitState::Open),
                        ("half_open", CircuitState::HalfOpen),
                    ]
                    .map(|(name, state)| {
                        let labels = format!(",target=\"{target}\",state=\"{name}\"");
                        (labels, u64::from(c.state == state))
                    })
                })
                .collect()
        },
    );
    counter_family(
        &mut out,
        metric::CIRCUIT_OPENED,
        "counter",
        "Times a target's circuit breaker opened since start.",
        &state,
        |n| {
            n.circuits()
                .into_iter()
                .map(|(target, c)| (format!(",target=\"{target}\""), c.opened))
                .collect()
        },
    );

    let _ = writeln!(
        out,
        "# HELP {} Append latency, from admission to the backend's confirmation.",
        metric::APPEND_LATENCY
    );
    let _ = writeln!(out, "# TYPE {} histogram", metric::APPEND_LATENCY);
    for n in state.running().namespaces.values() {
        let (cumulative, sum, count) = n.counters.latency();
        let labels = format!("namespace=\"{}\"", n.name());
        for (bound, value) in LATENCY_BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".to_string()])
            .zip(&cumulative)
        {
            let _ = writeln!(
                out,
                "{}_bucket{{{labels},le=\"{bound}\"}} {value}",
                metric::APPEND_LATENCY
            );
        }
        let _ = writeln!(out, "{}_sum{{{labels}}} {sum}", metric::APPEND_LATENCY);
        let _ = writeln!(out, "{}_count{{{labels}}} {count}", metric::APPEND_LATENCY);
    }

    let _ = writeln!(
        out,
        "# HELP {} HTTP requests answered, by route and status.",
        metric::HTTP_REQUESTS
    );
    let _ = writeln!(out, "# TYPE {} counter", metric::HTTP_REQUESTS);
    for (route, status, count) in state.http.snapshot() {
        let _ = writeln!(
            out,
            "{}{{route=\"{route}\",status=\"{status}\"}} {count}",
            metric::HTTP_REQUESTS
        );
    }
    reload_metrics(&mut out, &state);
    component_metrics(&mut out, &state);
    alert_metrics(&mut out, &state);
    resource_metrics(&mut out, &state);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Reloads by result, their total duration, the running generation and the files in
/// quarantine.
fn reload_metrics(out: &mut String, state: &AppState) {
    let running = state.running();
    let history = state.supervisor.history();
    let header = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    header(
        out,
        metric::RELOADS,
        "counter",
        "Reloads of the pipeline files, by result.",
    );
    for (result, count) in ReloadResult::ALL.iter().zip(history.counts) {
        let _ = writeln!(
            out,
            "{}{{result=\"{}\"}} {count}",
            metric::RELOADS,
            result.as_str()
        );
    }
    let name = metric::RELOAD_DURATION;
    header(out, name, "summary", "Time spent reloading.");
    let _ = writeln!(out, "{name}_sum {}", history.seconds);
    let _ = writeln!(out, "{name}_count {}", history.counts.iter().sum::<u64>());
    let name = metric::CONFIG_GENERATION;
    header(
        out,
        name,
        "gauge",
        "The generation of pipeline files running.",
    );
    let _ = writeln!(out, "{name} {}", running.generation);
    let name = metric::QUARANTINED_FILES;
    header(
        out,
        name,
        "gauge",
        "Pipeline files rejected by the last reload.",
    );
    let _ = writeln!(out, "{name} {}", running.quarantined.len());
}

/// Each background part: whether it runs, and its failures since start; the
/// service's own parts with `namespace=""`.
fn component_metrics(out: &mut String, state: &AppState) {
    let running = state.running();
    let mut parts: Vec<(&str, Component)> = state
        .supervisor
        .components
        .all()
        .into_iter()
        .map(|c| ("", c))
        .collect();
    for n in running.namespaces.values() {
        parts.extend(n.kept.components.all().into_iter().map(|c| (n.name(), c)));
    }
    let mut family = |name: &str, kind: &str, help: &str, value: fn(&Component) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (namespace, c) in &parts {
            let _ = writeln!(
                out,
                "{name}{{namespace=\"{namespace}\",component=\"{}\"}} {}",
                c.name(),
                value(c)
            );
        }
    };
    family(
        metric::COMPONENT_UP,
        "gauge",
        "1 while a background part runs, 0 while it is degraded or stalled.",
        |c| u64::from(c.is_running()),
    );
    family(
        metric::COMPONENT_FAILURES,
        "counter",
        "Failures of a background part since start (each is retried).",
        |c| c.status().failures,
    );
}

/// Free disk under `data_dir`, resident memory, and their limits.
fn resource_metrics(out: &mut String, state: &AppState) {
    let resources = state.resources.status();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {value}");
    };
    gauge(
        metric::DATA_DIR_FREE_BYTES,
        "Free space on the file system of the data directory.",
        resources.free_disk_bytes,
    );
    gauge(
        metric::DATA_DIR_TOTAL_BYTES,
        "Size of the file system of the data directory.",
        resources.total_disk_bytes,
    );
    gauge(
        metric::DATA_DIR_MIN_FREE_BYTES,
        "`min_free_disk`: below it, writes are refused.",
        resources.min_free_disk_bytes,
    );
    gauge(
        metric::STORAGE_LOW,
        "1 while free space is below `min_free_disk` and writes are refused.",
        u64::from(resources.storage_low),
    );
    gauge(
        metric::RESIDENT_MEMORY_BYTES,
        "Resident memory of the process.",
        resources.resident_memory_bytes,
    );
    if let Some(limit) = resources.max_resident_memory_bytes {
        gauge(
            metric::RESIDENT_MEMORY_LIMIT_BYTES,
            "`max_resident_memory`: above it, readiness fails.",
            limit,
        );
    }
}

/// Alerts by what became of them.
fn alert_metrics(out: &mut String, state: &AppState) {
    let counts = &state.supervisor.alerts.counts;
    let name = metric::ALERTS;
    let _ = writeln!(
        out,
        "# HELP {name} Alerts posted, held for a summary, failed (after their last try) and dropped (queue full)."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for (outcome, count) in [
        ("posted", &counts.posted),
        ("held", &counts.held),
        ("failed", &counts.failed),
        ("dropped", &counts.dropped),
    ] {
        let count = count.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {count}");
    }
}

/// Writes one metric family with a sample per namespace (and per extra label set).
fn counter_family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    state: &AppState,
    samples: impl Fn(&Namespace) -> Vec<(String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for n in state.running().namespaces.values() {
        for (extra_labels, value) in samples(n) {
            let _ = writeln!(
                out,
                "{name}{{namespace=\"{}\"{extra_labels}}} {value}",
                n.name()
            );
        }
    }
}
