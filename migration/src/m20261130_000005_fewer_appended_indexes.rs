//! Two indexes fewer on the tables every webhook appends to. Each index a batch appends to
//! rewrites its last page (and, as it fills, the page above) at every commit: on SQLite ~3 WAL
//! frames a commit for each, against ~2 frames a webhook for the scene and the delivery's key.
//! Neither index serves a lookup that another way does not serve as well:
//! - `idx_webhook_deliveries_received_at`: retention deletes deliveries by age, and delivery ids
//!   grow with time, so it deletes the ids before the first one young enough to keep, found by
//!   a binary search over ids (`db::prune`).
//! - `idx_outbox_jobs_status_next`: the job queries by status name every service, so the
//!   claims' index on (service, status, next attempt) serves them (`db::outbox`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(DELIVERIES_BY_AGE)
                    .table(WebhookDeliveries::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(JOBS_BY_STATUS)
                    .table(OutboxJobs::Table)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(DELIVERIES_BY_AGE)
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::ReceivedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(JOBS_BY_STATUS)
                    .table(OutboxJobs::Table)
                    .col(OutboxJobs::Status)
                    .col(OutboxJobs::NextAttemptAt)
                    .to_owned(),
            )
            .await
    }
}

const DELIVERIES_BY_AGE: &str = "idx_webhook_deliveries_received_at";
const JOBS_BY_STATUS: &str = "idx_outbox_jobs_status_next";

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum OutboxJobs {
    Table,
    Status,
    NextAttemptAt,
}
