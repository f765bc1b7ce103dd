//! gRPC surface of the queues service: converts `tasklab.queues.v1`
//! messages to the domain core's types and back, applies read masks, and
//! turns domain errors into statuses with `.into()`. No rule lives here.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prost_types::{FieldMask, Timestamp};
use tasklab_error::Result;
use tasklab_proto::common::v1 as common;
use tasklab_proto::queues::v1 as pb;
use tasklab_proto::queues::v1::queues_service_server::QueuesService;
use tasklab_proto::queues::v1::workers_service_server::WorkersService;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::{Acked, Disposition, Entry, Lease, LeaseTarget, Move};
use crate::errors;
use crate::service::{
    self, Expected, Heartbeat, MetricsQuery, NewQueue, PageQuery, PopOrder, PopRequest, QueueQuery,
    QueueService, QueueUpdate, ReconcileAction, ReconcileRequest, Registration, WorkerQuery,
};

/// Serves both services from the domain core.
#[derive(Debug, Clone)]
pub(crate) struct QueuesGrpc {
    service: QueueService,
}

impl QueuesGrpc {
    pub(crate) fn new(service: QueueService) -> Self {
        QueuesGrpc { service }
    }
}

// --- conversions -------------------------------------------------------------

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn from_ts(t: &Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)).unwrap_or_default()
}

fn pdur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn from_pdur(d: Option<prost_types::Duration>, field: &str) -> Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(errors::invalid(
            field,
            &format!("{field} must not be negative"),
        )),
        Some(d) => Ok(Some(Duration::new(
            u64::try_from(d.seconds).unwrap_or(0),
            u32::try_from(d.nanos).unwrap_or(0),
        ))),
    }
}

fn page(p: Option<common::PageRequest>) -> PageQuery {
    let p = p.unwrap_or_default();
    PageQuery {
        size: p.page_size,
        token: p.page_token,
        include_total: p.include_total,
    }
}

fn page_out(next: String, total: Option<u64>) -> Option<common::PageResponse> {
    Some(common::PageResponse {
        next_page_token: next,
        total_size: total,
    })
}

fn tags(f: Option<common::TagFilter>) -> service::TagFilter {
    let f = f.unwrap_or_default();
    service::TagFilter {
        any_of: f.any_of,
        all_of: f.all_of,
        none_of: f.none_of,
    }
}

fn order_by(o: Vec<common::OrderBy>) -> Vec<service::OrderBy> {
    o.into_iter()
        .map(|o| service::OrderBy {
            field: o.field,
            descending: o.descending,
        })
        .collect()
}

fn lease_pb(l: Lease) -> pb::Lease {
    pb::Lease {
        lease_id: l.lease_id,
        task_id: l.task_id,
        queue_id: l.queue_id,
        worker_id: l.worker_id,
        priority: l.priority,
        added: Some(ts(l.added)),
        acquired: Some(ts(l.acquired)),
        expires: Some(ts(l.expires)),
        duration: Some(pdur(l.duration)),
        last_renewed: Some(ts(l.last_renewed)),
        delivery_attempt: l.delivery_attempt,
    }
}

fn entry_pb(e: Entry) -> pb::QueueEntry {
    pb::QueueEntry {
        task_id: e.task_id,
        queue_id: e.queue_id,
        added: Some(ts(e.added)),
        priority: e.priority,
        position: e.position,
        lease: e.lease.map(lease_pb),
        delivery_count: e.delivery_count,
    }
}

fn target(t: Option<impl Into<TargetPb>>) -> Result<LeaseTarget> {
    match t.map(Into::into) {
        Some(TargetPb::Lease(id)) => Ok(LeaseTarget::LeaseId(id)),
        Some(TargetPb::Task(id)) => Ok(LeaseTarget::TaskId(id)),
        None => Err(errors::invalid(
            "target",
            "a lease id or task id is required",
        )),
    }
}

enum TargetPb {
    Lease(String),
    Task(String),
}

macro_rules! target_from {
    ($($m:ident),*) => {$(
        impl From<pb::$m::Target> for TargetPb {
            fn from(t: pb::$m::Target) -> Self {
                match t {
                    pb::$m::Target::LeaseId(id) => TargetPb::Lease(id),
                    pb::$m::Target::TaskId(id) => TargetPb::Task(id),
                }
            }
        }
    )*};
}
target_from!(
    ack_lease_request,
    release_lease_request,
    renew_lease_request
);

/// A parsed read mask: `None` keeps every field.
struct Mask(Option<HashSet<String>>);

impl Mask {
    fn parse(mask: Option<FieldMask>, known: &[&str]) -> Result<Mask> {
        let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
            return Ok(Mask(None));
        };
        for p in &mask.paths {
            if !known.contains(&p.as_str()) {
                return Err(errors::invalid(
                    "read_mask",
                    &format!("unknown field {p:?}"),
                ));
            }
        }
        Ok(Mask(Some(mask.paths.into_iter().collect())))
    }

    fn keep<T: Default>(&self, field: &str, value: T) -> T {
        match &self.0 {
            Some(set) if !set.contains(field) => T::default(),
            _ => value,
        }
    }
}

const QUEUE_FIELDS: [&str; 9] = [
    "id",
    "name",
    "tags",
    "system_tags",
    "created",
    "last_update",
    "metadata",
    "entry_count",
    "leased_count",
];

const WORKER_FIELDS: [&str; 16] = [
    "id",
    "user_id",
    "ip",
    "queue_ids",
    "tags",
    "registered",
    "last_seen",
    "timeout",
    "expires",
    "state",
    "current_task_id",
    "current_queue_id",
    "current_task_since",
    "machine_stats",
    "machine_stats_time",
    "leased_task_ids",
];

fn queue_pb(q: service::Queue, m: &Mask) -> pb::Queue {
    pb::Queue {
        id: m.keep("id", q.row.id),
        name: m.keep("name", q.row.name),
        tags: m.keep("tags", q.row.tags),
        system_tags: m.keep("system_tags", q.row.system_tags),
        created: m.keep("created", Some(ts(q.row.created))),
        last_update: m.keep("last_update", Some(ts(q.last_update))),
        metadata: m.keep("metadata", q.row.metadata.into_iter().collect()),
        entry_count: m.keep("entry_count", q.entry_count),
        leased_count: m.keep("leased_count", q.leased_count),
    }
}

fn stats_pb(s: service::MachineStats) -> pb::MachineStats {
    pb::MachineStats {
        cpu_usage_percent: s.cpu_usage_percent,
        cpu_temperature_celsius: s.cpu_temperature_celsius,
        memory_used_mib: s.memory_used_mib,
        memory_free_mib: s.memory_free_mib,
        gpus: s
            .gpus
            .into_iter()
            .map(|g| pb::GpuStats {
                index: g.index,
                usage_percent: g.usage_percent,
                memory_used_mib: g.memory_used_mib,
                memory_free_mib: g.memory_free_mib,
                temperature_celsius: g.temperature_celsius,
                fraction: g.fraction,
            })
            .collect(),
        disk_free_home_percent: s.disk_free_home_percent,
        disk_free_temp_percent: s.disk_free_temp_percent,
        disk_read_mib_per_sec: s.disk_read_mib_per_sec,
        disk_write_mib_per_sec: s.disk_write_mib_per_sec,
        network_rx_mib_per_sec: s.network_rx_mib_per_sec,
        network_tx_mib_per_sec: s.network_tx_mib_per_sec,
    }
}

fn stats_domain(s: pb::MachineStats) -> service::MachineStats {
    service::MachineStats {
        cpu_usage_percent: s.cpu_usage_percent,
        cpu_temperature_celsius: s.cpu_temperature_celsius,
        memory_used_mib: s.memory_used_mib,
        memory_free_mib: s.memory_free_mib,
        gpus: s
            .gpus
            .into_iter()
            .map(|g| service::GpuStats {
                index: g.index,
                usage_percent: g.usage_percent,
                memory_used_mib: g.memory_used_mib,
                memory_free_mib: g.memory_free_mib,
                temperature_celsius: g.temperature_celsius,
                fraction: g.fraction,
            })
            .collect(),
        disk_free_home_percent: s.disk_free_home_percent,
        disk_free_temp_percent: s.disk_free_temp_percent,
        disk_read_mib_per_sec: s.disk_read_mib_per_sec,
        disk_write_mib_per_sec: s.disk_write_mib_per_sec,
        network_rx_mib_per_sec: s.network_rx_mib_per_sec,
        network_tx_mib_per_sec: s.network_tx_mib_per_sec,
    }
}

fn worker_pb(w: service::Worker, m: &Mask) -> pb::Worker {
    let state = if w.expired {
        pb::WorkerState::Expired
    } else {
        pb::WorkerState::Active
    };
    pb::Worker {
        id: m.keep("id", w.row.id),
        user_id: m.keep("user_id", w.row.user_id),
        ip: m.keep("ip", w.row.ip),
        queue_ids: m.keep("queue_ids", w.row.queue_ids),
        tags: m.keep("tags", w.row.tags),
        registered: m.keep("registered", Some(ts(w.row.registered))),
        last_seen: m.keep("last_seen", Some(ts(w.row.last_seen))),
        timeout: m.keep("timeout", Some(pdur(w.row.timeout))),
        expires: m.keep("expires", Some(ts(w.expires))),
        state: m.keep("state", state as i32),
        current_task_id: m.keep("current_task_id", w.row.current_task_id),
        current_queue_id: m.keep("current_queue_id", w.row.current_queue_id),
        current_task_since: m.keep("current_task_since", w.row.current_task_since.map(ts)),
        machine_stats: m.keep("machine_stats", w.machine_stats.map(stats_pb)),
        machine_stats_time: m.keep("machine_stats_time", w.row.machine_stats_time.map(ts)),
        leased_task_ids: m.keep("leased_task_ids", w.leased_task_ids),
    }
}

fn all() -> Mask {
    Mask(None)
}

// --- QueuesService -------------------------------------------------------------

#[tonic::async_trait]
impl QueuesService for QueuesGrpc {
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        let r = request.into_inner();
        let (queue, created) = self
            .service
            .create_queue(NewQueue {
                name: r.name,
                tags: r.tags,
                system_tags: r.system_tags,
                metadata: r.metadata.into_iter().collect(),
                if_not_exists: r.if_not_exists,
            })
            .await?;
        Ok(Response::new(pb::CreateQueueResponse {
            queue: Some(queue_pb(queue, &all())),
            created,
        }))
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        let r = request.into_inner();
        let mask = Mask::parse(r.read_mask, &QUEUE_FIELDS)?;
        let queue = self.service.get_queue(&r.queue_id).await?;
        Ok(Response::new(pb::GetQueueResponse {
            queue: Some(queue_pb(queue, &mask)),
        }))
    }

    async fn get_queue_by_name(
        &self,
        request: Request<pb::GetQueueByNameRequest>,
    ) -> Result<Response<pb::GetQueueByNameResponse>, Status> {
        let r = request.into_inner();
        let mask = Mask::parse(r.read_mask, &QUEUE_FIELDS)?;
        let queue = self.service.get_queue_by_name(&r.name).await?;
        Ok(Response::new(pb::GetQueueByNameResponse {
            queue: Some(queue_pb(queue, &mask)),
        }))
    }

    async fn get_default_queue(
        &self,
        request: Request<pb::GetDefaultQueueRequest>,
    ) -> Result<Response<pb::GetDefaultQueueResponse>, Status> {
        let r = request.into_inner();
        let mask = Mask::parse(r.read_mask, &QUEUE_FIELDS)?;
        let queue = self.service.get_default_queue().await?;
        Ok(Response::new(pb::GetDefaultQueueResponse {
            queue: Some(queue_pb(queue, &mask)),
        }))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let r = request.into_inner();
        let mask = Mask::parse(r.read_mask, &QUEUE_FIELDS)?;
        let out = self
            .service
            .list_queues(QueueQuery {
                ids: r.ids,
                name_pattern: r.name_pattern,
                tags: tags(r.tags),
                system_tags: tags(r.system_tags),
                page: page(r.page),
                order_by: order_by(r.order_by),
            })
            .await?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: out.items.into_iter().map(|q| queue_pb(q, &mask)).collect(),
            page: page_out(out.next_token, out.total),
        }))
    }

    async fn update_queue(
        &self,
        request: Request<pb::UpdateQueueRequest>,
    ) -> Result<Response<pb::UpdateQueueResponse>, Status> {
        let r = request.into_inner();
        let q = r
            .queue
            .ok_or_else(|| errors::invalid("queue", "the queue is required"))?;
        let queue = self
            .service
            .update_queue(QueueUpdate {
                id: q.id,
                name: q.name,
                tags: q.tags,
                system_tags: q.system_tags,
                metadata: q.metadata.into_iter().collect(),
                paths: r.update_mask.map(|m| m.paths).unwrap_or_default(),
            })
            .await?;
        Ok(Response::new(pb::UpdateQueueResponse {
            queue: Some(queue_pb(queue, &all())),
        }))
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let r = request.into_inner();
        let d = self.service.delete_queue(&r.queue_id, r.force).await?;
        Ok(Response::new(pb::DeleteQueueResponse {
            removed_task_ids: d.removed_task_ids,
            cancelled_lease_task_ids: d.cancelled_lease_task_ids,
        }))
    }

    async fn add_entry(
        &self,
        request: Request<pb::AddEntryRequest>,
    ) -> Result<Response<pb::AddEntryResponse>, Status> {
        let r = request.into_inner();
        let added = self
            .service
            .add_entry(&r.queue_id, &r.task_id, r.priority, r.replace_existing)
            .await?;
        Ok(Response::new(pb::AddEntryResponse {
            entry: Some(entry_pb(added.entry)),
            created: added.created,
            previous_queue_id: added.previous_queue_id.unwrap_or_default(),
        }))
    }

    async fn remove_entry(
        &self,
        request: Request<pb::RemoveEntryRequest>,
    ) -> Result<Response<pb::RemoveEntryResponse>, Status> {
        let r = request.into_inner();
        let removed = self.service.remove_entry(&r.task_id, &r.queue_id).await?;
        Ok(Response::new(pb::RemoveEntryResponse {
            removed: removed.is_some(),
            entry: removed.map(entry_pb),
        }))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = request.into_inner();
        let out = self
            .service
            .list_entries(&r.queue_id, &page(r.page), r.include_leased)
            .await?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: out.items.into_iter().map(entry_pb).collect(),
            page: page_out(out.next_token, out.total),
        }))
    }

    async fn get_queue_length(
        &self,
        request: Request<pb::GetQueueLengthRequest>,
    ) -> Result<Response<pb::GetQueueLengthResponse>, Status> {
        let r = request.into_inner();
        let (length, leased) = self.service.queue_length(&r.queue_id).await?;
        Ok(Response::new(pb::GetQueueLengthResponse { length, leased }))
    }

    async fn move_entry(
        &self,
        request: Request<pb::MoveEntryRequest>,
    ) -> Result<Response<pb::MoveEntryResponse>, Status> {
        let r = request.into_inner();
        let mv = match pb::EntryMove::try_from(r.r#move) {
            Ok(pb::EntryMove::ToFront) => Some(Move::ToFront),
            Ok(pb::EntryMove::ToBack) => Some(Move::ToBack),
            Ok(pb::EntryMove::Forward) => Some(Move::Forward(r.count.max(1))),
            Ok(pb::EntryMove::Backward) => Some(Move::Backward(r.count.max(1))),
            _ => None,
        };
        let entry = self.service.move_entry(&r.task_id, &r.queue_id, mv).await?;
        Ok(Response::new(pb::MoveEntryResponse {
            entry: Some(entry_pb(entry)),
        }))
    }

    async fn set_entry_priority(
        &self,
        request: Request<pb::SetEntryPriorityRequest>,
    ) -> Result<Response<pb::SetEntryPriorityResponse>, Status> {
        let r = request.into_inner();
        let entry = self
            .service
            .set_entry_priority(&r.task_id, r.priority)
            .await?;
        Ok(Response::new(pb::SetEntryPriorityResponse {
            entry: Some(entry_pb(entry)),
        }))
    }

    async fn find_task_queue(
        &self,
        request: Request<pb::FindTaskQueueRequest>,
    ) -> Result<Response<pb::FindTaskQueueResponse>, Status> {
        let r = request.into_inner();
        let found = self.service.find_task_queue(&r.task_id).await?;
        Ok(Response::new(pb::FindTaskQueueResponse {
            found: found.is_some(),
            entry: found.map(entry_pb),
        }))
    }

    async fn pop_entry(
        &self,
        request: Request<pb::PopEntryRequest>,
    ) -> Result<Response<pb::PopEntryResponse>, Status> {
        let r = request.into_inner();
        let order = match pb::PopOrder::try_from(r.order) {
            Ok(pb::PopOrder::RoundRobin) => PopOrder::RoundRobin,
            Ok(_) => PopOrder::Strict,
            Err(_) => return Err(errors::invalid("order", "unknown pop order").into()),
        };
        let popped = self
            .service
            .pop(PopRequest {
                worker_id: r.worker_id,
                queue_ids: r.queue_ids,
                order,
                wait: from_pdur(r.wait_timeout, "wait_timeout")?.unwrap_or_default(),
                lease: from_pdur(r.lease_duration, "lease_duration")?,
            })
            .await?;
        let (entry, lease) = match popped {
            Some((e, l)) => (Some(entry_pb(e)), Some(lease_pb(l))),
            None => (None, None),
        };
        Ok(Response::new(pb::PopEntryResponse { entry, lease }))
    }

    async fn ack_lease(
        &self,
        request: Request<pb::AckLeaseRequest>,
    ) -> Result<Response<pb::AckLeaseResponse>, Status> {
        let r = request.into_inner();
        let acked = self.service.ack(&target(r.target)?, &r.worker_id).await?;
        let (outcome, lease) = match acked {
            Acked::Acknowledged(l) => (pb::AckOutcome::Acknowledged, Some(lease_pb(l))),
            // The lease was reaped: report what is known of it.
            Acked::Reclaimed(e) => (
                pb::AckOutcome::Reclaimed,
                Some(pb::Lease {
                    task_id: e.task_id,
                    queue_id: e.queue_id,
                    priority: e.priority,
                    added: Some(ts(e.added)),
                    delivery_attempt: e.delivery_count,
                    ..Default::default()
                }),
            ),
            Acked::NoLease => (pb::AckOutcome::NoLease, None),
        };
        Ok(Response::new(pb::AckLeaseResponse {
            outcome: outcome as i32,
            lease,
        }))
    }

    async fn release_lease(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        let r = request.into_inner();
        let disposition = match pb::ReleaseDisposition::try_from(r.disposition) {
            Ok(pb::ReleaseDisposition::ReturnToBack) => Disposition::Back,
            Ok(pb::ReleaseDisposition::Discard) => Disposition::Discard,
            Ok(_) => Disposition::Front,
            Err(_) => return Err(errors::invalid("disposition", "unknown disposition").into()),
        };
        let released = self
            .service
            .release(&target(r.target)?, &r.worker_id, disposition, &r.reason)
            .await?;
        Ok(Response::new(match released {
            Some(rel) => pb::ReleaseLeaseResponse {
                released: true,
                lease: Some(lease_pb(rel.lease)),
                entry: rel.entry.map(entry_pb),
            },
            None => pb::ReleaseLeaseResponse::default(),
        }))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let r = request.into_inner();
        let lease = self.service.renew(&target(r.target)?, &r.worker_id).await?;
        Ok(Response::new(pb::RenewLeaseResponse {
            lease: Some(lease_pb(lease)),
        }))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let r = request.into_inner();
        let out = self
            .service
            .list_leases(service::LeaseQuery {
                queue_ids: r.queue_ids,
                worker_id: r.worker_id,
                task_ids: r.task_ids,
                expired_only: r.expired_only,
                page: page(r.page),
                order_by: order_by(r.order_by),
            })
            .await?;
        Ok(Response::new(pb::ListLeasesResponse {
            leases: out.items.into_iter().map(lease_pb).collect(),
            page: page_out(out.next_token, out.total),
        }))
    }

    async fn get_queue_metrics(
        &self,
        request: Request<pb::GetQueueMetricsRequest>,
    ) -> Result<Response<pb::GetQueueMetricsResponse>, Status> {
        let r = request.into_inner();
        let interval = from_pdur(r.history_interval, "history_interval")?;
        let history = match (interval, r.history_range) {
            (Some(i), Some(range)) if !i.is_zero() => {
                let start = range.start.as_ref().map(from_ts).unwrap_or_default();
                let end = range.end.as_ref().map_or_else(Utc::now, from_ts);
                Some((start, end, i))
            }
            (Some(i), _) if !i.is_zero() => {
                return Err(
                    errors::invalid("history_range", "a history needs a time range").into(),
                );
            }
            _ => None,
        };
        let metrics = self
            .service
            .metrics(MetricsQuery {
                queue_ids: r.queue_ids,
                window: from_pdur(r.window, "window")?.filter(|w| !w.is_zero()),
                history,
            })
            .await?;
        Ok(Response::new(pb::GetQueueMetricsResponse {
            queues: metrics
                .into_iter()
                .map(|m| pb::QueueMetrics {
                    queue_id: m.queue_id,
                    queue_name: m.queue_name,
                    pending_count: m.pending_count,
                    leased_count: m.leased_count,
                    oldest_entry_age: m.oldest_entry_age.map(pdur),
                    average_wait: m.average_wait.map(pdur),
                    popped_count: m.popped_count,
                    waiting_workers: m.waiting_workers,
                    history: m
                        .history
                        .into_iter()
                        .map(|s| pb::QueueMetricsSample {
                            start: Some(ts(s.start)),
                            average_wait: s.average_wait.map(pdur),
                            max_pending_count: s.max_pending_count,
                            popped_count: s.popped_count,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn start_reconciliation(
        &self,
        request: Request<pb::StartReconciliationRequest>,
    ) -> Result<Response<pb::StartReconciliationResponse>, Status> {
        let r = request.into_inner();
        let f = self.service.start_reconciliation(&r.known_epoch).await?;
        Ok(Response::new(pb::StartReconciliationResponse {
            fence: f.fence,
            epoch: f.epoch,
            epoch_changed: f.epoch_changed,
            server_time: Some(ts(f.server_time)),
        }))
    }

    async fn reconcile_entries(
        &self,
        request: Request<Streaming<pb::ReconcileEntriesRequest>>,
    ) -> Result<Response<pb::ReconcileEntriesResponse>, Status> {
        use pb::reconcile_entries_request::Part;
        let mut stream = request.into_inner();
        let mut req: Option<ReconcileRequest> = None;
        while let Some(msg) = stream.message().await? {
            match (msg.part, req.as_mut()) {
                (Some(Part::Header(h)), None) => {
                    req = Some(ReconcileRequest {
                        fence: h.fence,
                        queue_ids: h.queue_ids,
                        add_only: h.add_only,
                        dry_run: h.dry_run,
                        expected: Vec::new(),
                    });
                }
                (Some(Part::Batch(b)), Some(r)) => {
                    QueueService::check_batch(b.entries.len())?;
                    r.expected.extend(b.entries.into_iter().map(|e| Expected {
                        task_id: e.task_id,
                        queue_id: e.queue_id,
                        priority: e.priority,
                        enqueued: e.enqueued.as_ref().map(from_ts),
                    }));
                }
                _ => {
                    return Err(errors::invalid(
                        "part",
                        "the stream is one header followed by batches",
                    )
                    .into());
                }
            }
        }
        let req = req.ok_or_else(|| errors::invalid("header", "the stream has no header"))?;
        let report = self.service.reconcile(req).await?;
        Ok(Response::new(pb::ReconcileEntriesResponse {
            changes: report
                .changes
                .into_iter()
                .map(|c| pb::ReconcileChange {
                    action: match c.action {
                        ReconcileAction::Added => pb::ReconcileAction::Added,
                        ReconcileAction::Moved => pb::ReconcileAction::Moved,
                        ReconcileAction::Removed => pb::ReconcileAction::Removed,
                        ReconcileAction::LeaseCancelled => pb::ReconcileAction::LeaseCancelled,
                        ReconcileAction::SkippedRecent => pb::ReconcileAction::SkippedRecent,
                        ReconcileAction::SkippedUnknownQueue => {
                            pb::ReconcileAction::SkippedUnknownQueue
                        }
                    } as i32,
                    task_id: c.task_id,
                    queue_id: c.queue_id,
                    previous_queue_id: c.previous_queue_id,
                })
                .collect(),
            changes_truncated: report.truncated,
            added: report.added,
            moved: report.moved,
            removed: report.removed,
            leases_cancelled: report.leases_cancelled,
            skipped: report.skipped,
            unchanged: report.unchanged,
            dry_run: report.dry_run,
        }))
    }
}

// --- WorkersService ------------------------------------------------------------

#[tonic::async_trait]
impl WorkersService for QueuesGrpc {
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let r = request.into_inner();
        let (worker, created) = self
            .service
            .register_worker(Registration {
                worker_id: r.worker_id,
                queue_ids: r.queue_ids,
                tags: r.tags,
                timeout: from_pdur(r.timeout, "timeout")?,
                user_id: r.user_id,
                ip: r.ip,
            })
            .await?;
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker: Some(worker_pb(worker, &all())),
            created,
        }))
    }

    async fn unregister_worker(
        &self,
        request: Request<pb::UnregisterWorkerRequest>,
    ) -> Result<Response<pb::UnregisterWorkerResponse>, Status> {
        let r = request.into_inner();
        let out = self
            .service
            .unregister_worker(
                &r.worker_id,
                r.if_last_seen.as_ref().map(from_ts),
                &r.reason,
            )
            .await?;
        Ok(Response::new(pb::UnregisterWorkerResponse {
            unregistered: out.worker.is_some(),
            worker: out.worker.map(|w| worker_pb(w, &all())),
            returned_leases: out.returned.into_iter().map(lease_pb).collect(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let out = self
            .service
            .heartbeat(Heartbeat {
                worker_id: r.worker_id,
                reported_at: r.reported_at.as_ref().map(from_ts),
                machine_stats: r.machine_stats.map(stats_domain),
                current_task_id: r.current_task_id,
                current_queue_id: r.current_queue_id,
                queue_ids: r.queue_ids.map(|l| l.values),
                tags: r.tags.map(|l| l.values),
                auto_register: r.auto_register,
                timeout: from_pdur(r.timeout, "timeout")?,
                user_id: r.user_id,
                ip: r.ip,
            })
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {
            worker: Some(worker_pb(out.worker, &all())),
            renewed_leases: out.renewed.into_iter().map(lease_pb).collect(),
            auto_registered: out.auto_registered,
            revived: out.revived,
        }))
    }

    async fn get_worker(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::GetWorkerResponse>, Status> {
        let r = request.into_inner();
        let mask = Mask::parse(r.read_mask, &WORKER_FIELDS)?;
        let worker = self.service.get_worker(&r.worker_id).await?;
        Ok(Response::new(pb::GetWorkerResponse {
            worker: Some(worker_pb(worker, &mask)),
        }))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let r = request.into_inner();
        let mask = Mask::parse(r.read_mask, &WORKER_FIELDS)?;
        let out = self
            .service
            .list_workers(WorkerQuery {
                worker_ids: r.worker_ids,
                queue_ids: r.queue_ids,
                tags: tags(r.tags),
                last_seen_within: from_pdur(r.last_seen_within, "last_seen_within")?,
                include_expired: r.include_expired,
                busy_only: r.busy_only,
                page: page(r.page),
                order_by: order_by(r.order_by),
            })
            .await?;
        Ok(Response::new(pb::ListWorkersResponse {
            workers: out.items.into_iter().map(|w| worker_pb(w, &mask)).collect(),
            page: page_out(out.next_token, out.total),
        }))
    }

    async fn list_expired_workers(
        &self,
        request: Request<pb::ListExpiredWorkersRequest>,
    ) -> Result<Response<pb::ListExpiredWorkersResponse>, Status> {
        let r = request.into_inner();
        let out = self
            .service
            .list_expired_workers(r.with_task_only, &page(r.page))
            .await?;
        Ok(Response::new(pb::ListExpiredWorkersResponse {
            workers: out
                .items
                .into_iter()
                .map(|w| worker_pb(w, &all()))
                .collect(),
            page: page_out(out.next_token, out.total),
        }))
    }
}
