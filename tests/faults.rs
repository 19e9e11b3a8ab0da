//! The faults nobody stages on purpose, each through the real binary: a full disk, clients
//! that go away or time out during keyed writes, idle connections under a low file
//! descriptor limit, half-closed requests, odd entries in the pipelines directory,
//! malformed requests at every level, and a closed output pipe.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::Server;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A pipeline file for namespace `name`, open to anyone, delivering to the JSON Lines
/// file `out`.
fn open_pipeline(name: &str, out: &Path) -> String {
    format!(
        "namespace = \"{name}\"\n[source]\ntype = \"http\"\npublic = true\n\
         [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"{}\"\n",
        out.display()
    )
}

/// Polls `check` every 100 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Result
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("not within {within:?}: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(server: &Server, path: &str) -> Result<(u16, Value)> {
    let response = reqwest::get(server.url(path)).await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

/// The message ids in a JSON Lines file a file target wrote, by the payload's `key`.
fn delivered_by_key(out: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let text = std::fs::read_to_string(out).unwrap_or_default();
    for line in text.lines() {
        let line: Value = serde_json::from_str(line)?;
        let key = line["payload"]["key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let id = line["message_id"].as_str().ok_or("message_id")?.to_string();
        by_key.entry(key).or_default().insert(id);
    }
    Ok(by_key)
}

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// None (the test skipped) where mounting is refused, except under CI.
    fn mount(dir: &Path, size: &str) -> Result<Option<Self>> {
        std::fs::create_dir_all(dir)?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match mounted {
            Ok(output) if output.status.success() => Ok(Some(Self(dir.to_path_buf()))),
            other => {
                let why = match other {
                    Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                if std::env::var_os("CI").is_some() {
                    return Err(format!(
                        "a tmpfs cannot be mounted ({why}), and CI is set: CI runs as root"
                    )
                    .into());
                }
                eprintln!("skipped: a tmpfs cannot be mounted here ({why}); run as root");
                Ok(None)
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_stalls_delivery_visibly_and_everything_resumes_once_space_is_freed() -> Result
{
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let Some(_tmpfs) = Tmpfs::mount(&data, "8m")? else {
        return Ok(());
    };
    // Room to free later: a file that takes a quarter of the disk.
    let filler = data.join("filler");
    std::fs::write(&filler, vec![0u8; 2 << 20])?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    let out = dir.path().join("out.jsonl");
    std::fs::write(pipes.join("disk.toml"), open_pipeline("disk", &out))?;
    // The disk itself fills: no margin of free space refuses writes before it does.
    let config = dir.path().join("wald.toml");
    std::fs::write(&config, "[health]\nmin_free_disk = 0\n")?;
    let server =
        Server::start(&pipes, &data, &["--config", config.to_str().ok_or("path")?]).await?;
    let client = reqwest::Client::new();

    // Write until the disk is full: every write is either acknowledged or refused
    // with a JSON error, none is lost.
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let mut refused = 0;
    let pad = "x".repeat(400);
    for i in 0..100_000 {
        let response = client
            .post(server.url("/api/v1/wal/write"))
            .json(&json!({"namespace": "disk", "payload": {"i": i, "pad": pad}}))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        match status {
            202 => acknowledged.push((
                body["message_id"].as_str().ok_or("id")?.to_string(),
                body["transaction_id"].as_str().ok_or("id")?.to_string(),
            )),
            503 => {
                assert_eq!(body["error"]["code"], "storage_full", "{body}");
                refused += 1;
                if refused == 50 {
                    break;
                }
            }
            other => return Err(format!("answer {other}: {body}").into()),
        }
    }
    assert_eq!(refused, 50, "the disk never filled");
    assert!(acknowledged.len() > 100, "{}", acknowledged.len());

    // While it is full, the parts that cannot write say so: status, health,
    // readiness (which stays ready: writes are not lost) and /metrics.
    eventually(Duration::from_secs(20), "a failing part shown", || async {
        let (_, status) = get(&server, "/api/v1/wal/namespace/disk/status").await?;
        let (_, health) = get(&server, "/api/v1/health").await?;
        let failing = status["components"]
            .as_object()
            .ok_or("components")?
            .values()
            .chain(
                health["components"]
                    .as_object()
                    .ok_or("components")?
                    .values(),
            )
            .any(|c| {
                c["state"] != "running"
                    && c["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("No space left"))
            });
        Ok(failing && status["state"] == "degraded" && health["status"] == "degraded")
    })
    .await?;
    let (ready, readiness) = get(&server, "/api/v1/health/readiness").await?;
    assert_eq!(ready, 200, "{readiness}");
    assert!(
        !readiness["degraded"]
            .as_array()
            .ok_or("degraded")?
            .is_empty(),
        "{readiness}"
    );
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wald_component_up{") && l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(server.logged("A background part is failing"));

    // Space is freed: without a restart, writes, delivery and lookups resume, and
    // every acknowledged message is delivered.
    std::fs::remove_file(&filler)?;
    eventually(
        Duration::from_secs(60),
        "every part running again",
        || async {
            let (_, status) = get(&server, "/api/v1/wal/namespace/disk/status").await?;
            let (_, health) = get(&server, "/api/v1/health").await?;
            let lag = status["consumer_groups"][0]["lag"].as_u64();
            Ok(status["state"] == "running" && health["status"] == "ok" && lag == Some(0))
        },
    )
    .await?;
    let response = client
        .post(server.url("/api/v1/wal/write"))
        .json(&json!({"namespace": "disk", "payload": {"after": true}}))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let delivered: BTreeSet<String> = delivered_by_key(&out)?.into_values().flatten().collect();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|(id, _)| !delivered.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages not delivered",
        missing.len()
    );
    for (_, transaction) in acknowledged.iter().rev().take(20) {
        let (status, body) = get(
            &server,
            &format!("/api/v1/wal/transaction/{transaction}/status"),
        )
        .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "delivered", "{body}");
    }
    assert!(server.logged("A background part recovered"));
    Ok(())
}

/// Sends a keyed write and resets the connection at once, without reading the answer.
async fn write_and_reset(address: &str, key: &str) -> Result {
    let body =
        json!({"namespace": "keys", "idempotency_key": key, "payload": {"key": key}}).to_string();
    let stream = TcpStream::connect(address).await?;
    let request = format!(
        "POST /api/v1/wal/write HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    stream.write_all(request.as_bytes()).await?;
    // A reset, not a close: what a client that dies or times out looks like. (With a
    // zero linger the drop does not block.)
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}

/// Writes `key` until answered 202 (a 5xx or a timeout is tried again; a 409 is not:
/// it must not happen); the message id it got.
async fn write_key(client: &reqwest::Client, server: &Server, key: &str) -> Result<(String, bool)> {
    for _ in 0..50 {
        let response = client
            .post(server.url("/api/v1/wal/write"))
            .json(&json!({"namespace": "keys", "idempotency_key": key, "payload": {"key": key}}))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        match status {
            202 => {
                return Ok((
                    body["message_id"].as_str().ok_or("id")?.to_string(),
                    body["repeated"] == true,
                ));
            }
            409 => return Err(format!("key {key}: {body}").into()),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Err(format!("key {key} never accepted").into())
}

#[tokio::test]
async fn clients_that_go_away_or_time_out_neither_hold_a_key_nor_duplicate_its_message() -> Result {
    let dir = tempfile::tempdir()?;
    let (pipes, data) = (dir.path().join("pipelines"), dir.path().join("data"));
    std::fs::create_dir_all(&pipes)?;
    let out = dir.path().join("out.jsonl");
    std::fs::write(pipes.join("keys.toml"), open_pipeline("keys", &out))?;
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let client = reqwest::Client::new();

    // Requests that time out after 1 ms, and clients that reset their connection right
    // after sending; then SIGKILL, whatever is in flight.
    let hasty = dir.path().join("hasty.toml");
    std::fs::write(&hasty, "[http]\nrequest_timeout = \"1ms\"\n")?;
    let server = Server::start(&pipes, &data, &["--config", hasty.to_str().ok_or("path")?]).await?;
    let mut codes = BTreeMap::new();
    for key in &keys[..150] {
        let response = client
            .post(server.url("/api/v1/wal/write"))
            .json(&json!({"namespace": "keys", "idempotency_key": key, "payload": {"key": key}}))
            .send()
            .await?;
        *codes.entry(response.status().as_u16()).or_insert(0) += 1;
    }
    for key in &keys[150..] {
        write_and_reset(&server.address, key).await?;
    }
    server.kill().await?;
    assert!(
        codes.keys().any(|c| *c == 408 || *c == 504),
        "no request timed out: {codes:?}"
    );

    // Retried: every key is answered 202 (never a lasting 409), a repeat where its
    // first write had become durable.
    let server = Server::start(&pipes, &data, &[]).await?;
    let mut first = BTreeMap::new();
    for key in &keys {
        first.insert(key.clone(), write_key(&client, &server, key).await?.0);
    }
    // Dropped clients against a running server: each retry waits for the write in
    // flight instead of answering 409.
    for key in &keys[..100] {
        write_and_reset(&server.address, &format!("{key}-again")).await?;
    }
    for key in &keys[..100] {
        let key = format!("{key}-again");
        first.insert(key.clone(), write_key(&client, &server, &key).await?.0);
    }
    server.kill().await?;

    // After SIGKILL every key answers with the ids it had.
    let server = Server::start(&pipes, &data, &[]).await?;
    for (key, id) in &first {
        let (again, repeated) = write_key(&client, &server, key).await?;
        assert!(repeated, "key {key} appended again");
        assert_eq!(&again, id, "key {key}");
    }
    // And each key's message is in the log once: one message id delivered per key.
    eventually(Duration::from_secs(30), "every key delivered", || async {
        Ok(delivered_by_key(&out)?.len() == first.len())
    })
    .await?;
    for (key, ids) in delivered_by_key(&out)? {
        assert_eq!(ids.len(), 1, "key {key} was appended {} times", ids.len());
        assert_eq!(ids.first(), first.get(&key), "key {key}");
    }
    Ok(())
}

#[tokio::test]
async fn idle_connections_are_closed_and_never_crowd_out_writes() -> Result {
    let dir = tempfile::tempdir()?;
    let (pipes, data) = (dir.path().join("pipelines"), dir.path().join("data"));
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("idle.toml"),
        open_pipeline("idle", &dir.path().join("out.jsonl")),
    )?;
    let config = dir.path().join("wald.toml");
    std::fs::write(
        &config,
        "[http]\nheader_read_timeout = \"3s\"\nidle_timeout = \"1s\"\n",
    )?;
    let mut command =
        Server::command(&pipes, &data, &["--config", config.to_str().ok_or("path")?])?;
    // A low descriptor limit: soft 512 (raised at start to the hard 1024), far fewer
    // than the connections below.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = rustix::process::Rlimit {
                current: Some(512),
                maximum: Some(1024),
            };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                .map_err(std::io::Error::from)
        });
    }
    let server = Server::run(command).await?;
    assert!(server.logged("File descriptor limit raised"));

    // A connection that sent a request and then nothing is closed after idle_timeout.
    let mut kept_alive = TcpStream::connect(&server.address).await?;
    kept_alive
        .write_all(b"GET /api/v1/health/liveness HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut answer = [0u8; 1024];
    let n = kept_alive.read(&mut answer).await?;
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));

    // 2,000 connections that send nothing at all.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(&server.address).await?);
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), kept_alive.read(&mut answer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "kept open: {closed:?}"
    );

    // Writes on new connections are answered at once all the while.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    for i in 0..50 {
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            client
                .post(server.url("/api/v1/wal/write"))
                .json(&json!({"namespace": "idle", "payload": {"i": i}}))
                .send(),
        )
        .await??;
        assert_eq!(response.status(), 202);
    }
    assert!(!server.logged("Accept failed"));

    // The idle ones are closed: those evicted for the writes, the rest after
    // header_read_timeout.
    let mut still_open = 0;
    for mut stream in idle {
        let read = tokio::time::timeout(Duration::from_secs(6), stream.read(&mut answer)).await;
        if !matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0);
    Ok(())
}

#[tokio::test]
async fn a_target_that_cannot_be_built_is_built_again_once_it_can_be() -> Result {
    let dir = tempfile::tempdir()?;
    let (pipes, data) = (dir.path().join("pipelines"), dir.path().join("data"));
    std::fs::create_dir_all(&pipes)?;
    // The target's directory cannot be made: a file stands in its place.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, "")?;
    let out = blocked.join("out.jsonl");
    std::fs::write(pipes.join("build.toml"), open_pipeline("build", &out))?;
    let server = Server::start(&pipes, &data, &[]).await?;
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/wal/write"))
        .json(&json!({"namespace": "build", "payload": {"key": "k"}}))
        .send()
        .await?;
    assert_eq!(response.status(), 202, "writes go on");
    eventually(
        Duration::from_secs(10),
        "delivery shown stalled",
        || async {
            let (_, status) = get(&server, "/api/v1/wal/namespace/build/status").await?;
            Ok(status["state"] == "degraded"
                && status["components"]["delivery"]["state"] == "stalled"
                && status["delivery_error"].is_string())
        },
    )
    .await?;

    std::fs::remove_file(&blocked)?;
    eventually(Duration::from_secs(10), "the message delivered", || async {
        Ok(delivered_by_key(&out)?.contains_key("k"))
    })
    .await?;
    let (_, status) = get(&server, "/api/v1/wal/namespace/build/status").await?;
    assert_eq!(status["state"], "running", "{status}");
    assert!(status.get("delivery_error").is_none(), "{status}");
    Ok(())
}

/// Reads from `stream` until the server closes it.
async fn read_all(stream: &mut TcpStream) -> Result<String> {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn write_request(namespace: &str, i: usize) -> String {
    let body = json!({"namespace": namespace, "payload": {"i": i}}).to_string();
    format!(
        "POST /api/v1/wal/write HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn half_closed_requests_are_answered() -> Result {
    let dir = tempfile::tempdir()?;
    let (pipes, data) = (dir.path().join("pipelines"), dir.path().join("data"));
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("half.toml"),
        open_pipeline("half", &dir.path().join("out.jsonl")),
    )?;
    let server = Server::start(&pipes, &data, &[]).await?;

    // One request, then the client shuts its sending side: it still gets its answer.
    for i in 0..20 {
        let mut stream = TcpStream::connect(&server.address).await?;
        stream
            .write_all(write_request("half", i).as_bytes())
            .await?;
        stream.shutdown().await?;
        let answer = read_all(&mut stream).await?;
        assert!(answer.starts_with("HTTP/1.1 202"), "request {i}: {answer}");
    }
    // 200 pipelined requests, then a half-close: 200 answers.
    let mut stream = TcpStream::connect(&server.address).await?;
    let requests: String = (0..200).map(|i| write_request("half", i)).collect();
    stream.write_all(requests.as_bytes()).await?;
    stream.shutdown().await?;
    let answers = read_all(&mut stream).await?;
    assert_eq!(answers.matches("HTTP/1.1 202").count(), 200);
    let (_, status) = get(&server, "/api/v1/wal/namespace/half/status").await?;
    assert_eq!(status["log"]["next_offset"], 220, "{status}");
    Ok(())
}

#[tokio::test]
async fn odd_entries_in_the_pipelines_directory_hold_up_nothing() -> Result {
    let dir = tempfile::tempdir()?;
    let (pipes, data) = (dir.path().join("pipelines"), dir.path().join("data"));
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("good.toml"),
        open_pipeline("good", &dir.path().join("good.jsonl")),
    )?;
    // A FIFO, a socket and a directory, each named like a pipeline file.
    let fifo = pipes.join("f.toml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()?
            .success()
    );
    let _socket = std::os::unix::net::UnixListener::bind(pipes.join("s.toml"))?;
    std::fs::create_dir(pipes.join("d.toml"))?;
    let admin = common::admin_config(dir.path(), "admin-key")?;
    let args: Vec<&str> = admin.iter().map(String::as_str).collect();

    // Start-up is not held up, and only those entries are quarantined.
    let server = Server::start(&pipes, &data, &args).await?;
    let client = reqwest::Client::new();
    let pipelines: Value = client
        .get(server.url("/api/v1/admin/pipelines"))
        .bearer_auth("admin-key")
        .send()
        .await?
        .json()
        .await?;
    let quarantined = pipelines["quarantined"].as_array().ok_or("quarantined")?;
    let mut codes: Vec<(String, String)> = quarantined
        .iter()
        .map(|q| {
            let file = q["file"].as_str().unwrap_or_default();
            let name = Path::new(file)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            (
                name.to_string(),
                q["errors"][0]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    codes.sort();
    let expected: Vec<(String, String)> = ["d.toml", "f.toml", "s.toml"]
        .iter()
        .map(|f| (f.to_string(), "not_a_regular_file".to_string()))
        .collect();
    assert_eq!(codes, expected, "{pipelines}");
    let response = client
        .post(server.url("/api/v1/wal/write"))
        .json(&json!({"namespace": "good", "payload": 1}))
        .send()
        .await?;
    assert_eq!(response.status(), 202);

    // A reload by the watcher, by SIGHUP and by the API each complete and apply.
    std::fs::write(
        pipes.join("more.toml"),
        open_pipeline("more", &dir.path().join("more.jsonl")),
    )?;
    eventually(
        Duration::from_secs(10),
        "the watcher added `more`",
        || async { Ok(get(&server, "/api/v1/wal/namespace/more/status").await?.0 == 200) },
    )
    .await?;
    let pid = server.child.id().ok_or("pid")?.to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()?
            .success()
    );
    let reload = tokio::time::timeout(
        Duration::from_secs(10),
        client
            .post(server.url("/api/v1/admin/reload"))
            .bearer_auth("admin-key")
            .send(),
    )
    .await??;
    assert_eq!(reload.status(), 200);
    let reload: Value = reload.json().await?;
    assert_eq!(reload["result"], "partial", "{reload}");

    // Shutdown is not held up either.
    assert!(common::stop(server.child).await?.success());
    Ok(())
}

/// Sends `request` raw, shuts the sending side, and returns the status line and the
/// JSON body of the answer.
async fn raw(address: &str, request: &[u8]) -> Result<(String, Value)> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(request).await?;
    let _ = stream.shutdown().await;
    let answer = read_all(&mut stream).await?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or(answer.clone())?;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, serde_json::from_str(body)?))
}

#[tokio::test]
async fn every_error_answer_is_json_with_a_stable_code() -> Result {
    let dir = tempfile::tempdir()?;
    let (pipes, data) = (dir.path().join("pipelines"), dir.path().join("data"));
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("errs.toml"),
        open_pipeline("errs", &dir.path().join("out.jsonl")),
    )?;
    let config = dir.path().join("wald.toml");
    std::fs::write(&config, "[http]\nrequest_timeout = \"2s\"\n")?;
    let server =
        Server::start(&pipes, &data, &["--config", config.to_str().ok_or("path")?]).await?;
    let address = server.address.clone();
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let many_headers: String = (0..200)
        .map(|i| format!("x-{i}: {}\r\n", "y".repeat(100)))
        .collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("no such route", b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "404", "route_not_found"),
        ("a missing API page", b"GET /api/docs/nope.js HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "404", "route_not_found"),
        ("a wrong method", b"GET /api/v1/wal/write HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "405", "method_not_allowed"),
        ("a bad path parameter", b"GET /api/v1/wal/transaction/not-a-uuid/status HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "400", "malformed_request"),
        ("garbage", b"\x01\x02garbage\r\n\r\n".to_vec(), "400", "malformed_request"),
        ("an invalid header name", b"GET / HTTP/1.1\r\nbad header: x\r\n\r\n".to_vec(), "400", "malformed_request"),
        ("a URI too long", long_uri.into_bytes(), "414", "uri_too_long"),
        ("headers too large", many_headers.into_bytes(), "431", "headers_too_large"),
        ("a body that ends short", b"POST /api/v1/wal/write HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"namespace\"".to_vec(), "400", "malformed_request"),
    ];
    for (what, request, status, code) in cases {
        let (line, body) = raw(&address, &request).await?;
        assert!(
            line.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {line} {body}"
        );
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
    }

    // A declared body over the limit is refused before any of it is sent.
    for length in ["9437184", "99999999999"] {
        let mut stream = TcpStream::connect(&address).await?;
        let head = format!(
            "POST /api/v1/wal/write HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer)).await??;
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{length}: {answer}");
        assert!(answer.contains("\"code\":\"body_too_large\""), "{answer}");
    }

    // A body that never arrives in full: 408 once the request timeout passes, and no
    // claim about durability, since nothing was written.
    let mut stream = TcpStream::connect(&address).await?;
    stream
        .write_all(b"POST /api/v1/wal/write HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .await?;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    let (_, status) = get(&server, "/api/v1/wal/namespace/errs/status").await?;
    assert_eq!(status["log"]["next_offset"], 0, "{status}");
    Ok(())
}

#[tokio::test]
async fn a_closed_output_pipe_ends_a_subcommand_quietly() -> Result {
    let dir = tempfile::tempdir()?;
    let (pipes, data) = (dir.path().join("pipelines"), dir.path().join("data"));
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("pipe.toml"),
        open_pipeline("pipe", &dir.path().join("out.jsonl")),
    )?;
    let server = Server::start(&pipes, &data, &[]).await?;
    let messages = dir.path().join("messages.jsonl");
    let lines: String = (0..500)
        .map(|i| format!("{}\n", json!({"namespace": "pipe", "payload": {"i": i}})))
        .collect();
    std::fs::write(&messages, lines)?;
    // `wald write --file ... | head -1`
    let mut child = common::wald()
        .args(["write", "--server", &server.url(""), "--file"])
        .arg(&messages)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or("stdout")?;
    let mut first = [0u8; 64];
    std::io::Read::read(&mut stdout, &mut first)?;
    drop(stdout);
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.trim().is_empty(), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "{stderr}");
    Ok(())
}
