//! gRPC surface of the metrics service: converts `tasklab.metrics.v1`
//! messages to the domain core's types and back, and turns domain errors
//! into statuses with `.into()`. No rule lives here.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use prost::Message as _;
use prost_types::Timestamp;
use tasklab_error::Error;
use tasklab_proto::common::v1 as common;
use tasklab_proto::metrics::v1::metrics_service_server::MetricsService;
use tasklab_proto::metrics::v1::{self as pb, event::Payload as PbPayload};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::downsample::Axis;
use crate::service::{
    self, DeleteRequest, Direction, Event, Group, Kind, LogFilter, LogNotice, LogPosition,
    LogRequest, MetricsService as Core, Navigation, NewEvent, NewSeries, Page, Paged, Payload,
    RetentionAction, RetentionPolicy, RetentionRule, ScalarListRequest, ScalarOrder, Selector,
    SeriesData, SeriesRequest, TaskLock, TaskRef, Usage,
};

/// How long a live tail stays silent before it sends an empty message.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Serves `MetricsService` from the domain core.
#[derive(Debug, Clone)]
pub(crate) struct MetricsGrpc {
    service: Core,
}

impl MetricsGrpc {
    pub(crate) fn new(service: Core) -> Self {
        MetricsGrpc { service }
    }
}

fn to_ms(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos.div_euclid(1_000_000)))
}

fn to_ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn page(p: Option<common::PageRequest>) -> Page {
    p.map(|p| Page {
        size: p.page_size,
        token: p.page_token,
        include_total: p.include_total,
    })
    .unwrap_or_default()
}

fn page_response<T>(p: &Paged<T>) -> common::PageResponse {
    common::PageResponse {
        next_page_token: p.next_token.clone(),
        total_size: p.total,
    }
}

fn selectors(list: Vec<pb::MetricSelector>) -> Vec<Selector> {
    list.into_iter()
        .map(|s| Selector {
            metric: s.metric,
            variants: s.variants,
        })
        .collect()
}

fn kinds(list: &[i32]) -> Result<Vec<Kind>, Status> {
    list.iter()
        .filter(|k| **k != 0)
        .map(|k| {
            Kind::from_i32(*k).ok_or_else(|| {
                Error::invalid(format!("unknown event kind {k}"))
                    .with_field("field", "kinds")
                    .into()
            })
        })
        .collect()
}

fn new_series(s: pb::ScalarSeriesBatch) -> NewSeries {
    NewSeries {
        task_id: s.task_id,
        model: s.model_event,
        metric: s.metric,
        variant: s.variant,
        x_axis_label: s.x_axis_label,
        iterations: s.iterations,
        values: s.values,
        timestamps_ms: s.timestamps_ms,
        allow_locked: s.allow_locked,
    }
}

fn new_event(e: pb::Event) -> NewEvent {
    let payload = e.payload.map(|p| match p {
        PbPayload::Scalar(s) => Payload::Scalar {
            value: s.value,
            x_axis_label: s.x_axis_label,
        },
        PbPayload::Vector(v) => Payload::Vector { values: v.values },
        PbPayload::Plot(p) => Payload::Plot {
            json: p.plot_json,
            skip_validation: p.skip_validation,
        },
        PbPayload::Log(l) => Payload::Log {
            level: l.level,
            worker: l.worker,
            message: l.message,
        },
        PbPayload::DebugSample(d) => Payload::DebugSample {
            url: d.url,
            key: d.key,
        },
    });
    NewEvent {
        task_id: e.task_id,
        model: e.model_event,
        timestamp_ms: e.timestamp.as_ref().map(to_ms),
        iteration: e.iteration,
        metric: e.metric,
        variant: e.variant,
        sequence: e.sequence,
        allow_locked: e.allow_locked,
        payload,
    }
}

fn event(e: Event) -> pb::Event {
    let payload = match e.payload {
        Payload::Scalar {
            value,
            x_axis_label,
        } => PbPayload::Scalar(pb::ScalarEvent {
            value,
            x_axis_label,
        }),
        Payload::Vector { values } => PbPayload::Vector(pb::VectorEvent { values }),
        Payload::Plot { json, .. } => PbPayload::Plot(pb::PlotEvent {
            plot_json: json,
            skip_validation: false,
        }),
        Payload::Log {
            level,
            worker,
            message,
        } => PbPayload::Log(pb::LogEvent {
            level,
            worker,
            message,
        }),
        Payload::DebugSample { url, key } => {
            PbPayload::DebugSample(pb::DebugSampleEvent { url, key })
        }
    };
    pb::Event {
        task_id: e.task.id,
        model_event: e.task.model,
        timestamp: Some(to_ts(e.timestamp_ms)),
        iteration: e.iteration,
        metric: e.metric,
        variant: e.variant,
        sequence: 0,
        allow_locked: false,
        received: e.received_ms.map(to_ts),
        payload: Some(payload),
    }
}

fn series(s: SeriesData) -> pb::ScalarSeries {
    let d = s.data;
    let envelope = !(d.interval == 1 && d.buckets.iter().all(|b| b.stats.count == 1));
    let mut out = pb::ScalarSeries {
        task_id: s.task_id,
        metric: s.metric,
        variant: s.variant,
        x_axis_label: s.x_axis_label,
        interval: d.interval,
        total_points: d.total,
        ..pb::ScalarSeries::default()
    };
    for b in d.buckets {
        out.x.push(b.x);
        if d.interval == 1 && b.stats.count == 1 && b.stats.nonnan == 0 {
            // A lone NaN point: keep it (the mean of nothing would be NaN too).
            out.y.push(f64::NAN);
        } else {
            out.y.push(b.stats.mean());
        }
        if envelope {
            out.y_min.push(b.stats.min);
            out.y_max.push(b.stats.max);
            out.counts
                .push(u32::try_from(b.stats.count).unwrap_or(u32::MAX));
        }
    }
    out
}

fn axis(v: i32) -> Axis {
    if v == pb::XAxis::Timestamp as i32 {
        Axis::Timestamp
    } else {
        Axis::Iteration
    }
}

fn navigation(v: i32, iteration: i64) -> Navigation {
    match pb::SampleNavigation::try_from(v).unwrap_or(pb::SampleNavigation::Latest) {
        pb::SampleNavigation::Earliest => Navigation::Earliest,
        pb::SampleNavigation::At => Navigation::At(iteration),
        pb::SampleNavigation::Previous => Navigation::Previous(iteration),
        pb::SampleNavigation::Next => Navigation::Next(iteration),
        pb::SampleNavigation::Latest | pb::SampleNavigation::Unspecified => Navigation::Latest,
    }
}

fn kind_usage(kinds: &service::KindUsage) -> (Vec<pb::KindUsage>, u64, u64) {
    let list: Vec<pb::KindUsage> = kinds
        .iter()
        .map(|(k, Usage { events, bytes })| pb::KindUsage {
            kind: *k as i32,
            events: *events,
            bytes: *bytes,
        })
        .collect();
    let events = list.iter().map(|k| k.events).sum();
    let bytes = list.iter().map(|k| k.bytes).sum();
    (list, events, bytes)
}

fn group_usage(g: service::GroupUsage) -> pb::GroupStorageUsage {
    let (kinds, events, bytes) = kind_usage(&g.kinds);
    pb::GroupStorageUsage {
        group_id: g.id,
        tasks_with_events: g.tasks_with_events,
        kinds,
        events,
        bytes,
    }
}

fn counts(c: &std::collections::BTreeMap<Kind, u64>) -> Vec<pb::KindCount> {
    c.iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| pb::KindCount {
            kind: *k as i32,
            count: *n,
        })
        .collect()
}

fn policy_to_pb(p: RetentionPolicy) -> pb::RetentionPolicy {
    pb::RetentionPolicy {
        project_id: p.project_id,
        rules: p
            .rules
            .into_iter()
            .map(|r| pb::RetentionRule {
                kinds: r.kinds.iter().map(|k| *k as i32).collect(),
                max_age: Some(prost_types::Duration {
                    seconds: r.max_age_ms / 1000,
                    nanos: ((r.max_age_ms % 1000) * 1_000_000) as i32,
                }),
                action: match r.action {
                    RetentionAction::Delete => pb::RetentionAction::Delete as i32,
                    RetentionAction::Downsample => pb::RetentionAction::Downsample as i32,
                },
                downsample_samples: r.samples,
            })
            .collect(),
        include_locked_tasks: p.include_locked,
        updated: p.updated_ms.map(to_ts),
    }
}

fn policy_from_pb(p: pb::RetentionPolicy) -> Result<RetentionPolicy, Status> {
    let bad = |i: usize, m: &str| -> Status {
        Error::invalid(format!("rule {i}: {m}"))
            .with_field("reason", "invalid_retention_rule")
            .with_field("field", format!("policy.rules[{i}]"))
            .into()
    };
    let mut rules = Vec::new();
    for (i, r) in p.rules.into_iter().enumerate() {
        let action = match pb::RetentionAction::try_from(r.action) {
            Ok(pb::RetentionAction::Delete) => RetentionAction::Delete,
            Ok(pb::RetentionAction::Downsample) => RetentionAction::Downsample,
            _ => return Err(bad(i, "a rule must name an action")),
        };
        let age = r.max_age.ok_or_else(|| bad(i, "max age is required"))?;
        let kinds = kinds(&r.kinds).map_err(|_| bad(i, "unknown event kind"))?;
        rules.push(RetentionRule {
            kinds,
            max_age_ms: age
                .seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(age.nanos / 1_000_000)),
            action,
            samples: r.downsample_samples,
        });
    }
    Ok(RetentionPolicy {
        project_id: p.project_id,
        rules,
        include_locked: p.include_locked_tasks,
        updated_ms: None,
    })
}

type TailStream = Pin<Box<dyn Stream<Item = Result<pb::TailLogResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MetricsService for MetricsGrpc {
    async fn add_events(
        &self,
        request: Request<pb::AddEventsRequest>,
    ) -> Result<Response<pb::AddEventsResponse>, Status> {
        let req = request.into_inner();
        let size = req.encoded_len();
        if size > service::MAX_BATCH_BYTES {
            return Err(service::batch_too_large(format!(
                "batch of {size} bytes is over the limit of {} bytes",
                service::MAX_BATCH_BYTES
            ))
            .into());
        }
        let events = req.events.into_iter().map(new_event).collect();
        let series = req.scalar_series.into_iter().map(new_series).collect();
        let out = self
            .service
            .add_batch(events, series, req.client_batch_id)
            .await?;
        Ok(Response::new(pb::AddEventsResponse {
            added: out.added,
            duplicates: out.duplicates,
            rejected: out
                .rejected
                .into_iter()
                .map(|r| pb::RejectedEvent {
                    index: if r.series { 0 } else { r.index },
                    series_index: r.series.then_some(r.index),
                    code: r.code.to_owned(),
                    reason: r.reason,
                })
                .collect(),
            errors_by_reason: out.by_reason.into_iter().collect(),
            rejected_count: out.rejected_count,
            rejected_points: out.rejected_points,
        }))
    }

    async fn set_task_locks(
        &self,
        request: Request<pb::SetTaskLocksRequest>,
    ) -> Result<Response<pb::SetTaskLocksResponse>, Status> {
        let locks = request
            .into_inner()
            .locks
            .into_iter()
            .map(|l| TaskLock {
                task: TaskRef {
                    id: l.task_id,
                    model: l.model,
                },
                locked: l.locked,
                since_ms: 0,
            })
            .collect();
        let changed = self.service.set_locks(locks).await?;
        Ok(Response::new(pb::SetTaskLocksResponse { changed }))
    }

    async fn list_locked_tasks(
        &self,
        request: Request<pb::ListLockedTasksRequest>,
    ) -> Result<Response<pb::ListLockedTasksResponse>, Status> {
        let paged = self
            .service
            .list_locks(page(request.into_inner().page))
            .await?;
        Ok(Response::new(pb::ListLockedTasksResponse {
            page: Some(page_response(&paged)),
            locks: paged
                .items
                .into_iter()
                .map(|l| pb::TaskLock {
                    task_id: l.task.id,
                    model: l.task.model,
                    locked: l.locked,
                    since: Some(to_ts(l.since_ms)),
                })
                .collect(),
        }))
    }

    async fn get_task_metrics_summary(
        &self,
        request: Request<pb::GetTaskMetricsSummaryRequest>,
    ) -> Result<Response<pb::GetTaskMetricsSummaryResponse>, Status> {
        let req = request.into_inner();
        let tasks = self
            .service
            .summaries(req.task_ids, req.model_events, selectors(req.metrics))
            .await?;
        Ok(Response::new(pb::GetTaskMetricsSummaryResponse {
            tasks: tasks
                .into_iter()
                .map(|t| pb::TaskMetricsSummary {
                    task_id: t.task_id,
                    last_iteration: t.state.last_iteration,
                    last_update: t.state.last_update_ms.map(to_ts),
                    last_event_timestamp: t.state.last_event_ms.map(to_ts),
                    metrics: t
                        .series
                        .into_iter()
                        .map(|s| pb::MetricVariantSummary {
                            metric: s.metric,
                            variant: s.variant,
                            last_value: s.last.2,
                            last_iteration: s.last.0,
                            last_timestamp: Some(to_ts(s.last.1)),
                            first_value: s.first.2,
                            first_iteration: s.first.0,
                            min_value: s.stats.min,
                            min_iteration: s.min_iter,
                            max_value: s.stats.max,
                            max_iteration: s.max_iter,
                            count: s.stats.count,
                            mean_value: s.stats.mean(),
                            x_axis_label: s.x_axis_label,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn get_scalar_series(
        &self,
        request: Request<pb::GetScalarSeriesRequest>,
    ) -> Result<Response<pb::GetScalarSeriesResponse>, Status> {
        let req = request.into_inner();
        if req.task_id.is_empty() {
            return Err(Error::invalid("task id is required")
                .with_field("field", "task_id")
                .into());
        }
        let out = self
            .service
            .series(SeriesRequest {
                tasks: vec![req.task_id],
                model: req.model_events,
                selectors: selectors(req.metrics),
                samples: req.samples,
                axis: axis(req.x_axis),
                x_min: req.x_min,
                x_max: req.x_max,
            })
            .await?;
        Ok(Response::new(pb::GetScalarSeriesResponse {
            series: out.into_iter().map(series).collect(),
        }))
    }

    async fn compare_scalar_series(
        &self,
        request: Request<pb::CompareScalarSeriesRequest>,
    ) -> Result<Response<pb::CompareScalarSeriesResponse>, Status> {
        let req = request.into_inner();
        if req.task_ids.len() > 100 {
            return Err(service::batch_too_large(format!(
                "{} task ids given, at most 100 allowed",
                req.task_ids.len()
            ))
            .into());
        }
        if req.task_ids.is_empty() || req.task_ids.iter().any(String::is_empty) {
            return Err(Error::invalid("task ids are required")
                .with_field("field", "task_ids")
                .into());
        }
        let out = self
            .service
            .series(SeriesRequest {
                tasks: req.task_ids,
                model: req.model_events,
                selectors: selectors(req.metrics),
                samples: req.samples,
                axis: axis(req.x_axis),
                x_min: req.x_min,
                x_max: req.x_max,
            })
            .await?;
        Ok(Response::new(pb::CompareScalarSeriesResponse {
            series: out.into_iter().map(series).collect(),
        }))
    }

    async fn list_scalar_events(
        &self,
        request: Request<pb::ListScalarEventsRequest>,
    ) -> Result<Response<pb::ListScalarEventsResponse>, Status> {
        let req = request.into_inner();
        if req.task_id.is_empty() {
            return Err(Error::invalid("task id is required")
                .with_field("field", "task_id")
                .into());
        }
        let (order, descending) = match req.order_by.as_slice() {
            [] => (ScalarOrder::Iteration, false),
            [o] if o.field == "iteration" => (ScalarOrder::Iteration, o.descending),
            [o] if o.field == "timestamp" => (ScalarOrder::Timestamp, o.descending),
            _ => {
                return Err(
                    Error::invalid("order_by supports one field: iteration or timestamp")
                        .with_field("field", "order_by")
                        .into(),
                );
            }
        };
        let paged = self
            .service
            .list_scalars(ScalarListRequest {
                task: TaskRef {
                    id: req.task_id,
                    model: req.model_events,
                },
                selectors: selectors(req.metrics),
                min_iteration: req.min_iteration,
                max_iteration: req.max_iteration,
                include_single_values: req.include_single_values,
                page: page(req.page),
                order,
                descending,
            })
            .await?;
        Ok(Response::new(pb::ListScalarEventsResponse {
            page: Some(page_response(&paged)),
            events: paged.items.into_iter().map(event).collect(),
        }))
    }

    async fn get_single_values(
        &self,
        request: Request<pb::GetSingleValuesRequest>,
    ) -> Result<Response<pb::GetSingleValuesResponse>, Status> {
        let req = request.into_inner();
        let out = self
            .service
            .single_values(req.task_ids, req.model_events)
            .await?;
        Ok(Response::new(pb::GetSingleValuesResponse {
            tasks: out
                .into_iter()
                .map(|(task_id, values)| pb::TaskSingleValues {
                    task_id,
                    values: values
                        .into_iter()
                        .map(|v| pb::SingleValue {
                            metric: v.metric,
                            variant: v.variant,
                            value: v.value,
                            timestamp: Some(to_ts(v.timestamp_ms)),
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn list_metric_names(
        &self,
        request: Request<pb::ListMetricNamesRequest>,
    ) -> Result<Response<pb::ListMetricNamesResponse>, Status> {
        let req = request.into_inner();
        let kinds = kinds(&req.kinds)?;
        let out = self
            .service
            .metric_names(req.task_ids, req.model_events, kinds)
            .await?;
        Ok(Response::new(pb::ListMetricNamesResponse {
            tasks: out
                .into_iter()
                .map(|(task_id, metrics)| pb::TaskMetricNames {
                    task_id,
                    metrics: metrics
                        .into_iter()
                        .map(|m| pb::MetricNames {
                            kind: m.kind as i32,
                            metric: m.metric,
                            variants: m.variants,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn get_log(
        &self,
        request: Request<pb::GetLogRequest>,
    ) -> Result<Response<pb::GetLogResponse>, Status> {
        let req = request.into_inner();
        if req.task_id.is_empty() {
            return Err(Error::invalid("task id is required")
                .with_field("field", "task_id")
                .into());
        }
        let direction = if req.direction == pb::LogDirection::Later as i32 {
            Direction::Later
        } else {
            Direction::Earlier
        };
        let ascending = match pb::SortOrder::try_from(req.order) {
            Ok(pb::SortOrder::Ascending) => Some(true),
            Ok(pb::SortOrder::Descending) => Some(false),
            _ => None,
        };
        let paged = self
            .service
            .log(LogRequest {
                task_id: req.task_id,
                from_ms: req.from_timestamp.as_ref().map(to_ms),
                direction,
                ascending,
                levels: req.levels,
                pattern: req.message_pattern,
                page: page(req.page),
            })
            .await?;
        Ok(Response::new(pb::GetLogResponse {
            page: Some(page_response(&paged)),
            events: paged.items.into_iter().map(event).collect(),
        }))
    }

    async fn tail_log(
        &self,
        request: Request<pb::TailLogRequest>,
    ) -> Result<Response<TailStream>, Status> {
        let req = request.into_inner();
        if req.task_id.is_empty() {
            return Err(Error::invalid("task id is required")
                .with_field("field", "task_id")
                .into());
        }
        let filter = LogFilter::new(&req.levels, &req.message_pattern)?;
        let permit = self.service.tail_permit()?;
        // Subscribe first, then find the boundary: every event up to it is
        // read from the store, every later one arrives live.
        let mut live = self.service.subscribe_logs();
        let boundary = self.service.log_boundary().await?;
        let service = self.service.clone();
        let task_id = req.task_id;
        let from = req.from_timestamp.as_ref().map(to_ms);
        let stream = async_stream::try_stream! {
            let _permit = permit;
            if let Some(from) = from {
                let mut position = Some(LogPosition { ts: from, id: i64::MIN });
                loop {
                    let rows = service.stored_logs(&task_id, position, 1000).await?;
                    let full = rows.len() == 1000;
                    position = rows.last().map(|r| LogPosition { ts: r.event.timestamp_ms, id: r.id }).or(position);
                    let events: Vec<pb::Event> = rows
                        .into_iter()
                        .filter(|r| r.id <= boundary && filter.matches(&r.event))
                        .map(|r| event(r.event))
                        .collect();
                    if !events.is_empty() {
                        yield pb::TailLogResponse { events };
                    }
                    if !full {
                        break;
                    }
                }
            }
            loop {
                match tokio::time::timeout(KEEP_ALIVE, live.recv()).await {
                    Err(_) => yield pb::TailLogResponse { events: Vec::new() },
                    Ok(Ok(LogNotice::Added(rows))) => {
                        let events: Vec<pb::Event> = rows
                            .iter()
                            .filter(|r| r.id > boundary && r.event.task.id == task_id && filter.matches(&r.event))
                            .map(|r| event(r.event.clone()))
                            .collect();
                        if !events.is_empty() {
                            yield pb::TailLogResponse { events };
                        }
                    }
                    Ok(Ok(LogNotice::Deleted(tasks))) => {
                        if tasks.contains(&task_id) {
                            break;
                        }
                    }
                    Ok(Err(RecvError::Lagged(missed))) => {
                        tracing::warn!(missed, task_id = %task_id, "log tail fell behind; notices dropped");
                    }
                    Ok(Err(RecvError::Closed)) => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream) as TailStream))
    }

    async fn get_plots(
        &self,
        request: Request<pb::GetPlotsRequest>,
    ) -> Result<Response<pb::GetPlotsResponse>, Status> {
        let req = request.into_inner();
        let paged = self
            .service
            .iteration_events(
                TaskRef {
                    id: req.task_id,
                    model: req.model_events,
                },
                Kind::Plot,
                selectors(req.metrics),
                page(req.page),
            )
            .await?;
        Ok(Response::new(pb::GetPlotsResponse {
            page: Some(page_response(&paged)),
            events: paged.items.into_iter().map(event).collect(),
        }))
    }

    async fn get_plot_sample(
        &self,
        request: Request<pb::GetPlotSampleRequest>,
    ) -> Result<Response<pb::GetPlotSampleResponse>, Status> {
        let req = request.into_inner();
        let view = self
            .service
            .sample(
                TaskRef {
                    id: req.task_id,
                    model: req.model_events,
                },
                Kind::Plot,
                req.metric,
                req.variant,
                navigation(req.navigation, req.iteration),
            )
            .await?;
        Ok(Response::new(pb::GetPlotSampleResponse {
            event: view.events.into_iter().next().map(event),
            min_iteration: view.min_iteration,
            max_iteration: view.max_iteration,
        }))
    }

    async fn get_debug_samples(
        &self,
        request: Request<pb::GetDebugSamplesRequest>,
    ) -> Result<Response<pb::GetDebugSamplesResponse>, Status> {
        let req = request.into_inner();
        let paged = self
            .service
            .debug_samples(
                req.task_ids,
                req.model_events,
                selectors(req.metrics),
                page(req.page),
            )
            .await?;
        Ok(Response::new(pb::GetDebugSamplesResponse {
            page: Some(page_response(&paged)),
            groups: paged
                .items
                .into_iter()
                .map(|g| pb::DebugSampleGroup {
                    task_id: g.task_id,
                    metric: g.metric,
                    iterations: g
                        .iterations
                        .into_iter()
                        .map(|(iteration, mut events)| {
                            events.sort_by(|a, b| {
                                let key = |e: &Event| match &e.payload {
                                    Payload::DebugSample { key, .. } => key.clone(),
                                    _ => String::new(),
                                };
                                (&a.variant, key(a)).cmp(&(&b.variant, key(b)))
                            });
                            pb::DebugSampleIteration {
                                iteration,
                                events: events.into_iter().map(event).collect(),
                            }
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn get_debug_sample(
        &self,
        request: Request<pb::GetDebugSampleRequest>,
    ) -> Result<Response<pb::GetDebugSampleResponse>, Status> {
        let req = request.into_inner();
        let view = self
            .service
            .sample(
                TaskRef {
                    id: req.task_id,
                    model: req.model_events,
                },
                Kind::DebugSample,
                req.metric,
                req.variant,
                navigation(req.navigation, req.iteration),
            )
            .await?;
        Ok(Response::new(pb::GetDebugSampleResponse {
            events: view.events.into_iter().map(event).collect(),
            iteration: view.iteration,
            min_iteration: view.min_iteration,
            max_iteration: view.max_iteration,
        }))
    }

    async fn get_vectors(
        &self,
        request: Request<pb::GetVectorsRequest>,
    ) -> Result<Response<pb::GetVectorsResponse>, Status> {
        let req = request.into_inner();
        let paged = self
            .service
            .iteration_events(
                TaskRef {
                    id: req.task_id,
                    model: req.model_events,
                },
                Kind::Vector,
                selectors(req.metrics),
                page(req.page),
            )
            .await?;
        Ok(Response::new(pb::GetVectorsResponse {
            page: Some(page_response(&paged)),
            events: paged.items.into_iter().map(event).collect(),
        }))
    }

    async fn delete_task_events(
        &self,
        request: Request<pb::DeleteTaskEventsRequest>,
    ) -> Result<Response<pb::DeleteTaskEventsResponse>, Status> {
        let req = request.into_inner();
        let kinds = kinds(&req.kinds)?;
        let out = self
            .service
            .delete(DeleteRequest {
                tasks: req.task_ids,
                model: req.model_events,
                kinds,
                before_ms: req.before.as_ref().map(to_ms),
                force: req.force,
                return_urls: req.return_urls,
            })
            .await?;
        let mut urls: Vec<String> = out.iter().flat_map(|(_, d)| d.urls.clone()).collect();
        urls.sort();
        urls.dedup();
        Ok(Response::new(pb::DeleteTaskEventsResponse {
            total_deleted: out
                .iter()
                .map(|(_, d)| d.counts.values().sum::<u64>())
                .sum(),
            tasks: out
                .into_iter()
                .map(|(task_id, d)| pb::TaskEventsDeleted {
                    task_id,
                    deleted: counts(&d.counts),
                })
                .collect(),
            debug_sample_urls: urls,
        }))
    }

    async fn get_storage_usage(
        &self,
        request: Request<pb::GetStorageUsageRequest>,
    ) -> Result<Response<pb::GetStorageUsageResponse>, Status> {
        let req = request.into_inner();
        let report = self
            .service
            .usage(
                req.task_ids,
                req.groups
                    .into_iter()
                    .map(|g| Group {
                        id: g.group_id,
                        tasks: g.task_ids,
                    })
                    .collect(),
                req.model_events,
                req.include_service_total,
            )
            .await?;
        Ok(Response::new(pb::GetStorageUsageResponse {
            tasks: report
                .tasks
                .into_iter()
                .map(|(task_id, u)| {
                    let (kinds, events, bytes) = kind_usage(&u);
                    pb::TaskStorageUsage {
                        task_id,
                        kinds,
                        events,
                        bytes,
                    }
                })
                .collect(),
            groups: report.groups.into_iter().map(group_usage).collect(),
            service_total: report.total.map(group_usage),
        }))
    }

    async fn set_retention_policy(
        &self,
        request: Request<pb::SetRetentionPolicyRequest>,
    ) -> Result<Response<pb::SetRetentionPolicyResponse>, Status> {
        let policy = request.into_inner().policy.unwrap_or_default();
        let stored = self.service.set_policy(policy_from_pb(policy)?).await?;
        Ok(Response::new(pb::SetRetentionPolicyResponse {
            policy: Some(policy_to_pb(stored)),
        }))
    }

    async fn get_retention_policy(
        &self,
        request: Request<pb::GetRetentionPolicyRequest>,
    ) -> Result<Response<pb::GetRetentionPolicyResponse>, Status> {
        let (policy, inherited) = self
            .service
            .policy(&request.into_inner().project_id)
            .await?;
        Ok(Response::new(pb::GetRetentionPolicyResponse {
            policy: Some(policy_to_pb(policy)),
            inherited,
        }))
    }

    async fn list_retention_policies(
        &self,
        request: Request<pb::ListRetentionPoliciesRequest>,
    ) -> Result<Response<pb::ListRetentionPoliciesResponse>, Status> {
        let paged = self
            .service
            .list_policies(page(request.into_inner().page))
            .await?;
        Ok(Response::new(pb::ListRetentionPoliciesResponse {
            page: Some(page_response(&paged)),
            policies: paged.items.into_iter().map(policy_to_pb).collect(),
        }))
    }

    async fn delete_retention_policy(
        &self,
        request: Request<pb::DeleteRetentionPolicyRequest>,
    ) -> Result<Response<pb::DeleteRetentionPolicyResponse>, Status> {
        let deleted = self
            .service
            .delete_policy(&request.into_inner().project_id)
            .await?;
        Ok(Response::new(pb::DeleteRetentionPolicyResponse { deleted }))
    }

    async fn apply_retention(
        &self,
        request: Request<pb::ApplyRetentionRequest>,
    ) -> Result<Response<pb::ApplyRetentionResponse>, Status> {
        let req = request.into_inner();
        let (reports, urls) = self
            .service
            .apply_retention(
                req.projects
                    .into_iter()
                    .map(|g| Group {
                        id: g.group_id,
                        tasks: g.task_ids,
                    })
                    .collect(),
                req.dry_run,
                req.return_urls,
            )
            .await?;
        Ok(Response::new(pb::ApplyRetentionResponse {
            projects: reports
                .into_iter()
                .map(|r| pb::RetentionReport {
                    project_id: r.project_id,
                    inherited: r.inherited,
                    deleted: counts(&r.deleted),
                    downsampled_points_before: r.points_before,
                    downsampled_points_after: r.points_after,
                    bytes_freed: r.bytes_freed,
                    skipped_locked_tasks: r.skipped_locked,
                })
                .collect(),
            debug_sample_urls: urls,
            dry_run: req.dry_run,
        }))
    }
}
