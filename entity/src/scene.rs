//! One scene of a project: a clip generated from a prompt and, after the first scene, from the
//! previous scene's last frame.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "scenes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub project_id: String,
    pub position: i32,
    pub prompt: String,
    /// `pending|generating|video_ready|extracting|verified|failed`
    pub status: String,
    pub video_task_id: Option<String>,
    pub video_url: Option<String>,
    pub first_frame_url: Option<String>,
    pub last_frame_url: Option<String>,
    /// Generation attempts made so far.
    pub attempts: i32,
    /// Last-frame extraction attempts made so far.
    pub extract_attempts: i32,
    pub last_error: Option<String>,
    pub verified_at: Option<DateTimeUtc>,
    /// When `status` last changed: the start of the current step, for step durations.
    pub status_changed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::project::Entity",
        from = "Column::ProjectId",
        to = "super::project::Column::Id",
        on_delete = "Cascade"
    )]
    Project,
}

impl Related<super::project::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Project.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
