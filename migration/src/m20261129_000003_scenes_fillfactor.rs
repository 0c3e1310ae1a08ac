//! Room on the scenes' pages for their updates (Postgres). A scene is written when its project
//! is created and then updated at every step (generating, its clip, extracting, verified),
//! never in an indexed column. With full pages each update puts the new version on another
//! page and adds it to both of the table's indexes; with room left on the page it is a HOT
//! update — the same page, no index entries — and the old versions are pruned in place.
//! SQLite rewrites a row in place and has no such setting.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, "ALTER TABLE scenes SET (fillfactor = 70)").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, "ALTER TABLE scenes RESET (fillfactor)").await
    }
}

async fn on_postgres(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
        manager.get_connection().execute_unprepared(sql).await?;
    }
    Ok(())
}
