//! The `tasks`, `task_tags` and `task_user_properties` tables.
//!
//! Indexes follow the list queries: the default order (`created`, `id`),
//! `last_update` (GetTaskByName, recency orders), the list filters on
//! project, status, parent, user and queue, and tag lookups by
//! `(is_system, tag)`. On PostgreSQL the text columns lists order by use the
//! `C` collation, so both backends order names bytewise and page the same.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    Id,
    Name,
    ProjectId,
    TaskType,
    Status,
    StatusReason,
    StatusMessage,
    StatusChanged,
    Comment,
    Tags,
    SystemTags,
    ParentId,
    UserId,
    Created,
    Started,
    Completed,
    Published,
    LastUpdate,
    LastChange,
    LastChangedBy,
    LastWorker,
    LastWorkerReport,
    EnqueueStatus,
    QueueId,
    OutputDestination,
    OutputResult,
    OutputError,
    Script,
    Container,
    Execution,
    Hyperparams,
    Configuration,
    UserProperties,
    Runtime,
    Models,
    Revision,
}

#[derive(DeriveIden)]
enum TaskTags {
    Table,
    TaskId,
    IsSystem,
    Tag,
}

#[derive(DeriveIden)]
enum TaskUserProperties {
    Table,
    TaskId,
    Name,
    Value,
}

// The trait declares `&SchemaManager` with an elided lifetime; spelling it
// out would no longer match the trait under `async_trait`.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        // Bytewise ordering on PostgreSQL, as SQLite's default BINARY.
        let ordered = |def: &mut ColumnDef| {
            if postgres {
                def.extra("COLLATE \"C\"");
            }
        };
        let text = |name: Tasks| {
            let mut def = ColumnDef::new(name);
            def.text().not_null().default("");
            def
        };
        let time = |name: Tasks| {
            let mut def = ColumnDef::new(name);
            def.big_integer().null();
            def
        };

        let mut id = ColumnDef::new(Tasks::Id);
        id.text().not_null().primary_key();
        ordered(&mut id);
        let mut name = ColumnDef::new(Tasks::Name);
        name.text().not_null();
        ordered(&mut name);
        let mut task_type = ColumnDef::new(Tasks::TaskType);
        task_type.text().not_null();
        ordered(&mut task_type);
        let mut status = ColumnDef::new(Tasks::Status);
        status.text().not_null();
        ordered(&mut status);

        manager
            .create_table(
                Table::create()
                    .table(Tasks::Table)
                    .if_not_exists()
                    .col(id)
                    .col(name)
                    .col(text(Tasks::ProjectId))
                    .col(task_type)
                    .col(status)
                    .col(text(Tasks::StatusReason))
                    .col(text(Tasks::StatusMessage))
                    .col(time(Tasks::StatusChanged))
                    .col(text(Tasks::Comment))
                    .col(text(Tasks::Tags))
                    .col(text(Tasks::SystemTags))
                    .col(text(Tasks::ParentId))
                    .col(text(Tasks::UserId))
                    .col(ColumnDef::new(Tasks::Created).big_integer().not_null())
                    .col(time(Tasks::Started))
                    .col(time(Tasks::Completed))
                    .col(time(Tasks::Published))
                    .col(ColumnDef::new(Tasks::LastUpdate).big_integer().not_null())
                    .col(time(Tasks::LastChange))
                    .col(text(Tasks::LastChangedBy))
                    .col(text(Tasks::LastWorker))
                    .col(time(Tasks::LastWorkerReport))
                    .col(text(Tasks::EnqueueStatus))
                    .col(text(Tasks::QueueId))
                    .col(text(Tasks::OutputDestination))
                    .col(text(Tasks::OutputResult))
                    .col(text(Tasks::OutputError))
                    .col(text(Tasks::Script))
                    .col(text(Tasks::Container))
                    .col(text(Tasks::Execution))
                    .col(text(Tasks::Hyperparams))
                    .col(text(Tasks::Configuration))
                    .col(text(Tasks::UserProperties))
                    .col(text(Tasks::Runtime))
                    .col(text(Tasks::Models))
                    .col(
                        ColumnDef::new(Tasks::Revision)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;

        let indexes: [(&str, &[Tasks]); 8] = [
            ("idx_tasks_created", &[Tasks::Created, Tasks::Id]),
            ("idx_tasks_last_update", &[Tasks::LastUpdate, Tasks::Id]),
            (
                "idx_tasks_project_name",
                &[Tasks::ProjectId, Tasks::Name, Tasks::LastUpdate],
            ),
            (
                "idx_tasks_status_created",
                &[Tasks::Status, Tasks::Created, Tasks::Id],
            ),
            ("idx_tasks_parent", &[Tasks::ParentId]),
            ("idx_tasks_user", &[Tasks::UserId]),
            ("idx_tasks_queue", &[Tasks::QueueId]),
            ("idx_tasks_name", &[Tasks::Name, Tasks::Id]),
        ];
        for (name, cols) in indexes {
            let mut index = Index::create();
            index.name(name).table(Tasks::Table).if_not_exists();
            for col in cols {
                index.col(*col);
            }
            manager.create_index(index.to_owned()).await?;
        }

        // Task ids compare with `tasks.id`: same collation, or PostgreSQL
        // cannot use the side tables' indexes for the join.
        let mut task_tag_id = ColumnDef::new(TaskTags::TaskId);
        task_tag_id.text().not_null();
        ordered(&mut task_tag_id);
        let mut property_task_id = ColumnDef::new(TaskUserProperties::TaskId);
        property_task_id.text().not_null();
        ordered(&mut property_task_id);
        let mut tag = ColumnDef::new(TaskTags::Tag);
        tag.text().not_null();
        manager
            .create_table(
                Table::create()
                    .table(TaskTags::Table)
                    .if_not_exists()
                    .col(task_tag_id)
                    .col(ColumnDef::new(TaskTags::IsSystem).boolean().not_null())
                    .col(tag)
                    .primary_key(
                        Index::create()
                            .col(TaskTags::TaskId)
                            .col(TaskTags::IsSystem)
                            .col(TaskTags::Tag),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_task_tags_task")
                            .from(TaskTags::Table, TaskTags::TaskId)
                            .to(Tasks::Table, Tasks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_task_tags_tag")
                    .table(TaskTags::Table)
                    .if_not_exists()
                    .col(TaskTags::IsSystem)
                    .col(TaskTags::Tag)
                    .col(TaskTags::TaskId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TaskUserProperties::Table)
                    .if_not_exists()
                    .col(property_task_id)
                    .col(ColumnDef::new(TaskUserProperties::Name).text().not_null())
                    .col(ColumnDef::new(TaskUserProperties::Value).text().not_null())
                    .primary_key(
                        Index::create()
                            .col(TaskUserProperties::TaskId)
                            .col(TaskUserProperties::Name),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_task_user_properties_task")
                            .from(TaskUserProperties::Table, TaskUserProperties::TaskId)
                            .to(Tasks::Table, Tasks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_task_user_properties_value")
                    .table(TaskUserProperties::Table)
                    .if_not_exists()
                    .col(TaskUserProperties::Name)
                    .col(TaskUserProperties::Value)
                    .col(TaskUserProperties::TaskId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(TaskUserProperties::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(TaskTags::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Tasks::Table).to_owned())
            .await
    }
}
