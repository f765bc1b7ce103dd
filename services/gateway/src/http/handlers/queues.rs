//! `queues.*`: execution queues. Entries change only together with the
//! task's status (see `compose.rs`), so `queues.add_task` and
//! `queues.remove_task` are the enqueue and dequeue flows.

use serde::Deserialize;
use serde_json::{Value, json};
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::common::v1::PageRequest;
use tasklab_proto::queues::v1 as qpb;
use tasklab_proto::tasks::v1 as tpb;

use super::{Paging, collect_pages};
use crate::compose::id_mask;
use crate::http::Call;
use crate::http::args::{StrList, required};
use crate::http::convert::{entry_to_json, order_by, project_fields, queue_to_json, tag_filter};

/// The queue with its waiting entries.
async fn with_entries(call: &Call, q: &qpb::Queue) -> Result<Value, Error> {
    let mut value = queue_to_json(q);
    let reply = call!(
        call.gw.clients.queues,
        list_entries,
        call.user(),
        qpb::ListEntriesRequest {
            queue_id: q.id.clone(),
            page: Some(PageRequest {
                page_size: 1000,
                page_token: String::new(),
                include_total: false,
            }),
            include_leased: false,
        }
    )?;
    value["entries"] = Value::Array(reply.entries.iter().map(entry_to_json).collect());
    Ok(value)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GetAllArgs {
    id: StrList,
    name: Option<String>,
    tags: StrList,
    system_tags: StrList,
    search_hidden: bool,
    only_fields: Vec<String>,
    order_by: StrList,
    page: Option<i64>,
    page_size: Option<i64>,
}

/// `queues.get_all`: `name` is an unanchored regular expression.
pub(crate) async fn get_all(call: Call) -> Result<Value, Error> {
    let a: GetAllArgs = call.args()?;
    let mut system_tags = tag_filter(&a.system_tags.0);
    if !a.search_hidden {
        system_tags
            .get_or_insert_with(Default::default)
            .none_of
            .push("hidden".into());
    }
    let base = qpb::ListQueuesRequest {
        ids: a.id.0,
        name_pattern: a.name.unwrap_or_default(),
        tags: tag_filter(&a.tags.0),
        system_tags,
        page: None,
        order_by: order_by(&a.order_by.0, &str::to_owned),
        read_mask: None,
    };
    let user = call.user().to_owned();
    let gw = call.gw.clone();
    let queues = collect_pages(
        Paging {
            page: a.page,
            page_size: a.page_size,
        },
        |page| {
            let (gw, user) = (gw.clone(), user.clone());
            let mut req = base.clone();
            req.page = page;
            async move {
                let reply = call!(gw.clients.queues, list_queues, &user, req)?;
                Ok((reply.queues, reply.page))
            }
        },
    )
    .await?;
    let entries =
        a.only_fields.is_empty() || a.only_fields.iter().any(|f| f.starts_with("entries"));
    let mut out = Vec::with_capacity(queues.len());
    for q in &queues {
        let value = if entries {
            with_entries(&call, q).await?
        } else {
            queue_to_json(q)
        };
        out.push(project_fields(value, &a.only_fields));
    }
    Ok(json!({ "queues": out }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ByIdArgs {
    queue: Option<String>,
}

/// `queues.get_by_id`: 400/701 for an unknown id.
pub(crate) async fn get_by_id(call: Call) -> Result<Value, Error> {
    let a: ByIdArgs = call.args()?;
    let id = required(&a.queue, "queue")?.to_owned();
    let reply = call!(
        call.gw.clients.queues,
        get_queue,
        call.user(),
        qpb::GetQueueRequest {
            queue_id: id.clone(),
            read_mask: None,
        }
    )?;
    let queue = reply
        .queue
        .ok_or_else(|| Error::not_found(ErrorCode::QueueNotFound, "queue", &id))?;
    Ok(json!({ "queue": with_entries(&call, &queue).await? }))
}

/// `queues.get_default`: the queue tagged `default` (400/707 when none).
pub(crate) async fn get_default(call: Call) -> Result<Value, Error> {
    let reply = call!(
        call.gw.clients.queues,
        get_default_queue,
        call.user(),
        qpb::GetDefaultQueueRequest { read_mask: None }
    )?;
    let q = reply
        .queue
        .ok_or_else(|| Error::new(ErrorCode::NoDefaultQueue, "no default queue"))?;
    Ok(json!({ "id": q.id, "name": q.name }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CreateArgs {
    name: Option<String>,
    tags: Vec<String>,
    system_tags: Vec<String>,
}

/// `queues.create`.
pub(crate) async fn create(call: Call) -> Result<Value, Error> {
    let a: CreateArgs = call.args()?;
    let name = required(&a.name, "name")?.to_owned();
    let reply = call!(
        call.gw.clients.queues,
        create_queue,
        call.user(),
        qpb::CreateQueueRequest {
            name,
            tags: a.tags,
            system_tags: a.system_tags,
            metadata: Default::default(),
            if_not_exists: false,
        }
    )?;
    Ok(json!({ "id": reply.queue.map(|q| q.id).unwrap_or_default() }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeleteArgs {
    queue: Option<String>,
    force: bool,
}

/// `queues.delete`: with `force`, its tasks are dequeued.
pub(crate) async fn delete(call: Call) -> Result<Value, Error> {
    let a: DeleteArgs = call.args()?;
    let id = required(&a.queue, "queue")?.to_owned();
    let reply = call!(
        call.gw.clients.queues,
        delete_queue,
        call.user(),
        qpb::DeleteQueueRequest {
            queue_id: id,
            force: a.force,
        }
    )?;
    for task in reply
        .removed_task_ids
        .iter()
        .chain(&reply.cancelled_lease_task_ids)
    {
        let result = call!(
            call.gw.clients.tasks,
            dequeue_task,
            call.user(),
            tpb::DequeueTaskRequest {
                id: task.clone(),
                options: Some(tpb::StatusChangeOptions {
                    status_reason: "queue deleted".into(),
                    ..Default::default()
                }),
                new_status: 0,
                read_mask: Some(id_mask()),
            }
        );
        if let Err(e) = result {
            tracing::warn!(task_id = %task, error = %e.message(), "dequeue after queue delete failed");
        }
    }
    Ok(json!({ "deleted": 1 }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NextArgs {
    queue: Option<String>,
    get_task_info: bool,
}

/// How many stale entries one `get_next_task` skips before giving up.
const MAX_STALE_POPS: usize = 8;

/// `queues.get_next_task`: pops the next entry (leased until the task
/// starts); `{}` when the queue is empty. Entries of tasks that are no
/// longer queued are discarded on the way.
pub(crate) async fn get_next_task(call: Call) -> Result<Value, Error> {
    let a: NextArgs = call.args()?;
    let queue = required(&a.queue, "queue")?.to_owned();
    for _ in 0..MAX_STALE_POPS {
        let reply = call!(
            call.gw.clients.queues,
            pop_entry,
            call.user(),
            qpb::PopEntryRequest {
                worker_id: call.worker.clone(),
                queue_ids: vec![queue.clone()],
                order: qpb::PopOrder::Strict as i32,
                wait_timeout: None,
                lease_duration: None,
            }
        )?;
        let Some(entry) = reply.entry else {
            return Ok(json!({}));
        };
        let task = call!(
            call.gw.clients.tasks,
            get_task,
            call.user(),
            tpb::GetTaskRequest {
                id: entry.task_id.clone(),
                read_mask: Some(prost_types::FieldMask {
                    paths: vec!["id".into(), "status".into(), "user".into()],
                }),
            }
        );
        let task = match task {
            Ok(reply) => reply.task,
            Err(e) if e.code() == ErrorCode::TaskNotFound => None,
            Err(e) => return Err(e),
        };
        match task {
            Some(t) if t.status == tpb::TaskStatus::Queued as i32 => {
                tracing::info!(task_id = %entry.task_id, queue_id = %queue, worker = %call.worker, "task popped");
                let mut out = json!({ "entry": entry_to_json(&entry) });
                if a.get_task_info {
                    out["task_info"] =
                        json!({ "company": crate::auth::token::COMPANY_ID, "user": t.user });
                }
                return Ok(out);
            }
            _ => {
                tracing::info!(task_id = %entry.task_id, "discarding the entry of a task that is not queued");
                let release = call!(
                    call.gw.clients.queues,
                    release_lease,
                    call.user(),
                    qpb::ReleaseLeaseRequest {
                        target: Some(qpb::release_lease_request::Target::TaskId(
                            entry.task_id.clone()
                        )),
                        worker_id: String::new(),
                        disposition: qpb::ReleaseDisposition::Discard as i32,
                        reason: "task is not queued".into(),
                    }
                );
                if let Err(e) = release {
                    tracing::warn!(task_id = %entry.task_id, error = %e.message(), "discarding a stale entry failed");
                }
            }
        }
    }
    Ok(json!({}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TaskArgs {
    queue: Option<String>,
    task: Option<String>,
}

/// `queues.add_task`: the enqueue flow into this queue.
pub(crate) async fn add_task(call: Call) -> Result<Value, Error> {
    let a: TaskArgs = call.args()?;
    let queue = required(&a.queue, "queue")?.to_owned();
    let task = required(&a.task, "task")?.to_owned();
    call.gw
        .enqueue(
            call.user(),
            tpb::EnqueueTaskRequest {
                id: task,
                options: None,
                queue_id: queue,
                read_mask: Some(id_mask()),
            },
            None,
        )
        .await?;
    Ok(json!({ "added": 1 }))
}

/// `queues.remove_task`: the dequeue flow, when the task waits in this
/// queue.
pub(crate) async fn remove_task(call: Call) -> Result<Value, Error> {
    let a: TaskArgs = call.args()?;
    let queue = required(&a.queue, "queue")?.to_owned();
    let task_id = required(&a.task, "task")?.to_owned();
    let task = call
        .gw
        .get_task(
            call.user(),
            &task_id,
            Some(prost_types::FieldMask {
                paths: vec!["id".into(), "status".into(), "execution".into()],
            }),
        )
        .await?;
    let in_queue = task.status == tpb::TaskStatus::Queued as i32
        && task.execution.as_ref().is_some_and(|e| e.queue_id == queue);
    if !in_queue {
        let removed = call.gw.remove_entry(call.user(), &task_id, &queue).await;
        return Ok(json!({ "removed": u32::from(removed) }));
    }
    let (reply, _) = call
        .gw
        .dequeue(
            call.user(),
            tpb::DequeueTaskRequest {
                id: task_id,
                options: None,
                new_status: 0,
                read_mask: Some(id_mask()),
            },
        )
        .await?;
    Ok(json!({ "removed": reply.updated }))
}
