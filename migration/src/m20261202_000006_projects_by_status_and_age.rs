//! Projects indexed by status and then by creation, instead of by status alone. The operator's
//! listing shows the newest projects, of one status or of all: with `created_at` in the index it
//! reads each status's newest entries backwards and stops at the limit, where it sorted every
//! project of the status (or scanned the table) on each call. Counting a status still reads
//! only that status's entries. A project's status changes were already written to an index
//! on status, so its writes cost what they did.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const BY_STATUS: &str = "idx_projects_status";
const BY_STATUS_AND_AGE: &str = "idx_projects_status_created";

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(BY_STATUS_AND_AGE)
                    .table(Projects::Table)
                    .col(Projects::Status)
                    .col(Projects::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(BY_STATUS)
                    .table(Projects::Table)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(BY_STATUS)
                    .table(Projects::Table)
                    .col(Projects::Status)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(BY_STATUS_AND_AGE)
                    .table(Projects::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Projects {
    Table,
    Status,
    CreatedAt,
}
