//! `workers.*`: the registry of agents and their heartbeats.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tasklab_error::Error;
use tasklab_proto::queues::v1 as qpb;
use tasklab_proto::tasks::v1 as tpb;

use crate::compose::tolerate;
use crate::http::Call;
use crate::http::args::{StrList, required};
use crate::http::convert::{from_millis, iso, millis};

fn duration(secs: f64) -> Option<prost_types::Duration> {
    (secs > 0.0).then_some(prost_types::Duration {
        seconds: secs as i64,
        nanos: 0,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RegisterArgs {
    worker: Option<String>,
    timeout: Option<f64>,
    queues: StrList,
    tags: StrList,
}

/// `workers.register`.
pub(crate) async fn register(call: Call) -> Result<Value, Error> {
    let a: RegisterArgs = call.args()?;
    let worker = required(&a.worker, "worker")?.to_owned();
    call!(
        call.gw.clients.workers,
        register_worker,
        call.user(),
        qpb::RegisterWorkerRequest {
            worker_id: worker.clone(),
            queue_ids: a.queues.0,
            tags: a.tags.0,
            timeout: a.timeout.and_then(duration),
            user_id: call.user().to_owned(),
            ip: call.client_ip.clone(),
        }
    )?;
    tracing::info!(worker = %worker, "worker registered");
    Ok(json!({}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UnregisterArgs {
    worker: Option<String>,
}

/// `workers.unregister`.
pub(crate) async fn unregister(call: Call) -> Result<Value, Error> {
    let a: UnregisterArgs = call.args()?;
    let worker = required(&a.worker, "worker")?.to_owned();
    call!(
        call.gw.clients.workers,
        unregister_worker,
        call.user(),
        qpb::UnregisterWorkerRequest {
            worker_id: worker.clone(),
            if_last_seen: None,
            reason: "unregistered by the worker".into(),
        }
    )?;
    tracing::info!(worker = %worker, "worker unregistered");
    Ok(json!({}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatusArgs {
    worker: Option<String>,
    task: Option<String>,
    queue: Option<String>,
    queues: Option<StrList>,
    tags: Option<StrList>,
    timestamp: Option<f64>,
    machine_stats: Option<Map<String, Value>>,
    timeout: Option<f64>,
}

fn numbers(map: &Map<String, Value>, key: &str) -> Vec<f64> {
    match map.get(key) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_f64).collect(),
        Some(v) => v.as_f64().into_iter().collect(),
        None => vec![],
    }
}

fn first(map: &Map<String, Value>, key: &str) -> Option<f64> {
    let values = numbers(map, key);
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

/// clearml-agent's `machine_stats` to the contract.
fn machine_stats(map: &Map<String, Value>) -> qpb::MachineStats {
    let usage = numbers(map, "gpu_usage");
    let used = numbers(map, "gpu_memory_used");
    let free = numbers(map, "gpu_memory_free");
    let temp = numbers(map, "gpu_temperature");
    let count = usage.len().max(used.len()).max(free.len()).max(temp.len());
    qpb::MachineStats {
        cpu_usage_percent: numbers(map, "cpu_usage"),
        cpu_temperature_celsius: numbers(map, "cpu_temperature"),
        memory_used_mib: first(map, "memory_used"),
        memory_free_mib: first(map, "memory_free"),
        gpus: (0..count)
            .map(|i| qpb::GpuStats {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                usage_percent: usage.get(i).copied(),
                memory_used_mib: used.get(i).copied(),
                memory_free_mib: free.get(i).copied(),
                temperature_celsius: temp.get(i).copied(),
                fraction: None,
            })
            .collect(),
        disk_free_home_percent: first(map, "disk_free_home"),
        disk_free_temp_percent: first(map, "disk_free_temp"),
        disk_read_mib_per_sec: first(map, "disk_read"),
        disk_write_mib_per_sec: first(map, "disk_write"),
        network_rx_mib_per_sec: first(map, "network_rx"),
        network_tx_mib_per_sec: first(map, "network_tx"),
    }
}

/// `workers.status_report`: the agent's heartbeat (registers unknown
/// workers); a running task is pinged with the worker's id.
pub(crate) async fn status_report(call: Call) -> Result<Value, Error> {
    let a: StatusArgs = call.args()?;
    let worker = required(&a.worker, "worker")?.to_owned();
    let task = a.task.clone().unwrap_or_default();
    call!(
        call.gw.clients.workers,
        heartbeat,
        call.user(),
        qpb::HeartbeatRequest {
            worker_id: worker.clone(),
            reported_at: a.timestamp.map(|t| from_millis(t as i64)),
            machine_stats: a.machine_stats.as_ref().map(machine_stats),
            current_task_id: task.clone(),
            current_queue_id: a.queue.unwrap_or_default(),
            queue_ids: a.queues.map(|q| qpb::StringList { values: q.0 }),
            tags: a.tags.map(|t| qpb::StringList { values: t.0 }),
            auto_register: true,
            timeout: a.timeout.and_then(duration),
            user_id: call.user().to_owned(),
            ip: call.client_ip.clone(),
        }
    )?;
    if !task.is_empty() {
        let ping = call!(
            call.gw.clients.tasks,
            ping_task,
            call.user(),
            tpb::PingTaskRequest {
                id: task.clone(),
                worker: worker.clone(),
            }
        );
        if let Err(e) = tolerate(ping, "ping task") {
            tracing::debug!(task_id = %task, error = %e.message(), "status report names an unknown task");
        }
    }
    Ok(json!({}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GetAllArgs {
    last_seen: Option<f64>,
}

fn worker_to_json(w: &qpb::Worker) -> Value {
    let task = if w.current_task_id.is_empty() {
        Value::Null
    } else {
        json!({ "id": w.current_task_id, "name": "", "running_time": null, "last_iteration": null })
    };
    json!({
        "id": w.id,
        "user": { "id": w.user_id, "name": w.user_id },
        "company": { "id": crate::auth::token::COMPANY_ID, "name": crate::auth::token::COMPANY_NAME },
        "ip": w.ip,
        "register_time": iso(w.registered.as_ref()),
        "last_activity_time": iso(w.last_seen.as_ref()),
        "last_report_time": iso(w.last_seen.as_ref()),
        "task": task,
        "queue": if w.current_queue_id.is_empty() { Value::Null } else { json!({ "id": w.current_queue_id }) },
        "queues": w.queue_ids.iter().map(|q| json!({ "id": q })).collect::<Vec<_>>(),
        "tags": w.tags,
        "machine_stats_time": millis(w.machine_stats_time.as_ref()),
    })
}

/// `workers.get_all`: active workers (seen within `last_seen` seconds).
pub(crate) async fn get_all(call: Call) -> Result<Value, Error> {
    let a: GetAllArgs = call.args()?;
    let reply = call!(
        call.gw.clients.workers,
        list_workers,
        call.user(),
        qpb::ListWorkersRequest {
            last_seen_within: a.last_seen.and_then(duration),
            page: Some(tasklab_proto::common::v1::PageRequest {
                page_size: 1000,
                page_token: String::new(),
                include_total: false,
            }),
            ..Default::default()
        }
    )?;
    Ok(json!({ "workers": reply.workers.iter().map(worker_to_json).collect::<Vec<_>>() }))
}
