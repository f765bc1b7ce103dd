//! The body of `events.add_batch`, decoded straight into typed events.
//!
//! ClearML clients send one JSON object a line (rarely, one JSON list of
//! objects), thousands of lines a request: this is the hottest decoding path
//! of the gateway. Each line is deserialized into a [`RawEvent`] whose
//! strings borrow from the request body (only strings with escapes are
//! copied, once, while unescaping), checked in place into a [`Checked`]
//! event, and only then turned into the protobuf `Event`, whose `String`s are
//! the one copy the gRPC message needs. No `serde_json::Value` is built
//! unless a client sends a non-string where text is expected.
//!
//! The decoding accepts and refuses exactly what the `serde_json::Value`
//! decoding it replaced did (a test keeps that decoding as the reference and
//! compares thousands of generated bodies), with the leniency of
//! [`super::args`]:
//! * a line that is not JSON, or not an object, rejects the whole request
//!   (400 `malformed_request` naming the line); in the list form a
//!   non-object item is one bad event;
//! * every field accepts any JSON type, so a wrong type never fails the line:
//!   `null` means "not given"; a non-string where text is expected becomes
//!   its JSON text (with `null` members removed); a number may be sent as a
//!   string; a non-boolean flag is false; unknown fields are ignored and a
//!   repeated key keeps its last value;
//! * [`check`] validates in a fixed order (task, iteration, the kind and its
//!   fields, timestamp), so an event with several faults is counted under
//!   its first one.
//!
//! One deliberate difference: in the list form, `null` members inside a
//! non-string text field used to survive into its JSON text; they are now
//! dropped there too, as the lines form always did.
//!
//! The checked events keep `task`, `metric` and `variant` borrowed, so a
//! caller can group them (for instance scalars by series) before paying for
//! the owned protobuf strings.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::metrics::v1 as mpb;

use super::args;
use super::convert::from_millis;

fn malformed(message: String) -> Error {
    Error::new(ErrorCode::MalformedRequest, message)
}

/// Decodes a batch body and hands every event to `each`, in order: checked,
/// or the reason it is refused (counted in `errors_info`). A body that is
/// not UTF-8, or a line that is not a JSON object, is an error for the whole
/// request; `each` may then have seen some events, which the caller drops.
pub(crate) fn for_each_event<'a>(
    body: &'a [u8],
    mut each: impl FnMut(Result<Checked<'a>, String>),
) -> Result<(), Error> {
    let text =
        std::str::from_utf8(body).map_err(|_| malformed("request body is not UTF-8".to_owned()))?;
    // The list form must be one valid JSON list as a whole; anything else is
    // read as JSON lines (a line holding a list is then refused there).
    if text.trim_start().starts_with('[')
        && let Ok(items) = serde_json::from_str::<Vec<Line<'a>>>(text)
    {
        for item in items {
            each(match item {
                Line::Event(raw) => check(raw),
                Line::NotObject(_) => Err("event is not an object".to_owned()),
            });
        }
        return Ok(());
    }
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Line<'a>>(line) {
            Ok(Line::Event(raw)) => each(check(raw)),
            Ok(Line::NotObject(kind)) => {
                return Err(malformed(format!(
                    "line {} must be a JSON object, not {kind}",
                    n + 1
                )));
            }
            Err(e) => {
                return Err(malformed(format!("line {} is not valid JSON: {e}", n + 1)));
            }
        }
    }
    Ok(())
}

/// One event that passed [`check`], its names still borrowed from the body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked<'a> {
    pub(crate) task: Cow<'a, str>,
    pub(crate) metric: Cow<'a, str>,
    pub(crate) variant: Cow<'a, str>,
    pub(crate) iteration: i64,
    /// Milliseconds since the epoch; `None` lets the service stamp it.
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) model_event: bool,
    pub(crate) allow_locked: bool,
    pub(crate) payload: mpb::event::Payload,
}

impl Checked<'_> {
    /// The metrics contract's event (copies the borrowed names once).
    pub(crate) fn into_event(self) -> mpb::Event {
        mpb::Event {
            task_id: self.task.into_owned(),
            model_event: self.model_event,
            timestamp: self.timestamp_ms.map(from_millis),
            iteration: self.iteration,
            metric: self.metric.into_owned(),
            variant: self.variant.into_owned(),
            sequence: 0,
            allow_locked: self.allow_locked,
            received: None,
            payload: Some(self.payload),
        }
    }
}

fn level(name: &str) -> mpb::LogLevel {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    if is("notset") {
        mpb::LogLevel::Notset
    } else if is("debug") {
        mpb::LogLevel::Debug
    } else if is("verbose") {
        mpb::LogLevel::Verbose
    } else if is("warn") || is("warning") {
        mpb::LogLevel::Warning
    } else if is("error") {
        mpb::LogLevel::Error
    } else if is("fatal") || is("critical") {
        mpb::LogLevel::Critical
    } else {
        mpb::LogLevel::Info
    }
}

/// Validates one ClearML event; the error is the reason counted in
/// `errors_info`.
pub(crate) fn check(e: RawEvent<'_>) -> Result<Checked<'_>, String> {
    let task = e.task.into_cow();
    if task.is_empty() {
        return Err("event has no task".to_owned());
    }
    let kind = e.kind.into_cow();
    let iteration = e.iter.get("iter")?.unwrap_or(0.0);
    if !(-9.2e18..=9.2e18).contains(&iteration) {
        return Err("iter is out of range".to_owned());
    }
    let payload = match kind.as_ref() {
        "training_stats_scalar" => mpb::event::Payload::Scalar(mpb::ScalarEvent {
            value: e.value.get("value")?.ok_or("scalar event has no value")?,
            x_axis_label: e.x_axis_label.into_string(),
        }),
        "training_stats_vector" => mpb::event::Payload::Vector(mpb::VectorEvent {
            values: match e.values {
                Values::Numbers(values) => values,
                Values::NotNumbers => return Err("values must be numbers".to_owned()),
                Values::Absent | Values::NotList => {
                    return Err("vector event has no values".to_owned());
                }
            },
        }),
        "plot" => mpb::event::Payload::Plot(mpb::PlotEvent {
            plot_json: e.plot_str.into_string(),
            skip_validation: e.skip_validation.0,
        }),
        "log" => mpb::event::Payload::Log(mpb::LogEvent {
            level: level(&e.level.into_cow()) as i32,
            worker: e.worker.into_string(),
            message: e.msg.into_string(),
        }),
        "training_debug_image" => mpb::event::Payload::DebugSample(mpb::DebugSampleEvent {
            url: e.url.into_string(),
            key: e.key.into_string(),
        }),
        "" => return Err("event has no type".to_owned()),
        other => return Err(format!("unknown event type {other}")),
    };
    let timestamp_ms = e
        .timestamp
        .get("timestamp")?
        .filter(|t| *t > 0.0)
        .map(|t| t as i64);
    Ok(Checked {
        task,
        metric: e.metric.into_cow(),
        variant: e.variant.into_cow(),
        iteration: iteration as i64,
        timestamp_ms,
        model_event: e.model_event.0,
        allow_locked: e.allow_locked.0,
        payload,
    })
}

/// One item of a batch: an event object, or the kind of anything else.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "decoded one line at a time on the stack; a box would cost an allocation a line"
)]
pub(crate) enum Line<'a> {
    Event(RawEvent<'a>),
    NotObject(&'static str),
}

/// Every field a ClearML client sends, for every event type, as sent.
#[derive(Debug, Default)]
pub(crate) struct RawEvent<'a> {
    task: Text<'a>,
    kind: Text<'a>,
    iter: Num<'a>,
    metric: Text<'a>,
    variant: Text<'a>,
    timestamp: Num<'a>,
    model_event: Flag,
    allow_locked: Flag,
    /// `training_stats_scalar`
    value: Num<'a>,
    x_axis_label: Text<'a>,
    /// `training_stats_vector`
    values: Values,
    /// `plot`
    plot_str: Text<'a>,
    skip_validation: Flag,
    /// `log`
    level: Text<'a>,
    worker: Text<'a>,
    msg: Text<'a>,
    /// `training_debug_image`
    url: Text<'a>,
    key: Text<'a>,
}

/// A text field: absent (or `null`), a string, or any other JSON value,
/// which reads as its JSON text.
#[derive(Debug, Default)]
enum Text<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Json(Value),
}

impl<'a> Text<'a> {
    fn into_cow(self) -> Cow<'a, str> {
        match self {
            Text::Absent => Cow::Borrowed(""),
            Text::Str(s) => s,
            Text::Json(mut v) => {
                args::strip_nulls(&mut v);
                Cow::Owned(v.to_string())
            }
        }
    }

    fn into_string(self) -> String {
        self.into_cow().into_owned()
    }
}

/// A number field: absent (or `null`), a number, a string to parse when the
/// field is read, or any other JSON value (never a number).
#[derive(Debug, Default)]
enum Num<'a> {
    #[default]
    Absent,
    Number(f64),
    Str(Cow<'a, str>),
    Other,
}

impl Num<'_> {
    fn get(&self, name: &str) -> Result<Option<f64>, String> {
        match self {
            Num::Absent => Ok(None),
            Num::Number(n) => Ok(Some(*n)),
            Num::Str(s) => s
                .parse::<f64>()
                .map(Some)
                .map_err(|_| format!("{name} is not a number")),
            Num::Other => Err(format!("{name} is not a number")),
        }
    }
}

/// A boolean field: true only when sent as `true`.
#[derive(Debug, Default, Clone, Copy)]
struct Flag(bool);

/// The `values` of a vector event.
#[derive(Debug, Default)]
enum Values {
    #[default]
    Absent,
    Numbers(Vec<f64>),
    /// A list with a member that is not a number.
    NotNumbers,
    /// Anything but a list (or `null`).
    NotList,
}

/// Consumes any JSON value. It goes through `deserialize_any`, as a `Value`
/// would, so it accepts and refuses exactly the same input.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(Kind).map(|_| Skip)
    }
}

/// Drains a list or object someone does not want.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Skip>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<Skip, Skip>()?.is_some() {}
    Ok(())
}

/// Consumes any JSON value and says what it was, in the words of the
/// "must be a JSON object, not …" error.
struct Kind;

impl<'de> Visitor<'de> for Kind {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<&'static str, E> {
        Ok("a boolean")
    }
    fn visit_i64<E>(self, _: i64) -> Result<&'static str, E> {
        Ok("a number")
    }
    fn visit_u64<E>(self, _: u64) -> Result<&'static str, E> {
        Ok("a number")
    }
    fn visit_f64<E>(self, _: f64) -> Result<&'static str, E> {
        Ok("a number")
    }
    fn visit_str<E>(self, _: &str) -> Result<&'static str, E> {
        Ok("a string")
    }
    fn visit_unit<E>(self) -> Result<&'static str, E> {
        Ok("null")
    }
    fn visit_none<E>(self) -> Result<&'static str, E> {
        Ok("null")
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_any(Kind)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<&'static str, A::Error> {
        drain_seq(seq).map(|()| "a list")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<&'static str, A::Error> {
        drain_map(map).map(|()| "an object")
    }
}

/// The keys of [`RawEvent`]; anything else is ignored.
enum Field {
    Task,
    Type,
    Iter,
    Metric,
    Variant,
    Timestamp,
    ModelEvent,
    AllowLocked,
    Value,
    XAxisLabel,
    Values,
    PlotStr,
    SkipValidation,
    Level,
    Worker,
    Msg,
    Url,
    Key,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "task" => Field::Task,
                    "type" => Field::Type,
                    "iter" => Field::Iter,
                    "metric" => Field::Metric,
                    "variant" => Field::Variant,
                    "timestamp" => Field::Timestamp,
                    "model_event" => Field::ModelEvent,
                    "allow_locked" => Field::AllowLocked,
                    "value" => Field::Value,
                    "x_axis_label" => Field::XAxisLabel,
                    "values" => Field::Values,
                    "plot_str" => Field::PlotStr,
                    "skip_validation" => Field::SkipValidation,
                    "level" => Field::Level,
                    "worker" => Field::Worker,
                    "msg" => Field::Msg,
                    "url" => Field::Url,
                    "key" => Field::Key,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> Deserialize<'de> for Line<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Line<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Line<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line<'de>, A::Error> {
                let mut e = RawEvent::default();
                // Assignments, not `Option::insert`: a repeated key keeps its
                // last value, as a JSON object decoded to a map would.
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Task => e.task = map.next_value()?,
                        Field::Type => e.kind = map.next_value()?,
                        Field::Iter => e.iter = map.next_value()?,
                        Field::Metric => e.metric = map.next_value()?,
                        Field::Variant => e.variant = map.next_value()?,
                        Field::Timestamp => e.timestamp = map.next_value()?,
                        Field::ModelEvent => e.model_event = map.next_value()?,
                        Field::AllowLocked => e.allow_locked = map.next_value()?,
                        Field::Value => e.value = map.next_value()?,
                        Field::XAxisLabel => e.x_axis_label = map.next_value()?,
                        Field::Values => e.values = map.next_value()?,
                        Field::PlotStr => e.plot_str = map.next_value()?,
                        Field::SkipValidation => e.skip_validation = map.next_value()?,
                        Field::Level => e.level = map.next_value()?,
                        Field::Worker => e.worker = map.next_value()?,
                        Field::Msg => e.msg = map.next_value()?,
                        Field::Url => e.url = map.next_value()?,
                        Field::Key => e.key = map.next_value()?,
                        Field::Other => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(Line::Event(e))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Line<'de>, E> {
                Ok(Line::NotObject("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Line<'de>, E> {
                Ok(Line::NotObject("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Line<'de>, E> {
                Ok(Line::NotObject("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Line<'de>, E> {
                Ok(Line::NotObject("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Line<'de>, E> {
                Ok(Line::NotObject("a string"))
            }
            fn visit_unit<E>(self) -> Result<Line<'de>, E> {
                Ok(Line::NotObject("null"))
            }
            fn visit_none<E>(self) -> Result<Line<'de>, E> {
                Ok(Line::NotObject("null"))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Line<'de>, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Line<'de>, A::Error> {
                Kind.visit_seq(seq).map(Line::NotObject)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Text<'de>, E> {
                Ok(Text::Absent)
            }
            fn visit_none<E>(self) -> Result<Text<'de>, E> {
                Ok(Text::Absent)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Text<'de>, D::Error> {
                Text::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Text<'de>, E> {
                Ok(Text::Json(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Text<'de>, E> {
                Ok(Text::Json(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Text<'de>, E> {
                Ok(Text::Json(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Text<'de>, E> {
                Ok(Text::Json(Value::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'de>, A::Error> {
                Value::deserialize(SeqAccessDeserializer::new(seq)).map(Text::Json)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'de>, A::Error> {
                Value::deserialize(MapAccessDeserializer::new(map)).map(Text::Json)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Num<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Num<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Num<'de>, E> {
                Ok(Num::Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Num<'de>, E> {
                Ok(Num::Number(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Num<'de>, E> {
                Ok(Num::Number(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Num<'de>, E> {
                Ok(Num::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Num<'de>, E> {
                Ok(Num::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Num<'de>, E> {
                Ok(Num::Absent)
            }
            fn visit_none<E>(self) -> Result<Num<'de>, E> {
                Ok(Num::Absent)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Num<'de>, D::Error> {
                Num::deserialize(d)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Num<'de>, E> {
                Ok(Num::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Num<'de>, A::Error> {
                drain_seq(seq).map(|()| Num::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Num<'de>, A::Error> {
                drain_map(map).map(|()| Num::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flag, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_unit<E>(self) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_none<E>(self) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Flag, D::Error> {
                Flag::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Flag, A::Error> {
                drain_seq(seq).map(|()| Flag(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Flag, A::Error> {
                drain_map(map).map(|()| Flag(false))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Values, D::Error> {
        /// One member of `values`: a number, or anything else (consumed).
        struct Member(Option<f64>);
        impl<'de> Deserialize<'de> for Member {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Member, D::Error> {
                struct M;
                impl<'de> Visitor<'de> for M {
                    type Value = Option<f64>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("any JSON value")
                    }
                    fn visit_i64<E>(self, v: i64) -> Result<Option<f64>, E> {
                        Ok(Some(v as f64))
                    }
                    fn visit_u64<E>(self, v: u64) -> Result<Option<f64>, E> {
                        Ok(Some(v as f64))
                    }
                    fn visit_f64<E>(self, v: f64) -> Result<Option<f64>, E> {
                        Ok(Some(v))
                    }
                    fn visit_bool<E>(self, _: bool) -> Result<Option<f64>, E> {
                        Ok(None)
                    }
                    fn visit_str<E>(self, _: &str) -> Result<Option<f64>, E> {
                        Ok(None)
                    }
                    fn visit_unit<E>(self) -> Result<Option<f64>, E> {
                        Ok(None)
                    }
                    fn visit_none<E>(self) -> Result<Option<f64>, E> {
                        Ok(None)
                    }
                    fn visit_some<D: Deserializer<'de>>(
                        self,
                        d: D,
                    ) -> Result<Option<f64>, D::Error> {
                        d.deserialize_any(M)
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<f64>, A::Error> {
                        drain_seq(seq).map(|()| None)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<f64>, A::Error> {
                        drain_map(map).map(|()| None)
                    }
                }
                d.deserialize_any(M).map(Member)
            }
        }

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Values;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                let mut numbers = true;
                while let Some(Member(member)) = seq.next_element()? {
                    match member {
                        Some(v) if numbers => out.push(v),
                        Some(_) => {}
                        None => numbers = false,
                    }
                }
                Ok(if numbers {
                    Values::Numbers(out)
                } else {
                    Values::NotNumbers
                })
            }
            fn visit_unit<E>(self) -> Result<Values, E> {
                Ok(Values::Absent)
            }
            fn visit_none<E>(self) -> Result<Values, E> {
                Ok(Values::Absent)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Values, D::Error> {
                Values::deserialize(d)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Values, E> {
                Ok(Values::NotList)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Values, E> {
                Ok(Values::NotList)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Values, E> {
                Ok(Values::NotList)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Values, E> {
                Ok(Values::NotList)
            }
            fn visit_str<E>(self, _: &str) -> Result<Values, E> {
                Ok(Values::NotList)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Values, A::Error> {
                drain_map(map).map(|()| Values::NotList)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;

    /// Decodes a body into what `events.add_batch` makes of it.
    fn decode(body: &[u8]) -> Result<Vec<Result<mpb::Event, String>>, String> {
        let mut out = Vec::new();
        for_each_event(body, |e| out.push(e.map(Checked::into_event))).map_err(|e| {
            assert_eq!(e.code(), ErrorCode::MalformedRequest);
            e.message().to_owned()
        })?;
        Ok(out)
    }

    /// The decoding this module replaced (a `serde_json::Value` per line,
    /// then field lookups), kept as the reference the typed decoding must
    /// agree with.
    mod reference {
        use super::*;

        fn text(map: &Map<String, Value>, key: &str) -> String {
            match map.get(key) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            }
        }

        fn number(map: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(Value::String(s)) => s
                    .parse::<f64>()
                    .map(Some)
                    .map_err(|_| format!("{key} is not a number")),
                Some(_) => Err(format!("{key} is not a number")),
            }
        }

        fn level(name: &str) -> mpb::LogLevel {
            match name.to_ascii_lowercase().as_str() {
                "notset" => mpb::LogLevel::Notset,
                "debug" => mpb::LogLevel::Debug,
                "verbose" => mpb::LogLevel::Verbose,
                "warn" | "warning" => mpb::LogLevel::Warning,
                "error" => mpb::LogLevel::Error,
                "fatal" | "critical" => mpb::LogLevel::Critical,
                _ => mpb::LogLevel::Info,
            }
        }

        fn event(value: &Value) -> Result<mpb::Event, String> {
            let Value::Object(map) = value else {
                return Err("event is not an object".to_owned());
            };
            let task = text(map, "task");
            if task.is_empty() {
                return Err("event has no task".to_owned());
            }
            let kind = text(map, "type");
            let iteration = number(map, "iter")?.unwrap_or(0.0);
            if !(-9.2e18..=9.2e18).contains(&iteration) {
                return Err("iter is out of range".to_owned());
            }
            let payload = match kind.as_str() {
                "training_stats_scalar" => mpb::event::Payload::Scalar(mpb::ScalarEvent {
                    value: number(map, "value")?.ok_or("scalar event has no value")?,
                    x_axis_label: text(map, "x_axis_label"),
                }),
                "training_stats_vector" => {
                    let values = match map.get("values") {
                        Some(Value::Array(items)) => items
                            .iter()
                            .map(|v| v.as_f64().ok_or("values must be numbers"))
                            .collect::<Result<Vec<_>, _>>()?,
                        _ => return Err("vector event has no values".to_owned()),
                    };
                    mpb::event::Payload::Vector(mpb::VectorEvent { values })
                }
                "plot" => mpb::event::Payload::Plot(mpb::PlotEvent {
                    plot_json: text(map, "plot_str"),
                    skip_validation: map
                        .get("skip_validation")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                }),
                "log" => mpb::event::Payload::Log(mpb::LogEvent {
                    level: level(&text(map, "level")) as i32,
                    worker: text(map, "worker"),
                    message: text(map, "msg"),
                }),
                "training_debug_image" => mpb::event::Payload::DebugSample(mpb::DebugSampleEvent {
                    url: text(map, "url"),
                    key: text(map, "key"),
                }),
                "" => return Err("event has no type".to_owned()),
                other => return Err(format!("unknown event type {other}")),
            };
            let timestamp = number(map, "timestamp")?
                .filter(|t| *t > 0.0)
                .map(|t| from_millis(t as i64));
            let flag = |k: &str| map.get(k).and_then(Value::as_bool).unwrap_or(false);
            Ok(mpb::Event {
                task_id: task,
                model_event: flag("model_event"),
                timestamp,
                iteration: iteration as i64,
                metric: text(map, "metric"),
                variant: text(map, "variant"),
                sequence: 0,
                allow_locked: flag("allow_locked"),
                received: None,
                payload: Some(payload),
            })
        }

        use crate::http::kind;

        pub(super) fn decode(bytes: &[u8]) -> Result<Vec<Result<mpb::Event, String>>, String> {
            let text =
                std::str::from_utf8(bytes).map_err(|_| "request body is not UTF-8".to_owned())?;
            if let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(text) {
                // The one deliberate difference: the list form used to keep
                // `null` members inside a non-string text field (which then
                // showed in its JSON text); it now drops them as the lines
                // form always did.
                items.iter_mut().for_each(args::strip_nulls);
                return Ok(items.iter().map(event).collect());
            }
            let mut out = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let mut value: Value = serde_json::from_str(line)
                    .map_err(|e| format!("line {} is not valid JSON: {e}", n + 1))?;
                if !value.is_object() {
                    return Err(format!(
                        "line {} must be a JSON object, not {}",
                        n + 1,
                        kind(&value)
                    ));
                }
                args::strip_nulls(&mut value);
                out.push(event(&value));
            }
            Ok(out)
        }
    }

    /// Debug text compares NaN equal to NaN, which `PartialEq` does not.
    fn same(
        a: &Result<Vec<Result<mpb::Event, String>>, String>,
        b: &Result<Vec<Result<mpb::Event, String>>, String>,
    ) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[track_caller]
    fn agrees(body: &str) {
        let new = decode(body.as_bytes());
        let old = reference::decode(body.as_bytes());
        assert!(
            same(&new, &old),
            "body {body:?}\n typed: {new:?}\n   old: {old:?}"
        );
    }

    #[test]
    fn sdk_lines_of_every_type_decode_without_copying_plain_strings() {
        let body = concat!(
            r#"{"timestamp":1795637012180,"type":"training_stats_scalar","task":"T","iter":0,"metric":"loss","variant":"train","value":1.0,"allow_locked":false,"model_event":false,"method":"get"}"#,
            "\n",
            r#"{"type":"training_stats_scalar","task":"T","iter":-2147483648,"metric":"Summary","variant":"acc","value":0.9}"#,
            "\n",
            r#"{"type":"training_stats_vector","task":"T","iter":2,"metric":"v","variant":"s","values":[1,2.5,-3]}"#,
            "\n",
            r#"{"type":"plot","task":"T","iter":0,"metric":"hist","variant":"s","plot_str":"{\"data\":[{\"y\":[1,2]}],\"layout\":{}}","skip_validation":true}"#,
            "\r\n",
            r#"{"type":"training_debug_image","task":"T","iter":0,"metric":"img","variant":"s","key":"p/img.jpeg","url":"http://h/p/img.jpeg"}"#,
            "\n\n",
            r#"{"type":"log","task":"T","level":"WARNING","worker":"vm","msg":"a\nb","timestamp":"1795637012181"}"#,
            "\n",
        );
        let mut checked = Vec::new();
        for_each_event(body.as_bytes(), |e| checked.push(e.unwrap())).unwrap();
        assert_eq!(checked.len(), 6);
        for e in &checked {
            assert!(matches!(e.task, Cow::Borrowed("T")), "{e:?}");
            assert!(matches!(e.metric, Cow::Borrowed(_)), "{e:?}");
            assert!(matches!(e.variant, Cow::Borrowed(_)), "{e:?}");
        }
        let events: Vec<mpb::Event> = checked.into_iter().map(Checked::into_event).collect();
        use mpb::event::Payload as P;
        assert_eq!(events[0].timestamp, Some(from_millis(1_795_637_012_180)));
        assert!(matches!(&events[0].payload, Some(P::Scalar(s)) if s.value == 1.0));
        assert_eq!(events[1].iteration, -2_147_483_648);
        assert!(matches!(&events[2].payload, Some(P::Vector(v)) if v.values == [1.0, 2.5, -3.0]));
        assert!(matches!(&events[3].payload,
            Some(P::Plot(p)) if p.plot_json == r#"{"data":[{"y":[1,2]}],"layout":{}}"# && p.skip_validation));
        assert!(matches!(&events[4].payload,
            Some(P::DebugSample(d)) if d.key == "p/img.jpeg" && d.url == "http://h/p/img.jpeg"));
        assert!(matches!(&events[5].payload,
            Some(P::Log(l)) if l.level == mpb::LogLevel::Warning as i32 && l.message == "a\nb" && l.worker == "vm"));
        assert_eq!(events[5].timestamp, Some(from_millis(1_795_637_012_181)));
        assert!(same(
            &Ok(events.into_iter().map(Ok).collect()),
            &reference::decode(body.as_bytes())
        ));
    }

    #[test]
    fn lenient_fields_and_the_first_fault_wins() {
        let line = |v: Value| decode(v.to_string().as_bytes()).unwrap().remove(0);
        // Last repeated key wins; escaped keys are the same keys.
        let e = decode(br#"{"task":"a","t\u0061sk":"b","type":"log","msg":"x","msg":"y"}"#)
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(e.task_id, "b");
        assert!(matches!(e.payload, Some(mpb::event::Payload::Log(ref l)) if l.message == "y"));
        // Text fields take any JSON value as its JSON text, nulls removed.
        let e = line(
            json!({"task": 7, "type": "plot", "metric": 1.5, "variant": true,
            "plot_str": {"data": [1, null], "layout": {"title": null}}}),
        )
        .unwrap();
        assert_eq!(
            (e.task_id.as_str(), e.metric.as_str(), e.variant.as_str()),
            ("7", "1.5", "true")
        );
        assert!(
            matches!(e.payload, Some(mpb::event::Payload::Plot(ref p)) if p.plot_json == r#"{"data":[1,null],"layout":{}}"#)
        );
        // Flags are true only as `true`; nulls are "not given".
        let e = line(
            json!({"task": "t", "type": "training_stats_scalar", "value": "2",
            "model_event": "true", "allow_locked": 1, "iter": null, "timestamp": null}),
        )
        .unwrap();
        assert!(!e.model_event && !e.allow_locked);
        assert_eq!((e.iteration, e.timestamp), (0, None));
        // The first fault in the fixed order is the reason.
        for (bad, reason) in [
            (
                json!({"type": "x", "iter": "x", "timestamp": "x"}),
                "event has no task",
            ),
            (
                json!({"task": "t", "type": "x", "iter": "x"}),
                "iter is not a number",
            ),
            (json!({"task": "t", "iter": 1e19}), "iter is out of range"),
            (
                json!({"task": "t", "type": "x", "timestamp": "x"}),
                "unknown event type x",
            ),
            (json!({"task": "t", "timestamp": "x"}), "event has no type"),
            (
                json!({"task": "t", "type": "training_stats_scalar", "value": [1], "timestamp": "x"}),
                "value is not a number",
            ),
            (
                json!({"task": "t", "type": "training_stats_scalar", "value": 1, "timestamp": {}}),
                "timestamp is not a number",
            ),
            (
                json!({"task": "t", "type": "training_stats_vector", "values": [1, "2"]}),
                "values must be numbers",
            ),
            (
                json!({"task": "t", "type": "training_stats_vector", "values": "1"}),
                "vector event has no values",
            ),
            (json!({"task": "t", "type": 3}), "unknown event type 3"),
        ] {
            assert_eq!(line(bad.clone()).unwrap_err(), reason, "{bad}");
        }
    }

    #[test]
    fn whole_request_errors_name_the_line() {
        for (body, message) in [
            (
                &b"{\"task\":\"t\"}\n[1]"[..],
                "line 2 must be a JSON object, not a list",
            ),
            (b"\n\"s\"", "line 2 must be a JSON object, not a string"),
            (b"null", "line 1 must be a JSON object, not null"),
            (
                b"{\"a\":",
                "line 1 is not valid JSON: EOF while parsing a value at line 1 column 5",
            ),
            (b"\xff", "request body is not UTF-8"),
        ] {
            let err = decode(body).unwrap_err();
            assert_eq!(err, message);
            assert!(
                reference::decode(body).is_err_and(|old| old == err),
                "{err}"
            );
        }
        // The list form: one bad item is one bad event.
        let out = decode(br#"[{"task":"t","type":"log"}, 5, "x"]"#).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out[0].is_ok());
        assert_eq!(out[1], Err("event is not an object".to_owned()));
    }

    /// Thousands of generated bodies (SDK-like lines, wrong types, repeated
    /// and escaped keys, numbers as strings, nested nulls, malformed and
    /// non-object lines, the list form) decode exactly as the `Value`
    /// based decoding did: the same events, reasons and errors.
    #[test]
    fn generated_bodies_decode_as_the_value_decoding_did() {
        const KEYS: &[&str] = &[
            "task",
            "type",
            "iter",
            "metric",
            "variant",
            "timestamp",
            "model_event",
            "allow_locked",
            "value",
            "x_axis_label",
            "values",
            "plot_str",
            "skip_validation",
            "level",
            "worker",
            "msg",
            "url",
            "key",
            "method",
            "t\\u0061sk",
            "ty\\u0070e",
            "zz",
        ];
        const TYPES: &[&str] = &[
            r#""training_stats_scalar""#,
            r#""training_stats_vector""#,
            r#""plot""#,
            r#""log""#,
            r#""training_debug_image""#,
            r#""nope""#,
            r#""""#,
            "5",
            "null",
        ];
        const VALUES: &[&str] = &[
            r#""T""#,
            r#""""#,
            r#""a\nb\"c""#,
            r#""\u00e9\ud83d\ude00""#,
            r#""1e3""#,
            r#""nan""#,
            r#""inf""#,
            r#"" 5""#,
            r#""abc""#,
            r#""-2""#,
            r#""INFO""#,
            r#""warn""#,
            "0",
            "-1",
            "3",
            "1.5",
            "-2147483648",
            "1e300",
            "9223372036854775807",
            "18446744073709551615",
            "1e19",
            "-9.3e18",
            "1795637012180",
            "123456789012345678901234567890",
            "true",
            "false",
            "null",
            "[]",
            "[1,2.5]",
            "[1,null]",
            r#"["1"]"#,
            "[[1]]",
            r#"[{"a":null}]"#,
            "{}",
            r#"{"a":null,"b":[1,{"c":null}]}"#,
            r#"{"k":"v"}"#,
        ];
        const BAD: &[&str] = &[
            r#"{"a":"#,
            "{oops",
            r#"{"a":1}x"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":1,}"#,
            r#"{"a":"\x"}"#,
            "[1]",
            "5",
            r#""s""#,
            "null",
            "true",
            "{\"a\":1} {}",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let deep = format!(
            "{{\"task\":\"t\",\"zz\":{}{}}}",
            "[".repeat(130),
            "]".repeat(130)
        );
        agrees(&deep);
        agrees(&format!("[{deep}]"));
        for _ in 0..20_000 {
            let mut lines = Vec::new();
            for _ in 0..1 + next(5) {
                if next(25) == 0 {
                    lines.push(BAD[next(BAD.len())].to_owned());
                    continue;
                }
                let mut fields = Vec::new();
                if next(10) != 0 {
                    fields.push(format!(
                        r#""task":{}"#,
                        if next(8) == 0 {
                            VALUES[next(VALUES.len())]
                        } else {
                            r#""T""#
                        }
                    ));
                }
                if next(10) != 0 {
                    fields.push(format!(r#""type":{}"#, TYPES[next(TYPES.len())]));
                }
                for _ in 0..next(9) {
                    fields.push(format!(
                        r#""{}": {}"#,
                        KEYS[next(KEYS.len())],
                        VALUES[next(VALUES.len())]
                    ));
                }
                // Shuffle so that repeated keys come in any order.
                for i in (1..fields.len()).rev() {
                    fields.swap(i, next(i + 1));
                }
                lines.push(format!("{{{}}}", fields.join(",")));
            }
            let body = if next(10) == 0 {
                format!("[{}]", lines.join(",\n"))
            } else {
                let sep = ["\n", "\r\n", "\n\n", "\n \t\n"][next(4)];
                lines.join(sep)
            };
            agrees(&body);
        }
    }
}
