//! Scalar ingestion through the ClearML REST path, `events.add_batch`, as the
//! SDK sends it: JSON lines (`Content-Type: application/json-lines`), one
//! `training_stats_scalar` event a line, a Bearer token from `auth.login`,
//! over persistent HTTP/1.1 keep-alive connections to the gateway of a
//! tasklab started in-process with `tasklab::run_embedded`.
//!
//! `cargo bench --bench add_batch` prints points/s with 1 and with 8
//! concurrent clients (each on its own connection, writing its own task),
//! with 1,000 events a request (MLflow's `log-batch` size) and with 10,000,
//! for:
//!
//! * embedded mode (every service on SQLite in the data directory);
//! * every domain service on its own fresh PostgreSQL database, when
//!   `TASKLAB_TEST_POSTGRES_URL` is set (skipped with a note otherwise);
//! * with `TASKLAB_BENCH_MLFLOW=1`, MLflow's tracking server (the venv at
//!   `~/.cache/tasklab/mlflow-venv` that `cargo bench -p tasklab-metrics
//!   --bench ingest` creates; `mlflow server`, SQLite, loopback,
//!   `--workers 1`) through `runs/log-batch`, 1,000 metrics a request, also
//!   over keep-alive connections, and the ratios.
//!
//! Every reply is checked: HTTP 200, `added` equal to the events sent and
//! no `errors`, else the bench fails.
//!
//! Each run also prints the CPU time the whole process (server and clients)
//! spent per point while it ran, from `/proc/self/stat` on Linux: unlike
//! points/s it hardly moves when other processes compete for the cores, so
//! it is the figure to compare two builds on a busy machine.

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tasklab_config::Settings;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

const ACCESS_KEY: &str = "bench-access";
const SECRET_KEY: &str = "bench-secret";
const KEYS: usize = 10;
const BASE_MS: i64 = 1_700_000_000_000;
/// The MLflow release `services/metrics/benches/ingest.rs` pins.
const MLFLOW_VERSION: &str = "3.17.2";

fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// Points/s of one configuration: `[batch 1000, batch 10000] x [1, 8 clients]`.
#[derive(Debug, Clone, Copy)]
struct Figures {
    one_1k: f64,
    eight_1k: f64,
    one_10k: f64,
    eight_10k: f64,
}

async fn run() {
    say(format!(
        "tasklab events.add_batch benchmark: {} CPUs, JSON lines over HTTP/1.1 keep-alive",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    let embedded = bench_tasklab("embedded (SQLite)", None).await;

    let postgres = if std::env::var("TASKLAB_TEST_POSTGRES_URL").is_ok_and(|v| !v.is_empty()) {
        let mut dbs = Vec::new();
        for _ in tasklab_config::ServiceName::ALL {
            dbs.push(
                tasklab_db::testing::TestDb::postgres("bench_add_batch")
                    .await
                    .expect("postgres test database"),
            );
        }
        Some(bench_tasklab("PostgreSQL", Some(&dbs)).await)
    } else {
        say("PostgreSQL: skipped (set TASKLAB_TEST_POSTGRES_URL)");
        None
    };

    let mlflow = if std::env::var("TASKLAB_BENCH_MLFLOW").as_deref() == Ok("1") {
        let dir = tempfile::tempdir().expect("temporary directory");
        bench_mlflow(dir.path().join("mlflow")).await
    } else {
        say("MLflow: skipped (set TASKLAB_BENCH_MLFLOW=1 to run the comparison)");
        None
    };

    say("");
    say("== summary (points/s) ==");
    print_figures("tasklab embedded (SQLite)", &embedded);
    if let Some(pg) = &postgres {
        print_figures("tasklab PostgreSQL", pg);
    }
    if let Some((one, eight)) = mlflow {
        say(format!(
            "MLflow {MLFLOW_VERSION} (SQLite, --workers 1), log-batch 1000: 1 client {one:.0}, 8 clients {eight:.0}"
        ));
        say(format!(
            "ratio tasklab embedded add_batch(1000) / MLflow log-batch(1000): 1 client {:.0}x, 8 clients {:.0}x (target >= 100x)",
            embedded.one_1k / one,
            embedded.eight_1k / eight
        ));
    } else {
        say(
            "MLflow reference (not this run; docs/BENCHMARKS.md, 2026-11-25): \
             1 client 2,075 points/s, 8 clients 8,364 points/s",
        );
        say(format!(
            "ratio against that reference: 1 client {:.0}x, 8 clients {:.0}x",
            embedded.one_1k / 2075.0,
            embedded.eight_1k / 8364.0
        ));
    }
    say(format!(
        "target >= 500000 points/s with 8 clients embedded (batches of 1000): {}",
        if embedded.eight_1k >= 500_000.0 {
            "met"
        } else {
            "NOT met"
        }
    ));
}

fn print_figures(label: &str, f: &Figures) {
    say(format!(
        "{label}: batches of 1000: 1 client {:.0}, 8 clients {:.0}; batches of 10000: 1 client {:.0}, 8 clients {:.0}",
        f.one_1k, f.eight_1k, f.one_10k, f.eight_10k
    ));
}

/// A tasklab running in this process; stops when dropped.
struct Running {
    api: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _data: tempfile::TempDir,
}

impl Running {
    async fn start(databases: Option<&[tasklab_db::testing::TestDb]>) -> Running {
        let data = tempfile::tempdir().expect("data directory");
        tasklab_gateway::auth::CredentialStore::in_data_dir(data.path())
            .ensure_first(Some((ACCESS_KEY, SECRET_KEY)))
            .await
            .expect("credentials");
        let api = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let files = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut settings = Settings {
            data_dir: data.path().to_owned(),
            api_addr: api.local_addr().expect("address"),
            files_addr: files.local_addr().expect("address"),
            ..Default::default()
        };
        if let Some(dbs) = databases {
            let s = &mut settings.services;
            for (service, db) in [
                &mut s.tasks,
                &mut s.projects,
                &mut s.queues,
                &mut s.artifacts,
                &mut s.metrics,
            ]
            .into_iter()
            .zip(dbs)
            {
                service.database_url = Some(db.url.clone());
            }
        }
        let addr = settings.api_addr;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(tasklab::run_embedded(settings, api, files, async move {
            let _ = stopped.await;
        }));
        Running {
            api: addr,
            stop: Some(stop),
            handle,
            _data: data,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle)
            .await
            .expect("tasklab task")
            .expect("tasklab");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// One persistent HTTP/1.1 connection.
struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// Sends one request and reads the whole reply: (status, body).
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await?;

        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                }
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(std::io::Error::other)?;
                let start = out.len();
                out.resize(start + size, 0);
                self.stream.read_exact(&mut out[start..]).await?;
                line.clear();
                self.stream.read_line(&mut line).await?; // CRLF after the chunk
                if size == 0 {
                    break;
                }
            }
        } else {
            let n = length.ok_or_else(|| std::io::Error::other("reply without length"))?;
            out.resize(n, 0);
            self.stream.read_exact(&mut out).await?;
        }
        Ok((status, out))
    }

    async fn json(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Value {
        let (status, body) = self
            .request(method, path, headers, body)
            .await
            .expect("request");
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
    }
}

fn basic() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCESS_KEY}:{SECRET_KEY}"))
    )
}

/// Waits for the API, then logs in.
async fn login(api: SocketAddr) -> String {
    let started = Instant::now();
    loop {
        if let Ok(mut conn) = Conn::open(api).await
            && let Ok((200, body)) = conn
                .request("GET", "/auth.login", &[("Authorization", &basic())], b"")
                .await
        {
            let json: Value = serde_json::from_slice(&body).expect("login reply");
            return json["data"]["token"].as_str().expect("token").to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_task(conn: &mut Conn, bearer: &str, name: &str) -> String {
    let body = json!({"name": name, "type": "training"}).to_string();
    let out = conn
        .json(
            "POST",
            "/v2.23/tasks.create",
            &[
                ("Authorization", bearer),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await;
    out["data"]["id"].as_str().expect("task id").to_owned()
}

/// One request body: `batch` scalars, `KEYS` series x `batch / KEYS` steps
/// from `step0`, one JSON object a line as the SDK writes them.
fn batch_body(task: &str, step0: usize, batch: usize) -> Vec<u8> {
    let mut out = String::with_capacity(batch * 180);
    for step in step0..step0 + batch / KEYS {
        for key in 0..KEYS {
            let line = json!({
                "timestamp": BASE_MS + step as i64,
                "type": "training_stats_scalar",
                "task": task,
                "iter": step,
                "metric": "bench",
                "variant": format!("k{key}"),
                "value": (step * KEYS + key) as f64 * 0.001,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// User plus system CPU time of this process so far (Linux only).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name: state is the first,
    // utime and stime the 12th and 13th, in clock ticks (USER_HZ, which
    // Linux fixes at 100 for user space).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Points per second with `clients` concurrent clients, each on its own
/// keep-alive connection and task, sending `requests` batches of `batch`,
/// and the process's CPU microseconds per point meanwhile.
async fn ingest(
    api: SocketAddr,
    bearer: &str,
    run: &str,
    clients: usize,
    requests: usize,
    batch: usize,
) -> (f64, Option<f64>) {
    let mut prepared = Vec::new();
    for c in 0..clients {
        let mut conn = Conn::open(api).await.expect("connect");
        let task = create_task(&mut conn, bearer, &format!("{run}-{c}")).await;
        let bodies: Vec<Vec<u8>> = (0..requests)
            .map(|r| batch_body(&task, r * batch / KEYS, batch))
            .collect();
        prepared.push((conn, bodies));
    }
    let start = Instant::now();
    let cpu_start = cpu_time();
    let mut handles = Vec::new();
    for (mut conn, bodies) in prepared {
        let bearer = bearer.to_owned();
        handles.push(tokio::spawn(async move {
            for body in bodies {
                let out = conn
                    .json(
                        "POST",
                        "/v2.23/events.add_batch",
                        &[
                            ("Authorization", &bearer),
                            ("Content-Type", "application/json-lines"),
                        ],
                        &body,
                    )
                    .await;
                let data = &out["data"];
                assert_eq!(data["errors"], 0, "add_batch reported errors: {out}");
                assert_eq!(data["added"], batch, "add_batch added: {out}");
            }
        }));
    }
    for h in handles {
        h.await.expect("client");
    }
    let points = (clients * requests * batch) as f64;
    let rate = points / start.elapsed().as_secs_f64();
    let cpu = cpu_start
        .zip(cpu_time())
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64() * 1e6 / points);
    (rate, cpu)
}

async fn bench_tasklab(label: &str, dbs: Option<&[tasklab_db::testing::TestDb]>) -> Figures {
    say(format!("== tasklab {label} =="));
    let running = Running::start(dbs).await;
    let api = running.api;
    let bearer = format!("Bearer {}", login(api).await);

    ingest(api, &bearer, "warmup", 1, 5, 1000).await;
    let run = async |name: &str, clients: usize, requests: usize, batch: usize| {
        let (rate, cpu) = ingest(api, &bearer, name, clients, requests, batch).await;
        let cpu = cpu.map_or_else(String::new, |us| {
            format!(" ({us:.2} µs CPU a point, whole process)")
        });
        say(format!(
            "add_batch {batch}/request, {clients} client(s), {}k points: {rate:.0} points/s{cpu}",
            clients * requests * batch / 1000
        ));
        rate
    };
    let f = Figures {
        one_1k: run("one-1k", 1, 200, 1000).await,
        eight_1k: run("eight-1k", 8, 75, 1000).await,
        one_10k: run("one-10k", 1, 20, 10_000).await,
        eight_10k: run("eight-10k", 8, 8, 10_000).await,
    };
    running.stop().await;
    f
}

/// Kills the MLflow server when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// MLflow's `log-batch` body with the same points as [`batch_body`].
fn mlflow_batch(run_id: &str, step0: usize) -> Vec<u8> {
    let mut metrics = Vec::with_capacity(1000);
    for step in step0..step0 + 1000 / KEYS {
        for key in 0..KEYS {
            metrics.push(json!({
                "key": format!("k{key}"),
                "value": (step * KEYS + key) as f64 * 0.001,
                "timestamp": BASE_MS + step as i64,
                "step": step,
            }));
        }
    }
    json!({"run_id": run_id, "metrics": metrics})
        .to_string()
        .into_bytes()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn mlflow_ingest(
    addr: SocketAddr,
    experiment: &str,
    run: &str,
    clients: usize,
    requests: usize,
) -> f64 {
    let mut prepared = Vec::new();
    for c in 0..clients {
        let mut conn = Conn::open(addr).await.expect("connect to MLflow");
        let body = json!({"experiment_id": experiment, "run_name": format!("{run}-{c}"), "start_time": BASE_MS});
        let out = conn
            .json(
                "POST",
                "/api/2.0/mlflow/runs/create",
                &[JSON],
                body.to_string().as_bytes(),
            )
            .await;
        let id = out["run"]["info"]["run_id"]
            .as_str()
            .expect("run id")
            .to_owned();
        let bodies: Vec<Vec<u8>> = (0..requests)
            .map(|r| mlflow_batch(&id, r * 1000 / KEYS))
            .collect();
        prepared.push((conn, bodies));
    }
    let start = Instant::now();
    let mut handles = Vec::new();
    for (mut conn, bodies) in prepared {
        handles.push(tokio::spawn(async move {
            for body in bodies {
                conn.json("POST", "/api/2.0/mlflow/runs/log-batch", &[JSON], &body)
                    .await;
            }
        }));
    }
    for h in handles {
        h.await.expect("mlflow client");
    }
    (clients * requests * 1000) as f64 / start.elapsed().as_secs_f64()
}

/// MLflow's `log-batch` points/s with 1 and 8 clients.
async fn bench_mlflow(dir: PathBuf) -> Option<(f64, f64)> {
    say("== MLflow ==");
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let mlflow = home.join(".cache/tasklab/mlflow-venv/bin/mlflow");
    if !mlflow.exists() {
        say(format!(
            "MLflow: {} missing (run `TASKLAB_BENCH_MLFLOW=1 cargo bench -p tasklab-metrics --bench ingest` once); skipped",
            mlflow.display()
        ));
        return None;
    }
    std::fs::create_dir_all(&dir).ok()?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?;
    let child = Command::new(&mlflow)
        .arg("server")
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
        .arg("--default-artifact-root")
        .arg(dir.join("artifacts"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--workers",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let _guard = Guard(child);
    let start = Instant::now();
    loop {
        if let Ok(mut conn) = Conn::open(addr).await
            && let Ok((200, _)) = conn.request("GET", "/health", &[], b"").await
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            say("MLflow: server did not become healthy in 180 s; skipped");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut conn = Conn::open(addr).await.ok()?;
    let experiment = conn
        .json(
            "POST",
            "/api/2.0/mlflow/experiments/create",
            &[JSON],
            br#"{"name": "tasklab-add-batch-bench"}"#,
        )
        .await["experiment_id"]
        .as_str()
        .expect("experiment id")
        .to_owned();
    mlflow_ingest(addr, &experiment, "warmup", 1, 1).await;
    let one = mlflow_ingest(addr, &experiment, "one", 1, 30).await;
    say(format!(
        "log-batch 1000/request, 1 client, 30k points: {one:.0} points/s"
    ));
    let eight = mlflow_ingest(addr, &experiment, "eight", 8, 8).await;
    say(format!(
        "log-batch 1000/request, 8 clients, 64k points: {eight:.0} points/s"
    ));
    Some((one, eight))
}
