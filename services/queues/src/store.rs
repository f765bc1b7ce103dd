//! Queue metadata and the worker registry in the service's SQL database.
//!
//! Both live in SQL whatever the queue backend: they change rarely, must
//! survive a Redis restart, and are shared by every replica through the
//! database.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, Set, Statement,
};
use tasklab_error::Result;

use crate::backend::{from_millis, millis};
use crate::entity::{meta, queue, worker};
use crate::errors;

/// A queue's stored metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRow {
    /// Id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// User tags.
    pub tags: Vec<String>,
    /// System tags.
    pub system_tags: Vec<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Creation.
    pub created: DateTime<Utc>,
    /// Last change of the metadata.
    pub last_update: DateTime<Utc>,
}

/// A stored worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// Id.
    pub id: String,
    /// User.
    pub user_id: String,
    /// Address.
    pub ip: String,
    /// Queues listened to.
    pub queue_ids: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// First registration.
    pub registered: DateTime<Utc>,
    /// Last register or heartbeat.
    pub last_seen: DateTime<Utc>,
    /// Expiry silence.
    pub timeout: std::time::Duration,
    /// Current task.
    pub current_task_id: String,
    /// Queue of the current task.
    pub current_queue_id: String,
    /// Since when the current task is reported.
    pub current_task_since: Option<DateTime<Utc>>,
    /// Last machine statistics, as JSON.
    pub machine_stats: Option<serde_json::Value>,
    /// When they were reported.
    pub machine_stats_time: Option<DateTime<Utc>>,
}

/// The SQL store of queue metadata and workers.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn queue_row(m: queue::Model) -> QueueRow {
    QueueRow {
        id: m.id,
        name: m.name,
        tags: json_list(&m.tags),
        system_tags: json_list(&m.system_tags),
        metadata: serde_json::from_str(&m.metadata).unwrap_or_default(),
        created: from_millis(m.created_ms),
        last_update: from_millis(m.last_update_ms),
    }
}

fn worker_row(m: worker::Model) -> WorkerRow {
    let ms = |v: i64| (v > 0).then(|| from_millis(v));
    WorkerRow {
        id: m.id,
        user_id: m.user_id,
        ip: m.ip,
        queue_ids: json_list(&m.queue_ids),
        tags: json_list(&m.tags),
        registered: from_millis(m.registered_ms),
        last_seen: from_millis(m.last_seen_ms),
        timeout: std::time::Duration::from_millis(u64::try_from(m.timeout_ms).unwrap_or(0)),
        current_task_id: m.current_task_id,
        current_queue_id: m.current_queue_id,
        current_task_since: ms(m.current_task_since_ms),
        machine_stats: serde_json::from_str(&m.machine_stats).ok(),
        machine_stats_time: ms(m.machine_stats_ms),
    }
}

fn is_unique_violation(err: &sea_orm::DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

impl Store {
    /// A store on a migrated connection.
    pub fn new(db: DatabaseConnection) -> Store {
        Store { db }
    }

    /// Inserts a queue; `queue_name_taken` when the name is used.
    pub async fn insert_queue(&self, row: &QueueRow) -> Result<()> {
        let am = queue::ActiveModel {
            id: Set(row.id.clone()),
            name: Set(row.name.clone()),
            tags: Set(to_json(&row.tags)),
            system_tags: Set(to_json(&row.system_tags)),
            metadata: Set(to_json(&row.metadata)),
            created_ms: Set(millis(row.created)),
            last_update_ms: Set(millis(row.last_update)),
        };
        match queue::Entity::insert(am)
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => Err(errors::queue_name_taken(&row.name)),
            Err(err) => Err(errors::db(err)),
        }
    }

    /// Replaces a queue's mutable fields.
    pub async fn update_queue(&self, row: &QueueRow) -> Result<()> {
        let am = queue::ActiveModel {
            id: Set(row.id.clone()),
            name: Set(row.name.clone()),
            tags: Set(to_json(&row.tags)),
            system_tags: Set(to_json(&row.system_tags)),
            metadata: Set(to_json(&row.metadata)),
            created_ms: Set(millis(row.created)),
            last_update_ms: Set(millis(row.last_update)),
        };
        match am.update(&self.db).await {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => Err(errors::queue_name_taken(&row.name)),
            Err(sea_orm::DbErr::RecordNotUpdated) => Err(errors::queue_not_found(&row.id)),
            Err(err) => Err(errors::db(err)),
        }
    }

    /// One queue by id.
    pub async fn queue(&self, id: &str) -> Result<Option<QueueRow>> {
        Ok(queue::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(errors::db)?
            .map(queue_row))
    }

    /// One queue by exact name.
    pub async fn queue_by_name(&self, name: &str) -> Result<Option<QueueRow>> {
        Ok(queue::Entity::find()
            .filter(queue::Column::Name.eq(name))
            .one(&self.db)
            .await
            .map_err(errors::db)?
            .map(queue_row))
    }

    /// Every queue, oldest first.
    pub async fn queues(&self) -> Result<Vec<QueueRow>> {
        Ok(queue::Entity::find()
            .order_by_asc(queue::Column::CreatedMs)
            .order_by_asc(queue::Column::Id)
            .all(&self.db)
            .await
            .map_err(errors::db)?
            .into_iter()
            .map(queue_row)
            .collect())
    }

    /// Deletes a queue; false when it did not exist.
    pub async fn delete_queue(&self, id: &str) -> Result<bool> {
        let res = queue::Entity::delete_by_id(id.to_owned())
            .exec(&self.db)
            .await
            .map_err(errors::db)?;
        Ok(res.rows_affected > 0)
    }

    /// Records that a queue's entries changed at `now` (kept in `queue_meta`
    /// under `q:<id>`, only ever moved forward).
    pub async fn touch_queue(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        let am = meta::ActiveModel {
            key: Set(format!("q:{id}")),
            ival: Set(millis(now)),
            sval: Set(String::new()),
        };
        meta::Entity::insert(am)
            .on_conflict(
                OnConflict::column(meta::Column::Key)
                    .update_column(meta::Column::Ival)
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await
            .map_err(errors::db)?;
        Ok(())
    }

    /// The last entry change of every touched queue.
    pub async fn queue_touches(&self) -> Result<BTreeMap<String, DateTime<Utc>>> {
        let rows = meta::Entity::find()
            .filter(meta::Column::Key.starts_with("q:"))
            .all(&self.db)
            .await
            .map_err(errors::db)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.key[2..].to_owned(), from_millis(r.ival)))
            .collect())
    }

    /// Inserts or replaces a worker.
    pub async fn put_worker(&self, w: &WorkerRow) -> Result<()> {
        let opt = |t: Option<DateTime<Utc>>| t.map_or(0, millis);
        let am = worker::ActiveModel {
            id: Set(w.id.clone()),
            user_id: Set(w.user_id.clone()),
            ip: Set(w.ip.clone()),
            queue_ids: Set(to_json(&w.queue_ids)),
            tags: Set(to_json(&w.tags)),
            registered_ms: Set(millis(w.registered)),
            last_seen_ms: Set(millis(w.last_seen)),
            timeout_ms: Set(i64::try_from(w.timeout.as_millis()).unwrap_or(i64::MAX)),
            current_task_id: Set(w.current_task_id.clone()),
            current_queue_id: Set(w.current_queue_id.clone()),
            current_task_since_ms: Set(opt(w.current_task_since)),
            machine_stats: Set(w.machine_stats.as_ref().map(to_json).unwrap_or_default()),
            machine_stats_ms: Set(opt(w.machine_stats_time)),
        };
        worker::Entity::insert(am)
            .on_conflict(
                OnConflict::column(worker::Column::Id)
                    .update_columns([
                        worker::Column::UserId,
                        worker::Column::Ip,
                        worker::Column::QueueIds,
                        worker::Column::Tags,
                        worker::Column::RegisteredMs,
                        worker::Column::LastSeenMs,
                        worker::Column::TimeoutMs,
                        worker::Column::CurrentTaskId,
                        worker::Column::CurrentQueueId,
                        worker::Column::CurrentTaskSinceMs,
                        worker::Column::MachineStats,
                        worker::Column::MachineStatsMs,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await
            .map_err(errors::db)?;
        Ok(())
    }

    /// Records `task_id` of `queue_id` as the current task of a registered
    /// worker (its `since` moves to `now` when the task changes); nothing
    /// when the worker is not registered. One statement, no read.
    pub async fn note_current_task(
        &self,
        worker_id: &str,
        task_id: &str,
        queue_id: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                self.db.get_database_backend(),
                "UPDATE workers SET current_task_since_ms = CASE WHEN current_task_id = $2 \
                 THEN current_task_since_ms ELSE $4 END, current_task_id = $2, \
                 current_queue_id = $3 WHERE id = $1",
                [
                    worker_id.into(),
                    task_id.into(),
                    queue_id.into(),
                    millis(now).into(),
                ],
            ))
            .await
            .map_err(errors::db)?;
        Ok(())
    }

    /// One worker.
    pub async fn worker(&self, id: &str) -> Result<Option<WorkerRow>> {
        Ok(worker::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(errors::db)?
            .map(worker_row))
    }

    /// Every worker, by id.
    pub async fn workers(&self) -> Result<Vec<WorkerRow>> {
        Ok(worker::Entity::find()
            .order_by_asc(worker::Column::Id)
            .all(&self.db)
            .await
            .map_err(errors::db)?
            .into_iter()
            .map(worker_row)
            .collect())
    }

    /// Deletes a worker when its `last_seen` still equals `if_last_seen`
    /// (when given); returns whether a row went.
    pub async fn delete_worker(
        &self,
        id: &str,
        if_last_seen: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let mut q = worker::Entity::delete_many().filter(worker::Column::Id.eq(id));
        if let Some(seen) = if_last_seen {
            q = q.filter(worker::Column::LastSeenMs.eq(millis(seen)));
        }
        let res = q.exec(&self.db).await.map_err(errors::db)?;
        Ok(res.rows_affected > 0)
    }
}
