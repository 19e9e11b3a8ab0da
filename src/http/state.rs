//! What every handler can see: the service's settings, the supervisor with the running
//! namespaces, the request counters, readiness.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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

/// Requests answered, by route and status.
#[derive(Default)]
pub struct HttpCounters(pub Mutex<BTreeMap<(String, u16), u64>>);
