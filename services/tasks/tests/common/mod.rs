//! Helpers shared by the integration tests: databases on both backends, a
//! controllable clock, task builders.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use tasklab_tasks::model::{TaskType, Timestamp, TypedValue, TypedValues};
use tasklab_tasks::service::{Clock, NewTask, TaskService};
use tasklab_tasks::{Migrator, SqlTaskStore};

/// Runs each `async fn name(url: &str)` of the parent module once on SQLite
/// (`sqlite::name`) and once on PostgreSQL (`postgres::name`, skipped out
/// loud without `TASKLAB_TEST_POSTGRES_URL`).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = tasklab_db::testing::TestDb::sqlite();
                    super::$name(&db.url).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = tasklab_db::testing::TestDb::postgres(stringify!($name)).await else {
                        return;
                    };
                    super::$name(&db.url).await;
                }
            )*
        }
    };
}

/// A clock tests move by hand.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Arc::new(ManualClock(Mutex::new(start)))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        // Every reading moves a microsecond on, so times are distinct.
        let mut now = self.0.lock().unwrap();
        *now += Duration::microseconds(1);
        *now
    }
}

/// A migrated store on `url`.
pub async fn store(url: &str) -> SqlTaskStore {
    let db = tasklab_db::connect_and_migrate::<Migrator>(url)
        .await
        .expect("migrate");
    SqlTaskStore::new(db)
}

/// A service on `url` with a manual clock.
pub async fn service(url: &str) -> (TaskService, Arc<ManualClock>) {
    let clock = ManualClock::new();
    let service = TaskService::new(Arc::new(store(url).await)).with_clock(clock.clone());
    (service, clock)
}

pub fn typed(value: &str) -> TypedValue {
    TypedValue {
        value: value.to_owned(),
        value_type: "str".to_owned(),
        description: String::new(),
    }
}

pub fn values(pairs: &[(&str, &str)]) -> TypedValues {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), typed(v)))
        .collect()
}

/// A task with a name, project and tags.
pub fn new_task(name: &str, project: &str, tags: &[&str]) -> NewTask {
    NewTask {
        name: name.to_owned(),
        project_id: project.to_owned(),
        task_type: Some(TaskType::Training),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..NewTask::default()
    }
}

pub fn now() -> Timestamp {
    Utc::now()
}
