//! Projects indexed by status and then by creation, instead of by status alone. The operator's
//! listing shows the newest projects, of one status or of all: with `created_at` in the index it
//! reads each status's newest entries backwards and stops at the limit, where it sorted every
//! project of the status (or scanned the table) on each call. Counting a status still reads
//! only that status's entries. A project's status changes were already written to an index
//! on status, so its writes cost what they did.
//!
//! On Postgres the indexes are built and dropped `CONCURRENTLY`, outside a transaction: a
//! table of millions of projects takes seconds to index, and a plain `CREATE INDEX` would hold
//! every project write (each webhook's transaction that changes a project) for as long. A
//! build cut short (the process killed) leaves an invalid index behind, so each build first
//! drops whatever index has its name.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// An index on projects: its name and its columns.
struct ProjectsIndex(&'static str, &'static str);

const BY_STATUS: ProjectsIndex = ProjectsIndex("idx_projects_status", "status");
const BY_STATUS_AND_AGE: ProjectsIndex =
    ProjectsIndex("idx_projects_status_created", "status, created_at");

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace_index(manager, BY_STATUS, BY_STATUS_AND_AGE).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace_index(manager, BY_STATUS_AND_AGE, BY_STATUS).await
    }

    /// `CREATE INDEX CONCURRENTLY` cannot run inside a transaction. SQLite runs migrations
    /// outside one anyway; every step below can be run again after a failure.
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}

/// Builds `new`, then drops `old`.
async fn replace_index(
    manager: &SchemaManager<'_>,
    ProjectsIndex(old, _): ProjectsIndex,
    ProjectsIndex(new, columns): ProjectsIndex,
) -> Result<(), DbErr> {
    let concurrently = match manager.get_database_backend() {
        sea_orm::DbBackend::Postgres => "CONCURRENTLY ",
        _ => "",
    };
    let db = manager.get_connection();
    for sql in [
        format!("DROP INDEX {concurrently}IF EXISTS {new}"),
        format!("CREATE INDEX {concurrently}{new} ON projects ({columns})"),
        format!("DROP INDEX {concurrently}IF EXISTS {old}"),
    ] {
        db.execute_unprepared(&sql).await?;
    }
    Ok(())
}
