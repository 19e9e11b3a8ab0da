//! The build stage's reachability checks, run alone by `wald validate --connect`: each
//! backend, target and the status store is reached the way the runtime would reach it
//! (each plugin's own `probe`), and nothing is written. What cannot be reached becomes
//! an `unreachable` finding at the place in the file that configures it.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use futures::future::join_all;

use crate::config::diagnostic::{Code, Diagnostic, Finding, KeyPath, Location};
use crate::pipeline::LoadedPipeline;
use crate::probe::Unreachable;
use crate::service::ServiceConfig;

/// How long one check may take before it counts as unreachable.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks every pipeline's backend and targets, and the status store, concurrently.
pub async fn check_all(service: &ServiceConfig, pipelines: &[LoadedPipeline]) -> Vec<Diagnostic> {
    let mut diagnostics = join_all(pipelines.iter().map(|p| check_pipeline(service, p)))
        .await
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    if let Some(error) = within(crate::status::probe(
        &service.status_store,
        &service.data_dir,
    ))
    .await
    {
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
        let error = within(crate::producer::probe(
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
            let error = within(target.kind.probe()).await?;
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
async fn within(check: impl Future<Output = Result<(), Unreachable>>) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => None,
        Ok(Err(Unreachable(error))) => Some(error),
        Err(_) => Some(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    }
}
