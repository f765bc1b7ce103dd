//! Creates every table of the metrics service (see the crate docs for the
//! layout and why).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum MetricSeries {
    Table,
    Id,
    TaskId,
    Model,
    Metric,
    Variant,
    XAxisLabel,
    Count,
    Nonnan,
    Sum,
    MinValue,
    MinIter,
    MaxValue,
    MaxIter,
    FirstValue,
    FirstIter,
    FirstTs,
    LastValue,
    LastIter,
    LastTs,
    MaxStoredIter,
    TailStart,
    TailCount,
    Bytes,
}

#[derive(DeriveIden)]
enum ScalarChunks {
    Table,
    Id,
    SeriesId,
    StartIter,
    EndIter,
    Summary,
    Data,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    TaskId,
    Model,
    Kind,
    Ident,
    Metric,
    Variant,
    Iteration,
    SampleKey,
    Timestamp,
    Received,
    Url,
    Compressed,
    Payload,
}

#[derive(DeriveIden)]
enum LogEvents {
    Table,
    Id,
    TaskId,
    Timestamp,
    Received,
    Level,
    Worker,
    Message,
    BatchId,
    Seq,
}

#[derive(DeriveIden)]
enum TaskState {
    Table,
    TaskId,
    Model,
    LastIteration,
    LastUpdate,
    LastEventTs,
}

#[derive(DeriveIden)]
enum TaskLocks {
    Table,
    TaskId,
    Model,
    Since,
}

#[derive(DeriveIden)]
enum RetentionPolicies {
    Table,
    ProjectId,
    Rules,
    IncludeLocked,
    Updated,
}

fn id_col<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

// The trait elides `SchemaManager`'s lifetime; naming it here would not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use MetricSeries as S;
        manager
            .create_table(
                Table::create()
                    .table(S::Table)
                    .if_not_exists()
                    .col(id_col(S::Id))
                    .col(ColumnDef::new(S::TaskId).string_len(128).not_null())
                    .col(ColumnDef::new(S::Model).small_integer().not_null())
                    .col(ColumnDef::new(S::Metric).text().not_null())
                    .col(ColumnDef::new(S::Variant).text().not_null())
                    .col(ColumnDef::new(S::XAxisLabel).text().not_null())
                    .col(ColumnDef::new(S::Count).big_integer().not_null())
                    .col(ColumnDef::new(S::Nonnan).big_integer().not_null())
                    // Aggregates are NULL where the value is NaN: SQLite cannot
                    // store NaN in a REAL column.
                    .col(ColumnDef::new(S::Sum).double().null())
                    .col(ColumnDef::new(S::MinValue).double().null())
                    .col(ColumnDef::new(S::MinIter).big_integer().not_null())
                    .col(ColumnDef::new(S::MaxValue).double().null())
                    .col(ColumnDef::new(S::MaxIter).big_integer().not_null())
                    .col(ColumnDef::new(S::FirstValue).double().null())
                    .col(ColumnDef::new(S::FirstIter).big_integer().not_null())
                    .col(ColumnDef::new(S::FirstTs).big_integer().not_null())
                    .col(ColumnDef::new(S::LastValue).double().null())
                    .col(ColumnDef::new(S::LastIter).big_integer().not_null())
                    .col(ColumnDef::new(S::LastTs).big_integer().not_null())
                    .col(ColumnDef::new(S::MaxStoredIter).big_integer().null())
                    .col(ColumnDef::new(S::TailStart).big_integer().null())
                    .col(ColumnDef::new(S::TailCount).big_integer().not_null())
                    .col(ColumnDef::new(S::Bytes).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("metric_series_key")
                    .table(S::Table)
                    .col(S::TaskId)
                    .col(S::Model)
                    .col(S::Metric)
                    .col(S::Variant)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        use ScalarChunks as C;
        manager
            .create_table(
                Table::create()
                    .table(C::Table)
                    .if_not_exists()
                    .col(id_col(C::Id))
                    .col(ColumnDef::new(C::SeriesId).big_integer().not_null())
                    .col(ColumnDef::new(C::StartIter).big_integer().not_null())
                    .col(ColumnDef::new(C::EndIter).big_integer().not_null())
                    // The packed chunk summary (`chunk::ChunkMeta::to_bytes`):
                    // one column, so a series' summaries come back as one
                    // aggregated value instead of thousands of rows.
                    .col(ColumnDef::new(C::Summary).blob().not_null())
                    // Last, so reading the summary never touches the blob's
                    // overflow pages.
                    .col(ColumnDef::new(C::Data).blob().not_null())
                    .to_owned(),
            )
            .await?;
        // Covering index: a downsampled read scans summaries from the index
        // alone and fetches blobs by id only for the chunks it must decode.
        manager
            .create_index(
                Index::create()
                    .name("scalar_chunks_series")
                    .table(C::Table)
                    .col(C::SeriesId)
                    .col(C::StartIter)
                    .col(C::EndIter)
                    .col(C::Summary)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        use Events as E;
        manager
            .create_table(
                Table::create()
                    .table(E::Table)
                    .if_not_exists()
                    .col(id_col(E::Id))
                    .col(ColumnDef::new(E::TaskId).string_len(128).not_null())
                    .col(ColumnDef::new(E::Model).small_integer().not_null())
                    .col(ColumnDef::new(E::Kind).small_integer().not_null())
                    .col(ColumnDef::new(E::Ident).string_len(32).not_null())
                    .col(ColumnDef::new(E::Metric).text().not_null())
                    .col(ColumnDef::new(E::Variant).text().not_null())
                    .col(ColumnDef::new(E::Iteration).big_integer().not_null())
                    .col(ColumnDef::new(E::SampleKey).text().not_null())
                    .col(ColumnDef::new(E::Timestamp).big_integer().not_null())
                    .col(ColumnDef::new(E::Received).big_integer().not_null())
                    .col(ColumnDef::new(E::Url).text().not_null())
                    .col(ColumnDef::new(E::Compressed).small_integer().not_null())
                    .col(ColumnDef::new(E::Payload).blob().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("events_key")
                    .table(E::Table)
                    .col(E::TaskId)
                    .col(E::Model)
                    .col(E::Kind)
                    .col(E::Ident)
                    .col(E::Iteration)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("events_by_iteration")
                    .table(E::Table)
                    .col(E::TaskId)
                    .col(E::Model)
                    .col(E::Kind)
                    .col(E::Iteration)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        use LogEvents as L;
        manager
            .create_table(
                Table::create()
                    .table(L::Table)
                    .if_not_exists()
                    .col(id_col(L::Id))
                    .col(ColumnDef::new(L::TaskId).string_len(128).not_null())
                    .col(ColumnDef::new(L::Timestamp).big_integer().not_null())
                    .col(ColumnDef::new(L::Received).big_integer().not_null())
                    .col(ColumnDef::new(L::Level).small_integer().not_null())
                    .col(ColumnDef::new(L::Worker).text().not_null())
                    .col(ColumnDef::new(L::Message).text().not_null())
                    // NULL for batches without a client batch id: NULLs never
                    // collide in the unique index below.
                    .col(ColumnDef::new(L::BatchId).string_len(128).null())
                    .col(ColumnDef::new(L::Seq).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("log_events_batch")
                    .table(L::Table)
                    .col(L::TaskId)
                    .col(L::BatchId)
                    .col(L::Seq)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("log_events_by_time")
                    .table(L::Table)
                    .col(L::TaskId)
                    .col(L::Timestamp)
                    .col(L::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        use TaskState as T;
        manager
            .create_table(
                Table::create()
                    .table(T::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(T::TaskId).string_len(128).not_null())
                    .col(ColumnDef::new(T::Model).small_integer().not_null())
                    .col(ColumnDef::new(T::LastIteration).big_integer().null())
                    .col(ColumnDef::new(T::LastUpdate).big_integer().not_null())
                    .col(ColumnDef::new(T::LastEventTs).big_integer().not_null())
                    .primary_key(Index::create().col(T::TaskId).col(T::Model))
                    .to_owned(),
            )
            .await?;

        use TaskLocks as K;
        manager
            .create_table(
                Table::create()
                    .table(K::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(K::TaskId).string_len(128).not_null())
                    .col(ColumnDef::new(K::Model).small_integer().not_null())
                    .col(ColumnDef::new(K::Since).big_integer().not_null())
                    .primary_key(Index::create().col(K::TaskId).col(K::Model))
                    .to_owned(),
            )
            .await?;

        use RetentionPolicies as R;
        manager
            .create_table(
                Table::create()
                    .table(R::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(R::ProjectId)
                            .string_len(128)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(R::Rules).text().not_null())
                    .col(ColumnDef::new(R::IncludeLocked).small_integer().not_null())
                    .col(ColumnDef::new(R::Updated).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "retention_policies",
            "task_locks",
            "task_state",
            "log_events",
            "events",
            "scalar_chunks",
            "metric_series",
        ] {
            manager
                .drop_table(
                    Table::drop()
                        .table(Alias::new(table))
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
