//! Fault injection: Redis restarts empty (no persistence) under the Redis
//! backend, and the reconciliation rebuilds every acknowledged enqueue in its
//! FIFO order. Runs its own `redis-server` (`TASKLAB_TEST_REDIS_SERVER`) on a
//! free loopback port and kills it at the end.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use tasklab_db::testing::{TestDb, require_env};
use tasklab_queues::backend::redis::RedisBackend;
use tasklab_queues::migration::Migrator;
use tasklab_queues::service::{
    Clock, Expected, Limits, ManualClock, NewQueue, PageQuery, PopRequest, QueueService,
    ReconcileRequest, WakeHub,
};
use tasklab_queues::store::Store;

use common::{RedisProcess, spawn_redis};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn start_redis(bin: &str, port: u16) -> RedisProcess {
    let process = spawn_redis(bin, port);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    for _ in 0..200 {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
        {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis-server did not start on port {port}");
}

async fn retry<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = tasklab_error::Result<T>>,
{
    for _ in 0..100 {
        if let Ok(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis never came back");
}

#[tokio::test]
async fn redis_restarting_empty_is_rebuilt_by_reconciliation() {
    let Some(bin) = require_env(
        "TASKLAB_TEST_REDIS_SERVER",
        "redis-server",
        "redis_restarting_empty_is_rebuilt_by_reconciliation",
    ) else {
        return;
    };
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let redis_proc = start_redis(&bin, port).await;

    let db = TestDb::sqlite();
    let conn = db.migrated::<Migrator>().await;
    let backend = RedisBackend::connect(&url, &common::unique_prefix())
        .await
        .unwrap();
    let hub = Arc::new(WakeHub::default());
    backend.spawn_wake_listener(hub.clone());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap(),
    ));
    let svc = QueueService::new(
        Store::new(conn),
        Arc::new(backend),
        hub,
        clock.clone(),
        Limits::default(),
    );
    let q = svc
        .create_queue(NewQueue {
            name: "q".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .0
        .row
        .id;
    // What the tasks service would hold as queued, with enqueue times.
    let mut queued = Vec::new();
    for t in ["t1", "t2", "t3"] {
        let added = svc.add_entry(&q, t, 0, false).await.unwrap();
        queued.push(Expected {
            task_id: t.into(),
            queue_id: q.clone(),
            priority: 0,
            enqueued: Some(added.entry.added),
        });
        clock.advance(Duration::from_secs(1));
    }
    let before = svc.start_reconciliation("").await.unwrap();

    // Crash: kill -9 and restart empty on the same port.
    drop(redis_proc);
    let redis_proc = start_redis(&bin, port).await;

    let length = retry(|| svc.queue_length(&q)).await;
    assert_eq!(length, (0, 0), "the restart lost every entry");
    let after = retry(|| svc.start_reconciliation(&before.epoch)).await;
    assert!(
        after.epoch_changed,
        "a store that restarted empty has a new epoch"
    );
    // The old fence belongs to the old epoch.
    let err = svc
        .reconcile(ReconcileRequest {
            fence: before.fence,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        tasklab_queues::service::reason(&err),
        "reconcile_fence_stale"
    );

    // Reversed on purpose: the enqueue times, not the stream order, decide.
    queued.reverse();
    let report = svc
        .reconcile(ReconcileRequest {
            fence: after.fence,
            expected: queued,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(report.added, 3);
    let order: Vec<String> = svc
        .list_entries(&q, &PageQuery::default(), false)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.task_id)
        .collect();
    assert_eq!(order, ["t1", "t2", "t3"]);
    let (entry, _) = svc
        .pop(PopRequest {
            worker_id: "w".into(),
            queue_ids: vec![q.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.task_id, "t1");
    assert_eq!(entry.added, clock.now() - chrono::Duration::seconds(3));
    // The queue's key went with the restart: adds find the queue in SQL and
    // record it again; once it is deleted, they are refused.
    svc.add_entry(&q, "t4", 0, false).await.unwrap();
    assert_eq!(svc.queue_length(&q).await.unwrap(), (3, 1));
    svc.delete_queue(&q, true).await.unwrap();
    let err = svc.add_entry(&q, "t5", 0, false).await.unwrap_err();
    assert_eq!(tasklab_queues::service::reason(&err), "queue_not_found");
    drop(redis_proc);
}
