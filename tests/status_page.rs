//! The status page in a real headless browser (Debian's Chromium, driven by
//! playwright-core from `tests/browser/drive.mjs`) against the real binary: the
//! namespace appears, its counts change after writes, a dead-lettered message shows
//! up and is replayed from the page with the admin key, a target is paused and resumed
//! from the page, and the page fits a phone's width. `.ci/run` installs Chromium and playwright-core; without them this test is
//! skipped with a reason, or fails under CI.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{Server, stop};
use serde_json::Value;
use sha2::Digest;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const ADMIN_KEY: &str = "page-admin-key";
const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_available() -> bool {
    let driver = common::root().join("tests/browser/node_modules/playwright-core");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = [
        (!node).then_some("node"),
        (!Path::new(CHROMIUM).exists()).then_some("chromium (apt-get install chromium)"),
        (!driver.exists()).then_some("playwright-core (npm ci --prefix tests/browser)"),
    ];
    let missing: Vec<&str> = missing.into_iter().flatten().collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} missing, and CI is set: .ci/run installs them",
            missing.join(", ")
        );
    }
    eprintln!(
        "skipped: {} missing (set CI=1 to make this a failure)",
        missing.join(", ")
    );
    false
}

/// A webhook that refuses messages of kind "poison" (400, so they are dead-lettered
/// at once) until `POST /heal`, and records the envelopes it accepted.
async fn hook() -> Result<(String, Arc<Mutex<Vec<Value>>>)> {
    let healed = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let (heal, kept, counted) = (healed.clone(), accepted.clone(), accepted.clone());
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move |body: axum::Json<Value>| {
                let (healed, kept) = (healed.clone(), kept.clone());
                async move {
                    if body["payload"]["kind"] == "poison" && !healed.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::BAD_REQUEST;
                    }
                    kept.lock().map(|mut k| k.push(body.0)).ok();
                    axum::http::StatusCode::OK
                }
            }),
        )
        .route(
            "/count",
            axum::routing::get(move || {
                let counted = counted.clone();
                async move {
                    let n = counted.lock().map_or(0, |k| k.len());
                    axum::Json(serde_json::json!(n))
                }
            }),
        )
        .route(
            "/heal",
            axum::routing::post(move || {
                heal.store(true, Ordering::SeqCst);
                async { axum::http::StatusCode::NO_CONTENT }
            }),
        );
    let address = common::serve(app).await?;
    Ok((format!("http://{address}"), accepted))
}

#[tokio::test]
async fn the_status_page_shows_namespaces_live_and_replays_a_dead_letter() -> Result {
    if !browser_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (hook_base, accepted) = hook().await?;
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines)?;
    std::fs::write(
        pipelines.join("shop.toml"),
        format!(
            "namespace = \"shop\"\ndescription = \"Orders to the webhook\"\n\
             [source]\ntype = \"http\"\npublic = true\n\
             [[target]]\nname = \"hook\"\ntype = \"http\"\nurl = \"{hook_base}/hook\"\n"
        ),
    )?;
    let hash = hex::encode(sha2::Sha256::digest(ADMIN_KEY.as_bytes()));
    let config = dir.path().join("wald.toml");
    std::fs::write(&config, format!("admin_key_sha256 = \"{hash}\"\n"))?;
    let server = Server::start(
        &pipelines,
        &dir.path().join("data"),
        &["--config", &config.display().to_string()],
    )
    .await?;

    // `WALD_SCREENSHOTS=docs cargo test --test status_page` refreshes the pictures in
    // the documentation.
    let shots = std::env::var_os("WALD_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().to_path_buf());
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(common::root().join("tests/browser/drive.mjs"))
            .arg(server.url(""))
            .arg(ADMIN_KEY)
            .arg(&shots)
            .arg(&hook_base)
            .env("CHROMIUM", CHROMIUM)
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the page did not behave:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().ok_or("no output")?)?;
    assert!(seen["after"].as_u64() >= seen["before"].as_u64().map(|b| b + 5));
    assert_eq!(seen["parked"], 1, "{seen}");
    assert_eq!(
        seen["overflows"], false,
        "the page is wider than a phone: {seen}"
    );
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    assert!(shots.join("status-page.png").exists());
    // The replayed message reached the healed webhook.
    let poisons = accepted
        .lock()
        .map_err(|_| "lock")?
        .iter()
        .filter(|b| b["payload"]["kind"] == "poison")
        .count();
    assert_eq!(poisons, 1);
    // Paused from the page: shown paused, nothing delivered meanwhile; resumed from
    // the page: the message that waited arrives.
    assert_eq!(seen["pausedInStatus"], true, "{seen}");
    assert_eq!(
        seen["whilePaused"], 6,
        "5 writes and the replayed one: {seen}"
    );
    assert_eq!(seen["stateAfter"], "delivering", "{seen}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !accepted
        .lock()
        .map_err(|_| "lock")?
        .iter()
        .any(|b| b["payload"]["n"] == "while-paused")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the resumed message never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(stop(server.child).await?.success());
    Ok(())
}
