//! The task state machine: ClearML's transition table and the rules each
//! lifecycle operation adds to it, as pure functions.
//!
//! [`table_allows`] is the table itself (`tasks.proto`, "Statuses and
//! transitions"; ClearML's `apiserver/bll/task/utils.py`), with same-status
//! moves allowed. [`decide`] answers, for one operation on a task in a given
//! status, what the operation does: move to a status, leave the task as it
//! is, or refuse with the stable error. The service applies the field
//! effects; nothing here reads a clock or a database.
//!
//! Invariants:
//! * a locked task (`publishing`, `published`) is only ever left by
//!   [`StatusOp::Publish`] (from `publishing`), [`StatusOp::Reset`] and
//!   [`StatusOp::Delete`] with `force`;
//! * without `force`, every [`Decision::Move`] is a move the table allows;
//! * a refusal never depends on anything but the operation, the current
//!   status and `force`, so the same request is refused the same way.

use tasklab_error::{Error, ErrorCode};

use crate::model::TaskStatus::{self, *};

/// Whether ClearML's table allows moving from `from` to `to`. Staying in the
/// same status is allowed.
pub fn table_allows(from: TaskStatus, to: TaskStatus) -> bool {
    if from == to {
        return true;
    }
    let targets: &[TaskStatus] = match from {
        Created => &[Queued, InProgress],
        Queued => &[Created, InProgress, Stopped],
        InProgress => &[Stopped, Failed, Created, Completed],
        Stopped => &[
            Closed, Created, Failed, Queued, InProgress, Published, Publishing, Completed,
        ],
        Closed => &[Created, Failed, Published, Publishing, Stopped],
        Failed => &[Created, Stopped, Published, Queued],
        Completed => &[Published, InProgress, Created],
        Publishing => &[Published],
        Published => &[],
    };
    targets.contains(&to)
}

/// Whether a task in `status` is read-only.
pub fn is_locked(status: TaskStatus) -> bool {
    matches!(status, Publishing | Published)
}

/// A lifecycle operation, with the facts about the task it depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOp {
    /// StartTask: to `in_progress`.
    Start,
    /// StopTask: to `stopped`.
    Stop,
    /// FailTask: to `failed`.
    Fail,
    /// CompleteTask: to `completed`, then `published` with `publish`.
    Complete {
        /// Publish right after completing.
        publish: bool,
    },
    /// CloseTask: to `closed`.
    Close,
    /// PublishTask: to `published`.
    Publish,
    /// RequestStop: stop now, or ask the worker running the task.
    RequestStop {
        /// The task is run by a worker that reported recently and is not a
        /// development run.
        worker_alive: bool,
    },
    /// ResetTask: back to `created`.
    Reset,
    /// EnqueueTask: to `queued`.
    Enqueue {
        /// The task is already queued in the requested queue.
        same_queue: bool,
    },
    /// DequeueTask: back to the status before enqueueing.
    Dequeue {
        /// The requested status, if any.
        new_status: Option<TaskStatus>,
        /// The status recorded at enqueue, if any.
        enqueue_status: Option<TaskStatus>,
    },
    /// DeleteTask.
    Delete,
}

/// What an operation does to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write the task with this status (which may be the current one).
    Move(TaskStatus),
    /// Write nothing; the RPC answers `updated` 0.
    Unchanged,
    /// RequestStop on a task a live worker runs: it stays `in_progress` with
    /// the message `stopping`.
    AskWorker,
    /// Delete the task.
    Remove,
}

/// The `invalid_task_status` error for a move from `current` to `new`.
pub fn invalid_transition(current: TaskStatus, new: &str) -> Error {
    Error::new(
        ErrorCode::InvalidTaskStatus,
        format!("invalid status change from {current} to {new}"),
    )
    .with_field("current_status", current.as_str())
    .with_field("new_status", new)
}

/// The `task_published` error for a write to a locked task.
pub fn locked(current: TaskStatus) -> Error {
    Error::new(
        ErrorCode::TaskPublished,
        format!("task is {current} and therefore read-only"),
    )
    .with_field("current_status", current.as_str())
}

/// Decides what `op` does to a task in `current`; `force` skips the table
/// where the operation allows it.
pub fn decide(op: StatusOp, current: TaskStatus, force: bool) -> Result<Decision, Error> {
    let checked = |target: TaskStatus| -> Result<Decision, Error> {
        if is_locked(current) {
            return Err(locked(current));
        }
        if !force && !table_allows(current, target) {
            return Err(invalid_transition(current, target.as_str()));
        }
        Ok(Decision::Move(target))
    };
    match op {
        StatusOp::Start => checked(InProgress),
        StatusOp::Stop => checked(Stopped),
        StatusOp::Fail => checked(Failed),
        StatusOp::Close => checked(Closed),
        StatusOp::Complete { publish } => {
            checked(Completed)?;
            // completed -> published is always in the table.
            Ok(Decision::Move(if publish { Published } else { Completed }))
        }
        StatusOp::Publish => {
            if current == Published {
                return Ok(Decision::Unchanged);
            }
            if !force && !table_allows(current, Published) {
                return Err(invalid_transition(current, Published.as_str()));
            }
            Ok(Decision::Move(Published))
        }
        StatusOp::RequestStop { worker_alive } => {
            if is_locked(current) {
                return Err(locked(current));
            }
            if !force && !matches!(current, Queued | InProgress | Stopped) {
                return Err(invalid_transition(current, Stopped.as_str()));
            }
            Ok(match current {
                Stopped => Decision::Unchanged,
                InProgress if worker_alive => Decision::AskWorker,
                _ => Decision::Move(Stopped),
            })
        }
        StatusOp::Reset => {
            if is_locked(current) && !force {
                return Err(locked(current));
            }
            Ok(Decision::Move(Created))
        }
        StatusOp::Enqueue { same_queue } => {
            if current == Queued && same_queue {
                return Ok(Decision::Unchanged);
            }
            checked(Queued)
        }
        StatusOp::Dequeue {
            new_status,
            enqueue_status,
        } => {
            if let Some(s) = new_status
                && matches!(s, Queued | Publishing | Published)
            {
                return Err(Error::invalid(format!("cannot dequeue to status {s}"))
                    .with_field("new_status", s.as_str()));
            }
            Ok(match (current, new_status) {
                (Queued, Some(s)) => Decision::Move(s),
                (Queued, None) => Decision::Move(enqueue_status.unwrap_or(Created)),
                (InProgress, Some(s)) => Decision::Move(s),
                _ => Decision::Unchanged,
            })
        }
        StatusOp::Delete => {
            if is_locked(current) && !force {
                return Err(locked(current));
            }
            if current == InProgress && !force {
                return Err(invalid_transition(current, "deleted"));
            }
            Ok(Decision::Remove)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reference model here is written from the RPC documentation of
    //! `tasks.proto` (each RPC lists the statuses it starts from), not from
    //! the table above, so the two cross-check each other.

    use super::*;
    use proptest::prelude::*;

    /// Statuses each RPC may start from without `force`, as its
    /// documentation lists them.
    fn documented_sources(op: StatusOp) -> &'static [TaskStatus] {
        match op {
            StatusOp::Start => &[Created, Queued, Stopped, Completed, InProgress],
            StatusOp::Stop => &[Queued, InProgress, Closed, Failed, Stopped],
            StatusOp::Fail => &[InProgress, Stopped, Closed, Failed],
            StatusOp::Complete { .. } => &[InProgress, Stopped, Completed],
            StatusOp::Close => &[Stopped, Closed],
            StatusOp::Publish => &[Stopped, Closed, Failed, Completed, Publishing, Published],
            StatusOp::RequestStop { .. } => &[Queued, InProgress, Stopped],
            StatusOp::Reset => &[
                Created, Queued, InProgress, Stopped, Failed, Completed, Closed,
            ],
            StatusOp::Enqueue { .. } => &[Created, Stopped, Failed, Queued],
            StatusOp::Dequeue { .. } => TaskStatus::ALL,
            StatusOp::Delete => &[Created, Queued, Stopped, Failed, Completed, Closed],
        }
    }

    /// Operations that never lift the published lock, even with `force`.
    fn refuses_locked_even_forced(op: StatusOp) -> bool {
        matches!(
            op,
            StatusOp::Start
                | StatusOp::Stop
                | StatusOp::Fail
                | StatusOp::Complete { .. }
                | StatusOp::Close
                | StatusOp::RequestStop { .. }
                | StatusOp::Enqueue { .. }
        )
    }

    /// The model's prediction: the status after `op`, or the error code.
    fn model(
        op: StatusOp,
        current: TaskStatus,
        force: bool,
    ) -> Result<Option<TaskStatus>, ErrorCode> {
        let locked = matches!(current, Publishing | Published);
        if let StatusOp::Dequeue {
            new_status,
            enqueue_status,
        } = op
        {
            if matches!(new_status, Some(Queued | Publishing | Published)) {
                return Err(ErrorCode::InvalidArgument);
            }
            return Ok(match current {
                Queued => Some(new_status.or(enqueue_status).unwrap_or(Created)),
                InProgress => new_status.or(Some(InProgress)),
                other => Some(other),
            });
        }
        if op == StatusOp::Publish && current == Published {
            return Ok(Some(Published));
        }
        if locked && refuses_locked_even_forced(op) {
            return Err(ErrorCode::TaskPublished);
        }
        if locked && matches!(op, StatusOp::Reset | StatusOp::Delete) && !force {
            return Err(ErrorCode::TaskPublished);
        }
        if !force && !documented_sources(op).contains(&current) {
            return Err(ErrorCode::InvalidTaskStatus);
        }
        Ok(match op {
            StatusOp::Start => Some(InProgress),
            StatusOp::Stop => Some(Stopped),
            StatusOp::Fail => Some(Failed),
            StatusOp::Complete { publish } => Some(if publish { Published } else { Completed }),
            StatusOp::Close => Some(Closed),
            StatusOp::Publish => Some(Published),
            StatusOp::RequestStop { worker_alive } => {
                Some(if current == InProgress && worker_alive {
                    InProgress
                } else {
                    Stopped
                })
            }
            StatusOp::Reset => Some(Created),
            StatusOp::Enqueue { .. } => Some(Queued),
            StatusOp::Delete => None,
            StatusOp::Dequeue { .. } => unreachable!("handled above"),
        })
    }

    fn status() -> impl Strategy<Value = TaskStatus> {
        prop::sample::select(TaskStatus::ALL)
    }

    fn op() -> impl Strategy<Value = StatusOp> {
        prop_oneof![
            Just(StatusOp::Start),
            Just(StatusOp::Stop),
            Just(StatusOp::Fail),
            any::<bool>().prop_map(|publish| StatusOp::Complete { publish }),
            Just(StatusOp::Close),
            Just(StatusOp::Publish),
            any::<bool>().prop_map(|worker_alive| StatusOp::RequestStop { worker_alive }),
            Just(StatusOp::Reset),
            any::<bool>().prop_map(|same_queue| StatusOp::Enqueue { same_queue }),
            (prop::option::of(status()), prop::option::of(status())).prop_map(
                |(new_status, enqueue_status)| StatusOp::Dequeue {
                    new_status,
                    enqueue_status
                }
            ),
            Just(StatusOp::Delete),
        ]
    }

    /// Applies a decision to a status the way the service does.
    fn apply(current: TaskStatus, decision: Decision) -> Option<TaskStatus> {
        match decision {
            Decision::Move(s) => Some(s),
            Decision::Unchanged | Decision::AskWorker => Some(current),
            Decision::Remove => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random sequences of operations from a new draft: every outcome is
        /// the model's, a refusal leaves the status as it was, and a task that
        /// was deleted starts over as a new draft.
        #[test]
        fn random_sequences_follow_the_model(
            steps in prop::collection::vec((op(), any::<bool>()), 1..40)
        ) {
            let mut current = Created;
            for (op, force) in steps {
                let expected = model(op, current, force);
                match decide(op, current, force) {
                    Ok(decision) => {
                        let after = apply(current, decision);
                        prop_assert_eq!(Ok(after), expected, "{:?} from {} force={}", op, current, force);
                        if !force && let Decision::Move(to) = decision {
                            prop_assert!(
                                table_allows(current, to)
                                    || matches!(op, StatusOp::Reset | StatusOp::Dequeue { .. })
                                    // completed on the way: two moves of the table
                                    || (op == StatusOp::Complete { publish: true }
                                        && table_allows(current, Completed)),
                                "unforced move {} -> {} outside the table", current, to
                            );
                        }
                        current = after.unwrap_or(Created);
                    }
                    Err(err) => {
                        prop_assert_eq!(Err(err.code()), expected, "{:?} from {} force={}", op, current, force);
                        if err.code() == ErrorCode::InvalidTaskStatus {
                            prop_assert_eq!(err.fields()["current_status"].as_str(), current.as_str());
                        }
                        // A refusal changes nothing: `current` stays.
                    }
                }
            }
        }

        /// Deciding is a pure function of its inputs.
        #[test]
        fn decide_is_deterministic(op in op(), current in status(), force in any::<bool>()) {
            let a = decide(op, current, force).map_err(|e| e.code());
            let b = decide(op, current, force).map_err(|e| e.code());
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn documented_sources_agree_with_the_table() {
        // Every RPC whose documentation lists its sources must list exactly
        // the statuses the table lets into its target (plus the same status).
        let cases = [
            (StatusOp::Start, InProgress),
            (StatusOp::Stop, Stopped),
            (StatusOp::Fail, Failed),
            (StatusOp::Complete { publish: false }, Completed),
            (StatusOp::Close, Closed),
            (StatusOp::Publish, Published),
            (StatusOp::Enqueue { same_queue: false }, Queued),
        ];
        for (op, target) in cases {
            let from_table: Vec<TaskStatus> = TaskStatus::ALL
                .iter()
                .copied()
                .filter(|s| {
                    table_allows(*s, target) && !(is_locked(*s) && refuses_locked_even_forced(op))
                })
                .collect();
            let mut documented = documented_sources(op).to_vec();
            documented.sort();
            let mut from_table = from_table;
            from_table.sort();
            assert_eq!(documented, from_table, "{op:?}");
        }
    }

    #[test]
    fn published_is_a_dead_end_without_force() {
        for to in TaskStatus::ALL {
            assert_eq!(table_allows(Published, *to), *to == Published);
        }
        let err = decide(StatusOp::Reset, Published, false).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TaskPublished);
        assert_eq!(
            decide(StatusOp::Reset, Published, true).unwrap(),
            Decision::Move(Created)
        );
        let err = decide(StatusOp::Start, Published, true).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TaskPublished);
    }

    #[test]
    fn same_status_moves_succeed() {
        assert_eq!(
            decide(StatusOp::Start, InProgress, false).unwrap(),
            Decision::Move(InProgress)
        );
        assert_eq!(
            decide(StatusOp::Stop, Stopped, false).unwrap(),
            Decision::Move(Stopped)
        );
        assert_eq!(
            decide(StatusOp::Publish, Published, false).unwrap(),
            Decision::Unchanged
        );
        assert_eq!(
            decide(StatusOp::Enqueue { same_queue: true }, Queued, false).unwrap(),
            Decision::Unchanged
        );
    }

    #[test]
    fn invalid_transition_names_both_statuses() {
        let err = decide(StatusOp::Close, Created, false).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidTaskStatus);
        assert_eq!(err.fields()["current_status"], "created");
        assert_eq!(err.fields()["new_status"], "closed");
        assert_eq!(
            decide(StatusOp::Close, Created, true).unwrap(),
            Decision::Move(Closed)
        );
    }
}
