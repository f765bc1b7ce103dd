//! Storage of projects: the [`ProjectStore`] trait the domain core calls,
//! and [`SqlProjectStore`], its sea-orm implementation on SQLite and
//! PostgreSQL.
//!
//! Reads outside a transaction go straight to the store. Changes go through
//! a [`ProjectTx`]: the domain core reads and writes rows in it and commits,
//! so a rename or move that rewrites a whole subtree is one transaction.
//! Write transactions run one at a time, so each sees every change committed
//! before it and none can invalidate another's checks: SQLite starts them
//! `IMMEDIATE` (the database write lock is taken at `BEGIN`), PostgreSQL
//! takes a transaction-scoped advisory lock ([`WRITE_LOCK_KEY`]) as its first
//! statement and then reads at `READ COMMITTED`, which after the lock means
//! "everything committed by earlier writers". Project changes are rare
//! (a `Task.init` creates at most one path), so one writer at a time costs
//! nothing noticeable and makes conflicts impossible rather than retried.
//! Should a transaction still lose a race (a unique index hit, a deadlock,
//! an expired busy timeout), it fails with an error that [`is_conflict`]
//! recognises, and the caller retries it.

use std::sync::Arc;

use async_trait::async_trait;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, EntityTrait, IntoActiveModel, IsolationLevel, QueryFilter, RuntimeErr,
    SqlErr, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use tasklab_error::{Error, Result};

use crate::entity::project::{self, Column, Entity};

/// The PostgreSQL advisory lock that serialises this service's write
/// transactions ("tasklabP" in ASCII). Services sharing a database use
/// other keys.
pub(crate) const WRITE_LOCK_KEY: i64 = 0x7461_736b_6c61_6250;
use crate::service::{Project, is_project_id};

/// Which projects a list starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every project.
    All,
    /// The direct children of a project, or the top-level projects (`None`).
    ChildrenOf(Option<String>),
    /// Every descendant of a project, at any depth (not the project itself).
    DescendantsOf(String),
}

/// The part of a list filter the store applies. The domain core filters
/// the candidates further; the store may return more than `ids` and `users`
/// ask for (very long lists are left to the core) but never less.
#[derive(Debug, Clone)]
pub(crate) struct Candidates {
    pub(crate) scope: Scope,
    /// Only these ids, when not empty.
    pub(crate) ids: Vec<String>,
    /// Only projects created by these users, when not empty.
    pub(crate) users: Vec<String>,
}

/// Where projects live.
#[async_trait]
pub(crate) trait ProjectStore: std::fmt::Debug + Send + Sync + 'static {
    /// The project with this id.
    async fn get(&self, id: &str) -> Result<Option<Project>>;
    /// The child of `parent_id` (top level for `None`) named `name`.
    async fn find_child(&self, parent_id: Option<&str>, name: &str) -> Result<Option<Project>>;
    /// The projects in `candidates.scope`, in no particular order.
    async fn list(&self, candidates: &Candidates) -> Result<Vec<Project>>;
    /// Starts a write transaction.
    async fn begin(&self) -> Result<Box<dyn ProjectTx>>;
}

/// A write transaction. Dropping it without [`ProjectTx::commit`] rolls it
/// back.
#[async_trait]
pub(crate) trait ProjectTx: Send {
    /// The project with this id.
    async fn get(&mut self, id: &str) -> Result<Option<Project>>;
    /// The child of `parent_id` (top level for `None`) named `name`.
    async fn find_child(&mut self, parent_id: Option<&str>, name: &str) -> Result<Option<Project>>;
    /// The direct children of a project.
    async fn children(&mut self, id: &str) -> Result<Vec<Project>>;
    /// Every descendant of a project, at any depth.
    async fn descendants(&mut self, id: &str) -> Result<Vec<Project>>;
    /// Adds a new project.
    async fn insert(&mut self, project: &Project) -> Result<()>;
    /// Overwrites every field of an existing project.
    async fn update(&mut self, project: &Project) -> Result<()>;
    /// Deletes these projects (and nothing else); returns how many existed.
    async fn delete(&mut self, ids: &[String]) -> Result<u64>;
    /// Makes the changes durable.
    async fn commit(self: Box<Self>) -> Result<()>;
    /// Discards the changes.
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// The cause of an error when a transaction lost a race with a concurrent
/// one and may simply be run again.
#[derive(Debug, thiserror::Error)]
#[error("transaction conflicted with a concurrent one")]
pub(crate) struct Conflict(#[source] pub(crate) DbErr);

/// The error for a lost race: `unavailable` to a caller that sees it after
/// every retry, recognised by [`is_conflict`] before that.
pub(crate) fn conflict(err: DbErr) -> Error {
    Error::unavailable("projects database", Conflict(err))
}

/// Whether `err` is a lost race that a fresh transaction may win.
pub(crate) fn is_conflict(err: &Error) -> bool {
    std::error::Error::source(err).is_some_and(|source| source.is::<Conflict>())
}

/// Classifies a database error: lost races, unreachable database, or an
/// internal failure.
fn db_error(err: DbErr) -> Error {
    if is_retryable(&err) {
        conflict(err)
    } else if matches!(err, DbErr::Conn(_) | DbErr::ConnectionAcquire(_)) {
        Error::unavailable("projects database", err)
    } else {
        Error::internal(err)
    }
}

fn is_retryable(err: &DbErr) -> bool {
    // A unique index hit means a concurrent transaction inserted the same
    // child first; the retry finds it and answers from it.
    if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        return true;
    }
    let code = match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            e.as_database_error().and_then(|d| d.code())
        }
        _ => None,
    };
    // PostgreSQL: serialization_failure, deadlock_detected. SQLite: BUSY and
    // its extended forms, when the busy timeout ran out.
    code.is_some_and(|c| matches!(&*c, "40001" | "40P01" | "5" | "261" | "517"))
}

/// The sea-orm implementation of [`ProjectStore`].
#[derive(Debug, Clone)]
pub(crate) struct SqlProjectStore {
    db: Arc<DatabaseConnection>,
}

impl SqlProjectStore {
    /// A store on a migrated connection.
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        SqlProjectStore { db: Arc::new(db) }
    }
}

#[async_trait]
impl ProjectStore for SqlProjectStore {
    async fn get(&self, id: &str) -> Result<Option<Project>> {
        get(&*self.db, id).await
    }

    async fn find_child(&self, parent_id: Option<&str>, name: &str) -> Result<Option<Project>> {
        find_child(&*self.db, parent_id, name).await
    }

    async fn list(&self, candidates: &Candidates) -> Result<Vec<Project>> {
        // Long id or user lists stay out of the statement (bind parameter
        // limits); the domain core applies them anyway.
        const MAX_IN_LIST: usize = 500;
        let mut query = Entity::find();
        query = match &candidates.scope {
            Scope::All => query,
            Scope::ChildrenOf(parent) => {
                query.filter(Column::ParentId.eq(parent.as_deref().unwrap_or("")))
            }
            Scope::DescendantsOf(id) => {
                if !is_project_id(id) {
                    return Ok(Vec::new());
                }
                query.filter(Column::Ancestors.like(descendant_pattern(id)))
            }
        };
        if !candidates.ids.is_empty() && candidates.ids.len() <= MAX_IN_LIST {
            query = query.filter(Column::Id.is_in(candidates.ids.iter().cloned()));
        }
        if !candidates.users.is_empty() && candidates.users.len() <= MAX_IN_LIST {
            query = query.filter(Column::UserId.is_in(candidates.users.iter().cloned()));
        }
        let rows = query.all(&*self.db).await.map_err(db_error)?;
        rows.into_iter().map(to_domain).collect()
    }

    async fn begin(&self) -> Result<Box<dyn ProjectTx>> {
        let backend = self.db.get_database_backend();
        let options = match backend {
            DbBackend::Sqlite => TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            },
            _ => TransactionOptions {
                isolation_level: Some(IsolationLevel::ReadCommitted),
                ..TransactionOptions::default()
            },
        };
        let txn = self
            .db
            .begin_with_options(options)
            .await
            .map_err(db_error)?;
        if backend == DbBackend::Postgres {
            let lock = Statement::from_sql_and_values(
                backend,
                "SELECT pg_advisory_xact_lock($1)",
                [WRITE_LOCK_KEY.into()],
            );
            txn.execute_raw(lock).await.map_err(db_error)?;
        }
        Ok(Box::new(SqlTx { txn }))
    }
}

/// A [`ProjectTx`] on a sea-orm transaction.
struct SqlTx {
    txn: DatabaseTransaction,
}

#[async_trait]
impl ProjectTx for SqlTx {
    async fn get(&mut self, id: &str) -> Result<Option<Project>> {
        get(&self.txn, id).await
    }

    async fn find_child(&mut self, parent_id: Option<&str>, name: &str) -> Result<Option<Project>> {
        find_child(&self.txn, parent_id, name).await
    }

    async fn children(&mut self, id: &str) -> Result<Vec<Project>> {
        let rows = Entity::find()
            .filter(Column::ParentId.eq(id))
            .all(&self.txn)
            .await
            .map_err(db_error)?;
        rows.into_iter().map(to_domain).collect()
    }

    async fn descendants(&mut self, id: &str) -> Result<Vec<Project>> {
        if !is_project_id(id) {
            return Ok(Vec::new());
        }
        let rows = Entity::find()
            .filter(Column::Ancestors.like(descendant_pattern(id)))
            .all(&self.txn)
            .await
            .map_err(db_error)?;
        rows.into_iter().map(to_domain).collect()
    }

    async fn insert(&mut self, project: &Project) -> Result<()> {
        let row = from_domain(project)?.into_active_model();
        Entity::insert(row)
            .exec_without_returning(&self.txn)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn update(&mut self, project: &Project) -> Result<()> {
        let row = from_domain(project)?.into_active_model().reset_all();
        Entity::update(row)
            .exec_without_returning(&self.txn)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn delete(&mut self, ids: &[String]) -> Result<u64> {
        let mut deleted = 0;
        for chunk in ids.chunks(500) {
            let result = Entity::delete_many()
                .filter(Column::Id.is_in(chunk.iter().cloned()))
                .exec(&self.txn)
                .await
                .map_err(db_error)?;
            deleted += result.rows_affected;
        }
        Ok(deleted)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.txn.commit().await.map_err(db_error)
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.txn.rollback().await.map_err(db_error)
    }
}

async fn get<C: ConnectionTrait>(db: &C, id: &str) -> Result<Option<Project>> {
    let row = Entity::find_by_id(id.to_owned())
        .one(db)
        .await
        .map_err(db_error)?;
    row.map(to_domain).transpose()
}

async fn find_child<C: ConnectionTrait>(
    db: &C,
    parent_id: Option<&str>,
    name: &str,
) -> Result<Option<Project>> {
    let row = Entity::find()
        .filter(Column::ParentId.eq(parent_id.unwrap_or("")))
        .filter(Column::Name.eq(name))
        .one(db)
        .await
        .map_err(db_error)?;
    row.map(to_domain).transpose()
}

/// `LIKE` pattern of the `ancestors` of every descendant of `id`. Only
/// called with a well-formed id, so the pattern holds no wildcard but `%`,
/// and is case-proof (ids are lowercase hex on both engines).
fn descendant_pattern(id: &str) -> String {
    format!("%{id}/%")
}

fn to_domain(row: project::Model) -> Result<Project> {
    Ok(Project {
        parent_id: (!row.parent_id.is_empty()).then_some(row.parent_id),
        ancestors: row
            .ancestors
            .split('/')
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect(),
        tags: decode_tags(&row.tags)?,
        system_tags: decode_tags(&row.system_tags)?,
        id: row.id,
        name: row.name,
        path: row.path,
        description: row.description,
        overview: row.overview,
        default_output_destination: row.default_output_destination,
        user: row.user_id,
        created: row.created,
        last_update: row.last_update,
    })
}

fn from_domain(p: &Project) -> Result<project::Model> {
    Ok(project::Model {
        id: p.id.clone(),
        parent_id: p.parent_id.clone().unwrap_or_default(),
        name: p.name.clone(),
        path: p.path.clone(),
        ancestors: p.ancestors.iter().map(|id| format!("{id}/")).collect(),
        description: p.description.clone(),
        overview: p.overview.clone(),
        tags: encode_tags(&p.tags)?,
        system_tags: encode_tags(&p.system_tags)?,
        default_output_destination: p.default_output_destination.clone(),
        user_id: p.user.clone(),
        created: p.created,
        last_update: p.last_update,
    })
}

fn encode_tags(tags: &[String]) -> Result<String> {
    serde_json::to_string(tags).map_err(Error::internal)
}

fn decode_tags(json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json).map_err(Error::internal)
}

#[cfg(test)]
mod tests;
