//! Webhook deliveries indexed by age instead of by project: nothing looks deliveries up by
//! project, so that index cost every webhook one more randomly placed page to write; retention
//! deletes them by age, which an index on `received_at` serves (and it grows at its end).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const BY_PROJECT: &str = "idx_webhook_deliveries_project";
const BY_AGE: &str = "idx_webhook_deliveries_received_at";

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(BY_PROJECT)
                    .table(WebhookDeliveries::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(BY_AGE)
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::ReceivedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(BY_AGE)
                    .table(WebhookDeliveries::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(BY_PROJECT)
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::ProjectId)
                    .col(WebhookDeliveries::ReceivedAt)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    ProjectId,
    ReceivedAt,
}
