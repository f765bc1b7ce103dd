//! Flows that cross services. The domain services stay independent leaves;
//! the gateway composes them here, for the ClearML REST API and the public
//! gRPC API alike.
//!
//! * Enqueue: the task side first (`TasksService.EnqueueTask`, durable), then
//!   the queue entry (`QueuesService.AddEntry`). A failed push reverts the
//!   status; a crash between the two is repaired by the reconciler, which
//!   re-adds the entry of every queued task, so an acknowledged enqueue is
//!   never lost.
//! * Status changes report the queue a task left (`left_queue_id`); its entry
//!   is removed (or its lease acknowledged) here. Failures there are logged,
//!   not returned: the status change already happened and the reconciler
//!   drops stale entries.
//! * Reset and delete act on the `TaskCleanup` report: events, artifacts,
//!   output models and stored files.
//! * Reads join `last_metrics`/`last_iteration` (metrics service) and
//!   `artifacts` (artifacts service).
//!
//! Enqueue and dequeue each carry a fault-injection point between their two
//! steps ([`crate::failpoints`], a testing hook armed only by the
//! `failpoints` setting).
//!
//! While a domain service answers `UNIMPLEMENTED` (it is still being built),
//! joins and clean-ups that depend on it are skipped with a debug log rather
//! than failing the call; every other error is returned.

use std::collections::HashMap;

use tasklab_error::{Error, ErrorCode, Result};
use tasklab_proto::artifacts::v1 as apb;
use tasklab_proto::common::v1::PageRequest;
use tasklab_proto::metrics::v1 as mpb;
use tasklab_proto::projects::v1 as ppb;
use tasklab_proto::queues::v1 as qpb;
use tasklab_proto::tasks::v1 as tpb;

use crate::Inner;
use crate::failpoints::FailPoint;

/// `Ok(None)` for a service that answers UNIMPLEMENTED.
pub(crate) fn tolerate<T>(result: Result<T>, what: &str) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == ErrorCode::Unimplemented => {
            tracing::debug!(what, error = %e.message(), "skipped: service not implemented");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Logs a failed best-effort step.
fn warn_on<T>(result: Result<T>, what: &str, task: &str) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if e.code() == ErrorCode::Unimplemented => {
            tracing::debug!(what, task_id = %task, "skipped: service not implemented");
            None
        }
        Err(e) => {
            tracing::warn!(what, task_id = %task, code = %e.code(), error = %e.message(), "best-effort step failed; the reconciler repairs it");
            None
        }
    }
}

/// What a reset or delete cleaned in other services.
#[derive(Debug, Default, Clone)]
pub(crate) struct CleanupReport {
    /// Models deleted.
    pub(crate) deleted_models: u32,
    /// URIs of the deleted models.
    pub(crate) model_urls: Vec<String>,
    /// URIs of the deleted artifacts.
    pub(crate) artifact_urls: Vec<String>,
    /// URLs of the deleted debug samples.
    pub(crate) event_urls: Vec<String>,
    /// Number of events deleted.
    pub(crate) events_deleted: u64,
    /// Whether a queue entry was removed.
    pub(crate) dequeued: bool,
}

fn page(size: u32, token: String) -> Option<PageRequest> {
    Some(PageRequest {
        page_size: size,
        page_token: token,
        include_total: false,
    })
}

fn wants(mask: Option<&prost_types::FieldMask>, field: &str) -> bool {
    mask.is_none_or(|m| m.paths.is_empty() || m.paths.iter().any(|p| p == field))
}

/// The mask sent to the tasks service: joined fields removed (it always
/// returns them empty), `None` when every field is wanted.
fn service_mask(mask: Option<&prost_types::FieldMask>) -> Option<prost_types::FieldMask> {
    let mask = mask.filter(|m| !m.paths.is_empty())?;
    let paths: Vec<String> = mask
        .paths
        .iter()
        .filter(|p| !matches!(p.as_str(), "artifacts" | "last_iteration" | "last_metrics"))
        .cloned()
        .collect();
    Some(prost_types::FieldMask {
        paths: if paths.is_empty() {
            vec!["id".to_owned()]
        } else {
            paths
        },
    })
}

impl Inner {
    // ---- reads ----------------------------------------------------------------------

    /// Fills the joined fields the mask asks for.
    pub(crate) async fn join(
        &self,
        user: &str,
        tasks: &mut [tpb::Task],
        mask: Option<&prost_types::FieldMask>,
    ) -> Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        if wants(mask, "last_metrics") || wants(mask, "last_iteration") {
            let mut summaries = HashMap::new();
            for chunk in ids.chunks(1000) {
                let reply = tolerate(
                    call!(
                        self.clients.metrics,
                        get_task_metrics_summary,
                        user,
                        mpb::GetTaskMetricsSummaryRequest {
                            task_ids: chunk.to_vec(),
                            model_events: false,
                            metrics: vec![],
                        }
                    ),
                    "metrics summary",
                )?;
                let Some(reply) = reply else { break };
                for s in reply.tasks {
                    summaries.insert(s.task_id.clone(), s);
                }
            }
            for task in tasks.iter_mut() {
                if let Some(s) = summaries.remove(&task.id) {
                    task.last_iteration = s.last_iteration.unwrap_or(0);
                    task.last_metrics = s
                        .metrics
                        .into_iter()
                        .map(|m| tpb::LastMetric {
                            metric: m.metric,
                            variant: m.variant,
                            value: m.last_value,
                            min_value: m.min_value,
                            min_value_iteration: m.min_iteration,
                            max_value: m.max_value,
                            max_value_iteration: m.max_iteration,
                            first_value: m.first_value,
                            first_value_iteration: m.first_iteration,
                            count: m.count,
                            mean_value: m.mean_value,
                            iteration: m.last_iteration,
                            timestamp: m.last_timestamp,
                        })
                        .collect();
                }
            }
        }
        if wants(mask, "artifacts") {
            let mut by_task: HashMap<String, Vec<tpb::TaskArtifact>> = HashMap::new();
            'chunks: for chunk in ids.chunks(1000) {
                let mut token = String::new();
                loop {
                    let reply = tolerate(
                        call!(
                            self.clients.artifacts,
                            list_artifacts,
                            user,
                            apb::ListArtifactsRequest {
                                task_ids: chunk.to_vec(),
                                page: page(1000, token.clone()),
                                ..Default::default()
                            }
                        ),
                        "artifacts",
                    )?;
                    let Some(reply) = reply else { break 'chunks };
                    for a in reply.artifacts {
                        by_task
                            .entry(a.task_id.clone())
                            .or_default()
                            .push(task_artifact(a));
                    }
                    match reply.page.map(|p| p.next_page_token) {
                        Some(next) if !next.is_empty() => token = next,
                        _ => break,
                    }
                }
            }
            for task in tasks.iter_mut() {
                if let Some(list) = by_task.remove(&task.id) {
                    task.artifacts = list;
                }
            }
        }
        Ok(())
    }

    /// GetTask with joins.
    pub(crate) async fn get_task(
        &self,
        user: &str,
        id: &str,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<tpb::Task> {
        let reply = call!(
            self.clients.tasks,
            get_task,
            user,
            tpb::GetTaskRequest {
                id: id.to_owned(),
                read_mask: service_mask(mask.as_ref()),
            }
        )?;
        let mut task = reply
            .task
            .ok_or_else(|| Error::not_found(ErrorCode::TaskNotFound, "task", id))?;
        self.join(user, std::slice::from_mut(&mut task), mask.as_ref())
            .await?;
        Ok(task)
    }

    /// GetTaskByName with joins.
    pub(crate) async fn get_task_by_name(
        &self,
        user: &str,
        mut req: tpb::GetTaskByNameRequest,
    ) -> Result<tpb::GetTaskByNameResponse> {
        let mask = req.read_mask.take();
        req.read_mask = service_mask(mask.as_ref());
        let mut reply = call!(self.clients.tasks, get_task_by_name, user, req)?;
        if let Some(task) = reply.task.as_mut() {
            self.join(user, std::slice::from_mut(task), mask.as_ref())
                .await?;
        }
        Ok(reply)
    }

    /// Expands project ids with every sub-project.
    pub(crate) async fn expand_projects(&self, user: &str, ids: &[String]) -> Result<Vec<String>> {
        let mut out: Vec<String> = ids.to_vec();
        for id in ids.iter().filter(|id| !id.is_empty()) {
            let mut token = String::new();
            loop {
                let reply = call!(
                    self.clients.projects,
                    list_projects,
                    user,
                    ppb::ListProjectsRequest {
                        parent_id: id.clone(),
                        shallow: false,
                        include_hidden: true,
                        include_archived: true,
                        page: page(1000, token.clone()),
                        read_mask: Some(prost_types::FieldMask {
                            paths: vec!["id".into()],
                        }),
                        ..Default::default()
                    }
                )?;
                out.extend(reply.projects.into_iter().map(|p| p.id));
                match reply.page.map(|p| p.next_page_token) {
                    Some(next) if !next.is_empty() => token = next,
                    _ => break,
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// ListTasks with sub-project expansion and joins.
    pub(crate) async fn list_tasks(
        &self,
        user: &str,
        mut req: tpb::ListTasksRequest,
    ) -> Result<tpb::ListTasksResponse> {
        if req.include_subprojects {
            req.project_ids = self.expand_projects(user, &req.project_ids).await?;
            req.include_subprojects = false;
        }
        let mask = req.read_mask.take();
        req.read_mask = service_mask(mask.as_ref());
        let mut reply = call!(self.clients.tasks, list_tasks, user, req)?;
        self.join(user, &mut reply.tasks, mask.as_ref()).await?;
        Ok(reply)
    }

    // ---- queues -------------------------------------------------------------------------

    /// Resolves the queue of an enqueue: an id (which must exist), else a
    /// name (created when missing), else the default queue.
    pub(crate) async fn resolve_queue(
        &self,
        user: &str,
        queue_id: &str,
        queue_name: Option<&str>,
    ) -> Result<String> {
        if !queue_id.is_empty() {
            let reply = call!(
                self.clients.queues,
                get_queue,
                user,
                qpb::GetQueueRequest {
                    queue_id: queue_id.to_owned(),
                    read_mask: Some(prost_types::FieldMask {
                        paths: vec!["id".into()],
                    }),
                }
            )?;
            return Ok(reply.queue.map(|q| q.id).unwrap_or_else(|| queue_id.into()));
        }
        if let Some(name) = queue_name.filter(|n| !n.is_empty()) {
            let reply = call!(
                self.clients.queues,
                create_queue,
                user,
                qpb::CreateQueueRequest {
                    name: name.to_owned(),
                    if_not_exists: true,
                    ..Default::default()
                }
            )?;
            if reply.created {
                tracing::info!(queue = %name, "queue created by enqueue");
            }
            return reply
                .queue
                .map(|q| q.id)
                .ok_or_else(|| Error::not_found(ErrorCode::QueueNotFound, "queue", name));
        }
        let reply = call!(
            self.clients.queues,
            get_default_queue,
            user,
            qpb::GetDefaultQueueRequest {
                read_mask: Some(prost_types::FieldMask {
                    paths: vec!["id".into()],
                }),
            }
        )?;
        reply
            .queue
            .map(|q| q.id)
            .ok_or_else(|| Error::new(ErrorCode::NoDefaultQueue, "no default queue"))
    }

    /// Enqueue: the task side, then the queue entry; reverted when the push
    /// fails.
    pub(crate) async fn enqueue(
        &self,
        user: &str,
        mut req: tpb::EnqueueTaskRequest,
        queue_name: Option<&str>,
    ) -> Result<tpb::EnqueueTaskResponse> {
        let queue_id = self.resolve_queue(user, &req.queue_id, queue_name).await?;
        req.queue_id = queue_id.clone();
        let task_id = req.id.clone();
        let reply = call!(self.clients.tasks, enqueue_task, user, req)?;
        self.failpoints
            .hit(FailPoint::EnqueueBetweenSteps, &task_id);
        let pushed = call!(
            self.clients.queues,
            add_entry,
            user,
            qpb::AddEntryRequest {
                queue_id: queue_id.clone(),
                task_id: task_id.clone(),
                priority: 0,
                replace_existing: true,
            }
        );
        if let Err(err) = pushed {
            if reply.updated > 0 {
                // Undo the status change; if this fails too, the reconciler
                // re-adds the entry of the (still queued) task.
                let undo = call!(
                    self.clients.tasks,
                    dequeue_task,
                    user,
                    tpb::DequeueTaskRequest {
                        id: task_id.clone(),
                        options: Some(tpb::StatusChangeOptions {
                            status_reason: "enqueue failed".into(),
                            expected_status: tpb::TaskStatus::Queued as i32,
                            ..Default::default()
                        }),
                        new_status: reply.previous_status,
                        read_mask: Some(id_mask()),
                    }
                );
                warn_on(undo, "revert enqueue", &task_id);
            }
            return Err(err);
        }
        tracing::info!(task_id = %task_id, queue_id = %queue_id, "task enqueued");
        Ok(reply)
    }

    /// Dequeue: the task side, then the queue entry.
    pub(crate) async fn dequeue(
        &self,
        user: &str,
        req: tpb::DequeueTaskRequest,
    ) -> Result<(tpb::DequeueTaskResponse, bool)> {
        let task_id = req.id.clone();
        let reply = call!(self.clients.tasks, dequeue_task, user, req)?;
        self.failpoints
            .hit(FailPoint::DequeueBetweenSteps, &task_id);
        let mut removed = false;
        if !reply.left_queue_id.is_empty() {
            removed = self
                .remove_entry(user, &task_id, &reply.left_queue_id)
                .await;
        }
        Ok((reply, removed))
    }

    /// Removes a task's entry from a queue (best effort).
    pub(crate) async fn remove_entry(&self, user: &str, task_id: &str, queue_id: &str) -> bool {
        let result = call!(
            self.clients.queues,
            remove_entry,
            user,
            qpb::RemoveEntryRequest {
                task_id: task_id.to_owned(),
                queue_id: queue_id.to_owned(),
            }
        );
        warn_on(result, "remove queue entry", task_id).is_some_and(|r| r.removed)
    }

    /// After a status change: the queue entry of a task that left a queue.
    async fn left_queue(&self, user: &str, task_id: &str, left_queue_id: &str) {
        if !left_queue_id.is_empty() {
            self.remove_entry(user, task_id, left_queue_id).await;
        }
    }

    // ---- status changes -----------------------------------------------------------------

    /// StartTask; a task that left a queue has its lease acknowledged.
    pub(crate) async fn start(
        &self,
        user: &str,
        req: tpb::StartTaskRequest,
    ) -> Result<tpb::StartTaskResponse> {
        let task_id = req.id.clone();
        let reply = call!(self.clients.tasks, start_task, user, req)?;
        if !reply.left_queue_id.is_empty() {
            let ack = call!(
                self.clients.queues,
                ack_lease,
                user,
                qpb::AckLeaseRequest {
                    target: Some(qpb::ack_lease_request::Target::TaskId(task_id.clone())),
                    worker_id: String::new(),
                }
            );
            warn_on(ack, "acknowledge lease", &task_id);
        }
        Ok(reply)
    }

    /// StopTask (`tasks.stopped`).
    pub(crate) async fn stop(
        &self,
        user: &str,
        req: tpb::StopTaskRequest,
    ) -> Result<tpb::StopTaskResponse> {
        let id = req.id.clone();
        let reply = call!(self.clients.tasks, stop_task, user, req)?;
        self.left_queue(user, &id, &reply.left_queue_id).await;
        Ok(reply)
    }

    /// FailTask.
    pub(crate) async fn fail(
        &self,
        user: &str,
        req: tpb::FailTaskRequest,
    ) -> Result<tpb::FailTaskResponse> {
        let id = req.id.clone();
        let reply = call!(self.clients.tasks, fail_task, user, req)?;
        self.left_queue(user, &id, &reply.left_queue_id).await;
        Ok(reply)
    }

    /// CloseTask.
    pub(crate) async fn close(
        &self,
        user: &str,
        req: tpb::CloseTaskRequest,
    ) -> Result<tpb::CloseTaskResponse> {
        let id = req.id.clone();
        let reply = call!(self.clients.tasks, close_task, user, req)?;
        self.left_queue(user, &id, &reply.left_queue_id).await;
        Ok(reply)
    }

    /// RequestStop (`tasks.stop`).
    pub(crate) async fn request_stop(
        &self,
        user: &str,
        req: tpb::RequestStopRequest,
    ) -> Result<tpb::RequestStopResponse> {
        let id = req.id.clone();
        let reply = call!(self.clients.tasks, request_stop, user, req)?;
        self.left_queue(user, &id, &reply.left_queue_id).await;
        Ok(reply)
    }

    async fn set_lock(&self, user: &str, task_id: &str, locked: bool) -> Result<()> {
        let result = call!(
            self.clients.metrics,
            set_task_locks,
            user,
            mpb::SetTaskLocksRequest {
                locks: vec![mpb::TaskLock {
                    task_id: task_id.to_owned(),
                    model: false,
                    locked,
                    since: None,
                }],
            }
        );
        tolerate(result, "task lock").map(|_| ())
    }

    async fn publish_models(&self, user: &str, ids: &[String]) -> Result<()> {
        for id in ids {
            let result = call!(
                self.clients.models,
                publish_model,
                user,
                apb::PublishModelRequest {
                    model_id: id.clone(),
                }
            );
            tolerate(result, "publish model")?;
        }
        Ok(())
    }

    /// CompleteTask; with `publish`, the task is locked against new events
    /// first and its output models are published.
    pub(crate) async fn complete(
        &self,
        user: &str,
        req: tpb::CompleteTaskRequest,
    ) -> Result<tpb::CompleteTaskResponse> {
        let id = req.id.clone();
        let publish = req.publish;
        let publish_models = req.publish_output_models;
        if publish {
            self.set_lock(user, &id, true).await?;
        }
        let reply = match call!(self.clients.tasks, complete_task, user, req) {
            Ok(reply) => reply,
            Err(e) => {
                if publish {
                    warn_on(self.set_lock(user, &id, false).await, "unlock", &id);
                }
                return Err(e);
            }
        };
        if publish && !reply.published {
            warn_on(self.set_lock(user, &id, false).await, "unlock", &id);
        }
        self.left_queue(user, &id, &reply.left_queue_id).await;
        if reply.published && publish_models {
            self.publish_models(user, &reply.output_model_ids).await?;
        }
        Ok(reply)
    }

    /// PublishTask, locked against new events first.
    pub(crate) async fn publish(
        &self,
        user: &str,
        req: tpb::PublishTaskRequest,
    ) -> Result<tpb::PublishTaskResponse> {
        let id = req.id.clone();
        let publish_models = req.publish_output_models;
        self.set_lock(user, &id, true).await?;
        let reply = match call!(self.clients.tasks, publish_task, user, req) {
            Ok(reply) => reply,
            Err(e) => {
                warn_on(self.set_lock(user, &id, false).await, "unlock", &id);
                return Err(e);
            }
        };
        self.left_queue(user, &id, &reply.left_queue_id).await;
        if publish_models {
            self.publish_models(user, &reply.output_model_ids).await?;
        }
        Ok(reply)
    }

    /// ArchiveTasks; archived queued tasks leave their queues.
    pub(crate) async fn archive(
        &self,
        user: &str,
        req: tpb::ArchiveTasksRequest,
    ) -> Result<tpb::ArchiveTasksResponse> {
        let reply = call!(self.clients.tasks, archive_tasks, user, req)?;
        for d in &reply.dequeued {
            self.remove_entry(user, &d.task_id, &d.queue_id).await;
        }
        Ok(reply)
    }

    // ---- reset, delete, clone ---------------------------------------------------------------

    async fn cleanup(
        &self,
        user: &str,
        task_id: &str,
        cleanup: &tpb::TaskCleanup,
        previous: i32,
        keep_files: bool,
        keep_output_models: bool,
    ) -> Result<CleanupReport> {
        let mut report = CleanupReport::default();
        if !cleanup.left_queue_id.is_empty() {
            report.dequeued = self
                .remove_entry(user, task_id, &cleanup.left_queue_id)
                .await;
        }
        let locked = previous == tpb::TaskStatus::Published as i32
            || previous == tpb::TaskStatus::Publishing as i32;
        if cleanup.delete_events {
            let deleted = tolerate(
                call!(
                    self.clients.metrics,
                    delete_task_events,
                    user,
                    mpb::DeleteTaskEventsRequest {
                        task_ids: vec![task_id.to_owned()],
                        force: locked,
                        return_urls: true,
                        ..Default::default()
                    }
                ),
                "delete events",
            )?;
            if let Some(d) = deleted {
                report.events_deleted = d.total_deleted;
                report.event_urls = d.debug_sample_urls;
            }
            if locked {
                self.set_lock(user, task_id, false).await?;
            }
        }
        if cleanup.delete_output_artifacts || cleanup.delete_input_artifacts {
            let mode = if cleanup.delete_input_artifacts {
                apb::ArtifactMode::Unspecified
            } else {
                apb::ArtifactMode::Output
            };
            let deleted = tolerate(
                call!(
                    self.clients.artifacts,
                    delete_artifacts,
                    user,
                    apb::DeleteArtifactsRequest {
                        task_id: task_id.to_owned(),
                        artifacts: vec![],
                        all: true,
                        mode: mode as i32,
                        delete_blobs: !keep_files,
                    }
                ),
                "delete artifacts",
            )?;
            if let Some(d) = deleted {
                report.artifact_urls = d
                    .removed
                    .into_iter()
                    .map(|a| a.uri)
                    .filter(|u| !u.is_empty())
                    .collect();
            }
        }
        if !keep_output_models {
            let deleted = tolerate(
                call!(
                    self.clients.models,
                    delete_models_of_task,
                    user,
                    apb::DeleteModelsOfTaskRequest {
                        task_id: task_id.to_owned(),
                        output_model_ids: cleanup.output_model_ids.clone(),
                        in_use_model_ids: vec![],
                        delete_published: false,
                        delete_in_use: false,
                        delete_blobs: !keep_files,
                    }
                ),
                "delete output models",
            )?;
            if let Some(d) = deleted {
                report.deleted_models = u32::try_from(d.deleted.len()).unwrap_or(u32::MAX);
                report.model_urls = d.model_uris;
            }
        }
        if !keep_files && !report.event_urls.is_empty() {
            for chunk in report.event_urls.chunks(1000) {
                let result = call!(
                    self.clients.blobs,
                    delete_blobs,
                    user,
                    apb::DeleteBlobsRequest {
                        uris: chunk.to_vec(),
                        ..Default::default()
                    }
                );
                warn_on(result, "delete debug sample files", task_id);
            }
        }
        Ok(report)
    }

    /// ResetTask, then its clean-up in the other services.
    pub(crate) async fn reset(
        &self,
        user: &str,
        req: tpb::ResetTaskRequest,
    ) -> Result<(tpb::ResetTaskResponse, CleanupReport)> {
        let id = req.id.clone();
        let keep_files = req.keep_external_files;
        let reply = call!(self.clients.tasks, reset_task, user, req)?;
        let cleanup = reply.cleanup.clone().unwrap_or_default();
        let report = self
            .cleanup(
                user,
                &id,
                &cleanup,
                reply.previous_status,
                keep_files,
                false,
            )
            .await?;
        tracing::info!(task_id = %id, events = report.events_deleted, models = report.deleted_models, "task reset");
        Ok((reply, report))
    }

    /// DeleteTask, then its clean-up in the other services.
    pub(crate) async fn delete(
        &self,
        user: &str,
        req: tpb::DeleteTaskRequest,
    ) -> Result<(tpb::DeleteTaskResponse, CleanupReport)> {
        let id = req.id.clone();
        let keep_files = req.keep_external_files;
        let keep_models = req.keep_output_models;
        let reply = call!(self.clients.tasks, delete_task, user, req)?;
        let mut cleanup = reply.cleanup.clone().unwrap_or_default();
        cleanup.delete_events = true;
        cleanup.delete_output_artifacts = true;
        cleanup.delete_input_artifacts = true;
        let report = self
            .cleanup(
                user,
                &id,
                &cleanup,
                reply.previous_status,
                keep_files,
                keep_models,
            )
            .await?;
        tracing::info!(task_id = %id, "task deleted");
        Ok((reply, report))
    }

    /// CloneTask, then the source's input artifacts onto the copy.
    pub(crate) async fn clone_task(
        &self,
        user: &str,
        req: tpb::CloneTaskRequest,
    ) -> Result<tpb::CloneTaskResponse> {
        if let Some(project) = req.project_id.as_deref().filter(|p| !p.is_empty()) {
            self.check_project(user, project).await?;
        }
        let source = req.source_id.clone();
        let reply = call!(self.clients.tasks, clone_task, user, req)?;
        if let Some(task) = &reply.task {
            let copied = call!(
                self.clients.artifacts,
                copy_input_artifacts,
                user,
                apb::CopyInputArtifactsRequest {
                    source_task_id: source.clone(),
                    target_task_id: task.id.clone(),
                    replace: true,
                }
            );
            tolerate(copied, "copy input artifacts")?;
            tracing::info!(source_id = %source, task_id = %task.id, "task cloned");
        }
        Ok(reply)
    }

    /// The project, which must exist.
    pub(crate) async fn check_project(&self, user: &str, id: &str) -> Result<ppb::Project> {
        let reply = call!(
            self.clients.projects,
            get_project,
            user,
            ppb::GetProjectRequest {
                id: id.to_owned(),
                read_mask: None,
            }
        )?;
        reply
            .project
            .ok_or_else(|| Error::not_found(ErrorCode::ProjectNotFound, "project", id))
    }

    /// CreateTask after checking the project (whose default output
    /// destination fills an empty one) and the parent.
    pub(crate) async fn create_task(
        &self,
        user: &str,
        mut req: tpb::CreateTaskRequest,
    ) -> Result<tpb::CreateTaskResponse> {
        if !req.project_id.is_empty() {
            let project = self.check_project(user, &req.project_id).await?;
            if req.output_destination.is_empty() {
                req.output_destination = project.default_output_destination;
            }
        }
        if !req.parent_id.is_empty() {
            call!(
                self.clients.tasks,
                get_task,
                user,
                tpb::GetTaskRequest {
                    id: req.parent_id.clone(),
                    read_mask: Some(id_mask()),
                }
            )?;
        }
        call!(self.clients.tasks, create_task, user, req)
    }
}

/// A read mask with only the id.
pub(crate) fn id_mask() -> prost_types::FieldMask {
    prost_types::FieldMask {
        paths: vec!["id".into()],
    }
}

fn task_artifact(a: apb::Artifact) -> tpb::TaskArtifact {
    tpb::TaskArtifact {
        key: a.key,
        mode: match apb::ArtifactMode::try_from(a.mode) {
            Ok(apb::ArtifactMode::Input) => tpb::ArtifactMode::Input as i32,
            _ => tpb::ArtifactMode::Output as i32,
        },
        r#type: a.r#type,
        uri: a.uri,
        hash: a.hash,
        content_size: a.content_size,
        timestamp: a.timestamp,
        preview: a.preview,
        content_type: a.content_type,
        data_hash: a.data_hash,
        display_data: a
            .display_data
            .into_iter()
            .map(|d| tpb::DisplayItem {
                key: d.key,
                value: d.value,
            })
            .collect(),
    }
}
