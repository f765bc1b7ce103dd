//! Creates the queue metadata, worker registry and SQL-backend tables.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Queues {
    Table,
    Id,
    Name,
    Tags,
    SystemTags,
    Metadata,
    CreatedMs,
    LastUpdateMs,
}

#[derive(DeriveIden)]
enum QueueEntries {
    Table,
    TaskId,
    QueueId,
    Priority,
    Rank,
    AddedMs,
    Delivery,
    Seq,
    Leased,
    LeaseId,
    WorkerId,
    AcquiredMs,
    ExpiresMs,
    DurationMs,
    RenewedMs,
}

#[derive(DeriveIden)]
enum QueueChanges {
    Table,
    TaskId,
    Seq,
}

#[derive(DeriveIden)]
enum QueueMeta {
    Table,
    Key,
    Ival,
    Sval,
}

#[derive(DeriveIden)]
enum QueuePops {
    Table,
    Id,
    QueueId,
    PoppedMs,
    WaitMs,
    Pending,
}

#[derive(DeriveIden)]
enum Workers {
    Table,
    Id,
    UserId,
    Ip,
    QueueIds,
    Tags,
    RegisteredMs,
    LastSeenMs,
    TimeoutMs,
    CurrentTaskId,
    CurrentQueueId,
    CurrentTaskSinceMs,
    MachineStats,
    MachineStatsMs,
}

fn index(name: &str, table: impl IntoIden, cols: &[&dyn Fn() -> DynIden]) -> IndexCreateStatement {
    let mut idx = Index::create();
    idx.name(name).table(table).if_not_exists();
    for col in cols {
        idx.col(col());
    }
    idx.to_owned()
}

// The trait elides `SchemaManager`'s lifetime; naming it here would not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Queues::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Queues::Id)
                            .string_len(32)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Queues::Name).string_len(255).not_null())
                    .col(ColumnDef::new(Queues::Tags).text().not_null())
                    .col(ColumnDef::new(Queues::SystemTags).text().not_null())
                    .col(ColumnDef::new(Queues::Metadata).text().not_null())
                    .col(ColumnDef::new(Queues::CreatedMs).big_integer().not_null())
                    .col(
                        ColumnDef::new(Queues::LastUpdateMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("queues_name_key")
                    .table(Queues::Table)
                    .col(Queues::Name)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(QueueEntries::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(QueueEntries::TaskId)
                            .string_len(128)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(QueueEntries::QueueId)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(ColumnDef::new(QueueEntries::Priority).integer().not_null())
                    .col(ColumnDef::new(QueueEntries::Rank).big_integer().not_null())
                    .col(
                        ColumnDef::new(QueueEntries::AddedMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(QueueEntries::Delivery).integer().not_null())
                    .col(ColumnDef::new(QueueEntries::Seq).big_integer().not_null())
                    .col(ColumnDef::new(QueueEntries::Leased).boolean().not_null())
                    .col(
                        ColumnDef::new(QueueEntries::LeaseId)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QueueEntries::WorkerId)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QueueEntries::AcquiredMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QueueEntries::ExpiresMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QueueEntries::DurationMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QueueEntries::RenewedMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Pop order: the head of a queue is the first row of this index.
        manager
            .create_index(index(
                "queue_entries_order_idx",
                QueueEntries::Table,
                &[
                    &|| QueueEntries::QueueId.into_iden(),
                    &|| QueueEntries::Leased.into_iden(),
                    &|| QueueEntries::Priority.into_iden(),
                    &|| QueueEntries::Rank.into_iden(),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "queue_entries_lease_id_idx",
                QueueEntries::Table,
                &[&|| QueueEntries::LeaseId.into_iden()],
            ))
            .await?;
        manager
            .create_index(index(
                "queue_entries_expires_idx",
                QueueEntries::Table,
                &[&|| QueueEntries::Leased.into_iden(), &|| {
                    QueueEntries::ExpiresMs.into_iden()
                }],
            ))
            .await?;
        manager
            .create_index(index(
                "queue_entries_worker_idx",
                QueueEntries::Table,
                &[&|| QueueEntries::WorkerId.into_iden()],
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(QueueChanges::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(QueueChanges::TaskId)
                            .string_len(128)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(QueueChanges::Seq).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(QueueMeta::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(QueueMeta::Key)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(QueueMeta::Ival).big_integer().not_null())
                    .col(ColumnDef::new(QueueMeta::Sval).text().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(QueuePops::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(QueuePops::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(QueuePops::QueueId).string_len(32).not_null())
                    .col(ColumnDef::new(QueuePops::PoppedMs).big_integer().not_null())
                    .col(ColumnDef::new(QueuePops::WaitMs).big_integer().not_null())
                    .col(ColumnDef::new(QueuePops::Pending).integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "queue_pops_queue_time_idx",
                QueuePops::Table,
                &[&|| QueuePops::QueueId.into_iden(), &|| {
                    QueuePops::PoppedMs.into_iden()
                }],
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Workers::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Workers::Id)
                            .string_len(255)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Workers::UserId).text().not_null())
                    .col(ColumnDef::new(Workers::Ip).text().not_null())
                    .col(ColumnDef::new(Workers::QueueIds).text().not_null())
                    .col(ColumnDef::new(Workers::Tags).text().not_null())
                    .col(
                        ColumnDef::new(Workers::RegisteredMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Workers::LastSeenMs).big_integer().not_null())
                    .col(ColumnDef::new(Workers::TimeoutMs).big_integer().not_null())
                    .col(ColumnDef::new(Workers::CurrentTaskId).text().not_null())
                    .col(ColumnDef::new(Workers::CurrentQueueId).text().not_null())
                    .col(
                        ColumnDef::new(Workers::CurrentTaskSinceMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Workers::MachineStats).text().not_null())
                    .col(
                        ColumnDef::new(Workers::MachineStatsMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Workers::Table.into_iden(),
            QueuePops::Table.into_iden(),
            QueueMeta::Table.into_iden(),
            QueueChanges::Table.into_iden(),
            QueueEntries::Table.into_iden(),
            Queues::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
