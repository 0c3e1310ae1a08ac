//! The pipeline's transactions: a webhook's whole effect (delivery row, state change, outbox
//! jobs) in one transaction, and the operator's project commands.

use chrono::{DateTime, Utc};
use entity::{outbox_job, project, scene, webhook_delivery};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};

use crate::{
    domain::{
        Effects, Limits, ProjectState, ProjectStatus, SceneState, SceneStatus, TransitionError,
        apply_callback, record_video_task, start_generation, webhook::Callback,
    },
    outbox::jobs::{JobContext, new_job_rows},
};

/// What became of a webhook delivery.
#[derive(Debug)]
pub enum IngestOutcome {
    /// Committed: the state changed and these effects were queued.
    Accepted(Effects),
    /// The same delivery was already committed; nothing was done again.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("project not found")]
    ProjectNotFound,
    #[error("{0:?}")]
    Transition(TransitionError),
    #[error("an id is already taken")]
    IdTaken,
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// One webhook delivery, as recorded for idempotency and analytics.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub kind: &'a str,
    pub key: &'a str,
}

/// Applies a verified callback in one transaction: the delivery row (unique per kind and
/// key: a concurrent duplicate waits for this commit and then finds the row), the project
/// and scene changes, and the outbox rows. Nothing is written unless all of it is.
pub async fn ingest(
    db: &DatabaseConnection,
    delivery: &Delivery<'_>,
    callback: &Callback,
    limits: &Limits,
    jobs: &JobContext,
) -> Result<IngestOutcome, PipelineError> {
    let txn = db.begin().await?;
    let now = Utc::now();
    let inserted = webhook_delivery::Entity::insert(webhook_delivery::ActiveModel {
        id: NotSet,
        kind: Set(delivery.kind.to_owned()),
        delivery_key: Set(delivery.key.to_owned()),
        task_id: Set(Some(callback.task_id().to_owned())),
        scene_id: Set(callback.scene_id().map(|s| s.to_string())),
        project_id: Set(Some(callback.project_id().to_string())),
        outcome: Set("accepted".to_owned()),
        received_at: Set(now),
    })
    .on_conflict_do_nothing_on([
        webhook_delivery::Column::Kind,
        webhook_delivery::Column::DeliveryKey,
    ])
    .exec_without_returning(&txn)
    .await?;
    if !matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
        txn.rollback().await?;
        return Ok(IngestOutcome::Duplicate);
    }
    let (mut state, loaded) = load_state(&txn, callback.project_id().as_str())
        .await?
        .ok_or(PipelineError::ProjectNotFound)?;
    let effects =
        apply_callback(&mut state, callback, limits).map_err(PipelineError::Transition)?;
    persist(&txn, &loaded.statuses(), &state, &effects, jobs, now).await?;
    txn.commit().await?;
    loaded.record_durations(&state, now);
    Ok(IngestOutcome::Accepted(effects))
}

/// What a transition started from, to time the pipeline's steps once it is committed.
struct Loaded {
    project_created_at: DateTime<Utc>,
    /// Per scene: its status when loaded and since when it held it.
    scenes: Vec<(SceneStatus, Option<DateTime<Utc>>)>,
}

impl Loaded {
    fn statuses(&self) -> Vec<SceneStatus> {
        self.scenes.iter().map(|(status, _)| *status).collect()
    }

    fn record_durations(&self, state: &ProjectState, now: DateTime<Utc>) {
        let seconds =
            |since: DateTime<Utc>| (now - since).num_milliseconds().max(0) as f64 / 1000.0;
        for (scene, (before, since)) in state.scenes.iter().zip(&self.scenes) {
            let step = match before {
                SceneStatus::Generating => "generation",
                SceneStatus::Extracting => "extraction",
                _ => continue,
            };
            if scene.status != *before
                && let Some(since) = since
            {
                metrics::histogram!("scenehook_pipeline_scene_step_seconds", "step" => step)
                    .record(seconds(*since));
            }
        }
        if state.just_completed {
            metrics::histogram!("scenehook_pipeline_project_duration_seconds")
                .record(seconds(self.project_created_at));
        }
        if state.changed {
            metrics::counter!("scenehook_pipeline_project_transitions_total",
                "to" => state.status.as_str())
            .increment(1);
        }
    }
}

/// Loads a project and its scenes, locking the project row on Postgres so that concurrent
/// webhooks of one project apply one after the other.
async fn load_state(
    txn: &DatabaseTransaction,
    project_id: &str,
) -> Result<Option<(ProjectState, Loaded)>, DbErr> {
    let mut query = project::Entity::find_by_id(project_id.to_owned());
    if super::is_postgres(txn) {
        query = query.lock_exclusive();
    }
    let Some(project) = query.one(txn).await? else {
        return Ok(None);
    };
    let scenes = scene::Entity::find()
        .filter(scene::Column::ProjectId.eq(project_id))
        .order_by_asc(scene::Column::Position)
        .all(txn)
        .await?;
    let loaded = Loaded {
        project_created_at: project.created_at,
        scenes: scenes
            .iter()
            .map(|s| {
                let status = SceneStatus::parse(&s.status).unwrap_or(SceneStatus::Failed);
                (status, s.status_changed_at)
            })
            .collect(),
    };
    Ok(Some((to_state(project, scenes), loaded)))
}

fn to_state(project: project::Model, scenes: Vec<scene::Model>) -> ProjectState {
    ProjectState {
        status: ProjectStatus::parse(&project.status).unwrap_or(ProjectStatus::Failed),
        id: project.id,
        final_video_url: project.final_video_url,
        stitch_attempts: project.stitch_attempts,
        last_error: project.last_error,
        just_completed: false,
        changed: false,
        scenes: scenes.into_iter().map(scene_state).collect(),
    }
}

fn scene_state(s: scene::Model) -> SceneState {
    SceneState {
        status: SceneStatus::parse(&s.status).unwrap_or(SceneStatus::Failed),
        id: s.id,
        position: s.position,
        prompt: s.prompt,
        video_task_id: s.video_task_id,
        video_url: s.video_url,
        first_frame_url: s.first_frame_url,
        last_frame_url: s.last_frame_url,
        attempts: s.attempts,
        extract_attempts: s.extract_attempts,
        last_error: s.last_error,
        just_verified: false,
        changed: false,
    }
}

async fn update_scene(
    txn: &impl ConnectionTrait,
    scene: &SceneState,
    status_changed: bool,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    scene::Entity::update_many()
        .set(scene::ActiveModel {
            status: Set(scene.status.as_str().to_owned()),
            video_task_id: Set(scene.video_task_id.clone()),
            video_url: Set(scene.video_url.clone()),
            first_frame_url: Set(scene.first_frame_url.clone()),
            last_frame_url: Set(scene.last_frame_url.clone()),
            attempts: Set(scene.attempts),
            extract_attempts: Set(scene.extract_attempts),
            last_error: Set(scene.last_error.clone()),
            verified_at: if scene.just_verified {
                Set(Some(now))
            } else {
                NotSet
            },
            status_changed_at: if status_changed {
                Set(Some(now))
            } else {
                NotSet
            },
            updated_at: Set(now),
            ..Default::default()
        })
        .filter(scene::Column::Id.eq(scene.id.as_str()))
        .exec(txn)
        .await?;
    Ok(())
}

/// Writes what a transition changed and queues its jobs. `before` holds each scene's status
/// as loaded.
async fn persist(
    txn: &DatabaseTransaction,
    before: &[SceneStatus],
    state: &ProjectState,
    effects: &Effects,
    jobs: &JobContext,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    if state.changed {
        project::Entity::update_many()
            .set(project::ActiveModel {
                status: Set(state.status.as_str().to_owned()),
                final_video_url: Set(state.final_video_url.clone()),
                stitch_attempts: Set(state.stitch_attempts),
                last_error: Set(state.last_error.clone()),
                completed_at: if state.just_completed {
                    Set(Some(now))
                } else {
                    NotSet
                },
                updated_at: Set(now),
                ..Default::default()
            })
            .filter(project::Column::Id.eq(state.id.as_str()))
            .exec(txn)
            .await?;
    }
    for (scene, before) in state.scenes.iter().zip(before) {
        if scene.changed {
            update_scene(txn, scene, scene.status != *before, now).await?;
        }
    }
    let rows = new_job_rows(&state.id, &effects.jobs, jobs, now);
    if !rows.is_empty() {
        outbox_job::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// A new project with its scenes, positions 0..n-1.
pub struct NewProject {
    pub id: String,
    pub name: String,
    /// (scene id, prompt) in order.
    pub scenes: Vec<(String, String)>,
}

/// A project and its scenes as stored.
pub type ProjectWithScenes = (project::Model, Vec<scene::Model>);

pub async fn create_project(
    db: &DatabaseConnection,
    new: NewProject,
) -> Result<ProjectWithScenes, PipelineError> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let project = project::ActiveModel {
        id: Set(new.id.clone()),
        name: Set(new.name),
        status: Set(ProjectStatus::Draft.as_str().to_owned()),
        final_video_url: Set(None),
        stitch_attempts: Set(0),
        last_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        completed_at: Set(None),
    };
    let scenes: Vec<scene::ActiveModel> = new
        .scenes
        .into_iter()
        .enumerate()
        .map(|(position, (id, prompt))| scene::ActiveModel {
            id: Set(id),
            project_id: Set(new.id.clone()),
            position: Set(position as i32),
            prompt: Set(prompt),
            status: Set(SceneStatus::Pending.as_str().to_owned()),
            video_task_id: Set(None),
            video_url: Set(None),
            first_frame_url: Set(None),
            last_frame_url: Set(None),
            attempts: Set(0),
            extract_attempts: Set(0),
            last_error: Set(None),
            verified_at: Set(None),
            status_changed_at: Set(Some(now)),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .collect();
    let result = async {
        project::Entity::insert(project)
            .exec_without_returning(&txn)
            .await?;
        scene::Entity::insert_many(scenes)
            .exec_without_returning(&txn)
            .await?;
        Ok::<_, DbErr>(())
    }
    .await;
    match result {
        Ok(()) => txn.commit().await?,
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            return Err(PipelineError::IdTaken);
        }
        Err(e) => return Err(e.into()),
    }
    find_project(db, &new.id)
        .await?
        .ok_or(PipelineError::ProjectNotFound)
}

pub async fn find_project(
    db: &impl ConnectionTrait,
    id: &str,
) -> Result<Option<ProjectWithScenes>, DbErr> {
    let Some(project) = project::Entity::find_by_id(id.to_owned()).one(db).await? else {
        return Ok(None);
    };
    let scenes = scene::Entity::find()
        .filter(scene::Column::ProjectId.eq(id))
        .order_by_asc(scene::Column::Position)
        .all(db)
        .await?;
    Ok(Some((project, scenes)))
}

pub async fn list_projects(
    db: &DatabaseConnection,
    status: Option<ProjectStatus>,
    limit: u64,
) -> Result<Vec<project::Model>, DbErr> {
    let mut query = project::Entity::find()
        .order_by_desc(project::Column::CreatedAt)
        .limit(limit);
    if let Some(status) = status {
        query = query.filter(project::Column::Status.eq(status.as_str()));
    }
    query.all(db).await
}

/// The operator's `generate`: starts or resumes a project, in one transaction.
pub async fn generate(
    db: &DatabaseConnection,
    project_id: &str,
    jobs: &JobContext,
) -> Result<Effects, PipelineError> {
    let txn = db.begin().await?;
    let (mut state, loaded) = load_state(&txn, project_id)
        .await?
        .ok_or(PipelineError::ProjectNotFound)?;
    let effects = start_generation(&mut state).map_err(PipelineError::Transition)?;
    persist(&txn, &loaded.statuses(), &state, &effects, jobs, Utc::now()).await?;
    txn.commit().await?;
    Ok(effects)
}

/// Stores the task id the video service answered with, unless the callback got there first.
pub async fn store_video_task(
    db: &DatabaseConnection,
    scene_id: &str,
    task_id: &str,
) -> Result<bool, DbErr> {
    let txn = db.begin().await?;
    let Some(model) = scene::Entity::find_by_id(scene_id.to_owned())
        .one(&txn)
        .await?
    else {
        return Ok(false);
    };
    let mut state = scene_state(model);
    let stored = record_video_task(&mut state, task_id);
    if stored {
        update_scene(&txn, &state, false, Utc::now()).await?;
    }
    txn.commit().await?;
    Ok(stored)
}

/// Counts projects by status, for metrics.
pub async fn project_counts(db: &DatabaseConnection) -> Result<Vec<(String, i64)>, DbErr> {
    use sea_orm::FromQueryResult;
    #[derive(FromQueryResult)]
    struct Row {
        status: String,
        n: i64,
    }
    let rows = Row::find_by_statement(sea_orm::Statement::from_string(
        db.get_database_backend(),
        "SELECT status, COUNT(*) AS n FROM projects GROUP BY status",
    ))
    .all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.n)).collect())
}
