//! The stored text form of a task's sections: JSON objects with stable key
//! names, an empty string for an empty section (most tasks have several).
//!
//! Written by hand against `serde_json::Value` so the stored form is a
//! deliberate format, independent of how the Rust types are laid out.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use tasklab_error::Error;

use crate::model::{
    Container, Execution, HyperParams, ModelRef, Requirements, Runtime, Script, TaskModels,
    TypedValue, TypedValues, from_micros, to_micros,
};

fn decode_err(what: &str, err: impl std::fmt::Display) -> Error {
    Error::internal(std::io::Error::other(format!(
        "stored {what} is not valid: {err}"
    )))
}

fn parse(what: &str, text: &str) -> Result<Option<Map<String, Value>>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(text).map_err(|e| decode_err(what, e))? {
        Value::Object(map) => Ok(Some(map)),
        _ => Err(decode_err(what, "not an object")),
    }
}

fn text_of(map: &Map<String, Value>, key: &str) -> String {
    map.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn write(value: Value, empty: bool) -> String {
    if empty {
        String::new()
    } else {
        value.to_string()
    }
}

/// Encodes a list of tags.
pub(crate) fn encode_tags(tags: &[String]) -> String {
    if tags.is_empty() {
        String::new()
    } else {
        Value::from(tags.to_vec()).to_string()
    }
}

/// Decodes a list of tags.
pub(crate) fn decode_tags(text: &str) -> Result<Vec<String>, Error> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(text).map_err(|e| decode_err("tags", e))? {
        Value::Array(items) => Ok(items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()),
        _ => Err(decode_err("tags", "not an array")),
    }
}

fn typed_values_value(values: &TypedValues) -> Value {
    let mut out = Map::new();
    for (name, v) in values {
        out.insert(
            name.clone(),
            json!({"value": v.value, "type": v.value_type, "description": v.description}),
        );
    }
    Value::Object(out)
}

fn typed_values_of(map: &Map<String, Value>) -> TypedValues {
    map.iter()
        .map(|(name, v)| {
            let empty = Map::new();
            let obj = v.as_object().unwrap_or(&empty);
            (
                name.clone(),
                TypedValue {
                    value: text_of(obj, "value"),
                    value_type: text_of(obj, "type"),
                    description: text_of(obj, "description"),
                },
            )
        })
        .collect()
}

/// Encodes named values.
pub(crate) fn encode_typed_values(values: &TypedValues) -> String {
    write(typed_values_value(values), values.is_empty())
}

/// Decodes named values.
pub(crate) fn decode_typed_values(text: &str) -> Result<TypedValues, Error> {
    Ok(parse("typed values", text)?
        .map(|m| typed_values_of(&m))
        .unwrap_or_default())
}

/// Encodes hyperparameters.
pub(crate) fn encode_hyperparams(params: &HyperParams) -> String {
    let mut out = Map::new();
    for (section, values) in params {
        out.insert(section.clone(), typed_values_value(values));
    }
    write(Value::Object(out), params.is_empty())
}

/// Decodes hyperparameters.
pub(crate) fn decode_hyperparams(text: &str) -> Result<HyperParams, Error> {
    let Some(map) = parse("hyperparams", text)? else {
        return Ok(HyperParams::new());
    };
    Ok(map
        .iter()
        .map(|(section, v)| {
            let params = v.as_object().map(typed_values_of).unwrap_or_default();
            (section.clone(), params)
        })
        .collect())
}

fn string_map_value(map: &BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect(),
    )
}

/// Encodes the script section.
pub(crate) fn encode_script(s: &Script) -> String {
    let r = &s.requirements;
    let value = json!({
        "repository": s.repository,
        "branch": s.branch,
        "tag": s.tag,
        "version_num": s.version_num,
        "entry_point": s.entry_point,
        "working_dir": s.working_dir,
        "binary": s.binary,
        "diff": s.diff,
        "requirements": {
            "pip": r.pip,
            "conda": r.conda,
            "orig_pip": r.orig_pip,
            "other": string_map_value(&r.other),
        },
    });
    write(value, *s == Script::default())
}

/// Decodes the script section.
pub(crate) fn decode_script(text: &str) -> Result<Script, Error> {
    let Some(m) = parse("script", text)? else {
        return Ok(Script::default());
    };
    let empty = Map::new();
    let req = m
        .get("requirements")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let other = req
        .get("other")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Script {
        repository: text_of(&m, "repository"),
        branch: text_of(&m, "branch"),
        tag: text_of(&m, "tag"),
        version_num: text_of(&m, "version_num"),
        entry_point: text_of(&m, "entry_point"),
        working_dir: text_of(&m, "working_dir"),
        binary: text_of(&m, "binary"),
        diff: text_of(&m, "diff"),
        requirements: Requirements {
            pip: text_of(req, "pip"),
            conda: text_of(req, "conda"),
            orig_pip: text_of(req, "orig_pip"),
            other,
        },
    })
}

/// Encodes the container section.
pub(crate) fn encode_container(c: &Container) -> String {
    let value = json!({
        "image": c.image,
        "arguments": c.arguments,
        "setup_shell_script": c.setup_shell_script,
    });
    write(value, *c == Container::default())
}

/// Decodes the container section.
pub(crate) fn decode_container(text: &str) -> Result<Container, Error> {
    let Some(m) = parse("container", text)? else {
        return Ok(Container::default());
    };
    Ok(Container {
        image: text_of(&m, "image"),
        arguments: text_of(&m, "arguments"),
        setup_shell_script: text_of(&m, "setup_shell_script"),
    })
}

/// Encodes the execution section except its queue id (a column of its own).
pub(crate) fn encode_execution(e: &Execution) -> String {
    let labels: Map<String, Value> = e
        .model_labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(*v)))
        .collect();
    let value = json!({"framework": e.framework, "model_labels": labels});
    write(value, e.framework.is_empty() && e.model_labels.is_empty())
}

/// Decodes the execution section; the queue id is left empty.
pub(crate) fn decode_execution(text: &str) -> Result<Execution, Error> {
    let Some(m) = parse("execution", text)? else {
        return Ok(Execution::default());
    };
    let model_labels = m
        .get("model_labels")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Execution {
        queue_id: String::new(),
        framework: text_of(&m, "framework"),
        model_labels,
    })
}

/// Encodes run-time values.
pub(crate) fn encode_runtime(r: &Runtime) -> String {
    write(Value::Object(r.clone()), r.is_empty())
}

/// Decodes run-time values.
pub(crate) fn decode_runtime(text: &str) -> Result<Runtime, Error> {
    Ok(parse("runtime", text)?.unwrap_or_default())
}

fn model_refs_value(refs: &[ModelRef]) -> Value {
    Value::Array(
        refs.iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "model_id": r.model_id,
                    "updated": r.updated.map(to_micros),
                })
            })
            .collect(),
    )
}

fn model_refs_of(value: Option<&Value>) -> Vec<ModelRef> {
    let Some(Value::Array(items)) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(Value::as_object)
        .map(|o| ModelRef {
            name: text_of(o, "name"),
            model_id: text_of(o, "model_id"),
            updated: o.get("updated").and_then(Value::as_i64).map(from_micros),
        })
        .collect()
}

/// Encodes model references.
pub(crate) fn encode_models(m: &TaskModels) -> String {
    let value = json!({"input": model_refs_value(&m.input), "output": model_refs_value(&m.output)});
    write(value, m.input.is_empty() && m.output.is_empty())
}

/// Decodes model references.
pub(crate) fn decode_models(text: &str) -> Result<TaskModels, Error> {
    let Some(m) = parse("models", text)? else {
        return Ok(TaskModels::default());
    };
    Ok(TaskModels {
        input: model_refs_of(m.get("input")),
        output: model_refs_of(m.get("output")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::truncate_micros;

    #[test]
    fn sections_round_trip() {
        let script = Script {
            repository: "https://example.invalid/r.git".into(),
            entry_point: "train.py".into(),
            diff: "print('x')\n".into(),
            requirements: Requirements {
                pip: "torch==2.1\n".into(),
                other: [("apt".to_owned(), "libgl1".to_owned())].into(),
                ..Requirements::default()
            },
            ..Script::default()
        };
        assert_eq!(decode_script(&encode_script(&script)).unwrap(), script);

        let mut params = HyperParams::new();
        params.entry("Args".into()).or_default().insert(
            "lr".into(),
            TypedValue {
                value: "0.1".into(),
                value_type: "float".into(),
                description: "d".into(),
            },
        );
        assert_eq!(
            decode_hyperparams(&encode_hyperparams(&params)).unwrap(),
            params
        );

        let models = TaskModels {
            input: vec![ModelRef {
                name: "model".into(),
                model_id: "m1".into(),
                updated: Some(truncate_micros(chrono::Utc::now())),
            }],
            output: vec![],
        };
        assert_eq!(decode_models(&encode_models(&models)).unwrap(), models);

        let exec = Execution {
            queue_id: String::new(),
            framework: "PyTorch".into(),
            model_labels: [("cat".to_owned(), 1)].into(),
        };
        assert_eq!(decode_execution(&encode_execution(&exec)).unwrap(), exec);
        let tags = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(decode_tags(&encode_tags(&tags)).unwrap(), tags);
    }

    #[test]
    fn empty_sections_are_stored_as_empty_text() {
        assert_eq!(encode_script(&Script::default()), "");
        assert_eq!(encode_models(&TaskModels::default()), "");
        assert_eq!(decode_container("").unwrap(), Container::default());
    }

    #[test]
    fn corrupt_text_is_an_internal_error() {
        let err = decode_hyperparams("[1,2").unwrap_err();
        assert_eq!(err.code(), tasklab_error::ErrorCode::Internal);
    }
}
