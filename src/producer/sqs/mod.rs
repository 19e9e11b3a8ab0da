//! The SQS backend: `SendMessageBatch` to write, long-poll `ReceiveMessage` to consume,
//! `DeleteMessage` after delivery. Its configuration and checks are in `config.rs`, the
//! backend in `queue.rs`, its client and `--connect` probe here.

pub mod config;
#[cfg(feature = "sqs")]
mod queue;

pub use config::{Config, MAX_MESSAGE};

use crate::probe::Unreachable;
#[cfg(feature = "sqs")]
pub use queue::SqsQueue;

/// Asks for the queue's attributes (and the DLQ's): reachable, authorised, existing.
#[cfg(feature = "sqs")]
pub async fn probe(config: &Config) -> Result<(), Unreachable> {
    let client = client(config).await;
    for url in std::iter::once(&config.queue_url).chain(config.dlq_queue_url.as_ref()) {
        client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "GetQueueAttributes failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            })?;
    }
    Ok(())
}

#[cfg(not(feature = "sqs"))]
pub async fn probe(_config: &Config) -> Result<(), Unreachable> {
    Err("this build of wald has no SQS support (cargo feature `sqs`)".into())
}

/// An SQS client for this configuration: its region and endpoint, and its static
/// credentials when given (else the AWS default chain).
#[cfg(feature = "sqs")]
pub async fn client(config: &Config) -> aws_sdk_sqs::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(config.region.clone()));
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            id,
            secret.expose(),
            None,
            None,
            "wald-config",
        ));
    }
    aws_sdk_sqs::Client::new(&loader.load().await)
}
