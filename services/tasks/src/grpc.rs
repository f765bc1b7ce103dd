//! gRPC surface of the tasks service: converts `tasklab.tasks.v1` messages
//! to the domain core's types and back, applies read masks, and turns domain
//! errors into statuses with `.into()`. No rule lives here.

use std::collections::{BTreeMap, HashMap};

use chrono::DateTime;
use prost_types::{FieldMask, Timestamp as PbTimestamp};
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::common::v1 as common;
use tasklab_proto::tasks::v1::{self as pb, tasks_service_server::TasksService};
use tonic::{Request, Response, Status};

use crate::model::{
    Container, Execution, HyperParams, ModelRef, Output, Requirements, Runtime, Script, Sections,
    Task, TaskModels, TaskStatus, TaskType, Timestamp, TypedValue, TypedValues,
};
use crate::service::{
    Cleanup, CloneTask, HyperParamKey, ListRequest, NewTask, StatusChange, TaskEdit, TaskService,
    TaskUpdate, Transition,
};
use crate::store::{TagFilter, TimeRange};

/// gRPC metadata entry in which the gateway passes the id of the
/// authenticated caller (the same key every tasklab service reads).
pub(crate) const USER_METADATA_KEY: &str = "tasklab-user-id";

/// Serves `TasksService` from the domain core.
#[derive(Debug, Clone)]
pub(crate) struct TasksGrpc {
    service: TaskService,
}

impl TasksGrpc {
    pub(crate) fn new(service: TaskService) -> Self {
        TasksGrpc { service }
    }
}

/// The authenticated caller's id; empty when called without one.
fn caller<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get(USER_METADATA_KEY)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

// ---- scalars ---------------------------------------------------------------------

fn ts(t: Timestamp) -> PbTimestamp {
    PbTimestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn opt_ts(t: Option<Timestamp>) -> Option<PbTimestamp> {
    t.map(ts)
}

fn from_ts(t: &PbTimestamp, field: &str) -> Result<Timestamp, Error> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| Error::invalid(format!("{field} is not a valid timestamp")))
}

fn range(r: Option<common::TimeRange>, field: &str) -> Result<TimeRange, Error> {
    let r = r.unwrap_or_default();
    Ok(TimeRange {
        start: r.start.as_ref().map(|t| from_ts(t, field)).transpose()?,
        end: r.end.as_ref().map(|t| from_ts(t, field)).transpose()?,
    })
}

fn status_to_pb(s: TaskStatus) -> i32 {
    let pb = match s {
        TaskStatus::Created => pb::TaskStatus::Created,
        TaskStatus::Queued => pb::TaskStatus::Queued,
        TaskStatus::InProgress => pb::TaskStatus::InProgress,
        TaskStatus::Stopped => pb::TaskStatus::Stopped,
        TaskStatus::Failed => pb::TaskStatus::Failed,
        TaskStatus::Completed => pb::TaskStatus::Completed,
        TaskStatus::Closed => pb::TaskStatus::Closed,
        TaskStatus::Publishing => pb::TaskStatus::Publishing,
        TaskStatus::Published => pb::TaskStatus::Published,
    };
    pb as i32
}

/// A status, `None` for unspecified; an unknown value is `invalid_argument`.
fn status_from_pb(value: i32, field: &str) -> Result<Option<TaskStatus>, Error> {
    let status = pb::TaskStatus::try_from(value)
        .map_err(|_| Error::invalid(format!("{field} has an unknown status {value}")))?;
    Ok(match status {
        pb::TaskStatus::Unspecified => None,
        pb::TaskStatus::Created => Some(TaskStatus::Created),
        pb::TaskStatus::Queued => Some(TaskStatus::Queued),
        pb::TaskStatus::InProgress => Some(TaskStatus::InProgress),
        pb::TaskStatus::Stopped => Some(TaskStatus::Stopped),
        pb::TaskStatus::Failed => Some(TaskStatus::Failed),
        pb::TaskStatus::Completed => Some(TaskStatus::Completed),
        pb::TaskStatus::Closed => Some(TaskStatus::Closed),
        pb::TaskStatus::Publishing => Some(TaskStatus::Publishing),
        pb::TaskStatus::Published => Some(TaskStatus::Published),
    })
}

fn type_to_pb(t: TaskType) -> i32 {
    let pb = match t {
        TaskType::Training => pb::TaskType::Training,
        TaskType::Testing => pb::TaskType::Testing,
        TaskType::Inference => pb::TaskType::Inference,
        TaskType::DataProcessing => pb::TaskType::DataProcessing,
        TaskType::Application => pb::TaskType::Application,
        TaskType::Monitor => pb::TaskType::Monitor,
        TaskType::Controller => pb::TaskType::Controller,
        TaskType::Optimizer => pb::TaskType::Optimizer,
        TaskType::Service => pb::TaskType::Service,
        TaskType::Qc => pb::TaskType::Qc,
        TaskType::Custom => pb::TaskType::Custom,
    };
    pb as i32
}

/// A type, `None` for unspecified; an unknown value is `invalid_task_type`.
fn type_from_pb(value: i32) -> Result<Option<TaskType>, Error> {
    let t = pb::TaskType::try_from(value).map_err(|_| {
        Error::new(
            ErrorCode::InvalidTaskType,
            format!("unknown task type {value}"),
        )
        .with_field("type", value.to_string())
    })?;
    Ok(match t {
        pb::TaskType::Unspecified => None,
        pb::TaskType::Training => Some(TaskType::Training),
        pb::TaskType::Testing => Some(TaskType::Testing),
        pb::TaskType::Inference => Some(TaskType::Inference),
        pb::TaskType::DataProcessing => Some(TaskType::DataProcessing),
        pb::TaskType::Application => Some(TaskType::Application),
        pb::TaskType::Monitor => Some(TaskType::Monitor),
        pb::TaskType::Controller => Some(TaskType::Controller),
        pb::TaskType::Optimizer => Some(TaskType::Optimizer),
        pb::TaskType::Service => Some(TaskType::Service),
        pb::TaskType::Qc => Some(TaskType::Qc),
        pb::TaskType::Custom => Some(TaskType::Custom),
    })
}

// ---- sections ----------------------------------------------------------------------

fn typed_values_from_pb(
    values: HashMap<String, common::TypedValue>,
    what: &str,
) -> Result<TypedValues, Error> {
    values
        .into_iter()
        .map(|(key, v)| {
            if key.is_empty() {
                return Err(Error::invalid(format!("{what} names must not be empty")));
            }
            if !v.name.is_empty() && v.name != key {
                return Err(Error::invalid(format!(
                    "{what} {key:?} carries the different name {:?}",
                    v.name
                ))
                .with_field("key", key.as_str()));
            }
            Ok((
                key,
                TypedValue {
                    value: v.value,
                    value_type: v.r#type,
                    description: v.description,
                },
            ))
        })
        .collect()
}

fn typed_values_to_pb(values: &TypedValues) -> HashMap<String, common::TypedValue> {
    values
        .iter()
        .map(|(name, v)| {
            (
                name.clone(),
                common::TypedValue {
                    name: name.clone(),
                    value: v.value.clone(),
                    r#type: v.value_type.clone(),
                    description: v.description.clone(),
                },
            )
        })
        .collect()
}

fn hyperparams_from_pb(
    sections: HashMap<String, pb::HyperParamSection>,
) -> Result<HyperParams, Error> {
    sections
        .into_iter()
        .map(|(section, s)| {
            if section.is_empty() {
                return Err(Error::invalid(
                    "hyperparameter section names must not be empty",
                ));
            }
            Ok((section, typed_values_from_pb(s.params, "hyperparameter")?))
        })
        .collect()
}

fn hyperparams_to_pb(params: &HyperParams) -> HashMap<String, pb::HyperParamSection> {
    params
        .iter()
        .map(|(section, values)| {
            (
                section.clone(),
                pb::HyperParamSection {
                    params: typed_values_to_pb(values),
                },
            )
        })
        .collect()
}

fn requirements_from_pb(r: Option<pb::Requirements>) -> Requirements {
    let r = r.unwrap_or_default();
    Requirements {
        pip: r.pip,
        conda: r.conda,
        orig_pip: r.orig_pip,
        other: r.other.into_iter().collect(),
    }
}

fn requirements_to_pb(r: &Requirements) -> pb::Requirements {
    pb::Requirements {
        pip: r.pip.clone(),
        conda: r.conda.clone(),
        orig_pip: r.orig_pip.clone(),
        other: r
            .other
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn script_from_pb(s: Option<pb::Script>) -> Script {
    let s = s.unwrap_or_default();
    Script {
        repository: s.repository,
        branch: s.branch,
        tag: s.tag,
        version_num: s.version_num,
        entry_point: s.entry_point,
        working_dir: s.working_dir,
        binary: s.binary,
        diff: s.diff,
        requirements: requirements_from_pb(s.requirements),
    }
}

fn script_to_pb(s: &Script) -> pb::Script {
    pb::Script {
        repository: s.repository.clone(),
        branch: s.branch.clone(),
        tag: s.tag.clone(),
        version_num: s.version_num.clone(),
        entry_point: s.entry_point.clone(),
        working_dir: s.working_dir.clone(),
        binary: s.binary.clone(),
        diff: s.diff.clone(),
        requirements: Some(requirements_to_pb(&s.requirements)),
    }
}

fn container_from_pb(c: Option<pb::Container>) -> Container {
    let c = c.unwrap_or_default();
    Container {
        image: c.image,
        arguments: c.arguments,
        setup_shell_script: c.setup_shell_script,
    }
}

fn execution_from_pb(e: Option<pb::Execution>) -> Execution {
    let e = e.unwrap_or_default();
    Execution {
        queue_id: String::new(),
        framework: e.framework,
        model_labels: e.model_labels.into_iter().collect(),
    }
}

fn output_from_pb(o: Option<pb::Output>) -> Output {
    let o = o.unwrap_or_default();
    Output {
        destination: o.destination,
        result: o.result,
        error: o.error,
    }
}

fn model_refs_from_pb(refs: Vec<pb::ModelRef>) -> Vec<ModelRef> {
    refs.into_iter()
        .map(|r| ModelRef {
            name: r.name,
            model_id: r.model_id,
            updated: None,
        })
        .collect()
}

fn model_refs_to_pb(refs: &[ModelRef]) -> Vec<pb::ModelRef> {
    refs.iter()
        .map(|r| pb::ModelRef {
            name: r.name.clone(),
            model_id: r.model_id.clone(),
            updated: opt_ts(r.updated),
        })
        .collect()
}

fn models_from_pb(m: Option<pb::TaskModels>) -> TaskModels {
    let m = m.unwrap_or_default();
    TaskModels {
        input: model_refs_from_pb(m.input),
        output: model_refs_from_pb(m.output),
    }
}

fn json_from_pb(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(runtime_from_pb(Some(s))),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(json_from_pb).collect())
        }
    }
}

fn runtime_from_pb(s: Option<prost_types::Struct>) -> Runtime {
    s.unwrap_or_default()
        .fields
        .into_iter()
        .map(|(k, v)| (k, json_from_pb(v)))
        .collect()
}

fn json_to_pb(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_pb).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(runtime_to_pb(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn runtime_to_pb(r: &Runtime) -> prost_types::Struct {
    prost_types::Struct {
        fields: r.iter().map(|(k, v)| (k.clone(), json_to_pb(v))).collect(),
    }
}

/// The full message of a task (joined fields empty).
fn task_to_pb(t: &Task) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        name: t.name.clone(),
        project_id: t.project_id.clone(),
        r#type: type_to_pb(t.task_type),
        status: status_to_pb(t.status),
        status_reason: t.status_reason.clone(),
        status_message: t.status_message.clone(),
        status_changed: opt_ts(t.status_changed),
        comment: t.comment.clone(),
        tags: t.tags.clone(),
        system_tags: t.system_tags.clone(),
        parent_id: t.parent_id.clone(),
        user: t.user.clone(),
        created: Some(ts(t.created)),
        started: opt_ts(t.started),
        completed: opt_ts(t.completed),
        published: opt_ts(t.published),
        last_update: Some(ts(t.last_update)),
        last_change: opt_ts(t.last_change),
        last_changed_by: t.last_changed_by.clone(),
        last_worker: t.last_worker.clone(),
        last_worker_report: opt_ts(t.last_worker_report),
        enqueue_status: t.enqueue_status.map_or(0, status_to_pb),
        script: Some(script_to_pb(&t.script)),
        container: Some(pb::Container {
            image: t.container.image.clone(),
            arguments: t.container.arguments.clone(),
            setup_shell_script: t.container.setup_shell_script.clone(),
        }),
        execution: Some(pb::Execution {
            queue_id: t.execution.queue_id.clone(),
            framework: t.execution.framework.clone(),
            model_labels: t
                .execution
                .model_labels
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }),
        output: Some(pb::Output {
            destination: t.output.destination.clone(),
            result: t.output.result.clone(),
            error: t.output.error.clone(),
        }),
        hyperparams: hyperparams_to_pb(&t.hyperparams),
        configuration: typed_values_to_pb(&t.configuration),
        user_properties: typed_values_to_pb(&t.user_properties),
        runtime: Some(runtime_to_pb(&t.runtime)),
        models: Some(pb::TaskModels {
            input: model_refs_to_pb(&t.models.input),
            output: model_refs_to_pb(&t.models.output),
        }),
        artifacts: Vec::new(),
        last_iteration: 0,
        last_metrics: Vec::new(),
    }
}

// ---- read masks ------------------------------------------------------------------

/// What a path below a field may be.
#[derive(Clone, Copy)]
enum Shape {
    /// A scalar or a list: no sub-path.
    Leaf,
    /// A message with these fields.
    Message(&'static [(&'static str, Shape)]),
    /// A map: any key, then this shape.
    Map(&'static Shape),
    /// Owned by another service: any sub-path is accepted.
    Joined,
}

const REQUIREMENTS: Shape = Shape::Message(&[
    ("pip", Shape::Leaf),
    ("conda", Shape::Leaf),
    ("orig_pip", Shape::Leaf),
    ("other", Shape::Map(&Shape::Leaf)),
]);

const TASK_SHAPE: &[(&str, Shape)] = &[
    ("id", Shape::Leaf),
    ("name", Shape::Leaf),
    ("project_id", Shape::Leaf),
    ("type", Shape::Leaf),
    ("status", Shape::Leaf),
    ("status_reason", Shape::Leaf),
    ("status_message", Shape::Leaf),
    ("status_changed", Shape::Leaf),
    ("comment", Shape::Leaf),
    ("tags", Shape::Leaf),
    ("system_tags", Shape::Leaf),
    ("parent_id", Shape::Leaf),
    ("user", Shape::Leaf),
    ("created", Shape::Leaf),
    ("started", Shape::Leaf),
    ("completed", Shape::Leaf),
    ("published", Shape::Leaf),
    ("last_update", Shape::Leaf),
    ("last_change", Shape::Leaf),
    ("last_changed_by", Shape::Leaf),
    ("last_worker", Shape::Leaf),
    ("last_worker_report", Shape::Leaf),
    ("enqueue_status", Shape::Leaf),
    (
        "script",
        Shape::Message(&[
            ("repository", Shape::Leaf),
            ("branch", Shape::Leaf),
            ("tag", Shape::Leaf),
            ("version_num", Shape::Leaf),
            ("entry_point", Shape::Leaf),
            ("working_dir", Shape::Leaf),
            ("binary", Shape::Leaf),
            ("diff", Shape::Leaf),
            ("requirements", REQUIREMENTS),
        ]),
    ),
    (
        "container",
        Shape::Message(&[
            ("image", Shape::Leaf),
            ("arguments", Shape::Leaf),
            ("setup_shell_script", Shape::Leaf),
        ]),
    ),
    (
        "execution",
        Shape::Message(&[
            ("queue_id", Shape::Leaf),
            ("framework", Shape::Leaf),
            ("model_labels", Shape::Map(&Shape::Leaf)),
        ]),
    ),
    (
        "output",
        Shape::Message(&[
            ("destination", Shape::Leaf),
            ("result", Shape::Leaf),
            ("error", Shape::Leaf),
        ]),
    ),
    ("hyperparams", Shape::Map(&Shape::Map(&Shape::Leaf))),
    ("configuration", Shape::Map(&Shape::Leaf)),
    ("user_properties", Shape::Map(&Shape::Leaf)),
    ("runtime", Shape::Map(&Shape::Leaf)),
    (
        "models",
        Shape::Message(&[("input", Shape::Leaf), ("output", Shape::Leaf)]),
    ),
    ("artifacts", Shape::Joined),
    ("last_iteration", Shape::Leaf),
    ("last_metrics", Shape::Joined),
];

/// A parsed read mask: the selected paths as a tree. A node that was named
/// whole has `whole` set and selects everything below it.
#[derive(Debug, Clone, Default)]
struct Mask {
    whole: bool,
    children: BTreeMap<String, Mask>,
}

impl Mask {
    /// `None` for an empty mask (every field).
    fn parse(mask: Option<FieldMask>) -> Result<Option<Mask>, Error> {
        let paths = mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Ok(None);
        }
        let mut root = Mask::default();
        for path in &paths {
            let unknown = || {
                Error::invalid(format!("unknown read_mask path {path:?}"))
                    .with_field("path", path.as_str())
            };
            let mut node = &mut root;
            let mut shape = Shape::Message(TASK_SHAPE);
            for part in path.split('.') {
                if part.is_empty() {
                    return Err(unknown());
                }
                shape = match shape {
                    Shape::Leaf => return Err(unknown()),
                    Shape::Joined => Shape::Joined,
                    Shape::Map(inner) => *inner,
                    Shape::Message(fields) => fields
                        .iter()
                        .find(|(name, _)| *name == part)
                        .map(|(_, s)| *s)
                        .ok_or_else(unknown)?,
                };
                node = node.children.entry(part.to_owned()).or_default();
            }
            node.whole = true;
        }
        Ok(Some(root))
    }

    /// The sub-mask of `field`: `None` when not selected.
    fn get(&self, field: &str) -> Option<&Mask> {
        if self.whole {
            return Some(self);
        }
        self.children.get(field)
    }

    fn has(&self, field: &str) -> bool {
        self.get(field).is_some()
    }
}

fn sections_of(mask: Option<&Mask>) -> Sections {
    let Some(m) = mask else { return Sections::ALL };
    Sections {
        script: m.has("script"),
        container: m.has("container"),
        execution: m.has("execution"),
        hyperparams: m.has("hyperparams"),
        configuration: m.has("configuration"),
        user_properties: m.has("user_properties"),
        runtime: m.has("runtime"),
        models: m.has("models"),
    }
}

macro_rules! keep_fields {
    ($msg:expr, $mask:expr, [$($field:ident),* $(,)?]) => {
        $(
            if !$mask.has(stringify!($field)) {
                $msg.$field = Default::default();
            }
        )*
    };
}

fn mask_map<V>(map: &mut HashMap<String, V>, mask: &Mask, mut inner: impl FnMut(&mut V, &Mask)) {
    if mask.whole {
        return;
    }
    map.retain(|key, _| mask.children.contains_key(key));
    for (key, value) in map.iter_mut() {
        if let Some(sub) = mask.children.get(key) {
            inner(value, sub);
        }
    }
}

fn mask_message<M>(
    field: &mut Option<M>,
    mask: &Mask,
    name: &str,
    inner: impl FnOnce(&mut M, &Mask),
) {
    match mask.get(name) {
        None => *field = None,
        Some(sub) if !sub.whole => {
            if let Some(m) = field.as_mut() {
                inner(m, sub);
            }
        }
        Some(_) => {}
    }
}

fn apply_mask(t: &mut pb::Task, mask: &Mask) {
    keep_fields!(
        t,
        mask,
        [
            id,
            name,
            project_id,
            status,
            status_reason,
            status_message,
            status_changed,
            comment,
            tags,
            system_tags,
            parent_id,
            user,
            created,
            started,
            completed,
            published,
            last_update,
            last_change,
            last_changed_by,
            last_worker,
            last_worker_report,
            enqueue_status,
            artifacts,
            last_iteration,
            last_metrics,
        ]
    );
    if !mask.has("type") {
        t.r#type = 0;
    }
    mask_message(&mut t.script, mask, "script", |s, m| {
        keep_fields!(
            s,
            m,
            [
                repository,
                branch,
                tag,
                version_num,
                entry_point,
                working_dir,
                binary,
                diff
            ]
        );
        mask_message(&mut s.requirements, m, "requirements", |r, m| {
            keep_fields!(r, m, [pip, conda, orig_pip]);
            match m.get("other") {
                None => r.other.clear(),
                Some(sub) => mask_map(&mut r.other, sub, |_, _| {}),
            }
        });
    });
    mask_message(&mut t.container, mask, "container", |c, m| {
        keep_fields!(c, m, [image, arguments, setup_shell_script]);
    });
    mask_message(&mut t.execution, mask, "execution", |e, m| {
        keep_fields!(e, m, [queue_id, framework]);
        match m.get("model_labels") {
            None => e.model_labels.clear(),
            Some(sub) => mask_map(&mut e.model_labels, sub, |_, _| {}),
        }
    });
    mask_message(&mut t.output, mask, "output", |o, m| {
        keep_fields!(o, m, [destination, result, error]);
    });
    mask_message(&mut t.models, mask, "models", |o, m| {
        keep_fields!(o, m, [input, output]);
    });
    match mask.get("hyperparams") {
        None => t.hyperparams.clear(),
        Some(sub) => mask_map(&mut t.hyperparams, sub, |section, m| {
            mask_map(&mut section.params, m, |_, _| {});
        }),
    }
    for (name, map) in [
        ("configuration", &mut t.configuration),
        ("user_properties", &mut t.user_properties),
    ] {
        match mask.get(name) {
            None => map.clear(),
            Some(sub) => mask_map(map, sub, |_, _| {}),
        }
    }
    match mask.get("runtime") {
        None => t.runtime = None,
        Some(sub) => {
            if let Some(r) = t.runtime.as_mut() {
                let mut fields: HashMap<String, prost_types::Value> =
                    std::mem::take(&mut r.fields).into_iter().collect();
                mask_map(&mut fields, sub, |_, _| {});
                r.fields = fields.into_iter().collect();
            }
        }
    }
}

fn render(t: &Task, mask: Option<&Mask>) -> pb::Task {
    let mut out = task_to_pb(t);
    if let Some(m) = mask {
        apply_mask(&mut out, m);
    }
    out
}

// ---- requests --------------------------------------------------------------------

fn options(o: Option<pb::StatusChangeOptions>) -> Result<StatusChange, Error> {
    let o = o.unwrap_or_default();
    Ok(StatusChange {
        force: o.force,
        reason: o.status_reason,
        message: o.status_message,
        expected_status: status_from_pb(o.expected_status, "expected_status")?,
    })
}

fn update_paths(mask: Option<FieldMask>) -> Result<Vec<String>, Error> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid("update_mask must name at least one field"));
    }
    Ok(paths)
}

fn unsupported_path(path: &str) -> Error {
    Error::invalid(format!("update_mask path {path:?} is not supported")).with_field("path", path)
}

fn tag_filter(f: Option<common::TagFilter>) -> TagFilter {
    let f = f.unwrap_or_default();
    TagFilter {
        any_of: f.any_of,
        all_of: f.all_of,
        none_of: f.none_of,
    }
}

fn cleanup_to_pb(c: Cleanup) -> pb::TaskCleanup {
    pb::TaskCleanup {
        output_model_ids: c.output_model_ids,
        input_model_ids: c.input_model_ids,
        delete_events: c.delete_events,
        delete_output_artifacts: c.delete_output_artifacts,
        delete_input_artifacts: c.delete_input_artifacts,
        left_queue_id: c.left_queue_id,
    }
}

/// The common fields of a lifecycle response.
struct Moved {
    updated: u32,
    task: Option<pb::Task>,
    previous_status: i32,
    left_queue_id: String,
}

fn moved(t: Transition, mask: Option<&Mask>) -> Moved {
    Moved {
        updated: t.updated,
        task: Some(render(&t.task, mask)),
        previous_status: status_to_pb(t.previous_status),
        left_queue_id: t.left_queue_id,
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl TasksService for TasksGrpc {
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Reply<pb::CreateTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let new = NewTask {
            name: req.name,
            project_id: req.project_id,
            task_type: type_from_pb(req.r#type)?,
            comment: req.comment,
            tags: req.tags,
            system_tags: req.system_tags,
            parent_id: req.parent_id,
            script: script_from_pb(req.script),
            container: container_from_pb(req.container),
            execution: execution_from_pb(req.execution),
            output_destination: req.output_destination,
            hyperparams: hyperparams_from_pb(req.hyperparams)?,
            configuration: typed_values_from_pb(req.configuration, "configuration")?,
            user_properties: typed_values_from_pb(req.user_properties, "user property")?,
            runtime: runtime_from_pb(req.runtime),
            models: models_from_pb(req.models),
        };
        let task = self.service.create(&user, new).await?;
        Ok(Response::new(pb::CreateTaskResponse {
            task: Some(render(&task, mask.as_ref())),
        }))
    }

    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Reply<pb::GetTaskResponse> {
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let task = self
            .service
            .get(&req.id, sections_of(mask.as_ref()))
            .await?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(render(&task, mask.as_ref())),
        }))
    }

    async fn get_task_by_name(
        &self,
        request: Request<pb::GetTaskByNameRequest>,
    ) -> Reply<pb::GetTaskByNameResponse> {
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let task = self
            .service
            .get_by_name(
                &req.project_id,
                &req.name,
                req.include_archived,
                sections_of(mask.as_ref()),
            )
            .await?;
        Ok(Response::new(pb::GetTaskByNameResponse {
            task: Some(render(&task, mask.as_ref())),
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Reply<pb::ListTasksResponse> {
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let statuses = req
            .statuses
            .iter()
            .map(|s| {
                status_from_pb(*s, "statuses")?.ok_or_else(|| {
                    Error::invalid("statuses must not contain TASK_STATUS_UNSPECIFIED")
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let types = req
            .types
            .iter()
            .map(|t| {
                type_from_pb(*t)
                    .map_err(|_| Error::invalid(format!("types has an unknown type {t}")))?
                    .ok_or_else(|| Error::invalid("types must not contain TASK_TYPE_UNSPECIFIED"))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let page = req.page.unwrap_or_default();
        let list = ListRequest {
            ids: req.ids,
            project_ids: req.project_ids,
            include_subprojects: req.include_subprojects,
            name_regex: req.name_regex,
            statuses,
            types,
            tags: tag_filter(req.tags),
            system_tags: tag_filter(req.system_tags),
            parent_ids: req.parent_ids,
            users: req.users,
            search_text: req.search_text,
            user_properties: req.user_properties.into_iter().collect(),
            include_archived: req.include_archived,
            include_hidden: req.include_hidden,
            queue_ids: req.queue_ids,
            created_within: range(req.created_within, "created_within")?,
            last_update_within: range(req.last_update_within, "last_update_within")?,
            page_size: page.page_size,
            page_token: page.page_token,
            include_total: page.include_total,
            order_by: req
                .order_by
                .into_iter()
                .map(|o| (o.field, o.descending))
                .collect(),
            sections: sections_of(mask.as_ref()),
        };
        let result = self.service.list(list).await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: result
                .tasks
                .iter()
                .map(|t| render(t, mask.as_ref()))
                .collect(),
            page: Some(common::PageResponse {
                next_page_token: result.next_page_token,
                total_size: result.total,
            }),
        }))
    }

    async fn update_task(
        &self,
        request: Request<pb::UpdateTaskRequest>,
    ) -> Reply<pb::UpdateTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let mut update = TaskUpdate::default();
        for path in update_paths(req.update_mask)? {
            match path.as_str() {
                "name" => update.name = Some(req.name.clone()),
                "comment" => update.comment = Some(req.comment.clone()),
                "tags" => update.tags = Some(req.tags.clone()),
                "system_tags" => update.system_tags = Some(req.system_tags.clone()),
                "project_id" => update.project_id = Some(req.project_id.clone()),
                other => return Err(unsupported_path(other).into()),
            }
        }
        let (updated, task) = self
            .service
            .update(&user, &req.id, update, req.force)
            .await?;
        Ok(Response::new(pb::UpdateTaskResponse {
            updated,
            task: Some(render(&task, mask.as_ref())),
        }))
    }

    async fn edit_task(
        &self,
        request: Request<pb::EditTaskRequest>,
    ) -> Reply<pb::EditTaskResponse> {
        let user = caller(&request);
        let mut req = request.into_inner();
        let mask = Mask::parse(req.read_mask.take())?;
        let paths = update_paths(req.update_mask.take())?;
        let mut edit = TaskEdit::default();
        for path in paths {
            match path.as_str() {
                "name" => edit.descriptive.name = Some(req.name.clone()),
                "comment" => edit.descriptive.comment = Some(req.comment.clone()),
                "tags" => edit.descriptive.tags = Some(req.tags.clone()),
                "system_tags" => edit.descriptive.system_tags = Some(req.system_tags.clone()),
                "project_id" => edit.descriptive.project_id = Some(req.project_id.clone()),
                "type" => {
                    edit.task_type = Some(type_from_pb(req.r#type)?.unwrap_or(TaskType::Training))
                }
                "parent_id" => edit.parent_id = Some(req.parent_id.clone()),
                "script" => edit.script = Some(script_from_pb(req.script.take())),
                "container" => edit.container = Some(container_from_pb(req.container.take())),
                "execution" => edit.execution = Some(execution_from_pb(req.execution.take())),
                "output" => edit.output = Some(output_from_pb(req.output.take())),
                "hyperparams" => {
                    edit.hyperparams =
                        Some(hyperparams_from_pb(std::mem::take(&mut req.hyperparams))?);
                }
                "configuration" => {
                    edit.configuration = Some(typed_values_from_pb(
                        std::mem::take(&mut req.configuration),
                        "configuration",
                    )?);
                }
                "user_properties" => {
                    edit.user_properties = Some(typed_values_from_pb(
                        std::mem::take(&mut req.user_properties),
                        "user property",
                    )?);
                }
                "runtime" => edit.runtime = Some(runtime_from_pb(req.runtime.take())),
                "models" => edit.models = Some(models_from_pb(req.models.take())),
                other => return Err(unsupported_path(other).into()),
            }
        }
        let (updated, task) = self.service.edit(&user, &req.id, edit, req.force).await?;
        Ok(Response::new(pb::EditTaskResponse {
            updated,
            task: Some(render(&task, mask.as_ref())),
        }))
    }

    async fn set_hyper_params(
        &self,
        request: Request<pb::SetHyperParamsRequest>,
    ) -> Reply<pb::SetHyperParamsResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let params = hyperparams_from_pb(req.hyperparams)?;
        let updated = self
            .service
            .set_hyperparams(&user, &req.id, params, req.replace_sections, req.force)
            .await?;
        Ok(Response::new(pb::SetHyperParamsResponse { updated }))
    }

    async fn delete_hyper_params(
        &self,
        request: Request<pb::DeleteHyperParamsRequest>,
    ) -> Reply<pb::DeleteHyperParamsResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let keys = req
            .keys
            .into_iter()
            .map(|k| HyperParamKey {
                section: k.section,
                name: k.name,
            })
            .collect();
        let updated = self
            .service
            .delete_hyperparams(&user, &req.id, keys, req.force)
            .await?;
        Ok(Response::new(pb::DeleteHyperParamsResponse { updated }))
    }

    async fn set_configuration(
        &self,
        request: Request<pb::SetConfigurationRequest>,
    ) -> Reply<pb::SetConfigurationResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let values = typed_values_from_pb(req.configuration, "configuration")?;
        let updated = self
            .service
            .set_configuration(&user, &req.id, values, req.replace_all, req.force)
            .await?;
        Ok(Response::new(pb::SetConfigurationResponse { updated }))
    }

    async fn delete_configuration(
        &self,
        request: Request<pb::DeleteConfigurationRequest>,
    ) -> Reply<pb::DeleteConfigurationResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let updated = self
            .service
            .delete_configuration(&user, &req.id, req.names, req.force)
            .await?;
        Ok(Response::new(pb::DeleteConfigurationResponse { updated }))
    }

    async fn set_user_properties(
        &self,
        request: Request<pb::SetUserPropertiesRequest>,
    ) -> Reply<pb::SetUserPropertiesResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let values = typed_values_from_pb(req.user_properties, "user property")?;
        let updated = self
            .service
            .set_user_properties(&user, &req.id, values, req.replace_all, req.force)
            .await?;
        Ok(Response::new(pb::SetUserPropertiesResponse { updated }))
    }

    async fn delete_user_properties(
        &self,
        request: Request<pb::DeleteUserPropertiesRequest>,
    ) -> Reply<pb::DeleteUserPropertiesResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let updated = self
            .service
            .delete_user_properties(&user, &req.id, req.names, req.force)
            .await?;
        Ok(Response::new(pb::DeleteUserPropertiesResponse { updated }))
    }

    async fn set_requirements(
        &self,
        request: Request<pb::SetRequirementsRequest>,
    ) -> Reply<pb::SetRequirementsResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let updated = self
            .service
            .set_requirements(
                &user,
                &req.id,
                requirements_from_pb(req.requirements),
                req.force,
            )
            .await?;
        Ok(Response::new(pb::SetRequirementsResponse { updated }))
    }

    async fn set_output_destination(
        &self,
        request: Request<pb::SetOutputDestinationRequest>,
    ) -> Reply<pb::SetOutputDestinationResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let updated = self
            .service
            .set_output_destination(&user, &req.id, req.destination, req.force)
            .await?;
        Ok(Response::new(pb::SetOutputDestinationResponse { updated }))
    }

    async fn set_models(
        &self,
        request: Request<pb::SetModelsRequest>,
    ) -> Reply<pb::SetModelsResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let updated = self
            .service
            .set_models(
                &user,
                &req.id,
                model_refs_from_pb(req.input),
                model_refs_from_pb(req.output),
                req.force,
            )
            .await?;
        Ok(Response::new(pb::SetModelsResponse { updated }))
    }

    async fn delete_models(
        &self,
        request: Request<pb::DeleteModelsRequest>,
    ) -> Reply<pb::DeleteModelsResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let updated = self
            .service
            .delete_models(&user, &req.id, req.input_names, req.output_names, req.force)
            .await?;
        Ok(Response::new(pb::DeleteModelsResponse { updated }))
    }

    async fn add_tags(&self, request: Request<pb::AddTagsRequest>) -> Reply<pb::AddTagsResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let updated = self
            .service
            .add_tags(&user, &req.ids, req.tags, req.system_tags)
            .await?;
        Ok(Response::new(pb::AddTagsResponse { updated }))
    }

    async fn remove_tags(
        &self,
        request: Request<pb::RemoveTagsRequest>,
    ) -> Reply<pb::RemoveTagsResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let updated = self
            .service
            .remove_tags(&user, &req.ids, req.tags, req.system_tags)
            .await?;
        Ok(Response::new(pb::RemoveTagsResponse { updated }))
    }

    async fn move_tasks(
        &self,
        request: Request<pb::MoveTasksRequest>,
    ) -> Reply<pb::MoveTasksResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let updated = self
            .service
            .move_tasks(&user, &req.ids, &req.from_project_id, &req.project_id)
            .await?;
        Ok(Response::new(pb::MoveTasksResponse { updated }))
    }

    async fn start_task(
        &self,
        request: Request<pb::StartTaskRequest>,
    ) -> Reply<pb::StartTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let t = self
            .service
            .start(&user, &req.id, &options(req.options)?, &req.worker)
            .await?;
        let m = moved(t, mask.as_ref());
        Ok(Response::new(pb::StartTaskResponse {
            updated: m.updated,
            task: m.task,
            previous_status: m.previous_status,
            left_queue_id: m.left_queue_id,
        }))
    }

    async fn stop_task(
        &self,
        request: Request<pb::StopTaskRequest>,
    ) -> Reply<pb::StopTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let t = self
            .service
            .stop(&user, &req.id, &options(req.options)?)
            .await?;
        let m = moved(t, mask.as_ref());
        Ok(Response::new(pb::StopTaskResponse {
            updated: m.updated,
            task: m.task,
            previous_status: m.previous_status,
            left_queue_id: m.left_queue_id,
        }))
    }

    async fn fail_task(
        &self,
        request: Request<pb::FailTaskRequest>,
    ) -> Reply<pb::FailTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let t = self
            .service
            .fail(&user, &req.id, &options(req.options)?)
            .await?;
        let m = moved(t, mask.as_ref());
        Ok(Response::new(pb::FailTaskResponse {
            updated: m.updated,
            task: m.task,
            previous_status: m.previous_status,
            left_queue_id: m.left_queue_id,
        }))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Reply<pb::CompleteTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let c = self
            .service
            .complete(&user, &req.id, &options(req.options)?, req.publish)
            .await?;
        let m = moved(c.transition, mask.as_ref());
        Ok(Response::new(pb::CompleteTaskResponse {
            updated: m.updated,
            task: m.task,
            previous_status: m.previous_status,
            left_queue_id: m.left_queue_id,
            published: c.published,
            output_model_ids: c.output_model_ids,
        }))
    }

    async fn close_task(
        &self,
        request: Request<pb::CloseTaskRequest>,
    ) -> Reply<pb::CloseTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let t = self
            .service
            .close(&user, &req.id, &options(req.options)?)
            .await?;
        let m = moved(t, mask.as_ref());
        Ok(Response::new(pb::CloseTaskResponse {
            updated: m.updated,
            task: m.task,
            previous_status: m.previous_status,
            left_queue_id: m.left_queue_id,
        }))
    }

    async fn publish_task(
        &self,
        request: Request<pb::PublishTaskRequest>,
    ) -> Reply<pb::PublishTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let p = self
            .service
            .publish(&user, &req.id, &options(req.options)?)
            .await?;
        let m = moved(p.transition, mask.as_ref());
        Ok(Response::new(pb::PublishTaskResponse {
            updated: m.updated,
            task: m.task,
            previous_status: m.previous_status,
            left_queue_id: m.left_queue_id,
            output_model_ids: p.output_model_ids,
        }))
    }

    async fn request_stop(
        &self,
        request: Request<pb::RequestStopRequest>,
    ) -> Reply<pb::RequestStopResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let s = self
            .service
            .request_stop(&user, &req.id, &options(req.options)?)
            .await?;
        let m = moved(s.transition, mask.as_ref());
        Ok(Response::new(pb::RequestStopResponse {
            updated: m.updated,
            task: m.task,
            previous_status: m.previous_status,
            left_queue_id: m.left_queue_id,
            stopping: s.stopping,
        }))
    }

    async fn reset_task(
        &self,
        request: Request<pb::ResetTaskRequest>,
    ) -> Reply<pb::ResetTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let r = self
            .service
            .reset(&user, &req.id, &options(req.options)?, req.clear_all)
            .await?;
        let m = moved(r.transition, mask.as_ref());
        Ok(Response::new(pb::ResetTaskResponse {
            updated: m.updated,
            task: m.task,
            previous_status: m.previous_status,
            cleanup: Some(cleanup_to_pb(r.cleanup)),
        }))
    }

    async fn archive_tasks(
        &self,
        request: Request<pb::ArchiveTasksRequest>,
    ) -> Reply<pb::ArchiveTasksResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let (updated, dequeued) = self
            .service
            .archive(&user, &req.ids, &req.status_reason, &req.status_message)
            .await?;
        Ok(Response::new(pb::ArchiveTasksResponse {
            updated,
            dequeued: dequeued
                .into_iter()
                .map(|d| pb::DequeuedTask {
                    task_id: d.task_id,
                    queue_id: d.queue_id,
                })
                .collect(),
        }))
    }

    async fn unarchive_tasks(
        &self,
        request: Request<pb::UnarchiveTasksRequest>,
    ) -> Reply<pb::UnarchiveTasksResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let updated = self.service.unarchive(&user, &req.ids).await?;
        Ok(Response::new(pb::UnarchiveTasksResponse { updated }))
    }

    async fn delete_task(
        &self,
        request: Request<pb::DeleteTaskRequest>,
    ) -> Reply<pb::DeleteTaskResponse> {
        let req = request.into_inner();
        let d = self.service.delete(&req.id, req.force).await?;
        Ok(Response::new(pb::DeleteTaskResponse {
            deleted: 1,
            previous_status: status_to_pb(d.previous_status),
            cleanup: Some(cleanup_to_pb(d.cleanup)),
        }))
    }

    async fn clone_task(
        &self,
        request: Request<pb::CloneTaskRequest>,
    ) -> Reply<pb::CloneTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let clone = CloneTask {
            source_id: req.source_id,
            name: req.name,
            comment: req.comment,
            project_id: req.project_id,
            parent_id: req.parent_id,
            tags: req.tags.map(|t| t.tags),
            system_tags: req.system_tags.map(|t| t.tags),
            hyperparams: req
                .hyperparams
                .map(|h| hyperparams_from_pb(h.sections))
                .transpose()?,
            configuration: req
                .configuration
                .map(|c| typed_values_from_pb(c.values, "configuration"))
                .transpose()?,
            user_properties: req
                .user_properties
                .map(|c| typed_values_from_pb(c.values, "user property"))
                .transpose()?,
            script: req.script.map(|s| script_from_pb(Some(s))),
            container: req.container.map(|c| container_from_pb(Some(c))),
            execution: req.execution.map(|e| execution_from_pb(Some(e))),
        };
        let task = self.service.clone_task(&user, clone).await?;
        Ok(Response::new(pb::CloneTaskResponse {
            task: Some(render(&task, mask.as_ref())),
        }))
    }

    async fn ping_task(
        &self,
        request: Request<pb::PingTaskRequest>,
    ) -> Reply<pb::PingTaskResponse> {
        let req = request.into_inner();
        let at = self.service.ping(&req.id, &req.worker).await?;
        Ok(Response::new(pb::PingTaskResponse {
            updated: 1,
            last_update: Some(ts(at)),
        }))
    }

    async fn enqueue_task(
        &self,
        request: Request<pb::EnqueueTaskRequest>,
    ) -> Reply<pb::EnqueueTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let t = self
            .service
            .enqueue(&user, &req.id, &options(req.options)?, &req.queue_id)
            .await?;
        let m = moved(t, mask.as_ref());
        Ok(Response::new(pb::EnqueueTaskResponse {
            updated: m.updated,
            task: m.task,
            previous_status: m.previous_status,
            left_queue_id: m.left_queue_id,
        }))
    }

    async fn dequeue_task(
        &self,
        request: Request<pb::DequeueTaskRequest>,
    ) -> Reply<pb::DequeueTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask)?;
        let new_status = status_from_pb(req.new_status, "new_status")?;
        let t = self
            .service
            .dequeue(&user, &req.id, &options(req.options)?, new_status)
            .await?;
        let m = moved(t, mask.as_ref());
        Ok(Response::new(pb::DequeueTaskResponse {
            updated: m.updated,
            task: m.task,
            previous_status: m.previous_status,
            left_queue_id: m.left_queue_id,
        }))
    }

    async fn get_task_stats(
        &self,
        request: Request<pb::GetTaskStatsRequest>,
    ) -> Reply<pb::GetTaskStatsResponse> {
        let req = request.into_inner();
        let groups = req
            .groups
            .into_iter()
            .map(|g| (g.key, g.project_ids, g.include_subprojects))
            .collect();
        let stats = self
            .service
            .stats(groups, req.include_archived, req.include_hidden)
            .await?;
        Ok(Response::new(pb::GetTaskStatsResponse {
            groups: stats
                .into_iter()
                .map(|g| pb::TaskStats {
                    key: g.key,
                    total: g.total,
                    by_status: g
                        .by_status
                        .into_iter()
                        .map(|(s, count)| pb::StatusCount {
                            status: status_to_pb(s),
                            count,
                        })
                        .collect(),
                    by_type: g
                        .by_type
                        .into_iter()
                        .map(|(t, count)| pb::TypeCount {
                            r#type: type_to_pb(t),
                            count,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(paths: &[&str]) -> Result<Option<Mask>, Error> {
        Mask::parse(Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }))
    }

    #[test]
    fn read_mask_paths_are_checked() {
        assert!(mask(&[]).unwrap().is_none());
        assert!(
            mask(&[
                "id",
                "script.requirements.pip",
                "hyperparams.Args.lr",
                "runtime.progress"
            ])
            .is_ok()
        );
        for bad in [
            "nope",
            "id.x",
            "script.nope",
            "hyperparams.Args.lr.x",
            "",
            "name.",
        ] {
            let err = mask(&[bad])
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn read_mask_keeps_only_the_named_fields() {
        let now = crate::model::truncate_micros(chrono::Utc::now());
        let mut task = Task::draft("a".repeat(32), "train".into(), "u".into(), now);
        task.status_message = "stopping".into();
        task.script.entry_point = "train.py".into();
        task.script.requirements.pip = "torch".into();
        task.hyperparams
            .entry("Args".into())
            .or_default()
            .insert("lr".into(), TypedValue::default());
        task.hyperparams
            .entry("General".into())
            .or_default()
            .insert("x".into(), TypedValue::default());
        let m = mask(&[
            "status",
            "status_message",
            "script.requirements.pip",
            "hyperparams.Args",
        ])
        .unwrap();
        let out = render(&task, m.as_ref());
        assert_eq!(out.status, pb::TaskStatus::Created as i32);
        assert_eq!(out.status_message, "stopping");
        assert_eq!(out.name, "");
        assert!(out.created.is_none());
        let script = out.script.unwrap();
        assert_eq!(script.entry_point, "");
        assert_eq!(script.requirements.unwrap().pip, "torch");
        assert_eq!(out.hyperparams.keys().collect::<Vec<_>>(), vec!["Args"]);
        assert!(out.execution.is_none());
        assert_eq!(
            sections_of(m.as_ref()),
            Sections {
                script: true,
                hyperparams: true,
                ..Sections::NONE
            }
        );
    }

    #[test]
    fn typed_value_names_must_match_their_keys() {
        let mut values = HashMap::new();
        values.insert(
            "a".to_owned(),
            common::TypedValue {
                name: "b".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            typed_values_from_pb(values, "x").unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        let mut values = HashMap::new();
        values.insert(
            "a".to_owned(),
            common::TypedValue {
                name: String::new(),
                value: "1".into(),
                ..Default::default()
            },
        );
        assert_eq!(typed_values_from_pb(values, "x").unwrap()["a"].value, "1");
    }

    #[test]
    fn runtime_round_trips_through_struct() {
        let runtime: Runtime = serde_json::json!({"progress": "10", "n": 2.5, "ok": true, "l": [1.0, "x"], "o": {"k": null}})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(runtime_from_pb(Some(runtime_to_pb(&runtime))), runtime);
    }
}
