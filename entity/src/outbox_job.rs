//! A durable outbound call, written in the same transaction as the state change that causes
//! it and sent by the outbox worker.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox_jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// `generate_scene|extract_last_frame|stitch|notify`
    pub kind: String,
    /// `video|last_frame|stitch|notification`
    pub service: String,
    pub payload: Json,
    /// `pending|in_flight|done|dead`
    pub status: String,
    pub attempts: i32,
    /// When a pending job is due; for an in-flight job, when its lease expires.
    pub next_attempt_at: DateTimeUtc,
    pub last_error: Option<String>,
    /// Request id of the webhook or API call that created the job, for log correlation.
    pub request_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
