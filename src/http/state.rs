//! What every handler can see: the service's settings, the supervisor with the running
//! namespaces, the request counters, readiness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::auth;
use super::error::ApiError;
use crate::producer::Backend;
use crate::runtime::Namespace;
use crate::runtime::resources::Resources;
use crate::runtime::supervisor::{Running, Supervisor};
use crate::service::ServiceConfig;
use crate::status::StatusStore;

/// What every handler can see.
pub struct AppState {
    pub service: ServiceConfig,
    /// The running namespaces, and reload.
    pub supervisor: Arc<Supervisor>,
    /// Requests answered, by route and status.
    pub http: HttpCounters,
    /// Set once every namespace of the start-up has started delivering; readiness
    /// answers 200 from then on.
    pub ready: std::sync::atomic::AtomicBool,
    /// Free disk under `data_dir` and resident memory.
    pub resources: Arc<Resources>,
}

impl AppState {
    /// State over `status`, with no namespace running yet: [`Supervisor::reload`] or
    /// [`Supervisor::apply`] starts them.
    pub fn new(service: ServiceConfig, status: Arc<StatusStore>) -> Self {
        Self {
            supervisor: Arc::new(Supervisor::new(service.clone(), status)),
            resources: Resources::new(&service.data_dir, service.health.clone()),
            service,
            http: Default::default(),
            ready: Default::default(),
        }
    }

    /// The running namespaces as of now; a request keeps the snapshot it started with.
    pub fn running(&self) -> Arc<Running> {
        self.supervisor.running()
    }

    /// The namespace called `name` and its log, once the request carries the admin key
    /// (the DLQ and message routes: they show what was written).
    pub fn admin_backend(
        &self,
        name: &str,
        headers: &axum::http::HeaderMap,
    ) -> Result<(Arc<Namespace>, Arc<dyn Backend>), ApiError> {
        auth::authorize_admin(headers, &self.service)?;
        let namespace = self.namespace(name)?;
        match namespace.backend.clone() {
            Some(backend) => Ok((namespace, backend)),
            None => Err(ApiError::Unavailable(name.to_string())),
        }
    }

    /// The namespace called `name`, or 404.
    pub fn namespace(&self, name: &str) -> Result<Arc<Namespace>, ApiError> {
        self.running()
            .namespaces
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::NamespaceNotFound(name.to_string()))
    }
}

/// Requests answered, by route and status. Counting takes a shared lock and no
/// allocation once a route has answered with a status before.
#[derive(Default)]
pub struct HttpCounters(RwLock<HashMap<String, Vec<(u16, AtomicU64)>>>);

impl HttpCounters {
    /// Counts one answer of `status` on `route`.
    pub fn count(&self, route: &str, status: u16) {
        let counted = |routes: &HashMap<String, Vec<(u16, AtomicU64)>>| {
            let count = routes.get(route)?.iter().find(|(s, _)| *s == status)?;
            count.1.fetch_add(1, Ordering::Relaxed);
            Some(())
        };
        if counted(&self.0.read().unwrap_or_else(|e| e.into_inner())).is_some() {
            return;
        }
        let mut routes = self.0.write().unwrap_or_else(|e| e.into_inner());
        if counted(&routes).is_none() {
            let statuses = routes.entry(route.to_string()).or_default();
            statuses.push((status, AtomicU64::new(1)));
        }
    }

    /// Every count: route, status and answers, in order.
    pub fn snapshot(&self) -> Vec<(String, u16, u64)> {
        let routes = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut counts: Vec<_> = routes
            .iter()
            .flat_map(|(route, statuses)| {
                statuses
                    .iter()
                    .map(|(status, n)| (route.clone(), *status, n.load(Ordering::Relaxed)))
            })
            .collect();
        counts.sort();
        counts
    }
}
