//! `kill -9` during ingestion loses no acknowledged event (embedded mode,
//! SQLite), and retrying the last batch afterwards adds nothing twice; with
//! the scalars sent one event each and in columnar form.
//!
//! The test re-runs its own binary as a child that serves the metrics
//! service and writes batches through gRPC, printing `ACK <n>` after each
//! acknowledged batch. The parent kills it with SIGKILL mid-stream, then
//! opens the same database and checks every acknowledged event.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};

use tasklab_config::Settings;
use tasklab_metrics::mount;
use tasklab_proto::metrics::v1::event::Payload;
use tasklab_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use tasklab_proto::metrics::v1::*;
use tasklab_server::Server;

const DB_ENV: &str = "TASKLAB_METRICS_DURABILITY_URL";
/// `columnar` makes the child send its scalars as one `ScalarSeriesBatch`.
const FORM_ENV: &str = "TASKLAB_METRICS_DURABILITY_FORM";
const POINTS: i64 = 1000;
const LOGS: usize = 10;

fn batch(n: i64, columnar: bool) -> AddEventsRequest {
    let iterations = n * POINTS..(n + 1) * POINTS;
    let scalar_series = if columnar {
        vec![ScalarSeriesBatch {
            task_id: "t".into(),
            metric: "m".into(),
            variant: "v".into(),
            iterations: iterations.clone().collect(),
            values: iterations.clone().map(|i| i as f64).collect(),
            ..ScalarSeriesBatch::default()
        }]
    } else {
        Vec::new()
    };
    let scalars = if columnar { 0..0 } else { iterations };
    let mut events: Vec<Event> = scalars
        .map(|i| Event {
            task_id: "t".into(),
            iteration: i,
            metric: "m".into(),
            variant: "v".into(),
            payload: Some(Payload::Scalar(ScalarEvent {
                value: i as f64,
                x_axis_label: String::new(),
            })),
            ..Event::default()
        })
        .collect();
    events.extend((0..LOGS).map(|i| Event {
        task_id: "t".into(),
        payload: Some(Payload::Log(LogEvent {
            level: LogLevel::Info as i32,
            worker: String::new(),
            message: format!("batch {n} line {i}"),
        })),
        ..Event::default()
    }));
    AddEventsRequest {
        events,
        client_batch_id: format!("batch-{n}"),
        scalar_series,
    }
}

async fn client(
    url: &str,
) -> (
    tasklab_testkit::Running,
    MetricsServiceClient<tonic::transport::Channel>,
) {
    let server = mount(
        Server::new(&tasklab_testkit::test_grpc_settings()),
        &Settings::default(),
        url,
    )
    .await
    .unwrap();
    let running = tasklab_testkit::spawn(server).await;
    let client = MetricsServiceClient::new(running.channel().await);
    (running, client)
}

/// The child: writes batches forever, announcing each acknowledgement.
#[tokio::test]
#[ignore = "run by acknowledged_events_survive_kill_9 as a child process"]
async fn durability_child() {
    let Ok(url) = std::env::var(DB_ENV) else {
        panic!("{DB_ENV} is not set: this test only runs as a child process");
    };
    let columnar = std::env::var(FORM_ENV).as_deref() == Ok("columnar");
    let (_running, mut client) = client(&url).await;
    let mut out = std::io::stdout();
    for n in 0.. {
        client.add_events(batch(n, columnar)).await.unwrap();
        writeln!(out, "ACK {n}").unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    kill_9_loses_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_series_survive_kill_9() {
    kill_9_loses_nothing(true).await;
}

async fn kill_9_loses_nothing(columnar: bool) {
    let db = tasklab_db::testing::TestDb::sqlite();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["durability_child", "--exact", "--ignored", "--nocapture"])
        .env(DB_ENV, &db.url)
        .env(FORM_ENV, if columnar { "columnar" } else { "events" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let last_ack = tokio::task::spawn_blocking(move || {
        let mut last = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("ACK ") {
                last = Some(n.parse::<i64>().unwrap());
                if last == Some(30) {
                    break;
                }
            }
        }
        last
    })
    .await
    .unwrap()
    .expect("the child acknowledged batches");
    // SIGKILL, mid-stream: the child is sending batch 31 by now.
    child.kill().unwrap();
    child.wait().unwrap();

    let (_running, mut client) = client(&db.url).await;
    let summary = client
        .get_task_metrics_summary(GetTaskMetricsSummaryRequest {
            task_ids: vec!["t".into()],
            ..GetTaskMetricsSummaryRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let acked = (last_ack + 1) * POINTS;
    let count = summary.tasks[0].metrics[0].count as i64;
    assert!(
        count >= acked,
        "{count} points stored, {acked} acknowledged"
    );
    let series = client
        .get_scalar_series(GetScalarSeriesRequest {
            task_id: "t".into(),
            samples: Some(0),
            x_max: Some(acked - 1),
            ..GetScalarSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .series;
    let x = &series[0].x;
    assert_eq!(x.len() as i64, acked);
    assert!(x.iter().copied().eq(0..acked));
    let log = client
        .get_log(GetLogRequest {
            task_id: "t".into(),
            page: Some(tasklab_proto::common::v1::PageRequest {
                include_total: true,
                ..Default::default()
            }),
            ..GetLogRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let logs = log.page.unwrap().total_size.unwrap() as i64;
    assert!(logs >= (last_ack + 1) * LOGS as i64);

    // The client retries its last acknowledged batch: nothing doubles.
    let retry = client
        .add_events(batch(last_ack, columnar))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.duplicates as usize, LOGS);
    assert_eq!(
        retry.added as i64, POINTS,
        "the points are replaced, the logs dropped"
    );
    let after = client
        .get_task_metrics_summary(GetTaskMetricsSummaryRequest {
            task_ids: vec!["t".into()],
            ..GetTaskMetricsSummaryRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.tasks[0].metrics[0].count as i64, count);
}
