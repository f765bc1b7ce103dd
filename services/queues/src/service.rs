//! The domain core of the queues service: validation, queue administration,
//! pops that wait for a push, leases, workers, metrics and reconciliation,
//! over a [`Store`] (queue metadata and workers, SQL) and a
//! [`QueueBackend`] (entries and leases, SQL or Redis). Knows nothing of
//! gRPC.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use tasklab_error::{Error, Result};
use tokio::sync::Notify;

use crate::backend::{
    Acked, Added, Disposition, Entry, Lease, LeaseTarget, Move, PopSample, QueueBackend, Released,
    StepOutcome, trunc,
};
use crate::errors;
use crate::store::{QueueRow, Store, WorkerRow};

/// The system tag of the default queue.
pub const DEFAULT_TAG: &str = "default";

/// Where the service reads the time. Backends never read a clock: every
/// instant comes from here, so tests move time by hand.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(trunc(start)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += chrono::Duration::from_std(by).unwrap_or_default();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Limits and defaults of the service.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Lease length when a pop names none.
    pub default_lease: Duration,
    /// Worker timeout when a registration names none.
    pub default_worker_timeout: Duration,
    /// Maximum entries (waiting + leased) per queue.
    pub max_entries: u32,
    /// How long an expired worker stays registered.
    pub expired_worker_retention: Duration,
    /// How long pop samples are kept.
    pub sample_retention: Duration,
    /// How long a fence stays valid (the change-record retention).
    pub fence_retention: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_lease: Duration::from_secs(30),
            default_worker_timeout: Duration::from_secs(45),
            max_entries: 1_000_000,
            expired_worker_retention: Duration::from_secs(24 * 3600),
            sample_retention: Duration::from_secs(7 * 24 * 3600),
            fence_retention: Duration::from_secs(600),
        }
    }
}

// ---------------------------------------------------------------------------
// Wake-ups
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Slot {
    notify: Notify,
    waiting: AtomicU32,
}

/// In-process wake-ups of waiting pops, one slot per queue.
///
/// Every push made by this process signals the queue's slot; the Redis
/// backend also signals it for pushes announced by other replicas on its
/// pub/sub channel. A signal wakes the oldest waiter of the queue
/// (`Notify::notify_one` is FIFO); a waiter woken for a queue it did not pop
/// from passes the signal on.
#[derive(Debug, Default)]
pub struct WakeHub {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl WakeHub {
    fn slot(&self, queue: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes one waiter of `queue`, if any.
    pub fn notify(&self, queue: &str) {
        let slot = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.get(queue).cloned()
        };
        if let Some(slot) = slot
            && slot.waiting.load(Ordering::SeqCst) > 0
        {
            slot.notify.notify_one();
        }
    }

    /// Number of pops waiting on `queue` in this process.
    pub fn waiting(&self, queue: &str) -> u32 {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get(queue)
            .map_or(0, |s| s.waiting.load(Ordering::SeqCst))
    }
}

struct WaitGuard(Vec<Arc<Slot>>);

impl WaitGuard {
    fn new(slots: &[Arc<Slot>]) -> Self {
        for s in slots {
            s.waiting.fetch_add(1, Ordering::SeqCst);
        }
        WaitGuard(slots.to_vec())
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        for s in &self.0 {
            s.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------------------
// Domain types
// ---------------------------------------------------------------------------

/// A queue with its live counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    /// Stored metadata.
    pub row: QueueRow,
    /// Metadata or entry change, whichever is later.
    pub last_update: DateTime<Utc>,
    /// Waiting entries.
    pub entry_count: u32,
    /// Leased entries.
    pub leased_count: u32,
}

/// A new queue.
#[derive(Debug, Clone, Default)]
pub struct NewQueue {
    /// Name.
    pub name: String,
    /// User tags.
    pub tags: Vec<String>,
    /// System tags.
    pub system_tags: Vec<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Return an existing queue of that name.
    pub if_not_exists: bool,
}

/// Changes to a queue; `paths` names what changes.
#[derive(Debug, Clone, Default)]
pub struct QueueUpdate {
    /// The queue.
    pub id: String,
    /// New name.
    pub name: String,
    /// New tags.
    pub tags: Vec<String>,
    /// New system tags.
    pub system_tags: Vec<String>,
    /// New metadata (whole or per key).
    pub metadata: BTreeMap<String, String>,
    /// Update mask paths.
    pub paths: Vec<String>,
}

/// A tag filter: any/all/none.
#[derive(Debug, Clone, Default)]
pub struct TagFilter {
    /// At least one.
    pub any_of: Vec<String>,
    /// All.
    pub all_of: Vec<String>,
    /// None.
    pub none_of: Vec<String>,
}

impl TagFilter {
    fn matches(&self, tags: &[String]) -> bool {
        let has = |t: &String| tags.contains(t);
        (self.any_of.is_empty() || self.any_of.iter().any(has))
            && self.all_of.iter().all(has)
            && !self.none_of.iter().any(has)
    }
}

/// A page request.
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    /// Page size; 0 means the default.
    pub size: u32,
    /// Token from a previous page.
    pub token: String,
    /// Also return the total.
    pub include_total: bool,
}

/// A page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// Items.
    pub items: Vec<T>,
    /// Token of the next page; empty at the end.
    pub next_token: String,
    /// Total, when asked.
    pub total: Option<u64>,
}

/// Ordering of a list.
#[derive(Debug, Clone)]
pub struct OrderBy {
    /// Field name.
    pub field: String,
    /// Descending.
    pub descending: bool,
}

/// A queue list query.
#[derive(Debug, Clone, Default)]
pub struct QueueQuery {
    /// Only these ids.
    pub ids: Vec<String>,
    /// Name pattern.
    pub name_pattern: String,
    /// User tag filter.
    pub tags: TagFilter,
    /// System tag filter.
    pub system_tags: TagFilter,
    /// Page.
    pub page: PageQuery,
    /// Ordering.
    pub order_by: Vec<OrderBy>,
}

/// Result of a delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deleted {
    /// Waiting tasks dropped, in queue order.
    pub removed_task_ids: Vec<String>,
    /// Leased tasks whose leases were cancelled.
    pub cancelled_lease_task_ids: Vec<String>,
}

/// How a pop chooses among queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PopOrder {
    /// First non-empty queue.
    #[default]
    Strict,
    /// Start after the queue that served this worker last.
    RoundRobin,
}

/// A pop request.
#[derive(Debug, Clone, Default)]
pub struct PopRequest {
    /// The worker; may be empty.
    pub worker_id: String,
    /// Queues in preference order.
    pub queue_ids: Vec<String>,
    /// Choice among queues.
    pub order: PopOrder,
    /// How long to wait; zero returns at once.
    pub wait: Duration,
    /// Lease length; `None` means the default.
    pub lease: Option<Duration>,
}

/// Filter of `ListLeases`.
#[derive(Debug, Clone, Default)]
pub struct LeaseQuery {
    /// Only these queues.
    pub queue_ids: Vec<String>,
    /// Only this worker.
    pub worker_id: String,
    /// Only these tasks.
    pub task_ids: Vec<String>,
    /// Only expired.
    pub expired_only: bool,
    /// Page.
    pub page: PageQuery,
    /// Ordering.
    pub order_by: Vec<OrderBy>,
}

/// Metrics of one queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueMetrics {
    /// Queue id.
    pub queue_id: String,
    /// Queue name.
    pub queue_name: String,
    /// Waiting entries.
    pub pending_count: u32,
    /// Leased entries.
    pub leased_count: u32,
    /// Age of the oldest waiting entry.
    pub oldest_entry_age: Option<Duration>,
    /// Average wait of the pops in the window.
    pub average_wait: Option<Duration>,
    /// Pops in the window.
    pub popped_count: u64,
    /// Pops waiting on the queue in this process.
    pub waiting_workers: u32,
    /// History buckets.
    pub history: Vec<MetricsSample>,
}

/// One history bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSample {
    /// Start of the bucket.
    pub start: DateTime<Utc>,
    /// Average wait of its pops.
    pub average_wait: Option<Duration>,
    /// Largest pending count seen after a pop in the bucket.
    pub max_pending_count: u32,
    /// Pops.
    pub popped_count: u64,
}

/// A metrics request.
#[derive(Debug, Clone, Default)]
pub struct MetricsQuery {
    /// Queues; empty means all.
    pub queue_ids: Vec<String>,
    /// Window; `None` means one hour.
    pub window: Option<Duration>,
    /// History range.
    pub history: Option<(DateTime<Utc>, DateTime<Utc>, Duration)>,
}

/// A started reconciliation.
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    /// Opaque fence.
    pub fence: String,
    /// Store epoch.
    pub epoch: String,
    /// Whether the epoch differs from the caller's.
    pub epoch_changed: bool,
    /// Service time.
    pub server_time: DateTime<Utc>,
}

/// One expected queued task.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Task.
    pub task_id: String,
    /// Queue.
    pub queue_id: String,
    /// Priority if re-created.
    pub priority: i32,
    /// Enqueue time; `None` means now.
    pub enqueued: Option<DateTime<Utc>>,
}

/// The parameters of a reconciliation.
#[derive(Debug, Clone, Default)]
pub struct ReconcileRequest {
    /// Fence from [`QueueService::start_reconciliation`].
    pub fence: String,
    /// Scope; empty means every queue.
    pub queue_ids: Vec<String>,
    /// Never remove.
    pub add_only: bool,
    /// Compute only.
    pub dry_run: bool,
    /// The authoritative set.
    pub expected: Vec<Expected>,
}

/// What a reconciliation did to one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileAction {
    /// Entry added.
    Added,
    /// Entry moved between queues.
    Moved,
    /// Waiting entry removed.
    Removed,
    /// Lease cancelled.
    LeaseCancelled,
    /// Changed after the fence.
    SkippedRecent,
    /// Its queue does not exist.
    SkippedUnknownQueue,
}

/// One change.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileChange {
    /// Action.
    pub action: ReconcileAction,
    /// Task.
    pub task_id: String,
    /// Queue after the change (or removed from).
    pub queue_id: String,
    /// For moves, the queue left.
    pub previous_queue_id: String,
}

/// Summary of a reconciliation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReconcileReport {
    /// Changes (at most 10,000).
    pub changes: Vec<ReconcileChange>,
    /// More changes than listed.
    pub truncated: bool,
    /// Added.
    pub added: u64,
    /// Moved.
    pub moved: u64,
    /// Removed.
    pub removed: u64,
    /// Leases cancelled.
    pub leases_cancelled: u64,
    /// Skipped.
    pub skipped: u64,
    /// Already in place.
    pub unchanged: u64,
    /// Dry run.
    pub dry_run: bool,
}

/// Machine statistics, stored as reported.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MachineStats {
    /// Per core.
    pub cpu_usage_percent: Vec<f64>,
    /// Per sensor.
    pub cpu_temperature_celsius: Vec<f64>,
    /// MiB.
    pub memory_used_mib: Option<f64>,
    /// MiB.
    pub memory_free_mib: Option<f64>,
    /// Per GPU.
    pub gpus: Vec<GpuStats>,
    /// Percent.
    pub disk_free_home_percent: Option<f64>,
    /// Percent.
    pub disk_free_temp_percent: Option<f64>,
    /// MiB/s.
    pub disk_read_mib_per_sec: Option<f64>,
    /// MiB/s.
    pub disk_write_mib_per_sec: Option<f64>,
    /// MiB/s.
    pub network_rx_mib_per_sec: Option<f64>,
    /// MiB/s.
    pub network_tx_mib_per_sec: Option<f64>,
}

/// One GPU.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GpuStats {
    /// Index.
    pub index: u32,
    /// Percent.
    pub usage_percent: Option<f64>,
    /// MiB.
    pub memory_used_mib: Option<f64>,
    /// MiB.
    pub memory_free_mib: Option<f64>,
    /// Celsius.
    pub temperature_celsius: Option<f64>,
    /// 0..1.
    pub fraction: Option<f64>,
}

/// A worker as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    /// Stored row.
    pub row: WorkerRow,
    /// `last_seen + timeout`.
    pub expires: DateTime<Utc>,
    /// Whether expired.
    pub expired: bool,
    /// Machine statistics.
    pub machine_stats: Option<MachineStats>,
    /// Tasks it holds leases on.
    pub leased_task_ids: Vec<String>,
}

/// A registration.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Worker id.
    pub worker_id: String,
    /// Queues.
    pub queue_ids: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Timeout; `None` means the default.
    pub timeout: Option<Duration>,
    /// User.
    pub user_id: String,
    /// Address.
    pub ip: String,
}

/// A heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// Worker id.
    pub worker_id: String,
    /// Worker's clock.
    pub reported_at: Option<DateTime<Utc>>,
    /// Statistics.
    pub machine_stats: Option<MachineStats>,
    /// Current task; empty means idle.
    pub current_task_id: String,
    /// Its queue.
    pub current_queue_id: String,
    /// New queues.
    pub queue_ids: Option<Vec<String>>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// Register when unknown.
    pub auto_register: bool,
    /// Timeout for auto-registration.
    pub timeout: Option<Duration>,
    /// User.
    pub user_id: String,
    /// Address.
    pub ip: String,
}

/// Result of a heartbeat.
#[derive(Debug, Clone)]
pub struct HeartbeatOutcome {
    /// The worker after the report.
    pub worker: Worker,
    /// Leases renewed.
    pub renewed: Vec<Lease>,
    /// Auto-registered now.
    pub auto_registered: bool,
    /// Was expired, is active again.
    pub revived: bool,
}

/// Result of an unregister.
#[derive(Debug, Clone)]
pub struct Unregistered {
    /// The worker as removed.
    pub worker: Option<Worker>,
    /// Leases returned to their queues.
    pub returned: Vec<Lease>,
}

/// A worker list query.
#[derive(Debug, Clone, Default)]
pub struct WorkerQuery {
    /// Only these.
    pub worker_ids: Vec<String>,
    /// Listening to one of these.
    pub queue_ids: Vec<String>,
    /// Tags.
    pub tags: TagFilter,
    /// Seen within.
    pub last_seen_within: Option<Duration>,
    /// Include expired.
    pub include_expired: bool,
    /// Only busy.
    pub busy_only: bool,
    /// Page.
    pub page: PageQuery,
    /// Ordering.
    pub order_by: Vec<OrderBy>,
}

// ---------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------

/// The queues service's domain core. Cheap to clone.
#[derive(Debug, Clone)]
pub struct QueueService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    backend: Arc<dyn QueueBackend>,
    hub: Arc<WakeHub>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    rotation: Mutex<HashMap<String, String>>,
    touched: Mutex<HashMap<String, DateTime<Utc>>>,
    seq_marks: Mutex<Vec<(DateTime<Utc>, u64)>>,
    notes: Notes,
}

/// (task, queue, when acknowledged).
type Note = (String, String, DateTime<Utc>);

/// Current tasks of workers, from acknowledgements, not yet in the store
/// (backends that do not record them in the acknowledgement itself).
///
/// An acknowledgement only queues its note here and a background flush
/// writes them, the latest per worker, so the store's round trip is off
/// the hot path. Every read or write of workers in this process flushes
/// first, so this process always reads its own notes; another replica sees
/// a note once the flush ran (milliseconds). A note is informational (the
/// worker's heartbeats report the current task too): one lost to a crash
/// before its flush is corrected by the next heartbeat.
#[derive(Debug, Default)]
struct Notes {
    /// Worker → its latest note.
    pending: Mutex<HashMap<String, Note>>,
    /// Held while flushing, so a reader waits for a flush in progress.
    flushing: tokio::sync::Mutex<()>,
    /// A flush task is scheduled.
    scheduled: AtomicBool,
}

const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;
const MAX_TAGS: usize = 100;
const MAX_LEN: usize = 255;
const MAX_TASK_ID: usize = 128;
const MAX_BATCH: usize = 10_000;
/// How long current-task notes of acknowledged leases gather before they
/// are written in one flush.
const NOTE_COALESCE: Duration = Duration::from_millis(20);

fn dedupe(tags: Vec<String>, field: &str) -> Result<Vec<String>> {
    let mut seen = HashSet::new();
    let out: Vec<String> = tags
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect();
    if out.len() > MAX_TAGS || out.iter().any(|t| t.len() > MAX_LEN || t.is_empty()) {
        return Err(errors::invalid(
            field,
            &format!("{field}: at most {MAX_TAGS} non-empty tags of {MAX_LEN} bytes"),
        ));
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_LEN || name.trim() != name {
        return Err(errors::invalid_name(
            "a queue name is 1 to 255 bytes without leading or trailing white space",
        ));
    }
    Ok(())
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    if metadata.len() > 100
        || metadata
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > MAX_LEN || v.len() > 4096)
    {
        return Err(errors::invalid(
            "metadata",
            "metadata holds at most 100 keys of 255 bytes and values of 4 KiB",
        ));
    }
    Ok(())
}

fn check_task(task_id: &str) -> Result<()> {
    if task_id.is_empty() || task_id.len() > MAX_TASK_ID {
        return Err(errors::invalid("task_id", "a task id is 1 to 128 bytes"));
    }
    Ok(())
}

fn check_worker(worker_id: &str) -> Result<()> {
    if worker_id.is_empty() || worker_id.len() > MAX_LEN {
        return Err(errors::invalid(
            "worker_id",
            "a worker id is 1 to 255 bytes",
        ));
    }
    Ok(())
}

fn check_target(target: &LeaseTarget) -> Result<()> {
    match target {
        LeaseTarget::LeaseId(id) if id.is_empty() => Err(errors::invalid(
            "lease_id",
            "a lease id or task id is required",
        )),
        LeaseTarget::TaskId(id) => check_task(id),
        LeaseTarget::LeaseId(_) => Ok(()),
    }
}

fn engine() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// Encodes an offset as an opaque page token.
fn token(offset: usize) -> String {
    engine().encode(format!("o{offset}"))
}

fn offset_of(page: &PageQuery) -> Result<usize> {
    if page.token.is_empty() {
        return Ok(0);
    }
    engine()
        .decode(&page.token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix('o').and_then(|n| n.parse().ok()))
        .ok_or_else(|| errors::invalid("page.page_token", "bad page token"))
}

fn page_size(page: &PageQuery) -> usize {
    match page.size {
        0 => DEFAULT_PAGE as usize,
        n => n.min(MAX_PAGE) as usize,
    }
}

/// Cuts one page out of a fully sorted list.
fn paginate<T>(items: Vec<T>, page: &PageQuery) -> Result<Page<T>> {
    let offset = offset_of(page)?;
    let total = items.len();
    let size = page_size(page);
    let items: Vec<T> = items.into_iter().skip(offset).take(size).collect();
    let end = offset + items.len();
    Ok(Page {
        next_token: if end < total {
            token(end)
        } else {
            String::new()
        },
        total: page.include_total.then_some(total as u64),
        items,
    })
}

fn check_order(order_by: &[OrderBy], allowed: &[&str]) -> Result<()> {
    for o in order_by {
        if !allowed.contains(&o.field.as_str()) {
            return Err(errors::invalid(
                "order_by",
                &format!("cannot order by {:?}", o.field),
            ));
        }
    }
    Ok(())
}

fn dur(d: chrono::Duration) -> Duration {
    d.to_std().unwrap_or_default()
}

fn average(samples: &[&PopSample]) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let total: u128 = samples.iter().map(|s| s.wait.as_millis()).sum();
    Some(Duration::from_millis(
        u64::try_from(total / samples.len() as u128).unwrap_or(u64::MAX),
    ))
}

fn fence_text(epoch: &str, seq: u64, at: DateTime<Utc>) -> String {
    engine().encode(format!("f1|{epoch}|{seq}|{}", at.timestamp_millis()))
}

fn parse_fence(fence: &str) -> Option<(String, u64, DateTime<Utc>)> {
    let text = String::from_utf8(engine().decode(fence).ok()?).ok()?;
    let mut parts = text.split('|');
    (parts.next()? == "f1").then_some(())?;
    let epoch = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    let at = DateTime::from_timestamp_millis(parts.next()?.parse().ok()?)?;
    parts.next().is_none().then_some((epoch, seq, at))
}

impl QueueService {
    /// A service over `store` and `backend`.
    pub fn new(
        store: Store,
        backend: Arc<dyn QueueBackend>,
        hub: Arc<WakeHub>,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Self {
        QueueService {
            inner: Arc::new(Inner {
                store,
                backend,
                hub,
                clock,
                limits,
                rotation: Mutex::new(HashMap::new()),
                touched: Mutex::new(HashMap::new()),
                seq_marks: Mutex::new(Vec::new()),
                notes: Notes::default(),
            }),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        trunc(self.inner.clock.now())
    }

    fn backend(&self) -> &dyn QueueBackend {
        self.inner.backend.as_ref()
    }

    /// The wake-up hub (the Redis backend's listener signals it).
    pub fn hub(&self) -> &Arc<WakeHub> {
        &self.inner.hub
    }

    fn touch(&self, queue: &str) {
        let now = self.now();
        let mut touched = self.inner.touched.lock().unwrap_or_else(|e| e.into_inner());
        touched.insert(queue.to_owned(), now);
    }

    fn pushed(&self, queue: &str) {
        self.touch(queue);
        self.inner.hub.notify(queue);
    }

    async fn queue_row(&self, id: &str) -> Result<QueueRow> {
        if id.is_empty() {
            return Err(errors::invalid("queue_id", "a queue id is required"));
        }
        self.inner
            .store
            .queue(id)
            .await?
            .ok_or_else(|| errors::queue_not_found(id))
    }

    async fn with_counts(&self, row: QueueRow) -> Result<Queue> {
        let (entry_count, leased_count) = self.backend().counts(&row.id).await?;
        let touched = {
            let touched = self.inner.touched.lock().unwrap_or_else(|e| e.into_inner());
            touched.get(&row.id).copied()
        };
        let last_update = touched.map_or(row.last_update, |t| t.max(row.last_update));
        Ok(Queue {
            row,
            last_update,
            entry_count,
            leased_count,
        })
    }

    // --- queue administration ---------------------------------------------

    /// Creates a queue.
    pub async fn create_queue(&self, new: NewQueue) -> Result<(Queue, bool)> {
        check_name(&new.name)?;
        let tags = dedupe(new.tags, "tags")?;
        let system_tags = dedupe(new.system_tags, "system_tags")?;
        check_metadata(&new.metadata)?;
        if new.if_not_exists
            && let Some(existing) = self.inner.store.queue_by_name(&new.name).await?
        {
            return Ok((self.with_counts(existing).await?, false));
        }
        let now = self.now();
        let row = QueueRow {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: new.name,
            tags,
            system_tags,
            metadata: new.metadata,
            created: now,
            last_update: now,
        };
        match self.inner.store.insert_queue(&row).await {
            Ok(()) => {}
            // Lost a race with another `if_not_exists` create of the same name.
            Err(err)
                if new.if_not_exists
                    && err.fields().get("reason").map(String::as_str)
                        == Some("queue_name_taken") =>
            {
                if let Some(existing) = self.inner.store.queue_by_name(&row.name).await? {
                    return Ok((self.with_counts(existing).await?, false));
                }
                return Err(err);
            }
            Err(err) => return Err(err),
        }
        self.backend().create_queue(&row.id).await?;
        tracing::info!(queue_id = %row.id, name = %row.name, "queue created");
        Ok((self.with_counts(row).await?, true))
    }

    /// One queue by id.
    pub async fn get_queue(&self, id: &str) -> Result<Queue> {
        let row = self.queue_row(id).await?;
        self.with_counts(row).await
    }

    /// One queue by exact name.
    pub async fn get_queue_by_name(&self, name: &str) -> Result<Queue> {
        let row = self
            .inner
            .store
            .queue_by_name(name)
            .await?
            .ok_or_else(|| errors::queue_not_found(name))?;
        self.with_counts(row).await
    }

    /// The oldest queue with the `default` system tag.
    pub async fn get_default_queue(&self) -> Result<Queue> {
        let row = self
            .inner
            .store
            .queues()
            .await?
            .into_iter()
            .find(|q| q.system_tags.iter().any(|t| t == DEFAULT_TAG))
            .ok_or_else(errors::no_default_queue)?;
        self.with_counts(row).await
    }

    /// Lists queues.
    pub async fn list_queues(&self, query: QueueQuery) -> Result<Page<Queue>> {
        check_order(
            &query.order_by,
            &["name", "created", "last_update", "entry_count"],
        )?;
        if query.ids.len() > 1000 {
            return Err(errors::invalid("ids", "at most 1000 ids"));
        }
        offset_of(&query.page)?;
        let pattern = if query.name_pattern.is_empty() {
            None
        } else {
            Some(regex::Regex::new(&query.name_pattern).map_err(|e| errors::invalid_regex(&e))?)
        };
        let mut out = Vec::new();
        for row in self.inner.store.queues().await? {
            if (!query.ids.is_empty() && !query.ids.contains(&row.id))
                || pattern.as_ref().is_some_and(|p| !p.is_match(&row.name))
                || !query.tags.matches(&row.tags)
                || !query.system_tags.matches(&row.system_tags)
            {
                continue;
            }
            out.push(self.with_counts(row).await?);
        }
        // Stored order is `created`, then id; apply the requested keys.
        out.sort_by(|a, b| {
            for o in &query.order_by {
                let ord = match o.field.as_str() {
                    "name" => a.row.name.cmp(&b.row.name),
                    "last_update" => a.last_update.cmp(&b.last_update),
                    "entry_count" => a.entry_count.cmp(&b.entry_count),
                    _ => a.row.created.cmp(&b.row.created),
                };
                let ord = if o.descending { ord.reverse() } else { ord };
                if ord.is_ne() {
                    return ord;
                }
            }
            a.row
                .created
                .cmp(&b.row.created)
                .then_with(|| a.row.id.cmp(&b.row.id))
        });
        paginate(out, &query.page)
    }

    /// Updates a queue.
    pub async fn update_queue(&self, update: QueueUpdate) -> Result<Queue> {
        if update.paths.is_empty() {
            return Err(errors::invalid("update_mask", "the update mask is empty"));
        }
        let mut row = self.queue_row(&update.id).await?;
        for path in &update.paths {
            match path.as_str() {
                "name" => {
                    check_name(&update.name)?;
                    row.name = update.name.clone();
                }
                "tags" => row.tags = dedupe(update.tags.clone(), "tags")?,
                "system_tags" => {
                    row.system_tags = dedupe(update.system_tags.clone(), "system_tags")?
                }
                "metadata" => row.metadata = update.metadata.clone(),
                p if p.starts_with("metadata.") && p.len() > "metadata.".len() => {
                    let key = &p["metadata.".len()..];
                    match update.metadata.get(key) {
                        Some(v) => row.metadata.insert(key.to_owned(), v.clone()),
                        None => row.metadata.remove(key),
                    };
                }
                other => {
                    return Err(errors::invalid(
                        "update_mask",
                        &format!("cannot update {other:?}"),
                    ));
                }
            }
        }
        check_metadata(&row.metadata)?;
        row.last_update = self.now();
        self.inner.store.update_queue(&row).await?;
        self.with_counts(row).await
    }

    /// Deletes a queue.
    pub async fn delete_queue(&self, id: &str, force: bool) -> Result<Deleted> {
        let row = self.queue_row(id).await?;
        let (waiting, leased) = self.backend().counts(&row.id).await?;
        if (waiting > 0 || leased > 0) && !force {
            return Err(errors::queue_not_empty(&row.id, waiting, leased));
        }
        self.inner.store.delete_queue(&row.id).await?;
        // Entries added between the count and the delete go with the queue.
        let (removed, cancelled) = self.backend().drop_queue(&row.id).await?;
        tracing::info!(queue_id = %row.id, removed = removed.len(), cancelled = cancelled.len(), "queue deleted");
        Ok(Deleted {
            removed_task_ids: removed,
            cancelled_lease_task_ids: cancelled,
        })
    }

    // --- entries -------------------------------------------------------------

    /// Adds a task to a queue.
    pub async fn add_entry(
        &self,
        queue_id: &str,
        task_id: &str,
        priority: i32,
        replace_existing: bool,
    ) -> Result<Added> {
        check_task(task_id)?;
        if queue_id.is_empty() {
            return Err(errors::invalid("queue_id", "a queue id is required"));
        }
        // No look-up first: the backend checks that the queue exists
        // atomically with the insert.
        let mut recovered = false;
        let added = loop {
            let res = self
                .backend()
                .add(
                    queue_id,
                    task_id,
                    priority,
                    replace_existing,
                    self.inner.limits.max_entries,
                    self.now(),
                )
                .await;
            match res {
                Err(err) if !recovered => {
                    self.recover_queues(&[queue_id.to_owned()], err).await?;
                    recovered = true;
                }
                res => break res?,
            }
        };
        if added.created {
            if let Some(prev) = &added.previous_queue_id {
                self.touch(prev);
            }
            self.pushed(queue_id);
        }
        Ok(added)
    }

    /// After the backend reported `queue_not_found` (`err`) for one of
    /// `queues`: the error for the first of them missing from SQL, or, when
    /// all are there (the backend lost its record of one, e.g. Redis after
    /// a restart), `Ok` once the backend recorded them again, so the caller
    /// retries once.
    async fn recover_queues(&self, queues: &[String], err: Error) -> Result<()> {
        if reason(&err) != "queue_not_found" {
            return Err(err);
        }
        for q in queues {
            if self.inner.store.queue(q).await?.is_none() {
                return Err(errors::queue_not_found(q));
            }
        }
        for q in queues {
            if !self.backend().ensure_queue(q).await? {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Removes a task from its queue.
    pub async fn remove_entry(&self, task_id: &str, queue_id: &str) -> Result<Option<Entry>> {
        check_task(task_id)?;
        let only = if queue_id.is_empty() {
            None
        } else {
            Some(self.queue_row(queue_id).await?.id)
        };
        let removed = self.backend().remove(task_id, only.as_deref()).await?;
        if let Some(e) = &removed {
            self.touch(&e.queue_id);
        }
        Ok(removed)
    }

    /// Lists a queue's entries.
    pub async fn list_entries(
        &self,
        queue_id: &str,
        page: &PageQuery,
        include_leased: bool,
    ) -> Result<Page<Entry>> {
        let row = self.queue_row(queue_id).await?;
        let offset = u32::try_from(offset_of(page)?).unwrap_or(u32::MAX);
        let size = page_size(page) as u32;
        // One extra tells whether a next page exists.
        let mut items = self
            .backend()
            .list(&row.id, offset, size + 1, include_leased)
            .await?;
        let more = items.len() > size as usize;
        items.truncate(size as usize);
        let total = if page.include_total {
            let (w, l) = self.backend().counts(&row.id).await?;
            Some(u64::from(w) + if include_leased { u64::from(l) } else { 0 })
        } else {
            None
        };
        Ok(Page {
            next_token: if more {
                token(offset as usize + items.len())
            } else {
                String::new()
            },
            items,
            total,
        })
    }

    /// `(waiting, leased)` of a queue.
    pub async fn queue_length(&self, queue_id: &str) -> Result<(u32, u32)> {
        let row = self.queue_row(queue_id).await?;
        self.backend().counts(&row.id).await
    }

    /// Moves a waiting entry within its band.
    pub async fn move_entry(
        &self,
        task_id: &str,
        queue_id: &str,
        mv: Option<Move>,
    ) -> Result<Entry> {
        check_task(task_id)?;
        let mv = mv.ok_or_else(|| errors::invalid("move", "a move is required"))?;
        let only = if queue_id.is_empty() {
            None
        } else {
            Some(self.queue_row(queue_id).await?.id)
        };
        let entry = self
            .backend()
            .move_entry(task_id, only.as_deref(), mv)
            .await?;
        self.touch(&entry.queue_id);
        Ok(entry)
    }

    /// Changes the priority of a waiting entry.
    pub async fn set_entry_priority(&self, task_id: &str, priority: i32) -> Result<Entry> {
        check_task(task_id)?;
        let entry = self
            .backend()
            .set_priority(task_id, priority, self.now())
            .await?;
        self.touch(&entry.queue_id);
        Ok(entry)
    }

    /// Where a task is queued.
    pub async fn find_task_queue(&self, task_id: &str) -> Result<Option<Entry>> {
        check_task(task_id)?;
        self.backend().find(task_id).await
    }

    // --- pops and leases -------------------------------------------------------

    fn lease_duration(&self, lease: Option<Duration>) -> Result<Duration> {
        match lease {
            None => Ok(self.inner.limits.default_lease),
            Some(d) if d.is_zero() => Ok(self.inner.limits.default_lease),
            Some(d) if d < Duration::from_secs(5) || d > Duration::from_secs(3600) => Err(
                errors::invalid("lease_duration", "a lease lasts 5 s to 1 h"),
            ),
            Some(d) => Ok(d),
        }
    }

    /// Pops with a lease, waiting up to `wait` for a push.
    pub async fn pop(&self, req: PopRequest) -> Result<Option<(Entry, Lease)>> {
        if req.queue_ids.is_empty() || req.queue_ids.len() > 100 {
            return Err(errors::invalid("queue_ids", "pop from 1 to 100 queues"));
        }
        let unique: HashSet<&String> = req.queue_ids.iter().collect();
        if unique.len() != req.queue_ids.len() {
            return Err(errors::invalid("queue_ids", "duplicate queue id"));
        }
        if !req.worker_id.is_empty() {
            check_worker(&req.worker_id)?;
        }
        let lease = self.lease_duration(req.lease)?;
        if req.queue_ids.iter().any(String::is_empty) {
            return Err(errors::invalid("queue_id", "a queue id is required"));
        }
        // The backend checks that every queue exists, in the pop itself.
        let mut recovered = false;
        let mut order = req.queue_ids.clone();
        if req.order == PopOrder::RoundRobin && !req.worker_id.is_empty() {
            let last = {
                let rot = self
                    .inner
                    .rotation
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                rot.get(&req.worker_id).cloned()
            };
            if let Some(at) = last.and_then(|l| order.iter().position(|q| *q == l)) {
                order.rotate_left(at + 1);
            }
        }
        let wait = req.wait.min(Duration::from_secs(60));
        let deadline = tokio::time::Instant::now() + wait;
        let slots: Vec<Arc<Slot>> = order.iter().map(|q| self.inner.hub.slot(q)).collect();
        let mut guard = None;
        let mut woken_by: Option<usize> = None;
        loop {
            let mut notified: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = slots
                .iter()
                .map(|s| Box::pin(s.notify.notified()))
                .collect();
            for n in &mut notified {
                n.as_mut().enable();
            }
            let popped = match self
                .backend()
                .pop(&order, &req.worker_id, lease, self.now())
                .await
            {
                Err(err) if !recovered => {
                    self.recover_queues(&order, err).await?;
                    recovered = true;
                    continue;
                }
                res => res?,
            };
            if let Some((entry, l)) = popped {
                if let Some(i) = woken_by
                    && order[i] != entry.queue_id
                {
                    // The signal was for another queue: pass it on.
                    self.inner.hub.notify(&order[i]);
                }
                self.touch(&entry.queue_id);
                if req.order == PopOrder::RoundRobin && !req.worker_id.is_empty() {
                    let mut rot = self
                        .inner
                        .rotation
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    rot.insert(req.worker_id.clone(), entry.queue_id.clone());
                }
                return Ok(Some((entry, l)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            if guard.is_none() {
                guard = Some(WaitGuard::new(&slots));
                // Counted as waiting now: a push from here on signals us, but
                // one that landed between the pop and the count did not.
                continue;
            }
            tokio::select! {
                (_, index, _) = futures::future::select_all(notified) => woken_by = Some(index),
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    /// Acknowledges a lease; records the task on its registered worker.
    pub async fn ack(&self, target: &LeaseTarget, worker_id: &str) -> Result<Acked> {
        check_target(target)?;
        let now = self.now();
        let acked = self.backend().ack(target, worker_id, now).await?;
        match &acked {
            Acked::Acknowledged(lease) => {
                self.touch(&lease.queue_id);
                if !lease.worker_id.is_empty() && !self.backend().notes_current_task() {
                    self.note_current_task(lease, now);
                }
            }
            Acked::Reclaimed(entry) => self.touch(&entry.queue_id),
            Acked::NoLease => {}
        }
        Ok(acked)
    }

    /// Queues a worker's current-task note and schedules a flush within
    /// [`NOTE_COALESCE`].
    fn note_current_task(&self, lease: &Lease, now: DateTime<Utc>) {
        let notes = &self.inner.notes;
        notes
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                lease.worker_id.clone(),
                (lease.task_id.clone(), lease.queue_id.clone(), now),
            );
        if !notes.scheduled.swap(true, Ordering::SeqCst) {
            let svc = self.clone();
            tokio::spawn(async move {
                // Coalesce: a busy worker acknowledges many leases a second,
                // and only its latest task matters. Reads flush first, so
                // they never see the delay.
                tokio::time::sleep(NOTE_COALESCE).await;
                svc.inner.notes.scheduled.store(false, Ordering::SeqCst);
                if let Err(err) = svc.flush_notes().await {
                    err.log();
                }
            });
        }
    }

    /// Writes every queued current-task note to the store (waiting for a
    /// flush in progress first).
    async fn flush_notes(&self) -> Result<()> {
        let notes = &self.inner.notes;
        let _turn = notes.flushing.lock().await;
        let batch = std::mem::take(&mut *notes.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut first_err = None;
        for (worker, (task, queue, at)) in batch {
            if let Err(err) = self
                .inner
                .store
                .note_current_task(&worker, &task, &queue, at)
                .await
            {
                first_err.get_or_insert(err);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Releases a lease.
    pub async fn release(
        &self,
        target: &LeaseTarget,
        worker_id: &str,
        disposition: Disposition,
        reason: &str,
    ) -> Result<Option<Released>> {
        check_target(target)?;
        if reason.len() > 1024 {
            return Err(errors::invalid("reason", "a reason is at most 1 KiB"));
        }
        let released = self
            .backend()
            .release(target, worker_id, disposition, self.now())
            .await?;
        if let Some(r) = &released {
            tracing::info!(task_id = %r.lease.task_id, queue_id = %r.lease.queue_id, reason, "lease released");
            if r.entry.is_some() {
                self.pushed(&r.lease.queue_id);
            } else {
                self.touch(&r.lease.queue_id);
            }
        }
        Ok(released)
    }

    /// Renews a lease.
    pub async fn renew(&self, target: &LeaseTarget, worker_id: &str) -> Result<Lease> {
        check_target(target)?;
        self.backend().renew(target, worker_id, self.now()).await
    }

    /// Lists open leases.
    pub async fn list_leases(&self, query: LeaseQuery) -> Result<Page<Lease>> {
        check_order(&query.order_by, &["acquired", "expires"])?;
        if query.task_ids.len() > 1000 {
            return Err(errors::invalid("task_ids", "at most 1000 task ids"));
        }
        offset_of(&query.page)?;
        let now = self.now();
        let mut leases: Vec<Lease> = self
            .backend()
            .leases()
            .await?
            .into_iter()
            .filter(|l| {
                (query.queue_ids.is_empty() || query.queue_ids.contains(&l.queue_id))
                    && (query.worker_id.is_empty() || query.worker_id == l.worker_id)
                    && (query.task_ids.is_empty() || query.task_ids.contains(&l.task_id))
                    && (!query.expired_only || l.expires <= now)
            })
            .collect();
        leases.sort_by(|a, b| {
            for o in &query.order_by {
                let ord = if o.field == "expires" {
                    a.expires.cmp(&b.expires)
                } else {
                    a.acquired.cmp(&b.acquired)
                };
                let ord = if o.descending { ord.reverse() } else { ord };
                if ord.is_ne() {
                    return ord;
                }
            }
            a.acquired
                .cmp(&b.acquired)
                .then_with(|| a.lease_id.cmp(&b.lease_id))
        });
        paginate(leases, &query.page)
    }

    /// Returns expired leases to the front of their queues, purges workers
    /// expired for longer than the retention, and trims old samples and
    /// change records. Run by the reaper every interval; safe to run on
    /// several replicas at once (each expired lease is returned by exactly
    /// one atomic backend call; the others find nothing).
    pub async fn reap_once(&self) -> Result<Vec<Lease>> {
        let now = self.now();
        let reaped = self.backend().reap(now).await?;
        for lease in &reaped {
            tracing::info!(task_id = %lease.task_id, queue_id = %lease.queue_id, worker_id = %lease.worker_id, "expired lease returned to the front of its queue");
            self.pushed(&lease.queue_id);
        }
        let retention = chrono::Duration::from_std(self.inner.limits.expired_worker_retention)
            .unwrap_or_default();
        self.flush_notes().await?;
        for w in self.inner.store.workers().await? {
            if w.last_seen + chrono::Duration::from_std(w.timeout).unwrap_or_default() + retention
                < now
            {
                self.inner
                    .store
                    .delete_worker(&w.id, Some(w.last_seen))
                    .await?;
            }
        }
        // Change records are needed only as long as a fence may refer to them.
        let seq = self.backend().current_seq().await?;
        let fence_retention =
            chrono::Duration::from_std(self.inner.limits.fence_retention).unwrap_or_default();
        let trim_seq = {
            let mut marks = self
                .inner
                .seq_marks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            marks.push((now, seq));
            let cutoff = now - fence_retention;
            let old = marks
                .iter()
                .rev()
                .find(|(t, _)| *t <= cutoff)
                .map(|(_, s)| *s);
            marks.retain(|(t, _)| *t > cutoff - fence_retention);
            old.unwrap_or(0)
        };
        let samples_before = now
            - chrono::Duration::from_std(self.inner.limits.sample_retention).unwrap_or_default();
        self.backend().trim(samples_before, trim_seq).await?;
        Ok(reaped)
    }

    // --- metrics ---------------------------------------------------------------

    /// Queue metrics.
    pub async fn metrics(&self, query: MetricsQuery) -> Result<Vec<QueueMetrics>> {
        let window = query.window.unwrap_or(Duration::from_secs(3600));
        if window.is_zero() || window > Duration::from_secs(24 * 3600) {
            return Err(errors::invalid("window", "the window is at most 24 h"));
        }
        if query.queue_ids.len() > 1000 {
            return Err(errors::invalid("queue_ids", "at most 1000 queues"));
        }
        if let Some((start, end, interval)) = &query.history {
            let buckets =
                (*end - *start).num_milliseconds().max(0) as u128 / interval.as_millis().max(1);
            if *interval < Duration::from_secs(10) || buckets > 1000 || end < start {
                return Err(errors::invalid(
                    "history_interval",
                    "a history bucket is at least 10 s, at most 1000 buckets",
                ));
            }
        }
        let rows = if query.queue_ids.is_empty() {
            let mut all = self.inner.store.queues().await?;
            all.sort_by(|a, b| a.name.cmp(&b.name));
            all
        } else {
            let mut rows = Vec::new();
            for id in &query.queue_ids {
                rows.push(self.queue_row(id).await?);
            }
            rows
        };
        let now = self.now();
        let since = now - chrono::Duration::from_std(window).unwrap_or_default();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (pending, leased) = self.backend().counts(&row.id).await?;
            let oldest = self.backend().oldest_added(&row.id).await?;
            let from = match &query.history {
                Some((start, _, _)) => since.min(*start),
                None => since,
            };
            let samples = self.backend().pop_samples(&row.id, from).await?;
            let in_window: Vec<&PopSample> = samples.iter().filter(|s| s.popped >= since).collect();
            let mut history = Vec::new();
            if let Some((start, end, interval)) = &query.history {
                let width = chrono::Duration::from_std(*interval).unwrap_or_default();
                let mut bucket = *start;
                while bucket < *end {
                    let next = bucket + width;
                    let inside: Vec<&PopSample> = samples
                        .iter()
                        .filter(|s| s.popped >= bucket && s.popped < next)
                        .collect();
                    if !inside.is_empty() {
                        history.push(MetricsSample {
                            start: bucket,
                            average_wait: average(&inside),
                            max_pending_count: inside
                                .iter()
                                .map(|s| s.pending_after)
                                .max()
                                .unwrap_or(0),
                            popped_count: inside.len() as u64,
                        });
                    }
                    bucket = next;
                }
            }
            out.push(QueueMetrics {
                queue_id: row.id.clone(),
                queue_name: row.name.clone(),
                pending_count: pending,
                leased_count: leased,
                oldest_entry_age: oldest.map(|a| dur(now - a)),
                average_wait: average(&in_window),
                popped_count: in_window.len() as u64,
                waiting_workers: self.inner.hub.waiting(&row.id),
                history,
            });
        }
        Ok(out)
    }

    // --- reconciliation --------------------------------------------------------

    /// Takes a fence.
    pub async fn start_reconciliation(&self, known_epoch: &str) -> Result<Fence> {
        let now = self.now();
        let epoch = self.backend().epoch(now).await?;
        let seq = self.backend().current_seq().await?;
        Ok(Fence {
            fence: fence_text(&epoch, seq, now),
            epoch_changed: !known_epoch.is_empty() && known_epoch != epoch,
            epoch,
            server_time: now,
        })
    }

    /// Checks the size of one streamed batch.
    pub fn check_batch(n: usize) -> Result<()> {
        if n > MAX_BATCH {
            return Err(errors::batch_too_large(n, MAX_BATCH));
        }
        Ok(())
    }

    /// Brings the queues in line with the authoritative set.
    ///
    /// Every step is a conditional backend call that re-checks the task's
    /// change record against the fence, so enqueues, dequeues and pops that
    /// happen while the reconciler runs are never undone. Steps are atomic
    /// per task (not per queue as the contract states).
    pub async fn reconcile(&self, req: ReconcileRequest) -> Result<ReconcileReport> {
        let (epoch, fence, at) = parse_fence(&req.fence).ok_or_else(errors::invalid_fence)?;
        let now = self.now();
        let current = self.backend().epoch(now).await?;
        let age = now - at;
        if epoch != current
            || age
                > chrono::Duration::from_std(self.inner.limits.fence_retention).unwrap_or_default()
        {
            return Err(errors::fence_stale());
        }
        let queues: HashSet<String> = self
            .inner
            .store
            .queues()
            .await?
            .into_iter()
            .map(|q| q.id)
            .collect();
        let scope: HashSet<&String> = req.queue_ids.iter().collect();
        let in_scope = |q: &String| scope.is_empty() || scope.contains(q);
        let present: HashMap<String, crate::backend::Presence> = self
            .backend()
            .presences()
            .await?
            .into_iter()
            .map(|p| (p.task_id.clone(), p))
            .collect();
        let mut report = ReconcileReport {
            dry_run: req.dry_run,
            ..Default::default()
        };
        let record = |report: &mut ReconcileReport, action, task: &str, queue: &str, prev: &str| {
            match action {
                ReconcileAction::Added => report.added += 1,
                ReconcileAction::Moved => report.moved += 1,
                ReconcileAction::Removed => report.removed += 1,
                ReconcileAction::LeaseCancelled => report.leases_cancelled += 1,
                ReconcileAction::SkippedRecent | ReconcileAction::SkippedUnknownQueue => {
                    report.skipped += 1;
                }
            }
            if report.changes.len() < MAX_BATCH {
                report.changes.push(ReconcileChange {
                    action,
                    task_id: task.to_owned(),
                    queue_id: queue.to_owned(),
                    previous_queue_id: prev.to_owned(),
                });
            } else {
                report.truncated = true;
            }
        };
        let mut expected_tasks = HashSet::new();
        let mut pushed = HashSet::new();
        for e in &req.expected {
            if !expected_tasks.insert(e.task_id.clone()) {
                return Err(errors::invalid(
                    "entries",
                    "a task id repeats in the stream",
                ));
            }
            if !in_scope(&e.queue_id) {
                continue;
            }
            if !queues.contains(&e.queue_id) {
                record(
                    &mut report,
                    ReconcileAction::SkippedUnknownQueue,
                    &e.task_id,
                    &e.queue_id,
                    "",
                );
                continue;
            }
            match present.get(&e.task_id) {
                Some(p) if p.queue_id == e.queue_id => report.unchanged += 1,
                Some(p) if p.leased => report.unchanged += 1,
                Some(p) => {
                    let outcome = if req.dry_run {
                        if p.seq > fence {
                            StepOutcome::Recent
                        } else {
                            StepOutcome::Done
                        }
                    } else {
                        self.backend()
                            .reconcile_move(&e.task_id, &p.queue_id, &e.queue_id, fence, now)
                            .await?
                    };
                    if outcome == StepOutcome::Done {
                        pushed.insert(e.queue_id.clone());
                        record(
                            &mut report,
                            ReconcileAction::Moved,
                            &e.task_id,
                            &e.queue_id,
                            &p.queue_id,
                        );
                    } else {
                        record(
                            &mut report,
                            ReconcileAction::SkippedRecent,
                            &e.task_id,
                            &e.queue_id,
                            "",
                        );
                    }
                }
                None => {
                    let outcome = if req.dry_run {
                        StepOutcome::Done
                    } else {
                        self.backend()
                            .reconcile_add(
                                &e.task_id,
                                &e.queue_id,
                                e.priority,
                                e.enqueued.map_or(now, trunc),
                                fence,
                                now,
                            )
                            .await?
                    };
                    if outcome == StepOutcome::Done {
                        pushed.insert(e.queue_id.clone());
                        record(
                            &mut report,
                            ReconcileAction::Added,
                            &e.task_id,
                            &e.queue_id,
                            "",
                        );
                    } else {
                        record(
                            &mut report,
                            ReconcileAction::SkippedRecent,
                            &e.task_id,
                            &e.queue_id,
                            "",
                        );
                    }
                }
            }
        }
        if !req.add_only {
            for p in present.values() {
                if !in_scope(&p.queue_id) || expected_tasks.contains(&p.task_id) || p.seq > fence {
                    continue;
                }
                let outcome = if req.dry_run {
                    StepOutcome::Done
                } else {
                    self.backend()
                        .reconcile_remove(&p.task_id, &p.queue_id, fence)
                        .await?
                };
                if outcome == StepOutcome::Done {
                    let action = if p.leased {
                        ReconcileAction::LeaseCancelled
                    } else {
                        ReconcileAction::Removed
                    };
                    record(&mut report, action, &p.task_id, &p.queue_id, "");
                }
            }
        }
        for q in pushed {
            self.pushed(&q);
        }
        tracing::info!(
            added = report.added,
            moved = report.moved,
            removed = report.removed,
            leases_cancelled = report.leases_cancelled,
            skipped = report.skipped,
            dry_run = report.dry_run,
            "reconciliation applied"
        );
        Ok(report)
    }

    // --- workers -----------------------------------------------------------------

    fn worker_timeout(&self, timeout: Option<Duration>) -> Result<Duration> {
        match timeout {
            None => Ok(self.inner.limits.default_worker_timeout),
            Some(d) if d.is_zero() => Ok(self.inner.limits.default_worker_timeout),
            Some(d) if d < Duration::from_secs(5) || d > Duration::from_secs(24 * 3600) => Err(
                errors::invalid("timeout", "a worker timeout is 5 s to 24 h"),
            ),
            Some(d) => Ok(d),
        }
    }

    async fn worker_view(&self, row: WorkerRow, now: DateTime<Utc>) -> Result<Worker> {
        let leases = self.backend().leases().await?;
        Ok(self.view_with(row, now, &leases))
    }

    fn view_with(&self, row: WorkerRow, now: DateTime<Utc>, leases: &[Lease]) -> Worker {
        let expires = row.last_seen + chrono::Duration::from_std(row.timeout).unwrap_or_default();
        let mut leased: Vec<String> = leases
            .iter()
            .filter(|l| !l.worker_id.is_empty() && l.worker_id == row.id)
            .map(|l| l.task_id.clone())
            .collect();
        leased.sort();
        Worker {
            machine_stats: row
                .machine_stats
                .clone()
                .and_then(|v| serde_json::from_value(v).ok()),
            expired: expires < now,
            expires,
            row,
            leased_task_ids: leased,
        }
    }

    /// Registers or refreshes a worker.
    pub async fn register_worker(&self, reg: Registration) -> Result<(Worker, bool)> {
        check_worker(&reg.worker_id)?;
        let timeout = self.worker_timeout(reg.timeout)?;
        let tags = dedupe(reg.tags, "tags")?;
        let now = self.now();
        self.flush_notes().await?;
        let existing = self.inner.store.worker(&reg.worker_id).await?;
        let created = existing.is_none();
        let row = match existing {
            Some(mut w) => {
                w.queue_ids = reg.queue_ids;
                w.tags = tags;
                w.timeout = timeout;
                w.last_seen = now;
                w.user_id = reg.user_id;
                w.ip = reg.ip;
                w
            }
            None => WorkerRow {
                id: reg.worker_id,
                user_id: reg.user_id,
                ip: reg.ip,
                queue_ids: reg.queue_ids,
                tags,
                registered: now,
                last_seen: now,
                timeout,
                current_task_id: String::new(),
                current_queue_id: String::new(),
                current_task_since: None,
                machine_stats: None,
                machine_stats_time: None,
            },
        };
        self.inner.store.put_worker(&row).await?;
        Ok((self.worker_view(row, now).await?, created))
    }

    /// Unregisters a worker and returns its leases to their queues.
    pub async fn unregister_worker(
        &self,
        worker_id: &str,
        if_last_seen: Option<DateTime<Utc>>,
        reason: &str,
    ) -> Result<Unregistered> {
        check_worker(worker_id)?;
        if reason.len() > 1024 {
            return Err(errors::invalid("reason", "a reason is at most 1 KiB"));
        }
        let now = self.now();
        self.flush_notes().await?;
        let Some(row) = self.inner.store.worker(worker_id).await? else {
            return Ok(Unregistered {
                worker: None,
                returned: Vec::new(),
            });
        };
        let if_last_seen = if_last_seen.map(trunc);
        if let Some(seen) = if_last_seen
            && seen != row.last_seen
        {
            return Err(errors::worker_changed(worker_id));
        }
        if !self
            .inner
            .store
            .delete_worker(worker_id, Some(row.last_seen))
            .await?
        {
            return Err(errors::worker_changed(worker_id));
        }
        let view = self.worker_view(row, now).await?;
        let returned = self.backend().return_worker(worker_id, now).await?;
        for l in &returned {
            self.pushed(&l.queue_id);
        }
        tracing::info!(
            worker_id,
            reason,
            returned = returned.len(),
            "worker unregistered"
        );
        Ok(Unregistered {
            worker: Some(view),
            returned,
        })
    }

    /// Records a heartbeat and renews the worker's leases.
    pub async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatOutcome> {
        check_worker(&hb.worker_id)?;
        if !hb.current_task_id.is_empty() {
            check_task(&hb.current_task_id)?;
        }
        let now = self.now();
        self.flush_notes().await?;
        let (mut row, auto_registered, revived) =
            match self.inner.store.worker(&hb.worker_id).await? {
                Some(w) => {
                    let revived = w.last_seen
                        + chrono::Duration::from_std(w.timeout).unwrap_or_default()
                        < now;
                    (w, false, revived)
                }
                None if hb.auto_register => {
                    let timeout = self.worker_timeout(hb.timeout)?;
                    let row = WorkerRow {
                        id: hb.worker_id.clone(),
                        user_id: hb.user_id.clone(),
                        ip: hb.ip.clone(),
                        queue_ids: Vec::new(),
                        tags: Vec::new(),
                        registered: now,
                        last_seen: now,
                        timeout,
                        current_task_id: String::new(),
                        current_queue_id: String::new(),
                        current_task_since: None,
                        machine_stats: None,
                        machine_stats_time: None,
                    };
                    (row, true, false)
                }
                None => return Err(errors::worker_not_found(&hb.worker_id)),
            };
        row.last_seen = now;
        if row.current_task_id != hb.current_task_id {
            row.current_task_since = (!hb.current_task_id.is_empty()).then_some(now);
        }
        row.current_task_id = hb.current_task_id.clone();
        row.current_queue_id = hb.current_queue_id.clone();
        if let Some(stats) = &hb.machine_stats {
            row.machine_stats = serde_json::to_value(stats).ok();
            row.machine_stats_time = Some(hb.reported_at.map_or(now, trunc));
        }
        if let Some(q) = hb.queue_ids {
            row.queue_ids = q;
        }
        if let Some(t) = hb.tags {
            row.tags = dedupe(t, "tags")?;
        }
        if !hb.user_id.is_empty() {
            row.user_id = hb.user_id;
        }
        if !hb.ip.is_empty() {
            row.ip = hb.ip;
        }
        self.inner.store.put_worker(&row).await?;
        let renewed = self
            .backend()
            .renew_worker(&hb.worker_id, &hb.current_task_id, now)
            .await?;
        Ok(HeartbeatOutcome {
            worker: self.worker_view(row, now).await?,
            renewed,
            auto_registered,
            revived,
        })
    }

    /// One worker.
    pub async fn get_worker(&self, worker_id: &str) -> Result<Worker> {
        check_worker(worker_id)?;
        self.flush_notes().await?;
        let row = self
            .inner
            .store
            .worker(worker_id)
            .await?
            .ok_or_else(|| errors::worker_not_found(worker_id))?;
        self.worker_view(row, self.now()).await
    }

    /// Lists workers.
    pub async fn list_workers(&self, query: WorkerQuery) -> Result<Page<Worker>> {
        check_order(&query.order_by, &["id", "last_seen", "registered"])?;
        if query.worker_ids.len() > 1000 {
            return Err(errors::invalid("worker_ids", "at most 1000 worker ids"));
        }
        offset_of(&query.page)?;
        let now = self.now();
        self.flush_notes().await?;
        let leases = self.backend().leases().await?;
        let mut out: Vec<Worker> = self
            .inner
            .store
            .workers()
            .await?
            .into_iter()
            .map(|row| self.view_with(row, now, &leases))
            .filter(|w| {
                (query.worker_ids.is_empty() || query.worker_ids.contains(&w.row.id))
                    && (query.queue_ids.is_empty()
                        || w.row.queue_ids.iter().any(|q| query.queue_ids.contains(q)))
                    && query.tags.matches(&w.row.tags)
                    && query.last_seen_within.is_none_or(|d| {
                        d.is_zero()
                            || w.row.last_seen
                                >= now - chrono::Duration::from_std(d).unwrap_or_default()
                    })
                    && (query.include_expired || !w.expired)
                    && (!query.busy_only || !w.row.current_task_id.is_empty())
            })
            .collect();
        out.sort_by(|a, b| {
            for o in &query.order_by {
                let ord = match o.field.as_str() {
                    "last_seen" => a.row.last_seen.cmp(&b.row.last_seen),
                    "registered" => a.row.registered.cmp(&b.row.registered),
                    _ => a.row.id.cmp(&b.row.id),
                };
                let ord = if o.descending { ord.reverse() } else { ord };
                if ord.is_ne() {
                    return ord;
                }
            }
            a.row.id.cmp(&b.row.id)
        });
        paginate(out, &query.page)
    }

    /// Expired workers still registered, oldest expiry first.
    pub async fn list_expired_workers(
        &self,
        with_task_only: bool,
        page: &PageQuery,
    ) -> Result<Page<Worker>> {
        offset_of(page)?;
        let now = self.now();
        self.flush_notes().await?;
        let leases = self.backend().leases().await?;
        let mut out: Vec<Worker> = self
            .inner
            .store
            .workers()
            .await?
            .into_iter()
            .map(|row| self.view_with(row, now, &leases))
            .filter(|w| w.expired && (!with_task_only || !w.row.current_task_id.is_empty()))
            .collect();
        out.sort_by(|a, b| {
            a.expires
                .cmp(&b.expires)
                .then_with(|| a.row.id.cmp(&b.row.id))
        });
        paginate(out, page)
    }
}

/// The contract's error name carried by an error of this service (the
/// `reason` field), or `""`.
pub fn reason(err: &Error) -> &str {
    err.fields().get("reason").map_or("", String::as_str)
}
