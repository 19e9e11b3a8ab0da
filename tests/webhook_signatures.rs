//! Webhook signatures that receivers verify with standard code: every request of an
//! `http` target with `signing_secrets` is checked by the `standardwebhooks` package
//! from PyPI (a verifier written elsewhere), once with each of two secrets during a
//! rotation, and a tampered body fails its check.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{Server, stop};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Verifies each request on stdin (a JSON line: body and headers) with every secret
/// named in argv, and prints one JSON line per request: which secrets accepted it.
const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
hooks = [Webhook(s) for s in sys.argv[1:]]
for line in sys.stdin:
    request = json.loads(line)
    accepted = []
    for hook in hooks:
        try:
            hook.verify(request["body"], request["headers"])
            accepted.append(True)
        except Exception:
            accepted.append(False)
    print(json.dumps(accepted), flush=True)
"#;

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(HeaderMap, String)>>>);

async fn receive(State(r): State<Received>, headers: HeaderMap, body: String) -> StatusCode {
    r.0.lock().expect("lock").push((headers, body));
    StatusCode::OK
}

/// Whether python3 can import the verifier: with `CI` set it must.
fn verifier_installed() -> bool {
    let found = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the `standardwebhooks` package is not installed"
        );
        eprintln!("skipped: `pip install standardwebhooks` to run this test");
    }
    found
}

/// Runs the verifier over `requests` with `secrets`: per request, which accepted it.
async fn verify(requests: &[(HeaderMap, String)], secrets: &[&str]) -> Result<Vec<Vec<bool>>> {
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(VERIFY)
        .args(secrets)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut input = String::new();
    for (headers, body) in requests {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        input.push_str(&json!({"body": body, "headers": headers}).to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().ok_or("stdin")?;
    stdin.write_all(input.as_bytes()).await?;
    drop(stdin);
    let output = child.wait_with_output().await?;
    assert!(output.status.success(), "the verifier failed");
    Ok(String::from_utf8(output.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?)
}

#[tokio::test]
async fn signatures_verify_with_the_standard_webhooks_package_during_a_rotation() -> Result {
    if !verifier_installed() {
        return Ok(());
    }
    let received = Received::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(received.clone());
    let address = common::serve(app).await?;
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("signed.toml"),
        format!(
            "namespace = \"signed\"\n[source]\ntype = \"http\"\npublic = true\n\
             [[target]]\nname = \"hook\"\ntype = \"http\"\nurl = \"http://{address}/hook\"\n\
             signing_secrets = [\"{OLD}\", \"{NEW}\"]\n"
        ),
    )?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    let client = reqwest::Client::new();
    for i in 0..5 {
        let response = client
            .post(server.url("/api/v1/wal/write"))
            .json(&json!({"namespace": "signed", "payload": {"i": i, "text": "naïve \"quotes\""}}))
            .send()
            .await?;
        assert_eq!(response.status(), 202);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.0.lock().expect("lock").len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the webhook never got 5 requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = received.0.lock().expect("lock").clone();
    // Either secret alone verifies every request: the receiver may rotate at any time.
    for (secrets, expected) in [
        (vec![OLD, NEW], vec![true, true]),
        (vec!["whsec_dGhpcyBpcyBhbm90aGVyIGtleSEhIQ=="], vec![false]),
    ] {
        for accepted in verify(&requests, &secrets).await? {
            assert_eq!(accepted, expected, "secrets {secrets:?}");
        }
    }
    for (headers, _) in &requests {
        assert_eq!(
            headers["webhook-id"], headers["idempotency-key"],
            "webhook-id is the message id"
        );
    }
    // A body changed on the way fails its check.
    let mut tampered = requests[0].clone();
    tampered.1 = tampered.1.replace("naïve", "naive");
    assert_eq!(verify(&[tampered], &[OLD]).await?, [[false]]);
    stop(server.child).await?;
    Ok(())
}
