//! Ceilings for durable single writes over HTTP: a child process (this binary,
//! `--ceiling-server DIR DESIGN`) that parses each request and its JSON body (namespace
//! and payload), appends a checksummed frame, `fdatasync`s once for every write waiting
//! and answers 202 with an id, and does nothing else: no layers, no routing, no
//! delivery, no status index. The least a durable write costs in each design, to read
//! wald and Redis against:
//!
//! - `hand`: thread-per-core, like Redis's event loop. One thread per core, each a
//!   single-threaded event loop with a listener of its own on one port (`SO_REUSEPORT`,
//!   so the kernel spreads the connections), its own log file and its own group commit:
//!   once the connections ready to run have appended, the loop writes and syncs on its
//!   own thread, as Redis does with `appendfsync always`, then answers them. HTTP/1.1
//!   is parsed by hand (`httparse`).
//! - `axum`: the same loops, each serving an axum router with the one route (hyper's
//!   HTTP/1.1), the HTTP stack wald uses.
//! - `writer-thread`: wald's shape. One work-stealing runtime with a thread per core
//!   serves the axum router; the handlers hand their frames to one writer thread, which
//!   takes every frame waiting, writes, syncs and wakes their handlers.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};

/// Largest request accepted: head and body.
const MAX_REQUEST: usize = 64 * 1024;

/// The server in a child process, killed when dropped.
pub struct Ceiling {
    child: std::process::Child,
    pub address: SocketAddr,
    pub design: Design,
}

impl Ceiling {
    /// Starts this binary as the ceiling server of `design`, its log files under `dir`.
    pub fn start(dir: &Path, design: Design) -> crate::Result<Self> {
        let dir = dir.join(format!("ceiling-{}", design.arg()));
        std::fs::create_dir_all(&dir)?;
        let (child, address) = crate::process::start_server(&[
            "--ceiling-server".as_ref(),
            dir.as_os_str(),
            design.arg().as_ref(),
        ])?;
        Ok(Self {
            child,
            address: address.parse()?,
            design,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The designs measured (see the module's documentation).
#[derive(Clone, Copy)]
pub enum Design {
    Hand,
    Axum,
    WriterThread,
}

impl Design {
    pub const ALL: [Design; 3] = [Design::Hand, Design::Axum, Design::WriterThread];

    pub fn arg(self) -> &'static str {
        match self {
            Design::Hand => "hand",
            Design::Axum => "axum",
            Design::WriterThread => "writer-thread",
        }
    }
}

/// Child process: the server of `design`; prints its address, runs until killed.
pub fn serve(dir: PathBuf, design: &str) -> crate::Result {
    let Some(design) = Design::ALL.into_iter().find(|d| d.arg() == design) else {
        return Err(format!("--ceiling-server DIR hand|axum|writer-thread, not {design}").into());
    };
    let loops = std::thread::available_parallelism().map_or(2, |n| n.get());
    if let Design::WriterThread = design {
        return serve_with_writer_thread(&dir, loops);
    }
    let (bound, port) = std::sync::mpsc::channel::<crate::Result<u16>>();
    let mut threads = Vec::new();
    let mut first_port = None;
    for index in 0..loops {
        let dir = dir.clone();
        let bound = bound.clone();
        threads.push(std::thread::spawn(move || {
            if let Err(e) = event_loop(index, first_port, &dir, design, &bound) {
                let _ = bound.send(Err(e.to_string().into()));
            }
        }));
        // The first loop picks the port; the others bind the same one.
        let listening = port.recv()??;
        first_port = Some(listening);
    }
    println!("127.0.0.1:{}", first_port.ok_or("no event loop")?);
    std::io::stdout().flush()?;
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

/// What the connections of one loop share with its committer; only that loop's thread
/// touches it, so its lock is never contended.
struct Loop {
    group: Mutex<Group>,
    /// Told when a group gets its first frame.
    filled: Notify,
    /// The number of the last group synced.
    synced: watch::Receiver<u64>,
}

#[derive(Default)]
struct Group {
    /// Frames appended and not yet written.
    frames: Vec<u8>,
    /// The number of the group being filled; it is durable once `synced` reaches it.
    number: u64,
}

impl Loop {
    /// Appends the write `body` as a checksummed frame to the group being filled: the
    /// group's number, or none if the body is not a write.
    fn append(&self, body: &[u8]) -> Option<u64> {
        let mut group = self.group.lock().unwrap_or_else(|e| e.into_inner());
        if !frame(&mut group.frames, body) {
            return None;
        }
        self.filled.notify_one();
        Some(group.number)
    }

    /// Waits until group `number` is durable: the answer's body, or none if the
    /// committer is gone.
    async fn durable(&self, number: u64) -> Option<String> {
        self.synced.clone().wait_for(|s| *s >= number).await.ok()?;
        Some(answer())
    }
}

/// Appends the write `body` to `frames` as a checksummed frame; false if it is not a
/// write.
fn frame(frames: &mut Vec<u8>, body: &[u8]) -> bool {
    let Ok(write) = serde_json::from_slice::<Write>(body) else {
        return false;
    };
    if write.namespace.is_empty() {
        return false;
    }
    frames.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frames.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    frames.extend_from_slice(body);
    true
}

/// The body of a 202: a new id as the transaction's and its message's.
fn answer() -> String {
    let id = uuid::Uuid::now_v7();
    format!("{{\"transaction_id\":\"{id}\",\"message_ids\":[\"{id}\"]}}")
}

/// One event loop: a single-threaded runtime serving its listener.
fn event_loop(
    index: usize,
    port: Option<u16>,
    dir: &Path,
    design: Design,
    bound: &std::sync::mpsc::Sender<crate::Result<u16>>,
) -> crate::Result {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("ceiling-{index}.log")))?;
    runtime.block_on(async move {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseport(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(0))))?;
        let listener: TcpListener = socket.listen(1024)?;
        bound.send(Ok(listener.local_addr()?.port()))?;
        let (synced_tx, synced) = watch::channel(0u64);
        let shared = Arc::new(Loop {
            group: Mutex::new(Group {
                number: 1,
                ..Group::default()
            }),
            filled: Notify::new(),
            synced,
        });
        tokio::spawn(commit(file, shared.clone(), synced_tx));
        match design {
            Design::Hand => loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::spawn(connection(stream, shared.clone()));
            },
            _ => serve_axum(listener, axum_write, shared).await,
        }
    })
}

/// The loop's group commit: once a group has frames and every connection ready to run
/// has run, writes and syncs it on this thread, then tells the group it is durable.
async fn commit(mut file: std::fs::File, shared: Arc<Loop>, synced: watch::Sender<u64>) {
    loop {
        shared.filled.notified().await;
        // The connections woken with this one append to the same group first.
        tokio::task::yield_now().await;
        let (frames, number) = {
            let mut group = shared.group.lock().unwrap_or_else(|e| e.into_inner());
            if group.frames.is_empty() {
                continue;
            }
            let number = group.number;
            group.number += 1;
            (std::mem::take(&mut group.frames), number)
        };
        if let Err(e) = file.write_all(&frames).and_then(|()| file.sync_data()) {
            eprintln!("ceiling server: {e}");
            std::process::exit(1);
        }
        synced.send_replace(number);
    }
}

/// The body of a write.
#[derive(serde::Deserialize)]
struct Write<'a> {
    #[serde(borrow)]
    namespace: &'a str,
    #[allow(dead_code)]
    payload: serde::de::IgnoredAny,
}

/// Serves an axum router whose one route is `write`, with `state`.
async fn serve_axum<H, T, S>(listener: TcpListener, write: H, state: S) -> crate::Result
where
    H: axum::handler::Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    let app = axum::Router::new()
        .route("/api/v1/wal/write", axum::routing::post(write))
        .with_state(state);
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// An axum answer: 202 with `answer`, 400 if the body was not a write, 503 if the
/// commit is gone.
fn axum_answer(answer: Result<Option<String>, ()>) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    match answer {
        Ok(Some(answer)) => (
            StatusCode::ACCEPTED,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            answer,
        )
            .into_response(),
        Ok(None) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Err(()) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The write route on a loop, as an axum handler.
async fn axum_write(
    axum::extract::State(shared): axum::extract::State<Arc<Loop>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let Some(number) = shared.append(&body) else {
        return axum_answer(Err(()));
    };
    axum_answer(Ok(shared.durable(number).await))
}

/// A frame for the writer thread, and whom to tell once it is durable.
type Pending = (Vec<u8>, tokio::sync::oneshot::Sender<()>);

/// wald's shape: a work-stealing runtime with `threads` threads serving axum, and one
/// writer thread doing the group commit.
fn serve_with_writer_thread(dir: &Path, threads: usize) -> crate::Result {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("ceiling.log"))?;
    let (send, receive) = std::sync::mpsc::channel::<Pending>();
    std::thread::spawn(move || {
        let mut frames = Vec::new();
        let mut waiting = Vec::new();
        while let Ok(first) = receive.recv() {
            for (frame, done) in std::iter::once(first).chain(receive.try_iter()) {
                frames.extend_from_slice(&frame);
                waiting.push(done);
            }
            if let Err(e) = file.write_all(&frames).and_then(|()| file.sync_data()) {
                eprintln!("ceiling server: {e}");
                std::process::exit(1);
            }
            frames.clear();
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        serve_axum(listener, write_to_writer, send).await
    })
}

/// The write route of `writer-thread`, as an axum handler.
async fn write_to_writer(
    axum::extract::State(writer): axum::extract::State<std::sync::mpsc::Sender<Pending>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let mut frames = Vec::with_capacity(body.len() + 8);
    if !frame(&mut frames, &body) {
        return axum_answer(Err(()));
    }
    let (done, durable) = tokio::sync::oneshot::channel();
    if writer.send((frames, done)).is_err() {
        return axum_answer(Ok(None));
    }
    axum_answer(Ok(durable.await.ok().map(|()| answer())))
}

/// One keep-alive connection of the hand-written loop: each request parsed, appended,
/// answered once synced.
async fn connection(mut stream: TcpStream, shared: Arc<Loop>) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(4096);
    let mut answer = Vec::with_capacity(256);
    loop {
        let (head, length) = loop {
            if let Some(request) = parse(&buffer)? {
                break request;
            }
            if buffer.len() >= MAX_REQUEST || read_more(&mut stream, &mut buffer).await? == 0 {
                return Ok(());
            }
        };
        if head + length > MAX_REQUEST {
            return Ok(());
        }
        while buffer.len() < head + length {
            if read_more(&mut stream, &mut buffer).await? == 0 {
                return Ok(());
            }
        }
        let number = shared.append(&buffer[head..head + length]);
        buffer.drain(..head + length);
        answer.clear();
        match number {
            Some(number) => {
                let Some(body) = shared.durable(number).await else {
                    return Ok(());
                };
                write!(
                    answer,
                    "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
            None => {
                answer.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            }
        }
        stream.write_all(&answer).await?;
    }
}

/// The length of the request's head and of its body, once the head is complete.
fn parse(buffer: &[u8]) -> std::io::Result<Option<(usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buffer) {
        Ok(httparse::Status::Complete(head)) => {
            let length = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            Ok(Some((head, length)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<usize> {
    buffer.reserve(4096);
    stream.read_buf(buffer).await
}
