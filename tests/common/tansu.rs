//! A tansu broker for the tests and the benchmarks (which include this file as a
//! module of their own): nothing here depends on the rest of `tests/common`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `psql` against `database` on the local server with `args` (`-c SQL` or
/// `-f FILE`), stopping at the first error.
pub fn psql_in(database: &str, args: &[&std::ffi::OsStr]) -> std::io::Result<Output> {
    Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(args)
        .output()
}

fn failure(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A tansu 0.6.0 broker: a Kafka-protocol broker of its own (not librdkafka's mock
/// cluster, which shares code with the client under test), keeping its data in a
/// PostgreSQL database made for it on the local server (schema
/// `tests/tansu/010-schema.sql`, from tansu's repository at v0.6.0). `.ci/run` installs
/// the binary into `~/.cache/wald/tansu` (or give its path in `TANSU`). Stopped, and its
/// database dropped, when dropped.
pub struct Tansu {
    binary: PathBuf,
    child: Option<std::process::Child>,
    database: String,
    port: u16,
    pub brokers: String,
}

impl Tansu {
    /// Kafka client options every client of this broker needs. tansu 0.6.0 answers a
    /// `read_committed` offsets request (librdkafka's default isolation) with SQL that
    /// PostgreSQL before 16 refuses ("subquery in FROM must have an alias") and drops
    /// the connection; wald's producer is not transactional, so reading uncommitted
    /// records reads the same ones.
    pub const OPTIONS: &'static str = "\"isolation.level\" = \"read_uncommitted\"\n";

    /// None (the test skipped) when the binary is missing, except under CI.
    pub async fn start() -> Result<Option<Self>, Box<dyn std::error::Error>> {
        let binary = std::env::var_os("TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/wald/tansu/bin/tansu")
            });
        if !binary.exists() {
            let reason = format!("tansu is not installed at {}", binary.display());
            if std::env::var_os("CI").is_some() {
                return Err(format!("{reason}, and CI is set: .ci/run installs it").into());
            }
            eprintln!(
                "skipped: {reason} (cargo install tansu --version 0.6.0 --locked --features postgres)"
            );
            return Ok(None);
        }
        let postgres = std::net::SocketAddr::from(([127, 0, 0, 1], 5432));
        if std::net::TcpStream::connect_timeout(&postgres, Duration::from_secs(2)).is_err() {
            let reason = format!("PostgreSQL is not reachable at {postgres}");
            if std::env::var_os("CI").is_some() {
                return Err(format!("{reason}, and CI is set: CI machines must run it").into());
            }
            eprintln!("skipped: {reason}");
            return Ok(None);
        }
        let database = format!("tansu_{}", uuid::Uuid::now_v7().simple());
        let created = psql_in(
            "test",
            &[
                "-c".as_ref(),
                format!("create database {database}").as_ref(),
            ],
        )?;
        if !created.status.success() {
            return Err(format!("creating {database}: {}", failure(&created)).into());
        }
        let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tansu/010-schema.sql");
        let applied = psql_in(&database, &["-f".as_ref(), schema.as_os_str()])?;
        if !applied.status.success() {
            return Err(format!("tansu's schema: {}", failure(&applied)).into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut tansu = Self {
            binary,
            child: None,
            database,
            port,
            brokers: format!("127.0.0.1:{port}"),
        };
        tansu.run().await?;
        Ok(Some(tansu))
    }

    /// Starts the broker on its port and database, and waits until it listens.
    pub async fn run(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let mut child = std::process::Command::new(&self.binary)
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ])
            .arg("--storage-engine")
            .arg(format!(
                "postgres://postgres@127.0.0.1:5432/{}?sslmode=disable",
                self.database
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = child.try_wait()? {
                return Err(format!("tansu exited: {status}").into());
            }
            if std::time::Instant::now() > deadline {
                return Err("tansu did not listen within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills the broker (SIGKILL); [`Tansu::run`] starts it again on the same data.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Creates `topic` with `partitions` partitions through the Kafka protocol.
    #[cfg(feature = "kafka")]
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<(), Box<dyn std::error::Error>> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &self.brokers)
                .create()?;
        let made = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await?;
        for result in made {
            result.map_err(|(topic, e)| format!("creating {topic}: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = psql_in(
            "test",
            &[
                "-c".as_ref(),
                format!("drop database if exists {} with (force)", self.database).as_ref(),
            ],
        );
    }
}
