//! The supervisor: which namespaces run, from which generation of the pipeline files,
//! and how a reload changes them.
//!
//! # Reload
//!
//! 1. Load and validate every file of the pipelines directory, then [`diff`] them
//!    against what runs. A problem with the directory itself (missing, unreadable,
//!    empty) applies nothing. A file with errors is quarantined: the namespace it ran
//!    keeps running as it was.
//! 2. Build what changed before anything stops: a changed namespace's targets are
//!    built first, and if that fails the old namespace keeps running and the error is
//!    reported; then the new namespace on the same storage, its delivery moved over.
//!    Unchanged namespaces are not touched.
//! 3. Swap the set that requests see in one step; the generation goes up by one, and
//!    new settings (keys, limits) serve the next request. A request in flight
//!    finishes on the namespace it started with.
//! 4. Where the consumer or the targets changed, delivery stops after its in-flight
//!    batches and commits, and starts again with the new targets from that cursor.
//! 5. Removed namespaces stop once their in-flight requests are done; their data stays
//!    on disk, so adding the namespace again resumes from its cursors.
//!
//! One reload runs at a time. Requests never wait for a reload.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tracing::{debug, error, info, warn};

use crate::alerts::{Alert, Alerts};
use crate::component::Components;
use crate::config::diagnostic::{Code, Diagnostic, Finding, Location, Severity};
use crate::config::env;
use crate::consumer::{BuildError, Targets};
use crate::pipeline::diff::{Changed, Current, Plan, Quarantined, diff};
use crate::pipeline::{LoadReport, load_pipelines};
use crate::runtime::Namespace;
use crate::service::ServiceConfig;
use crate::status::StatusStore;

/// Longest time a reload waits for the pipeline files to be read.
const LOAD_DEADLINE: Duration = Duration::from_secs(10);

/// The running set, as one reload left it. Requests take a snapshot of it.
#[derive(Default)]
pub struct Running {
    /// Goes up by one with every reload that changed what runs; 1 after start-up.
    pub generation: u64,
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    /// The files the last reload rejected, and which namespace each keeps running.
    pub quarantined: Vec<Quarantined>,
}

impl Running {
    /// Whether a namespace runs on its last good configuration because its file is
    /// quarantined now.
    pub fn quarantine_of(&self, namespace: &str) -> Option<&Quarantined> {
        self.quarantined
            .iter()
            .find(|q| q.keeps_running && q.namespace.as_deref() == Some(namespace))
    }
}

/// What a reload did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReloadOutcome {
    /// The generation running after this reload.
    pub generation: u64,
    pub result: ReloadResult,
    /// What asked for the reload: `start`, `watch`, `signal` or `api`.
    pub trigger: &'static str,
    /// When the reload finished (RFC 3339).
    pub finished_at: String,
    pub duration_ms: f64,
    #[serde(flatten)]
    pub plan: Plan,
    /// Changes that could not be built: the namespace runs as it did.
    pub failed: Vec<FailedChange>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// Every file applied (or nothing had changed).
    Ok,
    /// Some files were quarantined or some changes failed to build; the rest applied.
    Partial,
    /// The pipelines directory could not be read; nothing applied.
    Blocked,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 3] = [Self::Ok, Self::Partial, Self::Blocked];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailedChange {
    pub namespace: String,
    pub error: String,
}

/// Reloads so far, for the admin API and `/metrics`.
#[derive(Default)]
pub struct ReloadHistory {
    /// Reloads by result, in [`ReloadResult::ALL`] order.
    pub counts: [u64; 3],
    /// Sum of reload durations, in seconds.
    pub seconds: f64,
    pub last: Option<Arc<ReloadOutcome>>,
}

/// Owns the running namespaces and reloads them.
pub struct Supervisor {
    service: ServiceConfig,
    status: Arc<StatusStore>,
    running: RwLock<Arc<Running>>,
    /// Held for the whole of a reload, so that each diffs against what the previous
    /// one applied.
    reloading: tokio::sync::Mutex<()>,
    history: Mutex<ReloadHistory>,
    /// The health of the service's own background parts: the status store, the
    /// watcher, reloads, alerts.
    pub components: Components,
    /// Where alerts go: quarantined files from here, the rest from delivery.
    pub alerts: Alerts,
}

impl Supervisor {
    /// A supervisor with nothing running yet.
    pub fn new(service: ServiceConfig, status: Arc<StatusStore>) -> Self {
        let components = Components::new(None);
        components.add(status.health().clone());
        let alerts = match &service.alerts {
            Some(config) => {
                let health = components.get("alerts");
                Alerts::start(config, health.clone()).unwrap_or_else(|e| {
                    health.stalled(&format!("alerts cannot be posted: {e}"));
                    Alerts::default()
                })
            }
            None => Alerts::default(),
        };
        Self {
            service,
            status,
            running: RwLock::default(),
            reloading: tokio::sync::Mutex::new(()),
            history: Mutex::default(),
            components,
            alerts,
        }
    }

    /// The running set, as of now.
    pub fn running(&self) -> Arc<Running> {
        self.running
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn status(&self) -> &Arc<StatusStore> {
        &self.status
    }

    /// Reload counts, durations and the last outcome.
    pub fn history(&self) -> std::sync::MutexGuard<'_, ReloadHistory> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the pipelines directory and applies it. Loading has [`LOAD_DEADLINE`]: a
    /// directory that does not answer in time (a hung network mount) blocks this
    /// reload, reported like an unreadable directory, and holds up nothing else.
    pub async fn reload(&self, trigger: &'static str) -> Arc<ReloadOutcome> {
        let dir = self.service.pipelines_dir.clone();
        let loading = tokio::task::spawn_blocking(move || {
            load_pipelines(std::slice::from_ref(&dir), &env::process_env)
        });
        let loaded = match tokio::time::timeout(LOAD_DEADLINE, loading).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(format!("loading the pipeline files failed: {e}")),
            Err(_) => Err(format!(
                "loading the pipeline files took longer than {} s",
                LOAD_DEADLINE.as_secs()
            )),
        };
        let reloads = self.components.get("reload");
        reloads.report(&loaded, false);
        let report = loaded.unwrap_or_else(|reason| {
            // Never an empty set, which would remove every namespace: the directory
            // counts as unreadable, and nothing applies.
            let finding = Finding::error(Code::Unreadable, Location::File, reason);
            LoadReport {
                diagnostics: vec![Diagnostic::for_path(&self.service.pipelines_dir, finding)],
                ..LoadReport::default()
            }
        });
        self.apply(report, trigger).await
    }

    /// What applying `report` would change now, without changing anything.
    pub fn plan(&self, report: LoadReport) -> Plan {
        plan_against(&self.running(), report)
    }

    /// Applies a loaded set of pipeline files (see the module docs).
    pub async fn apply(&self, report: LoadReport, trigger: &'static str) -> Arc<ReloadOutcome> {
        let _one_at_a_time = self.reloading.lock().await;
        let started = Instant::now();
        for d in &report.diagnostics {
            let place = format!(
                "{}:{}:{}",
                d.file.display(),
                d.line.unwrap_or(0),
                d.column.unwrap_or(0)
            );
            match d.severity {
                Severity::Error => {
                    error!(file = %place, code = %d.code, "Pipeline file rejected: {}", d.message)
                }
                Severity::Warning => warn!(file = %place, code = %d.code, "{}", d.message),
            }
        }
        let old = self.running();
        let mut plan = plan_against(&old, report);
        let mut failed = Vec::new();
        let mut namespaces = old.namespaces.clone();
        let mut stopping = Vec::new();
        let mut restarting = Vec::new();
        if plan.blocked_by.is_empty() {
            let changed = std::mem::take(&mut plan.changed);
            for change in changed {
                let name = change.namespace.clone();
                let Some(now) = old.namespaces.get(&name) else {
                    continue;
                };
                match self.rebuild(now, &change).await {
                    Ok((namespace, restart)) => {
                        if let Some((targets, targets_changed)) = restart {
                            restarting.push((namespace.clone(), targets, targets_changed));
                        }
                        namespaces.insert(name, namespace);
                        plan.changed.push(change);
                    }
                    Err(error) => {
                        error!(namespace = %name, error = %error, "Changed namespace not applied: it could not be built; it runs as it did.");
                        failed.push(FailedChange {
                            namespace: name,
                            error: error.to_string(),
                        });
                    }
                }
            }
            for added in &plan.added {
                let namespace = Namespace::open(
                    added.pipeline.clone(),
                    &self.service,
                    &self.status,
                    &self.alerts,
                )
                .await;
                namespaces.insert(added.namespace.clone(), Arc::new(namespace));
            }
            for name in &plan.removed {
                stopping.extend(namespaces.remove(name));
            }
        }
        // The first load is generation 1 even when it runs nothing.
        let applied = plan.blocked_by.is_empty() && (!plan.is_empty() || old.generation == 0);
        let generation = old.generation + u64::from(applied);
        if plan.blocked_by.is_empty() {
            self.alert_quarantined(&old.quarantined, &plan.quarantined);
            let next = Arc::new(Running {
                generation,
                namespaces,
                quarantined: plan.quarantined.clone(),
            });
            *self.running.write().unwrap_or_else(|e| e.into_inner()) = next;
        }
        drop(old);
        // The new settings serve requests already; the old delivery finishes its
        // in-flight batches and commits before the new one starts from its cursor.
        for (namespace, targets, targets_changed) in restarting {
            namespace
                .restart_delivery(targets, targets_changed, &self.status)
                .await;
        }
        for namespace in stopping {
            self.stop_when_idle(namespace).await;
        }
        let result = if !plan.blocked_by.is_empty() {
            ReloadResult::Blocked
        } else if plan.quarantined.is_empty() && failed.is_empty() {
            ReloadResult::Ok
        } else {
            ReloadResult::Partial
        };
        let duration = started.elapsed();
        let outcome = Arc::new(ReloadOutcome {
            generation,
            result,
            trigger,
            finished_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            duration_ms: duration.as_secs_f64() * 1000.0,
            plan,
            failed,
        });
        if applied || result != ReloadResult::Ok {
            info!(
                generation,
                trigger,
                result = result.as_str(),
                added = outcome.plan.added.len(),
                changed = outcome.plan.changed.len(),
                removed = outcome.plan.removed.len(),
                quarantined = outcome.plan.quarantined.len(),
                duration_ms = outcome.duration_ms,
                "Pipelines reloaded."
            );
        } else {
            debug!(generation, trigger, "Pipelines reloaded; nothing changed.");
        }
        let mut history = self.history();
        history.counts[ReloadResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0)] += 1;
        history.seconds += duration.as_secs_f64();
        history.last = Some(outcome.clone());
        outcome
    }

    /// Sends an alert for each file `now` quarantines that `before` did not, or did
    /// for other errors.
    fn alert_quarantined(&self, before: &[Quarantined], now: &[Quarantined]) {
        let same = |a: &Quarantined, b: &Quarantined| {
            a.file == b.file
                && a.errors.len() == b.errors.len()
                && a.errors
                    .iter()
                    .zip(&b.errors)
                    .all(|(x, y)| (x.line, x.column, &x.message) == (y.line, y.column, &y.message))
        };
        for q in now.iter().filter(|q| !before.iter().any(|b| same(b, q))) {
            self.alerts.send(Alert::Quarantined {
                file: q.file.display().to_string(),
                namespace: q.namespace.clone(),
                keeps_running: q.keeps_running,
                errors: q.errors.clone(),
            });
        }
    }

    /// The new form of a changed namespace, built before anything of the old one
    /// stops: its targets first (an error leaves the old one running), then the
    /// namespace on the same storage, with its delivery to restart once it serves
    /// requests; for a new backend, or a namespace whose backend had failed to open, a
    /// namespace opened anew once the old one has stopped.
    async fn rebuild(&self, now: &Namespace, change: &Changed) -> Result<Rebuilt, BuildError> {
        let pipeline = change.pipeline.clone();
        if change.replaces_backend || now.backend.is_none() {
            let targets = Targets::build(&pipeline.config, &self.alerts).await?;
            now.close().await;
            let namespace = Namespace::open_with(
                pipeline,
                Ok(targets),
                &self.service,
                &self.status,
                &self.alerts,
            )
            .await;
            return Ok((Arc::new(namespace), None));
        }
        let restart = match change.restarts_consumer {
            true => Some(Targets::build(&pipeline.config, &self.alerts).await?),
            false => None,
        };
        let targets_changed = change.keys.iter().any(|k| k.key.starts_with("target"));
        let namespace = Arc::new(now.reconfigure(pipeline, &self.service));
        Ok((namespace, restart.map(|targets| (targets, targets_changed))))
    }

    /// Stops a removed namespace once no request uses it any more (at most
    /// `shutdown_timeout` later), so that a write already admitted is still answered.
    async fn stop_when_idle(&self, namespace: Arc<Namespace>) {
        let deadline = Instant::now() + self.service.shutdown_timeout.get();
        while Arc::strong_count(&namespace) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        namespace.close().await;
        info!(namespace = %namespace.name(), "Namespace stopped; its data stays on disk.");
    }

    /// Stops every namespace (at shutdown).
    pub async fn close(&self) {
        let running = std::mem::take(&mut *self.running.write().unwrap_or_else(|e| e.into_inner()));
        for namespace in running.namespaces.values() {
            namespace.close().await;
        }
    }
}

/// A changed namespace, and the targets to restart its delivery with (and whether
/// they changed), when its consumer or targets changed.
type Rebuilt = (Arc<Namespace>, Option<(Targets, bool)>);

/// [`diff`] of `report` against `running`.
fn plan_against(running: &Running, report: LoadReport) -> Plan {
    let current = running
        .namespaces
        .iter()
        .map(|(name, n)| {
            (
                name.clone(),
                Current {
                    file: &n.pipeline.source.path,
                    config: &n.pipeline.config,
                },
            )
        })
        .collect();
    diff(&current, report)
}
