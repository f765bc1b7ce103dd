//! Conversions between ClearML's JSON shapes and the tasklab contracts.
//!
//! The shapes follow what the SDK and agent read (see the research notes):
//! every task section (`output`, `execution`, `script`, `models`,
//! `hyperparams`, `configuration`, `runtime`, `container`, `last_metrics`) is
//! always an object, `execution.artifacts` is a list, `last_metrics` is keyed
//! by the md5 of metric and variant names, times are ISO 8601 strings, and
//! user properties are the hyperparameter section `properties`.

use std::collections::{BTreeMap, HashMap};

use md5::{Digest as _, Md5};
use prost_types::Timestamp;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::artifacts::v1 as apb;
use tasklab_proto::common::v1::{OrderBy, TagFilter, TypedValue};
use tasklab_proto::projects::v1 as ppb;
use tasklab_proto::queues::v1 as qpb;
use tasklab_proto::tasks::v1 as tpb;

use super::args::Text;

/// The hyperparameter section that carries user properties.
pub(crate) const PROPERTIES_SECTION: &str = "properties";

// ---- times ------------------------------------------------------------------------

/// ISO 8601 in UTC with microseconds, as ClearML's server writes times.
pub(crate) fn iso(ts: Option<&Timestamp>) -> Value {
    match ts.and_then(to_chrono) {
        Some(t) => Value::String(t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()),
        None => Value::Null,
    }
}

pub(crate) fn to_chrono(ts: &Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// Milliseconds since the epoch.
pub(crate) fn millis(ts: Option<&Timestamp>) -> Value {
    match ts {
        Some(t) => Value::from(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
        None => Value::Null,
    }
}

/// A timestamp from milliseconds since the epoch.
pub(crate) fn from_millis(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A timestamp from seconds since the epoch (fractions allowed).
pub(crate) fn from_secs_f64(secs: f64) -> Timestamp {
    let whole = secs.floor();
    Timestamp {
        seconds: whole as i64,
        nanos: ((secs - whole) * 1e9) as i32,
    }
}

/// Parses an ISO time or epoch seconds, as sent by clients.
pub(crate) fn parse_time(value: &Value) -> Option<Timestamp> {
    match value {
        Value::Number(n) => n.as_f64().map(from_secs_f64),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .or_else(|_| {
                chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                    .map(|t| t.and_utc())
            })
            .ok()
            .map(|t| Timestamp {
                seconds: t.timestamp(),
                nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
            }),
        _ => None,
    }
}

fn opt_str(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

/// md5 hex of a metric or variant name (ClearML's `last_metrics` keys).
pub(crate) fn md5_hex(text: &str) -> String {
    hex::encode(Md5::digest(text.as_bytes()))
}

// ---- enums ------------------------------------------------------------------------

const STATUSES: [(&str, tpb::TaskStatus); 9] = [
    ("created", tpb::TaskStatus::Created),
    ("queued", tpb::TaskStatus::Queued),
    ("in_progress", tpb::TaskStatus::InProgress),
    ("stopped", tpb::TaskStatus::Stopped),
    ("failed", tpb::TaskStatus::Failed),
    ("completed", tpb::TaskStatus::Completed),
    ("closed", tpb::TaskStatus::Closed),
    ("publishing", tpb::TaskStatus::Publishing),
    ("published", tpb::TaskStatus::Published),
];

const TYPES: [(&str, tpb::TaskType); 11] = [
    ("training", tpb::TaskType::Training),
    ("testing", tpb::TaskType::Testing),
    ("inference", tpb::TaskType::Inference),
    ("data_processing", tpb::TaskType::DataProcessing),
    ("application", tpb::TaskType::Application),
    ("monitor", tpb::TaskType::Monitor),
    ("controller", tpb::TaskType::Controller),
    ("optimizer", tpb::TaskType::Optimizer),
    ("service", tpb::TaskType::Service),
    ("qc", tpb::TaskType::Qc),
    ("custom", tpb::TaskType::Custom),
];

/// ClearML's status name.
pub(crate) fn status_name(status: i32) -> &'static str {
    STATUSES
        .iter()
        .find(|(_, s)| *s as i32 == status)
        .map_or("unknown", |(n, _)| n)
}

/// Parses a ClearML status name.
pub(crate) fn parse_status(name: &str) -> Result<tpb::TaskStatus, Error> {
    STATUSES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("invalid task status {name:?}"),
            )
            .with_field("status", name)
        })
}

/// ClearML's task type name.
pub(crate) fn type_name(task_type: i32) -> &'static str {
    TYPES
        .iter()
        .find(|(_, t)| *t as i32 == task_type)
        .map_or("training", |(n, _)| n)
}

/// Parses a ClearML task type name.
pub(crate) fn parse_type(name: &str) -> Result<tpb::TaskType, Error> {
    TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidTaskType,
                format!("invalid task type {name:?}"),
            )
            .with_field("type", name)
        })
}

// ---- lists, tags, ordering ----------------------------------------------------------

/// ClearML tag list (`["a", "-b", "__$all", "c", "__$not", "d"]`) to a
/// [`TagFilter`]: a leading `-` or a preceding `__$not` excludes a tag,
/// `__$all` / `__$any` switch between "all of" and "any of" for the tags
/// that follow.
pub(crate) fn tag_filter(tags: &[String]) -> Option<TagFilter> {
    if tags.is_empty() {
        return None;
    }
    let mut filter = TagFilter::default();
    let mut all = false;
    let mut negate_next = false;
    for tag in tags {
        match tag.as_str() {
            "__$all" | "__$and" => all = true,
            "__$any" | "__$or" => all = false,
            "__$not" => negate_next = true,
            _ => {
                if let Some(rest) = tag.strip_prefix('-') {
                    filter.none_of.push(rest.to_owned());
                } else if negate_next {
                    filter.none_of.push(tag.clone());
                } else if all {
                    filter.all_of.push(tag.clone());
                } else {
                    filter.any_of.push(tag.clone());
                }
                negate_next = false;
            }
        }
    }
    Some(filter)
}

/// ClearML `order_by` (`["-created", "name"]`) with field renames.
pub(crate) fn order_by(items: &[String], rename: &dyn Fn(&str) -> String) -> Vec<OrderBy> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (descending, field) = match item.strip_prefix('-') {
                Some(f) => (true, f),
                None => (false, item.strip_prefix('+').unwrap_or(item)),
            };
            OrderBy {
                field: rename(field),
                descending,
            }
        })
        .collect()
}

/// Keeps only the dotted paths of `only_fields` (and `id`) in each object.
pub(crate) fn project_fields(value: Value, only_fields: &[String]) -> Value {
    if only_fields.is_empty() {
        return value;
    }
    let Value::Object(source) = value else {
        return value;
    };
    let mut out = Map::new();
    if let Some(id) = source.get("id") {
        out.insert("id".to_owned(), id.clone());
    }
    for path in only_fields {
        let parts: Vec<&str> = path.split('.').collect();
        copy_path(&source, &mut out, &parts);
    }
    Value::Object(out)
}

fn copy_path(source: &Map<String, Value>, out: &mut Map<String, Value>, parts: &[&str]) {
    let Some((first, rest)) = parts.split_first() else {
        return;
    };
    let Some(value) = source.get(*first) else {
        return;
    };
    if rest.is_empty() {
        out.insert((*first).to_owned(), value.clone());
        return;
    }
    let Value::Object(inner) = value else {
        return;
    };
    let entry = out
        .entry((*first).to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(target) = entry {
        copy_path(inner, target, rest);
    }
}

// ---- Struct <-> JSON ------------------------------------------------------------------

/// A protobuf `Struct` as a JSON object.
pub(crate) fn struct_to_json(s: Option<&prost_types::Struct>) -> Value {
    let mut map = Map::new();
    if let Some(s) = s {
        for (k, v) in &s.fields {
            map.insert(k.clone(), pb_value_to_json(v));
        }
    }
    Value::Object(map)
}

fn pb_value_to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(Some(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(pb_value_to_json).collect()),
    }
}

/// A JSON object as a protobuf `Struct` (non-objects give an empty struct).
pub(crate) fn json_to_struct(value: &Value) -> prost_types::Struct {
    let mut fields = BTreeMap::new();
    if let Value::Object(map) = value {
        for (k, v) in map {
            fields.insert(k.clone(), json_to_pb_value(v));
        }
    }
    prost_types::Struct { fields }
}

fn json_to_pb_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_pb_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(json_to_struct(v)),
    };
    prost_types::Value { kind: Some(kind) }
}

// ---- task sections: JSON -> proto -------------------------------------------------------

/// ClearML `{name, value, type, description}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct JsonTyped {
    pub(crate) section: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) value: Text,
    #[serde(rename = "type")]
    pub(crate) kind: Text,
    pub(crate) description: Text,
}

impl JsonTyped {
    pub(crate) fn into_pb(self, key: &str) -> TypedValue {
        TypedValue {
            name: key.to_owned(),
            value: self.value.0,
            r#type: self.kind.0,
            description: self.description.0,
        }
    }
}

/// ClearML hyperparameters: `{section: {name: {section, name, value, type,
/// description}}}`, split into hyperparameters and user properties (the
/// `properties` section).
pub(crate) type JsonHyperParams = BTreeMap<String, BTreeMap<String, JsonTyped>>;

pub(crate) fn hyperparams_from_json(
    params: JsonHyperParams,
) -> (
    HashMap<String, tpb::HyperParamSection>,
    HashMap<String, TypedValue>,
) {
    let mut sections = HashMap::new();
    let mut properties = HashMap::new();
    for (section, values) in params {
        let converted: HashMap<String, TypedValue> = values
            .into_iter()
            .map(|(name, v)| {
                let pb = v.into_pb(&name);
                (name, pb)
            })
            .collect();
        if section == PROPERTIES_SECTION {
            properties = converted;
        } else {
            sections.insert(section, tpb::HyperParamSection { params: converted });
        }
    }
    (sections, properties)
}

/// ClearML configuration: `{name: {name, value, type, description}}`.
pub(crate) fn configuration_from_json(
    items: BTreeMap<String, JsonTyped>,
) -> HashMap<String, TypedValue> {
    items
        .into_iter()
        .map(|(name, v)| {
            let pb = v.into_pb(&name);
            (name, pb)
        })
        .collect()
}

/// ClearML `script`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct JsonScript {
    binary: Text,
    repository: Text,
    tag: Text,
    branch: Text,
    version_num: Text,
    entry_point: Text,
    working_dir: Text,
    diff: Text,
    requirements: Option<Map<String, Value>>,
}

/// ClearML `script.requirements` (`{pip, conda, org_pip, ...}`; values may be
/// text or lists of lines).
pub(crate) fn requirements_from_json(map: Map<String, Value>) -> tpb::Requirements {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(lines) => lines
            .iter()
            .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut req = tpb::Requirements::default();
    for (kind, value) in map {
        match kind.as_str() {
            "pip" => req.pip = text(&value),
            "conda" => req.conda = text(&value),
            "org_pip" => req.orig_pip = text(&value),
            _ => {
                req.other.insert(kind, text(&value));
            }
        }
    }
    req
}

impl JsonScript {
    pub(crate) fn into_pb(self) -> tpb::Script {
        tpb::Script {
            repository: self.repository.0,
            branch: self.branch.0,
            tag: self.tag.0,
            version_num: self.version_num.0,
            entry_point: self.entry_point.0,
            working_dir: self.working_dir.0,
            binary: self.binary.0,
            diff: self.diff.0,
            requirements: self.requirements.map(requirements_from_json),
        }
    }
}

/// ClearML `container` (`{image, arguments, setup_shell_script}`).
pub(crate) fn container_from_json(map: &Map<String, Value>) -> tpb::Container {
    let text = |key: &str| {
        map.get(key)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    tpb::Container {
        image: text("image"),
        arguments: text("arguments"),
        setup_shell_script: text("setup_shell_script"),
    }
}

/// ClearML legacy `execution.docker_cmd` (`image args...`).
pub(crate) fn container_from_docker_cmd(cmd: &str) -> tpb::Container {
    let cmd = cmd.trim();
    let (image, arguments) = cmd.split_once(' ').unwrap_or((cmd, ""));
    tpb::Container {
        image: image.to_owned(),
        arguments: arguments.trim().to_owned(),
        setup_shell_script: String::new(),
    }
}

/// ClearML `execution`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct JsonExecution {
    pub(crate) framework: Text,
    pub(crate) model_labels: BTreeMap<String, i64>,
    pub(crate) docker_cmd: Option<String>,
    pub(crate) parameters: Option<BTreeMap<String, Text>>,
    pub(crate) artifacts: Option<Vec<Value>>,
}

impl JsonExecution {
    pub(crate) fn to_pb(&self) -> tpb::Execution {
        tpb::Execution {
            queue_id: String::new(),
            framework: self.framework.0.clone(),
            model_labels: self.model_labels.clone().into_iter().collect(),
        }
    }
}

/// ClearML model reference `{name, model, updated?}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct JsonModelRef {
    name: Text,
    model: Text,
}

/// ClearML `models` (`{input: [...], output: [...]}`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct JsonTaskModels {
    input: Vec<JsonModelRef>,
    output: Vec<JsonModelRef>,
}

impl JsonTaskModels {
    pub(crate) fn into_pb(self) -> tpb::TaskModels {
        let refs = |items: Vec<JsonModelRef>| {
            items
                .into_iter()
                .map(|r| tpb::ModelRef {
                    name: r.name.0,
                    model_id: r.model.0,
                    updated: None,
                })
                .collect()
        };
        tpb::TaskModels {
            input: refs(self.input),
            output: refs(self.output),
        }
    }
}

/// ClearML artifact (`execution.artifacts[]`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct JsonArtifact {
    key: Text,
    #[serde(rename = "type")]
    kind: Text,
    mode: Text,
    uri: Text,
    hash: Text,
    content_size: Option<f64>,
    timestamp: Option<Value>,
    type_data: Option<Map<String, Value>>,
    display_data: Vec<Vec<Text>>,
}

pub(crate) fn artifact_mode(mode: &str) -> Result<apb::ArtifactMode, Error> {
    match mode {
        "" | "output" => Ok(apb::ArtifactMode::Output),
        "input" => Ok(apb::ArtifactMode::Input),
        other => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("invalid artifact mode {other:?}"),
        )),
    }
}

impl JsonArtifact {
    pub(crate) fn into_pb(self, task_id: &str) -> Result<apb::Artifact, Error> {
        let type_data = self.type_data.unwrap_or_default();
        let td = |k: &str| {
            type_data
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        Ok(apb::Artifact {
            task_id: task_id.to_owned(),
            key: self.key.0,
            mode: artifact_mode(&self.mode.0)? as i32,
            r#type: self.kind.0,
            uri: self.uri.0,
            hash: self.hash.0,
            content_size: self.content_size.map_or(0, |n| n.max(0.0) as u64),
            timestamp: self.timestamp.as_ref().and_then(parse_time),
            preview: td("preview"),
            content_type: td("content_type"),
            data_hash: td("data_hash"),
            metadata: HashMap::new(),
            display_data: self
                .display_data
                .into_iter()
                .filter_map(|pair| {
                    let mut it = pair.into_iter();
                    Some(apb::KeyValue {
                        key: it.next()?.0,
                        value: it.next().map(|t| t.0).unwrap_or_default(),
                    })
                })
                .collect(),
            blob_path: String::new(),
            updated: None,
        })
    }
}

// ---- proto -> JSON ----------------------------------------------------------------------

fn typed_to_json(section: Option<&str>, name: &str, v: &TypedValue) -> Value {
    let mut out = json!({
        "name": name,
        "value": v.value,
        "type": v.r#type,
        "description": v.description,
    });
    if let Some(section) = section {
        out["section"] = Value::String(section.to_owned());
    }
    out
}

/// A task's hyperparameters with user properties as section `properties`.
pub(crate) fn hyperparams_to_json(task: &tpb::Task) -> Value {
    let mut sections = Map::new();
    let mut names: Vec<&String> = task.hyperparams.keys().collect();
    names.sort();
    for section in names {
        let params = &task.hyperparams[section].params;
        let mut keys: Vec<&String> = params.keys().collect();
        keys.sort();
        let mut out = Map::new();
        for key in keys {
            out.insert(key.clone(), typed_to_json(Some(section), key, &params[key]));
        }
        sections.insert(section.clone(), Value::Object(out));
    }
    if !task.user_properties.is_empty() {
        let mut keys: Vec<&String> = task.user_properties.keys().collect();
        keys.sort();
        let mut out = Map::new();
        for key in keys {
            out.insert(
                key.clone(),
                typed_to_json(Some(PROPERTIES_SECTION), key, &task.user_properties[key]),
            );
        }
        sections.insert(PROPERTIES_SECTION.to_owned(), Value::Object(out));
    }
    Value::Object(sections)
}

fn configuration_to_json(items: &HashMap<String, TypedValue>) -> Value {
    let mut keys: Vec<&String> = items.keys().collect();
    keys.sort();
    let mut out = Map::new();
    for key in keys {
        out.insert(key.clone(), typed_to_json(None, key, &items[key]));
    }
    Value::Object(out)
}

fn requirements_to_json(req: Option<&tpb::Requirements>) -> Value {
    let mut out = Map::new();
    if let Some(req) = req {
        out.insert("pip".into(), Value::String(req.pip.clone()));
        out.insert("conda".into(), Value::String(req.conda.clone()));
        if !req.orig_pip.is_empty() {
            out.insert("org_pip".into(), Value::String(req.orig_pip.clone()));
        }
        for (k, v) in &req.other {
            out.insert(k.clone(), Value::String(v.clone()));
        }
    }
    Value::Object(out)
}

fn script_to_json(s: Option<&tpb::Script>) -> Value {
    let s = s.cloned().unwrap_or_default();
    json!({
        "binary": s.binary,
        "repository": s.repository,
        "tag": s.tag,
        "branch": s.branch,
        "version_num": s.version_num,
        "entry_point": s.entry_point,
        "working_dir": s.working_dir,
        "requirements": requirements_to_json(s.requirements.as_ref()),
        "diff": s.diff,
    })
}

fn container_to_json(c: Option<&tpb::Container>) -> Value {
    let mut out = Map::new();
    if let Some(c) = c {
        for (k, v) in [
            ("image", &c.image),
            ("arguments", &c.arguments),
            ("setup_shell_script", &c.setup_shell_script),
        ] {
            if !v.is_empty() {
                out.insert(k.into(), Value::String(v.clone()));
            }
        }
    }
    Value::Object(out)
}

/// One joined artifact, ClearML style.
pub(crate) fn task_artifact_to_json(a: &tpb::TaskArtifact) -> Value {
    json!({
        "key": a.key,
        "type": a.r#type,
        "mode": if a.mode == tpb::ArtifactMode::Input as i32 { "input" } else { "output" },
        "uri": a.uri,
        "hash": a.hash,
        "content_size": a.content_size,
        "timestamp": a.timestamp.as_ref().map_or(Value::Null, |t| Value::from(t.seconds)),
        "type_data": {
            "preview": a.preview,
            "content_type": a.content_type,
            "data_hash": a.data_hash,
        },
        "display_data": a.display_data.iter().map(|d| json!([d.key, d.value])).collect::<Vec<_>>(),
    })
}

fn model_refs_to_json(refs: &[tpb::ModelRef]) -> Value {
    Value::Array(
        refs.iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "model": r.model_id,
                    "updated": iso(r.updated.as_ref()),
                })
            })
            .collect(),
    )
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// `last_metrics`: `{md5(metric): {md5(variant): {...}}}`.
pub(crate) fn last_metrics_to_json(metrics: &[tpb::LastMetric]) -> Value {
    let mut out = Map::new();
    for m in metrics {
        let entry = out
            .entry(md5_hex(&m.metric))
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(variants) = entry {
            variants.insert(
                md5_hex(&m.variant),
                json!({
                    "metric": m.metric,
                    "variant": m.variant,
                    "value": float(m.value),
                    "min_value": float(m.min_value),
                    "min_value_iteration": m.min_value_iteration,
                    "max_value": float(m.max_value),
                    "max_value_iteration": m.max_value_iteration,
                    "first_value": float(m.first_value),
                    "first_value_iteration": m.first_value_iteration,
                    "count": m.count,
                    "mean_value": float(m.mean_value),
                    "iter": m.iteration,
                    "timestamp": millis(m.timestamp.as_ref()),
                }),
            );
        }
    }
    Value::Object(out)
}

/// A complete ClearML task object.
pub(crate) fn task_to_json(t: &tpb::Task) -> Value {
    let execution = t.execution.clone().unwrap_or_default();
    let output = t.output.clone().unwrap_or_default();
    let models = t.models.clone().unwrap_or_default();
    let container = t.container.as_ref();
    let docker_cmd = container
        .map(|c| format!("{} {}", c.image, c.arguments).trim().to_owned())
        .unwrap_or_default();
    json!({
        "id": t.id,
        "name": t.name,
        "user": t.user,
        "company": super::super::auth::token::COMPANY_ID,
        "type": type_name(t.r#type),
        "status": status_name(t.status),
        "status_reason": t.status_reason,
        "status_message": t.status_message,
        "status_changed": iso(t.status_changed.as_ref()),
        "comment": t.comment,
        "created": iso(t.created.as_ref()),
        "started": iso(t.started.as_ref()),
        "completed": iso(t.completed.as_ref()),
        "published": iso(t.published.as_ref()),
        "last_update": iso(t.last_update.as_ref()),
        "last_change": iso(t.last_change.as_ref()),
        "last_changed_by": t.last_changed_by,
        "parent": opt_str(&t.parent_id),
        "project": opt_str(&t.project_id),
        "tags": t.tags,
        "system_tags": t.system_tags,
        "last_worker": t.last_worker,
        "last_worker_report": iso(t.last_worker_report.as_ref()),
        "enqueue_status": if t.enqueue_status == 0 { Value::Null } else { Value::from(status_name(t.enqueue_status)) },
        "output": {
            "destination": output.destination,
            "result": output.result,
            "error": output.error,
        },
        "execution": {
            "queue": opt_str(&execution.queue_id),
            "framework": execution.framework,
            "model_labels": execution.model_labels,
            "parameters": {},
            "model_desc": {},
            "docker_cmd": docker_cmd,
            "artifacts": t.artifacts.iter().map(task_artifact_to_json).collect::<Vec<_>>(),
        },
        "script": script_to_json(t.script.as_ref()),
        "container": container_to_json(container),
        "models": {
            "input": model_refs_to_json(&models.input),
            "output": model_refs_to_json(&models.output),
        },
        "hyperparams": hyperparams_to_json(t),
        "configuration": configuration_to_json(&t.configuration),
        "runtime": struct_to_json(t.runtime.as_ref()),
        "last_iteration": t.last_iteration,
        "last_metrics": last_metrics_to_json(&t.last_metrics),
    })
}

/// ClearML task fields (`only_fields` paths) to the task read-mask paths of
/// the tasks contract. Unknown ClearML fields map to nothing.
pub(crate) fn task_mask_paths(field: &str) -> &'static [&'static str] {
    let top = field.split('.').next().unwrap_or(field);
    match top {
        "id" => &["id"],
        "name" => &["name"],
        "project" => &["project_id"],
        "parent" => &["parent_id"],
        "type" => &["type"],
        "status" => &["status"],
        "status_reason" => &["status_reason"],
        "status_message" => &["status_message"],
        "status_changed" => &["status_changed"],
        "comment" => &["comment"],
        "tags" => &["tags"],
        "system_tags" => &["system_tags"],
        "user" => &["user"],
        "created" => &["created"],
        "started" => &["started"],
        "completed" => &["completed"],
        "published" => &["published"],
        "last_update" => &["last_update"],
        "last_change" => &["last_change"],
        "last_changed_by" => &["last_changed_by"],
        "last_worker" => &["last_worker"],
        "last_worker_report" => &["last_worker_report"],
        "enqueue_status" => &["enqueue_status"],
        "script" => &["script"],
        "container" => &["container"],
        "output" => &["output"],
        "hyperparams" => &["hyperparams", "user_properties"],
        "configuration" => &["configuration"],
        "runtime" => &["runtime"],
        "models" => &["models"],
        "last_iteration" => &["last_iteration"],
        "last_metrics" => &["last_metrics"],
        "execution" => match field {
            "execution.queue" => &["execution"],
            "execution.artifacts" => &["artifacts"],
            f if f.starts_with("execution.artifacts.") => &["artifacts"],
            "execution" => &["execution", "artifacts", "container"],
            _ => &["execution", "container"],
        },
        _ => &[],
    }
}

/// The read mask for ClearML `only_fields`; empty (every field) when none is
/// given.
pub(crate) fn task_read_mask(only_fields: &[String]) -> Option<prost_types::FieldMask> {
    if only_fields.is_empty() {
        return None;
    }
    let mut paths: Vec<String> = vec!["id".to_owned()];
    for field in only_fields {
        for p in task_mask_paths(field) {
            if !paths.iter().any(|x| x == p) {
                paths.push((*p).to_owned());
            }
        }
    }
    Some(prost_types::FieldMask { paths })
}

/// A ClearML project object.
pub(crate) fn project_to_json(p: &ppb::Project) -> Value {
    json!({
        "id": p.id,
        "name": p.path,
        "basename": p.name,
        "description": p.description,
        "user": p.user,
        "company": super::super::auth::token::COMPANY_ID,
        "created": iso(p.created.as_ref()),
        "last_update": iso(p.last_update.as_ref()),
        "tags": p.tags,
        "system_tags": p.system_tags,
        "default_output_destination": p.default_output_destination,
        "parent": opt_str(&p.parent_id),
    })
}

/// A ClearML model object.
pub(crate) fn model_to_json(m: &apb::Model) -> Value {
    let mut metadata = Map::new();
    let mut keys: Vec<&String> = m.metadata.keys().collect();
    keys.sort();
    for key in keys {
        let item = &m.metadata[key];
        metadata.insert(
            key.clone(),
            json!({"key": key, "type": item.r#type, "value": item.value}),
        );
    }
    json!({
        "id": m.id,
        "name": m.name,
        "user": m.user_id,
        "company": super::super::auth::token::COMPANY_ID,
        "created": iso(m.created.as_ref()),
        "last_update": iso(m.last_update.as_ref()),
        "task": opt_str(&m.task_id),
        "parent": opt_str(&m.parent_id),
        "project": opt_str(&m.project_id),
        "comment": m.comment,
        "tags": m.tags,
        "system_tags": m.system_tags,
        "framework": m.framework,
        "design": {"design": m.design},
        "labels": m.labels,
        "uri": m.uri,
        "ready": m.ready,
        "published": iso(m.published.as_ref()),
        "metadata": metadata,
        "last_iteration": m.iteration,
    })
}

/// ClearML model `design`: `{design: "text"}` keeps the text, any other
/// object is kept as its JSON text, a plain string as is.
pub(crate) fn design_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(map) if map.len() == 1 => match map.get("design") {
            Some(Value::String(s)) => s.clone(),
            _ => value.to_string(),
        },
        Value::Object(map) if map.is_empty() => String::new(),
        other => other.to_string(),
    }
}

/// A ClearML queue object (without entries).
pub(crate) fn queue_to_json(q: &qpb::Queue) -> Value {
    json!({
        "id": q.id,
        "name": q.name,
        "user": "",
        "company": super::super::auth::token::COMPANY_ID,
        "created": iso(q.created.as_ref()),
        "last_update": iso(q.last_update.as_ref()),
        "tags": q.tags,
        "system_tags": q.system_tags,
        "metadata": q.metadata.iter().map(|(k, v)| (k.clone(), json!({"key": k, "type": "str", "value": v}))).collect::<Map<_, _>>(),
        "entries": [],
    })
}

/// A queue entry, ClearML style.
pub(crate) fn entry_to_json(e: &qpb::QueueEntry) -> Value {
    json!({"task": e.task_id, "added": iso(e.added.as_ref())})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_metrics_are_keyed_by_md5() {
        let v = last_metrics_to_json(&[tpb::LastMetric {
            metric: "loss".into(),
            variant: "train".into(),
            value: 0.5,
            ..Default::default()
        }]);
        let inner = &v[md5_hex("loss")][md5_hex("train")];
        assert_eq!(inner["metric"], "loss");
        assert_eq!(inner["value"], 0.5);
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn empty_task_has_every_section_as_an_object() {
        let v = task_to_json(&tpb::Task::default());
        for key in [
            "output",
            "execution",
            "script",
            "models",
            "hyperparams",
            "configuration",
            "runtime",
            "container",
            "last_metrics",
        ] {
            assert!(v[key].is_object(), "{key}: {}", v[key]);
        }
        assert!(v["execution"]["artifacts"].is_array());
        assert_eq!(v["status"], "unknown");
    }

    #[test]
    fn tags_filters_and_projection() {
        let f = tag_filter(&["a".into(), "-b".into(), "__$all".into(), "c".into()]).unwrap();
        assert_eq!(
            (f.any_of, f.none_of, f.all_of),
            (
                vec!["a".to_owned()],
                vec!["b".to_owned()],
                vec!["c".to_owned()]
            )
        );
        let v = project_fields(
            json!({"id": "x", "status": "created", "execution": {"queue": "q", "framework": "f"}, "name": "n"}),
            &["status".into(), "execution.queue".into()],
        );
        assert_eq!(
            v,
            json!({"id": "x", "status": "created", "execution": {"queue": "q"}})
        );
    }

    #[test]
    fn times_round_trip() {
        let t = from_millis(1_700_000_000_123);
        assert_eq!(millis(Some(&t)), json!(1_700_000_000_123_i64));
        let iso_text = iso(Some(&t));
        assert_eq!(iso_text, json!("2023-11-14T22:13:20.123000+00:00"));
        assert_eq!(parse_time(&iso_text), Some(t));
    }
}
