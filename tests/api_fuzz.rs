//! Fuzzing the running API against its own OpenAPI document with schemathesis: no
//! answer is a 5xx, and every answer's status, content type, headers and body are
//! what the document says. `.ci/run` installs schemathesis; without it this test is
//! skipped with a reason, or fails under CI.

mod common;

use std::process::Command;

use common::{Server, stop};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The schemathesis checks that hold the server to its document.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

fn schemathesis_installed() -> bool {
    if Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("schemathesis is not installed, and CI is set: .ci/run installs it");
    }
    eprintln!("skipped: schemathesis is not installed (pip install schemathesis)");
    false
}

#[tokio::test]
async fn fuzzing_the_api_finds_no_server_error_and_no_answer_off_its_document() -> Result {
    if !schemathesis_installed() {
        return Ok(());
    }
    let data = tempfile::tempdir()?;
    // With an admin key, so that the DLQ routes are reached too.
    use sha2::Digest;
    let config = data.path().join("wald.toml");
    let hash = hex::encode(sha2::Sha256::digest(b"fuzz-admin"));
    std::fs::write(&config, format!("admin_key_sha256 = \"{hash}\"\n"))?;
    let server = Server::start(
        &common::root().join("pipelines"),
        &data.path().join("data"),
        &["--config", config.to_str().ok_or("path")?],
    )
    .await?;
    let spec = server.url("/api/openapi.json");
    let output = tokio::process::Command::new("schemathesis")
        .args(["run", &spec, "--checks", CHECKS])
        .args(["--header", "Authorization: Bearer fuzz-admin"])
        .args([
            "--max-examples",
            "40",
            "--seed",
            "7",
            "--request-timeout",
            "10",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--suppress-health-check", "all"])
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1")
        // Its cache goes into the test's directory, not the repository.
        .current_dir(data.path())
        .output()
        .await?;
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stop(server.child).await?;
    Ok(())
}
