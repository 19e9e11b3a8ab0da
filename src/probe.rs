//! The reachability checks of `wald validate --connect` that several plugins share: a
//! directory that can be written, a TCP port, a Redis `PING`, a Postgres `SELECT 1`.
//! Each plugin's own `probe` uses them; nothing is written.

use std::path::Path;

/// Why a probe found a service or place unusable, in words for the finding it
/// becomes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

impl From<String> for Unreachable {
    fn from(why: String) -> Self {
        Self(why)
    }
}

impl From<&str> for Unreachable {
    fn from(why: &str) -> Self {
        Self(why.to_string())
    }
}

/// The directory exists and is writable, or can be created: its nearest existing
/// ancestor is a writable directory. Nothing is created.
pub fn writable_dir(dir: &Path) -> Result<(), Unreachable> {
    let mut current = Some(dir);
    while let Some(path) = current {
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_dir() => {
                return Err(format!("{} is not a directory", path.display()).into());
            }
            Ok(_) => {
                return rustix::fs::access(path, rustix::fs::Access::WRITE_OK)
                    .map_err(|e| format!("{} is not writable: {e}", path.display()).into());
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
    Err(format!("no existing directory above {}", dir.display()).into())
}

/// Connects and sends `PING`.
pub async fn redis(url: &str) -> Result<(), Unreachable> {
    let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| format!("PING failed: {e}").into())
}

/// Opens a TCP connection to the URL's host and port.
pub async fn tcp(raw: &str) -> Result<(), Unreachable> {
    let url = url::Url::parse(raw).map_err(|e| format!("invalid URL: {e}"))?;
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    tokio::net::TcpStream::connect((host, port))
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}").into())
}

/// Connects and runs `SELECT 1`.
pub async fn postgres(url: &str) -> Result<(), Unreachable> {
    use sqlx::Executor;

    let mut conn = postgres_connection(url).await?;
    conn.execute("SELECT 1")
        .await
        .map(|_| ())
        .map_err(|e| format!("SELECT 1 failed: {}", postgres_message(&e)).into())
}

/// A connection to the Postgres server at `url`.
pub async fn postgres_connection(url: &str) -> Result<sqlx::PgConnection, Unreachable> {
    use sqlx::Connection;

    sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| format!("cannot connect: {e}").into())
}

/// The server's own words for a database error, without sqlx's decoration.
pub fn postgres_message(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}
