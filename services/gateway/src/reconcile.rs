//! The gateway's background reconciler, every `queues.reaper_interval_secs`:
//!
//! 1. **Queue entries vs queued tasks.** The tasks service is the source of
//!    truth for which task is queued where. The reconciler takes a fence
//!    (`QueuesService.StartReconciliation`) *before* it reads the queued
//!    tasks, then streams them to `ReconcileEntries`, which adds missing
//!    entries (an enqueue interrupted between its two steps, a Redis that
//!    restarted empty) and drops stale ones, without undoing what happened
//!    after the fence.
//! 2. **Lost workers.** For every expired worker that was running a task,
//!    unless the task shows recent activity, the task is failed (or stopped,
//!    per `queues.lost_worker_action`) with a clear reason, by a
//!    compare-and-set on its `in_progress` status; then the worker is
//!    unregistered (compare-and-delete on its `last_seen`).
//!
//! A pass that fails is logged and retried at the next tick; a service
//! that answers UNIMPLEMENTED is skipped quietly.
//!
//! With `redis_url` set (deployed, several replicas) a pass runs only on the
//! replica holding the Redis lease [`LEASE_KEY`] (ttl 3 × the interval,
//! renewed every interval by [`Leadership::spawn`], released on shutdown);
//! without it (embedded, one process) the loop runs unleased.

use std::sync::Arc;
use std::time::Duration;

use tasklab_config::LostWorkerAction;
use tasklab_db::lease::{Leadership, RedisLease, holder_id};
use tasklab_error::{ErrorCode, Result};
use tasklab_proto::common::v1::PageRequest;
use tasklab_proto::queues::v1 as qpb;
use tasklab_proto::tasks::v1 as tpb;
use tokio_util::sync::CancellationToken;

use crate::Inner;
use crate::http::convert::to_chrono;

/// The user id the reconciler acts as.
const SYSTEM_USER: &str = "tasklab-reconciler";

/// The Redis key of the background loop's lease.
pub(crate) const LEASE_KEY: &str = "tasklab:lease:gateway-reconciler";

pub(crate) async fn run(inner: Arc<Inner>, shutdown: CancellationToken) {
    let interval = Duration::from_secs(inner.config.queues.reaper_interval_secs.max(1));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut epoch = String::new();
    // `None` until the Redis lease is connected (retried every tick).
    let mut leader: Option<(Leadership, Option<tokio::task::JoinHandle<()>>)> =
        match &inner.config.redis_url {
            None => Some((Leadership::unleased(), None)),
            Some(_) => None,
        };
    let holder = holder_id();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if leader.is_none()
            && let Some(url) = &inner.config.redis_url
        {
            match RedisLease::connect(url, LEASE_KEY, &holder, interval * 3).await {
                Ok(lease) => {
                    let (l, keeper) = Leadership::spawn(Arc::new(lease));
                    // Give the keeper its first acquire before deciding.
                    l.renew().await;
                    leader = Some((l, Some(keeper)));
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot reach Redis for the reconciler lease; retrying next tick");
                }
            }
        }
        if !leader.as_ref().is_some_and(|(l, _)| l.is_leader()) {
            continue;
        }
        match reconcile_entries(&inner, &epoch).await {
            Ok(Some(e)) => epoch = e,
            Ok(None) => {}
            Err(e) => log_failure("queue reconciliation", &e),
        }
        if let Err(e) = reap_lost_workers(&inner).await {
            log_failure("lost-worker reaper", &e);
        }
    }
    if let Some((l, keeper)) = leader {
        if let Some(keeper) = keeper {
            keeper.abort();
        }
        l.release().await;
    }
}

fn log_failure(what: &str, e: &tasklab_error::Error) {
    if e.code() == ErrorCode::Unimplemented {
        tracing::trace!(what, "skipped: service not implemented");
    } else {
        tracing::warn!(what, code = %e.code(), error = %e.message(), "background pass failed; retrying next tick");
    }
}

/// One reconciliation pass; returns the store epoch it ran against.
async fn reconcile_entries(inner: &Inner, known_epoch: &str) -> Result<Option<String>> {
    let start = call!(
        inner.clients.queues,
        start_reconciliation,
        SYSTEM_USER,
        qpb::StartReconciliationRequest {
            known_epoch: known_epoch.to_owned(),
        }
    )?;
    if start.epoch_changed {
        tracing::warn!(epoch = %start.epoch, "queue store restarted empty; rebuilding every queue");
    }
    // Read the authoritative set after taking the fence.
    let mut expected = Vec::new();
    let mut token = String::new();
    loop {
        let reply = call!(
            inner.clients.tasks,
            list_tasks,
            SYSTEM_USER,
            tpb::ListTasksRequest {
                statuses: vec![tpb::TaskStatus::Queued as i32],
                include_archived: true,
                include_hidden: true,
                page: Some(PageRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                    include_total: false,
                }),
                read_mask: Some(prost_types::FieldMask {
                    paths: vec!["id".into(), "execution".into(), "status_changed".into()],
                }),
                ..Default::default()
            }
        )?;
        for task in reply.tasks {
            let queue_id = task.execution.map(|e| e.queue_id).unwrap_or_default();
            if queue_id.is_empty() {
                continue;
            }
            expected.push(qpb::ExpectedEntry {
                task_id: task.id,
                queue_id,
                priority: 0,
                enqueued: task.status_changed,
            });
        }
        match reply.page.map(|p| p.next_page_token) {
            Some(next) if !next.is_empty() => token = next,
            _ => break,
        }
    }
    let mut messages = vec![qpb::ReconcileEntriesRequest {
        part: Some(qpb::reconcile_entries_request::Part::Header(
            qpb::ReconcileHeader {
                fence: start.fence,
                queue_ids: vec![],
                add_only: false,
                dry_run: false,
            },
        )),
    }];
    for chunk in expected.chunks(10_000) {
        messages.push(qpb::ReconcileEntriesRequest {
            part: Some(qpb::reconcile_entries_request::Part::Batch(
                qpb::ReconcileBatch {
                    entries: chunk.to_vec(),
                },
            )),
        });
    }
    let result = call!(
        inner.clients.queues,
        reconcile_entries,
        SYSTEM_USER,
        tokio_stream::iter(messages)
    )?;
    if result.added + result.moved + result.removed + result.leases_cancelled > 0 {
        tracing::info!(
            added = result.added,
            moved = result.moved,
            removed = result.removed,
            leases_cancelled = result.leases_cancelled,
            "queues reconciled with the queued tasks"
        );
    }
    Ok(Some(start.epoch))
}

/// Fails (or stops) the tasks of expired workers, then unregisters them.
async fn reap_lost_workers(inner: &Inner) -> Result<()> {
    let reply = call!(
        inner.clients.workers,
        list_expired_workers,
        SYSTEM_USER,
        qpb::ListExpiredWorkersRequest {
            with_task_only: false,
            page: Some(PageRequest {
                page_size: 100,
                page_token: String::new(),
                include_total: false,
            }),
        }
    )?;
    let now = chrono::Utc::now();
    for worker in reply.workers {
        if !worker.current_task_id.is_empty() {
            let timeout = worker
                .timeout
                .as_ref()
                .map_or(inner.config.queues.worker_timeout_secs as i64, |d| {
                    d.seconds
                });
            lose_task(inner, &worker, timeout, now).await?;
        }
        let unregister = call!(
            inner.clients.workers,
            unregister_worker,
            SYSTEM_USER,
            qpb::UnregisterWorkerRequest {
                worker_id: worker.id.clone(),
                if_last_seen: worker.last_seen,
                reason: "expired".into(),
            }
        );
        match unregister {
            Ok(_) => tracing::info!(worker = %worker.id, "expired worker unregistered"),
            Err(e) => {
                tracing::debug!(worker = %worker.id, error = %e.message(), "expired worker not unregistered")
            }
        }
    }
    Ok(())
}

async fn lose_task(
    inner: &Inner,
    worker: &qpb::Worker,
    timeout_secs: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    let task_id = &worker.current_task_id;
    let task = match call!(
        inner.clients.tasks,
        get_task,
        SYSTEM_USER,
        tpb::GetTaskRequest {
            id: task_id.clone(),
            read_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "id".into(),
                    "status".into(),
                    "last_update".into(),
                    "last_worker".into()
                ],
            }),
        }
    ) {
        Ok(reply) => reply.task.unwrap_or_default(),
        Err(e) if e.code() == ErrorCode::TaskNotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if task.status != tpb::TaskStatus::InProgress as i32 {
        return Ok(());
    }
    if !task.last_worker.is_empty() && task.last_worker != worker.id {
        return Ok(());
    }
    let recent = task
        .last_update
        .as_ref()
        .and_then(to_chrono)
        .is_some_and(|t| (now - t).num_seconds() < timeout_secs);
    if recent {
        return Ok(());
    }
    let reason = format!("worker {} stopped reporting", worker.id);
    let options = Some(tpb::StatusChangeOptions {
        force: true,
        status_reason: "worker lost".into(),
        status_message: reason.clone(),
        expected_status: tpb::TaskStatus::InProgress as i32,
    });
    let result = match inner.config.queues.lost_worker_action {
        LostWorkerAction::Fail => inner
            .fail(
                SYSTEM_USER,
                tpb::FailTaskRequest {
                    id: task_id.clone(),
                    options,
                    read_mask: Some(crate::compose::id_mask()),
                },
            )
            .await
            .map(|_| ()),
        LostWorkerAction::Stop => inner
            .stop(
                SYSTEM_USER,
                tpb::StopTaskRequest {
                    id: task_id.clone(),
                    options,
                    read_mask: Some(crate::compose::id_mask()),
                },
            )
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => {
            tracing::warn!(task_id = %task_id, worker = %worker.id, "task of a lost worker ended");
            Ok(())
        }
        Err(e) if e.code() == ErrorCode::TaskStatusChanged => Ok(()),
        Err(e) => Err(e),
    }
}
