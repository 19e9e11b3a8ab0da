//! One running namespace: its configuration, its storage, the hashes of its API keys,
//! and whether it is up. A reload that changes a namespace makes a new `Namespace`
//! from the old one ([`Namespace::reconfigure`]): the storage, its counters and
//! whatever the change leaves alone move over; only what changed is restarted.

use serde_json::json;
use tracing::error;

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::alerts::Alerts;
use crate::component::Components;
use crate::consumer::breaker::CircuitStatus;
use crate::consumer::pause::Pauses;
use crate::consumer::{BuildError, Delivery, Kept, Targets};
use crate::pipeline::LoadedPipeline;
use crate::producer::Backend;
use crate::producer::embedded::namespace_dir;
use crate::runtime::counters::{DeliveryCounters, WriteCounters};
use crate::runtime::tailer::Tailer;
use crate::service::ServiceConfig;
use crate::source::idempotency::IdempotencyStore;
use crate::source::limits::Admission;
use crate::status::StatusStore;

/// A namespace as the server runs it.
pub struct Namespace {
    pub pipeline: LoadedPipeline,
    /// Its log, when the backend opened: the only road to it.
    pub backend: Option<Arc<dyn Backend>>,
    /// Why it does not run, if it does not.
    pub failure: Option<String>,
    /// SHA-256 of each API key allowed to write, decoded once for constant-time checks.
    pub key_hashes: Vec<[u8; 32]>,
    /// Rate limit and the bound on writes waiting for durability.
    pub admission: Admission,
    /// Writes accepted and refused, append latency; kept across reloads.
    pub counters: Arc<WriteCounters>,
    /// Delivery outcomes per target, what is paused, the health of its background
    /// parts (delivery, its cursor, the delay runner, the DLQ, the status tailer);
    /// kept across reloads.
    pub kept: Kept,
    /// Idempotency keys of its writes, when its storage opened.
    pub idempotency: Option<Arc<IdempotencyStore>>,
    /// The status tailer, taken when the namespace closes.
    tailer: Mutex<Option<Tailer>>,
    /// Delivery to the targets, taken when the namespace closes.
    delivery: Mutex<Option<Delivery>>,
}

impl Namespace {
    /// Opens the namespace's storage under `service.data_dir`, starts its status
    /// tailer and its delivery; a failure (corruption found by recovery) keeps this
    /// namespace down and leaves the others alone.
    pub async fn open(
        pipeline: LoadedPipeline,
        service: &ServiceConfig,
        status: &Arc<StatusStore>,
        alerts: &Alerts,
    ) -> Self {
        let targets = Targets::build(&pipeline.config, alerts).await;
        Self::open_with(pipeline, targets, service, status, alerts).await
    }

    /// [`Namespace::open`] with targets built already.
    pub async fn open_with(
        pipeline: LoadedPipeline,
        targets: Result<Targets, BuildError>,
        service: &ServiceConfig,
        status: &Arc<StatusStore>,
        alerts: &Alerts,
    ) -> Self {
        let data_dir = &service.data_dir;
        let config = &pipeline.config;
        let (backend, failure) = match crate::producer::open(
            &config.namespace,
            &config.producer,
            data_dir,
        ) {
            Ok(backend) => (Some(backend), None),
            Err(e) => {
                error!(namespace = %config.namespace, error = %e, "Namespace failed to open its log.");
                (None, Some(e.to_string()))
            }
        };
        let components = Arc::new(Components::new(Some(&config.namespace)));
        let idempotency = match &backend {
            Some(backend) => IdempotencyStore::open(
                &namespace_dir(data_dir, &config.namespace).join("idempotency.log"),
                service.status_store.retention.get(),
                backend.clone(),
                components.get("idempotency_journal"),
            )
            .await
            .inspect_err(|e| error!(namespace = %config.namespace, error = %e, "Idempotency keys unavailable."))
            .ok(),
            None => None,
        };
        let tailer = backend
            .as_ref()
            .filter(|_| config.producer.is_embedded())
            .map(|backend| start_tailer(config, backend, status, &components));
        let pauses_at = namespace_dir(data_dir, &config.namespace).join("paused.json");
        let pauses = Pauses::open(&pauses_at).unwrap_or_else(|e| {
            // What an operator paused is not delivered on a guess: all of it waits.
            error!(namespace = %config.namespace, error = %e, "Pauses unreadable: the namespace's delivery is paused until resumed.");
            Pauses::paused_at(&pauses_at)
        });
        let kept = Kept {
            counters: Arc::new(DeliveryCounters::default()),
            replays: Arc::default(),
            pauses: Arc::new(pauses),
            components,
            alerts: alerts.clone(),
        };
        let delivery = backend.as_ref().map(|backend| {
            Delivery::start(
                config,
                targets,
                backend.clone(),
                status.clone(),
                tailer.as_ref().map(|t| t.indexed.clone()),
                &kept,
            )
        });
        Self {
            key_hashes: key_hashes(config),
            admission: Admission::new(
                config.source.rate_limit,
                service.http.max_in_flight_per_namespace,
            ),
            delivery: Mutex::new(delivery),
            pipeline,
            backend,
            failure,
            counters: Arc::default(),
            idempotency,
            kept,
            tailer: Mutex::new(tailer),
        }
    }

    /// This namespace with a changed configuration, on the same storage: the log takes
    /// the new `[producer]` settings in place; the write path (keys, limits) the new
    /// `[source]`; the status tailer and delivery move over as they run, for
    /// [`Namespace::restart_delivery`] when the consumer or the targets changed. `self`
    /// is left without tailer or delivery, to be dropped.
    pub fn reconfigure(&self, pipeline: LoadedPipeline, service: &ServiceConfig) -> Self {
        let config = &pipeline.config;
        if let Some(backend) = &self.backend {
            backend.reconfigure(&config.producer);
        }
        Self {
            key_hashes: key_hashes(config),
            admission: Admission::new(
                config.source.rate_limit,
                service.http.max_in_flight_per_namespace,
            ),
            delivery: Mutex::new(take(&self.delivery)),
            tailer: Mutex::new(take(&self.tailer)),
            backend: self.backend.clone(),
            failure: self.failure.clone(),
            counters: self.counters.clone(),
            kept: self.kept.clone(),
            idempotency: self.idempotency.clone(),
            pipeline,
        }
    }

    /// Stops delivery after its in-flight batches (and their commit) and starts it
    /// again with this namespace's consumer settings and `targets`, built beforehand,
    /// from the same cursor; the status tailer restarts too when `targets_changed`.
    pub async fn restart_delivery(
        &self,
        targets: Targets,
        targets_changed: bool,
        status: &Arc<StatusStore>,
    ) {
        let Some(backend) = &self.backend else {
            return;
        };
        let config = &self.pipeline.config;
        if let Some(old) = take(&self.delivery) {
            old.stop().await;
        }
        if targets_changed && config.producer.is_embedded() {
            if let Some(old) = take(&self.tailer) {
                old.stop().await;
            }
            let tailer = start_tailer(config, backend, status, &self.kept.components);
            if let Ok(mut slot) = self.tailer.lock() {
                *slot = Some(tailer);
            }
        }
        let delivery = Delivery::start(
            config,
            Ok(targets),
            backend.clone(),
            status.clone(),
            self.status_indexed(),
            &self.kept,
        );
        if let Ok(mut slot) = self.delivery.lock() {
            *slot = Some(delivery);
        }
    }

    /// How far the status tailer has recorded the log in the status store.
    pub fn status_indexed(&self) -> Option<watch::Receiver<u64>> {
        self.tailer.lock().ok()?.as_ref().map(|t| t.indexed.clone())
    }

    pub fn name(&self) -> &str {
        &self.pipeline.config.namespace
    }

    /// Why the namespace cannot take writes now, if it cannot: it did not open, or
    /// its backend failed or is unreachable.
    pub fn unavailable(&self) -> Option<String> {
        self.failure
            .clone()
            .or_else(|| self.backend.as_ref()?.unavailable())
    }

    /// Whether the namespace is healthy but has not started delivering yet: readiness
    /// waits for it. A failed namespace or delivery is not waited for.
    pub fn starting(&self) -> bool {
        self.unavailable().is_none()
            && self
                .with_delivery(|d| d.failure().is_none() && !d.started())
                .unwrap_or(false)
    }

    /// Why delivery does not run, if it does not.
    pub fn delivery_failure(&self) -> Option<String> {
        self.with_delivery(Delivery::failure).flatten()
    }

    /// Each target's circuit breaker, once delivery built the targets.
    pub fn circuits(&self) -> std::collections::BTreeMap<String, CircuitStatus> {
        self.with_delivery(Delivery::circuits).unwrap_or_default()
    }

    /// `f` of the namespace's delivery, while it has one.
    fn with_delivery<T>(&self, f: impl FnOnce(&Delivery) -> T) -> Option<T> {
        self.delivery.lock().ok()?.as_ref().map(f)
    }

    /// The namespace's state for the health and status answers: `failed` when it did
    /// not open or its log failed, `backend_unavailable` while its backend cannot be
    /// reached (writes get 503 and everything resumes when it is back), else `running`.
    pub fn health(&self) -> serde_json::Value {
        let backend_error = self.backend.as_ref().and_then(|b| b.unavailable());
        let failing = self.kept.components.failing();
        // A failed embedded log stays failed until an operator steps in; a shared
        // backend that cannot be reached comes back by itself.
        let local = self.pipeline.config.producer.is_embedded();
        let state = match (&self.failure, &backend_error) {
            (Some(_), _) => "failed",
            (None, Some(_)) if local => "failed",
            (None, Some(_)) => "backend_unavailable",
            (None, None) if !failing.is_empty() => "degraded",
            (None, None) => "running",
        };
        let mut health = json!({
            "namespace": self.name(),
            "backend": self.pipeline.config.producer.kind(),
            "state": state,
        });
        if let Some(error) = self.unavailable() {
            health["error"] = json!(error);
        }
        if let Some(error) = self.delivery_failure() {
            health["delivery_error"] = json!(error);
        }
        health["components"] = json!(self.kept.components.statuses());
        if let Some(log) = self.backend.as_ref().and_then(|b| b.log_position()) {
            health["log"] = json!({
                "first_offset": log.first_offset,
                "next_offset": log.next_offset,
                "segments": log.segments,
            });
        }
        health
    }

    /// Stops delivery (after the message in hand) and the status tailer, then closes
    /// the storage, syncing what was written.
    pub async fn close(&self) {
        if let Some(delivery) = take(&self.delivery) {
            delivery.stop().await;
        }
        if let Some(tailer) = take(&self.tailer) {
            tailer.stop().await;
        }
        if let Some(keys) = &self.idempotency {
            keys.close().await;
        }
        if let Some(backend) = &self.backend {
            backend.close().await;
        }
    }
}

/// What a mutex holds, taken out of it.
fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().ok().and_then(|mut held| held.take())
}

/// The SHA-256 of each API key, decoded once for constant-time checks. Validation
/// accepted only 64-hex-digit hashes.
fn key_hashes(config: &crate::pipeline::config::PipelineConfig) -> Vec<[u8; 32]> {
    config
        .source
        .api_keys_sha256
        .iter()
        .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
        .collect()
}

/// Starts the status tailer of a namespace, which records its messages as pending for
/// its targets.
fn start_tailer(
    config: &crate::pipeline::config::PipelineConfig,
    backend: &Arc<dyn Backend>,
    status: &Arc<StatusStore>,
    components: &Components,
) -> Tailer {
    let targets = config.targets.iter().map(|t| t.name.clone()).collect();
    Tailer::start(
        backend.clone(),
        config.namespace.clone(),
        targets,
        status.clone(),
        components.get("status_tailer"),
    )
}
