//! Creates the `projects` table and its indexes.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Projects {
    Table,
    Id,
    ParentId,
    Name,
    Path,
    Ancestors,
    Description,
    Overview,
    Tags,
    SystemTags,
    DefaultOutputDestination,
    UserId,
    Created,
    LastUpdate,
}

// The trait elides `SchemaManager`'s lifetime; naming it here would not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Projects::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Projects::Id)
                            .string_len(32)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Projects::ParentId).string_len(32).not_null())
                    // 255 characters are at most 1020 bytes: small enough for a
                    // PostgreSQL btree index entry.
                    .col(ColumnDef::new(Projects::Name).string_len(255).not_null())
                    .col(ColumnDef::new(Projects::Path).text().not_null())
                    .col(ColumnDef::new(Projects::Ancestors).text().not_null())
                    .col(ColumnDef::new(Projects::Description).text().not_null())
                    .col(ColumnDef::new(Projects::Overview).text().not_null())
                    .col(ColumnDef::new(Projects::Tags).text().not_null())
                    .col(ColumnDef::new(Projects::SystemTags).text().not_null())
                    .col(
                        ColumnDef::new(Projects::DefaultOutputDestination)
                            .text()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Projects::UserId).text().not_null())
                    .col(
                        ColumnDef::new(Projects::Created)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Projects::LastUpdate)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Sibling names are unique: this is what keeps every path unique.
        manager
            .create_index(
                Index::create()
                    .name("projects_parent_id_name_key")
                    .table(Projects::Table)
                    .col(Projects::ParentId)
                    .col(Projects::Name)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("projects_user_id_idx")
                    .table(Projects::Table)
                    .col(Projects::UserId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Projects::Table).to_owned())
            .await
    }
}
