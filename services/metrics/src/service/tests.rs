//! Domain core tests against the real store, on SQLite and PostgreSQL. Each
//! test is written once as an async fn taking the database URL and run on
//! both engines by [`both!`].

use std::collections::BTreeMap;
use std::sync::Arc;

use tasklab_db::testing::TestDb;
use tasklab_error::ErrorCode;

use super::*;
use crate::migration::Migrator;
use crate::store::{SqlMetricsStore, connect_writer};

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = tasklab_db::testing::TestDb::sqlite();
                super::$name(&db.url).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = tasklab_db::testing::TestDb::postgres(concat!(
                    "metrics_",
                    stringify!($name)
                ))
                .await
                else {
                    return;
                };
                super::$name(&db.url).await;
            }
        }
    )*};
}

both!(
    scalars_keep_summaries_in_step,
    resends_are_idempotent_and_overwrite,
    out_of_order_writes_merge_by_iteration,
    downsampled_reads_match_a_brute_force_reference,
    locked_tasks_refuse_events_one_by_one,
    bad_events_never_sink_the_batch,
    batch_limits_are_clear_errors,
    log_batches_are_deduplicated_and_paged,
    plots_vectors_and_samples_navigate,
    deletes_clear_or_recompute,
    usage_and_retention,
    concurrent_writers_share_commits,
    raw_scalars_are_keyset_paged,
    columnar_series_store_what_events_store,
    bad_series_never_sink_the_batch,
    series_limits_are_clear_errors,
    locked_tasks_refuse_whole_series,
    resent_series_are_idempotent_and_later_points_win,
);

async fn service(url: &str) -> MetricsService {
    let read = tasklab_db::connect_and_migrate::<Migrator>(url)
        .await
        .unwrap();
    let write = connect_writer(url).await.unwrap();
    MetricsService::new(Arc::new(SqlMetricsStore::new(read, write)))
}

fn base(task: &str, metric: &str, variant: &str, iteration: i64, payload: Payload) -> NewEvent {
    NewEvent {
        task_id: task.into(),
        model: false,
        timestamp_ms: Some(1_700_000_000_000 + iteration.clamp(-1000, 1_000_000_000)),
        iteration,
        metric: metric.into(),
        variant: variant.into(),
        sequence: 0,
        allow_locked: false,
        payload: Some(payload),
    }
}

fn scalar(task: &str, metric: &str, variant: &str, iteration: i64, value: f64) -> NewEvent {
    base(
        task,
        metric,
        variant,
        iteration,
        Payload::Scalar {
            value,
            x_axis_label: String::new(),
        },
    )
}

fn log(task: &str, ts: i64, level: i32, message: &str) -> NewEvent {
    NewEvent {
        timestamp_ms: Some(ts),
        ..base(
            task,
            "",
            "",
            0,
            Payload::Log {
                level,
                worker: "w".into(),
                message: message.into(),
            },
        )
    }
}

fn plot(task: &str, metric: &str, variant: &str, iteration: i64, json: &str) -> NewEvent {
    base(
        task,
        metric,
        variant,
        iteration,
        Payload::Plot {
            json: json.into(),
            skip_validation: false,
        },
    )
}

fn sample(task: &str, metric: &str, variant: &str, iteration: i64, key: &str) -> NewEvent {
    base(
        task,
        metric,
        variant,
        iteration,
        Payload::DebugSample {
            url: format!("http://files/{key}"),
            key: key.into(),
        },
    )
}

async fn summary(svc: &MetricsService, task: &str) -> TaskSummary {
    svc.summaries(vec![task.into()], false, vec![])
        .await
        .unwrap()
        .pop()
        .unwrap()
}

async fn raw(svc: &MetricsService, task: &str, metric: &str, variant: &str) -> Vec<(i64, f64)> {
    let out = svc
        .series(SeriesRequest {
            tasks: vec![task.into()],
            model: false,
            selectors: vec![Selector {
                metric: metric.into(),
                variants: vec![variant.into()],
            }],
            samples: Some(0),
            axis: Axis::Iteration,
            x_min: None,
            x_max: None,
        })
        .await
        .unwrap();
    out.into_iter()
        .flat_map(|s| s.data.buckets)
        .map(|b| (b.x, b.stats.mean()))
        .collect()
}

fn series_of<'a>(s: &'a TaskSummary, metric: &str, variant: &str) -> &'a SeriesSummary {
    s.series
        .iter()
        .find(|x| x.metric == metric && x.variant == variant)
        .unwrap_or_else(|| panic!("no series {metric}/{variant}"))
}

async fn scalars_keep_summaries_in_step(url: &str) {
    let svc = service(url).await;
    let mut events = vec![
        scalar("t1", "loss", "train", 0, 3.0),
        scalar("t1", "loss", "train", 1, 1.0),
        scalar("t1", "loss", "train", 2, f64::NAN),
        scalar("t1", "loss", "train", 3, 2.0),
        scalar("t1", "acc", "val", 5, f64::INFINITY),
        scalar("t1", "Summary", "acc", SINGLE_VALUE_ITER, 0.9),
    ];
    events[3].payload = Some(Payload::Scalar {
        value: 2.0,
        x_axis_label: "epochs".into(),
    });
    let out = svc.add_events(events, String::new()).await.unwrap();
    assert_eq!(out.added, 6);
    assert_eq!(out.rejected_count, 0);

    let s = summary(&svc, "t1").await;
    assert_eq!(
        s.state.last_iteration,
        Some(5),
        "single values do not count"
    );
    assert!(s.state.last_update_ms.is_some());
    let names: Vec<(&str, &str)> = s
        .series
        .iter()
        .map(|x| (x.metric.as_str(), x.variant.as_str()))
        .collect();
    assert_eq!(
        names,
        [("Summary", "acc"), ("acc", "val"), ("loss", "train")]
    );
    let loss = series_of(&s, "loss", "train");
    assert_eq!(loss.stats.count, 4);
    assert_eq!((loss.stats.min, loss.min_iter), (1.0, 1));
    assert_eq!((loss.stats.max, loss.max_iter), (3.0, 0));
    assert_eq!((loss.first.0, loss.first.2), (0, 3.0));
    assert_eq!((loss.last.0, loss.last.2), (3, 2.0));
    assert_eq!(loss.stats.mean(), 2.0, "NaN left out of the mean");
    assert_eq!(loss.x_axis_label, "epochs");
    let acc = series_of(&s, "acc", "val");
    assert_eq!(acc.stats.max, f64::INFINITY);

    // NaN comes back bit for bit, the single value stays out of the series.
    let points = raw(&svc, "t1", "loss", "train").await;
    assert_eq!(points.len(), 4);
    assert!(points[2].1.is_nan());
    assert!(raw(&svc, "t1", "Summary", "acc").await.is_empty());
    let singles = svc
        .single_values(vec!["t1".into(), "nobody".into()], false)
        .await
        .unwrap();
    assert_eq!(singles[0].1.len(), 1);
    assert_eq!(singles[0].1[0].value, 0.9);
    assert!(singles[1].1.is_empty());

    // A later batch moves last and min, appends to the tail chunk.
    svc.add_events(
        vec![
            scalar("t1", "loss", "train", 10, 0.5),
            scalar("t1", "loss", "train", 11, 0.25),
        ],
        String::new(),
    )
    .await
    .unwrap();
    let s = summary(&svc, "t1").await;
    let loss = series_of(&s, "loss", "train");
    assert_eq!(loss.stats.count, 6);
    assert_eq!((loss.last.0, loss.last.2), (11, 0.25));
    assert_eq!((loss.stats.min, loss.min_iter), (0.25, 11));
    assert_eq!(s.state.last_iteration, Some(11));

    // Unknown tasks have empty summaries.
    let empty = summary(&svc, "unknown").await;
    assert!(empty.series.is_empty() && empty.state.last_iteration.is_none());

    let names = svc
        .metric_names(vec!["t1".into()], false, vec![])
        .await
        .unwrap();
    assert_eq!(names[0].1.len(), 3);
    assert!(names[0].1.iter().all(|m| m.kind == Kind::Scalar));
}

async fn resends_are_idempotent_and_overwrite(url: &str) {
    let svc = service(url).await;
    let batch: Vec<NewEvent> = (0..300)
        .map(|i| scalar("t", "m", "v", i, i as f64))
        .collect();
    svc.add_events(batch.clone(), String::new()).await.unwrap();
    let before = summary(&svc, "t").await;
    let out = svc.add_events(batch, String::new()).await.unwrap();
    assert_eq!(out.added, 300, "replacements count as added");
    let after = summary(&svc, "t").await;
    assert_eq!(before.series, after.series, "a re-send changes nothing");
    assert_eq!(raw(&svc, "t", "m", "v").await.len(), 300);

    // Overwrite one value: the mean follows, min keeps the replaced value.
    svc.add_events(vec![scalar("t", "m", "v", 0, 1000.0)], String::new())
        .await
        .unwrap();
    let s = summary(&svc, "t").await;
    let m = series_of(&s, "m", "v");
    assert_eq!(m.stats.count, 300);
    assert_eq!(m.stats.min, 0.0, "min covers replaced values");
    assert_eq!(m.stats.max, 1000.0);
    let expected_mean = (1000.0 + (1..300).map(|i| i as f64).sum::<f64>()) / 300.0;
    assert!((m.stats.mean() - expected_mean).abs() < 1e-9);
    assert_eq!(raw(&svc, "t", "m", "v").await[0], (0, 1000.0));

    // Within one batch the last arrival wins; replacing an infinity keeps
    // the mean exact.
    svc.add_events(
        vec![
            scalar("t", "m", "v", 5, f64::INFINITY),
            scalar("t", "m", "v", 5, 7.0),
        ],
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(raw(&svc, "t", "m", "v").await[5], (5, 7.0));
    svc.add_events(vec![scalar("t", "m", "v", 6, f64::INFINITY)], String::new())
        .await
        .unwrap();
    svc.add_events(vec![scalar("t", "m", "v", 6, 6.0)], String::new())
        .await
        .unwrap();
    let s = summary(&svc, "t").await;
    let m = series_of(&s, "m", "v");
    let expected = (1000.0 + 7.0 - 5.0 + (1..300).map(|i| i as f64).sum::<f64>()) / 300.0;
    assert!(
        (m.stats.mean() - expected).abs() < 1e-9,
        "{}",
        m.stats.mean()
    );
}

async fn out_of_order_writes_merge_by_iteration(url: &str) {
    let svc = service(url).await;
    let mut model: BTreeMap<i64, f64> = BTreeMap::new();
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    for round in 0..25 {
        let n = 1 + (next() % 200) as usize;
        let base_iter = if round % 3 == 0 {
            model.keys().next_back().copied().unwrap_or(0) + 1
        } else {
            (next() % 3000) as i64
        };
        let mut batch = Vec::new();
        for k in 0..n {
            let iter = base_iter + (k as i64) * (1 + (next() % 3) as i64);
            let value = (next() % 1000) as f64;
            model.insert(iter, value);
            batch.push(scalar("t", "m", "v", iter, value));
        }
        svc.add_events(batch, String::new()).await.unwrap();
    }
    let got = raw(&svc, "t", "m", "v").await;
    let want: Vec<(i64, f64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(got, want);
    let s = summary(&svc, "t").await;
    let m = series_of(&s, "m", "v");
    assert_eq!(m.stats.count, model.len() as u64);
    let mean = model.values().sum::<f64>() / model.len() as f64;
    assert!((m.stats.mean() - mean).abs() < 1e-6);
    let (last_iter, last_value) = model.iter().next_back().unwrap();
    assert_eq!((m.last.0, m.last.2), (*last_iter, *last_value));
    let (first_iter, first_value) = model.iter().next().unwrap();
    assert_eq!((m.first.0, m.first.2), (*first_iter, *first_value));
}

async fn downsampled_reads_match_a_brute_force_reference(url: &str) {
    let svc = service(url).await;
    let n = 20_000i64;
    for start in (0..n).step_by(1000) {
        let batch = (start..start + 1000)
            .map(|i| scalar("t", "m", "v", i, ((i * 37) % 101) as f64))
            .collect();
        svc.add_events(batch, String::new()).await.unwrap();
    }
    for (samples, x_min, x_max) in [(100, None, None), (777, Some(1234), Some(17_001))] {
        let out = svc
            .series(SeriesRequest {
                tasks: vec!["t".into()],
                model: false,
                selectors: vec![],
                samples: Some(samples),
                axis: Axis::Iteration,
                x_min,
                x_max,
            })
            .await
            .unwrap();
        let s = &out[0].data;
        let lo = x_min.unwrap_or(0);
        let hi = x_max.unwrap_or(n - 1);
        let width = (hi - lo + 1 + i64::from(samples) - 1) / i64::from(samples);
        assert_eq!(s.interval, width);
        assert_eq!(s.total, (hi - lo + 1) as u64);
        let mut want: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for i in lo..=hi {
            want.entry(i.div_euclid(width) * width)
                .or_default()
                .push(((i * 37) % 101) as f64);
        }
        assert_eq!(s.buckets.len(), want.len());
        for (b, (x, values)) in s.buckets.iter().zip(&want) {
            assert_eq!(b.x, *x);
            assert_eq!(b.stats.count, values.len() as u64);
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            assert!((b.stats.mean() - mean).abs() < 1e-9);
            assert_eq!(b.stats.min, values.iter().copied().fold(f64::MAX, f64::min));
            assert_eq!(b.stats.max, values.iter().copied().fold(f64::MIN, f64::max));
        }
    }
    // By time: timestamps are 1.7e12 + iteration.
    let out = svc
        .series(SeriesRequest {
            tasks: vec!["t".into()],
            model: false,
            selectors: vec![],
            samples: Some(10),
            axis: Axis::Timestamp,
            x_min: None,
            x_max: None,
        })
        .await
        .unwrap();
    assert_eq!(out[0].data.interval, 2000);
    assert_eq!(
        out[0]
            .data
            .buckets
            .iter()
            .map(|b| b.stats.count)
            .sum::<u64>(),
        n as u64
    );
    // Too many points, and a bad request.
    let err = svc
        .series(SeriesRequest {
            tasks: vec!["t".into()],
            model: false,
            selectors: vec![],
            samples: Some(100_001),
            axis: Axis::Iteration,
            x_min: None,
            x_max: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

async fn locked_tasks_refuse_events_one_by_one(url: &str) {
    let svc = service(url).await;
    let lock = |id: &str, locked: bool| TaskLock {
        task: TaskRef {
            id: id.into(),
            model: false,
        },
        locked,
        since_ms: 0,
    };
    assert_eq!(svc.set_locks(vec![lock("pub", true)]).await.unwrap(), 1);
    assert_eq!(
        svc.set_locks(vec![lock("pub", true)]).await.unwrap(),
        0,
        "idempotent"
    );
    let mut allowed = log("pub", 5, 4, "final line");
    allowed.allow_locked = true;
    let out = svc
        .add_events(
            vec![
                scalar("pub", "m", "v", 1, 1.0),
                scalar("free", "m", "v", 1, 1.0),
                allowed,
            ],
            String::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.added, 2);
    assert_eq!(out.rejected_count, 1);
    assert_eq!(out.rejected[0].index, 0);
    assert_eq!(out.rejected[0].code, "task_locked");
    assert_eq!(out.by_reason["task_locked"], 1);
    assert!(summary(&svc, "pub").await.series.is_empty());
    assert_eq!(summary(&svc, "free").await.series.len(), 1);

    let err = svc
        .delete(DeleteRequest {
            tasks: vec!["free".into(), "pub".into()],
            model: false,
            kinds: vec![],
            before_ms: None,
            force: false,
            return_urls: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TaskPublished);
    assert_eq!(err.fields()["reason"], "task_locked");
    assert_eq!(
        summary(&svc, "free").await.series.len(),
        1,
        "nothing deleted"
    );

    svc.set_locks(vec![lock("a", true), lock("b", true)])
        .await
        .unwrap();
    let first = svc
        .list_locks(Page {
            size: 2,
            token: String::new(),
            include_total: true,
        })
        .await
        .unwrap();
    assert_eq!(first.total, Some(3));
    let ids: Vec<&str> = first.items.iter().map(|l| l.task.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let second = svc
        .list_locks(Page {
            size: 2,
            token: first.next_token.clone(),
            include_total: false,
        })
        .await
        .unwrap();
    assert_eq!(second.items[0].task.id, "pub");
    assert!(second.next_token.is_empty());
    assert!(
        svc.list_locks(Page {
            size: 2,
            token: "garbage!".into(),
            include_total: false
        })
        .await
        .is_err()
    );

    svc.set_locks(vec![lock("pub", false)]).await.unwrap();
    let out = svc
        .add_events(vec![scalar("pub", "m", "v", 1, 1.0)], String::new())
        .await
        .unwrap();
    assert_eq!(out.added, 1);
}

async fn bad_events_never_sink_the_batch(url: &str) {
    let svc = service(url).await;
    let mut no_payload = scalar("t", "m", "v", 1, 1.0);
    no_payload.payload = None;
    let mut no_task = scalar("", "m", "v", 1, 1.0);
    no_task.task_id = String::new();
    let mut model_log = log("t", 1, 4, "x");
    model_log.model = true;
    let long_name = scalar("t", &"x".repeat(1025), "v", 1, 1.0);
    let huge_log = log("t", 2, 4, &"y".repeat((1 << 20) + 1));
    let huge_plot = plot(
        "t",
        "p",
        "v",
        1,
        &format!("{{\"a\":\"{}\"}}", "z".repeat(4 << 20)),
    );
    let events = vec![
        scalar("t", "m", "v", 1, f64::NAN),
        no_payload,
        no_task,
        model_log,
        plot("t", "p", "v", 1, "{not json"),
        plot("t", "p", "v", 2, "[1, 2]"),
        long_name,
        huge_log,
        huge_plot,
        log("t", 3, 6, "fine"),
        plot("t", "p", "v", 3, r#"{"data": [], "layout": {}}"#),
        NewEvent {
            payload: Some(Payload::Plot {
                json: "not json but skipped".into(),
                skip_validation: true,
            }),
            ..plot("t", "p", "w", 3, "")
        },
    ];
    let out = svc.add_events(events, String::new()).await.unwrap();
    let codes: Vec<(u32, &str)> = out.rejected.iter().map(|r| (r.index, r.code)).collect();
    assert_eq!(
        codes,
        [
            (1, "invalid_event"),
            (2, "invalid_event"),
            (3, "log_for_model"),
            (4, "invalid_plot"),
            (5, "invalid_plot"),
            (6, "invalid_event"),
            (7, "event_too_large"),
            (8, "event_too_large"),
        ]
    );
    assert_eq!(out.rejected_count, 8);
    assert_eq!(out.added, 4);
    assert_eq!(out.by_reason["invalid_event"], 3);
    assert!(out.rejected.iter().all(|r| !r.reason.is_empty()));
    // The good ones landed.
    assert!(raw(&svc, "t", "m", "v").await[0].1.is_nan());
    let logs = svc
        .log(LogRequest {
            task_id: "t".into(),
            from_ms: None,
            direction: Direction::Later,
            ascending: None,
            levels: vec![],
            pattern: String::new(),
            page: Page::default(),
        })
        .await
        .unwrap();
    assert_eq!(logs.items.len(), 1);
    let plots = svc
        .iteration_events(
            TaskRef {
                id: "t".into(),
                model: false,
            },
            Kind::Plot,
            vec![],
            Page::default(),
        )
        .await
        .unwrap();
    assert_eq!(plots.items.len(), 2);
}

async fn batch_limits_are_clear_errors(url: &str) {
    let svc = service(url).await;
    let err = svc.add_events(vec![], String::new()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::EmptyBatch);
    let many: Vec<NewEvent> = (0..10_001).map(|i| scalar("t", "m", "v", i, 0.0)).collect();
    let err = svc.add_events(many, String::new()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge);
    assert_eq!(err.fields()["reason"], "batch_too_large");
    assert!(summary(&svc, "t").await.series.is_empty(), "nothing stored");
    let max: Vec<NewEvent> = (0..10_000).map(|i| scalar("t", "m", "v", i, 0.0)).collect();
    assert_eq!(
        svc.add_events(max, String::new()).await.unwrap().added,
        10_000
    );
    let err = svc
        .summaries((0..1001).map(|i| i.to_string()).collect(), false, vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge);
}

async fn log_batches_are_deduplicated_and_paged(url: &str) {
    let svc = service(url).await;
    let batch: Vec<NewEvent> = (0..10)
        .map(|i| {
            log(
                "t",
                1000 + (i / 2),
                if i % 3 == 0 { 6 } else { 4 },
                &format!("line {i}"),
            )
        })
        .collect();
    let out = svc
        .add_events(batch.clone(), "batch-1".into())
        .await
        .unwrap();
    assert_eq!((out.added, out.duplicates), (10, 0));
    let out = svc
        .add_events(batch.clone(), "batch-1".into())
        .await
        .unwrap();
    assert_eq!(
        (out.added, out.duplicates),
        (0, 10),
        "a retry never doubles"
    );
    let out = svc
        .add_events(batch[..2].to_vec(), String::new())
        .await
        .unwrap();
    assert_eq!(out.added, 2, "no batch id: appended (ClearML's behaviour)");

    let read = |direction, from_ms, token: String, size| {
        let svc = svc.clone();
        async move {
            svc.log(LogRequest {
                task_id: "t".into(),
                from_ms,
                direction,
                ascending: None,
                levels: vec![],
                pattern: String::new(),
                page: Page {
                    size,
                    token,
                    include_total: true,
                },
            })
            .await
            .unwrap()
        }
    };
    // Pages of 3 from the newest, through equal timestamps, cover all 12.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = read(Direction::Earlier, None, token, 3).await;
        assert_eq!(page.total, Some(12));
        seen.extend(page.items.iter().map(|e| e.timestamp_ms));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen.len(), 12);
    assert!(seen.windows(2).all(|w| w[0] >= w[1]), "{seen:?}");
    // Later from a timestamp, exclusive.
    let later = read(Direction::Later, Some(1002), String::new(), 100).await;
    assert!(later.items.iter().all(|e| e.timestamp_ms > 1002));
    assert_eq!(later.items.len(), 4);
    assert!(later.next_token.is_empty());

    let errors = svc
        .log(LogRequest {
            task_id: "t".into(),
            from_ms: None,
            direction: Direction::Later,
            ascending: Some(false),
            levels: vec![6],
            pattern: r"line [36]".into(),
            page: Page::default(),
        })
        .await
        .unwrap();
    let messages: Vec<String> = errors
        .items
        .iter()
        .map(|e| match &e.payload {
            Payload::Log { message, .. } => message.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(messages, ["line 6", "line 3"]);
    let err = svc
        .log(LogRequest {
            task_id: "t".into(),
            from_ms: None,
            direction: Direction::Later,
            ascending: None,
            levels: vec![],
            pattern: "(".into(),
            page: Page::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRegex);
}

async fn plots_vectors_and_samples_navigate(url: &str) {
    let svc = service(url).await;
    let task = TaskRef {
        id: "t".into(),
        model: false,
    };
    let mut events = Vec::new();
    for i in [0, 10, 20, 30] {
        events.push(plot("t", "hist", "a", i, &format!("{{\"i\": {i}}}")));
        events.push(plot("t", "hist", "b", i, "{}"));
        events.push(sample("t", "img", "s", i, &format!("k{i}")));
        events.push(sample("t", "img", "s", i, &format!("k{i}-2")));
        events.push(base(
            "t",
            "vec",
            "v",
            i,
            Payload::Vector {
                values: vec![1.0, f64::NAN, i as f64],
            },
        ));
    }
    svc.add_events(events, String::new()).await.unwrap();
    // A re-sent plot replaces.
    svc.add_events(
        vec![plot("t", "hist", "a", 30, r#"{"new": 1}"#)],
        String::new(),
    )
    .await
    .unwrap();

    let page1 = svc
        .iteration_events(
            task.clone(),
            Kind::Plot,
            vec![],
            Page {
                size: 2,
                ..Page::default()
            },
        )
        .await
        .unwrap();
    let its: Vec<(i64, &str)> = page1
        .items
        .iter()
        .map(|e| (e.iteration, e.variant.as_str()))
        .collect();
    assert_eq!(its, [(30, "a"), (30, "b"), (20, "a"), (20, "b")]);
    assert_eq!(page1.total, Some(8));
    assert!(
        matches!(&page1.items[0].payload, Payload::Plot { json, .. } if json == r#"{"new": 1}"#)
    );
    let page2 = svc
        .iteration_events(
            task.clone(),
            Kind::Plot,
            vec![],
            Page {
                size: 2,
                token: page1.next_token.clone(),
                ..Page::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page2.items.last().unwrap().iteration, 0);
    assert!(page2.next_token.is_empty());

    let vectors = svc
        .iteration_events(task.clone(), Kind::Vector, vec![], Page::default())
        .await
        .unwrap();
    assert!(
        matches!(&vectors.items[0].payload, Payload::Vector { values } if values.len() == 3 && values[1].is_nan())
    );

    let nav = |n| svc.sample(task.clone(), Kind::DebugSample, "img".into(), "s".into(), n);
    let latest = nav(Navigation::Latest).await.unwrap();
    assert_eq!(latest.iteration, Some(30));
    assert_eq!(latest.events.len(), 2);
    assert_eq!(
        (latest.min_iteration, latest.max_iteration),
        (Some(0), Some(30))
    );
    assert_eq!(
        nav(Navigation::Previous(30)).await.unwrap().iteration,
        Some(20)
    );
    assert_eq!(nav(Navigation::Next(10)).await.unwrap().iteration, Some(20));
    assert_eq!(nav(Navigation::Next(30)).await.unwrap().iteration, None);
    assert_eq!(nav(Navigation::Earliest).await.unwrap().iteration, Some(0));
    let plot_view = svc
        .sample(
            task.clone(),
            Kind::Plot,
            "hist".into(),
            "b".into(),
            Navigation::At(10),
        )
        .await
        .unwrap();
    assert_eq!(plot_view.events.len(), 1);
    assert!(
        svc.sample(
            task.clone(),
            Kind::Plot,
            String::new(),
            "b".into(),
            Navigation::Latest
        )
        .await
        .is_err()
    );

    let groups = svc
        .debug_samples(
            vec!["t".into()],
            false,
            vec![],
            Page {
                size: 3,
                ..Page::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(groups.items.len(), 1);
    let its: Vec<i64> = groups.items[0].iterations.iter().map(|i| i.0).collect();
    assert_eq!(its, [30, 20, 10]);
    let rest = svc
        .debug_samples(
            vec!["t".into()],
            false,
            vec![],
            Page {
                size: 3,
                token: groups.next_token.clone(),
                ..Page::default()
            },
        )
        .await
        .unwrap();
    let its: Vec<i64> = rest.items[0].iterations.iter().map(|i| i.0).collect();
    assert_eq!(its, [0]);
    assert!(rest.next_token.is_empty());

    let names = svc
        .metric_names(vec!["t".into()], false, vec![])
        .await
        .unwrap();
    let kinds: Vec<(Kind, &str)> = names[0]
        .1
        .iter()
        .map(|m| (m.kind, m.metric.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Kind::Vector, "vec"),
            (Kind::Plot, "hist"),
            (Kind::DebugSample, "img")
        ]
    );
    assert_eq!(summary(&svc, "t").await.state.last_iteration, Some(30));
}

async fn deletes_clear_or_recompute(url: &str) {
    let svc = service(url).await;
    let mut events: Vec<NewEvent> = (0..100)
        .map(|i| scalar("t", "m", "v", i, i as f64))
        .collect();
    events.push(sample("t", "img", "s", 1, "a.png"));
    events.push(log("t", 1_700_000_000_050, 4, "hello"));
    events.push(scalar("other", "m", "v", 1, 1.0));
    svc.add_events(events, String::new()).await.unwrap();

    // Older than iteration 50's timestamp: scalars recomputed, log kept.
    let done = svc
        .delete(DeleteRequest {
            tasks: vec!["t".into()],
            model: false,
            kinds: vec![Kind::Scalar],
            before_ms: Some(1_700_000_000_050),
            force: false,
            return_urls: false,
        })
        .await
        .unwrap();
    assert_eq!(done[0].1.counts[&Kind::Scalar], 50);
    let s = summary(&svc, "t").await;
    let m = series_of(&s, "m", "v");
    assert_eq!(m.stats.count, 50);
    assert_eq!((m.stats.min, m.min_iter), (50.0, 50));
    assert_eq!(m.first.0, 50);

    let done = svc
        .delete(DeleteRequest {
            tasks: vec!["t".into(), "t".into()],
            model: false,
            kinds: vec![],
            before_ms: None,
            force: false,
            return_urls: true,
        })
        .await
        .unwrap();
    assert_eq!(done.len(), 2, "one entry per requested id");
    let d = &done[0].1;
    assert_eq!(d.counts[&Kind::Scalar], 50);
    assert_eq!(d.counts[&Kind::DebugSample], 1);
    assert_eq!(d.counts[&Kind::Log], 1);
    assert_eq!(d.urls, ["http://files/a.png"]);
    let s = summary(&svc, "t").await;
    assert!(s.series.is_empty() && s.state.last_iteration.is_none());
    assert_eq!(
        summary(&svc, "other").await.series.len(),
        1,
        "others untouched"
    );
    // Idempotent.
    let again = svc
        .delete(DeleteRequest {
            tasks: vec!["t".into()],
            model: false,
            kinds: vec![],
            before_ms: None,
            force: false,
            return_urls: false,
        })
        .await
        .unwrap();
    assert!(again[0].1.counts.is_empty());
    // Writing after a delete starts a fresh series.
    svc.add_events(vec![scalar("t", "m", "v", 3, 3.0)], String::new())
        .await
        .unwrap();
    assert_eq!(raw(&svc, "t", "m", "v").await, [(3, 3.0)]);
}

async fn usage_and_retention(url: &str) {
    let svc = service(url).await;
    let now = now_ms();
    let old = now - 10 * 86_400_000;
    let mut events = Vec::new();
    for i in 0..5000i64 {
        let mut e = scalar("t", "m", "v", i, (i % 10) as f64);
        e.timestamp_ms = Some(if i < 4000 { old + i } else { now - 1000 });
        events.push(e);
    }
    events.push(log("t", old, 4, "old line"));
    events.push(log("t", now, 4, "new line"));
    events.push(scalar("u", "m", "v", 0, 1.0));
    svc.add_events(events, String::new()).await.unwrap();

    let report = svc
        .usage(
            vec!["t".into(), "nobody".into()],
            vec![Group {
                id: "p".into(),
                tasks: vec!["t".into(), "u".into(), "nobody".into()],
            }],
            false,
            true,
        )
        .await
        .unwrap();
    let t = &report.tasks[0].1;
    assert_eq!(t[&Kind::Scalar].events, 5000);
    assert!(t[&Kind::Scalar].bytes > 5000 * 5 && t[&Kind::Scalar].bytes < 5000 * 24);
    assert_eq!(t[&Kind::Log].events, 2);
    assert!(report.tasks[1].1.is_empty());
    assert_eq!(report.groups[0].tasks_with_events, 2);
    assert_eq!(report.groups[0].kinds[&Kind::Scalar].events, 5001);
    let total = report.total.unwrap();
    assert_eq!(total.tasks_with_events, 2);

    // Policies: validation, inheritance.
    let bad = svc
        .set_policy(RetentionPolicy {
            project_id: "p".into(),
            rules: vec![RetentionRule {
                kinds: vec![],
                max_age_ms: 60_000,
                action: RetentionAction::Delete,
                samples: 0,
            }],
            include_locked: false,
            updated_ms: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.fields()["reason"], "invalid_retention_rule");
    svc.set_policy(RetentionPolicy {
        project_id: String::new(),
        rules: vec![
            RetentionRule {
                kinds: vec![Kind::Log],
                max_age_ms: 86_400_000,
                action: RetentionAction::Delete,
                samples: 0,
            },
            RetentionRule {
                kinds: vec![Kind::Scalar],
                max_age_ms: 86_400_000,
                action: RetentionAction::Downsample,
                samples: 100,
            },
        ],
        include_locked: false,
        updated_ms: None,
    })
    .await
    .unwrap();
    let (p, inherited) = svc.policy("p").await.unwrap();
    assert!(inherited);
    assert_eq!(p.rules.len(), 2);

    let before = summary(&svc, "t").await;
    let dry = svc
        .apply_retention(
            vec![Group {
                id: "p".into(),
                tasks: vec!["t".into()],
            }],
            true,
            false,
        )
        .await
        .unwrap();
    assert_eq!(dry.0[0].deleted[&Kind::Log], 1);
    assert_eq!(
        raw(&svc, "t", "m", "v").await.len(),
        5000,
        "dry run changes nothing"
    );

    let (reports, _) = svc
        .apply_retention(
            vec![Group {
                id: "p".into(),
                tasks: vec!["t".into()],
            }],
            false,
            false,
        )
        .await
        .unwrap();
    let r = &reports[0];
    assert!(r.inherited);
    assert_eq!(r.deleted[&Kind::Log], 1);
    assert_eq!(r.points_before, 4000);
    assert_eq!(r.points_after, 100);
    let points = raw(&svc, "t", "m", "v").await;
    assert_eq!(points.len(), 1100);
    assert_eq!(points[0], (0, 4.5), "bucket means at lower bounds");
    let after = summary(&svc, "t").await;
    assert_eq!(
        series_of(&before, "m", "v").stats.min,
        series_of(&after, "m", "v").stats.min
    );
    assert!(svc.delete_policy("").await.unwrap());
    assert!(!svc.delete_policy("").await.unwrap());
}

async fn concurrent_writers_share_commits(url: &str) {
    let svc = service(url).await;
    let mut handles = Vec::new();
    for client in 0..8 {
        let svc = svc.clone();
        handles.push(tokio::spawn(async move {
            for round in 0..10i64 {
                let batch = (0..200)
                    .map(|i| {
                        scalar(
                            &format!("t{client}"),
                            "m",
                            &format!("v{}", i % 4),
                            round * 50 + i / 4,
                            1.0,
                        )
                    })
                    .collect();
                let out = svc.add_events(batch, String::new()).await.unwrap();
                assert_eq!(out.added, 200);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let tasks: Vec<String> = (0..8).map(|c| format!("t{c}")).collect();
    for s in svc.summaries(tasks, false, vec![]).await.unwrap() {
        assert_eq!(s.series.len(), 4);
        assert!(s.series.iter().all(|x| x.stats.count == 500));
        assert_eq!(s.state.last_iteration, Some(499));
    }
}

async fn raw_scalars_are_keyset_paged(url: &str) {
    let svc = service(url).await;
    let mut events: Vec<NewEvent> = (0..30)
        .flat_map(|i| {
            [
                scalar("t", "a", "x", i, i as f64),
                scalar("t", "b", "y", i, -(i as f64)),
            ]
        })
        .collect();
    events.push(scalar("t", "Summary", "s", SINGLE_VALUE_ITER, 1.0));
    svc.add_events(events, String::new()).await.unwrap();
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = svc
            .list_scalars(ScalarListRequest {
                task: TaskRef {
                    id: "t".into(),
                    model: false,
                },
                selectors: vec![],
                min_iteration: Some(5),
                max_iteration: None,
                include_single_values: false,
                page: Page {
                    size: 7,
                    token,
                    include_total: true,
                },
                order: ScalarOrder::Iteration,
                descending: true,
            })
            .await
            .unwrap();
        assert_eq!(page.total, Some(50));
        seen.extend(page.items.into_iter().map(|e| (e.iteration, e.metric)));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen.len(), 50);
    assert_eq!(seen[0], (29, "b".to_owned()));
    assert_eq!(seen[1], (29, "a".to_owned()));
    assert_eq!(seen[49].0, 5);
}

#[tokio::test]
async fn tail_streams_are_limited() {
    let db = TestDb::sqlite();
    let svc = service(&db.url).await.with_max_tails(2);
    let a = svc.tail_permit().unwrap();
    let _b = svc.tail_permit().unwrap();
    let err = svc.tail_permit().unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge);
    assert_eq!(err.fields()["reason"], "too_many_streams");
    drop(a);
    assert!(svc.tail_permit().is_ok());
}

/// A scalar series in columnar form with one timestamp per point.
fn series(task: &str, metric: &str, variant: &str, points: &[(i64, f64)]) -> NewSeries {
    NewSeries {
        task_id: task.into(),
        metric: metric.into(),
        variant: variant.into(),
        iterations: points.iter().map(|p| p.0).collect(),
        values: points.iter().map(|p| p.1).collect(),
        timestamps_ms: points
            .iter()
            .map(|p| 1_700_000_000_000 + p.0.clamp(-1000, 1_000_000_000))
            .collect(),
        ..NewSeries::default()
    }
}

/// Every stored point of a task in (metric, variant, iteration) order, with
/// its timestamp and the bits of its value (so NaN compares equal).
async fn stored(svc: &MetricsService, task: &str) -> Vec<(String, String, i64, i64, u64)> {
    let page = svc
        .list_scalars(ScalarListRequest {
            task: TaskRef {
                id: task.into(),
                model: false,
            },
            selectors: vec![],
            min_iteration: None,
            max_iteration: None,
            include_single_values: true,
            page: Page {
                size: 10_000,
                token: String::new(),
                include_total: false,
            },
            order: ScalarOrder::Iteration,
            descending: false,
        })
        .await
        .unwrap();
    assert!(page.next_token.is_empty());
    let mut out: Vec<_> = page
        .items
        .into_iter()
        .map(|e| {
            let Payload::Scalar { value, .. } = e.payload else {
                panic!("not a scalar");
            };
            (
                e.metric,
                e.variant,
                e.iteration,
                e.timestamp_ms,
                value.to_bits(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A series summary without its ids, floats as bits.
fn summary_key(s: &SeriesSummary) -> Vec<String> {
    let f = |v: f64| format!("{:x}", v.to_bits());
    vec![
        s.metric.clone(),
        s.variant.clone(),
        s.x_axis_label.clone(),
        s.stats.count.to_string(),
        s.stats.nonnan.to_string(),
        f(s.stats.sum),
        f(s.stats.min),
        f(s.stats.max),
        s.min_iter.to_string(),
        s.max_iter.to_string(),
        format!("{} {} {}", s.first.0, s.first.1, f(s.first.2)),
        format!("{} {} {}", s.last.0, s.last.1, f(s.last.2)),
        format!("{:?}", s.max_stored_iter),
        s.bytes.to_string(),
    ]
}

/// The same writes through scalar events (task `ev`) and through the
/// columnar form (task `col`) store the same points and summaries: appends,
/// small appends into the tail chunk, out-of-order rewrites, repeats,
/// NaN and infinities, single values, labels.
async fn columnar_series_store_what_events_store(url: &str) {
    let svc = service(url).await;
    type Write = Vec<(&'static str, &'static str, &'static str, Vec<(i64, f64)>)>;
    let loss: Vec<(i64, f64)> = (0..300)
        .map(|i| match i {
            7 => (i, f64::NAN),
            11 => (i, f64::INFINITY),
            _ => (i, ((i * 37) % 101) as f64 / 7.0),
        })
        .collect();
    let acc: Vec<(i64, f64)> = (0..100)
        .map(|i| (i * 3, if i == 50 { f64::NEG_INFINITY } else { i as f64 }))
        .collect();
    let writes: Vec<Write> = vec![
        vec![
            ("loss", "train", "", loss),
            ("acc", "val", "", acc),
            ("Summary", "best", "", vec![(SINGLE_VALUE_ITER, 0.75)]),
        ],
        // Rewrites below the highest iteration, a repeat within the batch
        // (the later one wins), an append, a new label.
        vec![
            (
                "loss",
                "train",
                "epochs",
                (150..160)
                    .map(|i| (i, -(i as f64)))
                    .chain([(50, 1.0), (50, 2.0)])
                    .chain((400..405).map(|i| (i, i as f64)))
                    .collect(),
            ),
            ("Summary", "best", "", vec![(SINGLE_VALUE_ITER, 0.5)]),
        ],
        // A small append merged into the tail chunk.
        vec![(
            "loss",
            "train",
            "epochs",
            (405..410).map(|i| (i, 0.5)).collect(),
        )],
    ];
    for write in &writes {
        let mut events = Vec::new();
        let mut batch = Vec::new();
        for (metric, variant, label, points) in write {
            for &(iter, value) in points {
                let mut e = scalar("ev", metric, variant, iter, value);
                e.payload = Some(Payload::Scalar {
                    value,
                    x_axis_label: (*label).into(),
                });
                events.push(e);
            }
            let mut s = series("col", metric, variant, points);
            s.x_axis_label = (*label).into();
            batch.push(s);
        }
        let n = events.len() as u32;
        let by_events = svc.add_events(events, String::new()).await.unwrap();
        let by_series = svc
            .add_batch(Vec::new(), batch, String::new())
            .await
            .unwrap();
        assert_eq!((by_events.added, by_events.rejected_count), (n, 0));
        assert_eq!((by_series.added, by_series.rejected_count), (n, 0));
        assert_eq!(by_series.rejected_points, 0);

        let (ev, col) = (summary(&svc, "ev").await, summary(&svc, "col").await);
        assert_eq!(ev.state.last_iteration, col.state.last_iteration);
        assert_eq!(ev.state.last_event_ms, col.state.last_event_ms);
        let keys = |s: &TaskSummary| s.series.iter().map(summary_key).collect::<Vec<_>>();
        assert_eq!(keys(&ev), keys(&col));
        assert_eq!(stored(&svc, "ev").await, stored(&svc, "col").await);
    }
    let s = summary(&svc, "col").await;
    assert_eq!(
        s.state.last_iteration,
        Some(409),
        "single values do not count"
    );
    let loss = series_of(&s, "loss", "train");
    assert_eq!(loss.stats.count, 310);
    assert_eq!(loss.x_axis_label, "epochs");
    assert_eq!((loss.last.0, loss.last.2), (409, 0.5));
    let points = stored(&svc, "col").await;
    let at = |m: &str, i: i64| {
        points
            .iter()
            .find(|p| p.0 == m && p.2 == i)
            .map(|p| f64::from_bits(p.4))
            .unwrap()
    };
    assert_eq!(at("loss", 50), 2.0, "the later repeat won");
    assert_eq!(at("loss", 155), -155.0, "the rewrite replaced the value");
    assert!(at("loss", 7).is_nan());
    assert_eq!(at("Summary", SINGLE_VALUE_ITER), 0.5);
    let singles = svc
        .single_values(vec!["ev".into(), "col".into()], false)
        .await
        .unwrap();
    assert_eq!(singles[0].1, singles[1].1);
    assert_eq!(singles[1].1[0].value, 0.5);

    // Downsampled reads agree bucket for bucket.
    for samples in [Some(0), Some(7), Some(100)] {
        let read = |task: &str| SeriesRequest {
            tasks: vec![task.into()],
            model: false,
            selectors: vec![],
            samples,
            axis: Axis::Iteration,
            x_min: None,
            x_max: None,
        };
        let ev = svc.series(read("ev")).await.unwrap();
        let col = svc.series(read("col")).await.unwrap();
        assert_eq!(ev.len(), 2);
        for (a, b) in ev.iter().zip(&col) {
            assert_eq!((&a.metric, &a.variant), (&b.metric, &b.variant));
            assert_eq!(format!("{:?}", a.data), format!("{:?}", b.data));
        }
    }
}

async fn bad_series_never_sink_the_batch(url: &str) {
    let svc = service(url).await;
    let good = series("t", "m", "v", &[(1, 1.0), (2, 2.0), (3, f64::NAN)]);
    let mut short_values = series("t", "m", "v", &[(4, 4.0), (5, 5.0)]);
    short_values.values.pop();
    let mut long_timestamps = series("t", "m", "v", &[(6, 6.0)]);
    long_timestamps.timestamps_ms.push(0);
    let empty = series("t", "m", "v", &[]);
    let no_task = series("", "m", "v", &[(7, 7.0)]);
    let long_name = series("t", &"x".repeat(1025), "v", &[(8, 8.0)]);
    let mut huge = series("t", "m", "huge", &[(9, 9.0)]);
    huge.x_axis_label = "l".repeat(4 << 20);
    let mut received = series("t", "m", "now", &[(10, 10.0), (11, 11.0)]);
    received.timestamps_ms.clear();
    let long_task = series(&"t".repeat(129), "m", "v", &[(12, 12.0)]);
    let before = now_ms();
    let out = svc
        .add_batch(
            vec![scalar("t", "e", "v", 1, 1.0)],
            vec![
                good,
                short_values,
                long_timestamps,
                empty,
                no_task,
                long_name,
                huge,
                received,
                long_task,
            ],
            String::new(),
        )
        .await
        .unwrap();
    let after = now_ms();
    let codes: Vec<(u32, bool, &str)> = out
        .rejected
        .iter()
        .map(|r| (r.index, r.series, r.code))
        .collect();
    assert_eq!(
        codes,
        [
            (1, true, "invalid_series"),
            (2, true, "invalid_series"),
            (3, true, "invalid_series"),
            (4, true, "invalid_series"),
            (5, true, "invalid_series"),
            (6, true, "series_too_large"),
            (8, true, "invalid_series"),
        ]
    );
    assert!(out.rejected[0].reason.contains("2 iterations but 1 values"));
    assert!(out.rejected[1].reason.contains("timestamps"));
    assert!(out.rejected[2].reason.contains("no points"));
    assert_eq!(out.added, 1 + 3 + 2);
    assert_eq!(out.rejected_count, 7);
    // The lengths of their iterations: 2, 1, none, then 1 each.
    assert_eq!(out.rejected_points, 2 + 1 + 1 + 1 + 1 + 1);
    assert_eq!(out.by_reason["invalid_series"], 6);
    assert_eq!(out.by_reason["series_too_large"], 1);
    // The good ones landed; no timestamps means the time of receipt.
    let points = stored(&svc, "t").await;
    let kept: Vec<(&str, &str, i64)> = points
        .iter()
        .map(|p| (p.0.as_str(), p.1.as_str(), p.2))
        .collect();
    assert_eq!(
        kept,
        [
            ("e", "v", 1),
            ("m", "now", 10),
            ("m", "now", 11),
            ("m", "v", 1),
            ("m", "v", 2),
            ("m", "v", 3),
        ]
    );
    assert!(points[1].3 >= before && points[1].3 <= after);
    assert!(f64::from_bits(points[5].4).is_nan());
    let s = summary(&svc, "t").await;
    assert_eq!(series_of(&s, "m", "v").stats.count, 3);
    assert_eq!(s.state.last_iteration, Some(11));

    // A batch of bad series only is answered, not refused.
    let out = svc
        .add_batch(Vec::new(), vec![series("t", "m", "v", &[])], String::new())
        .await
        .unwrap();
    assert_eq!((out.added, out.rejected_count), (0, 1));
}

async fn series_limits_are_clear_errors(url: &str) {
    let svc = service(url).await;
    let err = svc
        .add_batch(Vec::new(), Vec::new(), String::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::EmptyBatch);

    let points = |lo: i64, n: i64| (lo..lo + n).map(|i| (i, 0.0)).collect::<Vec<_>>();
    let over = vec![
        series("t", "m", "a", &points(0, 60_000)),
        series("t", "m", "b", &points(0, 40_001)),
    ];
    let err = svc
        .add_batch(vec![scalar("t", "e", "v", 1, 1.0)], over, String::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge);
    assert_eq!(err.fields()["reason"], "batch_too_large");
    assert!(err.to_string().contains("100001"), "{err}");
    assert!(summary(&svc, "t").await.series.is_empty(), "nothing stored");

    // Mismatched arrays count by their longest one.
    let mut lopsided = series("t", "m", "a", &points(0, 10));
    lopsided.values = vec![0.0; 100_001];
    let err = svc
        .add_batch(Vec::new(), vec![lopsided], String::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge);

    let many: Vec<NewSeries> = (0..10_001)
        .map(|i| series("t", "m", &format!("v{i}"), &[(0, 0.0)]))
        .collect();
    let err = svc
        .add_batch(Vec::new(), many, String::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge);
    assert!(summary(&svc, "t").await.series.is_empty(), "nothing stored");

    // The limits themselves are fine, beside 10,000 events.
    let max = vec![
        series("t", "m", "a", &points(0, 60_000)),
        series("t", "m", "b", &points(0, 40_000)),
    ];
    let events: Vec<NewEvent> = (0..10_000).map(|i| scalar("t", "e", "v", i, 0.0)).collect();
    let out = svc.add_batch(events, max, String::new()).await.unwrap();
    assert_eq!(out.added, 110_000);
    let s = summary(&svc, "t").await;
    assert_eq!(series_of(&s, "m", "a").stats.count, 60_000);
    assert_eq!(series_of(&s, "m", "b").stats.count, 40_000);
    assert_eq!(
        raw(&svc, "t", "m", "a").await.len(),
        60_000,
        "every point readable"
    );
}

async fn locked_tasks_refuse_whole_series(url: &str) {
    let svc = service(url).await;
    svc.set_locks(vec![TaskLock {
        task: TaskRef {
            id: "pub".into(),
            model: false,
        },
        locked: true,
        since_ms: 0,
    }])
    .await
    .unwrap();
    let mut allowed = series("pub", "final", "v", &[(1, 1.0)]);
    allowed.allow_locked = true;
    let mut model = series("pub", "m", "v", &[(1, 1.0)]);
    model.model = true;
    let out = svc
        .add_batch(
            vec![
                scalar("pub", "m", "v", 1, 1.0),
                scalar("free", "e", "v", 1, 1.0),
                scalar("pub", "m", "v", 2, 1.0),
            ],
            vec![
                series("pub", "m", "v", &[(3, 1.0), (4, 1.0)]),
                series("free", "m", "v", &[(1, 1.0), (2, 2.0)]),
                allowed,
                model,
            ],
            String::new(),
        )
        .await
        .unwrap();
    let codes: Vec<(u32, bool, &str)> = out
        .rejected
        .iter()
        .map(|r| (r.index, r.series, r.code))
        .collect();
    assert_eq!(
        codes,
        [
            (0, false, "task_locked"),
            (2, false, "task_locked"),
            (0, true, "task_locked"),
        ]
    );
    assert_eq!(out.rejected_count, 3);
    assert_eq!(out.rejected_points, 2);
    assert_eq!(out.by_reason["task_locked"], 3);
    assert_eq!(out.added, 1 + 2 + 1 + 1);
    let locked = summary(&svc, "pub").await;
    let names: Vec<&str> = locked.series.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["final"], "only the allowed series");
    assert_eq!(stored(&svc, "free").await.len(), 3);
    let models = svc
        .summaries(vec!["pub".into()], true, vec![])
        .await
        .unwrap();
    assert_eq!(
        models[0].series.len(),
        1,
        "the model of the same id is not locked"
    );
}

async fn resent_series_are_idempotent_and_later_points_win(url: &str) {
    let svc = service(url).await;
    let batch: Vec<NewSeries> = (0..3)
        .map(|k| {
            let points: Vec<(i64, f64)> = (0..500).map(|i| (i, (i * k) as f64)).collect();
            series("t", "m", &format!("v{k}"), &points)
        })
        .collect();
    let out = svc
        .add_batch(Vec::new(), batch.clone(), String::new())
        .await
        .unwrap();
    assert_eq!(out.added, 1500);
    let before = summary(&svc, "t").await;
    let points = stored(&svc, "t").await;
    let out = svc
        .add_batch(Vec::new(), batch, String::new())
        .await
        .unwrap();
    assert_eq!(out.added, 1500, "replacements count as added");
    let after = summary(&svc, "t").await;
    assert_eq!(before.series, after.series, "a re-send changes nothing");
    assert_eq!(points, stored(&svc, "t").await);

    // In one request: an event, then two series of the same key; the last
    // arrival wins, and the sum follows the replacements.
    let out = svc
        .add_batch(
            vec![scalar("t", "m", "v1", 10, 100.0)],
            vec![
                series("t", "m", "v1", &[(10, 200.0), (11, 201.0)]),
                series("t", "m", "v1", &[(11, 301.0), (600, 1.0)]),
            ],
            String::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.added, 5);
    let v1 = raw(&svc, "t", "m", "v1").await;
    assert_eq!(v1[10], (10, 200.0));
    assert_eq!(v1[11], (11, 301.0));
    assert_eq!(v1.last(), Some(&(600, 1.0)));
    let s = summary(&svc, "t").await;
    let m = series_of(&s, "m", "v1");
    assert_eq!(m.stats.count, 501);
    let sum = (0..500).sum::<i64>() as f64 - 10.0 - 11.0 + 200.0 + 301.0 + 1.0;
    assert!((m.stats.mean() - sum / 501.0).abs() < 1e-9);

    // Min and max cover every value received, replaced ones included.
    svc.add_batch(
        Vec::new(),
        vec![series("t", "m", "v0", &[(5, 1000.0), (5, 0.0)])],
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(raw(&svc, "t", "m", "v0").await[5], (5, 0.0));
    let s = summary(&svc, "t").await;
    let m = series_of(&s, "m", "v0");
    assert_eq!((m.stats.max, m.max_iter), (1000.0, 5));
    assert_eq!(m.stats.mean(), 0.0);
}
