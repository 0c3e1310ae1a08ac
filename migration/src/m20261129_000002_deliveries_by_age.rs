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
        replace_index(
            manager,
            BY_PROJECT,
            BY_AGE,
            &[WebhookDeliveries::ReceivedAt],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace_index(
            manager,
            BY_AGE,
            BY_PROJECT,
            &[WebhookDeliveries::ProjectId, WebhookDeliveries::ReceivedAt],
        )
        .await
    }
}

/// Drops the deliveries' index `old` and creates `new` on `columns`.
async fn replace_index(
    manager: &SchemaManager<'_>,
    old: &str,
    new: &str,
    columns: &[WebhookDeliveries],
) -> Result<(), DbErr> {
    manager
        .drop_index(
            Index::drop()
                .name(old)
                .table(WebhookDeliveries::Table)
                .to_owned(),
        )
        .await?;
    let mut index = Index::create();
    index.name(new).table(WebhookDeliveries::Table);
    for column in columns {
        index.col(*column);
    }
    manager.create_index(index.to_owned()).await
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookDeliveries {
    Table,
    ProjectId,
    ReceivedAt,
}
