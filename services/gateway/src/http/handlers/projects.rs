//! `projects.*`: nested projects. ClearML's `name` is the full path
//! (`a/b`); its `basename` is the leaf name.

use serde::Deserialize;
use serde_json::{Value, json};
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::projects::v1 as ppb;
use tasklab_proto::tasks::v1 as tpb;

use super::{Paging, collect_pages};
use crate::http::Call;
use crate::http::args::{StrList, required};
use crate::http::convert::{
    order_by, project_fields, project_to_json, status_name, tag_filter, type_name,
};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GetAllArgs {
    id: StrList,
    name: Option<String>,
    basename: Option<String>,
    tags: StrList,
    system_tags: StrList,
    search_hidden: bool,
    shallow_search: bool,
    parent: StrList,
    only_fields: Vec<String>,
    order_by: StrList,
    page: Option<i64>,
    page_size: Option<i64>,
    include_stats: bool,
    stats_for_state: Option<String>,
}

fn rename(field: &str) -> String {
    match field {
        "name" => "path".to_owned(),
        "basename" => "name".to_owned(),
        other => other.to_owned(),
    }
}

/// `projects.get_all`: `name` is an unanchored regular expression on the
/// full path (`^a/b$` for an exact match).
pub(crate) async fn get_all(call: Call) -> Result<Value, Error> {
    let args: GetAllArgs = call.args()?;
    let projects = list(&call, &args).await?;
    let projects: Vec<Value> = projects
        .iter()
        .map(|p| project_fields(project_to_json(p), &args.only_fields))
        .collect();
    Ok(json!({ "projects": projects }))
}

/// `projects.get_all_ex`: `projects.get_all`, plus with `include_stats` the
/// task counts of each project and all its sub-projects per status (and per
/// type) under `stats.active` and/or `stats.archived` (`stats_for_state`:
/// `active`, the default, `archived`, or empty for both).
pub(crate) async fn get_all_ex(call: Call) -> Result<Value, Error> {
    let args: GetAllArgs = call.args()?;
    let projects = list(&call, &args).await?;
    let mut out: Vec<Value> = projects
        .iter()
        .map(|p| project_fields(project_to_json(p), &args.only_fields))
        .collect();
    if !args.include_stats {
        return Ok(json!({ "projects": out }));
    }
    let state = args.stats_for_state.as_deref().unwrap_or("active");
    let (active, archived) = match state {
        "active" => (true, false),
        "archived" => (false, true),
        "" => (true, true),
        other => {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("invalid stats_for_state {other:?}"),
            )
            .with_field("stats_for_state", other));
        }
    };
    let ids: Vec<String> = projects.iter().map(|p| p.id.clone()).collect();
    let stats = call
        .gw
        .project_stats(call.user(), &ids, args.search_hidden, archived)
        .await?;
    for (project, value) in projects.iter().zip(out.iter_mut()) {
        let Value::Object(map) = value else { continue };
        let entry = stats.get(&project.id).cloned().unwrap_or_default();
        let mut by_state = serde_json::Map::new();
        if active {
            by_state.insert("active".into(), stats_json(&entry.active));
        }
        if archived {
            by_state.insert("archived".into(), stats_json(&entry.archived));
        }
        map.insert("stats".into(), Value::Object(by_state));
    }
    Ok(json!({ "projects": out }))
}

/// ClearML's per-state statistics: every status with its count (0 when
/// absent), the total, and (tasklab) the counts per type. Run time is not
/// tracked per project and is reported as 0.
fn stats_json(stats: &tpb::TaskStats) -> Value {
    let mut status_count = serde_json::Map::new();
    for status in [
        "created",
        "queued",
        "in_progress",
        "stopped",
        "failed",
        "completed",
        "closed",
        "publishing",
        "published",
        "unknown",
    ] {
        status_count.insert(status.into(), json!(0));
    }
    for s in &stats.by_status {
        status_count.insert(status_name(s.status).into(), json!(s.count));
    }
    let type_count: serde_json::Map<String, Value> = stats
        .by_type
        .iter()
        .map(|t| (type_name(t.r#type).to_owned(), json!(t.count)))
        .collect();
    json!({
        "status_count": status_count,
        "total_tasks": stats.total,
        "type_count": type_count,
        "total_runtime": 0,
    })
}

/// The projects a `get_all` request selects.
async fn list(call: &Call, args: &GetAllArgs) -> Result<Vec<ppb::Project>, Error> {
    let base = ppb::ListProjectsRequest {
        parent_id: args.parent.0.first().cloned().unwrap_or_default(),
        shallow: args.shallow_search,
        ids: args.id.0.clone(),
        path_regex: args.name.clone().unwrap_or_default(),
        name_regex: args.basename.clone().unwrap_or_default(),
        tags: tag_filter(&args.tags.0),
        system_tags: tag_filter(&args.system_tags.0),
        include_hidden: args.search_hidden,
        include_archived: true,
        users: vec![],
        page: None,
        order_by: order_by(&args.order_by.0, &rename),
        read_mask: None,
    };
    let user = call.user().to_owned();
    let gw = call.gw.clone();
    let projects = collect_pages(
        Paging {
            page: args.page,
            page_size: args.page_size,
        },
        |page| {
            let (gw, user) = (gw.clone(), user.clone());
            let mut req = base.clone();
            req.page = page;
            async move {
                let reply = call!(gw.clients.projects, list_projects, &user, req)?;
                Ok((reply.projects, reply.page))
            }
        },
    )
    .await?;
    Ok(projects)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CreateArgs {
    name: Option<String>,
    description: String,
    tags: Vec<String>,
    system_tags: Vec<String>,
    default_output_destination: String,
}

/// `projects.create`: creates the project and any missing parent.
pub(crate) async fn create(call: Call) -> Result<Value, Error> {
    let args: CreateArgs = call.args()?;
    let name = required(&args.name, "name")?;
    let reply = call!(
        call.gw.clients.projects,
        create_project,
        call.user(),
        ppb::CreateProjectRequest {
            path: name.to_owned(),
            description: args.description,
            overview: String::new(),
            tags: args.tags,
            system_tags: args.system_tags,
            default_output_destination: args.default_output_destination,
            allow_existing: false,
        }
    )?;
    let id = reply.project.map(|p| p.id).unwrap_or_default();
    tracing::info!(project_id = %id, path = %name, "project created");
    Ok(json!({ "id": id }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ByIdArgs {
    project: Option<String>,
}

/// `projects.get_by_id`.
pub(crate) async fn get_by_id(call: Call) -> Result<Value, Error> {
    let args: ByIdArgs = call.args()?;
    let id = required(&args.project, "project")?;
    let project = call.gw.check_project(call.user(), id).await?;
    Ok(json!({ "project": project_to_json(&project) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateArgs {
    project: Option<String>,
    name: Option<String>,
    description: Option<String>,
    tags: Option<Vec<String>>,
    system_tags: Option<Vec<String>>,
    default_output_destination: Option<String>,
}

/// `projects.update`: description, tags, default output destination, and
/// the leaf name (a `name` with `/` keeps only its last segment).
pub(crate) async fn update(call: Call) -> Result<Value, Error> {
    let args: UpdateArgs = call.args()?;
    let id = required(&args.project, "project")?.to_owned();
    let mut req = ppb::UpdateProjectRequest {
        id,
        ..Default::default()
    };
    let mut paths = Vec::new();
    let mut fields = serde_json::Map::new();
    if let Some(name) = args.name {
        let leaf = name.rsplit('/').next().unwrap_or(&name).to_owned();
        fields.insert("name".into(), json!(name));
        req.name = leaf;
        paths.push("name".to_owned());
    }
    if let Some(v) = args.description {
        fields.insert("description".into(), json!(v));
        req.description = v;
        paths.push("description".to_owned());
    }
    if let Some(v) = args.tags {
        fields.insert("tags".into(), json!(v));
        req.tags = v;
        paths.push("tags".to_owned());
    }
    if let Some(v) = args.system_tags {
        fields.insert("system_tags".into(), json!(v));
        req.system_tags = v;
        paths.push("system_tags".to_owned());
    }
    if let Some(v) = args.default_output_destination {
        fields.insert("default_output_destination".into(), json!(v));
        req.default_output_destination = v;
        paths.push("default_output_destination".to_owned());
    }
    if paths.is_empty() {
        return Ok(json!({ "updated": 0, "fields": {} }));
    }
    req.update_mask = Some(prost_types::FieldMask { paths });
    let reply = call!(call.gw.clients.projects, update_project, call.user(), req)?;
    Ok(json!({ "updated": reply.updated.min(1), "fields": fields }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeleteArgs {
    project: Option<String>,
    force: bool,
    delete_contents: bool,
}

/// `projects.delete`: refused with `project_not_empty` while the project or
/// a sub-project holds tasks or models, unless `force`; forced, the contents
/// are deleted (`delete_contents`) or moved outside any project.
pub(crate) async fn delete(call: Call) -> Result<Value, Error> {
    let args: DeleteArgs = call.args()?;
    let id = required(&args.project, "project")?.to_owned();
    let report = call
        .gw
        .delete_project(
            call.user(),
            ppb::DeleteProjectRequest {
                id,
                force: args.force,
                contents_count: 0,
                delete_contents: args.delete_contents,
            },
        )
        .await?;
    Ok(json!({
        "deleted": report.reply.deleted,
        "disassociated_tasks": report.disassociated_tasks,
        "deleted_tasks": report.deleted_tasks,
        "deleted_models": report.deleted_models,
        "urls": {
            "model_urls": report.model_urls,
            "event_urls": report.event_urls,
            "artifact_urls": report.artifact_urls,
        },
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MergeArgs {
    project: Option<String>,
    destination_project: Option<String>,
}

/// `projects.merge`: the source's tasks, models and sub-projects move into
/// the destination, then the source is deleted.
pub(crate) async fn merge(call: Call) -> Result<Value, Error> {
    let args: MergeArgs = call.args()?;
    let source = required(&args.project, "project")?.to_owned();
    let destination = required(&args.destination_project, "destination_project")?.to_owned();
    let report = call
        .gw
        .merge_project(
            call.user(),
            ppb::MergeProjectRequest {
                source_id: source,
                destination_id: destination,
                validate_only: false,
            },
        )
        .await?;
    Ok(json!({
        "moved_entities": report.moved_tasks + report.moved_models,
        "moved_projects": report.reply.moved_project_ids.len(),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MoveArgs {
    project: Option<String>,
    new_location: Option<String>,
}

/// `projects.move`: `new_location` is the full path of the new parent
/// (created when missing); empty moves the project to the root.
pub(crate) async fn move_project(call: Call) -> Result<Value, Error> {
    let args: MoveArgs = call.args()?;
    let id = required(&args.project, "project")?.to_owned();
    let location = args.new_location.unwrap_or_default();
    let location = location.trim().trim_matches('/');
    let new_parent_id = if location.is_empty() {
        String::new()
    } else {
        let created = call!(
            call.gw.clients.projects,
            create_project,
            call.user(),
            ppb::CreateProjectRequest {
                path: location.to_owned(),
                allow_existing: true,
                ..Default::default()
            }
        )?;
        created.project.map(|p| p.id).unwrap_or_default()
    };
    let reply = call!(
        call.gw.clients.projects,
        move_project,
        call.user(),
        ppb::MoveProjectRequest { id, new_parent_id }
    )?;
    Ok(json!({ "moved": reply.updated }))
}
