//! Enqueue → pop handoffs per second, and the latency from an enqueue to a
//! waiting worker receiving the task (p50, p99), on the SQL backend
//! (SQLite file; PostgreSQL too when `TASKLAB_TEST_POSTGRES_URL` is set, on
//! fewer tasks: each commit there waits for the server's fsync) and, when
//! `TASKLAB_TEST_REDIS_URL` is set, on Redis.
//! Measures the domain core in-process (no gRPC hop), then the same latency
//! through the real gRPC surface for the SQL backend: a client calls
//! `PopEntry` (waiting) and another `AddEntry` on a server on loopback; the
//! time runs from sending the `AddEntry` to the `PopEntry` response
//! arriving.
//!
//! `cargo bench -p tasklab-queues --bench handoff`

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tasklab_queues::backend::LeaseTarget;
use tasklab_queues::backend::QueueBackend;
use tasklab_queues::backend::redis::RedisBackend;
use tasklab_queues::backend::sql::SqlBackend;
use tasklab_queues::migration::Migrator;
use tasklab_queues::service::{Limits, NewQueue, PopRequest, QueueService, SystemClock, WakeHub};
use tasklab_queues::store::Store;
use tokio::time::Instant;

const THROUGHPUT_TASKS: usize = 5_000;
/// Handoffs per throughput run on PostgreSQL.
const PG_TASKS: usize = 500;
const LATENCY_SAMPLES: usize = 1_000;

async fn service(backend: &str, dir: &std::path::Path) -> Option<(QueueService, String)> {
    let url = match backend {
        "pg" => {
            tasklab_db::testing::TestDb::postgres("handoff bench")
                .await?
                .url
        }
        _ => tasklab_db::sqlite_url(&dir.join(format!("{backend}.db"))),
    };
    let db = tasklab_db::connect_and_migrate::<Migrator>(&url)
        .await
        .unwrap();
    let hub = Arc::new(WakeHub::default());
    let b: Arc<dyn QueueBackend> = match backend {
        "sql" | "pg" => Arc::new(SqlBackend::new(db.clone()).await.unwrap()),
        _ => {
            let url = std::env::var("TASKLAB_TEST_REDIS_URL").ok()?;
            let prefix = format!("tasklab-bench-{}", uuid::Uuid::new_v4().simple());
            let r = RedisBackend::connect(&url, &prefix).await.unwrap();
            r.spawn_wake_listener(hub.clone());
            Arc::new(r)
        }
    };
    let svc = QueueService::new(
        Store::new(db),
        b,
        hub,
        Arc::new(SystemClock),
        Limits::default(),
    );
    let q = svc
        .create_queue(NewQueue {
            name: "bench".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .0
        .row
        .id;
    Some((svc, q))
}

fn pop(q: &str) -> PopRequest {
    PopRequest {
        worker_id: "bench-worker".into(),
        queue_ids: vec![q.to_owned()],
        wait: Duration::from_secs(5),
        ..Default::default()
    }
}

async fn throughput(svc: &QueueService, q: &str, clients: usize, tasks: usize) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..clients {
        let (svc, q, done) = (svc.clone(), q.to_owned(), done.clone());
        workers.push(tokio::spawn(async move {
            let req = PopRequest {
                worker_id: format!("bench-worker-{w}"),
                wait: Duration::from_millis(200),
                ..pop(&q)
            };
            while done.load(Ordering::SeqCst) < tasks {
                if let Some((_, lease)) = svc.pop(req.clone()).await.unwrap() {
                    svc.ack(&LeaseTarget::LeaseId(lease.lease_id), "")
                        .await
                        .unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let start = Instant::now();
    let mut producers = Vec::new();
    for p in 0..clients {
        let (svc, q) = (svc.clone(), q.to_owned());
        producers.push(tokio::spawn(async move {
            for i in (p..tasks).step_by(clients) {
                svc.add_entry(&q, &format!("tp-{clients}-{i}"), 0, false)
                    .await
                    .unwrap();
            }
        }));
    }
    for h in producers.into_iter().chain(workers) {
        h.await.unwrap();
    }
    tasks as f64 / start.elapsed().as_secs_f64()
}

async fn latency(svc: &QueueService, q: &str) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        let waiter = {
            let (svc, q) = (svc.clone(), q.to_owned());
            tokio::spawn(async move {
                let (_, lease) = svc.pop(pop(&q)).await.unwrap().expect("a task");
                let received = Instant::now();
                svc.ack(&LeaseTarget::LeaseId(lease.lease_id), "")
                    .await
                    .unwrap();
                received
            })
        };
        // Enqueue only once the worker is waiting: this measures the wake-up.
        while svc.hub().waiting(q) == 0 {
            tokio::task::yield_now().await;
        }
        let sent = Instant::now();
        svc.add_entry(q, &format!("lat-{i}"), 0, false)
            .await
            .unwrap();
        let received = waiter.await.unwrap();
        samples.push(received.saturating_duration_since(sent));
    }
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// Enqueue → waiting worker receives, through gRPC on loopback.
async fn grpc_latency(dir: &std::path::Path) -> (Duration, Duration) {
    use tasklab_proto::queues::v1 as pb;
    use tasklab_proto::queues::v1::queues_service_client::QueuesServiceClient;

    let url = tasklab_db::sqlite_url(&dir.join("grpc.db"));
    let server = tasklab_queues::mount(
        tasklab_server::Server::new(&tasklab_testkit::test_grpc_settings()),
        &tasklab_config::Settings::default(),
        &url,
    )
    .await
    .unwrap();
    let running = tasklab_testkit::spawn(server).await;
    let mut admin = QueuesServiceClient::new(running.channel().await);
    let q = admin
        .create_queue(pb::CreateQueueRequest {
            name: "bench".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap()
        .id;
    let mut producer = QueuesServiceClient::new(running.channel().await);
    let worker_channel = running.channel().await;
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        let waiter = {
            let mut worker = QueuesServiceClient::new(worker_channel.clone());
            let q = q.clone();
            tokio::spawn(async move {
                let popped = worker
                    .pop_entry(pb::PopEntryRequest {
                        worker_id: "bench-worker".into(),
                        queue_ids: vec![q],
                        wait_timeout: Some(prost_types::Duration {
                            seconds: 5,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let received = Instant::now();
                let lease = popped.lease.expect("a task");
                worker
                    .ack_lease(pb::AckLeaseRequest {
                        target: Some(pb::ack_lease_request::Target::LeaseId(lease.lease_id)),
                        worker_id: "bench-worker".into(),
                    })
                    .await
                    .unwrap();
                received
            })
        };
        // Enqueue only once the pop is waiting on the server.
        loop {
            let m = admin
                .get_queue_metrics(pb::GetQueueMetricsRequest {
                    queue_ids: vec![q.clone()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if m.queues.first().is_some_and(|m| m.waiting_workers > 0) {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let sent = Instant::now();
        producer
            .add_entry(pb::AddEntryRequest {
                queue_id: q.clone(),
                task_id: format!("grpc-{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
        let received = waiter.await.unwrap();
        samples.push(received.saturating_duration_since(sent));
    }
    running.stop().await.ok();
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for backend in ["sql", "pg", "redis"] {
            let Some((svc, q)) = service(backend, dir.path()).await else {
                let var = if backend == "pg" {
                    "TASKLAB_TEST_POSTGRES_URL"
                } else {
                    "TASKLAB_TEST_REDIS_URL"
                };
                println!("{backend}: SKIPPED (set {var})");
                continue;
            };
            let tasks = if backend == "pg" {
                PG_TASKS
            } else {
                THROUGHPUT_TASKS
            };
            for clients in [1, 4] {
                let rate = throughput(&svc, &q, clients, tasks).await;
                println!(
                    "{backend:>5}: {rate:>8.0} handoffs/s ({tasks} tasks, {clients} producers, {clients} workers, each pop acked)"
                );
            }
            let (p50, p99) = latency(&svc, &q).await;
            println!(
                "{backend:>5}: enqueue -> waiting worker receives: p50 {:.3} ms, p99 {:.3} ms ({LATENCY_SAMPLES} samples)",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
            );
        }
        let (p50, p99) = grpc_latency(dir.path()).await;
        println!(
            "  sql: gRPC on loopback, AddEntry sent -> waiting PopEntry answered: p50 {:.3} ms, p99 {:.3} ms ({LATENCY_SAMPLES} samples)",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        );
    });
}
