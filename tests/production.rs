//! What a production deployment relies on, through the real binary: HTTPS with
//! certificates renewed in place and client certificates, the security headers, CORS,
//! compressed answers and request bodies (a decompression bomb is a 413), writes
//! refused below `min_free_disk` and taken again once space is back, readiness over
//! the memory limit.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A CA that signs certificates for `localhost`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ok(Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `localhost` signed by this CA: (certificate PEM, key PEM).
    fn sign(&self) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert =
            CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes `content` to `path` the way a renewal does: in full, then renamed into place.
fn replace(path: &Path, content: &str) -> Result {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, content)?;
    std::fs::rename(&fresh, path)?;
    Ok(())
}

/// A TLS client trusting `ca`, with a client certificate when given.
fn connector(ca: &Ca, client: Option<(String, String)>) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(
        ca.issuer.der().to_vec(),
    ))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())?;
            builder.with_client_auth_cert(certs, key)?
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(address: &str, connector: &tokio_rustls::TlsConnector) -> Result<TlsStream> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(connector.connect(name, tcp).await?)
}

/// Sends a GET on `stream` (kept alive) and returns the status of its answer.
async fn get(stream: &mut TlsStream, path: &str) -> Result<u16> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The probes answer a short body with a content-length: read up to its end.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        if n == 0 {
            return Err("the connection closed".into());
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return Ok(text[9..12].parse()?);
            }
        }
    }
}

/// A fresh connection and one GET on it.
async fn get_once(
    address: &str,
    connector: &tokio_rustls::TlsConnector,
    path: &str,
) -> Result<u16> {
    let mut stream = connect(address, connector).await?;
    get(&mut stream, path).await
}

/// Starts `wald serve` on the shipped pipelines with `config` as its `wald.toml`.
async fn start_with(dir: &Path, config: &str) -> Result<Server> {
    let path = dir.join("wald.toml");
    std::fs::write(&path, config)?;
    Server::start(
        &common::root().join("pipelines"),
        &dir.join("data"),
        &["--config", path.to_str().ok_or("path")?],
    )
    .await
}

#[tokio::test]
async fn https_takes_renewed_certificates_without_dropping_open_connections() -> Result {
    let dir = tempfile::tempdir()?;
    let (old_ca, new_ca) = (Ca::new("old")?, Ca::new("new")?);
    let (cert, key) = old_ca.sign()?;
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert)?;
    std::fs::write(&key_path, key)?;
    let server = start_with(
        dir.path(),
        &format!(
            "tls = {{ cert = {:?}, key = {:?} }}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    )
    .await?;
    assert!(server.logged("scheme=\"https\""), "{:?}", server.log);
    let trusts_old = connector(&old_ca, None)?;
    let trusts_new = connector(&new_ca, None)?;
    let mut open = connect(&server.address, &trusts_old).await?;
    assert_eq!(get(&mut open, "/api/v1/health/liveness").await?, 200);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/api/v1/health/liveness", server.address))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    // The certificate is renewed (by another CA, to tell them apart).
    let (cert, key) = new_ca.sign()?;
    replace(&cert_path, &cert)?;
    replace(&key_path, &key)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match get_once(&server.address, &trusts_new, "/api/v1/health/liveness").await {
            Ok(200) => break,
            other => assert!(Instant::now() < deadline, "never renewed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection opened before goes on; new ones get only the new certificate.
    assert_eq!(get(&mut open, "/api/v1/health/liveness").await?, 200);
    assert!(
        get_once(&server.address, &trusts_old, "/api/v1/health/liveness")
            .await
            .is_err()
    );

    // Files that do not load keep the certificate in use and show in health.
    std::fs::write(&cert_path, "not a certificate")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let health: serde_json::Value = {
            let mut stream = connect(&server.address, &trusts_new).await?;
            stream
                .write_all(
                    b"GET /api/v1/health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
                )
                .await?;
            let mut text = String::new();
            stream.read_to_string(&mut text).await.ok();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            serde_json::from_str(body).unwrap_or_default()
        };
        let tls = health["components"]["tls"].clone();
        if tls["state"] == "degraded" {
            assert!(
                tls["error"].as_str().unwrap_or("").contains("tls.crt"),
                "{tls}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never reported: {health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get_once(&server.address, &trusts_new, "/api/v1/health/liveness").await?,
        200
    );
    Ok(())
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_are_served() -> Result {
    let dir = tempfile::tempdir()?;
    let (server_ca, client_ca, other_ca) =
        (Ca::new("server")?, Ca::new("clients")?, Ca::new("other")?);
    let (cert, key) = server_ca.sign()?;
    std::fs::write(dir.path().join("tls.crt"), cert)?;
    std::fs::write(dir.path().join("tls.key"), key)?;
    std::fs::write(dir.path().join("ca.crt"), client_ca.pem())?;
    let file = |name: &str| dir.path().join(name).display().to_string();
    let server = start_with(
        dir.path(),
        &format!(
            "[http]\nheader_read_timeout = \"1s\"\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            file("tls.crt"),
            file("tls.key"),
            file("ca.crt")
        ),
    )
    .await?;
    let path = "/api/v1/health/liveness";
    let with_client = connector(&server_ca, Some(client_ca.sign()?))?;
    assert_eq!(get_once(&server.address, &with_client, path).await?, 200);
    let without = connector(&server_ca, None)?;
    assert!(get_once(&server.address, &without, path).await.is_err());
    let with_other = connector(&server_ca, Some(other_ca.sign()?))?;
    assert!(get_once(&server.address, &with_other, path).await.is_err());
    // A client that connects and never begins its handshake is cut like one that never
    // sends its request.
    let mut idle = tokio::net::TcpStream::connect(&server.address).await?;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    Ok(())
}

#[tokio::test]
async fn certificate_files_that_do_not_load_stop_the_start_with_the_file_named() -> Result {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("ca")?;
    let (cert, _) = ca.sign()?;
    let (_, other_key) = ca.sign()?;
    std::fs::write(dir.path().join("tls.crt"), &cert)?;
    std::fs::write(dir.path().join("empty.crt"), "")?;
    std::fs::write(dir.path().join("tls.key"), &other_key)?;
    let file = |name: &str| dir.path().join(name).display().to_string();
    for (cert, key, expected) in [
        ("missing.crt", "tls.key", "missing.crt"),
        ("empty.crt", "tls.key", "holds no certificate"),
        ("tls.crt", "tls.crt", "no private key"),
        ("tls.crt", "tls.key", "do not make a usable certificate"),
    ] {
        let config = dir.path().join("wald.toml");
        std::fs::write(
            &config,
            format!(
                "tls = {{ cert = {:?}, key = {:?} }}\n",
                file(cert),
                file(key)
            ),
        )?;
        let mut command = common::wald();
        command
            .args([
                "--config",
                config.to_str().ok_or("path")?,
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--pipelines")
            .arg(common::root().join("pipelines"))
            .arg("--data-dir")
            .arg(dir.path().join("data"));
        let output = command.output()?;
        let stderr = common::stderr(&output);
        assert!(!output.status.success(), "{cert}/{key}: {stderr}");
        assert!(stderr.contains(expected), "{cert}/{key}: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn answers_carry_security_headers_and_cors_is_off_unless_configured() -> Result {
    let dir = tempfile::tempdir()?;
    let server = start_with(dir.path(), "").await?;
    let client = reqwest::Client::new();
    let api = client.get(server.url("/api/v1/health")).send().await?;
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(header(&api, "x-content-type-options"), "nosniff");
    assert_eq!(header(&api, "cache-control"), "no-store");
    assert_eq!(header(&api, "content-security-policy"), "");
    let error = client.get(server.url("/nowhere")).send().await?;
    assert_eq!(header(&error, "x-content-type-options"), "nosniff");
    assert_eq!(header(&error, "cache-control"), "no-store");
    for page in ["/ui/", "/api/docs/"] {
        let page = client.get(server.url(page)).send().await?;
        assert_eq!(page.status(), 200);
        assert!(
            header(&page, "content-security-policy").contains("frame-ancestors 'none'"),
            "{:?}",
            page.headers()
        );
        assert_eq!(header(&page, "x-frame-options"), "DENY");
        assert_ne!(header(&page, "cache-control"), "no-store");
    }
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/api/v1/wal/write"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await?;
    assert_eq!(header(&preflight, "access-control-allow-origin"), "");

    let dir = tempfile::tempdir()?;
    let server = start_with(
        dir.path(),
        "[http.cors]\nallowed_origins = [\"https://app.example.com\"]\n",
    )
    .await?;
    for (origin, allowed) in [
        ("https://app.example.com", "https://app.example.com"),
        ("https://evil.example.com", ""),
    ] {
        let preflight = client
            .request(reqwest::Method::OPTIONS, server.url("/api/v1/wal/write"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-api-key")
            .send()
            .await?;
        assert_eq!(header(&preflight, "access-control-allow-origin"), allowed);
        let write = client
            .post(server.url("/api/v1/wal/write"))
            .header("origin", origin)
            .json(&serde_json::json!({"namespace": "demo", "payload": {"n": 1}}))
            .send()
            .await?;
        assert_eq!(write.status(), 202);
        assert_eq!(header(&write, "access-control-allow-origin"), allowed);
    }
    // A bad origin in the settings is refused at start, with its place.
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[http.cors]\nallowed_origins = [\"https://ok.example\", \"https://x.example/\"]\n",
    )?;
    let output = common::run(&[
        "validate",
        "--config",
        config.to_str().ok_or("path")?,
        common::root().join("pipelines").to_str().ok_or("path")?,
    ]);
    let text = format!("{}{}", common::stdout(&output), common::stderr(&output));
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("allowed_origins[1]") || text.contains("bad.toml:2"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn answers_and_write_bodies_are_compressed_and_a_bomb_is_413() -> Result {
    let dir = tempfile::tempdir()?;
    let server = start_with(dir.path(), "[http]\nmax_body_bytes = \"1MiB\"\n").await?;
    let client = reqwest::Client::new();
    for encoding in ["gzip", "br"] {
        let answer = client
            .get(server.url("/api/openapi.json"))
            .header("accept-encoding", encoding)
            .send()
            .await?;
        assert_eq!(answer.status(), 200);
        assert_eq!(
            answer
                .headers()
                .get("content-encoding")
                .and_then(|v| v.to_str().ok()),
            Some(encoding)
        );
    }
    let openapi = client
        .get(server.url("/api/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await?
        .bytes()
        .await?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&openapi[..]), &mut text)?;
    assert!(
        text.contains("\"openapi\""),
        "{}",
        &text[..text.len().min(200)]
    );

    let gzip = |bytes: &[u8]| -> Result<Vec<u8>> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes)?;
        Ok(encoder.finish()?)
    };
    let message =
        |n: u32| serde_json::json!({"namespace": "demo", "payload": {"compressed": n}}).to_string();
    let brotli = |bytes: &[u8]| -> Result<Vec<u8>> {
        let mut out = Vec::new();
        brotli::BrotliCompress(&mut &bytes[..], &mut out, &Default::default())?;
        Ok(out)
    };
    for (encoding, body) in [
        ("gzip", gzip(message(1).as_bytes())?),
        ("zstd", zstd::bulk::compress(message(2).as_bytes(), 3)?),
        ("br", brotli(message(5).as_bytes())?),
    ] {
        let answer = client
            .post(server.url("/api/v1/wal/write"))
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body)
            .send()
            .await?;
        assert_eq!(answer.status(), 202, "{encoding}: {}", answer.text().await?);
    }
    // A write's answer, a few hundred bytes, is not worth compressing.
    let answer = client
        .post(server.url("/api/v1/wal/write"))
        .header("accept-encoding", "gzip, br")
        .json(&serde_json::json!({"namespace": "demo", "payload": {"compressed": 4}}))
        .send()
        .await?;
    assert_eq!(answer.status(), 202);
    assert_eq!(answer.headers().get("content-encoding"), None);
    let batch =
        serde_json::json!({"namespace": "demo", "messages": [{"payload": {"compressed": 3}}]});
    let answer = client
        .post(server.url("/api/v1/wal/write/batch"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(batch.to_string().as_bytes())?)
        .send()
        .await?;
    assert_eq!(answer.status(), 202, "{}", answer.text().await?);
    // Delivered as written.
    let out = dir.path().join("data/data/out/demo.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = std::fs::read_to_string(&out).unwrap_or_default();
        if [1, 2, 3, 5]
            .iter()
            .all(|n| lines.contains(&format!("\"compressed\":{n}")))
        {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {lines}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Decompression bombs: a few KiB that would become 64 MiB.
    let mut bomb = Vec::from(&b"{\"namespace\":\"demo\",\"payload\":\""[..]);
    bomb.resize(64 << 20, b'a');
    // Each twice, on the client's kept-alive connections: an answer given before its
    // body was read in full closes its connection, and says so.
    let bombs = [
        ("zstd", zstd::bulk::compress(&bomb, 1)?),
        ("gzip", gzip(&bomb[..8 << 20])?),
    ];
    for (encoding, body) in bombs.iter().chain(&bombs) {
        assert!(body.len() < 1 << 20, "{encoding}: {}", body.len());
        let answer = client
            .post(server.url("/api/v1/wal/write"))
            .header("content-type", "application/json")
            .header("content-encoding", *encoding)
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(answer.status(), 413, "{encoding}");
        let error: serde_json::Value = answer.json().await?;
        assert_eq!(error["error"]["code"], "body_too_large", "{error}");
    }
    // Not a gzip stream; an encoding not taken.
    for (encoding, status, code) in [
        ("gzip", 400, "malformed_request"),
        ("deflate", 415, "unsupported_media_type"),
    ] {
        let answer = client
            .post(server.url("/api/v1/wal/write"))
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(message(4))
            .send()
            .await?;
        assert_eq!(answer.status(), status, "{encoding}");
        let error: serde_json::Value = answer.json().await?;
        assert_eq!(error["error"]["code"], code, "{error}");
    }
    let ready = client
        .get(server.url("/api/v1/health/readiness"))
        .send()
        .await?;
    assert_eq!(ready.status(), 200);
    Ok(())
}

#[tokio::test]
async fn readiness_fails_over_the_memory_limit() -> Result {
    let dir = tempfile::tempdir()?;
    let server = start_with(dir.path(), "[health]\nmax_resident_memory = \"1MiB\"\n").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let answer = reqwest::get(server.url("/api/v1/health/readiness")).await?;
        let status = answer.status();
        let body: serde_json::Value = answer.json().await?;
        if body["status"] == "memory_high" {
            assert_eq!(status, 503);
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["resources"]["memory_high"], true, "{body}");
    assert_eq!(body["resources"]["max_resident_memory_bytes"], 1 << 20);
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    assert!(
        metrics.contains("wald_resident_memory_limit_bytes 1048576"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nwald_resident_memory_bytes "),
        "{metrics}"
    );
    // Writes still go through: memory is a readiness matter, not a refusal.
    let write = reqwest::Client::new()
        .post(server.url("/api/v1/wal/write"))
        .json(&serde_json::json!({"namespace": "demo", "payload": {}}))
        .send()
        .await?;
    assert_eq!(write.status(), 202);
    Ok(())
}

/// Free bytes on the file system holding `dir`, as wald reads them.
fn free_bytes(dir: &Path) -> Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail * stat.f_frsize)
}

#[tokio::test]
async fn writes_are_refused_below_min_free_disk_and_taken_again_once_space_is_back() -> Result {
    const MARGIN: u64 = 512 << 20;
    let dir = tempfile::tempdir()?;
    let free = free_bytes(dir.path())?;
    if free < 4 * MARGIN {
        eprintln!(
            "skipped: {} MiB free under {}, the test fills 1 GiB",
            free >> 20,
            dir.path().display()
        );
        return Ok(());
    }
    // The threshold sits half a ballast below the free space now: the ballast crosses
    // it, and other writers on this disk would have to move half a GiB to disturb it.
    let server = start_with(
        dir.path(),
        &format!("[health]\nmin_free_disk = {}\n", free - MARGIN),
    )
    .await?;
    let client = reqwest::Client::new();
    let write = || async {
        let answer = client
            .post(server.url("/api/v1/wal/write"))
            .json(&serde_json::json!({"namespace": "demo", "payload": {"disk": true}}))
            .send()
            .await?;
        let status = answer.status().as_u16();
        let body: serde_json::Value = answer.json().await?;
        Ok::<_, Box<dyn std::error::Error>>((status, body))
    };
    assert_eq!(write().await?.0, 202);
    let ballast_path = dir.path().join("data/ballast");
    let ballast = std::fs::File::create(&ballast_path)?;
    rustix::fs::fallocate(&ballast, rustix::fs::FallocateFlags::empty(), 0, 2 * MARGIN)?;
    ballast.sync_all()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let (status, body) = write().await?;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 202);
        assert!(
            Instant::now() < deadline,
            "never refused: {} MiB free",
            free_bytes(dir.path())? >> 20
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused["error"]["code"], "storage_low", "{refused}");
    let ready = reqwest::get(server.url("/api/v1/health/readiness")).await?;
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await?;
    assert_eq!(ready["status"], "storage_low", "{ready}");
    let status: serde_json::Value = reqwest::get(server.url("/api/v1/wal/namespace/demo/status"))
        .await?
        .json()
        .await?;
    assert_eq!(status["resources"]["storage_low"], true, "{status}");
    assert!(
        status["resources"]["free_disk_bytes"].as_u64() > Some(0),
        "{status}"
    );
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    assert!(metrics.contains("\nwald_storage_low 1\n"), "{metrics}");
    assert!(
        metrics.contains("wald_write_refused_total{namespace=\"demo\",code=\"storage_low\"}"),
        "{metrics}"
    );

    drop(ballast);
    std::fs::remove_file(&ballast_path)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = write().await?;
        if status == 202 {
            break;
        }
        assert_eq!(body["error"]["code"], "storage_low", "{body}");
        assert!(Instant::now() < deadline, "never taken again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = reqwest::get(server.url("/api/v1/health/readiness")).await?;
    assert_eq!(ready.status(), 200);
    assert!(server.logged("Free space under the data directory is low"));
    assert!(server.logged("Free space under the data directory is back"));
    Ok(())
}

/// What a small HTTP receiver was sent: each request's headers and JSON body.
#[derive(Clone, Default)]
struct Received(Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, serde_json::Value)>>>);

impl Received {
    /// Starts a receiver answering 200 to every POST; returns its base URL.
    async fn start(&self) -> Result<String> {
        let kept = self.clone();
        let app = axum::Router::new().fallback(axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    kept.0.lock().expect("lock").push((headers, json));
                    "{}"
                }
            },
        ));
        Ok(format!("http://{}", common::serve(app).await?))
    }

    fn all(&self) -> Vec<(axum::http::HeaderMap, serde_json::Value)> {
        self.0.lock().expect("lock").clone()
    }

    /// Waits until `found` finds something in what arrived.
    async fn wait_for<T>(
        &self,
        what: &str,
        found: impl Fn(&[(axum::http::HeaderMap, serde_json::Value)]) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = found(&self.all()) {
                return Ok(found);
            }
            if Instant::now() > deadline {
                return Err(format!("never received {what}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every span of the OTLP/HTTP JSON exports received.
fn spans(exports: &[(axum::http::HeaderMap, serde_json::Value)]) -> Vec<serde_json::Value> {
    exports
        .iter()
        .flat_map(|(_, body)| {
            body["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn header(headers: &axum::http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const WRITER_SPAN: &str = "00f067aa0ba902b7";

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_follows_a_message_from_its_write_to_each_delivery() -> Result {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let collector = Received::default();
    let collector_url = collector.start().await?;
    let hook = Received::default();
    let hook_url = hook.start().await?;
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic("traced", 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines)?;
    std::fs::write(
        pipelines.join("traced.toml"),
        format!(
            "namespace = \"traced\"\n[source]\ntype = \"http\"\npublic = true\n\
             [[target]]\nname = \"hook\"\ntype = \"http\"\nurl = \"{hook_url}/hook\"\n\
             [[target]]\nname = \"events\"\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"traced\"\n"
        ),
    )?;
    let config = dir.path().join("wald.toml");
    std::fs::write(
        &config,
        format!("[telemetry]\notlp_endpoint = \"{collector_url}\"\nservice_name = \"wald-test\"\n"),
    )?;
    let server = Server::start(
        &pipelines,
        &dir.path().join("data"),
        &["--config", config.to_str().ok_or("path")?],
    )
    .await?;
    let write = reqwest::Client::new()
        .post(server.url("/api/v1/wal/write"))
        .header("traceparent", format!("00-{TRACE_ID}-{WRITER_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .json(&serde_json::json!({"namespace": "traced", "payload": {"traced": true}}))
        .send()
        .await?;
    assert_eq!(write.status(), 202);

    // The webhook gets the trace, below a span of wald's own.
    let sent = hook
        .wait_for("the delivery", |got| {
            got.first().map(|(h, _)| header(h, "traceparent"))
        })
        .await?;
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(
        (parts.len(), parts[1], parts[3]),
        (4, TRACE_ID, "01"),
        "{sent}"
    );
    assert_ne!(parts[2], WRITER_SPAN, "{sent}");
    assert_eq!(header(&hook.all()[0].0, "tracestate"), "vendor=abc");
    let hook_parent = parts[2].to_string();

    // And so does the Kafka record.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "trace-test")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["traced"])?;
    let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await??;
    let kafka_parent = record
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .ok_or("no traceparent header on the Kafka record")?;
    let parts: Vec<&str> = kafka_parent.split('-').collect();
    assert_eq!(parts[1], TRACE_ID, "{kafka_parent}");
    let kafka_parent = parts[2].to_string();
    assert_ne!(kafka_parent, hook_parent);

    // The collector has the write, a child of the writer's span, and one delivery
    // attempt per target, children of the write, whose ids the targets were sent.
    let spans = collector
        .wait_for("the spans", |exports| {
            let spans = spans(exports);
            let count = |name: &str| spans.iter().filter(|s| s["name"] == name).count();
            (count("wald.write") >= 1 && count("wald.deliver") >= 2).then_some(spans)
        })
        .await?;
    let write = spans
        .iter()
        .find(|s| s["name"] == "wald.write")
        .ok_or("write span")?;
    assert_eq!(write["traceId"], TRACE_ID, "{write}");
    assert_eq!(write["parentSpanId"], WRITER_SPAN, "{write}");
    let write_id = write["spanId"].as_str().ok_or("span id")?;
    let attributes = |span: &serde_json::Value| -> String { span["attributes"].to_string() };
    assert!(attributes(write).contains("\"wald.namespace\""), "{write}");
    for (target, sent_as) in [("hook", &hook_parent), ("events", &kafka_parent)] {
        let deliver = spans
            .iter()
            .find(|s| {
                s["name"] == "wald.deliver" && attributes(s).contains(&format!("\"{target}\""))
            })
            .ok_or(format!("no delivery span for {target}"))?;
        assert_eq!(deliver["traceId"], TRACE_ID, "{deliver}");
        assert_eq!(deliver["parentSpanId"], write_id, "{deliver}");
        assert_eq!(
            deliver["spanId"].as_str(),
            Some(sent_as.as_str()),
            "{deliver}"
        );
    }
    let resource = collector.all()[0].1["resourceSpans"][0]["resource"].to_string();
    assert!(resource.contains("wald-test"), "{resource}");
    let health: serde_json::Value = reqwest::get(server.url("/api/v1/health"))
        .await?
        .json()
        .await?;
    assert_eq!(
        health["components"]["telemetry"]["state"], "running",
        "{health}"
    );
    Ok(())
}

#[tokio::test]
async fn without_an_exporter_the_writers_trace_context_is_sent_on_as_it_came() -> Result {
    let hook = Received::default();
    let hook_url = hook.start().await?;
    let dir = tempfile::tempdir()?;
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines)?;
    std::fs::write(
        pipelines.join("traced.toml"),
        format!(
            "namespace = \"traced\"\n[source]\ntype = \"http\"\npublic = true\n\
             [[target]]\nname = \"hook\"\ntype = \"http\"\nurl = \"{hook_url}/hook\"\n"
        ),
    )?;
    let server = Server::start(&pipelines, &dir.path().join("data"), &[]).await?;
    let client = reqwest::Client::new();
    let traceparent = format!("00-{TRACE_ID}-{WRITER_SPAN}-01");
    for (n, traceparent) in [(1, traceparent.as_str()), (2, "not-a-traceparent"), (3, "")] {
        let mut write = client
            .post(server.url("/api/v1/wal/write/batch"))
            .json(&serde_json::json!({"namespace": "traced", "messages": [{"payload": {"n": n}}]}));
        if !traceparent.is_empty() {
            write = write.header("traceparent", traceparent);
        }
        assert_eq!(write.send().await?.status(), 202);
    }
    let got = hook
        .wait_for("three deliveries", |got| {
            (got.len() >= 3).then(|| got.to_vec())
        })
        .await?;
    let sent: Vec<(i64, String)> = got
        .iter()
        .map(|(h, body)| {
            let n = body["n"].as_i64().or(body["payload"]["n"].as_i64());
            (n.unwrap_or(0), header(h, "traceparent"))
        })
        .collect();
    assert!(sent.contains(&(1, traceparent.clone())), "{sent:?}");
    assert!(sent.contains(&(2, String::new())), "{sent:?}");
    assert!(sent.contains(&(3, String::new())), "{sent:?}");
    Ok(())
}
