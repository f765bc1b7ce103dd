//! The queues service: execution queues, their entries, the leases that hand
//! entries to workers, and the registry of workers (agents), served as
//! `tasklab.queues.v1.QueuesService` and `tasklab.queues.v1.WorkersService`.
//!
//! Layout:
//!
//! * `grpc.rs` — the tonic implementations: messages to domain types and
//!   back; no rule lives there.
//! * [`service`] — the domain core: validation, queue administration, pops
//!   that wait for a push, leases, workers, metrics and reconciliation.
//! * [`store`] — queue metadata and the worker registry, in the service's own
//!   SQL database on both backends (they change rarely and must survive a
//!   Redis restart); `entity/` its tables, [`migration`] its schema.
//! * [`backend`] — the `QueueBackend` trait (entries, leases, change records,
//!   pop samples) and its two implementations: [`backend::sql`] (embedded
//!   default, the same database) and [`backend::redis`] (deployed default).
//!   `tests/conformance.rs` runs one suite unchanged against SQL on SQLite,
//!   SQL on PostgreSQL and Redis.
//!
//! Wake-ups: a pop that finds its queues empty waits on an in-process
//! `tokio::sync::Notify` per queue ([`service::WakeHub`]); every push of this
//! process (add, release, reaped lease, reconciliation) signals it at once.
//! With Redis, each replica runs one subscriber on its own channel that
//! signals its own hub, and every push script also `PUBLISH`es the queue id
//! to the channel of every other replica, so replicas wake each other (keys
//! and channels live under `queues.redis_prefix`). A waiter always retries
//! the pop after registering, so no push between its pop and its wait is
//! missed; there is no polling interval.
//!
//! Invariants:
//!
//! * A task is in at most one queue: the SQL backend keys entries by task id;
//!   the Redis backend keeps one hash per task and checks it in every script.
//! * Order: priority descending, then rank ascending (FIFO within a band).
//! * Delivery is at least once: a popped entry is leased; the reaper (started
//!   by [`mount`], every `queues.reaper_interval_secs`) returns every expired
//!   lease to the front of its band. On several replicas only the holder of
//!   the `queues-reaper` lease (a row of `tasklab_leases` in the service's
//!   database, [`tasklab_db::lease`]) reaps; should two overlap during a
//!   takeover, each expired lease is returned by one atomic backend call
//!   (a Lua script or a transaction that re-reads the lease), so the second
//!   finds nothing to do.
//! * An acknowledged enqueue is never lost: the gateway's reconciler calls
//!   `StartReconciliation` / `ReconcileEntries`; every mutation records the
//!   task's change sequence number, and each reconciliation step is applied
//!   only when the task did not change after the fence. A Redis restart
//!   without persistence loses the epoch key, so the next
//!   `StartReconciliation` reports a new epoch and the reconciler rebuilds
//!   every entry from the tasks service.
//! * Errors the shared `ErrorCode` set lacks travel with the closest code and
//!   the contract's name in the `reason` field of `ErrorDetail`.

pub mod backend;
pub mod migration;
pub mod service;
pub mod store;

mod entity;
mod errors;
mod grpc;

use std::sync::Arc;
use std::time::Duration;

use tasklab_config::QueueBackendKind;
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::queues::v1::queues_service_server::QueuesServiceServer;
use tasklab_proto::queues::v1::workers_service_server::WorkersServiceServer;

use crate::backend::QueueBackend;
use crate::service::{Clock, Limits, QueueService, SystemClock, WakeHub};

/// Limits from the settings.
pub fn limits(settings: &tasklab_config::Settings) -> Limits {
    let q = &settings.queues;
    Limits {
        default_lease: Duration::from_secs(q.lease_ttl_secs.clamp(5, 3600)),
        default_worker_timeout: Duration::from_secs(q.worker_timeout_secs.clamp(5, 24 * 3600)),
        ..Limits::default()
    }
}

/// Builds the domain core: connects and migrates the service's database,
/// opens the configured backend and, for Redis, starts its wake-up listener.
pub async fn build(
    settings: &tasklab_config::Settings,
    database_url: &str,
    clock: Arc<dyn Clock>,
) -> Result<QueueService, Error> {
    let db = tasklab_db::connect_and_migrate::<migration::Migrator>(database_url)
        .await
        .map_err(|err| Error::unavailable("queues database", err))?;
    let hub = Arc::new(WakeHub::default());
    let backend: Arc<dyn QueueBackend> = match settings.queues.backend {
        QueueBackendKind::Sql => Arc::new(backend::sql::SqlBackend::new(db.clone()).await?),
        QueueBackendKind::Redis => {
            let url = settings.redis_url.as_deref().ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    "the redis queue backend needs redis_url",
                )
            })?;
            let prefix = settings.queues.redis_prefix.as_str();
            if prefix.is_empty() {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    "queues.redis_prefix must not be empty",
                ));
            }
            let redis = backend::redis::RedisBackend::connect(url, prefix).await?;
            redis.spawn_wake_listener(hub.clone());
            Arc::new(redis)
        }
    };
    Ok(QueueService::new(
        store::Store::new(db),
        backend,
        hub,
        clock,
        limits(settings),
    ))
}

/// Runs `service.reap_once()` every `interval`, on ticks where `leader` holds
/// its lease, for as long as the runtime lives (abort the returned handle to
/// stop it earlier). Failures are logged and the next tick tries again.
pub fn spawn_reaper(
    service: QueueService,
    interval: Duration,
    leader: tasklab_db::lease::Leadership,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !leader.is_leader() {
                continue;
            }
            if let Err(err) = service.reap_once().await {
                err.log();
            }
        }
    })
}

/// Connects to the service's database at `database_url` (`sqlite://` or
/// `postgres://`), applies its migrations, opens the queue backend chosen by
/// `settings.queues.backend` (`redis` needs `settings.redis_url` and keeps
/// its keys under `settings.queues.redis_prefix`), starts the reaper, and
/// adds `QueuesService` and `WorkersService` to `server`.
///
/// Fails with `unavailable` when the database or Redis cannot be reached,
/// and with `invalid_argument` when Redis is chosen without a URL or with
/// an empty prefix.
pub async fn mount(
    server: tasklab_server::Server,
    settings: &tasklab_config::Settings,
    database_url: &str,
) -> Result<tasklab_server::Server, Error> {
    let service = build(settings, database_url, Arc::new(SystemClock)).await?;
    let interval = Duration::from_secs(settings.queues.reaper_interval_secs.max(1));
    let lease = tasklab_db::lease::SqlLease::new(
        tasklab_db::connect(database_url)
            .await
            .map_err(|e| Error::unavailable("queues database", e))?,
        "queues-reaper",
        &tasklab_db::lease::holder_id(),
        interval * 3,
    )
    .await
    .map_err(|e| Error::unavailable("queues database", e))?;
    let (leader, _keeper) = tasklab_db::lease::Leadership::spawn(Arc::new(lease));
    spawn_reaper(service.clone(), interval, leader);
    let grpc = grpc::QueuesGrpc::new(service);
    Ok(server
        .add_service(QueuesServiceServer::new(grpc.clone()))
        .add_service(WorkersServiceServer::new(grpc)))
}
