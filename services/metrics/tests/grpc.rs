//! The metrics service through its generated gRPC client on a real socket,
//! on SQLite and PostgreSQL.

use prost_types::Timestamp;
use tasklab_config::Settings;
use tasklab_db::testing::TestDb;
use tasklab_error::{Error, ErrorCode};
use tasklab_metrics::mount;
use tasklab_proto::metrics::v1::event::Payload;
use tasklab_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use tasklab_proto::metrics::v1::*;
use tasklab_server::Server;
use tasklab_testkit::Running;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = tasklab_db::testing::TestDb::sqlite();
                super::$name(&db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = tasklab_db::testing::TestDb::postgres(concat!(
                    "metrics_grpc_",
                    stringify!($name)
                ))
                .await
                else {
                    return;
                };
                super::$name(&db).await;
            }
        }
    )*};
}

both!(
    ingest_and_read_back,
    errors_carry_stable_codes,
    live_tail_follows_and_ends,
    columnar_series_match_events_through_grpc,
);

async fn start(db: &TestDb) -> (Running, MetricsServiceClient<Channel>) {
    let server = mount(
        Server::new(&tasklab_testkit::test_grpc_settings()),
        &Settings::default(),
        &db.url,
    )
    .await
    .unwrap();
    let running = tasklab_testkit::spawn(server).await;
    let client = MetricsServiceClient::new(running.channel().await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    (running, client)
}

fn ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn scalar(task: &str, metric: &str, iteration: i64, value: f64) -> Event {
    Event {
        task_id: task.into(),
        timestamp: Some(ts(1_700_000_000_000 + iteration)),
        iteration,
        metric: metric.into(),
        variant: "v".into(),
        payload: Some(Payload::Scalar(ScalarEvent {
            value,
            x_axis_label: String::new(),
        })),
        ..Event::default()
    }
}

fn log(task: &str, ms: i64, message: &str) -> Event {
    Event {
        task_id: task.into(),
        timestamp: Some(ts(ms)),
        payload: Some(Payload::Log(LogEvent {
            level: LogLevel::Info as i32,
            worker: "w".into(),
            message: message.into(),
        })),
        ..Event::default()
    }
}

async fn ingest_and_read_back(db: &TestDb) {
    let (_running, mut client) = start(db).await;
    let mut events: Vec<Event> = (0..5000)
        .map(|i| scalar("t", "loss", i, (i % 10) as f64))
        .collect();
    events.push(scalar("t", "Summary", -2_147_483_648, 0.5));
    events.push(Event {
        payload: Some(Payload::Plot(PlotEvent {
            plot_json: "{broken".into(),
            skip_validation: false,
        })),
        ..scalar("t", "p", 1, 0.0)
    });
    let out = client
        .add_events(AddEventsRequest {
            events,
            client_batch_id: String::new(),
            scalar_series: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.added, 5001);
    assert_eq!(out.rejected_count, 1);
    assert_eq!(out.rejected[0].index, 5001);
    assert_eq!(out.rejected[0].code, "invalid_plot");
    assert_eq!(out.errors_by_reason["invalid_plot"], 1);

    let series = client
        .get_scalar_series(GetScalarSeriesRequest {
            task_id: "t".into(),
            samples: Some(100),
            metrics: vec![MetricSelector {
                metric: "loss".into(),
                variants: vec![],
            }],
            ..GetScalarSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .series;
    assert_eq!(series.len(), 1);
    let s = &series[0];
    assert_eq!((s.interval, s.total_points), (50, 5000));
    assert_eq!(s.x.len(), 100);
    assert_eq!(s.x[1], 50);
    assert_eq!(s.y[0], 4.5);
    assert_eq!((s.y_min[0], s.y_max[0], s.counts[0]), (0.0, 9.0, 50));

    // Every point, unbucketed: no envelope arrays.
    let whole = client
        .get_scalar_series(GetScalarSeriesRequest {
            task_id: "t".into(),
            samples: Some(10_000),
            ..GetScalarSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .series;
    assert_eq!(whole.len(), 1, "single values are not a series");
    assert_eq!(whole[0].interval, 1);
    assert_eq!(whole[0].x.len(), 5000);
    assert!(whole[0].y_min.is_empty() && whole[0].counts.is_empty());

    let summary = client
        .get_task_metrics_summary(GetTaskMetricsSummaryRequest {
            task_ids: vec!["t".into(), "none".into()],
            ..GetTaskMetricsSummaryRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(summary[0].last_iteration, Some(4999));
    assert_eq!(summary[0].metrics.len(), 2);
    let loss = &summary[0].metrics[1];
    assert_eq!((loss.metric.as_str(), loss.count), ("loss", 5000));
    assert_eq!((loss.last_value, loss.last_iteration), (9.0, 4999));
    assert_eq!(summary[1].last_iteration, None);
    assert!(summary[1].metrics.is_empty());

    let singles = client
        .get_single_values(GetSingleValuesRequest {
            task_ids: vec!["t".into()],
            model_events: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(singles.tasks[0].values[0].value, 0.5);

    let compare = client
        .compare_scalar_series(CompareScalarSeriesRequest {
            task_ids: vec!["t".into(), "none".into()],
            samples: Some(10),
            ..CompareScalarSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(compare.series.len(), 1);

    let page = client
        .list_scalar_events(ListScalarEventsRequest {
            task_id: "t".into(),
            page: Some(tasklab_proto::common::v1::PageRequest {
                page_size: 10,
                ..Default::default()
            }),
            ..ListScalarEventsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 10);
    assert!(!page.page.unwrap().next_page_token.is_empty());

    let locks = client
        .set_task_locks(SetTaskLocksRequest {
            locks: vec![TaskLock {
                task_id: "t".into(),
                locked: true,
                ..TaskLock::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(locks.changed, 1);
    let listed = client
        .list_locked_tasks(ListLockedTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.locks[0].task_id, "t");
    assert!(listed.locks[0].since.is_some());
    let out = client
        .add_events(AddEventsRequest {
            events: vec![scalar("t", "loss", 6000, 1.0)],
            client_batch_id: String::new(),
            scalar_series: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (out.added, out.rejected[0].code.as_str()),
        (0, "task_locked")
    );
}

async fn errors_carry_stable_codes(db: &TestDb) {
    let (_running, mut client) = start(db).await;
    let status = client
        .add_events(AddEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(Error::from_status(&status).code(), ErrorCode::EmptyBatch);

    // Over 16 MiB but under the decoder's 17 MiB: a clear batch_too_large.
    let big = "x".repeat(1 << 20);
    let mut events: Vec<Event> = (0..16).map(|i| log("t", i, &big)).collect();
    events.push(log("t", 16, &big[..(1 << 19)]));
    let status = client
        .add_events(AddEventsRequest {
            events,
            client_batch_id: String::new(),
            scalar_series: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let err = Error::from_status(&status);
    assert_eq!(err.code(), ErrorCode::TooLarge);
    assert_eq!(err.fields()["reason"], "batch_too_large");

    let status = client
        .get_log(GetLogRequest {
            task_id: "t".into(),
            message_pattern: "[".into(),
            ..GetLogRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(Error::from_status(&status).code(), ErrorCode::InvalidRegex);

    let status = client
        .list_scalar_events(ListScalarEventsRequest {
            task_id: "t".into(),
            order_by: vec![tasklab_proto::common::v1::OrderBy {
                field: "value".into(),
                descending: false,
            }],
            ..ListScalarEventsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        Error::from_status(&status).code(),
        ErrorCode::InvalidArgument
    );

    let status = client
        .set_retention_policy(SetRetentionPolicyRequest {
            policy: Some(RetentionPolicy {
                rules: vec![RetentionRule::default()],
                ..RetentionPolicy::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        Error::from_status(&status).fields()["reason"],
        "invalid_retention_rule"
    );
    // Nothing of the refused requests was stored.
    let usage = client
        .get_storage_usage(GetStorageUsageRequest {
            include_service_total: true,
            ..GetStorageUsageRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.service_total.unwrap().events, 0);
}

async fn live_tail_follows_and_ends(db: &TestDb) {
    let (_running, mut client) = start(db).await;
    client
        .add_events(AddEventsRequest {
            events: vec![log("t", 1000, "stored"), log("t", 10, "too old")],
            client_batch_id: String::new(),
            scalar_series: Vec::new(),
        })
        .await
        .unwrap();
    let mut stream = client
        .tail_log(TailLogRequest {
            task_id: "t".into(),
            from_timestamp: Some(ts(500)),
            ..TailLogRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.events.len(), 1);
    let message = |e: &Event| match &e.payload {
        Some(Payload::Log(l)) => l.message.clone(),
        _ => String::new(),
    };
    assert_eq!(message(&first.events[0]), "stored");

    client
        .add_events(AddEventsRequest {
            events: vec![
                log("other", 2000, "not mine"),
                log("t", 5, "live, old timestamp"),
            ],
            client_batch_id: String::new(),
            scalar_series: Vec::new(),
        })
        .await
        .unwrap();
    let live = stream.next().await.unwrap().unwrap();
    assert_eq!(live.events.len(), 1);
    assert_eq!(message(&live.events[0]), "live, old timestamp");

    client
        .delete_task_events(DeleteTaskEventsRequest {
            task_ids: vec!["t".into()],
            ..DeleteTaskEventsRequest::default()
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends after a delete");
    assert!(end.is_none(), "{end:?}");
}

/// Points of `task` as one `Event` each and as one `ScalarSeriesBatch`.
fn both_forms(
    task: &str,
    variant: &str,
    iterations: &[i64],
    value: impl Fn(i64) -> f64,
) -> (Vec<Event>, ScalarSeriesBatch) {
    let events = iterations
        .iter()
        .map(|&i| Event {
            variant: variant.into(),
            ..scalar(task, "loss", i, value(i))
        })
        .collect();
    let series = ScalarSeriesBatch {
        task_id: task.into(),
        metric: "loss".into(),
        variant: variant.into(),
        iterations: iterations.to_vec(),
        values: iterations.iter().map(|&i| value(i)).collect(),
        timestamps_ms: iterations.iter().map(|&i| 1_700_000_000_000 + i).collect(),
        ..ScalarSeriesBatch::default()
    };
    (events, series)
}

/// The columnar form through gRPC: per-series verdicts with
/// `series_index`, and the same series, summaries and raw events as the
/// same points sent one event each.
async fn columnar_series_match_events_through_grpc(db: &TestDb) {
    let (_running, mut client) = start(db).await;
    let value = |i: i64| {
        if i == 13 {
            f64::NAN
        } else {
            (i % 17) as f64 * 0.5
        }
    };
    let first: Vec<i64> = (0..2000).collect();
    let second: Vec<i64> = (1500..1600).chain(2000..2100).collect();
    for (n, iterations) in [first, second].iter().enumerate() {
        let value = |i: i64| value(i) + n as f64;
        let (events, _) = both_forms("ev", "train", iterations, value);
        let (_, good) = both_forms("col", "train", iterations, value);
        let mut bad = good.clone();
        bad.timestamps_ms.pop();
        let out = client
            .add_events(AddEventsRequest {
                events,
                ..AddEventsRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(out.added as usize, iterations.len());
        let out = client
            .add_events(AddEventsRequest {
                events: vec![log("col", 5, "a log line beside the series")],
                scalar_series: vec![bad, good],
                client_batch_id: format!("b{n}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(out.added as usize, 1 + iterations.len());
        assert_eq!(out.rejected_count, 1);
        assert_eq!(out.rejected_points as usize, iterations.len());
        assert_eq!(out.rejected.len(), 1);
        let r = &out.rejected[0];
        assert_eq!(
            (r.series_index, r.index, r.code.as_str()),
            (Some(0), 0, "invalid_series")
        );
        assert_eq!(out.errors_by_reason["invalid_series"], 1);
    }

    let read = |task: &str| GetScalarSeriesRequest {
        task_id: task.into(),
        samples: Some(150),
        ..GetScalarSeriesRequest::default()
    };
    let mut ev = client
        .get_scalar_series(read("ev"))
        .await
        .unwrap()
        .into_inner()
        .series;
    let mut col = client
        .get_scalar_series(read("col"))
        .await
        .unwrap()
        .into_inner()
        .series;
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].task_id.as_str(), col[0].task_id.as_str()),
        ("ev", "col")
    );
    ev[0].task_id.clear();
    col[0].task_id.clear();
    assert_eq!(format!("{ev:?}"), format!("{col:?}"));
    assert_eq!(col[0].total_points, 2100);

    let summary = client
        .get_task_metrics_summary(GetTaskMetricsSummaryRequest {
            task_ids: vec!["ev".into(), "col".into()],
            ..GetTaskMetricsSummaryRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(summary[0].last_iteration, Some(2099));
    assert_eq!(summary[0].last_iteration, summary[1].last_iteration);
    assert_eq!(
        format!("{:?}", summary[0].metrics),
        format!("{:?}", summary[1].metrics)
    );
    assert_eq!(summary[1].metrics[0].count, 2100);

    let list = |task: &str| ListScalarEventsRequest {
        task_id: task.into(),
        page: Some(tasklab_proto::common::v1::PageRequest {
            page_size: 10_000,
            ..Default::default()
        }),
        ..ListScalarEventsRequest::default()
    };
    let ev = client
        .list_scalar_events(list("ev"))
        .await
        .unwrap()
        .into_inner()
        .events;
    let col = client
        .list_scalar_events(list("col"))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(ev.len(), 2100);
    let strip = |events: Vec<Event>| {
        events
            .into_iter()
            .map(|e| Event {
                task_id: String::new(),
                received: None,
                ..e
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(format!("{:?}", strip(ev)), format!("{:?}", strip(col)));
}
