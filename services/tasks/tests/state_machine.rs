//! The state machine through the real service and store: random sequences
//! of lifecycle operations, each checked against the transition table
//! ([`state::decide`], itself checked against the documented RPC rules by
//! the unit property test in `src/state.rs`). An allowed move stores the new
//! status; a refused one returns the table's error and leaves the stored
//! task exactly as it was.

mod common;

use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tasklab_tasks::model::{DEVELOPMENT, Sections, Task, TaskStatus};
use tasklab_tasks::service::{StatusChange, TaskService};
use tasklab_tasks::state::{self, Decision, StatusOp};

use common::*;

#[derive(Debug, Clone)]
enum Op {
    Start { worker: bool },
    Stop,
    Fail,
    Complete { publish: bool },
    Close,
    Publish,
    RequestStop,
    Reset,
    Enqueue { queue: u8 },
    Dequeue { new_status: Option<TaskStatus> },
    Delete,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<bool>().prop_map(|worker| Op::Start { worker }),
        Just(Op::Stop),
        Just(Op::Fail),
        any::<bool>().prop_map(|publish| Op::Complete { publish }),
        Just(Op::Close),
        Just(Op::Publish),
        Just(Op::RequestStop),
        Just(Op::Reset),
        (0u8..2).prop_map(|queue| Op::Enqueue { queue }),
        prop::option::of(prop::sample::select(TaskStatus::ALL))
            .prop_map(|new_status| Op::Dequeue { new_status }),
        Just(Op::Delete),
    ]
}

/// The table's answer for `op` on the stored `task`.
fn oracle(op: &Op, task: &Task, force: bool) -> Result<Decision, tasklab_error::Error> {
    let status_op = match op {
        Op::Start { .. } => StatusOp::Start,
        Op::Stop => StatusOp::Stop,
        Op::Fail => StatusOp::Fail,
        Op::Complete { publish } => StatusOp::Complete { publish: *publish },
        Op::Close => StatusOp::Close,
        Op::Publish => StatusOp::Publish,
        // The manual clock barely moves, so a recorded worker is alive.
        Op::RequestStop => StatusOp::RequestStop {
            worker_alive: task.status == TaskStatus::InProgress
                && !task.has_system_tag(DEVELOPMENT)
                && !task.last_worker.is_empty(),
        },
        Op::Reset => StatusOp::Reset,
        Op::Enqueue { queue } => StatusOp::Enqueue {
            same_queue: task.status == TaskStatus::Queued
                && task.execution.queue_id == format!("q{queue}"),
        },
        // Dequeue ignores force.
        Op::Dequeue { new_status } => {
            return state::decide(
                StatusOp::Dequeue {
                    new_status: *new_status,
                    enqueue_status: task.enqueue_status,
                },
                task.status,
                true,
            );
        }
        Op::Delete => StatusOp::Delete,
    };
    state::decide(status_op, task.status, force)
}

async fn run(
    svc: &TaskService,
    id: &str,
    op: &Op,
    force: bool,
) -> Result<(), tasklab_error::Error> {
    let opts = StatusChange {
        force,
        ..StatusChange::default()
    };
    match op {
        Op::Start { worker } => svc
            .start("u", id, &opts, if *worker { "host:1" } else { "" })
            .await
            .map(drop),
        Op::Stop => svc.stop("u", id, &opts).await.map(drop),
        Op::Fail => svc.fail("u", id, &opts).await.map(drop),
        Op::Complete { publish } => svc.complete("u", id, &opts, *publish).await.map(drop),
        Op::Close => svc.close("u", id, &opts).await.map(drop),
        Op::Publish => svc.publish("u", id, &opts).await.map(drop),
        Op::RequestStop => svc.request_stop("u", id, &opts).await.map(drop),
        Op::Reset => svc.reset("u", id, &opts, false).await.map(drop),
        Op::Enqueue { queue } => svc
            .enqueue("u", id, &opts, &format!("q{queue}"))
            .await
            .map(drop),
        Op::Dequeue { new_status } => svc.dequeue("u", id, &opts, *new_status).await.map(drop),
        Op::Delete => svc.delete(id, force).await.map(drop),
    }
}

async fn check_sequence(svc: &TaskService, steps: &[(Op, bool)]) -> Result<(), TestCaseError> {
    let mut id = svc
        .create("u", new_task("machine", "p", &[]))
        .await
        .unwrap()
        .id;
    for (op, force) in steps {
        let before = svc.get(&id, Sections::ALL).await.unwrap();
        let expected = oracle(op, &before, *force);
        let outcome = run(svc, &id, op, *force).await;
        match (expected, outcome) {
            (Ok(Decision::Remove), Ok(())) => {
                let gone = svc.get(&id, Sections::ALL).await;
                prop_assert!(gone.is_err(), "{:?} left the task", op);
                id = svc
                    .create("u", new_task("machine", "p", &[]))
                    .await
                    .unwrap()
                    .id;
            }
            (Ok(decision), Ok(())) => {
                let after = svc.get(&id, Sections::ALL).await.unwrap();
                let status = match decision {
                    Decision::Move(s) => s,
                    _ => before.status,
                };
                prop_assert_eq!(
                    after.status,
                    status,
                    "{:?} force={} from {}",
                    op,
                    force,
                    before.status
                );
                if decision == Decision::Unchanged {
                    prop_assert_eq!(&after, &before, "an unchanged decision writes nothing");
                } else {
                    prop_assert_eq!(after.revision, before.revision + 1);
                }
            }
            (Err(want), Err(got)) => {
                prop_assert_eq!(
                    got.code(),
                    want.code(),
                    "{:?} force={} from {}",
                    op,
                    force,
                    before.status
                );
                let after = svc.get(&id, Sections::ALL).await.unwrap();
                prop_assert_eq!(&after, &before, "a refused {:?} changed the task", op);
            }
            (want, got) => {
                return Err(TestCaseError::fail(format!(
                    "{op:?} force={force} from {}: table says {:?}, service did {:?}",
                    before.status,
                    want.map_err(|e| e.code()),
                    got.map_err(|e| e.code())
                )));
            }
        }
    }
    Ok(())
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
});

static SQLITE: LazyLock<(tasklab_db::testing::TestDb, TaskService)> = LazyLock::new(|| {
    let db = tasklab_db::testing::TestDb::sqlite();
    let (svc, _) = RUNTIME.block_on(service(&db.url));
    (db, svc)
});

static POSTGRES: LazyLock<Option<(tasklab_db::testing::TestDb, TaskService)>> =
    LazyLock::new(|| {
        RUNTIME.block_on(async {
            let db = tasklab_db::testing::TestDb::postgres("state_machine_on_postgres").await?;
            let (svc, _) = service(&db.url).await;
            Some((db, svc))
        })
    });

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sqlite_random_sequences_follow_the_table(steps in prop::collection::vec((op(), any::<bool>()), 1..30)) {
        RUNTIME.block_on(check_sequence(&SQLITE.1, &steps))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn postgres_random_sequences_follow_the_table(steps in prop::collection::vec((op(), any::<bool>()), 1..30)) {
        if let Some((_, svc)) = POSTGRES.as_ref() {
            RUNTIME.block_on(check_sequence(svc, &steps))?;
        }
    }
}
