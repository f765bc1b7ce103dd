//! gRPC surface of the projects service: converts `tasklab.projects.v1`
//! messages to the domain core's types and back, applies field masks, and
//! turns domain errors into statuses with `.into()`. No rule lives here.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use prost_types::{FieldMask, Timestamp};
use tasklab_error::{Error, Result};
use tasklab_proto::common::v1 as common;
use tasklab_proto::projects::v1::projects_service_server::ProjectsService;
use tasklab_proto::projects::v1::{
    self as pb, CreateProjectRequest, CreateProjectResponse, DeleteProjectRequest,
    DeleteProjectResponse, GetProjectByPathRequest, GetProjectByPathResponse, GetProjectRequest,
    GetProjectResponse, ListProjectsRequest, ListProjectsResponse, MergeProjectRequest,
    MergeProjectResponse, MoveProjectRequest, MoveProjectResponse, UpdateProjectRequest,
    UpdateProjectResponse,
};
use tonic::{Request, Response, Status};

use crate::service::{
    DeleteRequest, ListQuery, NewProject, OrderBy, Project, ProjectChanges, ProjectFields,
    ProjectService, TagFilter,
};

/// gRPC metadata entry in which the gateway passes the id of the
/// authenticated caller; it becomes the `user` of created projects.
pub(crate) const USER_METADATA_KEY: &str = "tasklab-user-id";

/// Every field of `Project`, as named in a read mask.
const PROJECT_FIELDS: [&str; 12] = [
    "id",
    "name",
    "path",
    "parent_id",
    "description",
    "overview",
    "tags",
    "system_tags",
    "default_output_destination",
    "user",
    "created",
    "last_update",
];

/// Serves `ProjectsService` from the domain core.
#[derive(Debug, Clone)]
pub(crate) struct ProjectsGrpc {
    service: ProjectService,
}

impl ProjectsGrpc {
    pub(crate) fn new(service: ProjectService) -> Self {
        ProjectsGrpc { service }
    }
}

#[tonic::async_trait]
impl ProjectsService for ProjectsGrpc {
    async fn create_project(
        &self,
        request: Request<CreateProjectRequest>,
    ) -> Result<Response<CreateProjectResponse>, Status> {
        let user = caller(&request);
        let req = request.into_inner();
        let new = NewProject {
            path: req.path,
            fields: ProjectFields {
                description: req.description,
                overview: req.overview,
                tags: req.tags,
                system_tags: req.system_tags,
                default_output_destination: req.default_output_destination,
            },
            allow_existing: req.allow_existing,
        };
        let created = self.service.create(new, &user).await?;
        Ok(Response::new(CreateProjectResponse {
            project: Some(ReadMask::ALL.project(created.project)),
            created: created.created,
            created_parent_ids: created.created_parent_ids,
        }))
    }

    async fn get_project(
        &self,
        request: Request<GetProjectRequest>,
    ) -> Result<Response<GetProjectResponse>, Status> {
        let req = request.into_inner();
        let mask = ReadMask::parse(req.read_mask)?;
        let project = self.service.get(&req.id).await?;
        Ok(Response::new(GetProjectResponse {
            project: Some(mask.project(project)),
        }))
    }

    async fn get_project_by_path(
        &self,
        request: Request<GetProjectByPathRequest>,
    ) -> Result<Response<GetProjectByPathResponse>, Status> {
        let req = request.into_inner();
        let mask = ReadMask::parse(req.read_mask)?;
        let project = self.service.get_by_path(&req.path).await?;
        Ok(Response::new(GetProjectByPathResponse {
            project: Some(mask.project(project)),
        }))
    }

    async fn list_projects(
        &self,
        request: Request<ListProjectsRequest>,
    ) -> Result<Response<ListProjectsResponse>, Status> {
        let req = request.into_inner();
        let mask = ReadMask::parse(req.read_mask)?;
        let page = req.page.unwrap_or_default();
        let query = ListQuery {
            parent_id: req.parent_id,
            shallow: req.shallow,
            ids: req.ids,
            path_regex: req.path_regex,
            name_regex: req.name_regex,
            tags: tag_filter(req.tags),
            system_tags: tag_filter(req.system_tags),
            include_hidden: req.include_hidden,
            include_archived: req.include_archived,
            users: req.users,
            order_by: req
                .order_by
                .into_iter()
                .map(|o| OrderBy {
                    field: o.field,
                    descending: o.descending,
                })
                .collect(),
            page_size: page.page_size,
            page_token: page.page_token,
            include_total: page.include_total,
        };
        let page = self.service.list(query).await?;
        Ok(Response::new(ListProjectsResponse {
            projects: page.projects.into_iter().map(|p| mask.project(p)).collect(),
            page: Some(common::PageResponse {
                next_page_token: page.next_page_token,
                total_size: page.total_size,
            }),
        }))
    }

    async fn update_project(
        &self,
        request: Request<UpdateProjectRequest>,
    ) -> Result<Response<UpdateProjectResponse>, Status> {
        let req = request.into_inner();
        let mut changes = ProjectChanges::default();
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(
                Error::invalid("update_mask must name at least one field to update")
                    .with_field("field", "update_mask")
                    .into(),
            );
        }
        for path in paths {
            match path.as_str() {
                "name" => changes.name = Some(req.name.clone()),
                "description" => changes.description = Some(req.description.clone()),
                "overview" => changes.overview = Some(req.overview.clone()),
                "tags" => changes.tags = Some(req.tags.clone()),
                "system_tags" => changes.system_tags = Some(req.system_tags.clone()),
                "default_output_destination" => {
                    changes.default_output_destination =
                        Some(req.default_output_destination.clone());
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "update_mask path {path:?} cannot be updated; supported: name, \
                         description, overview, tags, system_tags, default_output_destination"
                    ))
                    .with_field("path", path)
                    .into());
                }
            }
        }
        let changed = self.service.update(&req.id, changes).await?;
        Ok(Response::new(UpdateProjectResponse {
            project: Some(ReadMask::ALL.project(changed.project)),
            updated: changed.updated,
        }))
    }

    async fn move_project(
        &self,
        request: Request<MoveProjectRequest>,
    ) -> Result<Response<MoveProjectResponse>, Status> {
        let req = request.into_inner();
        let moved = self
            .service
            .move_project(&req.id, &req.new_parent_id)
            .await?;
        Ok(Response::new(MoveProjectResponse {
            project: Some(ReadMask::ALL.project(moved.project)),
            updated: moved.updated,
        }))
    }

    async fn merge_project(
        &self,
        request: Request<MergeProjectRequest>,
    ) -> Result<Response<MergeProjectResponse>, Status> {
        let req = request.into_inner();
        let merged = self
            .service
            .merge(&req.source_id, &req.destination_id, req.validate_only)
            .await?;
        Ok(Response::new(MergeProjectResponse {
            destination: Some(ReadMask::ALL.project(merged.destination)),
            moved_project_ids: merged.moved_project_ids,
            source_deleted: merged.source_deleted,
        }))
    }

    async fn delete_project(
        &self,
        request: Request<DeleteProjectRequest>,
    ) -> Result<Response<DeleteProjectResponse>, Status> {
        // `delete_contents` concerns the gateway only.
        let req = request.into_inner();
        let deleted = self
            .service
            .delete(DeleteRequest {
                id: req.id,
                force: req.force,
                contents_count: req.contents_count,
            })
            .await?;
        Ok(Response::new(DeleteProjectResponse {
            deleted: u32::try_from(deleted.len()).unwrap_or(u32::MAX),
            deleted_project_ids: deleted,
        }))
    }
}

/// The authenticated caller's id, as passed by the gateway; empty when the
/// service is called directly without one.
fn caller<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get(USER_METADATA_KEY)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn tag_filter(filter: Option<common::TagFilter>) -> TagFilter {
    let filter = filter.unwrap_or_default();
    TagFilter {
        any_of: filter.any_of,
        all_of: filter.all_of,
        none_of: filter.none_of,
    }
}

/// The fields of a `Project` to return; `None` means all of them.
#[derive(Debug, Clone, Default)]
struct ReadMask(Option<BTreeSet<&'static str>>);

impl ReadMask {
    const ALL: ReadMask = ReadMask(None);

    fn parse(mask: Option<FieldMask>) -> Result<ReadMask> {
        let paths = mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Ok(ReadMask::ALL);
        }
        let fields = paths
            .iter()
            .map(|path| {
                PROJECT_FIELDS
                    .iter()
                    .copied()
                    .find(|field| field == path)
                    .ok_or_else(|| {
                        Error::invalid(format!("read_mask path {path:?} is not a field of Project"))
                            .with_field("path", path)
                    })
            })
            .collect::<Result<_>>()?;
        Ok(ReadMask(Some(fields)))
    }

    fn has(&self, field: &str) -> bool {
        self.0.as_ref().is_none_or(|fields| fields.contains(field))
    }

    /// The message of `p`, with the fields outside the mask left at their
    /// defaults.
    fn project(&self, p: Project) -> pb::Project {
        fn keep<T: Default>(mask: &ReadMask, field: &str, value: T) -> T {
            if mask.has(field) { value } else { T::default() }
        }
        pb::Project {
            id: keep(self, "id", p.id),
            name: keep(self, "name", p.name),
            path: keep(self, "path", p.path),
            parent_id: keep(self, "parent_id", p.parent_id.unwrap_or_default()),
            description: keep(self, "description", p.description),
            overview: keep(self, "overview", p.overview),
            tags: keep(self, "tags", p.tags),
            system_tags: keep(self, "system_tags", p.system_tags),
            default_output_destination: keep(
                self,
                "default_output_destination",
                p.default_output_destination,
            ),
            user: keep(self, "user", p.user),
            created: keep(self, "created", Some(timestamp(p.created))),
            last_update: keep(self, "last_update", Some(timestamp(p.last_update))),
        }
    }
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(i32::MAX),
    }
}
