//! The errors of this service, built in one place.
//!
//! `tasklab-error`'s closed `ErrorCode` set lacks several codes the contract
//! names (`queue_name_taken`, `entry_leased`, `lease_not_owned`, ...). Each
//! such error travels with the closest existing code (same gRPC code where
//! one exists) and carries the contract's name in the `reason` field of its
//! `ErrorDetail`, which is stable and what clients should match on.

use tasklab_error::{Error, ErrorCode};

fn with_reason(code: ErrorCode, reason: &str, message: String) -> Error {
    Error::new(code, message).with_field("reason", reason)
}

pub(crate) fn db(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Error {
    Error::unavailable("queues database", err)
}

pub(crate) fn redis(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Error {
    Error::unavailable("redis", err)
}

pub(crate) fn queue_not_found(id: &str) -> Error {
    Error::not_found(ErrorCode::QueueNotFound, "queue", id).with_field("reason", "queue_not_found")
}

pub(crate) fn queue_name_taken(name: &str) -> Error {
    with_reason(
        ErrorCode::AlreadyExists,
        "queue_name_taken",
        format!("a queue named {name:?} already exists"),
    )
    .with_field("name", name)
}

pub(crate) fn queue_not_empty(id: &str, waiting: u32, leased: u32) -> Error {
    with_reason(
        ErrorCode::QueueNotEmpty,
        "queue_not_empty",
        format!("queue {id} has {waiting} waiting and {leased} leased entries"),
    )
}

pub(crate) fn queue_full(id: &str) -> Error {
    with_reason(
        ErrorCode::TooLarge,
        "queue_full",
        format!("queue {id} is full"),
    )
}

pub(crate) fn no_default_queue() -> Error {
    with_reason(
        ErrorCode::NoDefaultQueue,
        "no_default_queue",
        "no queue carries the default system tag".to_owned(),
    )
}

pub(crate) fn task_already_queued(task: &str, queue: &str) -> Error {
    with_reason(
        ErrorCode::TaskAlreadyQueued,
        "task_already_queued",
        format!("task {task} is already queued in {queue}"),
    )
    .with_field("queue_id", queue)
}

pub(crate) fn task_not_queued(task: &str) -> Error {
    with_reason(
        ErrorCode::TaskNotQueued,
        "task_not_queued",
        format!("task {task} has no waiting entry"),
    )
}

pub(crate) fn entry_leased(task: &str) -> Error {
    with_reason(
        ErrorCode::TaskNotQueued,
        "entry_leased",
        format!("the entry of task {task} is leased"),
    )
}

pub(crate) fn lease_not_found(id: &str) -> Error {
    with_reason(
        ErrorCode::LeaseNotFound,
        "lease_not_found",
        format!("no open lease: {id}"),
    )
}

pub(crate) fn lease_not_owned(id: &str) -> Error {
    with_reason(
        ErrorCode::LeaseNotFound,
        "lease_not_owned",
        format!("lease {id} belongs to another worker"),
    )
}

pub(crate) fn lease_expired(id: &str) -> Error {
    with_reason(
        ErrorCode::LeaseNotFound,
        "lease_expired",
        format!("lease {id} expired before the renewal"),
    )
}

pub(crate) fn worker_not_found(id: &str) -> Error {
    Error::not_found(ErrorCode::WorkerNotFound, "worker", id)
        .with_field("reason", "worker_not_found")
}

pub(crate) fn worker_changed(id: &str) -> Error {
    with_reason(
        ErrorCode::TaskStatusChanged,
        "worker_changed",
        format!("worker {id} was seen again"),
    )
}

pub(crate) fn fence_stale() -> Error {
    with_reason(
        ErrorCode::TaskStatusChanged,
        "reconcile_fence_stale",
        "the fence is stale: start a new reconciliation".to_owned(),
    )
}

pub(crate) fn invalid_fence() -> Error {
    with_reason(
        ErrorCode::InvalidArgument,
        "invalid_fence",
        "the fence was not issued by this service".to_owned(),
    )
    .with_field("fields", "fence")
}

pub(crate) fn batch_too_large(n: usize, max: usize) -> Error {
    with_reason(
        ErrorCode::TooLarge,
        "batch_too_large",
        format!("{n} items exceed the limit of {max}"),
    )
}

pub(crate) fn invalid_name(message: &str) -> Error {
    with_reason(
        ErrorCode::InvalidArgument,
        "invalid_name",
        message.to_owned(),
    )
    .with_field("fields", "name")
}

pub(crate) fn invalid_regex(err: &regex::Error) -> Error {
    with_reason(
        ErrorCode::InvalidRegex,
        "invalid_regex",
        format!("invalid name pattern: {err}"),
    )
}

pub(crate) fn invalid(field: &str, message: &str) -> Error {
    Error::invalid(message.to_owned())
        .with_field("fields", field)
        .with_field("reason", "invalid_argument")
}
