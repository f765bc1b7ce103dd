//! Helpers shared by the gateway tests: a tasklab started in-process with
//! `tasklab::run_embedded` on loopback ports, and a minimal HTTP/1.1 client
//! (no client library: requests are written byte for byte, so the tests can
//! send what real clients send, GET with a body included).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `n` distinct free loopback addresses (all bound at once, then released).
pub(crate) fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// The `tasklab` binary with a clean environment: no ambient `TASKLAB_*`
/// setting, settings file or trace exporter leaks in from the test runner.
pub(crate) fn tasklab() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tasklab"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TASKLAB_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("RUST_LOG");
    cmd
}

pub(crate) const ACCESS_KEY: &str = "test-access";
pub(crate) const SECRET_KEY: &str = "test-secret";

/// A tasklab running in this process.
pub(crate) struct Embedded {
    pub(crate) api: SocketAddr,
    pub(crate) files: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub(crate) data: tempfile::TempDir,
}

impl Embedded {
    pub(crate) async fn start() -> Embedded {
        let data = tempfile::tempdir().unwrap();
        tasklab_gateway::auth::CredentialStore::in_data_dir(data.path())
            .ensure_first(Some((ACCESS_KEY, SECRET_KEY)))
            .await
            .unwrap();
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let files = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (api_addr, files_addr) = (api.local_addr().unwrap(), files.local_addr().unwrap());
        let mut settings = tasklab_config::Settings {
            data_dir: data.path().to_owned(),
            api_addr,
            files_addr,
            ..Default::default()
        };
        settings.queues.reaper_interval_secs = 1;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(tasklab::run_embedded(settings, api, files, async move {
            let _ = stopped.await;
        }));
        Embedded {
            api: api_addr,
            files: files_addr,
            stop: Some(stop),
            handle: Some(handle),
            data,
        }
    }

    /// Stops gracefully and checks the process-level result.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    /// A fresh token from `auth.login`.
    pub(crate) async fn token(&self) -> String {
        let reply = send(
            self.api,
            "GET",
            "/auth.login",
            &[("authorization", &basic(ACCESS_KEY, SECRET_KEY))],
            b"",
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["data"]["token"].as_str().unwrap().to_owned()
    }

    /// A ClearML call with a Bearer token and a JSON body, as the SDK sends
    /// it (GET, `/v2.23/`, stray `"method": "get"`).
    pub(crate) async fn call(&self, token: &str, endpoint: &str, mut body: Value) -> Reply {
        if let Value::Object(map) = &mut body {
            map.insert("method".into(), Value::String("get".into()));
        }
        let bearer = format!("Bearer {token}");
        send(
            self.api,
            "GET",
            &format!("/v2.23/{endpoint}"),
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .await
    }

    /// Like [`Embedded::call`], asserting success; returns `data`.
    pub(crate) async fn ok(&self, token: &str, endpoint: &str, body: Value) -> Value {
        let reply = self.call(token, endpoint, body).await;
        assert_eq!(reply.status, 200, "{endpoint}: {}", reply.text());
        let json = reply.json();
        assert_eq!(json["meta"]["result_code"], 200);
        json["data"].clone()
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

pub(crate) fn basic(user: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

/// An HTTP reply.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.text()))
    }

    /// `(HTTP status, meta.result_code, meta.result_subcode)`.
    pub(crate) fn codes(&self) -> (u16, i64, i64) {
        let json = self.json();
        (
            self.status,
            json["meta"]["result_code"].as_i64().unwrap(),
            json["meta"]["result_subcode"].as_i64().unwrap(),
        )
    }
}

/// Sends one request on a fresh connection and reads the whole reply.
pub(crate) async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    try_send(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|| panic!("no reply from {addr} to {method} {path}"))
}

/// Like [`send`], for a server that may die mid-request: `None` when the
/// connection is refused or closes without a reply.
pub(crate) async fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Reply> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_length = false;
    for (k, v) in headers {
        has_length |= k.eq_ignore_ascii_case("content-length");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut read, mut write) = stream.into_split();
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // Write concurrently with reading: the server may answer (413) before it
    // has read a large body.
    // (No half-close after writing: hyper closes a connection whose read
    // side ends.)
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut raw = Vec::new();
    let _ = read.read_to_end(&mut raw).await;
    writer.abort();
    (!raw.is_empty()).then(|| parse(&raw))
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        let start = end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}
