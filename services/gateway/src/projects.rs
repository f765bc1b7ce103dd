//! Project operations that concern tasks and models, composed by the
//! gateway (the projects service cannot see either):
//!
//! * delete: the gateway counts the subtree's tasks (`GetTaskStats`, archived
//!   and hidden included) and models itself, whatever count a client sent;
//!   without `force` a non-empty subtree is `project_not_empty` and nothing
//!   changes; with `force` the contents are deleted (`delete_contents`, with
//!   the task delete composition that also cleans events, artifacts and
//!   models) or moved outside any project, then the projects are deleted;
//! * merge: `MergeProject` with `validate_only`, `MoveTasks` (and the
//!   source's models), then `MergeProject` — each step idempotent, so a
//!   retry completes an interrupted merge;
//! * statistics: task counts per status and type of each project and its
//!   sub-projects, one `GetTaskStats` group per project.
//!
//! [`GatewayProjects`] serves `tasklab.projects.v1.ProjectsService` on the
//! public gRPC API: merge and delete composed here, every other RPC
//! forwarded.

use std::collections::HashMap;
use std::sync::Arc;

use tasklab_error::{Error, ErrorCode, Result};
use tasklab_proto::artifacts::v1 as apb;
use tasklab_proto::common::v1::PageRequest;
use tasklab_proto::projects::v1 as ppb;
use tasklab_proto::projects::v1::projects_service_server::ProjectsService;
use tasklab_proto::tasks::v1 as tpb;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::Inner;
use crate::clients::USER_METADATA_KEY;
use crate::compose::tolerate;

/// Largest id list or group list sent in one call.
const CHUNK: usize = 1000;

fn page(token: &str) -> Option<PageRequest> {
    Some(PageRequest {
        page_size: CHUNK as u32,
        page_token: token.to_owned(),
        include_total: false,
    })
}

fn next(page: Option<tasklab_proto::common::v1::PageResponse>) -> Option<String> {
    page.map(|p| p.next_page_token).filter(|t| !t.is_empty())
}

/// What a project delete did, in ClearML's terms.
#[derive(Debug, Default, Clone)]
pub(crate) struct ProjectDeleteReport {
    /// The projects service's reply.
    pub(crate) reply: ppb::DeleteProjectResponse,
    /// Tasks moved outside any project (force without `delete_contents`).
    pub(crate) disassociated_tasks: u64,
    /// Models moved outside any project.
    pub(crate) disassociated_models: u64,
    /// Tasks deleted (`delete_contents`).
    pub(crate) deleted_tasks: u64,
    /// Models deleted (with their tasks or on their own).
    pub(crate) deleted_models: u64,
    /// URIs of deleted models.
    pub(crate) model_urls: Vec<String>,
    /// URLs of deleted debug samples.
    pub(crate) event_urls: Vec<String>,
    /// URIs of deleted artifacts.
    pub(crate) artifact_urls: Vec<String>,
}

/// What a merge did.
#[derive(Debug, Default, Clone)]
pub(crate) struct ProjectMergeReport {
    /// The projects service's reply (of the validation for `validate_only`).
    pub(crate) reply: ppb::MergeProjectResponse,
    /// Tasks moved from the source to the destination.
    pub(crate) moved_tasks: u64,
    /// Models moved from the source to the destination.
    pub(crate) moved_models: u64,
}

/// Task counts of one project and its sub-projects.
#[derive(Debug, Default, Clone)]
pub(crate) struct SubtreeStats {
    /// Counts of tasks without the `archived` system tag.
    pub(crate) active: tpb::TaskStats,
    /// Counts of archived tasks only.
    pub(crate) archived: tpb::TaskStats,
}

impl Inner {
    /// The project (which must exist) followed by all its sub-projects.
    pub(crate) async fn project_subtree(&self, user: &str, id: &str) -> Result<Vec<String>> {
        if id.is_empty() {
            return Err(
                Error::new(ErrorCode::MissingField, "missing required field: id")
                    .with_field("field", "id"),
            );
        }
        self.check_project(user, id).await?;
        let mut ids = vec![id.to_owned()];
        ids.extend(
            self.expand_projects(user, &[id.to_owned()])
                .await?
                .into_iter()
                .filter(|p| p != id),
        );
        Ok(ids)
    }

    /// Number of tasks (archived and hidden included) in these projects.
    async fn count_tasks(&self, user: &str, project_ids: &[String]) -> Result<u64> {
        let mut total = 0;
        for chunk in project_ids.chunks(CHUNK) {
            let reply = call!(
                self.clients.tasks,
                get_task_stats,
                user,
                tpb::GetTaskStatsRequest {
                    groups: vec![tpb::TaskStatsGroup {
                        key: "subtree".into(),
                        project_ids: chunk.to_vec(),
                        include_subprojects: false,
                    }],
                    include_archived: true,
                    include_hidden: true,
                }
            )?;
            total += reply.groups.iter().map(|g| g.total).sum::<u64>();
        }
        Ok(total)
    }

    /// Ids of every task (archived and hidden included) in these projects.
    async fn task_ids_in(&self, user: &str, project_ids: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in project_ids.chunks(CHUNK) {
            let mut token = String::new();
            loop {
                let reply = call!(
                    self.clients.tasks,
                    list_tasks,
                    user,
                    tpb::ListTasksRequest {
                        project_ids: chunk.to_vec(),
                        include_archived: true,
                        include_hidden: true,
                        page: page(&token),
                        read_mask: Some(crate::compose::id_mask()),
                        ..Default::default()
                    }
                )?;
                out.extend(reply.tasks.into_iter().map(|t| t.id));
                match next(reply.page) {
                    Some(t) => token = t,
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// Every model (archived included) of these projects; empty while the
    /// artifacts service does not implement models.
    async fn models_in(&self, user: &str, project_ids: &[String]) -> Result<Vec<apb::Model>> {
        let mut out = Vec::new();
        for chunk in project_ids.chunks(CHUNK) {
            let mut token = String::new();
            loop {
                let reply = tolerate(
                    call!(
                        self.clients.models,
                        list_models,
                        user,
                        apb::ListModelsRequest {
                            project_ids: chunk.to_vec(),
                            include_archived: true,
                            page: page(&token),
                            ..Default::default()
                        }
                    ),
                    "list models of projects",
                )?;
                let Some(reply) = reply else { return Ok(out) };
                out.extend(reply.models);
                match next(reply.page) {
                    Some(t) => token = t,
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// Moves models to another project (empty: outside any project). A model
    /// that refuses (published) is logged and left where it is.
    async fn move_models(&self, user: &str, models: &[apb::Model], project_id: &str) -> u64 {
        let mut moved = 0;
        for model in models {
            let result = call!(
                self.clients.models,
                update_model,
                user,
                apb::UpdateModelRequest {
                    model: Some(apb::Model {
                        id: model.id.clone(),
                        project_id: project_id.to_owned(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["project_id".into()],
                    }),
                }
            );
            match result {
                Ok(_) => moved += 1,
                Err(e) => {
                    tracing::warn!(model_id = %model.id, code = %e.code(), error = %e.message(), "model not moved");
                }
            }
        }
        moved
    }

    /// DeleteProject as the gateway composes it; the client's
    /// `contents_count` is ignored.
    pub(crate) async fn delete_project(
        &self,
        user: &str,
        req: ppb::DeleteProjectRequest,
    ) -> Result<ProjectDeleteReport> {
        let subtree = self.project_subtree(user, &req.id).await?;
        let tasks = self.count_tasks(user, &subtree).await?;
        let models = self.models_in(user, &subtree).await?;
        let count = tasks + models.len() as u64;
        let mut report = ProjectDeleteReport::default();
        if count > 0 && req.force {
            if req.delete_contents {
                for id in self.task_ids_in(user, &subtree).await? {
                    let deleted = self
                        .delete(
                            user,
                            tpb::DeleteTaskRequest {
                                id: id.clone(),
                                force: true,
                                keep_output_models: false,
                                keep_external_files: false,
                            },
                        )
                        .await;
                    match deleted {
                        Ok((reply, cleanup)) => {
                            report.deleted_tasks += u64::from(reply.deleted);
                            report.deleted_models += u64::from(cleanup.deleted_models);
                            report.model_urls.extend(cleanup.model_urls);
                            report.event_urls.extend(cleanup.event_urls);
                            report.artifact_urls.extend(cleanup.artifact_urls);
                        }
                        // Deleted concurrently: nothing left to do.
                        Err(e) if e.code() == ErrorCode::TaskNotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                for model in self.models_in(user, &subtree).await? {
                    let deleted = call!(
                        self.clients.models,
                        delete_model,
                        user,
                        apb::DeleteModelRequest {
                            model_id: model.id.clone(),
                            force: true,
                            delete_blob: true,
                            used_by_task_ids: vec![],
                        }
                    );
                    match deleted {
                        Ok(_) => {
                            report.deleted_models += 1;
                            if !model.uri.is_empty() {
                                report.model_urls.push(model.uri);
                            }
                        }
                        Err(e) if e.code() == ErrorCode::ModelNotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            } else {
                for project in &subtree {
                    let moved = call!(
                        self.clients.tasks,
                        move_tasks,
                        user,
                        tpb::MoveTasksRequest {
                            ids: vec![],
                            from_project_id: project.clone(),
                            project_id: String::new(),
                        }
                    )?;
                    report.disassociated_tasks += u64::from(moved.updated);
                }
                report.disassociated_models = self.move_models(user, &models, "").await;
            }
        }
        report.reply = call!(
            self.clients.projects,
            delete_project,
            user,
            ppb::DeleteProjectRequest {
                id: req.id.clone(),
                force: req.force,
                // The contents are gone (or moved) when forced.
                contents_count: if req.force { 0 } else { count },
                delete_contents: req.delete_contents,
            }
        )?;
        tracing::info!(
            project_id = %req.id,
            projects = report.reply.deleted,
            deleted_tasks = report.deleted_tasks,
            disassociated_tasks = report.disassociated_tasks,
            "project deleted"
        );
        Ok(report)
    }

    /// MergeProject in the contract's three idempotent steps.
    pub(crate) async fn merge_project(
        &self,
        user: &str,
        req: ppb::MergeProjectRequest,
    ) -> Result<ProjectMergeReport> {
        let validated = call!(
            self.clients.projects,
            merge_project,
            user,
            ppb::MergeProjectRequest {
                validate_only: true,
                ..req.clone()
            }
        )?;
        if req.validate_only {
            return Ok(ProjectMergeReport {
                reply: validated,
                ..Default::default()
            });
        }
        let moved = call!(
            self.clients.tasks,
            move_tasks,
            user,
            tpb::MoveTasksRequest {
                ids: vec![],
                from_project_id: req.source_id.clone(),
                project_id: req.destination_id.clone(),
            }
        )?;
        let models = self
            .models_in(user, std::slice::from_ref(&req.source_id))
            .await?;
        let moved_models = self.move_models(user, &models, &req.destination_id).await;
        let reply = call!(
            self.clients.projects,
            merge_project,
            user,
            ppb::MergeProjectRequest {
                validate_only: false,
                ..req.clone()
            }
        )?;
        tracing::info!(
            source_id = %req.source_id,
            destination_id = %req.destination_id,
            tasks = moved.updated,
            projects = reply.moved_project_ids.len(),
            "project merged"
        );
        Ok(ProjectMergeReport {
            reply,
            moved_tasks: u64::from(moved.updated),
            moved_models,
        })
    }

    /// Task counts of each project including its sub-projects, keyed by
    /// project id. `archived` is filled only when asked for.
    pub(crate) async fn project_stats(
        &self,
        user: &str,
        project_ids: &[String],
        include_hidden: bool,
        with_archived: bool,
    ) -> Result<HashMap<String, SubtreeStats>> {
        let mut groups = Vec::with_capacity(project_ids.len());
        for id in project_ids {
            groups.push(tpb::TaskStatsGroup {
                key: id.clone(),
                project_ids: self.expand_projects(user, std::slice::from_ref(id)).await?,
                include_subprojects: false,
            });
        }
        let mut out: HashMap<String, SubtreeStats> = HashMap::new();
        for chunk in groups.chunks(CHUNK) {
            let active = call!(
                self.clients.tasks,
                get_task_stats,
                user,
                tpb::GetTaskStatsRequest {
                    groups: chunk.to_vec(),
                    include_archived: false,
                    include_hidden,
                }
            )?;
            for g in active.groups {
                let key = g.key.clone();
                out.entry(key).or_default().active = g;
            }
            if with_archived {
                let all = call!(
                    self.clients.tasks,
                    get_task_stats,
                    user,
                    tpb::GetTaskStatsRequest {
                        groups: chunk.to_vec(),
                        include_archived: true,
                        include_hidden,
                    }
                )?;
                for g in all.groups {
                    let entry = out.entry(g.key.clone()).or_default();
                    entry.archived = subtract(&g, &entry.active);
                }
            }
        }
        Ok(out)
    }
}

/// `all - active`: the counts of archived tasks.
fn subtract(all: &tpb::TaskStats, active: &tpb::TaskStats) -> tpb::TaskStats {
    let by_status = all
        .by_status
        .iter()
        .map(|s| {
            let minus = active
                .by_status
                .iter()
                .find(|a| a.status == s.status)
                .map_or(0, |a| a.count);
            tpb::StatusCount {
                status: s.status,
                count: s.count.saturating_sub(minus),
            }
        })
        .filter(|s| s.count > 0)
        .collect();
    let by_type = all
        .by_type
        .iter()
        .map(|t| {
            let minus = active
                .by_type
                .iter()
                .find(|a| a.r#type == t.r#type)
                .map_or(0, |a| a.count);
            tpb::TypeCount {
                r#type: t.r#type,
                count: t.count.saturating_sub(minus),
            }
        })
        .filter(|t| t.count > 0)
        .collect();
    tpb::TaskStats {
        key: all.key.clone(),
        total: all.total.saturating_sub(active.total),
        by_status,
        by_type,
    }
}

// ---- public gRPC ------------------------------------------------------------------------

/// `ProjectsService` as the gateway serves it: merge and delete composed,
/// the other RPCs forwarded to the projects service.
#[derive(Debug, Clone)]
pub(crate) struct GatewayProjects {
    pub(crate) inner: Arc<Inner>,
}

fn caller<T>(request: &GrpcRequest<T>) -> String {
    request
        .metadata()
        .get(USER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

type GrpcResult<T> = std::result::Result<GrpcResponse<T>, Status>;

fn reply<T>(result: Result<T>) -> GrpcResult<T> {
    result.map(GrpcResponse::new).map_err(Status::from)
}

macro_rules! projects_service_impl {
    (forward { $($method:ident($req:ty) -> $resp:ty;)* } $($rest:tt)*) => {
        #[tonic::async_trait]
        impl ProjectsService for GatewayProjects {
            $(
                async fn $method(&self, request: GrpcRequest<$req>) -> GrpcResult<$resp> {
                    let user = caller(&request);
                    reply(call!(self.inner.clients.projects, $method, &user, request.into_inner()))
                }
            )*
            $($rest)*
        }
    };
}

projects_service_impl! {
    forward {
        create_project(ppb::CreateProjectRequest) -> ppb::CreateProjectResponse;
        get_project(ppb::GetProjectRequest) -> ppb::GetProjectResponse;
        get_project_by_path(ppb::GetProjectByPathRequest) -> ppb::GetProjectByPathResponse;
        list_projects(ppb::ListProjectsRequest) -> ppb::ListProjectsResponse;
        update_project(ppb::UpdateProjectRequest) -> ppb::UpdateProjectResponse;
        move_project(ppb::MoveProjectRequest) -> ppb::MoveProjectResponse;
    }

    async fn merge_project(
        &self,
        request: GrpcRequest<ppb::MergeProjectRequest>,
    ) -> GrpcResult<ppb::MergeProjectResponse> {
        let user = caller(&request);
        reply(
            self.inner
                .merge_project(&user, request.into_inner())
                .await
                .map(|r| r.reply),
        )
    }

    async fn delete_project(
        &self,
        request: GrpcRequest<ppb::DeleteProjectRequest>,
    ) -> GrpcResult<ppb::DeleteProjectResponse> {
        let user = caller(&request);
        reply(
            self.inner
                .delete_project(&user, request.into_inner())
                .await
                .map(|r| r.reply),
        )
    }
}
