//! Delivery ids without SQLite's `AUTOINCREMENT`. With it, every insert also reads and
//! rewrites the `sqlite_sequence` row, one more B-tree write per webhook, so that an id is
//! never used twice even after the newest row was deleted. Nothing needs that here: delivery
//! ids stay inside the database (the claims of a batch, the delete of a rejected delivery), and
//! a plain `INTEGER PRIMARY KEY` still numbers rows in insertion order. Measured: 1-8 % more
//! webhooks per second embedded, in six paired runs (docs/PERFORMANCE.md). SQLite cannot alter
//! a column's key, so the table is rebuilt, in one transaction; Postgres's identity column
//! stays as it is.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    // The rebuild must not stop halfway: SQLite runs migrations outside a transaction unless
    // asked to.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild_on_sqlite(manager, "").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild_on_sqlite(manager, " AUTOINCREMENT").await
    }
}

/// Rebuilds `webhook_deliveries` with `key` after its primary key, keeping its rows, ids and
/// indexes (as migration 2 left them).
async fn rebuild_on_sqlite(manager: &SchemaManager<'_>, key: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != sea_orm::DbBackend::Sqlite {
        return Ok(());
    }
    const COLUMNS: &str =
        "id, kind, delivery_key, task_id, scene_id, project_id, outcome, received_at";
    let statements = [
        format!(
            "CREATE TABLE webhook_deliveries_rebuilt ( \
             \"id\" integer NOT NULL PRIMARY KEY{key}, \"kind\" varchar(32) NOT NULL, \
             \"delivery_key\" varchar NOT NULL, \"task_id\" varchar NULL, \
             \"scene_id\" varchar(64) NULL, \"project_id\" varchar(64) NULL, \
             \"outcome\" varchar(32) NOT NULL, \
             \"received_at\" timestamp_with_timezone_text NOT NULL )"
        ),
        format!(
            "INSERT INTO webhook_deliveries_rebuilt ({COLUMNS}) \
             SELECT {COLUMNS} FROM webhook_deliveries"
        ),
        "DROP TABLE webhook_deliveries".into(),
        "ALTER TABLE webhook_deliveries_rebuilt RENAME TO webhook_deliveries".into(),
        "CREATE UNIQUE INDEX uq_webhook_deliveries_kind_key \
         ON webhook_deliveries (kind, delivery_key)"
            .into(),
        "CREATE INDEX idx_webhook_deliveries_received_at ON webhook_deliveries (received_at)"
            .into(),
    ];
    for sql in statements {
        manager.get_connection().execute_unprepared(&sql).await?;
    }
    Ok(())
}
