//! `tasks.*`: the Task model, its lifecycle and the flows that cross
//! services (enqueue, reset, delete, clone and joined reads are composed in
//! `compose.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::artifacts::v1 as apb;
use tasklab_proto::tasks::v1 as tpb;

use super::{Paging, collect_pages, missing};
use crate::compose::id_mask;
use crate::http::Call;
use crate::http::args::{StrList, required};
use crate::http::convert::{
    JsonArtifact, JsonExecution, JsonHyperParams, JsonScript, JsonTaskModels, JsonTyped,
    PROPERTIES_SECTION, artifact_mode, configuration_from_json, container_from_docker_cmd,
    container_from_json, hyperparams_from_json, iso, json_to_struct, order_by, parse_status,
    parse_type, project_fields, requirements_from_json, status_name, tag_filter, task_read_mask,
    task_to_json,
};

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// The `fields` of a status change reply.
fn status_fields(task: Option<&tpb::Task>) -> Value {
    match task {
        Some(t) => json!({
            "status": status_name(t.status),
            "status_reason": t.status_reason,
            "status_message": t.status_message,
            "status_changed": iso(t.status_changed.as_ref()),
            "last_update": iso(t.last_update.as_ref()),
            "started": iso(t.started.as_ref()),
            "completed": iso(t.completed.as_ref()),
        }),
        None => json!({}),
    }
}

/// The arguments of every status change endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatusArgs {
    task: Option<String>,
    force: bool,
    status_reason: String,
    status_message: String,
    publish: bool,
    publish_model: Option<bool>,
}

impl StatusArgs {
    fn options(&self) -> Option<tpb::StatusChangeOptions> {
        Some(tpb::StatusChangeOptions {
            force: self.force,
            status_reason: self.status_reason.clone(),
            status_message: self.status_message.clone(),
            expected_status: 0,
        })
    }

    fn id(&self) -> Result<String, Error> {
        required(&self.task, "task").map(str::to_owned)
    }
}

fn status_mask() -> Option<prost_types::FieldMask> {
    mask(&[
        "id",
        "status",
        "status_reason",
        "status_message",
        "status_changed",
        "last_update",
        "started",
        "completed",
    ])
}

// ---- reads ----------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ByIdArgs {
    task: Option<String>,
}

/// `tasks.get_by_id`: the complete task, with its metrics and artifacts.
pub(crate) async fn get_by_id(call: Call) -> Result<Value, Error> {
    let args: ByIdArgs = call.args()?;
    let id = required(&args.task, "task")?;
    let task = call.gw.get_task(call.user(), id, None).await?;
    Ok(json!({ "task": task_to_json(&task) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SearchArgs {
    pattern: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GetAllArgs {
    id: StrList,
    name: Option<String>,
    status: StrList,
    #[serde(rename = "type")]
    kind: StrList,
    project: StrList,
    parent: StrList,
    user: StrList,
    tags: StrList,
    system_tags: StrList,
    search_hidden: bool,
    include_subprojects: bool,
    search_text: Option<String>,
    #[serde(rename = "_any_")]
    any: Option<SearchArgs>,
    #[serde(rename = "_all_")]
    all: Option<SearchArgs>,
    only_fields: Vec<String>,
    order_by: StrList,
    page: Option<i64>,
    page_size: Option<i64>,
}

fn task_order_field(field: &str) -> String {
    match field {
        "project" => "project_id".to_owned(),
        "parent" => "parent_id".to_owned(),
        other => other.to_owned(),
    }
}

/// `tasks.get_all` / `tasks.get_all_ex`: `name` is an unanchored regular
/// expression; tag lists take `-tag` exclusions; archived tasks are listed
/// (clients exclude them with `system_tags: ["-archived"]`), hidden ones only
/// with `search_hidden`.
pub(crate) async fn get_all(call: Call) -> Result<Value, Error> {
    let args: GetAllArgs = call.args()?;
    let statuses = args
        .status
        .0
        .iter()
        .map(|s| parse_status(s).map(|s| s as i32))
        .collect::<Result<Vec<_>, _>>()?;
    let types = args
        .kind
        .0
        .iter()
        .map(|s| parse_type(s).map(|t| t as i32))
        .collect::<Result<Vec<_>, _>>()?;
    let search_text = args
        .search_text
        .or(args.any.map(|a| a.pattern))
        .or(args.all.map(|a| a.pattern))
        .unwrap_or_default();
    let base = tpb::ListTasksRequest {
        ids: args.id.0,
        project_ids: args.project.0,
        include_subprojects: args.include_subprojects,
        name_regex: args.name.unwrap_or_default(),
        statuses,
        types,
        tags: tag_filter(&args.tags.0),
        system_tags: tag_filter(&args.system_tags.0),
        parent_ids: args.parent.0,
        users: args.user.0,
        search_text,
        include_archived: true,
        include_hidden: args.search_hidden,
        order_by: order_by(&args.order_by.0, &task_order_field),
        read_mask: task_read_mask(&args.only_fields),
        ..Default::default()
    };
    let user = call.user().to_owned();
    let gw = call.gw.clone();
    let tasks = collect_pages(
        Paging {
            page: args.page,
            page_size: args.page_size,
        },
        |page| {
            let (gw, user) = (gw.clone(), user.clone());
            let mut req = base.clone();
            req.page = page;
            async move {
                let reply = gw.list_tasks(&user, req).await?;
                Ok((reply.tasks, reply.page))
            }
        },
    )
    .await?;
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|t| project_fields(task_to_json(t), &args.only_fields))
        .collect();
    Ok(json!({ "tasks": tasks }))
}

// ---- create and edit --------------------------------------------------------------------

/// The task fields accepted by `tasks.create` and `tasks.edit`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TaskFields {
    task: Option<String>,
    force: bool,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    comment: Option<String>,
    tags: Option<Vec<String>>,
    system_tags: Option<Vec<String>>,
    project: Option<String>,
    parent: Option<String>,
    script: Option<JsonScript>,
    execution: Option<JsonExecution>,
    container: Option<Map<String, Value>>,
    output_dest: Option<String>,
    output: Option<Map<String, Value>>,
    hyperparams: Option<JsonHyperParams>,
    configuration: Option<BTreeMap<String, JsonTyped>>,
    runtime: Option<Value>,
    models: Option<JsonTaskModels>,
}

fn output_from_json(map: &Map<String, Value>, dest: Option<&str>) -> tpb::Output {
    let text = |k: &str| {
        map.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    tpb::Output {
        destination: dest.map_or_else(|| text("destination"), str::to_owned),
        result: text("result"),
        error: text("error"),
    }
}

/// `tasks.create`: a draft task. `output_dest` becomes
/// `output.destination`.
pub(crate) async fn create(call: Call) -> Result<Value, Error> {
    let f: TaskFields = call.args()?;
    let name = required(&f.name, "name")?.to_owned();
    let task_type = match f.kind.as_deref() {
        Some(t) => parse_type(t)? as i32,
        None => 0,
    };
    let (hyperparams, user_properties) = f.hyperparams.map(hyperparams_from_json).unzip();
    let container = match (
        &f.container,
        f.execution.as_ref().and_then(|e| e.docker_cmd.as_deref()),
    ) {
        (Some(c), _) => Some(container_from_json(c)),
        (None, Some(cmd)) if !cmd.is_empty() => Some(container_from_docker_cmd(cmd)),
        _ => None,
    };
    let destination = f
        .output_dest
        .clone()
        .or_else(|| {
            f.output
                .as_ref()
                .and_then(|o| o.get("destination"))
                .and_then(|d| d.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let req = tpb::CreateTaskRequest {
        name,
        project_id: f.project.unwrap_or_default(),
        r#type: task_type,
        comment: f.comment.unwrap_or_default(),
        tags: f.tags.unwrap_or_default(),
        system_tags: f.system_tags.unwrap_or_default(),
        parent_id: f.parent.unwrap_or_default(),
        script: f.script.map(JsonScript::into_pb),
        container,
        execution: f.execution.as_ref().map(JsonExecution::to_pb),
        output_destination: destination,
        hyperparams: hyperparams.unwrap_or_default(),
        configuration: f
            .configuration
            .map(configuration_from_json)
            .unwrap_or_default(),
        user_properties: user_properties.unwrap_or_default(),
        runtime: f.runtime.as_ref().map(json_to_struct),
        models: f.models.map(JsonTaskModels::into_pb),
        read_mask: Some(id_mask()),
    };
    let reply = call.gw.create_task(call.user(), req).await?;
    let id = reply.task.map(|t| t.id).unwrap_or_default();
    tracing::info!(task_id = %id, "task created");
    Ok(json!({ "id": id }))
}

/// The request body minus the call's own arguments: the `fields` echoed by
/// edits.
fn echoed_fields(body: &Value) -> Value {
    let mut fields = body.as_object().cloned().unwrap_or_default();
    for key in ["task", "force", "method"] {
        fields.remove(key);
    }
    Value::Object(fields)
}

/// `tasks.edit`: replaces whole sections. Without `force` only a draft may
/// change its inputs. `output_dest` sets `output.destination`.
pub(crate) async fn edit(call: Call) -> Result<Value, Error> {
    let f: TaskFields = call.args()?;
    let id = required(&f.task, "task")?.to_owned();
    let mut req = tpb::EditTaskRequest {
        id: id.clone(),
        force: f.force,
        read_mask: Some(id_mask()),
        ..Default::default()
    };
    let mut paths: Vec<&str> = Vec::new();
    if let Some(v) = f.name {
        req.name = v;
        paths.push("name");
    }
    if let Some(v) = f.comment {
        req.comment = v;
        paths.push("comment");
    }
    if let Some(v) = f.tags {
        req.tags = v;
        paths.push("tags");
    }
    if let Some(v) = f.system_tags {
        req.system_tags = v;
        paths.push("system_tags");
    }
    if let Some(v) = f.project {
        if !v.is_empty() {
            call.gw.check_project(call.user(), &v).await?;
        }
        req.project_id = v;
        paths.push("project_id");
    }
    if let Some(v) = f.kind {
        req.r#type = parse_type(&v)? as i32;
        paths.push("type");
    }
    if let Some(v) = f.parent {
        req.parent_id = v;
        paths.push("parent_id");
    }
    if let Some(v) = f.script {
        req.script = Some(v.into_pb());
        paths.push("script");
    }
    if let Some(c) = &f.container {
        req.container = Some(container_from_json(c));
        paths.push("container");
    }
    if let Some(e) = &f.execution {
        req.execution = Some(e.to_pb());
        paths.push("execution");
        if f.container.is_none()
            && let Some(cmd) = e.docker_cmd.as_deref().filter(|c| !c.is_empty())
        {
            req.container = Some(container_from_docker_cmd(cmd));
            paths.push("container");
        }
    }
    if let Some(o) = &f.output {
        req.output = Some(output_from_json(o, f.output_dest.as_deref()));
        paths.push("output");
    }
    if let Some(h) = f.hyperparams {
        let (sections, properties) = hyperparams_from_json(h);
        req.hyperparams = sections;
        req.user_properties = properties;
        paths.push("hyperparams");
        paths.push("user_properties");
    }
    if let Some(c) = f.configuration {
        req.configuration = configuration_from_json(c);
        paths.push("configuration");
    }
    if let Some(r) = &f.runtime {
        req.runtime = Some(json_to_struct(r));
        paths.push("runtime");
    }
    if let Some(m) = f.models {
        req.models = Some(m.into_pb());
        paths.push("models");
    }
    let mut updated = 0;
    if !paths.is_empty() {
        req.update_mask = Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        });
        updated = call!(call.gw.clients.tasks, edit_task, call.user(), req)?.updated;
    }
    if f.output.is_none()
        && let Some(dest) = f.output_dest
    {
        let reply = call!(
            call.gw.clients.tasks,
            set_output_destination,
            call.user(),
            tpb::SetOutputDestinationRequest {
                id: id.clone(),
                destination: dest,
                force: f.force,
            }
        )?;
        updated = updated.max(reply.updated);
    }
    Ok(json!({ "updated": updated, "fields": echoed_fields(&call.body) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateArgs {
    task: Option<String>,
    force: bool,
    name: Option<String>,
    comment: Option<String>,
    tags: Option<Vec<String>>,
    system_tags: Option<Vec<String>>,
    project: Option<String>,
}

/// `tasks.update`: descriptive fields, in any unlocked status.
pub(crate) async fn update(call: Call) -> Result<Value, Error> {
    let a: UpdateArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let mut req = tpb::UpdateTaskRequest {
        id,
        force: a.force,
        read_mask: Some(id_mask()),
        ..Default::default()
    };
    let mut paths = Vec::new();
    if let Some(v) = a.name {
        req.name = v;
        paths.push("name".to_owned());
    }
    if let Some(v) = a.comment {
        req.comment = v;
        paths.push("comment".to_owned());
    }
    if let Some(v) = a.tags {
        req.tags = v;
        paths.push("tags".to_owned());
    }
    if let Some(v) = a.system_tags {
        req.system_tags = v;
        paths.push("system_tags".to_owned());
    }
    if let Some(v) = a.project {
        if !v.is_empty() {
            call.gw.check_project(call.user(), &v).await?;
        }
        req.project_id = v;
        paths.push("project_id".to_owned());
    }
    if paths.is_empty() {
        return Ok(json!({ "updated": 0, "fields": {} }));
    }
    req.update_mask = Some(prost_types::FieldMask { paths });
    let reply = call!(call.gw.clients.tasks, update_task, call.user(), req)?;
    Ok(json!({ "updated": reply.updated, "fields": echoed_fields(&call.body) }))
}

// ---- status changes -----------------------------------------------------------------------

/// `tasks.started`: in progress (again, when it already is).
///
/// The caller's `X-ClearML-Worker` header is not recorded as `last_worker`:
/// the SDK sends its host name there, not a worker id, also from inside a
/// task an agent runs. As in ClearML, `last_worker` comes only from the
/// agent's `workers.status_report`, so it always names a registered worker
/// (the lost-worker reaper and `tasks.stop` rely on that).
pub(crate) async fn started(call: Call) -> Result<Value, Error> {
    let a: StatusArgs = call.args()?;
    let reply = call
        .gw
        .start(
            call.user(),
            tpb::StartTaskRequest {
                id: a.id()?,
                options: a.options(),
                worker: String::new(),
                read_mask: status_mask(),
            },
        )
        .await?;
    Ok(json!({
        "updated": reply.updated,
        "started": reply.updated,
        "fields": status_fields(reply.task.as_ref()),
    }))
}

/// `tasks.stopped`: the process that stopped reports it.
pub(crate) async fn stopped(call: Call) -> Result<Value, Error> {
    let a: StatusArgs = call.args()?;
    let reply = call
        .gw
        .stop(
            call.user(),
            tpb::StopTaskRequest {
                id: a.id()?,
                options: a.options(),
                read_mask: status_mask(),
            },
        )
        .await?;
    Ok(json!({ "updated": reply.updated, "fields": status_fields(reply.task.as_ref()) }))
}

/// `tasks.failed`.
pub(crate) async fn failed(call: Call) -> Result<Value, Error> {
    let a: StatusArgs = call.args()?;
    let reply = call
        .gw
        .fail(
            call.user(),
            tpb::FailTaskRequest {
                id: a.id()?,
                options: a.options(),
                read_mask: status_mask(),
            },
        )
        .await?;
    Ok(json!({ "updated": reply.updated, "fields": status_fields(reply.task.as_ref()) }))
}

/// `tasks.completed`, optionally publishing.
pub(crate) async fn completed(call: Call) -> Result<Value, Error> {
    let a: StatusArgs = call.args()?;
    let reply = call
        .gw
        .complete(
            call.user(),
            tpb::CompleteTaskRequest {
                id: a.id()?,
                options: a.options(),
                publish: a.publish,
                publish_output_models: a.publish && a.publish_model.unwrap_or(true),
                read_mask: status_mask(),
            },
        )
        .await?;
    let mut out = json!({ "updated": reply.updated, "fields": status_fields(reply.task.as_ref()) });
    if a.publish {
        out["published"] = json!(u32::from(reply.published));
    }
    Ok(out)
}

/// `tasks.close`.
pub(crate) async fn close(call: Call) -> Result<Value, Error> {
    let a: StatusArgs = call.args()?;
    let reply = call
        .gw
        .close(
            call.user(),
            tpb::CloseTaskRequest {
                id: a.id()?,
                options: a.options(),
                read_mask: status_mask(),
            },
        )
        .await?;
    Ok(json!({ "updated": reply.updated, "fields": status_fields(reply.task.as_ref()) }))
}

/// `tasks.publish`, with the output models unless `publish_model` is false.
pub(crate) async fn publish(call: Call) -> Result<Value, Error> {
    let a: StatusArgs = call.args()?;
    let reply = call
        .gw
        .publish(
            call.user(),
            tpb::PublishTaskRequest {
                id: a.id()?,
                options: a.options(),
                publish_output_models: a.publish_model.unwrap_or(true),
                read_mask: status_mask(),
            },
        )
        .await?;
    Ok(json!({ "updated": reply.updated, "fields": status_fields(reply.task.as_ref()) }))
}

/// `tasks.stop`: a task run by a live worker keeps running with the status
/// message `stopping` (the worker stops it); any other goes to `stopped`.
pub(crate) async fn stop(call: Call) -> Result<Value, Error> {
    let a: StatusArgs = call.args()?;
    let reply = call
        .gw
        .request_stop(
            call.user(),
            tpb::RequestStopRequest {
                id: a.id()?,
                options: a.options(),
                read_mask: status_mask(),
            },
        )
        .await?;
    Ok(json!({ "updated": reply.updated, "fields": status_fields(reply.task.as_ref()) }))
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct ResetArgs {
    task: Option<String>,
    force: bool,
    clear_all: bool,
    delete_external_artifacts: bool,
    delete_output_models: bool,
    status_reason: String,
    status_message: String,
}

impl Default for ResetArgs {
    fn default() -> Self {
        ResetArgs {
            task: None,
            force: false,
            clear_all: false,
            delete_external_artifacts: true,
            delete_output_models: true,
            status_reason: String::new(),
            status_message: String::new(),
        }
    }
}

fn urls(report: &crate::compose::CleanupReport) -> Value {
    json!({
        "model_urls": report.model_urls,
        "event_urls": report.event_urls,
        "artifact_urls": report.artifact_urls,
    })
}

/// `tasks.reset`: back to a draft; events, output artifacts and output
/// models are deleted.
pub(crate) async fn reset(call: Call) -> Result<Value, Error> {
    let a: ResetArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let (reply, report) = call
        .gw
        .reset(
            call.user(),
            tpb::ResetTaskRequest {
                id,
                options: Some(tpb::StatusChangeOptions {
                    force: a.force,
                    status_reason: a.status_reason,
                    status_message: a.status_message,
                    expected_status: 0,
                }),
                clear_all: a.clear_all,
                keep_external_files: !a.delete_external_artifacts,
                read_mask: status_mask(),
            },
        )
        .await?;
    Ok(json!({
        "updated": reply.updated,
        "fields": status_fields(reply.task.as_ref()),
        "dequeued": { "removed": u32::from(report.dequeued) },
        "events": { "deleted": report.events_deleted },
        "deleted_models": report.deleted_models,
        "urls": urls(&report),
    }))
}

/// `tasks.delete`: the task and everything it owns elsewhere.
pub(crate) async fn delete(call: Call) -> Result<Value, Error> {
    let a: ResetArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let (reply, report) = call
        .gw
        .delete(
            call.user(),
            tpb::DeleteTaskRequest {
                id,
                force: a.force,
                keep_output_models: !a.delete_output_models,
                keep_external_files: !a.delete_external_artifacts,
            },
        )
        .await?;
    Ok(json!({
        "deleted": reply.deleted,
        "updated_children": 0,
        "updated_models": 0,
        "deleted_models": report.deleted_models,
        "events": { "deleted": report.events_deleted },
        "urls": urls(&report),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ArchiveArgs {
    tasks: StrList,
    ids: StrList,
    status_reason: String,
    status_message: String,
}

/// `tasks.archive`: adds the `archived` system tag (and dequeues).
pub(crate) async fn archive(call: Call) -> Result<Value, Error> {
    let a: ArchiveArgs = call.args()?;
    let mut ids = a.tasks.0;
    ids.extend(a.ids.0);
    if ids.is_empty() {
        return Err(missing("tasks"));
    }
    let reply = call
        .gw
        .archive(
            call.user(),
            tpb::ArchiveTasksRequest {
                ids,
                status_reason: a.status_reason,
                status_message: a.status_message,
            },
        )
        .await?;
    Ok(json!({ "archived": reply.updated }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CloneArgs {
    task: Option<String>,
    new_task_name: Option<String>,
    new_task_comment: Option<String>,
    new_task_tags: Option<Vec<String>>,
    new_task_system_tags: Option<Vec<String>>,
    new_task_parent: Option<String>,
    new_task_project: Option<String>,
    new_task_hyperparams: Option<JsonHyperParams>,
    new_task_configuration: Option<BTreeMap<String, JsonTyped>>,
    new_task_container: Option<Map<String, Value>>,
    execution_overrides: Option<JsonExecution>,
    new_project_name: Option<String>,
}

/// `tasks.clone`: a new draft from a task's inputs.
pub(crate) async fn clone(call: Call) -> Result<Value, Error> {
    let a: CloneArgs = call.args()?;
    let source = required(&a.task, "task")?.to_owned();
    let user = call.user().to_owned();
    let mut new_project = Value::Null;
    let mut project_id = a.new_task_project;
    if let Some(name) = a.new_project_name.filter(|n| !n.is_empty()) {
        let reply = call!(
            call.gw.clients.projects,
            create_project,
            &user,
            tasklab_proto::projects::v1::CreateProjectRequest {
                path: name.clone(),
                allow_existing: true,
                ..Default::default()
            }
        )?;
        let id = reply.project.map(|p| p.id).unwrap_or_default();
        new_project = json!({ "id": id, "name": name });
        project_id = Some(id);
    }
    let mut req = tpb::CloneTaskRequest {
        source_id: source.clone(),
        name: a.new_task_name.filter(|n| !n.is_empty()),
        comment: a.new_task_comment,
        project_id,
        parent_id: a.new_task_parent,
        tags: a.new_task_tags.map(|tags| tpb::TagList { tags }),
        system_tags: a.new_task_system_tags.map(|tags| tpb::TagList { tags }),
        container: a.new_task_container.as_ref().map(container_from_json),
        read_mask: Some(id_mask()),
        ..Default::default()
    };
    if let Some(h) = a.new_task_hyperparams {
        let (sections, properties) = hyperparams_from_json(h);
        req.hyperparams = Some(tpb::HyperParams { sections });
        req.user_properties = Some(tpb::TypedValues { values: properties });
    }
    if let Some(c) = a.new_task_configuration {
        req.configuration = Some(tpb::TypedValues {
            values: configuration_from_json(c),
        });
    }
    if let Some(over) = a.execution_overrides {
        // Overrides are partial: merge them into the source's execution.
        let src = call
            .gw
            .get_task(&user, &source, mask(&["id", "execution", "container"]))
            .await?;
        let mut execution = src.execution.unwrap_or_default();
        if !over.framework.0.is_empty() {
            execution.framework = over.framework.0.clone();
        }
        if !over.model_labels.is_empty() {
            execution.model_labels = over.model_labels.clone().into_iter().collect();
        }
        req.execution = Some(execution);
        if req.container.is_none()
            && let Some(cmd) = over.docker_cmd.as_deref().filter(|c| !c.is_empty())
        {
            req.container = Some(container_from_docker_cmd(cmd));
        }
    }
    let reply = call.gw.clone_task(&user, req).await?;
    let id = reply.task.map(|t| t.id).unwrap_or_default();
    let mut out = json!({ "id": id });
    if !new_project.is_null() {
        out["new_project"] = new_project;
    }
    Ok(out)
}

// ---- queues -------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EnqueueArgs {
    task: Option<String>,
    queue: Option<String>,
    queue_name: Option<String>,
    force: bool,
    status_reason: String,
    status_message: String,
}

/// `tasks.enqueue`: queued in `queue` (an id), else `queue_name` (created
/// when missing), else the default queue (400/707 when there is none).
pub(crate) async fn enqueue(call: Call) -> Result<Value, Error> {
    let a: EnqueueArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let reply = call
        .gw
        .enqueue(
            call.user(),
            tpb::EnqueueTaskRequest {
                id,
                options: Some(tpb::StatusChangeOptions {
                    force: a.force,
                    status_reason: a.status_reason,
                    status_message: a.status_message,
                    expected_status: 0,
                }),
                queue_id: a.queue.unwrap_or_default(),
                read_mask: status_mask(),
            },
            a.queue_name.as_deref(),
        )
        .await?;
    Ok(json!({
        "updated": reply.updated,
        "queued": 1,
        "fields": status_fields(reply.task.as_ref()),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DequeueArgs {
    task: Option<String>,
    status_reason: String,
    status_message: String,
    new_status: Option<String>,
}

/// `tasks.dequeue`: back to the status it had before it was queued (or
/// `new_status`).
pub(crate) async fn dequeue(call: Call) -> Result<Value, Error> {
    let a: DequeueArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let new_status = match a.new_status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => parse_status(s)? as i32,
        None => 0,
    };
    let (reply, removed) = call
        .gw
        .dequeue(
            call.user(),
            tpb::DequeueTaskRequest {
                id,
                options: Some(tpb::StatusChangeOptions {
                    force: false,
                    status_reason: a.status_reason,
                    status_message: a.status_message,
                    expected_status: 0,
                }),
                new_status,
                read_mask: status_mask(),
            },
        )
        .await?;
    Ok(json!({
        "updated": reply.updated,
        "dequeued": u32::from(removed || reply.updated > 0),
        "fields": status_fields(reply.task.as_ref()),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PingArgs {
    task: Option<String>,
}

/// `tasks.ping`: the task is alive (`last_update`). Like `tasks.started`,
/// it does not record the caller's `X-ClearML-Worker` host name as
/// `last_worker`.
pub(crate) async fn ping(call: Call) -> Result<Value, Error> {
    let a: PingArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    call!(
        call.gw.clients.tasks,
        ping_task,
        call.user(),
        tpb::PingTaskRequest {
            id,
            worker: String::new(),
        }
    )?;
    Ok(json!({}))
}

// ---- artifacts and models ------------------------------------------------------------------

/// Checks that the task exists and is not locked (published).
async fn check_unlocked(call: &Call, id: &str) -> Result<(), Error> {
    let task = call
        .gw
        .get_task(call.user(), id, mask(&["id", "status"]))
        .await?;
    let status = task.status;
    if status == tpb::TaskStatus::Published as i32 || status == tpb::TaskStatus::Publishing as i32 {
        return Err(Error::new(
            ErrorCode::TaskPublished,
            "task is published and cannot be changed",
        )
        .with_field("task", id)
        .with_field("status", status_name(status)));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ArtifactsArgs {
    task: Option<String>,
    artifacts: Vec<JsonArtifact>,
}

/// `tasks.add_or_update_artifacts`: upserted by (key, mode).
pub(crate) async fn add_or_update_artifacts(call: Call) -> Result<Value, Error> {
    let a: ArtifactsArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    if a.artifacts.is_empty() {
        return Err(Error::new(ErrorCode::EmptyBatch, "no artifacts given"));
    }
    check_unlocked(&call, &id).await?;
    let artifacts = a
        .artifacts
        .into_iter()
        .map(|art| art.into_pb(&id))
        .collect::<Result<Vec<_>, _>>()?;
    let reply = call!(
        call.gw.clients.artifacts,
        upsert_artifacts,
        call.user(),
        apb::UpsertArtifactsRequest {
            task_id: id.clone(),
            artifacts,
        }
    )?;
    Ok(json!({ "updated": reply.created + reply.updated }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ArtifactKeyArgs {
    key: String,
    mode: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeleteArtifactsArgs {
    task: Option<String>,
    artifacts: Vec<ArtifactKeyArgs>,
    delete_external_artifacts: bool,
}

/// `tasks.delete_artifacts`.
pub(crate) async fn delete_artifacts(call: Call) -> Result<Value, Error> {
    let a: DeleteArtifactsArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    if a.artifacts.is_empty() {
        return Err(Error::new(ErrorCode::EmptyBatch, "no artifacts given"));
    }
    check_unlocked(&call, &id).await?;
    let keys = a
        .artifacts
        .into_iter()
        .map(|k| {
            Ok(apb::ArtifactKey {
                key: k.key,
                mode: artifact_mode(&k.mode)? as i32,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let reply = call!(
        call.gw.clients.artifacts,
        delete_artifacts,
        call.user(),
        apb::DeleteArtifactsRequest {
            task_id: id,
            artifacts: keys,
            all: false,
            mode: 0,
            delete_blobs: a.delete_external_artifacts,
        }
    )?;
    Ok(json!({ "deleted": reply.deleted }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ModelArgs {
    task: Option<String>,
    name: Option<String>,
    model: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `tasks.add_or_update_model`: a reference from the task to a model.
pub(crate) async fn add_or_update_model(call: Call) -> Result<Value, Error> {
    let a: ModelArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let name = required(&a.name, "name")?.to_owned();
    let model = required(&a.model, "model")?.to_owned();
    call!(
        call.gw.clients.models,
        get_model,
        call.user(),
        apb::GetModelRequest {
            model_id: model.clone(),
            read_mask: mask(&["id"]),
        }
    )?;
    let reference = tpb::ModelRef {
        name,
        model_id: model,
        updated: None,
    };
    let mut req = tpb::SetModelsRequest {
        id,
        force: true,
        ..Default::default()
    };
    match a.kind.as_deref().unwrap_or("output") {
        "input" => req.input.push(reference),
        "output" => req.output.push(reference),
        other => {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("invalid model type {other:?} (input or output)"),
            ));
        }
    }
    let reply = call!(call.gw.clients.tasks, set_models, call.user(), req)?;
    Ok(json!({ "updated": reply.updated }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RequirementsArgs {
    task: Option<String>,
    requirements: Map<String, Value>,
}

/// `tasks.set_requirements`: `script.requirements`.
pub(crate) async fn set_requirements(call: Call) -> Result<Value, Error> {
    let a: RequirementsArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let reply = call!(
        call.gw.clients.tasks,
        set_requirements,
        call.user(),
        tpb::SetRequirementsRequest {
            id,
            requirements: Some(requirements_from_json(a.requirements)),
            force: true,
        }
    )?;
    Ok(json!({ "updated": reply.updated, "fields": echoed_fields(&call.body) }))
}

// ---- hyperparameters and configuration ------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EditParamsArgs {
    task: Option<String>,
    hyperparams: Vec<JsonTyped>,
    replace_hyperparams: Option<String>,
    force: bool,
}

/// `tasks.edit_hyper_params`: upsert by section and name; `replace_hyperparams`
/// `section` replaces the named sections, `all` every section.
pub(crate) async fn edit_hyper_params(call: Call) -> Result<Value, Error> {
    let a: EditParamsArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let replace = a.replace_hyperparams.as_deref().unwrap_or("none");
    let mut grouped: JsonHyperParams = BTreeMap::new();
    for p in a.hyperparams {
        let section = p.section.clone().unwrap_or_default();
        let name = p.name.clone().unwrap_or_default();
        if section.is_empty() || name.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "each hyperparameter needs a section and a name",
            ));
        }
        grouped.entry(section).or_default().insert(name, p);
    }
    let (sections, properties) = hyperparams_from_json(grouped);
    let user = call.user();
    if replace == "all" {
        let reply = call!(
            call.gw.clients.tasks,
            edit_task,
            user,
            tpb::EditTaskRequest {
                id,
                hyperparams: sections,
                user_properties: properties,
                update_mask: mask(&["hyperparams", "user_properties"]),
                force: a.force,
                read_mask: Some(id_mask()),
                ..Default::default()
            }
        )?;
        return Ok(json!({ "updated": reply.updated }));
    }
    let mut updated = 0;
    if !sections.is_empty() {
        updated += call!(
            call.gw.clients.tasks,
            set_hyper_params,
            user,
            tpb::SetHyperParamsRequest {
                id: id.clone(),
                hyperparams: sections,
                replace_sections: replace == "section",
                force: a.force,
            }
        )?
        .updated;
    }
    if !properties.is_empty() {
        updated += call!(
            call.gw.clients.tasks,
            set_user_properties,
            user,
            tpb::SetUserPropertiesRequest {
                id,
                user_properties: properties,
                replace_all: replace == "section",
                force: a.force,
            }
        )?
        .updated;
    }
    Ok(json!({ "updated": updated.min(1) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TasksArgs {
    tasks: StrList,
    names: Vec<String>,
}

fn flatten_params(task: &tpb::Task) -> Vec<Value> {
    let params = crate::http::convert::hyperparams_to_json(task);
    let mut out = Vec::new();
    if let Value::Object(sections) = params {
        for (_, section) in sections {
            if let Value::Object(values) = section {
                out.extend(values.into_values());
            }
        }
    }
    out
}

/// `tasks.get_hyper_params`: per task, the parameters as a flat list.
pub(crate) async fn get_hyper_params(call: Call) -> Result<Value, Error> {
    let a: TasksArgs = call.args()?;
    if a.tasks.is_empty() {
        return Err(missing("tasks"));
    }
    let mut params = Vec::new();
    for id in &a.tasks.0 {
        let task = call
            .gw
            .get_task(
                call.user(),
                id,
                mask(&["id", "hyperparams", "user_properties"]),
            )
            .await?;
        params.push(json!({ "task": id, "hyperparams": flatten_params(&task) }));
    }
    Ok(json!({ "params": params }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ParamKeyArgs {
    section: String,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeleteParamsArgs {
    task: Option<String>,
    hyperparams: Vec<ParamKeyArgs>,
    force: bool,
}

/// `tasks.delete_hyper_params`: by section and name, or whole sections.
pub(crate) async fn delete_hyper_params(call: Call) -> Result<Value, Error> {
    let a: DeleteParamsArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let (props, params): (Vec<_>, Vec<_>) = a
        .hyperparams
        .into_iter()
        .partition(|k| k.section == PROPERTIES_SECTION);
    let mut deleted = 0;
    if !params.is_empty() {
        deleted += call!(
            call.gw.clients.tasks,
            delete_hyper_params,
            call.user(),
            tpb::DeleteHyperParamsRequest {
                id: id.clone(),
                keys: params
                    .into_iter()
                    .map(|k| tpb::HyperParamKey {
                        section: k.section,
                        name: k.name,
                    })
                    .collect(),
                force: a.force,
            }
        )?
        .updated;
    }
    if !props.is_empty() {
        let names: Vec<String> = props.into_iter().map(|k| k.name).collect();
        let replace_all = names.iter().any(String::is_empty);
        let reply = if replace_all {
            call!(
                call.gw.clients.tasks,
                set_user_properties,
                call.user(),
                tpb::SetUserPropertiesRequest {
                    id,
                    user_properties: Default::default(),
                    replace_all: true,
                    force: a.force,
                }
            )?
            .updated
        } else {
            call!(
                call.gw.clients.tasks,
                delete_user_properties,
                call.user(),
                tpb::DeleteUserPropertiesRequest {
                    id,
                    names,
                    force: a.force,
                }
            )?
            .updated
        };
        deleted += reply;
    }
    Ok(json!({ "deleted": deleted.min(1) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EditConfigArgs {
    task: Option<String>,
    configuration: Vec<JsonTyped>,
    replace_configuration: bool,
    force: bool,
}

/// `tasks.edit_configuration`: upsert by name, or replace all.
pub(crate) async fn edit_configuration(call: Call) -> Result<Value, Error> {
    let a: EditConfigArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let mut items = BTreeMap::new();
    for item in a.configuration {
        let name = item.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "each configuration item needs a name",
            ));
        }
        items.insert(name, item);
    }
    let reply = call!(
        call.gw.clients.tasks,
        set_configuration,
        call.user(),
        tpb::SetConfigurationRequest {
            id,
            configuration: configuration_from_json(items),
            replace_all: a.replace_configuration,
            force: a.force,
        }
    )?;
    Ok(json!({ "updated": reply.updated }))
}

/// `tasks.get_configurations`: per task, the configuration items (only
/// `names` when given).
pub(crate) async fn get_configurations(call: Call) -> Result<Value, Error> {
    let a: TasksArgs = call.args()?;
    if a.tasks.is_empty() {
        return Err(missing("tasks"));
    }
    let mut out = Vec::new();
    for id in &a.tasks.0 {
        let task = call
            .gw
            .get_task(call.user(), id, mask(&["id", "configuration"]))
            .await?;
        let mut names: Vec<&String> = task.configuration.keys().collect();
        names.sort();
        let items: Vec<Value> = names
            .into_iter()
            .filter(|n| a.names.is_empty() || a.names.contains(n))
            .map(|n| {
                let v = &task.configuration[n];
                json!({"name": n, "value": v.value, "type": v.r#type, "description": v.description})
            })
            .collect();
        out.push(json!({ "task": id, "configuration": items }));
    }
    Ok(json!({ "configurations": out }))
}

/// `tasks.get_configuration_names`.
pub(crate) async fn get_configuration_names(call: Call) -> Result<Value, Error> {
    let a: TasksArgs = call.args()?;
    if a.tasks.is_empty() {
        return Err(missing("tasks"));
    }
    let mut out = Vec::new();
    for id in &a.tasks.0 {
        let task = call
            .gw
            .get_task(call.user(), id, mask(&["id", "configuration"]))
            .await?;
        let mut names: Vec<&String> = task.configuration.keys().collect();
        names.sort();
        out.push(json!({ "task": id, "names": names }));
    }
    Ok(json!({ "configurations": out }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeleteConfigArgs {
    task: Option<String>,
    configuration: StrList,
    force: bool,
}

/// `tasks.delete_configuration`: by name.
pub(crate) async fn delete_configuration(call: Call) -> Result<Value, Error> {
    let a: DeleteConfigArgs = call.args()?;
    let id = required(&a.task, "task")?.to_owned();
    let reply = call!(
        call.gw.clients.tasks,
        delete_configuration,
        call.user(),
        tpb::DeleteConfigurationRequest {
            id,
            names: a.configuration.0,
            force: a.force,
        }
    )?;
    Ok(json!({ "deleted": reply.updated }))
}
