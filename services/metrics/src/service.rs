//! The domain core of the metrics service: validation and limits, the
//! per-event verdicts of `AddEvents`, downsampled reads driven over the
//! store's chunks, paging tokens, log filters and retention rules. Nothing
//! here knows gRPC; `grpc.rs` converts messages to these types and back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tasklab_error::{Error, ErrorCode, Result};

use crate::chunk::{Point, Stats};
use crate::downsample::{self, Axis, Downsampled, SINGLE_VALUE_ITER, SeriesQuery, Step};
use crate::store::MetricsStore;

/// Most events in one `AddEvents` request.
pub(crate) const MAX_BATCH_EVENTS: usize = 10_000;
/// Most scalar series (columnar form) in one `AddEvents` request.
pub(crate) const MAX_BATCH_SERIES: usize = 10_000;
/// Most points of all scalar series in one `AddEvents` request.
pub(crate) const MAX_BATCH_POINTS: usize = 100_000;
/// Most encoded bytes of one `AddEvents` request.
pub(crate) const MAX_BATCH_BYTES: usize = 16 << 20;
/// The gRPC decoding limit of the service: the batch limit plus headroom so
/// an oversized batch gets `batch_too_large`, not a transport error.
pub(crate) const MAX_MESSAGE_BYTES: usize = 17 << 20;
/// Most bytes of one event.
pub(crate) const MAX_EVENT_BYTES: usize = 4 << 20;
/// Most bytes of a metric or variant name.
pub(crate) const MAX_NAME_BYTES: usize = 1024;
/// Most bytes of a task id and of a client batch id.
pub(crate) const MAX_ID_BYTES: usize = 128;
/// Most bytes of a log message.
pub(crate) const MAX_LOG_BYTES: usize = 1 << 20;
/// Default `samples` of series reads.
pub(crate) const DEFAULT_SAMPLES: u32 = 6000;
/// Largest `samples` of series reads.
pub(crate) const MAX_SAMPLES: u32 = 100_000;
/// Most points one series response may hold.
pub(crate) const MAX_RESPONSE_POINTS: u64 = 500_000;
/// Most concurrent `TailLog` streams.
pub(crate) const MAX_TAIL_STREAMS: usize = 1000;

/// Per-event rejection codes of `AddEvents`.
pub(crate) mod reject {
    pub(crate) const TASK_LOCKED: &str = "task_locked";
    pub(crate) const INVALID_EVENT: &str = "invalid_event";
    pub(crate) const LOG_FOR_MODEL: &str = "log_for_model";
    pub(crate) const INVALID_PLOT: &str = "invalid_plot";
    pub(crate) const EVENT_TOO_LARGE: &str = "event_too_large";
    pub(crate) const INVALID_SERIES: &str = "invalid_series";
    pub(crate) const SERIES_TOO_LARGE: &str = "series_too_large";
}

/// `batch_too_large`: the error crate has no such code, so it travels as
/// `too_large` (RESOURCE_EXHAUSTED) with the contract's name in `reason`.
pub(crate) fn batch_too_large(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::TooLarge, message).with_field("reason", "batch_too_large")
}

fn too_many_points(points: u64) -> Error {
    Error::new(
        ErrorCode::TooLarge,
        format!(
            "the query would return {points} points, more than {MAX_RESPONSE_POINTS}; lower samples or page with list scalar events"
        ),
    )
    .with_field("reason", "too_many_points")
}

/// `task_locked` as an RPC error (FAILED_PRECONDITION).
fn task_locked(id: &str) -> Error {
    Error::new(ErrorCode::TaskPublished, format!("task is locked: {id}"))
        .with_field("reason", "task_locked")
        .with_field("id", id)
}

fn invalid_field(field: &str, message: impl Into<String>) -> Error {
    Error::invalid(message).with_field("field", field)
}

fn bad_token() -> Error {
    invalid_field("page.page_token", "invalid page token")
}

fn encode_token<T: Serialize>(token: &T) -> String {
    let json = serde_json::to_vec(token).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_token<T: DeserializeOwned>(token: &str) -> Result<Option<T>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad_token())?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| bad_token())
}

/// The current time in milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A task or a model (`model`), the owner of events.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TaskRef {
    pub(crate) id: String,
    pub(crate) model: bool,
}

/// The stored kinds of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Scalar = 1,
    Vector = 2,
    Plot = 3,
    Log = 4,
    DebugSample = 5,
}

impl Kind {
    pub(crate) const ALL: [Kind; 5] = [
        Kind::Scalar,
        Kind::Vector,
        Kind::Plot,
        Kind::Log,
        Kind::DebugSample,
    ];

    pub(crate) fn from_i32(v: i32) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as i32 == v)
    }
}

/// The content of an event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Payload {
    Scalar {
        value: f64,
        x_axis_label: String,
    },
    Vector {
        values: Vec<f64>,
    },
    Plot {
        json: String,
        skip_validation: bool,
    },
    /// `level` is the contract's `LogLevel` number, 1..=7.
    Log {
        level: i32,
        worker: String,
        message: String,
    },
    DebugSample {
        url: String,
        key: String,
    },
}

impl Payload {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Payload::Scalar { .. } => Kind::Scalar,
            Payload::Vector { .. } => Kind::Vector,
            Payload::Plot { .. } => Kind::Plot,
            Payload::Log { .. } => Kind::Log,
            Payload::DebugSample { .. } => Kind::DebugSample,
        }
    }

    fn approx_bytes(&self) -> usize {
        match self {
            Payload::Scalar { x_axis_label, .. } => 8 + x_axis_label.len(),
            Payload::Vector { values } => 8 * values.len(),
            Payload::Plot { json, .. } => json.len(),
            Payload::Log {
                worker, message, ..
            } => worker.len() + message.len(),
            Payload::DebugSample { url, key } => url.len() + key.len(),
        }
    }
}

/// An event as a client sent it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewEvent {
    pub(crate) task_id: String,
    pub(crate) model: bool,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) iteration: i64,
    pub(crate) metric: String,
    pub(crate) variant: String,
    pub(crate) sequence: u64,
    pub(crate) allow_locked: bool,
    pub(crate) payload: Option<Payload>,
}

/// An event that passed validation, on its way to the store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ValidEvent {
    /// Its index in the request.
    pub(crate) index: u32,
    pub(crate) task: TaskRef,
    pub(crate) timestamp_ms: i64,
    pub(crate) iteration: i64,
    pub(crate) metric: String,
    pub(crate) variant: String,
    /// Log events: the de-duplication sequence (never 0).
    pub(crate) sequence: u64,
    pub(crate) allow_locked: bool,
    pub(crate) payload: Payload,
}

/// A scalar series in columnar form as a client sent it: point `i` is
/// (`iterations[i]`, `values[i]`, `timestamps_ms[i]`); no timestamps means
/// the time of receipt.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct NewSeries {
    pub(crate) task_id: String,
    pub(crate) model: bool,
    pub(crate) metric: String,
    pub(crate) variant: String,
    pub(crate) x_axis_label: String,
    pub(crate) iterations: Vec<i64>,
    pub(crate) values: Vec<f64>,
    pub(crate) timestamps_ms: Vec<i64>,
    pub(crate) allow_locked: bool,
}

/// Where the points of a [`ValidSeries`] came from, for verdicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SeriesSource {
    /// `scalar_series[i]` of the request.
    Series(u32),
    /// Scalar events of the request, by index (grouped by the service).
    Events(Vec<u32>),
}

/// Scalar points of one series that passed validation, on their way to the
/// store. Scalar events are grouped into these too, so the writer handles
/// series, never single scalar events.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ValidSeries {
    pub(crate) source: SeriesSource,
    pub(crate) task: TaskRef,
    pub(crate) metric: String,
    pub(crate) variant: String,
    /// The x-axis label of every point.
    pub(crate) x_axis_label: String,
    pub(crate) allow_locked: bool,
    /// In arrival order (not necessarily sorted, repeats allowed: the later
    /// one wins).
    pub(crate) points: Vec<Point>,
}

impl ValidSeries {
    /// The highest iteration that counts for `last_iteration` (single
    /// values do not) and the latest timestamp.
    pub(crate) fn extent(&self) -> (Option<i64>, i64) {
        let mut last = None;
        let mut ts = i64::MIN;
        for p in &self.points {
            if p.iter != SINGLE_VALUE_ITER {
                last = Some(last.map_or(p.iter, |l: i64| l.max(p.iter)));
            }
            ts = ts.max(p.ts);
        }
        (last, ts)
    }
}

/// What the store must write for one request.
#[derive(Debug, Clone)]
pub(crate) struct WriteBatch {
    /// Events other than scalars.
    pub(crate) events: Vec<ValidEvent>,
    /// Scalars, from scalar events and from the columnar form.
    pub(crate) series: Vec<ValidSeries>,
    pub(crate) batch_id: Option<String>,
    pub(crate) received_ms: i64,
}

/// What the store did with one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WriteOutcome {
    pub(crate) added: u32,
    pub(crate) duplicates: u32,
    /// Event indexes refused because their task is locked.
    pub(crate) locked: Vec<u32>,
    /// `scalar_series` indexes refused because their task is locked, with
    /// their number of points.
    pub(crate) locked_series: Vec<(u32, u32)>,
}

/// A refused event, or with `series`, a refused scalar series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    pub(crate) index: u32,
    /// `index` is a `scalar_series` index.
    pub(crate) series: bool,
    pub(crate) code: &'static str,
    pub(crate) reason: String,
}

/// The answer to `AddEvents`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AddOutcome {
    pub(crate) added: u32,
    pub(crate) duplicates: u32,
    /// At most 1000 listed: events by index, then series by index.
    pub(crate) rejected: Vec<Rejected>,
    pub(crate) by_reason: BTreeMap<String, u32>,
    /// Refused events plus refused series.
    pub(crate) rejected_count: u32,
    /// Points of refused series.
    pub(crate) rejected_points: u32,
}

/// An event read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub(crate) task: TaskRef,
    pub(crate) timestamp_ms: i64,
    pub(crate) received_ms: Option<i64>,
    pub(crate) iteration: i64,
    pub(crate) metric: String,
    pub(crate) variant: String,
    pub(crate) payload: Payload,
}

/// A log event read back, with its position in the log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogRow {
    pub(crate) id: i64,
    pub(crate) event: Event,
}

/// Something that happened to a task's log, for live tails.
#[derive(Debug, Clone)]
pub(crate) enum LogNotice {
    /// Newly stored events (in arrival order).
    Added(Arc<Vec<LogRow>>),
    /// Every log event of these tasks was deleted.
    Deleted(Arc<Vec<String>>),
}

/// A lock state change or a listed lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskLock {
    pub(crate) task: TaskRef,
    pub(crate) locked: bool,
    pub(crate) since_ms: i64,
}

/// The per-task part of a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TaskState {
    pub(crate) last_iteration: Option<i64>,
    pub(crate) last_update_ms: Option<i64>,
    pub(crate) last_event_ms: Option<i64>,
}

/// One scalar series with its summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeriesSummary {
    pub(crate) id: i64,
    pub(crate) task: TaskRef,
    pub(crate) metric: String,
    pub(crate) variant: String,
    pub(crate) x_axis_label: String,
    pub(crate) stats: Stats,
    pub(crate) min_iter: i64,
    pub(crate) max_iter: i64,
    pub(crate) first: (i64, i64, f64),
    pub(crate) last: (i64, i64, f64),
    /// Highest stored iteration.
    pub(crate) max_stored_iter: Option<i64>,
    pub(crate) bytes: i64,
}

/// A task's summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskSummary {
    pub(crate) task_id: String,
    pub(crate) state: TaskState,
    pub(crate) series: Vec<SeriesSummary>,
}

/// A metric with optional variants (empty: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selector {
    pub(crate) metric: String,
    pub(crate) variants: Vec<String>,
}

pub(crate) fn selected(selectors: &[Selector], metric: &str, variant: &str) -> bool {
    selectors.is_empty()
        || selectors.iter().any(|s| {
            s.metric == metric && (s.variants.is_empty() || s.variants.iter().any(|v| v == variant))
        })
}

/// A series read request.
#[derive(Debug, Clone)]
pub(crate) struct SeriesRequest {
    pub(crate) tasks: Vec<String>,
    pub(crate) model: bool,
    pub(crate) selectors: Vec<Selector>,
    pub(crate) samples: Option<u32>,
    pub(crate) axis: Axis,
    pub(crate) x_min: Option<i64>,
    pub(crate) x_max: Option<i64>,
}

/// One series of a read answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeriesData {
    pub(crate) task_id: String,
    pub(crate) metric: String,
    pub(crate) variant: String,
    pub(crate) x_axis_label: String,
    pub(crate) data: Downsampled,
}

/// Paging input.
#[derive(Debug, Clone, Default)]
pub(crate) struct Page {
    pub(crate) size: u32,
    pub(crate) token: String,
    pub(crate) include_total: bool,
}

/// A page of items.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Paged<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_token: String,
    pub(crate) total: Option<u64>,
}

fn page_size(requested: u32, default: u32, max: u32) -> usize {
    if requested == 0 {
        default as usize
    } else {
        requested.min(max) as usize
    }
}

/// `ListScalarEvents` ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarOrder {
    Iteration,
    Timestamp,
}

/// A `ListScalarEvents` request.
#[derive(Debug, Clone)]
pub(crate) struct ScalarListRequest {
    pub(crate) task: TaskRef,
    pub(crate) selectors: Vec<Selector>,
    pub(crate) min_iteration: Option<i64>,
    pub(crate) max_iteration: Option<i64>,
    pub(crate) include_single_values: bool,
    pub(crate) page: Page,
    pub(crate) order: ScalarOrder,
    pub(crate) descending: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct ScalarCursor {
    k: i64,
    i: i64,
    m: String,
    v: String,
}

/// A single value of a task.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SingleValue {
    pub(crate) metric: String,
    pub(crate) variant: String,
    pub(crate) value: f64,
    pub(crate) timestamp_ms: i64,
}

/// Metric names of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricNames {
    pub(crate) kind: Kind,
    pub(crate) metric: String,
    pub(crate) variants: Vec<String>,
}

/// Which way a log read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Direction {
    Earlier,
    Later,
}

/// A `GetLog` request.
#[derive(Debug, Clone)]
pub(crate) struct LogRequest {
    pub(crate) task_id: String,
    pub(crate) from_ms: Option<i64>,
    pub(crate) direction: Direction,
    /// `None`: reading order; `Some(true)`: ascending.
    pub(crate) ascending: Option<bool>,
    pub(crate) levels: Vec<i32>,
    pub(crate) pattern: String,
    pub(crate) page: Page,
}

#[derive(Debug, Serialize, Deserialize)]
struct LogCursor {
    t: i64,
    id: i64,
    d: Direction,
}

/// A position in a log: events strictly after (Later) or before (Earlier)
/// `(timestamp, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogPosition {
    pub(crate) ts: i64,
    pub(crate) id: i64,
}

/// Filters of a log read or tail.
#[derive(Debug, Clone)]
pub(crate) struct LogFilter {
    levels: HashSet<i32>,
    pattern: Option<regex::Regex>,
}

impl LogFilter {
    pub(crate) fn new(levels: &[i32], pattern: &str) -> Result<LogFilter> {
        let pattern = if pattern.is_empty() {
            None
        } else {
            Some(regex::Regex::new(pattern).map_err(|err| {
                Error::new(
                    ErrorCode::InvalidRegex,
                    format!("invalid message pattern: {err}"),
                )
                .with_field("field", "message_pattern")
            })?)
        };
        Ok(LogFilter {
            levels: levels.iter().map(|l| normalize_level(*l)).collect(),
            pattern,
        })
    }

    pub(crate) fn matches(&self, event: &Event) -> bool {
        let Payload::Log { level, message, .. } = &event.payload else {
            return false;
        };
        (self.levels.is_empty() || self.levels.contains(level))
            && self.pattern.as_ref().is_none_or(|p| p.is_match(message))
    }
}

/// Unspecified (0) is INFO.
pub(crate) fn normalize_level(level: i32) -> i32 {
    if (1..=7).contains(&level) { level } else { 4 }
}

/// How a sample viewer chooses its iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Navigation {
    Latest,
    Earliest,
    At(i64),
    Previous(i64),
    Next(i64),
}

/// The answer of a sample viewer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SampleView {
    pub(crate) iteration: Option<i64>,
    pub(crate) events: Vec<Event>,
    pub(crate) min_iteration: Option<i64>,
    pub(crate) max_iteration: Option<i64>,
}

/// Debug samples of one task and metric.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SampleGroup {
    pub(crate) task_id: String,
    pub(crate) metric: String,
    pub(crate) iterations: Vec<(i64, Vec<Event>)>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct GroupCursor {
    /// (task, metric) -> lowest iteration already returned.
    below: BTreeMap<String, BTreeMap<String, i64>>,
}

/// A deletion request.
#[derive(Debug, Clone)]
pub(crate) struct DeleteRequest {
    pub(crate) tasks: Vec<String>,
    pub(crate) model: bool,
    pub(crate) kinds: Vec<Kind>,
    pub(crate) before_ms: Option<i64>,
    pub(crate) force: bool,
    pub(crate) return_urls: bool,
}

/// What a deletion removed from one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Deleted {
    pub(crate) counts: BTreeMap<Kind, u64>,
    pub(crate) urls: Vec<String>,
    pub(crate) bytes: u64,
}

/// What to delete in the store.
#[derive(Debug, Clone)]
pub(crate) struct DeleteSpec {
    pub(crate) task: TaskRef,
    pub(crate) kinds: Vec<Kind>,
    pub(crate) before_ms: Option<i64>,
    pub(crate) return_urls: bool,
}

/// Storage used by one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
}

/// Usage per kind.
pub(crate) type KindUsage = BTreeMap<Kind, Usage>;

/// A group of tasks (a project).
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) id: String,
    pub(crate) tasks: Vec<String>,
}

/// Group usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GroupUsage {
    pub(crate) id: String,
    pub(crate) tasks_with_events: u32,
    pub(crate) kinds: KindUsage,
}

/// A storage usage answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct UsageReport {
    pub(crate) tasks: Vec<(String, KindUsage)>,
    pub(crate) groups: Vec<GroupUsage>,
    pub(crate) total: Option<GroupUsage>,
}

/// What a retention rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RetentionAction {
    Delete,
    Downsample,
}

/// One retention rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetentionRule {
    pub(crate) kinds: Vec<Kind>,
    pub(crate) max_age_ms: i64,
    pub(crate) action: RetentionAction,
    pub(crate) samples: u32,
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_i32(*self as i32)
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Kind, D::Error> {
        let v = i32::deserialize(d)?;
        Kind::from_i32(v).ok_or_else(|| serde::de::Error::custom("unknown kind"))
    }
}

/// A retention policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetentionPolicy {
    pub(crate) project_id: String,
    pub(crate) rules: Vec<RetentionRule>,
    pub(crate) include_locked: bool,
    pub(crate) updated_ms: Option<i64>,
}

/// What retention did to one project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RetentionReport {
    pub(crate) project_id: String,
    pub(crate) inherited: bool,
    pub(crate) deleted: BTreeMap<Kind, u64>,
    pub(crate) points_before: u64,
    pub(crate) points_after: u64,
    pub(crate) bytes_freed: u64,
    pub(crate) skipped_locked: u32,
}

/// What retention does to one task, in the store.
#[derive(Debug, Clone)]
pub(crate) struct RetentionWork {
    pub(crate) task: TaskRef,
    pub(crate) rules: Vec<RetentionRule>,
    pub(crate) now_ms: i64,
    pub(crate) dry_run: bool,
    pub(crate) return_urls: bool,
}

/// What retention did to one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RetentionDone {
    pub(crate) deleted: Deleted,
    pub(crate) points_before: u64,
    pub(crate) points_after: u64,
}

/// The metrics service's domain core.
#[derive(Debug, Clone)]
pub(crate) struct MetricsService {
    store: Arc<dyn MetricsStore>,
    tails: Arc<AtomicUsize>,
    max_tails: usize,
}

/// Counts a live tail; releases its place when dropped.
#[derive(Debug)]
pub(crate) struct TailPermit(Arc<AtomicUsize>);

impl Drop for TailPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn check_ids(ids: &[String], max: usize, what: &str) -> Result<()> {
    if ids.len() > max {
        return Err(batch_too_large(format!(
            "{} {what} given, at most {max} allowed",
            ids.len()
        )));
    }
    if ids.iter().any(String::is_empty) {
        return Err(invalid_field("task_ids", "empty task id"));
    }
    Ok(())
}

fn validate(index: u32, event: NewEvent, received_ms: i64) -> Result<ValidEvent, Rejected> {
    let reject = |code: &'static str, reason: String| Rejected {
        index,
        series: false,
        code,
        reason,
    };
    if event.task_id.is_empty() {
        return Err(reject(reject::INVALID_EVENT, "missing task id".into()));
    }
    if event.task_id.len() > MAX_ID_BYTES {
        return Err(reject(
            reject::INVALID_EVENT,
            format!("task id longer than {MAX_ID_BYTES} bytes"),
        ));
    }
    if event.metric.len() > MAX_NAME_BYTES || event.variant.len() > MAX_NAME_BYTES {
        return Err(reject(
            reject::INVALID_EVENT,
            format!("metric or variant longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    let Some(payload) = event.payload else {
        return Err(reject(reject::INVALID_EVENT, "missing payload".into()));
    };
    let size = payload.approx_bytes() + event.metric.len() + event.variant.len();
    if size > MAX_EVENT_BYTES {
        return Err(reject(
            reject::EVENT_TOO_LARGE,
            format!("event of {size} bytes is over the limit of {MAX_EVENT_BYTES}"),
        ));
    }
    let payload = match payload {
        Payload::Log { .. } if event.model => {
            return Err(reject(
                reject::LOG_FOR_MODEL,
                "log events cannot be model events".into(),
            ));
        }
        Payload::Log { message, .. } if message.len() > MAX_LOG_BYTES => {
            return Err(reject(
                reject::EVENT_TOO_LARGE,
                format!(
                    "log message of {} bytes is over the limit of {MAX_LOG_BYTES}",
                    message.len()
                ),
            ));
        }
        Payload::Log {
            level,
            worker,
            message,
        } => Payload::Log {
            level: normalize_level(level),
            worker,
            message,
        },
        Payload::Plot {
            json,
            skip_validation,
        } => {
            if !skip_validation {
                match serde_json::from_str::<serde_json::Value>(&json) {
                    Ok(serde_json::Value::Object(_)) => {}
                    Ok(_) => {
                        return Err(reject(
                            reject::INVALID_PLOT,
                            "plot is not a JSON object".into(),
                        ));
                    }
                    Err(err) => {
                        return Err(reject(
                            reject::INVALID_PLOT,
                            format!("plot is not valid JSON: {err}"),
                        ));
                    }
                }
            }
            Payload::Plot {
                json,
                skip_validation,
            }
        }
        other => other,
    };
    Ok(ValidEvent {
        index,
        task: TaskRef {
            id: event.task_id,
            model: event.model,
        },
        timestamp_ms: event.timestamp_ms.unwrap_or(received_ms),
        iteration: event.iteration,
        metric: event.metric,
        variant: event.variant,
        sequence: if event.sequence == 0 {
            u64::from(index) + 1
        } else {
            event.sequence
        },
        allow_locked: event.allow_locked,
        payload,
    })
}

/// Checks one series of the columnar form as a whole and turns it into
/// points.
fn validate_series(
    index: u32,
    series: NewSeries,
    received_ms: i64,
) -> Result<ValidSeries, Rejected> {
    let reject = |code: &'static str, reason: String| Rejected {
        index,
        series: true,
        code,
        reason,
    };
    let invalid = |reason: String| reject(reject::INVALID_SERIES, reason);
    let n = series.iterations.len();
    if series.task_id.is_empty() {
        return Err(invalid("missing task id".into()));
    }
    if series.task_id.len() > MAX_ID_BYTES {
        return Err(invalid(format!("task id longer than {MAX_ID_BYTES} bytes")));
    }
    if series.metric.len() > MAX_NAME_BYTES || series.variant.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "metric or variant longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if n == 0 {
        return Err(invalid("no points: iterations is empty".into()));
    }
    if series.values.len() != n {
        return Err(invalid(format!(
            "{n} iterations but {} values",
            series.values.len()
        )));
    }
    if !series.timestamps_ms.is_empty() && series.timestamps_ms.len() != n {
        return Err(invalid(format!(
            "{n} iterations but {} timestamps (give one per point, or none)",
            series.timestamps_ms.len()
        )));
    }
    let size = 24 * n + series.metric.len() + series.variant.len() + series.x_axis_label.len();
    if size > MAX_EVENT_BYTES {
        return Err(reject(
            reject::SERIES_TOO_LARGE,
            format!("series of {size} bytes is over the limit of {MAX_EVENT_BYTES}"),
        ));
    }
    let points = if series.timestamps_ms.is_empty() {
        series
            .iterations
            .iter()
            .zip(&series.values)
            .map(|(&iter, &value)| Point {
                iter,
                ts: received_ms,
                value,
            })
            .collect()
    } else {
        series
            .iterations
            .iter()
            .zip(&series.values)
            .zip(&series.timestamps_ms)
            .map(|((&iter, &value), &ts)| Point { iter, ts, value })
            .collect()
    };
    Ok(ValidSeries {
        source: SeriesSource::Series(index),
        task: TaskRef {
            id: series.task_id,
            model: series.model,
        },
        metric: series.metric,
        variant: series.variant,
        x_axis_label: series.x_axis_label,
        allow_locked: series.allow_locked,
        points,
    })
}

/// `a == b`, without calling `memcmp` on empty strings. glibc's AVX-512
/// `memcmp` reads through the dangling pointer of an empty string with a
/// fully masked load; on the AMD EPYC virtual machines this was measured on
/// every such call costs a microcode assist of a few hundred cycles, which
/// made comparing the (usually empty) x-axis labels of scalar events the
/// largest cost of grouping them.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// Groups validated scalar events into series, in arrival order, by task,
/// metric, variant, lock override and x-axis label (a label change starts a
/// new run, so the label of every point is kept); returns the other events
/// and the series. Done here, on the request's task, so the single writer
/// only ever handles whole series.
pub(crate) fn group_scalars(events: Vec<ValidEvent>) -> (Vec<ValidEvent>, Vec<ValidSeries>) {
    /// A series key borrowed from an event, compared with [`same`].
    #[derive(Hash)]
    struct Key<'a> {
        task: &'a str,
        model: bool,
        metric: &'a str,
        variant: &'a str,
        allow_locked: bool,
    }
    impl PartialEq for Key<'_> {
        fn eq(&self, other: &Self) -> bool {
            self.model == other.model
                && self.allow_locked == other.allow_locked
                && same(self.task, other.task)
                && same(self.metric, other.metric)
                && same(self.variant, other.variant)
        }
    }
    impl Eq for Key<'_> {}

    const OTHER: usize = usize::MAX;
    let mut slots: Vec<usize> = Vec::with_capacity(events.len());
    let mut sizes: Vec<usize> = Vec::new();
    {
        let mut open: HashMap<Key<'_>, usize> = HashMap::new();
        let mut labels: Vec<&str> = Vec::new();
        for e in &events {
            let Payload::Scalar { x_axis_label, .. } = &e.payload else {
                slots.push(OTHER);
                continue;
            };
            let key = Key {
                task: &e.task.id,
                model: e.task.model,
                metric: &e.metric,
                variant: &e.variant,
                allow_locked: e.allow_locked,
            };
            let slot = match open.get(&key) {
                Some(&i) if same(labels[i], x_axis_label) => i,
                _ => {
                    labels.push(x_axis_label);
                    sizes.push(0);
                    open.insert(key, labels.len() - 1);
                    labels.len() - 1
                }
            };
            sizes[slot] += 1;
            slots.push(slot);
        }
    }
    if sizes.is_empty() {
        return (events, Vec::new());
    }
    let mut others = Vec::new();
    let mut series: Vec<Option<ValidSeries>> = (0..sizes.len()).map(|_| None).collect();
    for (e, slot) in events.into_iter().zip(slots) {
        if slot == OTHER {
            others.push(e);
            continue;
        }
        let Payload::Scalar {
            value,
            x_axis_label,
        } = e.payload
        else {
            continue;
        };
        let point = Point {
            iter: e.iteration,
            ts: e.timestamp_ms,
            value,
        };
        match &mut series[slot] {
            Some(s) => {
                s.points.push(point);
                if let SeriesSource::Events(indexes) = &mut s.source {
                    indexes.push(e.index);
                }
            }
            empty => {
                let mut indexes = Vec::with_capacity(sizes[slot]);
                indexes.push(e.index);
                let mut points = Vec::with_capacity(sizes[slot]);
                points.push(point);
                *empty = Some(ValidSeries {
                    source: SeriesSource::Events(indexes),
                    task: e.task,
                    metric: e.metric,
                    variant: e.variant,
                    x_axis_label,
                    allow_locked: e.allow_locked,
                    points,
                });
            }
        }
    }
    (others, series.into_iter().flatten().collect())
}

impl MetricsService {
    pub(crate) fn new(store: Arc<dyn MetricsStore>) -> Self {
        MetricsService {
            store,
            tails: Arc::new(AtomicUsize::new(0)),
            max_tails: MAX_TAIL_STREAMS,
        }
    }

    #[cfg(test)]
    pub(crate) fn with_max_tails(mut self, max: usize) -> Self {
        self.max_tails = max;
        self
    }

    /// Validates and stores a batch of events; see `AddEvents`.
    #[cfg(test)]
    pub(crate) async fn add_events(
        &self,
        events: Vec<NewEvent>,
        client_batch_id: String,
    ) -> Result<AddOutcome> {
        self.add_batch(events, Vec::new(), client_batch_id).await
    }

    /// Validates and stores a batch of events and columnar scalar series;
    /// see `AddEvents`.
    pub(crate) async fn add_batch(
        &self,
        events: Vec<NewEvent>,
        series: Vec<NewSeries>,
        client_batch_id: String,
    ) -> Result<AddOutcome> {
        if events.is_empty() && series.is_empty() {
            return Err(Error::new(
                ErrorCode::EmptyBatch,
                "no events or scalar series given",
            ));
        }
        if events.len() > MAX_BATCH_EVENTS {
            return Err(batch_too_large(format!(
                "{} events given, at most {MAX_BATCH_EVENTS} allowed",
                events.len()
            )));
        }
        if series.len() > MAX_BATCH_SERIES {
            return Err(batch_too_large(format!(
                "{} scalar series given, at most {MAX_BATCH_SERIES} allowed",
                series.len()
            )));
        }
        let points: usize = series
            .iter()
            .map(|s| {
                s.iterations
                    .len()
                    .max(s.values.len())
                    .max(s.timestamps_ms.len())
            })
            .sum();
        if points > MAX_BATCH_POINTS {
            return Err(batch_too_large(format!(
                "{points} scalar series points given, at most {MAX_BATCH_POINTS} allowed"
            )));
        }
        if client_batch_id.len() > MAX_ID_BYTES {
            return Err(invalid_field(
                "client_batch_id",
                format!("client batch id longer than {MAX_ID_BYTES} bytes"),
            ));
        }
        let received_ms = now_ms();
        let mut outcome = AddOutcome::default();
        let mut valid = Vec::with_capacity(events.len());
        let mut rejected = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            match validate(index as u32, event, received_ms) {
                Ok(v) => valid.push(v),
                Err(r) => rejected.push(r),
            }
        }
        let (valid, mut valid_series) = group_scalars(valid);
        for (index, s) in series.into_iter().enumerate() {
            let n = s.iterations.len() as u32;
            match validate_series(index as u32, s, received_ms) {
                Ok(v) => valid_series.push(v),
                Err(r) => {
                    outcome.rejected_points += n;
                    rejected.push(r);
                }
            }
        }
        if !valid.is_empty() || !valid_series.is_empty() {
            let written = self
                .store
                .write(WriteBatch {
                    events: valid,
                    series: valid_series,
                    batch_id: (!client_batch_id.is_empty()).then_some(client_batch_id),
                    received_ms,
                })
                .await?;
            outcome.added = written.added;
            outcome.duplicates = written.duplicates;
            let locked = || "the task is locked (published)".to_owned();
            rejected.extend(written.locked.into_iter().map(|index| Rejected {
                index,
                series: false,
                code: reject::TASK_LOCKED,
                reason: locked(),
            }));
            for (index, points) in written.locked_series {
                outcome.rejected_points += points;
                rejected.push(Rejected {
                    index,
                    series: true,
                    code: reject::TASK_LOCKED,
                    reason: locked(),
                });
            }
        }
        rejected.sort_by_key(|r| (r.series, r.index));
        outcome.rejected_count = rejected.len() as u32;
        for r in &rejected {
            *outcome.by_reason.entry(r.code.to_owned()).or_default() += 1;
        }
        rejected.truncate(1000);
        outcome.rejected = rejected;
        Ok(outcome)
    }

    /// Applies lock changes; returns how many changed.
    pub(crate) async fn set_locks(&self, locks: Vec<TaskLock>) -> Result<u32> {
        if locks.len() > 1000 {
            return Err(batch_too_large(format!(
                "{} locks given, at most 1000 allowed",
                locks.len()
            )));
        }
        if locks.iter().any(|l| l.task.id.is_empty()) {
            return Err(invalid_field("locks.task_id", "empty task id"));
        }
        self.store.set_locks(locks, now_ms()).await
    }

    /// Lists locks, by task id.
    pub(crate) async fn list_locks(&self, page: Page) -> Result<Paged<TaskLock>> {
        let size = page_size(page.size, 100, 1000);
        let after: Option<(String, bool)> = decode_token(&page.token)?;
        let mut items = self
            .store
            .list_locks(
                after.map(|(id, model)| TaskRef { id, model }),
                size as u64 + 1,
            )
            .await?;
        let more = items.len() > size;
        items.truncate(size);
        let next_token = match (more, items.last()) {
            (true, Some(last)) => encode_token(&(last.task.id.clone(), last.task.model)),
            _ => String::new(),
        };
        let total = if page.include_total {
            Some(self.store.count_locks().await?)
        } else {
            None
        };
        Ok(Paged {
            items,
            next_token,
            total,
        })
    }

    /// Summaries of tasks, in request order.
    pub(crate) async fn summaries(
        &self,
        tasks: Vec<String>,
        model: bool,
        selectors: Vec<Selector>,
    ) -> Result<Vec<TaskSummary>> {
        check_ids(&tasks, 1000, "task ids")?;
        let states = self.store.task_states(&tasks, model).await?;
        let mut series: HashMap<String, Vec<SeriesSummary>> = HashMap::new();
        for s in self.store.series(&tasks, model).await? {
            if s.stats.count > 0 && selected(&selectors, &s.metric, &s.variant) {
                series.entry(s.task.id.clone()).or_default().push(s);
            }
        }
        Ok(tasks
            .into_iter()
            .map(|id| {
                let mut list = series.remove(&id).unwrap_or_default();
                list.sort_by(|a, b| (&a.metric, &a.variant).cmp(&(&b.metric, &b.variant)));
                TaskSummary {
                    state: states.get(&id).copied().unwrap_or_default(),
                    task_id: id,
                    series: list,
                }
            })
            .collect())
    }

    /// Downsampled series of one or several tasks.
    pub(crate) async fn series(&self, req: SeriesRequest) -> Result<Vec<SeriesData>> {
        let samples = req.samples.unwrap_or(DEFAULT_SAMPLES);
        if samples > MAX_SAMPLES {
            return Err(invalid_field(
                "samples",
                format!("samples may be at most {MAX_SAMPLES}"),
            ));
        }
        if let (Some(lo), Some(hi)) = (req.x_min, req.x_max)
            && lo > hi
        {
            return Err(invalid_field("x_min", "x_min is greater than x_max"));
        }
        let mut all: Vec<SeriesSummary> = self
            .store
            .series(&req.tasks, req.model)
            .await?
            .into_iter()
            .filter(|s| s.stats.count > 0 && selected(&req.selectors, &s.metric, &s.variant))
            .collect();
        if all.len() > 1000 {
            return Err(batch_too_large(format!(
                "the query selects {} series, at most 1000 allowed",
                all.len()
            )));
        }
        let order: HashMap<&str, usize> = req
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        all.sort_by(|a, b| {
            (&a.metric, &a.variant, order.get(a.task.id.as_str())).cmp(&(
                &b.metric,
                &b.variant,
                order.get(b.task.id.as_str()),
            ))
        });
        let query = SeriesQuery {
            axis: req.axis,
            x_min: req.x_min,
            x_max: req.x_max,
            samples,
        };
        let mut out = Vec::with_capacity(all.len());
        let mut points = 0u64;
        for s in all {
            let data = self.downsample_series(&s, &query).await?;
            if data.buckets.is_empty() {
                continue;
            }
            points += data.buckets.len() as u64;
            if points > MAX_RESPONSE_POINTS {
                return Err(too_many_points(points));
            }
            out.push(SeriesData {
                task_id: s.task.id,
                metric: s.metric,
                variant: s.variant,
                x_axis_label: s.x_axis_label,
                data,
            });
        }
        Ok(out)
    }

    async fn downsample_series(
        &self,
        series: &SeriesSummary,
        query: &SeriesQuery,
    ) -> Result<Downsampled> {
        // A concurrent merge may replace chunks between the two reads: start
        // again from fresh summaries when a chunk went missing.
        for _ in 0..5 {
            let range = match query.axis {
                Axis::Iteration => Some((
                    query.x_min.unwrap_or(i64::MIN),
                    query.x_max.unwrap_or(i64::MAX),
                )),
                Axis::Timestamp => None,
            };
            let metas = self.store.chunk_metas(series.id, range).await?;
            if query.samples == 0 {
                // Every point comes back: refuse early what cannot fit.
                let upper: u64 = metas.iter().map(|m| m.stats.count).sum();
                if upper > MAX_RESPONSE_POINTS && range.is_none() {
                    return Err(too_many_points(upper));
                }
            }
            let mut decoded: HashMap<i64, Vec<Point>> = HashMap::new();
            loop {
                match downsample::run(&metas, &decoded, query) {
                    Step::Done(out) => return Ok(out),
                    Step::Need(ids) => {
                        let got = self.store.chunk_points(series.id, &ids).await?;
                        if got.len() < ids.len() {
                            break;
                        }
                        decoded.extend(got);
                    }
                }
            }
        }
        Err(Error::unavailable(
            "metrics store",
            std::io::Error::other("series kept changing while being read"),
        ))
    }

    /// Raw scalar events, keyset-paged.
    pub(crate) async fn list_scalars(&self, req: ScalarListRequest) -> Result<Paged<Event>> {
        let size = page_size(req.page.size, 1000, 10_000);
        let cursor: Option<ScalarCursor> = decode_token(&req.page.token)?;
        let series: Vec<SeriesSummary> = self
            .store
            .series(std::slice::from_ref(&req.task.id), req.task.model)
            .await?
            .into_iter()
            .filter(|s| s.stats.count > 0 && selected(&req.selectors, &s.metric, &s.variant))
            .collect();
        let lo = req.min_iteration.unwrap_or(i64::MIN);
        let hi = req.max_iteration.unwrap_or(i64::MAX);
        let key = |p: &Point| match req.order {
            ScalarOrder::Iteration => p.iter,
            ScalarOrder::Timestamp => p.ts,
        };
        type Row<'a> = (i64, i64, &'a str, &'a str, Point);
        let mut rows: Vec<Row<'_>> = Vec::new();
        let mut total = 0u64;
        for s in &series {
            let metas = self.store.chunk_metas(s.id, Some((lo, hi))).await?;
            let ids: Vec<i64> = metas.iter().map(|m| m.id).collect();
            let mut points = self.store.chunk_points(s.id, &ids).await?;
            for id in ids {
                for p in points.remove(&id).unwrap_or_default() {
                    if p.iter < lo
                        || p.iter > hi
                        || (p.iter == SINGLE_VALUE_ITER && !req.include_single_values)
                    {
                        continue;
                    }
                    total += 1;
                    rows.push((key(&p), p.iter, &s.metric, &s.variant, p));
                }
            }
        }
        let cmp_key = |r: &Row<'_>| (r.0, r.1, r.2.to_owned(), r.3.to_owned());
        rows.sort_by(|a, b| {
            let o = (a.0, a.1, a.2, a.3).cmp(&(b.0, b.1, b.2, b.3));
            if req.descending { o.reverse() } else { o }
        });
        if let Some(c) = cursor {
            let at = (c.k, c.i, c.m, c.v);
            rows.retain(|r| {
                let k = cmp_key(r);
                if req.descending { k < at } else { k > at }
            });
        }
        let more = rows.len() > size;
        rows.truncate(size);
        let next_token = match (more, rows.last()) {
            (true, Some(r)) => encode_token(&ScalarCursor {
                k: r.0,
                i: r.1,
                m: r.2.to_owned(),
                v: r.3.to_owned(),
            }),
            _ => String::new(),
        };
        let labels: HashMap<(&str, &str), &str> = series
            .iter()
            .map(|s| {
                (
                    (s.metric.as_str(), s.variant.as_str()),
                    s.x_axis_label.as_str(),
                )
            })
            .collect();
        let items = rows
            .iter()
            .map(|r| Event {
                task: req.task.clone(),
                timestamp_ms: r.4.ts,
                received_ms: None,
                iteration: r.4.iter,
                metric: r.2.to_owned(),
                variant: r.3.to_owned(),
                payload: Payload::Scalar {
                    value: r.4.value,
                    x_axis_label: labels
                        .get(&(r.2, r.3))
                        .map(|l| (*l).to_owned())
                        .unwrap_or_default(),
                },
            })
            .collect();
        Ok(Paged {
            items,
            next_token,
            total: Some(total),
        })
    }

    /// Single values per task, in request order.
    pub(crate) async fn single_values(
        &self,
        tasks: Vec<String>,
        model: bool,
    ) -> Result<Vec<(String, Vec<SingleValue>)>> {
        check_ids(&tasks, 1000, "task ids")?;
        let mut by_task: HashMap<String, Vec<SingleValue>> = HashMap::new();
        for s in self.store.series(&tasks, model).await? {
            if s.stats.count == 0 || s.min_iter_stored() > SINGLE_VALUE_ITER {
                continue;
            }
            let metas = self
                .store
                .chunk_metas(s.id, Some((SINGLE_VALUE_ITER, SINGLE_VALUE_ITER)))
                .await?;
            let ids: Vec<i64> = metas.iter().map(|m| m.id).collect();
            for points in self.store.chunk_points(s.id, &ids).await?.into_values() {
                if let Some(p) = points.iter().find(|p| p.iter == SINGLE_VALUE_ITER) {
                    by_task
                        .entry(s.task.id.clone())
                        .or_default()
                        .push(SingleValue {
                            metric: s.metric.clone(),
                            variant: s.variant.clone(),
                            value: p.value,
                            timestamp_ms: p.ts,
                        });
                }
            }
        }
        Ok(tasks
            .into_iter()
            .map(|t| {
                let mut values = by_task.remove(&t).unwrap_or_default();
                values.sort_by(|a, b| (&a.metric, &a.variant).cmp(&(&b.metric, &b.variant)));
                (t, values)
            })
            .collect())
    }

    /// Metric names per task and kind.
    pub(crate) async fn metric_names(
        &self,
        tasks: Vec<String>,
        model: bool,
        kinds: Vec<Kind>,
    ) -> Result<Vec<(String, Vec<MetricNames>)>> {
        check_ids(&tasks, 1000, "task ids")?;
        let kinds: HashSet<Kind> = if kinds.is_empty() {
            Kind::ALL.into_iter().filter(|k| *k != Kind::Log).collect()
        } else {
            kinds.into_iter().collect()
        };
        let mut names: HashMap<String, BTreeMap<(Kind, String), Vec<String>>> = HashMap::new();
        if kinds.contains(&Kind::Scalar) {
            for s in self.store.series(&tasks, model).await? {
                if s.stats.count > 0 {
                    names
                        .entry(s.task.id)
                        .or_default()
                        .entry((Kind::Scalar, s.metric))
                        .or_default()
                        .push(s.variant);
                }
            }
        }
        let others: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|k| !matches!(k, Kind::Scalar | Kind::Log))
            .collect();
        if !others.is_empty() {
            for (task, kind, metric, variant) in
                self.store.event_names(&tasks, model, &others).await?
            {
                names
                    .entry(task)
                    .or_default()
                    .entry((kind, metric))
                    .or_default()
                    .push(variant);
            }
        }
        if kinds.contains(&Kind::Log) && !model {
            for task in self.store.tasks_with_logs(&tasks).await? {
                names
                    .entry(task)
                    .or_default()
                    .insert((Kind::Log, String::new()), vec![String::new()]);
            }
        }
        Ok(tasks
            .into_iter()
            .map(|t| {
                let list = names
                    .remove(&t)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|((kind, metric), mut variants)| {
                        variants.sort();
                        variants.dedup();
                        MetricNames {
                            kind,
                            metric,
                            variants,
                        }
                    })
                    .collect();
                (t, list)
            })
            .collect())
    }

    /// One page of a task's log.
    pub(crate) async fn log(&self, req: LogRequest) -> Result<Paged<Event>> {
        let filter = LogFilter::new(&req.levels, &req.pattern)?;
        let size = page_size(req.page.size, 500, 10_000);
        let (direction, mut position) = match decode_token::<LogCursor>(&req.page.token)? {
            Some(c) => (c.d, Some(LogPosition { ts: c.t, id: c.id })),
            None => (
                req.direction,
                req.from_ms.map(|ts| match req.direction {
                    // Exclusive of `from_timestamp`: skip every id at it.
                    Direction::Earlier => LogPosition { ts, id: i64::MIN },
                    Direction::Later => LogPosition { ts, id: i64::MAX },
                }),
            ),
        };
        let mut rows: Vec<LogRow> = Vec::new();
        let mut exhausted = false;
        while rows.len() < size {
            let scan = (size * 2).clamp(256, 10_000);
            let batch = self
                .store
                .logs(&req.task_id, direction, position, scan as u64)
                .await?;
            if let Some(last) = batch.last() {
                position = Some(LogPosition {
                    ts: last.event.timestamp_ms,
                    id: last.id,
                });
            }
            let done = batch.len() < scan;
            for row in batch {
                if filter.matches(&row.event) {
                    rows.push(row);
                    if rows.len() == size {
                        // Resume right after the last returned event.
                        position = rows.last().map(|r| LogPosition {
                            ts: r.event.timestamp_ms,
                            id: r.id,
                        });
                        break;
                    }
                }
            }
            if done && rows.len() < size {
                exhausted = true;
                break;
            }
        }
        let next_token = if exhausted {
            String::new()
        } else {
            position.map_or(String::new(), |p| {
                encode_token(&LogCursor {
                    t: p.ts,
                    id: p.id,
                    d: direction,
                })
            })
        };
        let ascending = req.ascending.unwrap_or(direction == Direction::Later);
        if ascending == (direction == Direction::Earlier) {
            rows.reverse();
        }
        let total = if req.page.include_total {
            Some(self.store.count_logs(&req.task_id).await?)
        } else {
            None
        };
        Ok(Paged {
            items: rows.into_iter().map(|r| r.event).collect(),
            next_token,
            total,
        })
    }

    /// Takes a place for a live tail.
    pub(crate) fn tail_permit(&self) -> Result<TailPermit> {
        let now = self.tails.fetch_add(1, Ordering::SeqCst);
        let permit = TailPermit(self.tails.clone());
        if now >= self.max_tails {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("at most {} live log streams are allowed", self.max_tails),
            )
            .with_field("reason", "too_many_streams"));
        }
        Ok(permit)
    }

    /// Subscribes to log notices (before reading stored events, so nothing
    /// falls between the two).
    pub(crate) fn subscribe_logs(&self) -> tokio::sync::broadcast::Receiver<LogNotice> {
        self.store.subscribe_logs()
    }

    /// The highest stored log id: a tail takes stored events up to it and
    /// live events after it.
    pub(crate) async fn log_boundary(&self) -> Result<i64> {
        self.store.max_log_id().await
    }

    /// Stored log events of a task at or after `from_ms`, in timestamp order,
    /// one page after `after`.
    pub(crate) async fn stored_logs(
        &self,
        task_id: &str,
        after: Option<LogPosition>,
        limit: u64,
    ) -> Result<Vec<LogRow>> {
        self.store
            .logs(task_id, Direction::Later, after, limit)
            .await
    }

    /// Plot or vector events of the last iterations.
    pub(crate) async fn iteration_events(
        &self,
        task: TaskRef,
        kind: Kind,
        selectors: Vec<Selector>,
        page: Page,
    ) -> Result<Paged<Event>> {
        let size = page_size(page.size, 1, 100);
        let below: Option<i64> = decode_token(&page.token)?;
        let iterations = self
            .store
            .iterations(&task, kind, &selectors, below, size as u64 + 1)
            .await?;
        let more = iterations.len() > size;
        let chosen = &iterations[..iterations.len().min(size)];
        let items = match (chosen.first(), chosen.last()) {
            (Some(&hi), Some(&lo)) => {
                self.store
                    .events(&task, kind, &selectors, lo, hi, None)
                    .await?
            }
            _ => Vec::new(),
        };
        let next_token = match (more, chosen.last()) {
            (true, Some(lo)) => encode_token(lo),
            _ => String::new(),
        };
        let total = Some(self.store.count_events(&task, kind).await?);
        Ok(Paged {
            items,
            next_token,
            total,
        })
    }

    /// The sample viewer for plots and debug samples.
    pub(crate) async fn sample(
        &self,
        task: TaskRef,
        kind: Kind,
        metric: String,
        variant: String,
        navigation: Navigation,
    ) -> Result<SampleView> {
        if metric.is_empty() {
            return Err(invalid_field("metric", "metric is required"));
        }
        let selector = [Selector {
            metric: metric.clone(),
            variants: vec![variant.clone()],
        }];
        let (min_iteration, max_iteration) = self
            .store
            .iteration_bounds(&task, kind, &metric, &variant)
            .await?;
        let iteration = match navigation {
            Navigation::Latest => max_iteration,
            Navigation::Earliest => min_iteration,
            Navigation::At(i) => Some(i),
            Navigation::Previous(i) => self
                .store
                .iterations(&task, kind, &selector, Some(i), 1)
                .await?
                .first()
                .copied(),
            Navigation::Next(i) => {
                self.store
                    .next_iteration(&task, kind, &metric, &variant, i)
                    .await?
            }
        };
        let events = match iteration {
            Some(i) => {
                self.store
                    .events(&task, kind, &selector, i, i, None)
                    .await?
            }
            None => Vec::new(),
        };
        Ok(SampleView {
            iteration: iteration.filter(|_| !events.is_empty()),
            events,
            min_iteration,
            max_iteration,
        })
    }

    /// Debug samples grouped by task and metric.
    pub(crate) async fn debug_samples(
        &self,
        tasks: Vec<String>,
        model: bool,
        selectors: Vec<Selector>,
        page: Page,
    ) -> Result<Paged<SampleGroup>> {
        check_ids(&tasks, 100, "task ids")?;
        let size = page_size(page.size, 1, 100);
        let cursor: GroupCursor = decode_token(&page.token)?.unwrap_or_default();
        let mut next = GroupCursor::default();
        let mut more = false;
        let mut groups = Vec::new();
        for task_id in &tasks {
            let task = TaskRef {
                id: task_id.clone(),
                model,
            };
            let pairs = self
                .store
                .metric_iterations(&task, Kind::DebugSample, &selectors)
                .await?;
            let mut by_metric: BTreeMap<String, Vec<i64>> = BTreeMap::new();
            for (metric, iteration) in pairs {
                by_metric.entry(metric).or_default().push(iteration);
            }
            for (metric, mut iterations) in by_metric {
                let bound = cursor
                    .below
                    .get(task_id)
                    .and_then(|m| m.get(&metric))
                    .copied();
                iterations.retain(|i| bound.is_none_or(|b| *i < b));
                iterations.sort_unstable_by(|a, b| b.cmp(a));
                if iterations.len() > size {
                    more = true;
                }
                iterations.truncate(size);
                let (Some(&hi), Some(&lo)) = (iterations.first(), iterations.last()) else {
                    continue;
                };
                let sel = [Selector {
                    metric: metric.clone(),
                    variants: selectors
                        .iter()
                        .find(|s| s.metric == metric)
                        .map(|s| s.variants.clone())
                        .unwrap_or_default(),
                }];
                let events = self
                    .store
                    .events(&task, Kind::DebugSample, &sel, lo, hi, None)
                    .await?;
                let mut per_iter: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
                for e in events {
                    per_iter.entry(e.iteration).or_default().push(e);
                }
                next.below
                    .entry(task_id.clone())
                    .or_default()
                    .insert(metric.clone(), lo);
                groups.push(SampleGroup {
                    task_id: task_id.clone(),
                    metric,
                    iterations: per_iter.into_iter().rev().collect(),
                });
            }
        }
        Ok(Paged {
            items: groups,
            next_token: if more {
                // Keep the bounds of groups that are already exhausted.
                for (task, metrics) in cursor.below {
                    for (metric, bound) in metrics {
                        next.below
                            .entry(task.clone())
                            .or_default()
                            .entry(metric)
                            .or_insert(bound);
                    }
                }
                encode_token(&next)
            } else {
                String::new()
            },
            total: None,
        })
    }

    /// Deletes events of tasks; see `DeleteTaskEvents`.
    pub(crate) async fn delete(&self, req: DeleteRequest) -> Result<Vec<(String, Deleted)>> {
        check_ids(&req.tasks, 100, "task ids")?;
        if !req.force {
            let refs: Vec<TaskRef> = req
                .tasks
                .iter()
                .map(|id| TaskRef {
                    id: id.clone(),
                    model: req.model,
                })
                .collect();
            let locked = self.store.locked(&refs).await?;
            if let Some(first) = refs.iter().find(|r| locked.contains(*r)) {
                return Err(task_locked(&first.id));
            }
        }
        let kinds = if req.kinds.is_empty() {
            Kind::ALL.to_vec()
        } else {
            req.kinds.clone()
        };
        let mut seen = HashSet::new();
        let specs: Vec<DeleteSpec> = req
            .tasks
            .iter()
            .filter(|t| seen.insert(t.as_str()))
            .map(|id| DeleteSpec {
                task: TaskRef {
                    id: id.clone(),
                    model: req.model,
                },
                kinds: kinds.clone(),
                before_ms: req.before_ms,
                return_urls: req.return_urls,
            })
            .collect();
        let done = self.store.delete(specs).await?;
        Ok(req
            .tasks
            .into_iter()
            .map(|t| {
                let d = done.get(&t).cloned().unwrap_or_default();
                (t, d)
            })
            .collect())
    }

    /// Storage usage per task and group.
    pub(crate) async fn usage(
        &self,
        tasks: Vec<String>,
        groups: Vec<Group>,
        model: bool,
        include_total: bool,
    ) -> Result<UsageReport> {
        let count = tasks.len() + groups.iter().map(|g| g.tasks.len()).sum::<usize>();
        if count > 100_000 {
            return Err(batch_too_large(format!(
                "{count} task ids given, at most 100000 allowed"
            )));
        }
        let mut all: Vec<String> = tasks.clone();
        all.extend(groups.iter().flat_map(|g| g.tasks.iter().cloned()));
        all.sort();
        all.dedup();
        let usage = self.store.usage(&all, model).await?;
        let mut report = UsageReport {
            tasks: tasks
                .into_iter()
                .map(|t| {
                    let u = usage.get(&t).cloned().unwrap_or_default();
                    (t, u)
                })
                .collect(),
            ..UsageReport::default()
        };
        for g in groups {
            let mut gu = GroupUsage {
                id: g.id,
                ..GroupUsage::default()
            };
            let mut seen = HashSet::new();
            for t in g.tasks.iter().filter(|t| seen.insert(t.as_str())) {
                if let Some(u) = usage.get(t).filter(|u| !u.is_empty()) {
                    gu.tasks_with_events += 1;
                    for (k, v) in u {
                        let e = gu.kinds.entry(*k).or_default();
                        e.events += v.events;
                        e.bytes += v.bytes;
                    }
                }
            }
            report.groups.push(gu);
        }
        if include_total {
            report.total = Some(self.store.total_usage().await?);
        }
        Ok(report)
    }

    /// Stores a retention policy.
    pub(crate) async fn set_policy(&self, policy: RetentionPolicy) -> Result<RetentionPolicy> {
        for (i, rule) in policy.rules.iter().enumerate() {
            let bad = |message: &str| {
                Error::invalid(format!("rule {i}: {message}"))
                    .with_field("reason", "invalid_retention_rule")
                    .with_field("field", format!("policy.rules[{i}]"))
            };
            if rule.max_age_ms < 3_600_000 {
                return Err(bad("max age must be at least 1 hour"));
            }
            if rule.action == RetentionAction::Downsample
                && (rule.kinds.is_empty() || rule.kinds.iter().any(|k| *k != Kind::Scalar))
            {
                return Err(bad("downsampling applies to scalars only"));
            }
            if rule.samples > MAX_SAMPLES {
                return Err(bad("downsample samples may be at most 100000"));
            }
        }
        if policy.project_id.len() > MAX_ID_BYTES {
            return Err(invalid_field("policy.project_id", "project id too long"));
        }
        let policy = RetentionPolicy {
            updated_ms: Some(now_ms()),
            ..policy
        };
        self.store.put_policy(&policy).await?;
        Ok(policy)
    }

    /// The policy in force for a project and whether it is inherited.
    pub(crate) async fn policy(&self, project_id: &str) -> Result<(RetentionPolicy, bool)> {
        if let Some(p) = self.store.get_policy(project_id).await? {
            return Ok((p, false));
        }
        let default = if project_id.is_empty() {
            None
        } else {
            self.store.get_policy("").await?
        };
        Ok((
            default.unwrap_or(RetentionPolicy {
                project_id: String::new(),
                rules: Vec::new(),
                include_locked: false,
                updated_ms: None,
            }),
            true,
        ))
    }

    /// Lists stored policies, the default first.
    pub(crate) async fn list_policies(&self, page: Page) -> Result<Paged<RetentionPolicy>> {
        let size = page_size(page.size, 100, 1000);
        let after: Option<String> = decode_token(&page.token)?;
        let mut items = self.store.list_policies(after, size as u64 + 1).await?;
        let more = items.len() > size;
        items.truncate(size);
        let next_token = match (more, items.last()) {
            (true, Some(last)) => encode_token(&last.project_id),
            _ => String::new(),
        };
        Ok(Paged {
            items,
            next_token,
            total: None,
        })
    }

    /// Deletes a project's policy.
    pub(crate) async fn delete_policy(&self, project_id: &str) -> Result<bool> {
        self.store.delete_policy(project_id).await
    }

    /// Applies retention to the given projects' tasks.
    pub(crate) async fn apply_retention(
        &self,
        projects: Vec<Group>,
        dry_run: bool,
        return_urls: bool,
    ) -> Result<(Vec<RetentionReport>, Vec<String>)> {
        let count: usize = projects.iter().map(|g| g.tasks.len()).sum();
        if count > 100_000 {
            return Err(batch_too_large(format!(
                "{count} task ids given, at most 100000 allowed"
            )));
        }
        let now = now_ms();
        let mut reports = Vec::new();
        let mut urls = Vec::new();
        for project in projects {
            let (policy, inherited) = self.policy(&project.id).await?;
            let mut report = RetentionReport {
                project_id: project.id.clone(),
                inherited,
                ..RetentionReport::default()
            };
            if policy.rules.is_empty() {
                reports.push(report);
                continue;
            }
            let refs: Vec<TaskRef> = project
                .tasks
                .iter()
                .map(|id| TaskRef {
                    id: id.clone(),
                    model: false,
                })
                .collect();
            let locked = if policy.include_locked {
                HashSet::new()
            } else {
                self.store.locked(&refs).await?
            };
            let mut rules = policy.rules.clone();
            // Delete rules first.
            rules.sort_by_key(|r| r.action == RetentionAction::Downsample);
            for task in refs {
                if locked.contains(&task) {
                    report.skipped_locked += 1;
                    continue;
                }
                let done = self
                    .store
                    .retain(RetentionWork {
                        task,
                        rules: rules.clone(),
                        now_ms: now,
                        dry_run,
                        return_urls,
                    })
                    .await?;
                for (k, n) in done.deleted.counts {
                    *report.deleted.entry(k).or_default() += n;
                }
                report.bytes_freed += done.deleted.bytes;
                report.points_before += done.points_before;
                report.points_after += done.points_after;
                urls.extend(done.deleted.urls);
            }
            reports.push(report);
        }
        urls.sort();
        urls.dedup();
        Ok((reports, urls))
    }
}

impl SeriesSummary {
    /// The lowest stored iteration (the first point's).
    pub(crate) fn min_iter_stored(&self) -> i64 {
        self.first.0
    }
}

#[cfg(test)]
mod tests;
