//! Projects, scenes, webhook deliveries and the outbox, with an index for every lookup the
//! gateway makes.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Projects::Table)
                    .col(string_len(Projects::Id, 64).primary_key())
                    .col(string(Projects::Name))
                    .col(string_len(Projects::Status, 16))
                    .col(text_null(Projects::FinalVideoUrl))
                    .col(integer(Projects::StitchAttempts).default(0))
                    .col(text_null(Projects::LastError))
                    .col(timestamp_with_time_zone(Projects::CreatedAt))
                    .col(timestamp_with_time_zone(Projects::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Projects::CompletedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_projects_status")
                    .table(Projects::Table)
                    .col(Projects::Status)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Scenes::Table)
                    .col(string_len(Scenes::Id, 64).primary_key())
                    .col(string_len(Scenes::ProjectId, 64))
                    .col(integer(Scenes::Position))
                    .col(text(Scenes::Prompt))
                    .col(string_len(Scenes::Status, 16))
                    .col(string_null(Scenes::VideoTaskId))
                    .col(text_null(Scenes::VideoUrl))
                    .col(text_null(Scenes::FirstFrameUrl))
                    .col(text_null(Scenes::LastFrameUrl))
                    .col(integer(Scenes::Attempts).default(0))
                    .col(integer(Scenes::ExtractAttempts).default(0))
                    .col(text_null(Scenes::LastError))
                    .col(timestamp_with_time_zone_null(Scenes::VerifiedAt))
                    .col(timestamp_with_time_zone_null(Scenes::StatusChangedAt))
                    .col(timestamp_with_time_zone(Scenes::CreatedAt))
                    .col(timestamp_with_time_zone(Scenes::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_scenes_project")
                            .from(Scenes::Table, Scenes::ProjectId)
                            .to(Projects::Table, Projects::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_scenes_project_position")
                    .table(Scenes::Table)
                    .col(Scenes::ProjectId)
                    .col(Scenes::Position)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .col(big_pk_auto(WebhookDeliveries::Id))
                    .col(string_len(WebhookDeliveries::Kind, 32))
                    .col(string(WebhookDeliveries::DeliveryKey))
                    .col(string_null(WebhookDeliveries::TaskId))
                    .col(string_len_null(WebhookDeliveries::SceneId, 64))
                    .col(string_len_null(WebhookDeliveries::ProjectId, 64))
                    .col(string_len(WebhookDeliveries::Outcome, 32))
                    .col(timestamp_with_time_zone(WebhookDeliveries::ReceivedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_webhook_deliveries_kind_key")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::Kind)
                    .col(WebhookDeliveries::DeliveryKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_deliveries_project")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::ProjectId)
                    .col(WebhookDeliveries::ReceivedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(OutboxJobs::Table)
                    .col(string_len(OutboxJobs::Id, 40).primary_key())
                    .col(string_len(OutboxJobs::Kind, 32))
                    .col(string_len(OutboxJobs::Service, 32))
                    .col(json(OutboxJobs::Payload))
                    .col(string_len(OutboxJobs::Status, 16))
                    .col(integer(OutboxJobs::Attempts).default(0))
                    .col(timestamp_with_time_zone(OutboxJobs::NextAttemptAt))
                    .col(text_null(OutboxJobs::LastError))
                    .col(string_len_null(OutboxJobs::RequestId, 64))
                    .col(timestamp_with_time_zone(OutboxJobs::CreatedAt))
                    .col(timestamp_with_time_zone(OutboxJobs::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // The worker's claim: due jobs of one service, oldest first.
        manager
            .create_index(
                Index::create()
                    .name("idx_outbox_jobs_due")
                    .table(OutboxJobs::Table)
                    .col(OutboxJobs::Service)
                    .col(OutboxJobs::Status)
                    .col(OutboxJobs::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_outbox_jobs_status_next")
                    .table(OutboxJobs::Table)
                    .col(OutboxJobs::Status)
                    .col(OutboxJobs::NextAttemptAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            OutboxJobs::Table.into_iden(),
            WebhookDeliveries::Table.into_iden(),
            Scenes::Table.into_iden(),
            Projects::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Projects {
    Table,
    Id,
    Name,
    Status,
    FinalVideoUrl,
    StitchAttempts,
    LastError,
    CreatedAt,
    UpdatedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum Scenes {
    Table,
    Id,
    ProjectId,
    Position,
    Prompt,
    Status,
    VideoTaskId,
    VideoUrl,
    FirstFrameUrl,
    LastFrameUrl,
    Attempts,
    ExtractAttempts,
    LastError,
    VerifiedAt,
    StatusChangedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    Id,
    Kind,
    DeliveryKey,
    TaskId,
    SceneId,
    ProjectId,
    Outcome,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum OutboxJobs {
    Table,
    Id,
    Kind,
    Service,
    Payload,
    Status,
    Attempts,
    NextAttemptAt,
    LastError,
    RequestId,
    CreatedAt,
    UpdatedAt,
}
