//! Ingest and downsampled-query benchmark of the metrics service, side by
//! side with MLflow's tracking server on the same machine.
//!
//! `cargo bench -p tasklab-metrics --bench ingest` prints:
//!
//! * scalar ingestion over gRPC (`AddEvents`, 1000 scalars a request: 10
//!   series × 100 steps, every request acknowledged only once durable) with
//!   1 and with 8 concurrent clients, embedded (SQLite) and — when
//!   `TASKLAB_TEST_POSTGRES_URL` is set — on PostgreSQL, in both forms of
//!   the contract: one `Event` per point (`events`, what the ClearML
//!   gateway sends), and columnar (`scalar_series`: one
//!   `ScalarSeriesBatch` of 100 points per series). The same points, values
//!   and timestamps either way. Each figure is the median of three rounds on
//!   fresh tasks; after every round the bench reads the per-task summaries
//!   back (`GetTaskMetricsSummary`) and fails unless every point sent is
//!   stored;
//! * `GetScalarSeries` latency (p50, p99) for a 1,000,000-point series
//!   reduced to 1000 points;
//! * with `TASKLAB_BENCH_MLFLOW=1`, the same workload against MLflow's
//!   tracking server (`mlflow server`, SQLite, loopback, `--workers 1`,
//!   from the venv at `~/.cache/tasklab/mlflow-venv`, created with
//!   `pip install mlflow==MLFLOW_VERSION` when missing) through its REST
//!   `runs/log-batch` (1000 metrics a request) and
//!   `get-history-bulk-interval`, and the ratios (per-event and columnar).
//!
//! `TASKLAB_BENCH_PROFILE=events` (or `columnar`) runs only ten rounds of
//! 600k points of the ingest of that form with 8 clients (or
//! `TASKLAB_BENCH_PROFILE_CLIENTS`), embedded (or on PostgreSQL with
//! `TASKLAB_BENCH_PROFILE_DB=postgres`), prints the process's I/O counters
//! and exits: a steady load to attach `perf` to.

#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tasklab_config::Settings;
use tasklab_proto::metrics::v1::event::Payload;
use tasklab_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use tasklab_proto::metrics::v1::{
    AddEventsRequest, Event, GetScalarSeriesRequest, GetTaskMetricsSummaryRequest, MetricSelector,
    ScalarEvent, ScalarSeriesBatch,
};
use tasklab_server::Server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tonic::transport::Channel;

/// The MLflow release the comparison was pinned to.
const MLFLOW_VERSION: &str = "3.17.2";
const BATCH: usize = 1000;
const KEYS: usize = 10;
const STEPS: usize = BATCH / KEYS;
const BASE_MS: i64 = 1_700_000_000_000;

fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// The machine's load average (`/proc/loadavg`), to read figures by.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// Points per second with 1 and with 8 clients.
#[derive(Debug, Clone, Copy)]
struct Rates {
    one: f64,
    eight: f64,
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    /// One `Event` per point.
    events: Rates,
    /// `scalar_series`.
    columnar: Rates,
    /// Query latency through `tasklab-server` (as deployed).
    p50: Duration,
    p99: Duration,
    /// Query latency through tonic's transport with TCP_NODELAY.
    direct_p50: Duration,
    direct_p99: Duration,
}

async fn run() {
    say(format!(
        "tasklab metrics benchmark: {} CPUs, batches of {BATCH} scalars ({KEYS} series x {STEPS} steps); load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    ));
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite = tasklab_db::sqlite_url(&dir.path().join("metrics.db"));
    let profile = match std::env::var("TASKLAB_BENCH_PROFILE").as_deref() {
        Ok("events") => Some(Form::Events),
        Ok("columnar") => Some(Form::Columnar),
        _ => None,
    };
    if let Some(form) = profile {
        let clients = std::env::var("TASKLAB_BENCH_PROFILE_CLIENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8);
        if std::env::var("TASKLAB_BENCH_PROFILE_DB").as_deref() == Ok("postgres") {
            let db = tasklab_db::testing::TestDb::postgres("bench_ingest")
                .await
                .expect("set TASKLAB_TEST_POSTGRES_URL");
            profile_ingest(&db.url, form, clients).await;
        } else {
            profile_ingest(&sqlite, form, clients).await;
        }
        return;
    }
    let embedded = bench_tasklab("embedded (SQLite)", &sqlite).await;

    let postgres = match std::env::var("TASKLAB_TEST_POSTGRES_URL") {
        Ok(_) => {
            let db = tasklab_db::testing::TestDb::postgres("bench_ingest")
                .await
                .expect("postgres test database");
            Some(bench_tasklab("PostgreSQL", &db.url).await)
        }
        Err(_) => {
            say("PostgreSQL: skipped (set TASKLAB_TEST_POSTGRES_URL)");
            None
        }
    };

    let mlflow = if std::env::var("TASKLAB_BENCH_MLFLOW").as_deref() == Ok("1") {
        bench_mlflow(dir.path().join("mlflow")).await
    } else {
        say("MLflow: skipped (set TASKLAB_BENCH_MLFLOW=1 to run the comparison)");
        None
    };

    say("");
    say(format!("== summary == (load average {})", load()));
    print_figures("tasklab embedded (SQLite)", &embedded);
    if let Some(pg) = &postgres {
        print_figures("tasklab PostgreSQL", pg);
    }
    if let Some(ml) = &mlflow {
        say(format!(
            "MLflow {MLFLOW_VERSION} (SQLite, --workers 1): ingest 1 client {:.0} points/s, 8 clients {:.0} points/s; \
             get-history-bulk-interval ({} points, max_results=1000) p50 {:.1} ms, p99 {:.1} ms",
            ml.one,
            ml.eight,
            ml.series_points,
            ms(ml.p50),
            ms(ml.p99)
        ));
        for (form, r) in [
            ("per-event", embedded.events),
            ("columnar", embedded.columnar),
        ] {
            say(format!(
                "ratio tasklab embedded {form} / MLflow: 1 client {:.0}x, 8 clients {:.0}x (target >= 100x)",
                r.one / ml.one,
                r.eight / ml.eight
            ));
        }
        if let Some(pg) = &postgres {
            for (form, r) in [("per-event", pg.events), ("columnar", pg.columnar)] {
                say(format!(
                    "ratio tasklab PostgreSQL {form} / MLflow: 1 client {:.0}x, 8 clients {:.0}x",
                    r.one / ml.one,
                    r.eight / ml.eight
                ));
            }
        }
    }
    let best = embedded.events.eight.max(embedded.columnar.eight);
    say(format!(
        "targets: >= 500000 points/s with 8 clients embedded: {} (per-event {:.0}, columnar {:.0}); \
         downsampled query p50 < 20 ms: {}",
        if best >= 500_000.0 { "met" } else { "NOT met" },
        embedded.events.eight,
        embedded.columnar.eight,
        if embedded.p50 < Duration::from_millis(20) {
            "met"
        } else if embedded.direct_p50 < Duration::from_millis(20) {
            "met by the service (tonic transport), not through tasklab-server (no TCP_NODELAY)"
        } else {
            "NOT met"
        },
    ));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_figures(label: &str, f: &Figures) {
    say(format!(
        "{label}: ingest per-event 1 client {:.0} points/s, 8 clients {:.0} points/s; \
         columnar 1 client {:.0} points/s, 8 clients {:.0} points/s; \
         1M-point series to 1000 points p50 {:.2} ms, p99 {:.2} ms through tasklab-server, \
         p50 {:.2} ms, p99 {:.2} ms through tonic with TCP_NODELAY",
        f.events.one,
        f.events.eight,
        f.columnar.one,
        f.columnar.eight,
        ms(f.p50),
        ms(f.p99),
        ms(f.direct_p50),
        ms(f.direct_p99)
    ));
}

/// Latencies (p50, p99) of 200 series queries after 20 warm-up ones.
async fn query_latency(
    client: &mut MetricsServiceClient<Channel>,
    request: &GetScalarSeriesRequest,
) -> (Duration, Duration) {
    let mut times = Vec::new();
    for i in 0..220 {
        let start = Instant::now();
        let out = client
            .get_scalar_series(request.clone())
            .await
            .expect("series")
            .into_inner();
        let took = start.elapsed();
        assert_eq!(out.series[0].total_points, 1_000_000);
        assert_eq!(out.series[0].x.len(), 1000);
        if i >= 20 {
            times.push(took);
        }
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The value of key `key` at `step` (the same in every form and in MLflow).
fn value(step: usize, key: usize) -> f64 {
    (step * KEYS + key) as f64 * 0.001
}

/// The two forms of the same points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// One `Event` per point.
    Events,
    /// One `ScalarSeriesBatch` per series.
    Columnar,
}

impl Form {
    fn name(self) -> &'static str {
        match self {
            Form::Events => "per-event",
            Form::Columnar => "columnar",
        }
    }
}

/// `STEPS` steps from `step0` of `KEYS` series of `task`, in `form`.
fn batch(form: Form, task: &str, step0: usize) -> AddEventsRequest {
    match form {
        Form::Events => events_batch(task, step0),
        Form::Columnar => columnar_batch(task, step0),
    }
}

fn events_batch(task: &str, step0: usize) -> AddEventsRequest {
    let mut events = Vec::with_capacity(BATCH);
    for step in step0..step0 + STEPS {
        for key in 0..KEYS {
            events.push(Event {
                task_id: task.to_owned(),
                timestamp: Some(timestamp(BASE_MS + step as i64)),
                iteration: step as i64,
                metric: "bench".to_owned(),
                variant: format!("k{key}"),
                payload: Some(Payload::Scalar(ScalarEvent {
                    value: value(step, key),
                    x_axis_label: String::new(),
                })),
                ..Event::default()
            });
        }
    }
    AddEventsRequest {
        events,
        client_batch_id: String::new(),
        scalar_series: Vec::new(),
    }
}

fn columnar_batch(task: &str, step0: usize) -> AddEventsRequest {
    let steps = step0..step0 + STEPS;
    let scalar_series = (0..KEYS)
        .map(|key| ScalarSeriesBatch {
            task_id: task.to_owned(),
            metric: "bench".to_owned(),
            variant: format!("k{key}"),
            iterations: steps.clone().map(|s| s as i64).collect(),
            values: steps.clone().map(|s| value(s, key)).collect(),
            timestamps_ms: steps.clone().map(|s| BASE_MS + s as i64).collect(),
            ..ScalarSeriesBatch::default()
        })
        .collect();
    AddEventsRequest {
        events: Vec::new(),
        client_batch_id: String::new(),
        scalar_series,
    }
}

async fn connect(url: &str) -> MetricsServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    MetricsServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Points per second with `clients` concurrent clients, each on its own
/// connection, sending `batches` requests in `form` for its own task, one
/// at a time (each answered once durable). Then checks through the task
/// summaries that every point sent is stored.
async fn ingest(url: &str, run: &str, clients: usize, batches: usize, form: Form) -> f64 {
    let mut prepared = Vec::new();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let task = format!("{run}-{c}");
        let requests: Vec<AddEventsRequest> = (0..batches)
            .map(|b| batch(form, &task, b * STEPS))
            .collect();
        prepared.push((connect(url).await, requests));
        tasks.push(task);
    }
    let start = Instant::now();
    let mut handles = Vec::new();
    for (mut client, requests) in prepared {
        handles.push(tokio::spawn(async move {
            for request in requests {
                let out = client
                    .add_events(request)
                    .await
                    .expect("add events")
                    .into_inner();
                assert_eq!(out.added as usize, BATCH);
                assert_eq!(out.rejected_count, 0);
            }
        }));
    }
    for h in handles {
        h.await.expect("client");
    }
    let rate = (clients * batches * BATCH) as f64 / start.elapsed().as_secs_f64();
    verify_stored(url, &tasks, batches * STEPS).await;
    rate
}

/// Fails unless each task has `KEYS` series of `steps` points, as sent.
async fn verify_stored(url: &str, tasks: &[String], steps: usize) {
    let summary = connect(url)
        .await
        .get_task_metrics_summary(GetTaskMetricsSummaryRequest {
            task_ids: tasks.to_vec(),
            ..GetTaskMetricsSummaryRequest::default()
        })
        .await
        .expect("task summaries")
        .into_inner();
    assert_eq!(summary.tasks.len(), tasks.len());
    for t in &summary.tasks {
        assert_eq!(t.metrics.len(), KEYS, "series of {}", t.task_id);
        for m in &t.metrics {
            assert_eq!(
                m.count as usize, steps,
                "points stored in {}/{}/{}",
                t.task_id, m.metric, m.variant
            );
        }
        let stored: u64 = t.metrics.iter().map(|m| m.count).sum();
        assert_eq!(stored as usize, KEYS * steps);
    }
}

/// The median of three rounds of [`ingest`], each on fresh tasks.
async fn ingest_median(url: &str, run: &str, clients: usize, batches: usize, form: Form) -> f64 {
    let mut rates = Vec::new();
    for round in 0..3 {
        rates.push(ingest(url, &format!("{run}-{round}"), clients, batches, form).await);
    }
    let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    rates.sort_by(f64::total_cmp);
    say(format!(
        "ingest {}, {clients} client(s), {}k points a round: {:.0} points/s (median of rounds {}; all stored)",
        form.name(),
        clients * batches * BATCH / 1000,
        rates[1],
        all.join(", ")
    ));
    rates[1]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Ten rounds of 600k points with `clients` clients, then the I/O counters.
async fn profile_ingest(url: &str, form: Form, clients: usize) {
    let server = tasklab_metrics::mount(
        Server::new(&tasklab_testkit::test_grpc_settings()),
        &Settings::default(),
        url,
    )
    .await
    .expect("mount metrics service");
    let running = tasklab_testkit::spawn(server).await;
    let clients = clients.clamp(1, 600);
    for r in 0..10 {
        let rate = ingest(
            &running.url(),
            &format!("prof{r}"),
            clients,
            600 / clients,
            form,
        )
        .await;
        say(format!(
            "profile {} {clients} clients round {r}: {rate:.0} points/s",
            form.name()
        ));
    }
    say(std::fs::read_to_string("/proc/self/io").unwrap_or_default());
    running.stop().await.ok();
}

async fn bench_tasklab(label: &str, url: &str) -> Figures {
    say(format!("== tasklab {label} =="));
    let server = tasklab_metrics::mount(
        Server::new(&tasklab_testkit::test_grpc_settings()),
        &Settings::default(),
        url,
    )
    .await
    .expect("mount metrics service");
    let running = tasklab_testkit::spawn(server).await;
    let endpoint = running.url();

    let mut rates = Vec::new();
    for form in [Form::Events, Form::Columnar] {
        let run = form.name();
        ingest(&endpoint, &format!("{run}-warmup"), 1, 5, form).await;
        let one = ingest_median(&endpoint, &format!("{run}-one"), 1, 200, form).await;
        let eight = ingest_median(&endpoint, &format!("{run}-eight"), 8, 75, form).await;
        rates.push(Rates { one, eight });
    }

    // One series of 1,000,000 points, written 10,000 points a request.
    let mut client = connect(&endpoint).await;
    let start = Instant::now();
    for b in 0..100i64 {
        let events = (b * 10_000..(b + 1) * 10_000)
            .map(|i| Event {
                task_id: "long".to_owned(),
                timestamp: Some(timestamp(BASE_MS + i)),
                iteration: i,
                metric: "loss".to_owned(),
                variant: "train".to_owned(),
                payload: Some(Payload::Scalar(ScalarEvent {
                    value: (i as f64 * 0.001).sin(),
                    x_axis_label: String::new(),
                })),
                ..Event::default()
            })
            .collect();
        client
            .add_events(AddEventsRequest {
                events,
                client_batch_id: String::new(),
                scalar_series: Vec::new(),
            })
            .await
            .expect("add events");
    }
    say(format!(
        "1M-point series written in {:.2} s",
        start.elapsed().as_secs_f64()
    ));
    let request = GetScalarSeriesRequest {
        task_id: "long".to_owned(),
        metrics: vec![MetricSelector {
            metric: "loss".to_owned(),
            variants: vec!["train".to_owned()],
        }],
        samples: Some(1000),
        ..GetScalarSeriesRequest::default()
    };
    let (p50, p99) = query_latency(&mut client, &request).await;
    say(format!(
        "GetScalarSeries 1M points -> 1000 through tasklab-server: p50 {:.2} ms, p99 {:.2} ms (200 queries)",
        ms(p50),
        ms(p99)
    ));
    running.stop().await.ok();

    // The same service behind tonic's own transport, which sets
    // TCP_NODELAY on accepted sockets (tasklab-server does not yet, so its
    // figure includes Nagle/delayed-ACK stalls on multi-segment answers).
    let direct = tasklab_metrics::grpc_server(&Settings::default(), url)
        .await
        .expect("metrics service");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(direct)
            .serve_with_incoming(incoming),
    );
    let mut client = connect(&format!("http://{addr}")).await;
    let (direct_p50, direct_p99) = query_latency(&mut client, &request).await;
    say(format!(
        "GetScalarSeries 1M points -> 1000 through tonic (TCP_NODELAY): p50 {:.2} ms, p99 {:.2} ms (200 queries)",
        ms(direct_p50),
        ms(direct_p99)
    ));
    serving.abort();
    Figures {
        events: rates[0],
        columnar: rates[1],
        p50,
        p99,
        direct_p50,
        direct_p99,
    }
}

#[derive(Debug)]
struct MlflowFigures {
    one: f64,
    eight: f64,
    p50: Duration,
    p99: Duration,
    series_points: usize,
}

/// Kills the MLflow server when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn venv() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/tasklab/mlflow-venv")
}

fn ensure_mlflow() -> Option<PathBuf> {
    let venv = venv();
    let mlflow = venv.join("bin/mlflow");
    if mlflow.exists() {
        return Some(mlflow);
    }
    say(format!(
        "MLflow: creating {} with mlflow=={MLFLOW_VERSION} (one-off)",
        venv.display()
    ));
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", &format!("mlflow=={MLFLOW_VERSION}")])
            .status()
            .is_ok_and(|s| s.success());
    if ok && mlflow.exists() {
        Some(mlflow)
    } else {
        say("MLflow: could not be installed; comparison skipped");
        None
    }
}

/// One HTTP/1.1 request on a fresh connection; returns status and body.
async fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

async fn mlflow_json(port: u16, method: &str, path: &str, body: &str) -> serde_json::Value {
    let (status, text) = http(port, method, path, body)
        .await
        .expect("mlflow request");
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

async fn mlflow_run(port: u16, experiment: &str, name: &str) -> String {
    let out = mlflow_json(
        port,
        "POST",
        "/api/2.0/mlflow/runs/create",
        &serde_json::json!({"experiment_id": experiment, "run_name": name, "start_time": BASE_MS})
            .to_string(),
    )
    .await;
    out["run"]["info"]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned()
}

fn mlflow_batch(run_id: &str, step0: usize) -> String {
    let mut metrics = Vec::with_capacity(BATCH);
    for step in step0..step0 + STEPS {
        for key in 0..KEYS {
            metrics.push(serde_json::json!({
                "key": format!("k{key}"),
                "value": value(step, key),
                "timestamp": BASE_MS + step as i64,
                "step": step,
            }));
        }
    }
    serde_json::json!({"run_id": run_id, "metrics": metrics}).to_string()
}

async fn mlflow_ingest(port: u16, runs: &[String], requests: usize) -> f64 {
    let start = Instant::now();
    let mut handles = Vec::new();
    for run in runs {
        let bodies: Vec<String> = (0..requests)
            .map(|r| mlflow_batch(run, r * STEPS))
            .collect();
        handles.push(tokio::spawn(async move {
            for body in bodies {
                mlflow_json(port, "POST", "/api/2.0/mlflow/runs/log-batch", &body).await;
            }
        }));
    }
    for h in handles {
        h.await.expect("mlflow client");
    }
    (runs.len() * requests * BATCH) as f64 / start.elapsed().as_secs_f64()
}

async fn bench_mlflow(dir: PathBuf) -> Option<MlflowFigures> {
    say("== MLflow ==");
    let mlflow = ensure_mlflow()?;
    std::fs::create_dir_all(&dir).ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
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
            &port.to_string(),
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
        if let Ok((200, _)) = http(port, "GET", "/health", "").await {
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            say("MLflow: server did not become healthy in 180 s; skipped");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    say(format!(
        "MLflow server healthy after {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    let experiment = mlflow_json(
        port,
        "POST",
        "/api/2.0/mlflow/experiments/create",
        r#"{"name": "tasklab-bench"}"#,
    )
    .await["experiment_id"]
        .as_str()
        .expect("experiment id")
        .to_owned();

    let single = vec![mlflow_run(port, &experiment, "one").await];
    mlflow_ingest(port, &single, 1).await;
    let one = mlflow_ingest(port, &single, 30).await;
    say(format!(
        "log-batch, 1 client, 30k points: {one:.0} points/s"
    ));
    let mut runs = Vec::new();
    for c in 0..8 {
        runs.push(mlflow_run(port, &experiment, &format!("eight-{c}")).await);
    }
    let eight = mlflow_ingest(port, &runs, 8).await;
    say(format!(
        "log-batch, 8 clients, 64k points: {eight:.0} points/s"
    ));

    // The downsampled history of the single run's series (31 requests of
    // 100 steps: 3100 points of key k0).
    let path = format!(
        "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?run_ids={}&metric_key=k0&max_results=1000",
        single[0]
    );
    let mut times = Vec::new();
    let mut points = 0;
    for i in 0..40 {
        let start = Instant::now();
        let out = mlflow_json(port, "GET", &path, "").await;
        let took = start.elapsed();
        points = out["metrics"].as_array().map_or(0, Vec::len);
        if i >= 5 {
            times.push(took);
        }
    }
    times.sort();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    say(format!(
        "get-history-bulk-interval ({points} points returned): p50 {:.1} ms, p99 {:.1} ms",
        ms(p50),
        ms(p99)
    ));
    Some(MlflowFigures {
        one,
        eight,
        p50,
        p99,
        series_points: 31 * STEPS,
    })
}
