//! Helpers shared by the integration tests: running the real `wald` binary, and finding
//! out whether a local service (Postgres, Redis) is there.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod tansu;
#[allow(unused_imports)]
pub use tansu::{Tansu, psql_in};

/// The crate's root: where `pipelines/` and `tests/fixtures/` are.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `wald` command run from the crate's root, with no `wald.toml` from the caller.
pub fn wald() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wald"));
    command
        .current_dir(root())
        .env_remove("WALD_CONFIG")
        .stdin(Stdio::null());
    command
}

/// Runs `wald` with `args` and returns what it did.
pub fn run(args: &[&str]) -> Output {
    wald().args(args).output().expect("the wald binary runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One finding of `validate --format json`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub file: String,
    pub severity: String,
    pub code: String,
    /// `line:column`, or `-` for a finding about the whole file.
    pub place: String,
}

/// Runs `wald validate --format json` on `paths` and parses what it printed.
pub fn validate_json(paths: &[&Path]) -> (Option<i32>, Vec<Found>) {
    let output = wald()
        .args(["validate", "--format", "json"])
        .args(paths)
        .output()
        .expect("the wald binary runs");
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    let found = stdout(&output)
        .lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let place = match (v["line"].as_u64(), v["column"].as_u64()) {
                (Some(l), Some(c)) => format!("{l}:{c}"),
                _ => "-".to_string(),
            };
            Found {
                file: v["file"].as_str().unwrap_or_default().to_string(),
                severity: v["severity"].as_str().unwrap_or_default().to_string(),
                code: v["code"].as_str().unwrap_or_default().to_string(),
                place,
            }
        })
        .collect();
    (output.status.code(), found)
}

/// Whether a service this test needs answers at `addr`. Without it the test is skipped
/// with a printed reason, except under CI, where it fails: CI machines have it.
pub fn service_available(name: &str, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} is not reachable at {addr}, and CI is set: CI machines must run it");
    }
    eprintln!("skipped: {name} is not reachable at {addr} (set CI=1 to make this a failure)");
    false
}

/// Runs `psql` against the local test database with `args` (`-c SQL` or `-f FILE`),
/// stopping at the first error.
pub fn psql(args: &[&std::ffi::OsStr]) -> std::io::Result<Output> {
    psql_in("test", args)
}

/// Writes `dir/wald.toml` with the admin key `key` (its SHA-256); returns the
/// `--config` arguments that use it.
pub fn admin_config(dir: &Path, key: &str) -> std::io::Result<[String; 2]> {
    use sha2::Digest;
    let path = dir.join("wald.toml");
    let hash = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    std::fs::write(&path, format!("admin_key_sha256 = \"{hash}\"\n"))?;
    Ok(["--config".into(), path.display().to_string()])
}

/// Serves `app` on a free port of the test's runtime; its address.
pub async fn serve(app: axum::Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// A `wald serve` process on a free port.
pub struct Server {
    pub child: tokio::process::Child,
    /// `127.0.0.1:port`
    pub address: String,
    /// Every line the server has logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// The listening address in a log line, text (`address=...`) or JSON (`"address":"..."`).
fn listening_address(line: &str) -> Option<String> {
    let rest = line
        .split("address=")
        .nth(1)
        .or_else(|| line.split("\"address\":\"").nth(1))?;
    Some(
        rest.split(|c: char| c.is_whitespace() || c == '"')
            .next()
            .unwrap_or("")
            .to_string(),
    )
}

impl Server {
    /// Starts `wald serve` with `pipelines` and `data` (and `extra` arguments), and waits
    /// until it listens. It runs from `data`, so paths it is given should be absolute.
    pub async fn start(
        pipelines: &Path,
        data: &Path,
        extra: &[&str],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        Self::run(Self::command(pipelines, data, extra)?).await
    }

    /// The command [`Server::start`] runs, to change before [`Server::run`].
    pub fn command(
        pipelines: &Path,
        data: &Path,
        extra: &[&str],
    ) -> Result<tokio::process::Command, Box<dyn std::error::Error>> {
        // Run from the data directory: what a pipeline writes to a relative path (the
        // shipped pipelines' `data/out/`) lands there, not in the checkout.
        std::fs::create_dir_all(data)?;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wald"));
        command
            .current_dir(data)
            .env_remove("WALD_CONFIG")
            .env("RUST_LOG", "info")
            .args(extra)
            .args(["serve", "--listen", "127.0.0.1:0", "--pipelines"])
            .arg(pipelines)
            .arg("--data-dir")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(command)
    }

    /// Runs `command` (a `wald serve`) and waits until it listens.
    pub async fn run(
        mut command: tokio::process::Command,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = command.spawn()?;
        let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let address = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                let address = listening_address(&line);
                log.lock()
                    .map_err(|_| std::io::Error::other("poisoned"))?
                    .push(line);
                if let Some(address) = address {
                    return Ok::<_, std::io::Error>(address);
                }
            }
            Err(std::io::Error::other("wald exited before listening"))
        })
        .await??;
        // Keep draining the log so that the child never blocks on a full pipe.
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut kept) = kept.lock() {
                    kept.push(line);
                }
            }
        });
        Ok(Self {
            child,
            address,
            log,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Whether a line the server logged so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logged_line(|l| l.contains(text))
    }

    /// Whether a line the server logged so far is `such`.
    pub fn logged_line(&self, such: impl Fn(&str) -> bool) -> bool {
        self.log
            .lock()
            .is_ok_and(|lines| lines.iter().any(|l| such(l)))
    }

    /// Kills the server with SIGKILL and waits for it.
    pub async fn kill(mut self) -> Result<(), Box<dyn std::error::Error>> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Stops a server with SIGTERM and waits for it.
pub async fn stop(
    mut child: tokio::process::Child,
) -> Result<std::process::ExitStatus, Box<dyn std::error::Error>> {
    let pid = child.id().ok_or("already exited")?;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    Ok(tokio::time::timeout(Duration::from_secs(10), child.wait()).await??)
}

/// A `redis-server` of the test's own on a free port, its data in `dir` (append-only,
/// synced on every write), so that it can be killed and started again.
pub struct PrivateRedis {
    child: std::process::Child,
    pub port: u16,
}

impl PrivateRedis {
    /// A new server on a free port, its data in `dir` (created).
    pub async fn fresh(dir: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Self::start(dir, port).await
    }

    /// The server on `port` with the data in `dir`: started again after a kill.
    pub async fn start(dir: &Path, port: u16) -> Result<Self, Box<dyn std::error::Error>> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err("the private redis-server did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child, port })
    }

    pub fn kill(mut self) -> Result<(), Box<dyn std::error::Error>> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// Whether `redis-server` can be started here; without it the test is skipped with a
/// printed reason, except under CI, where it fails.
pub fn redis_server_installed() -> bool {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("redis-server is not installed, and CI is set: CI machines have it");
    }
    eprintln!("skipped: redis-server is not installed");
    false
}

/// moto's SQS server on a free port, stopped when dropped.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

impl Moto {
    /// None (the test skipped) when moto is not installed, except under CI.
    pub async fn start() -> Result<Option<Self>, Box<dyn std::error::Error>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => return skip(format!("python3 could not run: {e}")),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                return skip(format!(
                    "moto's server exited ({status}); install it with pip install 'moto[server]'"
                ));
            }
            if std::time::Instant::now() > deadline {
                return Err("moto's server did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Some(Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }))
    }
}

fn skip(reason: String) -> Result<Option<Moto>, Box<dyn std::error::Error>> {
    if std::env::var_os("CI").is_some() {
        return Err(format!("{reason}, and CI is set: .ci/run installs it").into());
    }
    eprintln!("skipped: {reason}");
    Ok(None)
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// An SQS client of this server (static test credentials, no other address).
    #[cfg(feature = "sqs")]
    pub fn client(&self) -> aws_sdk_sqs::Client {
        use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(&self.endpoint)
                .credentials_provider(Credentials::new("test", "test", None, None, "test"))
                .build(),
        )
    }
}
