//! `models.*`: the model registry (artifacts service) and its links to tasks.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::artifacts::v1 as apb;
use tasklab_proto::tasks::v1 as tpb;

use super::{Paging, collect_pages, missing};
use crate::http::Call;
use crate::http::args::{StrList, Text, required};
use crate::http::convert::{design_text, model_to_json, order_by, project_fields, tag_filter};

/// The model fields accepted by create and edit.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ModelFields {
    model: Option<String>,
    uri: Option<String>,
    name: Option<String>,
    comment: Option<String>,
    tags: Option<Vec<String>>,
    system_tags: Option<Vec<String>>,
    framework: Option<String>,
    design: Option<Value>,
    labels: Option<HashMap<String, i64>>,
    ready: Option<bool>,
    project: Option<String>,
    parent: Option<String>,
    task: Option<String>,
    iteration: Option<i64>,
    metadata: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MetadataItem {
    key: Text,
    #[serde(rename = "type")]
    kind: Text,
    value: Text,
}

/// ClearML model metadata: a list of `{key, type, value}` or a map of them.
fn metadata(value: &Value) -> Result<HashMap<String, apb::MetadataItem>, Error> {
    let items: Vec<Value> = match value {
        Value::Array(items) => items.clone(),
        Value::Object(map) => map.values().cloned().collect(),
        _ => {
            return Err(Error::new(
                ErrorCode::MalformedRequest,
                "metadata must be a list of {key, type, value}",
            ));
        }
    };
    let mut out = HashMap::new();
    for item in items {
        let item: MetadataItem = serde_json::from_value(item).map_err(|e| {
            Error::new(
                ErrorCode::MalformedRequest,
                format!("invalid metadata item: {e}"),
            )
        })?;
        out.insert(
            item.key.0.clone(),
            apb::MetadataItem {
                key: item.key.0,
                r#type: item.kind.0,
                value: item.value.0,
            },
        );
    }
    Ok(out)
}

/// `models.create`: a draft model.
pub(crate) async fn create(call: Call) -> Result<Value, Error> {
    let f: ModelFields = call.args()?;
    let name = required(&f.name, "name")?.to_owned();
    let model = apb::Model {
        name,
        project_id: f.project.unwrap_or_default(),
        task_id: f.task.unwrap_or_default(),
        comment: f.comment.unwrap_or_default(),
        tags: f.tags.unwrap_or_default(),
        system_tags: f.system_tags.unwrap_or_default(),
        framework: f.framework.unwrap_or_default(),
        design: f.design.as_ref().map(design_text).unwrap_or_default(),
        labels: f.labels.unwrap_or_default(),
        uri: f.uri.unwrap_or_default(),
        ready: f.ready.unwrap_or(false),
        metadata: match &f.metadata {
            Some(m) => metadata(m)?,
            None => HashMap::new(),
        },
        iteration: f.iteration,
        parent_id: f.parent.unwrap_or_default(),
        ..Default::default()
    };
    let reply = call!(
        call.gw.clients.models,
        create_model,
        call.user(),
        apb::CreateModelRequest { model: Some(model) }
    )?;
    let id = reply.model.map(|m| m.id).unwrap_or_default();
    tracing::info!(model_id = %id, "model created");
    Ok(json!({ "id": id, "created": true }))
}

/// `models.edit` / `models.update`: the fields given.
pub(crate) async fn edit(call: Call) -> Result<Value, Error> {
    let f: ModelFields = call.args()?;
    let id = required(&f.model, "model")?.to_owned();
    let mut model = apb::Model {
        id: id.clone(),
        ..Default::default()
    };
    let mut paths: Vec<String> = Vec::new();
    macro_rules! set {
        ($field:ident => $target:ident, $path:literal) => {
            if let Some(v) = f.$field {
                model.$target = v;
                paths.push($path.to_owned());
            }
        };
    }
    set!(name => name, "name");
    set!(comment => comment, "comment");
    set!(tags => tags, "tags");
    set!(system_tags => system_tags, "system_tags");
    set!(framework => framework, "framework");
    set!(labels => labels, "labels");
    set!(uri => uri, "uri");
    set!(ready => ready, "ready");
    set!(project => project_id, "project_id");
    set!(parent => parent_id, "parent_id");
    set!(task => task_id, "task_id");
    if let Some(d) = &f.design {
        model.design = design_text(d);
        paths.push("design".to_owned());
    }
    if let Some(i) = f.iteration {
        model.iteration = Some(i);
        paths.push("iteration".to_owned());
    }
    if let Some(m) = &f.metadata {
        model.metadata = metadata(m)?;
        paths.push("metadata".to_owned());
    }
    if paths.is_empty() {
        return Ok(json!({ "updated": 0, "fields": {} }));
    }
    call!(
        call.gw.clients.models,
        update_model,
        call.user(),
        apb::UpdateModelRequest {
            model: Some(model),
            update_mask: Some(prost_types::FieldMask { paths }),
        }
    )?;
    let mut fields = call.body.as_object().cloned().unwrap_or_default();
    fields.remove("model");
    fields.remove("method");
    Ok(json!({ "updated": 1, "fields": fields }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ByIdArgs {
    model: Option<String>,
}

/// `models.get_by_id`.
pub(crate) async fn get_by_id(call: Call) -> Result<Value, Error> {
    let a: ByIdArgs = call.args()?;
    let id = required(&a.model, "model")?.to_owned();
    let reply = call!(
        call.gw.clients.models,
        get_model,
        call.user(),
        apb::GetModelRequest {
            model_id: id.clone(),
            read_mask: None,
        }
    )?;
    let model = reply
        .model
        .ok_or_else(|| Error::not_found(ErrorCode::ModelNotFound, "model", &id))?;
    Ok(json!({ "model": model_to_json(&model) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GetAllArgs {
    id: StrList,
    name: Option<String>,
    project: StrList,
    task: StrList,
    user: StrList,
    tags: StrList,
    system_tags: StrList,
    framework: StrList,
    ready: Option<bool>,
    only_fields: Vec<String>,
    order_by: StrList,
    page: Option<i64>,
    page_size: Option<i64>,
}

fn model_order_field(field: &str) -> String {
    match field {
        "last_iteration" => "iteration".to_owned(),
        other => other.to_owned(),
    }
}

/// `models.get_all`: `name` is an unanchored regular expression; archived
/// models are listed unless excluded with `system_tags: ["-archived"]`.
pub(crate) async fn get_all(call: Call) -> Result<Value, Error> {
    let a: GetAllArgs = call.args()?;
    let base = apb::ListModelsRequest {
        ids: a.id.0,
        project_ids: a.project.0,
        name_pattern: a.name.unwrap_or_default(),
        tags: tag_filter(&a.tags.0),
        system_tags: tag_filter(&a.system_tags.0),
        frameworks: a.framework.0,
        ready: a.ready,
        published: None,
        task_ids: a.task.0,
        user_ids: a.user.0,
        include_archived: true,
        page: None,
        order_by: order_by(&a.order_by.0, &model_order_field),
        read_mask: None,
    };
    let user = call.user().to_owned();
    let gw = call.gw.clone();
    let models = collect_pages(
        Paging {
            page: a.page,
            page_size: a.page_size,
        },
        |page| {
            let (gw, user) = (gw.clone(), user.clone());
            let mut req = base.clone();
            req.page = page;
            async move {
                let reply = call!(gw.clients.models, list_models, &user, req)?;
                Ok((reply.models, reply.page))
            }
        },
    )
    .await?;
    let models: Vec<Value> = models
        .iter()
        .map(|m| project_fields(model_to_json(m), &a.only_fields))
        .collect();
    Ok(json!({ "models": models }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateForTaskArgs {
    task: Option<String>,
    uri: Option<String>,
    name: Option<String>,
    comment: Option<String>,
    tags: Option<Vec<String>>,
    override_model_id: Option<String>,
    iteration: Option<i64>,
}

/// `models.update_for_task` (older SDK path): creates (or updates) the
/// task's output model and links it as the task's output.
pub(crate) async fn update_for_task(call: Call) -> Result<Value, Error> {
    let a: UpdateForTaskArgs = call.args()?;
    let task_id = required(&a.task, "task")?.to_owned();
    let user = call.user().to_owned();
    let task = call
        .gw
        .get_task(
            &user,
            &task_id,
            Some(prost_types::FieldMask {
                paths: vec!["id".into(), "name".into(), "project_id".into()],
            }),
        )
        .await?;
    let (model_id, created) = match a.override_model_id.filter(|id| !id.is_empty()) {
        Some(id) => {
            let mut paths = vec!["task_id".to_owned()];
            let mut model = apb::Model {
                id: id.clone(),
                task_id: task_id.clone(),
                ..Default::default()
            };
            if let Some(uri) = a.uri.clone() {
                model.uri = uri;
                paths.push("uri".into());
            }
            if let Some(i) = a.iteration {
                model.iteration = Some(i);
                paths.push("iteration".into());
            }
            call!(
                call.gw.clients.models,
                update_model,
                &user,
                apb::UpdateModelRequest {
                    model: Some(model),
                    update_mask: Some(prost_types::FieldMask { paths }),
                }
            )?;
            (id, false)
        }
        None => {
            let uri = required(&a.uri, "uri")?.to_owned();
            let reply = call!(
                call.gw.clients.models,
                create_model,
                &user,
                apb::CreateModelRequest {
                    model: Some(apb::Model {
                        name: a.name.unwrap_or_else(|| task.name.clone()),
                        project_id: task.project_id.clone(),
                        task_id: task_id.clone(),
                        comment: a.comment.unwrap_or_default(),
                        tags: a.tags.unwrap_or_default(),
                        uri,
                        ready: true,
                        iteration: a.iteration,
                        ..Default::default()
                    }),
                }
            )?;
            (reply.model.map(|m| m.id).unwrap_or_default(), true)
        }
    };
    let reply = call!(
        call.gw.clients.tasks,
        set_models,
        &user,
        tpb::SetModelsRequest {
            id: task_id,
            output: vec![tpb::ModelRef {
                name: "Output Model".into(),
                model_id: model_id.clone(),
                updated: None,
            }],
            force: true,
            ..Default::default()
        }
    )?;
    Ok(json!({ "id": model_id, "created": created, "updated": reply.updated }))
}

/// `models.set_ready`.
pub(crate) async fn set_ready(call: Call) -> Result<Value, Error> {
    let a: ByIdArgs = call.args()?;
    let id = required(&a.model, "model")?.to_owned();
    call!(
        call.gw.clients.models,
        set_model_ready,
        call.user(),
        apb::SetModelReadyRequest { model_id: id }
    )?;
    Ok(json!({ "updated": 1, "published_task": null }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PublishManyArgs {
    ids: StrList,
}

/// `models.publish_many`: per-model results.
pub(crate) async fn publish_many(call: Call) -> Result<Value, Error> {
    let a: PublishManyArgs = call.args()?;
    if a.ids.is_empty() {
        return Err(missing("ids"));
    }
    let mut succeeded = Vec::new();
    let mut failed = Vec::new();
    for id in a.ids.0 {
        match call!(
            call.gw.clients.models,
            publish_model,
            call.user(),
            apb::PublishModelRequest {
                model_id: id.clone(),
            }
        ) {
            Ok(reply) => succeeded.push(json!({
                "id": id,
                "updated": u32::from(!reply.already_published),
                "published_task": null,
            })),
            Err(e) => {
                let (code, subcode) = e.code().clearml_codes();
                failed.push(json!({
                    "id": id,
                    "error": { "codes": [code, subcode], "msg": e.message(), "data": {} },
                }));
            }
        }
    }
    Ok(json!({ "succeeded": succeeded, "failed": failed }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MetadataArgs {
    model: Option<String>,
    metadata: Option<Value>,
    replace_metadata: bool,
}

/// `models.add_or_update_metadata`: by key, or replacing all.
pub(crate) async fn add_or_update_metadata(call: Call) -> Result<Value, Error> {
    let a: MetadataArgs = call.args()?;
    let id = required(&a.model, "model")?.to_owned();
    let items = match &a.metadata {
        Some(m) => metadata(m)?,
        None => return Err(missing("metadata")),
    };
    let paths = if a.replace_metadata {
        vec!["metadata".to_owned()]
    } else {
        items.keys().map(|k| format!("metadata.{k}")).collect()
    };
    if paths.is_empty() {
        return Ok(json!({ "updated": 0 }));
    }
    call!(
        call.gw.clients.models,
        update_model,
        call.user(),
        apb::UpdateModelRequest {
            model: Some(apb::Model {
                id,
                metadata: items,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        }
    )?;
    Ok(json!({ "updated": 1 }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeleteArgs {
    model: Option<String>,
    force: bool,
    delete_external_artifacts: Option<bool>,
}

/// `models.delete`.
pub(crate) async fn delete(call: Call) -> Result<Value, Error> {
    let a: DeleteArgs = call.args()?;
    let id = required(&a.model, "model")?.to_owned();
    let reply = call!(
        call.gw.clients.models,
        delete_model,
        call.user(),
        apb::DeleteModelRequest {
            model_id: id,
            force: a.force,
            delete_blob: a.delete_external_artifacts.unwrap_or(true),
            used_by_task_ids: vec![],
        }
    )?;
    let url = reply.model.map(|m| m.uri).unwrap_or_default();
    Ok(json!({ "deleted": true, "url": url }))
}
