//! Fixtures shared by the integration tests: a domain core over each backend
//! with a hand-driven clock.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use tasklab_db::testing::{TestDb, require_env};
use tasklab_queues::backend::QueueBackend;
use tasklab_queues::backend::redis::RedisBackend;
use tasklab_queues::backend::sql::SqlBackend;
use tasklab_queues::migration::Migrator;
use tasklab_queues::service::{Limits, ManualClock, QueueService, WakeHub};
use tasklab_queues::store::Store;

pub const REDIS_ENV: &str = "TASKLAB_TEST_REDIS_URL";

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Sqlite,
    Postgres,
    Redis,
}

pub struct Fx {
    pub svc: QueueService,
    /// The SQL store under `svc`, to build a second replica over the same
    /// database and backend.
    pub store: Store,
    pub clock: Arc<ManualClock>,
    pub backend: Arc<dyn QueueBackend>,
    pub _db: TestDb,
}

pub fn unique_prefix() -> String {
    format!("tasklab-test-{}", uuid::Uuid::new_v4().simple())
}

pub async fn fixture(kind: Kind, test: &str) -> Option<Fx> {
    let db = match kind {
        Kind::Postgres => TestDb::postgres(test).await?,
        _ => TestDb::sqlite(),
    };
    let conn = db.migrated::<Migrator>().await;
    let hub = Arc::new(WakeHub::default());
    let backend: Arc<dyn QueueBackend> = match kind {
        Kind::Sqlite | Kind::Postgres => Arc::new(SqlBackend::new(conn.clone()).await.unwrap()),
        Kind::Redis => {
            let url = require_env(REDIS_ENV, "Redis", test)?;
            let redis = RedisBackend::connect(&url, &unique_prefix()).await.unwrap();
            redis.spawn_wake_listener(hub.clone());
            Arc::new(redis)
        }
    };
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap(),
    ));
    let store = Store::new(conn);
    let svc = QueueService::new(
        store.clone(),
        backend.clone(),
        hub,
        clock.clone(),
        Limits::default(),
    );
    Some(Fx {
        svc,
        store,
        clock,
        backend,
        _db: db,
    })
}

impl Fx {
    /// Another replica: its own service (wake hub, caches) over the same
    /// database, backend and clock.
    pub fn replica(&self) -> QueueService {
        QueueService::new(
            self.store.clone(),
            self.backend.clone(),
            Arc::new(WakeHub::default()),
            self.clock.clone(),
            Limits::default(),
        )
    }
}

/// A `redis-server` child process of a test, without persistence; killed
/// when dropped.
pub struct RedisProcess(pub std::process::Child);

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin` (a `redis-server`) on `127.0.0.1:port`, without waiting for
/// it to accept connections.
pub fn spawn_redis(bin: &str, port: u16) -> RedisProcess {
    RedisProcess(
        std::process::Command::new(bin)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server"),
    )
}
