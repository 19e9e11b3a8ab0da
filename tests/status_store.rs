//! One set of scenarios run against every transaction status store: embedded (redb),
//! Postgres and Redis (the local services; skipped with a reason when absent, failing
//! under CI).

mod common;

use std::time::Duration;

use common::service_available;
use wald::config::units::HumanDuration;
use wald::message::now_ms;
use wald::status::config::{StatusStoreConfig, StatusStoreKind};
use wald::status::{
    DeliveryState, MessageStatus, StatusStore, TargetStatus, TargetUpdate, TransactionState,
    TransactionStatus,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A UUID v7 made `age` ago, as wald makes its ids.
fn id_made(age: Duration) -> String {
    let at = std::time::SystemTime::now() - age;
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
    uuid::Uuid::new_v7(ts).to_string()
}

async fn open(
    kind: StatusStoreKind,
    url: Option<&str>,
    dir: &std::path::Path,
) -> Result<StatusStore> {
    let config = StatusStoreConfig {
        kind,
        url: url.map(|u| wald::config::secret::Secret::new(u.to_string())),
        retention: HumanDuration::from_secs(3600),
    };
    Ok(StatusStore::open(&config, dir).await?)
}

/// Every store this machine has.
async fn stores(dir: &std::path::Path) -> Result<Vec<StatusStore>> {
    let mut stores = vec![open(StatusStoreKind::Embedded, None, dir).await?];
    if service_available("Postgres", "127.0.0.1:5432") {
        let url = "postgres://postgres@127.0.0.1:5432/test";
        stores.push(open(StatusStoreKind::Postgres, Some(url), dir).await?);
    }
    if service_available("Redis", "127.0.0.1:6379") {
        stores.push(open(StatusStoreKind::Redis, Some("redis://127.0.0.1:6379"), dir).await?);
    }
    Ok(stores)
}

fn update(
    tx: &str,
    message: &str,
    target: &str,
    state: DeliveryState,
    error: Option<&str>,
) -> TargetUpdate {
    TargetUpdate {
        transaction_id: tx.to_string(),
        message_id: message.to_string(),
        target: target.to_string(),
        status: TargetStatus {
            state,
            attempts: 1,
            last_error: error.map(str::to_string),
            updated_at_ms: now_ms(),
        },
    }
}

#[tokio::test]
async fn every_store_records_updates_and_answers_the_same() -> Result {
    let dir = tempfile::tempdir()?;
    for store in stores(dir.path()).await? {
        let kind = store.kind();
        let tx = id_made(Duration::ZERO);
        let (m1, m2) = (id_made(Duration::ZERO), id_made(Duration::ZERO));
        let accepted = |m: &str, offset| {
            MessageStatus::accepted(
                tx.clone(),
                m.to_string(),
                "shop".into(),
                offset,
                now_ms(),
                ["db".to_string(), "hook".to_string()],
            )
        };
        store
            .record_accepted(&[accepted(&m1, 7), accepted(&m2, 8)])
            .await?;
        let first = TransactionStatus::new(tx.clone(), store.messages(&tx).await?);
        assert_eq!(first.state, TransactionState::Pending, "{kind}");
        assert_eq!(first.messages.len(), 2, "{kind}");
        assert_eq!(first.messages[0].offset, 7, "{kind}");

        store
            .update_targets(&[
                update(&tx, &m1, "db", DeliveryState::Delivered, None),
                update(
                    &tx,
                    &m1,
                    "hook",
                    DeliveryState::Retrying,
                    Some("503 from hook"),
                ),
                update(&tx, &m2, "db", DeliveryState::Delivered, None),
                update(&tx, &m2, "hook", DeliveryState::Delivered, None),
            ])
            .await?;
        // The tailer may read a message again after a crash: that changes nothing.
        store.record_accepted(&[accepted(&m1, 7)]).await?;
        let status = TransactionStatus::new(tx.clone(), store.messages(&tx).await?);
        assert_eq!(status.state, TransactionState::Retrying, "{kind}");
        let hook = &status.messages[0].targets["hook"];
        assert_eq!(
            (hook.state, hook.last_error.as_deref()),
            (DeliveryState::Retrying, Some("503 from hook")),
            "{kind}"
        );

        store
            .update_targets(&[update(
                &tx,
                &m1,
                "hook",
                DeliveryState::DeadLettered,
                Some("gave up"),
            )])
            .await?;
        let status = TransactionStatus::new(tx.clone(), store.messages(&tx).await?);
        assert_eq!(status.state, TransactionState::DeadLettered, "{kind}");

        assert!(
            store.messages(&id_made(Duration::ZERO)).await?.is_empty(),
            "{kind}"
        );
        assert!(store.messages("not-a-uuid").await?.is_empty(), "{kind}");
    }
    Ok(())
}

#[tokio::test]
async fn entries_unchanged_for_longer_than_the_retention_expire() -> Result {
    let dir = tempfile::tempdir()?;
    for store in stores(dir.path()).await? {
        if store.kind() == "redis" {
            // Redis expires its hashes itself (PEXPIRE, renewed on each change).
            continue;
        }
        let kind = store.kind();
        let two_hours = Duration::from_secs(7200);
        let (old_tx, kept_tx, new_tx) = (
            id_made(two_hours),
            id_made(two_hours),
            id_made(Duration::ZERO),
        );
        let long_ago = now_ms() - 7_200_000;
        let message = |tx: &String, at| {
            MessageStatus::accepted(
                tx.clone(),
                id_made(Duration::ZERO),
                "shop".into(),
                0,
                at,
                ["db".to_string()],
            )
        };
        store
            .record_accepted(&[
                message(&old_tx, long_ago),
                message(&kept_tx, long_ago),
                message(&new_tx, now_ms()),
            ])
            .await?;
        // An old transaction that changed recently is kept.
        let kept_message = store.messages(&kept_tx).await?[0].message_id.clone();
        store
            .update_targets(&[update(
                &kept_tx,
                &kept_message,
                "db",
                DeliveryState::Delivered,
                None,
            )])
            .await?;
        assert!(store.expire().await? >= 1, "{kind}");
        assert!(store.messages(&old_tx).await?.is_empty(), "{kind}");
        assert_eq!(store.messages(&kept_tx).await?.len(), 1, "{kind}");
        assert_eq!(store.messages(&new_tx).await?.len(), 1, "{kind}");
    }
    Ok(())
}
