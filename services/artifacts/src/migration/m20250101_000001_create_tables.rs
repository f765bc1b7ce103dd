//! Creates the `artifacts`, `models` and `blobs` tables and their indexes.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Artifacts {
    Table,
    TaskId,
    Mode,
    Key,
    Kind,
    Uri,
    BlobPath,
    Hash,
    ContentSize,
    Timestamp,
    Preview,
    ContentType,
    DataHash,
    Metadata,
    DisplayData,
    Updated,
}

#[derive(DeriveIden)]
enum Models {
    Table,
    Id,
    Name,
    ProjectId,
    TaskId,
    Comment,
    Tags,
    SystemTags,
    Framework,
    Design,
    Labels,
    Uri,
    BlobPath,
    Ready,
    Published,
    Metadata,
    Iteration,
    UserId,
    ParentId,
    Created,
    LastUpdate,
    Version,
}

#[derive(DeriveIden)]
enum Blobs {
    Table,
    Path,
    Size,
    Sha256,
    ContentType,
    ETag,
    Created,
}

fn text<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn time<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

// The trait elides `SchemaManager`'s lifetime; naming it here would not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Artifacts::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Artifacts::TaskId).string_len(64).not_null())
                    .col(ColumnDef::new(Artifacts::Mode).string_len(8).not_null())
                    // Keys are at most 1024 bytes: small enough for a
                    // PostgreSQL btree entry.
                    .col(text(Artifacts::Key))
                    .col(text(Artifacts::Kind))
                    .col(text(Artifacts::Uri))
                    .col(text(Artifacts::BlobPath))
                    .col(text(Artifacts::Hash))
                    .col(
                        ColumnDef::new(Artifacts::ContentSize)
                            .big_integer()
                            .not_null(),
                    )
                    .col(time(Artifacts::Timestamp))
                    .col(text(Artifacts::Preview))
                    .col(text(Artifacts::ContentType))
                    .col(text(Artifacts::DataHash))
                    .col(text(Artifacts::Metadata))
                    .col(text(Artifacts::DisplayData))
                    .col(time(Artifacts::Updated))
                    .primary_key(
                        Index::create()
                            .col(Artifacts::TaskId)
                            .col(Artifacts::Mode)
                            .col(Artifacts::Key),
                    )
                    .to_owned(),
            )
            .await?;
        // Reference checks before a blob is deleted.
        manager
            .create_index(
                Index::create()
                    .name("artifacts_blob_path_idx")
                    .table(Artifacts::Table)
                    .col(Artifacts::BlobPath)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Models::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Models::Id)
                            .string_len(32)
                            .not_null()
                            .primary_key(),
                    )
                    .col(text(Models::Name))
                    .col(ColumnDef::new(Models::ProjectId).string_len(64).not_null())
                    .col(ColumnDef::new(Models::TaskId).string_len(64).not_null())
                    .col(text(Models::Comment))
                    .col(text(Models::Tags))
                    .col(text(Models::SystemTags))
                    .col(text(Models::Framework))
                    .col(text(Models::Design))
                    .col(text(Models::Labels))
                    .col(text(Models::Uri))
                    .col(text(Models::BlobPath))
                    .col(ColumnDef::new(Models::Ready).boolean().not_null())
                    .col(
                        ColumnDef::new(Models::Published)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(text(Models::Metadata))
                    .col(ColumnDef::new(Models::Iteration).big_integer().null())
                    .col(text(Models::UserId))
                    .col(text(Models::ParentId))
                    .col(time(Models::Created))
                    .col(time(Models::LastUpdate))
                    .col(ColumnDef::new(Models::Version).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("models_task_id_idx", Models::TaskId),
            ("models_project_id_idx", Models::ProjectId),
            ("models_blob_path_idx", Models::BlobPath),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Models::Table)
                        .col(col)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Blobs::Table)
                    .if_not_exists()
                    .col(text(Blobs::Path).primary_key().to_owned())
                    .col(ColumnDef::new(Blobs::Size).big_integer().not_null())
                    .col(text(Blobs::Sha256))
                    .col(text(Blobs::ContentType))
                    .col(text(Blobs::ETag))
                    .col(time(Blobs::Created))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Artifacts::Table.into_iden(),
            Models::Table.into_iden(),
            Blobs::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
