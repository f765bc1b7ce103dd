//! Storage of artifacts, models and blob records: the [`Store`] trait the
//! domain core calls, and [`SqlStore`], its sea-orm implementation on SQLite
//! and PostgreSQL.
//!
//! Every multi-row change (an upsert batch, a delete, a copy for clone) is
//! one transaction. SQLite write transactions start `IMMEDIATE`, so a
//! transaction that reads before it writes never fails on a lock upgrade.
//! Model updates are optimistic: each row carries a `version`, and an update
//! only applies to the version it was computed from ([`Store::update_model`]
//! answers `false` when another writer came first; the caller re-reads).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use tasklab_error::{Error, Result};

use crate::artifacts::{Artifact, Mode};
use crate::entity::{artifact, blob, model};
use crate::models::{MetadataItem, Model};

/// Longest `IN (...)` list put in one statement.
const MAX_IN_LIST: usize = 500;

/// Which artifacts of a task a delete removes.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    /// These (key, mode) identities.
    Keys(Vec<(String, Mode)>),
    /// Every artifact of this mode, or of both.
    All(Option<Mode>),
}

/// The part of a model filter the store applies; empty lists and `None`
/// match everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelCandidates {
    pub(crate) ids: Vec<String>,
    pub(crate) project_ids: Vec<String>,
    pub(crate) task_ids: Vec<String>,
    pub(crate) user_ids: Vec<String>,
    pub(crate) frameworks: Vec<String>,
    pub(crate) ready: Option<bool>,
    pub(crate) published: Option<bool>,
}

/// What the service records about a committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobRecord {
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) content_type: String,
    pub(crate) e_tag: String,
    pub(crate) created: DateTime<Utc>,
}

/// Where artifacts, models and blob records live.
#[async_trait]
pub(crate) trait Store: std::fmt::Debug + Send + Sync + 'static {
    /// Writes every artifact (insert or replace by identity), atomically;
    /// returns how many did not exist before.
    async fn upsert_artifacts(&self, artifacts: &[Artifact]) -> Result<u32>;
    /// The artifacts of these tasks, of `mode` (both for `None`), with one
    /// of `keys` (any for an empty list), in no particular order.
    async fn list_artifacts(
        &self,
        task_ids: &[String],
        mode: Option<Mode>,
        keys: &[String],
    ) -> Result<Vec<Artifact>>;
    /// Removes the selected artifacts of a task; returns the removed rows.
    async fn delete_artifacts(&self, task_id: &str, which: &Selection) -> Result<Vec<Artifact>>;
    /// Copies the input artifacts of `source` to `target` (after deleting
    /// the target's inputs when `replace`), atomically; returns the copies.
    async fn copy_input_artifacts(
        &self,
        source: &str,
        target: &str,
        replace: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<Artifact>>;
    /// How many artifacts and models refer to the blob at `path`.
    async fn count_references(&self, path: &str) -> Result<u64>;

    /// Adds a new model.
    async fn insert_model(&self, model: &Model) -> Result<()>;
    /// The model with this id.
    async fn get_model(&self, id: &str) -> Result<Option<Model>>;
    /// The models matching `filter`, in no particular order.
    async fn list_models(&self, filter: &ModelCandidates) -> Result<Vec<Model>>;
    /// Overwrites a model if its stored version is still `expected_version`
    /// (the written row carries `model.version`); `false` when it was not.
    async fn update_model(&self, model: &Model, expected_version: i64) -> Result<bool>;
    /// Deletes a model; `false` when it did not exist.
    async fn delete_model(&self, id: &str) -> Result<bool>;

    /// Records (or replaces the record of) a committed blob.
    async fn put_blob(&self, record: &BlobRecord) -> Result<()>;
    /// The records of these paths that exist.
    async fn get_blobs(&self, paths: &[String]) -> Result<Vec<BlobRecord>>;
    /// Forgets these blobs.
    async fn delete_blobs(&self, paths: &[String]) -> Result<()>;
}

/// Classifies a database error: unreachable database or internal failure.
fn db_error(err: DbErr) -> Error {
    if matches!(err, DbErr::Conn(_) | DbErr::ConnectionAcquire(_)) {
        Error::unavailable("artifacts database", err)
    } else {
        Error::internal(err)
    }
}

/// The sea-orm implementation of [`Store`].
#[derive(Debug, Clone)]
pub(crate) struct SqlStore {
    db: Arc<DatabaseConnection>,
}

impl SqlStore {
    /// A store on a migrated connection.
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        SqlStore { db: Arc::new(db) }
    }

    async fn begin(&self) -> Result<DatabaseTransaction> {
        let options = match self.db.get_database_backend() {
            DbBackend::Sqlite => TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            },
            _ => TransactionOptions::default(),
        };
        self.db.begin_with_options(options).await.map_err(db_error)
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn upsert_artifacts(&self, artifacts: &[Artifact]) -> Result<u32> {
        let txn = self.begin().await?;
        let mut created = 0;
        for a in artifacts {
            let exists = artifact::Entity::find_by_id((
                a.task_id.clone(),
                a.mode.as_str().to_owned(),
                a.key.clone(),
            ))
            .one(&txn)
            .await
            .map_err(db_error)?
            .is_some();
            if !exists {
                created += 1;
            }
            let row = artifact_row(a)?.into_active_model();
            artifact::Entity::insert(row)
                .on_conflict(
                    OnConflict::columns([
                        artifact::Column::TaskId,
                        artifact::Column::Mode,
                        artifact::Column::Key,
                    ])
                    .update_columns([
                        artifact::Column::Kind,
                        artifact::Column::Uri,
                        artifact::Column::BlobPath,
                        artifact::Column::Hash,
                        artifact::Column::ContentSize,
                        artifact::Column::Timestamp,
                        artifact::Column::Preview,
                        artifact::Column::ContentType,
                        artifact::Column::DataHash,
                        artifact::Column::Metadata,
                        artifact::Column::DisplayData,
                        artifact::Column::Updated,
                    ])
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await
                .map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        Ok(created)
    }

    async fn list_artifacts(
        &self,
        task_ids: &[String],
        mode: Option<Mode>,
        keys: &[String],
    ) -> Result<Vec<Artifact>> {
        let keys_in_sql = !keys.is_empty() && keys.len() <= MAX_IN_LIST;
        let wanted: HashSet<&String> = keys.iter().collect();
        let mut out = Vec::new();
        for chunk in task_ids.chunks(MAX_IN_LIST) {
            let mut query = artifact::Entity::find()
                .filter(artifact::Column::TaskId.is_in(chunk.iter().cloned()));
            if let Some(mode) = mode {
                query = query.filter(artifact::Column::Mode.eq(mode.as_str()));
            }
            if keys_in_sql {
                query = query.filter(artifact::Column::Key.is_in(keys.iter().cloned()));
            }
            for row in query.all(&*self.db).await.map_err(db_error)? {
                if keys.is_empty() || wanted.contains(&row.key) {
                    out.push(artifact_domain(row)?);
                }
            }
        }
        Ok(out)
    }

    async fn delete_artifacts(&self, task_id: &str, which: &Selection) -> Result<Vec<Artifact>> {
        let txn = self.begin().await?;
        let rows = match which {
            Selection::All(mode) => {
                let mut query =
                    artifact::Entity::find().filter(artifact::Column::TaskId.eq(task_id));
                if let Some(mode) = mode {
                    query = query.filter(artifact::Column::Mode.eq(mode.as_str()));
                }
                query.all(&txn).await.map_err(db_error)?
            }
            Selection::Keys(keys) => {
                let mut rows = Vec::new();
                let mut seen = HashSet::new();
                for (key, mode) in keys {
                    if !seen.insert((key, *mode)) {
                        continue;
                    }
                    let id = (task_id.to_owned(), mode.as_str().to_owned(), key.clone());
                    if let Some(row) = artifact::Entity::find_by_id(id)
                        .one(&txn)
                        .await
                        .map_err(db_error)?
                    {
                        rows.push(row);
                    }
                }
                rows
            }
        };
        for row in &rows {
            artifact::Entity::delete_by_id((
                row.task_id.clone(),
                row.mode.clone(),
                row.key.clone(),
            ))
            .exec(&txn)
            .await
            .map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        rows.into_iter().map(artifact_domain).collect()
    }

    async fn copy_input_artifacts(
        &self,
        source: &str,
        target: &str,
        replace: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<Artifact>> {
        let txn = self.begin().await?;
        let inputs = artifact::Entity::find()
            .filter(artifact::Column::TaskId.eq(source))
            .filter(artifact::Column::Mode.eq(Mode::Input.as_str()))
            .all(&txn)
            .await
            .map_err(db_error)?;
        if replace {
            artifact::Entity::delete_many()
                .filter(artifact::Column::TaskId.eq(target))
                .filter(artifact::Column::Mode.eq(Mode::Input.as_str()))
                .exec(&txn)
                .await
                .map_err(db_error)?;
        }
        let mut copies = Vec::with_capacity(inputs.len());
        for row in inputs {
            let mut copy = artifact_domain(row)?;
            copy.task_id = target.to_owned();
            copy.updated = now;
            artifact::Entity::delete_by_id((
                copy.task_id.clone(),
                copy.mode.as_str().to_owned(),
                copy.key.clone(),
            ))
            .exec(&txn)
            .await
            .map_err(db_error)?;
            artifact::Entity::insert(artifact_row(&copy)?.into_active_model())
                .exec_without_returning(&txn)
                .await
                .map_err(db_error)?;
            copies.push(copy);
        }
        txn.commit().await.map_err(db_error)?;
        Ok(copies)
    }

    async fn count_references(&self, path: &str) -> Result<u64> {
        let artifacts = artifact::Entity::find()
            .filter(artifact::Column::BlobPath.eq(path))
            .count(&*self.db)
            .await
            .map_err(db_error)?;
        let models = model::Entity::find()
            .filter(model::Column::BlobPath.eq(path))
            .count(&*self.db)
            .await
            .map_err(db_error)?;
        Ok(artifacts + models)
    }

    async fn insert_model(&self, m: &Model) -> Result<()> {
        model::Entity::insert(model_row(m)?.into_active_model())
            .exec_without_returning(&*self.db)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn get_model(&self, id: &str) -> Result<Option<Model>> {
        model::Entity::find_by_id(id.to_owned())
            .one(&*self.db)
            .await
            .map_err(db_error)?
            .map(model_domain)
            .transpose()
    }

    async fn list_models(&self, f: &ModelCandidates) -> Result<Vec<Model>> {
        let mut query = model::Entity::find();
        let lists = [
            (model::Column::Id, &f.ids),
            (model::Column::ProjectId, &f.project_ids),
            (model::Column::TaskId, &f.task_ids),
            (model::Column::UserId, &f.user_ids),
            (model::Column::Framework, &f.frameworks),
        ];
        for (column, values) in lists {
            if !values.is_empty() && values.len() <= MAX_IN_LIST {
                query = query.filter(column.is_in(values.iter().cloned()));
            }
        }
        if let Some(ready) = f.ready {
            query = query.filter(model::Column::Ready.eq(ready));
        }
        match f.published {
            Some(true) => query = query.filter(model::Column::Published.is_not_null()),
            Some(false) => query = query.filter(model::Column::Published.is_null()),
            None => {}
        }
        let rows = query.all(&*self.db).await.map_err(db_error)?;
        // Long lists stay out of the statement; apply them here.
        let keep = |values: &Vec<String>, v: &String| values.is_empty() || values.contains(v);
        rows.into_iter()
            .filter(|r| {
                keep(&f.ids, &r.id)
                    && keep(&f.project_ids, &r.project_id)
                    && keep(&f.task_ids, &r.task_id)
                    && keep(&f.user_ids, &r.user_id)
                    && keep(&f.frameworks, &r.framework)
            })
            .map(model_domain)
            .collect()
    }

    async fn update_model(&self, m: &Model, expected_version: i64) -> Result<bool> {
        let row = model_row(m)?.into_active_model().reset_all();
        let result = model::Entity::update_many()
            .set(row)
            .filter(model::Column::Id.eq(m.id.as_str()))
            .filter(model::Column::Version.eq(expected_version))
            .exec(&*self.db)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected == 1)
    }

    async fn delete_model(&self, id: &str) -> Result<bool> {
        let result = model::Entity::delete_by_id(id.to_owned())
            .exec(&*self.db)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected > 0)
    }

    async fn put_blob(&self, r: &BlobRecord) -> Result<()> {
        let row = blob::Model {
            path: r.path.clone(),
            size: i64::try_from(r.size).map_err(Error::internal)?,
            sha256: r.sha256.clone(),
            content_type: r.content_type.clone(),
            e_tag: r.e_tag.clone(),
            created: r.created,
        };
        blob::Entity::insert(row.into_active_model())
            .on_conflict(
                OnConflict::column(blob::Column::Path)
                    .update_columns([
                        blob::Column::Size,
                        blob::Column::Sha256,
                        blob::Column::ContentType,
                        blob::Column::ETag,
                        blob::Column::Created,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&*self.db)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn get_blobs(&self, paths: &[String]) -> Result<Vec<BlobRecord>> {
        let mut out = Vec::new();
        for chunk in paths.chunks(MAX_IN_LIST) {
            let rows = blob::Entity::find()
                .filter(blob::Column::Path.is_in(chunk.iter().cloned()))
                .all(&*self.db)
                .await
                .map_err(db_error)?;
            out.extend(rows.into_iter().map(|r| BlobRecord {
                path: r.path,
                size: u64::try_from(r.size).unwrap_or_default(),
                sha256: r.sha256,
                content_type: r.content_type,
                e_tag: r.e_tag,
                created: r.created,
            }));
        }
        Ok(out)
    }

    async fn delete_blobs(&self, paths: &[String]) -> Result<()> {
        for chunk in paths.chunks(MAX_IN_LIST) {
            blob::Entity::delete_many()
                .filter(blob::Column::Path.is_in(chunk.iter().cloned()))
                .exec(&*self.db)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(Error::internal)
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(Error::internal)
}

fn artifact_row(a: &Artifact) -> Result<artifact::Model> {
    Ok(artifact::Model {
        task_id: a.task_id.clone(),
        mode: a.mode.as_str().to_owned(),
        key: a.key.clone(),
        kind: a.kind.clone(),
        uri: a.uri.clone(),
        blob_path: a.blob_path.clone(),
        hash: a.hash.clone(),
        content_size: i64::try_from(a.content_size).map_err(Error::internal)?,
        timestamp: a.timestamp,
        preview: a.preview.clone(),
        content_type: a.content_type.clone(),
        data_hash: a.data_hash.clone(),
        metadata: to_json(&a.metadata)?,
        display_data: to_json(&a.display_data)?,
        updated: a.updated,
    })
}

fn artifact_domain(r: artifact::Model) -> Result<Artifact> {
    Ok(Artifact {
        mode: Mode::parse(&r.mode)
            .ok_or_else(|| Error::internal(format!("stored artifact mode {:?}", r.mode)))?,
        metadata: from_json(&r.metadata)?,
        display_data: from_json(&r.display_data)?,
        content_size: u64::try_from(r.content_size).unwrap_or_default(),
        task_id: r.task_id,
        key: r.key,
        kind: r.kind,
        uri: r.uri,
        blob_path: r.blob_path,
        hash: r.hash,
        timestamp: r.timestamp,
        preview: r.preview,
        content_type: r.content_type,
        data_hash: r.data_hash,
        updated: r.updated,
    })
}

fn model_row(m: &Model) -> Result<model::Model> {
    Ok(model::Model {
        id: m.id.clone(),
        name: m.name.clone(),
        project_id: m.project_id.clone(),
        task_id: m.task_id.clone(),
        comment: m.comment.clone(),
        tags: to_json(&m.tags)?,
        system_tags: to_json(&m.system_tags)?,
        framework: m.framework.clone(),
        design: m.design.clone(),
        labels: to_json(&m.labels)?,
        uri: m.uri.clone(),
        blob_path: m.blob_path.clone(),
        ready: m.ready,
        published: m.published,
        metadata: to_json(&m.metadata)?,
        iteration: m.iteration,
        user_id: m.user_id.clone(),
        parent_id: m.parent_id.clone(),
        created: m.created,
        last_update: m.last_update,
        version: m.version,
    })
}

fn model_domain(r: model::Model) -> Result<Model> {
    let metadata: BTreeMap<String, MetadataItem> = from_json(&r.metadata)?;
    Ok(Model {
        tags: from_json(&r.tags)?,
        system_tags: from_json(&r.system_tags)?,
        labels: from_json(&r.labels)?,
        metadata,
        id: r.id,
        name: r.name,
        project_id: r.project_id,
        task_id: r.task_id,
        comment: r.comment,
        framework: r.framework,
        design: r.design,
        uri: r.uri,
        blob_path: r.blob_path,
        ready: r.ready,
        published: r.published,
        iteration: r.iteration,
        user_id: r.user_id,
        parent_id: r.parent_id,
        created: r.created,
        last_update: r.last_update,
        version: r.version,
    })
}
