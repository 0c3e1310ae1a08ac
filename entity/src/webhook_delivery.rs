//! One accepted webhook delivery. The unique `(kind, delivery_key)` pair is what makes
//! webhooks idempotent across instances.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub kind: String,
    pub delivery_key: String,
    pub task_id: Option<String>,
    pub scene_id: Option<String>,
    pub project_id: Option<String>,
    pub outcome: String,
    pub received_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
