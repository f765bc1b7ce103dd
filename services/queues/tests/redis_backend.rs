//! The Redis backend beyond the conformance suite: `queues.redis_prefix`
//! keeps two deployments on one Redis database apart; a push wakes the
//! waiters of another process (replica); and the backend gets over losing
//! its scripts, its connections and the server itself. The last test runs
//! its own `redis-server` (`TASKLAB_TEST_REDIS_SERVER`) on a free loopback
//! port, since it flushes scripts and kills connections.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tasklab_config::{QueueBackendKind, Settings};
use tasklab_db::testing::{TestDb, require_env};
use tasklab_queues::backend::LeaseTarget;
use tasklab_queues::backend::redis::RedisBackend;
use tasklab_queues::migration::Migrator;
use tasklab_queues::service::{
    Limits, NewQueue, PopRequest, QueueService, SystemClock, WakeHub, reason,
};
use tasklab_queues::store::Store;
use tokio::time::Instant;

fn redis_settings(url: &str, prefix: &str) -> Settings {
    let mut s = Settings::default();
    s.queues.backend = QueueBackendKind::Redis;
    s.redis_url = Some(url.to_owned());
    s.queues.redis_prefix = prefix.to_owned();
    s
}

async fn new_queue(svc: &QueueService, name: &str) -> String {
    svc.create_queue(NewQueue {
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .0
    .row
    .id
}

fn pop_req(q: &str, wait: Duration) -> PopRequest {
    PopRequest {
        worker_id: "w".into(),
        queue_ids: vec![q.to_owned()],
        wait,
        ..Default::default()
    }
}

#[tokio::test]
async fn prefixes_keep_deployments_apart() {
    let Some(url) = require_env(
        common::REDIS_ENV,
        "Redis",
        "prefixes_keep_deployments_apart",
    ) else {
        return;
    };
    let (pa, pb) = (common::unique_prefix(), common::unique_prefix());
    let (da, db, dc) = (TestDb::sqlite(), TestDb::sqlite(), TestDb::sqlite());
    let build = |prefix: &str, db: &TestDb| {
        let settings = redis_settings(&url, prefix);
        let db_url = db.url.clone();
        async move {
            tasklab_queues::build(&settings, &db_url, Arc::new(SystemClock))
                .await
                .unwrap()
        }
    };
    let a = build(&pa, &da).await;
    let b = build(&pb, &db).await;
    let qa = new_queue(&a, "q").await;
    let qb = new_queue(&b, "q").await;

    // The same task id in both: on one prefix the second add would find the
    // task already queued (one queue per task).
    a.add_entry(&qa, "task-1", 0, false).await.unwrap();
    b.add_entry(&qb, "task-1", 0, false).await.unwrap();
    assert_eq!(
        a.find_task_queue("task-1").await.unwrap().unwrap().queue_id,
        qa
    );
    assert_eq!(
        b.find_task_queue("task-1").await.unwrap().unwrap().queue_id,
        qb
    );
    let (entry, lease) = b.pop(pop_req(&qb, Duration::ZERO)).await.unwrap().unwrap();
    assert_eq!(entry.task_id, "task-1");
    b.ack(&LeaseTarget::LeaseId(lease.lease_id), "w")
        .await
        .unwrap();
    assert!(b.find_task_queue("task-1").await.unwrap().is_none());
    assert_eq!(a.queue_length(&qa).await.unwrap(), (1, 0));
    assert_ne!(
        a.start_reconciliation("").await.unwrap().epoch,
        b.start_reconciliation("").await.unwrap().epoch
    );

    // Control: a deployment on A's prefix shares A's entries.
    let c = build(&pa, &dc).await;
    let qc = new_queue(&c, "q").await;
    let err = c.add_entry(&qc, "task-1", 0, false).await.unwrap_err();
    assert_eq!(reason(&err), "task_already_queued");
    assert_eq!(
        c.find_task_queue("task-1").await.unwrap().unwrap().queue_id,
        qa
    );

    let err = tasklab_queues::build(&redis_settings(&url, ""), &dc.url, Arc::new(SystemClock))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tasklab_error::ErrorCode::InvalidArgument);
}

/// Two replicas of one deployment: one database, one prefix (returned), each
/// with its own backend, wake hub and listener.
async fn replicas(url: &str, db: &TestDb) -> (QueueService, QueueService, String) {
    let conn = db.migrated::<Migrator>().await;
    let prefix = common::unique_prefix();
    let mut out = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect(url, &prefix).await.unwrap();
        let hub = Arc::new(WakeHub::default());
        backend.spawn_wake_listener(hub.clone());
        out.push(QueueService::new(
            Store::new(conn.clone()),
            Arc::new(backend),
            hub,
            Arc::new(SystemClock),
            Limits::default(),
        ));
    }
    let b = out.pop().unwrap();
    (out.pop().unwrap(), b, prefix)
}

/// Starts a pop waiting on `q` in `waiter`, then adds `task` through
/// `pusher`: the pop must return it well before its 30 s wait ends.
async fn woken_across(waiter: &QueueService, pusher: &QueueService, q: &str, task: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let pop = {
        let (svc, q) = (waiter.clone(), q.to_owned());
        tokio::spawn(async move {
            let started = Instant::now();
            let got = svc.pop(pop_req(&q, Duration::from_secs(30))).await;
            (got, started.elapsed())
        })
    };
    while waiter.hub().waiting(q) == 0 {
        assert!(Instant::now() < deadline, "the pop never started waiting");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    pusher.add_entry(q, task, 0, false).await.unwrap();
    let (got, waited) = tokio::time::timeout_at(deadline, pop)
        .await
        .expect("the waiter was not woken by the other replica's push")
        .unwrap();
    let (entry, lease) = got.unwrap().expect("a task");
    assert_eq!(entry.task_id, task);
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    waiter
        .ack(&LeaseTarget::LeaseId(lease.lease_id), "w")
        .await
        .unwrap();
}

/// Waits until `n` wake listeners of `prefix` are subscribed (so a push
/// after this reaches them).
async fn listening(admin: &redis::Client, prefix: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = admin.get_multiplexed_async_connection().await {
            let channels: Vec<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .arg(format!("{{{prefix}}}:wake:*"))
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            let registered: usize = redis::cmd("ZCARD")
                .arg(format!("{{{prefix}}}:wakers"))
                .query_async(&mut c)
                .await
                .unwrap_or(0);
            if channels.len() == n && registered == n {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the wake listeners never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_push_wakes_the_waiters_of_another_replica() {
    let Some(url) = require_env(
        common::REDIS_ENV,
        "Redis",
        "a_push_wakes_the_waiters_of_another_replica",
    ) else {
        return;
    };
    let db = TestDb::sqlite();
    let (a, b, prefix) = replicas(&url, &db).await;
    let q = new_queue(&a, "q").await;
    listening(&redis::Client::open(url.as_str()).unwrap(), &prefix, 2).await;
    woken_across(&a, &b, &q, "t1").await;
    woken_across(&b, &a, &q, "t2").await;
    // A replica's own push wakes its own waiter (in process).
    woken_across(&a, &a, &q, "t3").await;
}

async fn admin_cmd(admin: &redis::Client, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = admin.get_multiplexed_async_connection().await {
            let mut cmd = redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            if cmd.query_async::<redis::Value>(&mut c).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "redis never answered {args:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn lost_scripts_connections_and_server_are_recovered() {
    let Some(bin) = require_env(
        "TASKLAB_TEST_REDIS_SERVER",
        "redis-server",
        "lost_scripts_connections_and_server_are_recovered",
    ) else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let admin = redis::Client::open(url.as_str()).unwrap();
    let mut server = common::spawn_redis(&bin, port);
    admin_cmd(&admin, &["PING"]).await;

    let db = TestDb::sqlite();
    let (a, b, prefix) = replicas(&url, &db).await;
    let q = new_queue(&a, "q").await;
    listening(&admin, &prefix, 2).await;
    woken_across(&a, &b, &q, "t1").await;

    // The server forgets the scripts: the next call loads its script again.
    admin_cmd(&admin, &["SCRIPT", "FLUSH"]).await;
    woken_across(&a, &b, &q, "t2").await;

    // Every connection is closed under the backend: idle ones are replaced,
    // the listeners subscribe again.
    admin_cmd(&admin, &["CLIENT", "KILL", "TYPE", "normal"]).await;
    admin_cmd(&admin, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(a.queue_length(&q).await.unwrap(), (0, 0));
    listening(&admin, &prefix, 2).await;
    woken_across(&b, &a, &q, "t3").await;

    // The server restarts empty (kill -9): the listeners register again and
    // the queue is recorded again from SQL on first use.
    drop(server);
    server = common::spawn_redis(&bin, port);
    admin_cmd(&admin, &["PING"]).await;
    listening(&admin, &prefix, 2).await;
    woken_across(&a, &b, &q, "t4").await;
    drop(server);
}

#[test]
fn the_default_prefix_is_the_settings_default() {
    assert_eq!(
        Settings::default().queues.redis_prefix,
        tasklab_queues::backend::redis::DEFAULT_PREFIX
    );
}
