//! The build stage's reachability checks, run alone by `wald validate --connect`: each
//! backend, target and the status store is reached the way the runtime would reach it,
//! and nothing is written. What cannot be reached becomes an `unreachable` finding at
//! the place in the file that configures it.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use futures::future::join_all;

use crate::config::diagnostic::{Code, Diagnostic, Finding, KeyPath, Location};
use crate::pipeline::LoadedPipeline;
use crate::producer::BackendConfig;
use crate::service::ServiceConfig;
use crate::status::config::StatusStoreKind;
use crate::targets::TargetKind;

/// How long one check may take before it counts as unreachable.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks every pipeline's backend and targets, and the status store, concurrently.
pub async fn check_all(service: &ServiceConfig, pipelines: &[LoadedPipeline]) -> Vec<Diagnostic> {
    let mut diagnostics = join_all(pipelines.iter().map(|p| check_pipeline(service, p)))
        .await
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    if let Some(error) = check_status_store(service).await {
        let finding = Finding::error(
            Code::Unreachable,
            Location::File,
            format!("status store: {error}"),
        )
        .with_hint("check `[status_store] url` in wald.toml and that the service is up");
        diagnostics.push(Diagnostic::for_path(Path::new("wald.toml"), finding));
    }
    diagnostics
}

async fn check_pipeline(service: &ServiceConfig, pipeline: &LoadedPipeline) -> Vec<Diagnostic> {
    let config = &pipeline.config;
    let producer = async {
        let error = within(probe_backend(
            &config.producer,
            &config.namespace,
            &service.data_dir,
        ))
        .await?;
        Some((
            KeyPath::root().key("producer"),
            format!(
                "namespace `{}`: {} backend: {error}",
                config.namespace,
                config.producer.kind()
            ),
        ))
    };
    let targets = config
        .targets
        .iter()
        .enumerate()
        .map(|(i, target)| async move {
            let error = within(probe_target(&target.kind)).await?;
            Some((
                KeyPath::root().key("target").index(i),
                format!(
                    "namespace `{}`: target `{}` ({}): {error}",
                    config.namespace,
                    target.name,
                    target.kind.kind()
                ),
            ))
        });
    let (producer, targets) = futures::join!(producer, join_all(targets));
    producer
        .into_iter()
        .chain(targets.into_iter().flatten())
        .map(|(path, message)| {
            let finding = Finding::error(
                Code::Unreachable,
                Location::Path { path, needle: None },
                message,
            )
            .with_hint("check that the service is up and reachable from here, and the credentials");
            pipeline.source.place(finding)
        })
        .collect()
}

/// Runs a check with [`CHECK_TIMEOUT`]; `Some(error)` when it failed.
async fn within(check: impl Future<Output = Result<(), String>>) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    }
}

async fn probe_backend(
    backend: &BackendConfig,
    namespace: &str,
    data_dir: &Path,
) -> Result<(), String> {
    match backend {
        BackendConfig::Embedded(_) => probe_writable_dir(&data_dir.join(namespace)),
        BackendConfig::Kafka(c) => probe_kafka(&c.brokers, &c.options, &c.topic).await,
        BackendConfig::Sqs(c) => crate::producer::sqs::probe(c).await,
        BackendConfig::RedisStreams(c) => probe_redis(c.url.expose()).await,
    }
}

async fn probe_target(target: &TargetKind) -> Result<(), String> {
    match target {
        TargetKind::Postgres(c) => crate::targets::postgres::probe(c).await,
        TargetKind::Redis(c) => probe_redis(c.url.expose()).await,
        TargetKind::Http(c) => probe_tcp(&c.url).await,
        TargetKind::Kafka(c) => probe_kafka(&c.brokers, &c.options, &c.topic).await,
        TargetKind::File(c) => match c.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => probe_writable_dir(parent),
            _ => probe_writable_dir(Path::new(".")),
        },
    }
}

async fn check_status_store(service: &ServiceConfig) -> Option<String> {
    let store = &service.status_store;
    let check = async {
        match (store.kind, &store.url) {
            (StatusStoreKind::Embedded, _) | (_, None) => probe_writable_dir(&service.data_dir),
            (StatusStoreKind::Postgres, Some(url)) => {
                crate::targets::postgres::probe_url(url.expose()).await
            }
            (StatusStoreKind::Redis, Some(url)) => probe_redis(url.expose()).await,
        }
    };
    within(check).await
}

/// The directory exists and is writable, or can be created: its nearest existing
/// ancestor is a writable directory. Nothing is created.
fn probe_writable_dir(dir: &Path) -> Result<(), String> {
    let mut current = Some(dir);
    while let Some(path) = current {
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_dir() => {
                return Err(format!("{} is not a directory", path.display()));
            }
            Ok(_) => {
                return rustix::fs::access(path, rustix::fs::Access::WRITE_OK)
                    .map_err(|e| format!("{} is not writable: {e}", path.display()));
            }
            Err(_) => {
                current = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .or(Some(Path::new(".")))
                    .filter(|p| *p != path)
            }
        }
    }
    Err(format!("no existing directory above {}", dir.display()))
}

/// Connects and sends `PING`.
async fn probe_redis(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| format!("PING failed: {e}"))
}

/// Opens a TCP connection to the URL's host and port.
async fn probe_tcp(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("invalid URL: {e}"))?;
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    tokio::net::TcpStream::connect((host, port))
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))
}

/// Fetches the cluster's metadata (all topics, so that no topic is auto-created) and
/// looks for `topic`.
#[cfg(feature = "kafka")]
async fn probe_kafka(
    brokers: &str,
    options: &std::collections::BTreeMap<String, String>,
    topic: &str,
) -> Result<(), String> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let mut config = ClientConfig::new();
    for (key, value) in options {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| format!("invalid client settings: {e}"))?;
        let metadata = consumer
            .fetch_metadata(None, CHECK_TIMEOUT)
            .map_err(|e| format!("cannot fetch metadata: {e}"))?;
        if metadata.topics().iter().any(|t| t.name() == topic) {
            Ok(())
        } else {
            Err(format!("topic `{topic}` does not exist"))
        }
    })
    .await
    .map_err(|e| format!("the check failed: {e}"))?
}

#[cfg(not(feature = "kafka"))]
async fn probe_kafka(
    _brokers: &str,
    _options: &std::collections::BTreeMap<String, String>,
    _topic: &str,
) -> Result<(), String> {
    Err("this build of wald has no Kafka support (cargo feature `kafka`)".into())
}
