//! Lenient request decoding for the ClearML REST API.
//!
//! ClearML clients send more than the schema: a stray `"method": "get"` in
//! every body, fields the open-source server does not know, `null` for
//! "not given", a single string where a list is expected. Decoding therefore
//! ignores unknown fields, drops `null`s before typed decoding, and accepts a
//! string for a list. A value of the wrong type is a 400 envelope naming the
//! field.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tasklab_error::{Error, ErrorCode};

/// Removes every `null` member of every object, recursively: ClearML clients
/// send `null` for "not given", which typed decoding then treats as absent.
pub(crate) fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            for v in map.values_mut() {
                strip_nulls(v);
            }
        }
        Value::Array(items) => {
            for v in items {
                strip_nulls(v);
            }
        }
        _ => {}
    }
}

/// Decodes a request body (already an object, nulls stripped) into `T`.
pub(crate) fn decode<T: DeserializeOwned>(endpoint: &str, body: &Value) -> Result<T, Error> {
    T::deserialize(body).map_err(|e| {
        Error::new(
            ErrorCode::MalformedRequest,
            format!("invalid request for {endpoint}: {e}"),
        )
    })
}

/// Parses the percent-encoded query string into an object, ClearML style:
/// numbers and `true`/`false` become JSON values, `a.b=1` becomes
/// `{"a": {"b": 1}}`, a repeated key becomes a list.
pub(crate) fn query_args(query: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        let text = percent_decode(value);
        let value = if text == "true" {
            Value::Bool(true)
        } else if text == "false" {
            Value::Bool(false)
        } else if let Ok(n) = text.parse::<i64>() {
            Value::from(n)
        } else if let Some(n) = text
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && !text.is_empty())
        {
            Value::from(n)
        } else {
            Value::String(text)
        };
        let mut target = &mut out;
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or_default().to_owned();
        for part in parts {
            let entry = target
                .entry(part.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(next) = entry else {
                unreachable!()
            };
            target = next;
        }
        match target.get_mut(&last) {
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None => {
                target.insert(last, value);
            }
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A list of strings that also accepts a single string (ClearML clients send
/// either for id and name filters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StrList(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for StrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<Option<String>>),
        }
        match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(s)) => Ok(StrList(vec![s])),
            Ok(OneOrMany::Many(v)) => Ok(StrList(v.into_iter().flatten().collect())),
            Err(_) => Err(serde::de::Error::custom(
                "invalid type: expected a string or a list of strings",
            )),
        }
    }
}

impl StrList {
    /// True when no string was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A string that also accepts a number or a boolean (ClearML values such as
/// hyperparameters arrive as strings but some clients send raw numbers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Text(pub(crate) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Text(s)),
            Value::Number(n) => Ok(Text(n.to_string())),
            Value::Bool(b) => Ok(Text(b.to_string())),
            Value::Null => Ok(Text(String::new())),
            other => Ok(Text(other.to_string())),
        }
    }
}

/// A required string field, with ClearML's error when missing.
pub(crate) fn required<'a>(value: &'a Option<String>, field: &str) -> Result<&'a str, Error> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Error::new(
            ErrorCode::MissingField,
            format!("missing required field: {field}"),
        )
        .with_field("field", field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_strings_become_typed_nested_values() {
        let args = query_args("expiration_sec=60&enabled=true&types=config&a.b=1.5&x=%2Fp+q");
        assert_eq!(
            Value::Object(args),
            json!({"expiration_sec": 60, "enabled": true, "types": "config", "a": {"b": 1.5}, "x": "/p q"})
        );
        let args = query_args("id=a&id=b&bad=%zz&end=%4");
        assert_eq!(
            Value::Object(args),
            json!({"id": ["a", "b"], "bad": "%zz", "end": "%4"})
        );
    }

    #[test]
    fn nulls_are_dropped_and_lists_accept_one_string() {
        #[derive(Debug, Deserialize)]
        struct Req {
            #[serde(default)]
            id: StrList,
            #[serde(default)]
            tags: Vec<String>,
        }
        let mut body = json!({"id": "t1", "tags": null, "method": "get", "x": {"y": null}});
        strip_nulls(&mut body);
        assert_eq!(body, json!({"id": "t1", "method": "get", "x": {}}));
        let req: Req = decode("tasks.get_all", &body).unwrap();
        assert_eq!(req.id.0, vec!["t1"]);
        assert!(req.tags.is_empty());
        let err = decode::<Req>("tasks.get_all", &json!({"tags": 5})).unwrap_err();
        assert_eq!(err.code(), ErrorCode::MalformedRequest);
        assert!(err.message().contains("tasks.get_all"), "{}", err.message());
    }
}
