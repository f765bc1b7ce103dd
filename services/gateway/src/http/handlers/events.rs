//! `events.*`: metric events (metrics service) in ClearML's shapes.
//!
//! `events.add_batch` takes JSON lines; a bad event is counted in `errors` /
//! `errors_info` and skipped, the others are stored (HTTP 200). A batch is
//! split into requests of at most 10,000 events and about 12 MiB for the
//! metrics service; its log events are de-duplicated on retry through a
//! batch id derived from a hash of the request body (see [`batch_id`]). The
//! body is decoded by [`crate::http::batch`].

use std::collections::BTreeMap;

use prost::Message as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::common::v1::{OrderBy, PageRequest};
use tasklab_proto::metrics::v1 as mpb;
use tasklab_proto::tasks::v1 as tpb;

use crate::http::args::{StrList, required};
use crate::http::convert::{from_millis, iso, millis, status_name};
use crate::http::{Call, batch};

/// ClearML's single-value iteration.
const SINGLE_VALUE_ITER: i64 = -2_147_483_648;
/// Events per AddEvents request.
const MAX_EVENTS_PER_REQUEST: usize = 10_000;
/// Encoded bytes per AddEvents request (the service takes 16 MiB).
const MAX_BYTES_PER_REQUEST: usize = 12 * 1024 * 1024;

fn level_name(level: i32) -> &'static str {
    match mpb::LogLevel::try_from(level) {
        Ok(mpb::LogLevel::Notset) => "notset",
        Ok(mpb::LogLevel::Debug) => "debug",
        Ok(mpb::LogLevel::Verbose) => "verbose",
        Ok(mpb::LogLevel::Warning) => "warning",
        Ok(mpb::LogLevel::Error) => "error",
        Ok(mpb::LogLevel::Critical) => "critical",
        _ => "info",
    }
}

/// One ClearML event (a decoded JSON object) to the metrics contract, through
/// the same typed decoding and checks as `events.add_batch`.
#[cfg(test)]
fn event_from_json(value: &Value) -> Result<mpb::Event, String> {
    use serde::Deserialize as _;
    match batch::Line::deserialize(value).map_err(|e| e.to_string())? {
        batch::Line::Event(raw) => batch::check(raw).map(batch::Checked::into_event),
        batch::Line::NotObject(_) => Err("event is not an object".to_owned()),
    }
}

/// A stored event in ClearML's shape.
fn event_to_json(e: &mpb::Event) -> Value {
    let mut out = json!({
        "timestamp": millis(e.timestamp.as_ref()),
        "task": e.task_id,
        "iter": e.iteration,
        "metric": e.metric,
        "variant": e.variant,
    });
    if e.model_event {
        out["model_event"] = json!(true);
    }
    match &e.payload {
        Some(mpb::event::Payload::Scalar(s)) => {
            out["type"] = json!("training_stats_scalar");
            out["value"] = float(s.value);
            if !s.x_axis_label.is_empty() {
                out["x_axis_label"] = json!(s.x_axis_label);
            }
        }
        Some(mpb::event::Payload::Vector(v)) => {
            out["type"] = json!("training_stats_vector");
            out["values"] = Value::Array(v.values.iter().map(|x| float(*x)).collect());
        }
        Some(mpb::event::Payload::Plot(p)) => {
            out["type"] = json!("plot");
            out["plot_str"] = json!(p.plot_json);
        }
        Some(mpb::event::Payload::Log(l)) => {
            out["type"] = json!("log");
            out["level"] = json!(level_name(l.level));
            out["worker"] = json!(l.worker);
            out["msg"] = json!(l.message);
        }
        Some(mpb::event::Payload::DebugSample(d)) => {
            out["type"] = json!("training_debug_image");
            out["url"] = json!(d.url);
            out["key"] = json!(d.key);
        }
        None => {}
    }
    out
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// The `client_batch_id` of a request body: its 128-bit XXH3 in hex, so a
/// retried batch (the same bytes) gets the same id, in any process.
///
/// The id only de-duplicates log events, keyed by (task, batch id, sequence)
/// for 24 hours; scalars, plots and samples have natural keys. A collision
/// can therefore do no more than drop the log lines of the later batch as
/// false duplicates, and only when both write the same task within the
/// window. By accident that is a 2^-128 event per pair of batches. XXH3 is
/// not collision-resistant against a client crafting bodies, but such a
/// client must be allowed to write to the task (and could write any events
/// there anyway) and must know the other batch's exact bytes in advance.
/// SHA-256, used before, took about 13% of this handler's CPU time in a
/// profile of the scalar benchmark (with the x86 SHA extensions); XXH3 runs
/// at memory speed.
fn batch_id(body: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(body))
}

/// The AddEvents requests of one batch, split at [`MAX_EVENTS_PER_REQUEST`]
/// events or [`MAX_BYTES_PER_REQUEST`] encoded bytes, built in place.
struct Requests {
    batch_id: String,
    done: Vec<mpb::AddEventsRequest>,
    current: Vec<mpb::Event>,
    current_bytes: usize,
}

impl Requests {
    fn new(body: &[u8]) -> Requests {
        Requests {
            batch_id: batch_id(body),
            done: Vec::new(),
            current: Vec::new(),
            current_bytes: 0,
        }
    }

    fn push(&mut self, event: mpb::Event) {
        let size = event.encoded_len() + 8;
        let count = self.current.len();
        if count >= MAX_EVENTS_PER_REQUEST
            || (count > 0 && self.current_bytes + size > MAX_BYTES_PER_REQUEST)
        {
            self.finish();
        }
        self.current_bytes += size;
        self.current.push(event);
    }

    fn finish(&mut self) {
        let events = std::mem::take(&mut self.current);
        let n = self.done.len();
        self.done.push(mpb::AddEventsRequest {
            events,
            client_batch_id: format!("{}-{n}", self.batch_id),
            ..Default::default()
        });
        self.current_bytes = 0;
    }

    fn into_requests(mut self) -> Vec<mpb::AddEventsRequest> {
        if !self.current.is_empty() {
            self.finish();
        }
        self.done
    }
}

/// `events.add_batch`: JSON lines of events; partial success.
pub(crate) async fn add_batch(call: Call) -> Result<Value, Error> {
    let mut seen: usize = 0;
    let mut errors: u32 = 0;
    let mut errors_info: BTreeMap<String, u32> = BTreeMap::new();
    let mut requests = Requests::new(&call.raw);
    batch::for_each_event(&call.raw, |event| {
        seen += 1;
        match event {
            Ok(event) => requests.push(event.into_event()),
            Err(reason) => {
                errors += 1;
                *errors_info.entry(reason).or_default() += 1;
            }
        }
    })?;
    if seen == 0 {
        return Err(Error::new(
            ErrorCode::EmptyBatch,
            "batch contains no events",
        ));
    }
    let mut added: u32 = 0;
    for request in requests.into_requests() {
        let reply = call!(call.gw.clients.metrics, add_events, call.user(), request)?;
        added += reply.added + reply.duplicates;
        errors += reply.rejected_count;
        for (reason, count) in reply.errors_by_reason {
            *errors_info.entry(reason).or_default() += count;
        }
    }
    Ok(json!({ "added": added, "errors": errors, "errors_info": errors_info }))
}

fn task_arg(task: &Option<String>) -> Result<String, Error> {
    required(task, "task").map(str::to_owned)
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct LogArgs {
    task: Option<String>,
    batch_size: u32,
    navigate_earlier: bool,
    from_timestamp: Option<f64>,
    order: Option<String>,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            task: None,
            batch_size: 500,
            navigate_earlier: true,
            from_timestamp: None,
            order: None,
        }
    }
}

fn sort_order(order: Option<&str>) -> i32 {
    match order {
        Some("asc") => mpb::SortOrder::Ascending as i32,
        Some("desc") => mpb::SortOrder::Descending as i32,
        _ => mpb::SortOrder::Unspecified as i32,
    }
}

/// `events.get_task_log`: a page of console output from a timestamp.
pub(crate) async fn get_task_log(call: Call) -> Result<Value, Error> {
    let a: LogArgs = call.args()?;
    let task = task_arg(&a.task)?;
    let reply = call!(
        call.gw.clients.metrics,
        get_log,
        call.user(),
        mpb::GetLogRequest {
            task_id: task,
            from_timestamp: a.from_timestamp.map(|t| from_millis(t as i64)),
            direction: if a.navigate_earlier {
                mpb::LogDirection::Earlier as i32
            } else {
                mpb::LogDirection::Later as i32
            },
            order: sort_order(a.order.as_deref()),
            levels: vec![],
            message_pattern: String::new(),
            page: Some(PageRequest {
                page_size: a.batch_size.max(1),
                page_token: String::new(),
                include_total: true,
            }),
        }
    )?;
    let events: Vec<Value> = reply.events.iter().map(event_to_json).collect();
    let total = reply
        .page
        .and_then(|p| p.total_size)
        .unwrap_or(events.len() as u64);
    Ok(json!({ "events": events, "returned": events.len(), "total": total }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MetricArgs {
    metric: String,
    variants: Vec<String>,
}

fn selectors(metrics: Vec<MetricArgs>) -> Vec<mpb::MetricSelector> {
    metrics
        .into_iter()
        .filter(|m| !m.metric.is_empty())
        .map(|m| mpb::MetricSelector {
            metric: m.metric,
            variants: m.variants,
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HistogramArgs {
    task: Option<String>,
    samples: Option<u32>,
    key: Option<String>,
    metrics: Vec<MetricArgs>,
    model_events: bool,
}

/// `events.scalar_metrics_iter_histogram`: downsampled series,
/// `{metric: {variant: {x, y, name}}}`.
pub(crate) async fn scalar_metrics_iter_histogram(call: Call) -> Result<Value, Error> {
    let a: HistogramArgs = call.args()?;
    let task = task_arg(&a.task)?;
    let key = a.key.as_deref().unwrap_or("iter");
    let x_axis = match key {
        "iter" => mpb::XAxis::Iteration,
        "timestamp" | "iso_time" => mpb::XAxis::Timestamp,
        other => {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("invalid key {other:?} (iter, timestamp or iso_time)"),
            ));
        }
    };
    let reply = call!(
        call.gw.clients.metrics,
        get_scalar_series,
        call.user(),
        mpb::GetScalarSeriesRequest {
            task_id: task,
            model_events: a.model_events,
            metrics: selectors(a.metrics),
            samples: Some(a.samples.unwrap_or(6000)),
            x_axis: x_axis as i32,
            x_min: None,
            x_max: None,
        }
    )?;
    let mut out = Map::new();
    for s in reply.series {
        let x: Vec<Value> = if key == "iso_time" {
            s.x.iter().map(|ms| iso(Some(&from_millis(*ms)))).collect()
        } else {
            s.x.iter().map(|v| json!(v)).collect()
        };
        let y: Vec<Value> = s.y.iter().map(|v| float(*v)).collect();
        let metric = out
            .entry(s.metric.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        metric[&s.variant] = json!({ "x": x, "y": y, "name": s.variant });
    }
    Ok(Value::Object(out))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TaskEventsArgs {
    task: Option<String>,
    event_type: Option<String>,
    metrics: Vec<MetricArgs>,
    metric: Option<String>,
    batch_size: Option<u32>,
    order: Option<String>,
    scroll_id: Option<String>,
    count_total: bool,
    model_events: bool,
}

/// The `scroll_id` of a scroll with nothing left. ClearML always answers a
/// scroll id, and clients (the SDK's `get_debug_samples`) keep scrolling
/// until a page comes back empty: answering an empty id would restart the
/// scroll from the first page, forever. A call with this id gets an empty
/// page without asking the metrics service.
const SCROLL_END: &str = "end";

fn scroll_out(next: String) -> String {
    if next.is_empty() {
        SCROLL_END.to_owned()
    } else {
        next
    }
}

fn scroll_exhausted(scroll_id: Option<&str>) -> bool {
    scroll_id == Some(SCROLL_END)
}

fn page(size: u32, token: Option<String>, total: bool) -> Option<PageRequest> {
    Some(PageRequest {
        page_size: size,
        page_token: token.unwrap_or_default(),
        include_total: total,
    })
}

async fn scalar_events(call: &Call, a: TaskEventsArgs, descending: bool) -> Result<Value, Error> {
    let task = task_arg(&a.task)?;
    let mut metrics = selectors(a.metrics);
    if let Some(m) = a.metric.filter(|m| !m.is_empty()) {
        metrics.push(mpb::MetricSelector {
            metric: m,
            variants: vec![],
        });
    }
    let descending = descending || a.order.as_deref() == Some("desc");
    let reply = call!(
        call.gw.clients.metrics,
        list_scalar_events,
        call.user(),
        mpb::ListScalarEventsRequest {
            task_id: task,
            model_events: a.model_events,
            metrics,
            min_iteration: None,
            max_iteration: None,
            include_single_values: false,
            page: page(a.batch_size.unwrap_or(500).max(1), a.scroll_id, true),
            order_by: vec![OrderBy {
                field: "iteration".into(),
                descending,
            }],
        }
    )?;
    let events: Vec<Value> = reply.events.iter().map(event_to_json).collect();
    let page = reply.page.unwrap_or_default();
    Ok(json!({
        "events": events,
        "returned": events.len(),
        "total": page.total_size.unwrap_or(events.len() as u64),
        "scroll_id": page.next_page_token,
    }))
}

/// `events.get_task_events`: raw events of one kind, scroll-paged.
pub(crate) async fn get_task_events(call: Call) -> Result<Value, Error> {
    let a: TaskEventsArgs = call.args()?;
    match a.event_type.as_deref().unwrap_or("training_stats_scalar") {
        "training_stats_scalar" | "" => scalar_events(&call, a, false).await,
        "log" => {
            let task = task_arg(&a.task)?;
            let reply = call!(
                call.gw.clients.metrics,
                get_log,
                call.user(),
                mpb::GetLogRequest {
                    task_id: task,
                    direction: mpb::LogDirection::Later as i32,
                    order: sort_order(a.order.as_deref()),
                    page: page(a.batch_size.unwrap_or(500).max(1), a.scroll_id, true),
                    ..Default::default()
                }
            )?;
            paged_events(reply.events, reply.page)
        }
        "plot" => {
            let task = task_arg(&a.task)?;
            let reply = call!(
                call.gw.clients.metrics,
                get_plots,
                call.user(),
                mpb::GetPlotsRequest {
                    task_id: task,
                    model_events: a.model_events,
                    metrics: selectors(a.metrics),
                    page: page(a.batch_size.unwrap_or(1).clamp(1, 100), a.scroll_id, true),
                }
            )?;
            paged_events(reply.events, reply.page)
        }
        "training_stats_vector" => {
            let task = task_arg(&a.task)?;
            let reply = call!(
                call.gw.clients.metrics,
                get_vectors,
                call.user(),
                mpb::GetVectorsRequest {
                    task_id: task,
                    model_events: a.model_events,
                    metrics: selectors(a.metrics),
                    page: page(a.batch_size.unwrap_or(1).clamp(1, 100), a.scroll_id, true),
                }
            )?;
            paged_events(reply.events, reply.page)
        }
        "training_debug_image" => {
            let task = task_arg(&a.task)?;
            let reply = call!(
                call.gw.clients.metrics,
                get_debug_samples,
                call.user(),
                mpb::GetDebugSamplesRequest {
                    task_ids: vec![task],
                    model_events: a.model_events,
                    metrics: selectors(a.metrics),
                    page: page(a.batch_size.unwrap_or(1).clamp(1, 100), a.scroll_id, false),
                }
            )?;
            let events = reply
                .groups
                .into_iter()
                .flat_map(|g| g.iterations)
                .flat_map(|i| i.events)
                .collect();
            paged_events(events, reply.page)
        }
        other => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("invalid event_type {other:?}"),
        )),
    }
}

fn paged_events(
    events: Vec<mpb::Event>,
    page: Option<tasklab_proto::common::v1::PageResponse>,
) -> Result<Value, Error> {
    let events: Vec<Value> = events.iter().map(event_to_json).collect();
    let page = page.unwrap_or_default();
    Ok(json!({
        "events": events,
        "returned": events.len(),
        "total": page.total_size.unwrap_or(events.len() as u64),
        "scroll_id": page.next_page_token,
    }))
}

/// `events.get_scalar_metric_data`: one metric's scalars, newest
/// iteration first.
pub(crate) async fn get_scalar_metric_data(call: Call) -> Result<Value, Error> {
    let a: TaskEventsArgs = call.args()?;
    scalar_events(&call, a, true).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TasksArgs {
    tasks: StrList,
    model_events: bool,
}

/// `events.get_task_single_value_metrics`: the single values of tasks.
pub(crate) async fn get_task_single_value_metrics(call: Call) -> Result<Value, Error> {
    let a: TasksArgs = call.args()?;
    if a.tasks.is_empty() {
        return Err(super::missing("tasks"));
    }
    let reply = call!(
        call.gw.clients.metrics,
        get_single_values,
        call.user(),
        mpb::GetSingleValuesRequest {
            task_ids: a.tasks.0.clone(),
            model_events: a.model_events,
        }
    )?;
    let mut names = std::collections::HashMap::new();
    if !a.model_events {
        let list = call!(
            call.gw.clients.tasks,
            list_tasks,
            call.user(),
            tpb::ListTasksRequest {
                ids: a.tasks.0.clone(),
                include_archived: true,
                include_hidden: true,
                page: page(1000, None, false),
                read_mask: Some(prost_types::FieldMask {
                    paths: vec!["id".into(), "name".into()],
                }),
                ..Default::default()
            }
        )?;
        names = list.tasks.into_iter().map(|t| (t.id, t.name)).collect();
    }
    let tasks: Vec<Value> = reply
        .tasks
        .iter()
        .map(|t| {
            json!({
                "task": t.task_id,
                "task_name": names.get(&t.task_id).cloned().unwrap_or_default(),
                "values": t.values.iter().map(|v| json!({
                    "metric": v.metric,
                    "variant": v.variant,
                    "value": float(v.value),
                    "timestamp": millis(v.timestamp.as_ref()),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({ "tasks": tasks }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PlotsArgs {
    task: Option<String>,
    iters: Option<u32>,
    scroll_id: Option<String>,
    metrics: Vec<MetricArgs>,
    model_events: bool,
}

/// `events.get_task_plots`: the plots of the last `iters` iterations.
pub(crate) async fn get_task_plots(call: Call) -> Result<Value, Error> {
    let a: PlotsArgs = call.args()?;
    let task = task_arg(&a.task)?;
    if scroll_exhausted(a.scroll_id.as_deref()) {
        return Ok(json!({ "plots": [], "returned": 0, "total": 0, "scroll_id": SCROLL_END }));
    }
    let reply = call!(
        call.gw.clients.metrics,
        get_plots,
        call.user(),
        mpb::GetPlotsRequest {
            task_id: task,
            model_events: a.model_events,
            metrics: selectors(a.metrics),
            page: page(a.iters.unwrap_or(1).clamp(1, 100), a.scroll_id, true),
        }
    )?;
    let plots: Vec<Value> = reply.events.iter().map(event_to_json).collect();
    let page = reply.page.unwrap_or_default();
    Ok(json!({
        "plots": plots,
        "returned": plots.len(),
        "total": page.total_size.unwrap_or(plots.len() as u64),
        "scroll_id": scroll_out(page.next_page_token),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DebugMetricArgs {
    task: Option<String>,
    metric: String,
    variants: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DebugImagesArgs {
    metrics: Vec<DebugMetricArgs>,
    task: Option<String>,
    iters: Option<u32>,
    scroll_id: Option<String>,
    model_events: bool,
}

/// `events.debug_images`: per task and metric, the last iterations' samples.
pub(crate) async fn debug_images(call: Call) -> Result<Value, Error> {
    let a: DebugImagesArgs = call.args()?;
    let mut task_ids: Vec<String> = Vec::new();
    let mut metrics = Vec::new();
    for m in a.metrics {
        if let Some(t) = m.task.filter(|t| !t.is_empty())
            && !task_ids.contains(&t)
        {
            task_ids.push(t);
        }
        if !m.metric.is_empty() {
            metrics.push(mpb::MetricSelector {
                metric: m.metric,
                variants: m.variants,
            });
        }
    }
    if let Some(t) = a.task.filter(|t| !t.is_empty())
        && !task_ids.contains(&t)
    {
        task_ids.push(t);
    }
    if task_ids.is_empty() {
        return Err(super::missing("metrics.task"));
    }
    if scroll_exhausted(a.scroll_id.as_deref()) {
        return Ok(json!({ "metrics": [], "scroll_id": SCROLL_END }));
    }
    let reply = call!(
        call.gw.clients.metrics,
        get_debug_samples,
        call.user(),
        mpb::GetDebugSamplesRequest {
            task_ids,
            model_events: a.model_events,
            metrics,
            page: page(a.iters.unwrap_or(1).clamp(1, 100), a.scroll_id, false),
        }
    )?;
    let groups: Vec<Value> = reply
        .groups
        .iter()
        .map(|g| {
            json!({
                "task": g.task_id,
                "metric": g.metric,
                "iterations": g.iterations.iter().map(|i| json!({
                    "iter": i.iteration,
                    "events": i.events.iter().map(event_to_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({
        "metrics": groups,
        "scroll_id": scroll_out(reply.page.map(|p| p.next_page_token).unwrap_or_default()),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TaskArgs {
    task: Option<String>,
    allow_locked: bool,
}

/// `events.get_task_latest_scalar_values`: the last value of every series.
pub(crate) async fn get_task_latest_scalar_values(call: Call) -> Result<Value, Error> {
    let a: TaskArgs = call.args()?;
    let id = task_arg(&a.task)?;
    let task = call
        .gw
        .get_task(
            call.user(),
            &id,
            Some(prost_types::FieldMask {
                paths: vec!["id".into(), "name".into(), "status".into()],
            }),
        )
        .await?;
    let reply = call!(
        call.gw.clients.metrics,
        get_task_metrics_summary,
        call.user(),
        mpb::GetTaskMetricsSummaryRequest {
            task_ids: vec![id.clone()],
            model_events: false,
            metrics: vec![],
        }
    )?;
    let summary = reply.tasks.into_iter().next().unwrap_or_default();
    let mut metrics: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in &summary.metrics {
        if m.last_iteration == SINGLE_VALUE_ITER {
            continue;
        }
        metrics.entry(m.metric.clone()).or_default().push(json!({
            "name": m.variant,
            "last_value": float(m.last_value),
            "last_100_value": float(m.last_value),
        }));
    }
    Ok(json!({
        "metrics": metrics.into_iter().map(|(name, variants)| json!({"name": name, "variants": variants})).collect::<Vec<_>>(),
        "last_iter": summary.last_iteration.unwrap_or(0),
        "name": task.name,
        "status": status_name(task.status),
        "last_timestamp": millis(summary.last_event_timestamp.as_ref()),
    }))
}

/// `events.delete_for_task`: every event of a task.
pub(crate) async fn delete_for_task(call: Call) -> Result<Value, Error> {
    let a: TaskArgs = call.args()?;
    let id = task_arg(&a.task)?;
    let reply = call!(
        call.gw.clients.metrics,
        delete_task_events,
        call.user(),
        mpb::DeleteTaskEventsRequest {
            task_ids: vec![id],
            force: a.allow_locked,
            ..Default::default()
        }
    )?;
    Ok(json!({ "deleted": reply.total_deleted }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearml_events_convert_and_bad_ones_give_a_reason() {
        let e = event_from_json(&json!({
            "timestamp": 1_700_000_000_000_i64, "type": "training_stats_scalar", "task": "t",
            "iter": 3, "metric": "loss", "variant": "train", "value": 0.5, "method": "get"
        }))
        .unwrap();
        assert_eq!(e.iteration, 3);
        assert!(matches!(e.payload, Some(mpb::event::Payload::Scalar(ref s)) if s.value == 0.5));
        let back = event_to_json(&e);
        assert_eq!(back["type"], "training_stats_scalar");
        assert_eq!(back["timestamp"], 1_700_000_000_000_i64);

        let log =
            event_from_json(&json!({"type": "log", "task": "t", "level": "INFO", "msg": "hi"}))
                .unwrap();
        assert!(
            matches!(log.payload, Some(mpb::event::Payload::Log(ref l)) if l.level == mpb::LogLevel::Info as i32)
        );

        for (bad, reason) in [
            (json!({"type": "log"}), "event has no task"),
            (json!({"task": "t"}), "event has no type"),
            (
                json!({"task": "t", "type": "nope"}),
                "unknown event type nope",
            ),
            (
                json!({"task": "t", "type": "training_stats_scalar"}),
                "scalar event has no value",
            ),
            (
                json!({"task": "t", "type": "training_stats_scalar", "value": "x"}),
                "value is not a number",
            ),
        ] {
            assert_eq!(event_from_json(&bad).unwrap_err(), reason);
        }
    }

    #[test]
    fn batch_ids_are_stable_and_requests_split_at_the_limits() {
        let id = batch_id(b"{\"a\":1}\n");
        assert_eq!(id, batch_id(b"{\"a\":1}\n"));
        assert_ne!(id, batch_id(b"{\"a\":1} \n"));
        // Pinned: another hash would make retries across an upgrade double
        // their log lines.
        assert_eq!(batch_id(b""), "99aa06d3014798d86001c324468d497f");

        let small = |i: i64| mpb::Event {
            task_id: "t".into(),
            iteration: i,
            payload: Some(mpb::event::Payload::Scalar(mpb::ScalarEvent::default())),
            ..Default::default()
        };
        let mut requests = Requests::new(b"body");
        for i in 0..MAX_EVENTS_PER_REQUEST as i64 + 1 {
            requests.push(small(i));
        }
        let requests = requests.into_requests();
        let sizes: Vec<usize> = requests.iter().map(|r| r.events.len()).collect();
        assert_eq!(sizes, [MAX_EVENTS_PER_REQUEST, 1]);
        let body_id = batch_id(b"body");
        assert_eq!(requests[1].client_batch_id, format!("{body_id}-1"));
        assert_eq!(
            requests[1].events[0].iteration,
            MAX_EVENTS_PER_REQUEST as i64
        );

        let big = |n: usize| mpb::Event {
            task_id: "t".into(),
            payload: Some(mpb::event::Payload::Log(mpb::LogEvent {
                message: "x".repeat(n),
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut requests = Requests::new(b"body");
        for _ in 0..3 {
            requests.push(big(MAX_BYTES_PER_REQUEST / 2));
        }
        let sizes: Vec<usize> = requests
            .into_requests()
            .iter()
            .map(|r| r.events.len())
            .collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
