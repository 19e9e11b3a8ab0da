//! The real `wald` binary as a child process: started on a directory of pipelines,
//! waited for until ready, measured (resident memory), killed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `wald serve`, killed with SIGKILL when dropped.
pub struct Wald {
    pub child: Child,
    pub address: String,
}

impl Wald {
    /// Starts `wald serve` on `pipelines` and `data`, on a free port.
    pub fn start(pipelines: &Path, data: &Path) -> crate::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(binary())
            .env_remove("WALD_CONFIG")
            .env("RUST_LOG", "warn")
            .args(["serve", "--listen", &address, "--pipelines"])
            .arg(pipelines)
            .arg("--data-dir")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self { child, address })
    }

    /// Waits until readiness answers 200.
    pub fn wait_ready(&mut self, limit: Duration) -> crate::Result {
        let deadline = Instant::now() + limit;
        loop {
            if get(&self.address, "/api/v1/health/readiness").is_ok_and(|status| status == 200) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("wald exited: {status}").into());
            }
            if Instant::now() > deadline {
                return Err("wald did not become ready".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resident memory in MiB.
    pub fn rss_mib(&self) -> crate::Result<f64> {
        rss_mib(self.child.id())
    }
}

/// Starts this binary as a child process with `args` (one of the suite's servers, see
/// `main`), and reads the address it prints first.
pub fn start_server(args: &[&std::ffi::OsStr]) -> crate::Result<(Child, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?),
        &mut line,
    )?;
    Ok((child, line.trim().to_string()))
}

/// The `wald` binary measured: this build's, or the one the environment variable
/// `WALD_BENCH_BINARY` names, to measure another build against the same baselines.
fn binary() -> std::ffi::OsString {
    std::env::var_os("WALD_BENCH_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_wald").into())
}

impl Drop for Wald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid` in MiB (`VmRSS`).
pub fn rss_mib(pid: u32) -> crate::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS")?;
    Ok(kib / 1024.0)
}

/// A plain HTTP/1.1 request: the status code.
pub fn request(address: &str, method: &str, path: &str, body: &str) -> crate::Result<u16> {
    Ok(exchange(address, method, path, body)?.0)
}

/// A GET answered 200: its JSON body.
pub fn get_json(address: &str, path: &str) -> crate::Result<serde_json::Value> {
    match exchange(address, "GET", path, "")? {
        (200, body) => Ok(serde_json::from_str(&body)?),
        (status, body) => Err(format!("GET {path} answered {status}: {body:.200}").into()),
    }
}

/// A plain HTTP/1.1 request on a connection of its own: the status code and the body.
fn exchange(address: &str, method: &str, path: &str, body: &str) -> crate::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {answer:.80}"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

pub fn get(address: &str, path: &str) -> crate::Result<u16> {
    request(address, "GET", path, "")
}

/// A namespace with no targets: messages are logged, delivered nowhere.
pub fn idle_pipeline(namespace: &str) -> String {
    format!("namespace = \"{namespace}\"\n[source]\ntype = \"http\"\npublic = true\n")
}
