//! The pipeline's rows: loading projects into [`Work`], applying transitions to them and
//! writing back what changed (shared by webhook ingestion in [`super::ingest`]), and the
//! operator's project commands.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::{outbox_job, project, scene};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, SqlErr,
    sea_query::{Asterisk, OnConflict, Order, Query, SelectStatement},
};

use crate::{
    domain::{
        Effects, ProjectState, ProjectStatus, SceneState, SceneStatus, TransitionError,
        record_video_task, start_generation,
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
    /// The rate limiter refused the delivery ([`super::ingest::Admission`]); nothing was written.
    #[error("not admitted by the rate limiter")]
    NotAdmitted,
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// A project as loaded (and locked) in a transaction: its row and the scenes' rows its
/// transitions read, kept up to date as they apply, and which of them need writing back.
pub(super) struct Work {
    project: project::Model,
    scenes: Vec<scene::Model>,
    project_dirty: bool,
    scene_dirty: Vec<bool>,
}

impl Work {
    fn new(project: project::Model) -> Self {
        Self {
            project,
            scenes: Vec::new(),
            project_dirty: false,
            scene_dirty: Vec::new(),
        }
    }

    /// Adds a scene; scenes come in position order.
    fn push_scene(&mut self, scene: scene::Model) {
        self.scenes.push(scene);
        self.scene_dirty.push(false);
    }

    fn state(&self) -> ProjectState {
        ProjectState {
            status: ProjectStatus::parse(&self.project.status).unwrap_or(ProjectStatus::Failed),
            id: self.project.id.clone(),
            final_video_url: self.project.final_video_url.clone(),
            stitch_attempts: self.project.stitch_attempts,
            last_error: self.project.last_error.clone(),
            just_completed: false,
            changed: false,
            scenes: self.scenes.iter().map(scene_state).collect(),
        }
    }

    /// Runs one transition on the project's current state. On success its changes are
    /// folded into the rows and its metrics noted; on error nothing changes, so the next
    /// transition of the same batch starts from the same rows.
    pub(super) fn apply(
        &mut self,
        transition: impl FnOnce(&mut ProjectState) -> Result<Effects, TransitionError>,
        now: DateTime<Utc>,
        observations: &mut Vec<Observation>,
    ) -> Result<Effects, TransitionError> {
        let mut state = self.state();
        let effects = transition(&mut state)?;
        for ((row, dirty), scene) in self
            .scenes
            .iter_mut()
            .zip(&mut self.scene_dirty)
            .zip(&state.scenes)
        {
            if scene.changed {
                absorb_scene(row, scene, now, observations);
                *dirty = true;
            }
        }
        if state.changed {
            let row = &mut self.project;
            row.status = state.status.as_str().to_owned();
            row.final_video_url = state.final_video_url;
            row.stitch_attempts = state.stitch_attempts;
            row.last_error = state.last_error;
            row.updated_at = now;
            if state.just_completed {
                row.completed_at = Some(now);
                observations.push(Observation::ProjectDuration(seconds_between(
                    row.created_at,
                    now,
                )));
            }
            observations.push(Observation::Transition(state.status));
            self.project_dirty = true;
        }
        Ok(effects)
    }
}

/// Folds a scene's new state into its row; a status change starts the next step's clock and
/// times the step that ended.
fn absorb_scene(
    row: &mut scene::Model,
    scene: &SceneState,
    now: DateTime<Utc>,
    observations: &mut Vec<Observation>,
) {
    if row.status != scene.status.as_str() {
        let step = match SceneStatus::parse(&row.status) {
            Some(SceneStatus::Generating) => Some("generation"),
            Some(SceneStatus::Extracting) => Some("extraction"),
            _ => None,
        };
        if let (Some(step), Some(since)) = (step, row.status_changed_at) {
            observations.push(Observation::Step(step, seconds_between(since, now)));
        }
        row.status = scene.status.as_str().to_owned();
        row.status_changed_at = Some(now);
    }
    row.video_task_id = scene.video_task_id.clone();
    row.video_url = scene.video_url.clone();
    row.first_frame_url = scene.first_frame_url.clone();
    row.last_frame_url = scene.last_frame_url.clone();
    row.attempts = scene.attempts;
    row.extract_attempts = scene.extract_attempts;
    row.last_error = scene.last_error.clone();
    if scene.just_verified {
        row.verified_at = Some(now);
    }
    row.updated_at = now;
}

fn seconds_between(since: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (now - since).num_milliseconds().max(0) as f64 / 1000.0
}

/// A pipeline metric noted inside a transaction, recorded only once it has committed.
pub(super) enum Observation {
    Step(&'static str, f64),
    ProjectDuration(f64),
    Transition(ProjectStatus),
}

pub(super) fn record(observations: Vec<Observation>) {
    for observation in observations {
        match observation {
            Observation::Step(step, seconds) => {
                metrics::histogram!("scenehook_pipeline_scene_step_seconds", "step" => step)
                    .record(seconds)
            }
            Observation::ProjectDuration(seconds) => {
                metrics::histogram!("scenehook_pipeline_project_duration_seconds").record(seconds)
            }
            Observation::Transition(to) => {
                metrics::counter!("scenehook_pipeline_project_transitions_total",
                    "to" => to.as_str())
                .increment(1)
            }
        }
    }
}

/// Loads a project with all its scenes (in position order); on Postgres its row is locked for
/// the transaction, as ingestion's writers lock the projects they change.
async fn load_project(txn: &DatabaseTransaction, project_id: &str) -> Result<Option<Work>, DbErr> {
    let mut query = project::Entity::find_by_id(project_id);
    if super::is_postgres(txn) {
        query = query.lock_exclusive();
    }
    let Some(project) = query.one(txn).await? else {
        return Ok(None);
    };
    let scenes = scene::Entity::find()
        .filter(scene::Column::ProjectId.eq(project_id))
        .all(txn)
        .await?;
    Ok(assemble(vec![project], scenes).remove(project_id))
}

/// Groups loaded rows into [`Work`]s, each with its scenes in position order, once each.
pub(super) fn assemble(
    projects: Vec<project::Model>,
    mut scenes: Vec<scene::Model>,
) -> HashMap<String, Work> {
    scenes.sort_by(|a, b| (&a.project_id, a.position).cmp(&(&b.project_id, b.position)));
    // A scene named by two callbacks of a batch is loaded twice.
    scenes.dedup_by(|a, b| a.id == b.id);
    let mut works: HashMap<String, Work> = projects
        .into_iter()
        .map(|p| (p.id.clone(), Work::new(p)))
        .collect();
    for scene in scenes {
        // A scene named under another project's id belongs to neither's transition.
        if let Some(work) = works.get_mut(&scene.project_id) {
            work.push_scene(scene);
        }
    }
    works
}

fn scene_state(s: &scene::Model) -> SceneState {
    SceneState {
        status: SceneStatus::parse(&s.status).unwrap_or(SceneStatus::Failed),
        id: s.id.clone(),
        position: s.position,
        prompt: s.prompt.clone(),
        video_task_id: s.video_task_id.clone(),
        video_url: s.video_url.clone(),
        first_frame_url: s.first_frame_url.clone(),
        last_frame_url: s.last_frame_url.clone(),
        attempts: s.attempts,
        extract_attempts: s.extract_attempts,
        last_error: s.last_error.clone(),
        just_verified: false,
        changed: false,
    }
}

/// Writes back the rows that changed and inserts `jobs`: one statement per table whatever
/// the number of projects (an upsert of whole rows, which updates the existing rows).
pub(super) async fn write<'a>(
    txn: &DatabaseTransaction,
    works: impl Iterator<Item = &'a Work>,
    jobs: Vec<outbox_job::Model>,
) -> Result<(), DbErr> {
    let (projects, scenes) = changed_rows(works);
    upsert_scenes(txn, scenes.into_iter().cloned().collect()).await?;
    let projects: Vec<project::Model> = projects.into_iter().cloned().collect();
    use project::Column as C;
    upsert(
        txn,
        projects,
        C::Id,
        [
            C::Status,
            C::FinalVideoUrl,
            C::StitchAttempts,
            C::LastError,
            C::CompletedAt,
            C::UpdatedAt,
        ],
    )
    .await?;
    if !jobs.is_empty() {
        outbox_job::Entity::insert_many(jobs.into_iter().map(as_new_row))
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// The rows of `works` that transitions changed.
pub(super) fn changed_rows<'a>(
    works: impl Iterator<Item = &'a Work>,
) -> (Vec<&'a project::Model>, Vec<&'a scene::Model>) {
    let mut projects = Vec::new();
    let mut scenes = Vec::new();
    for work in works {
        if work.project_dirty {
            projects.push(&work.project);
        }
        scenes.extend(
            work.scenes
                .iter()
                .zip(&work.scene_dirty)
                .filter(|(_, dirty)| **dirty)
                .map(|(row, _)| row),
        );
    }
    (projects, scenes)
}

async fn upsert_scenes(txn: &DatabaseTransaction, rows: Vec<scene::Model>) -> Result<(), DbErr> {
    use scene::Column as C;
    upsert(
        txn,
        rows,
        C::Id,
        [
            C::Status,
            C::VideoTaskId,
            C::VideoUrl,
            C::FirstFrameUrl,
            C::LastFrameUrl,
            C::Attempts,
            C::ExtractAttempts,
            C::LastError,
            C::VerifiedAt,
            C::StatusChangedAt,
            C::UpdatedAt,
        ],
    )
    .await
}

/// Writes rows back over the stored ones in one statement: an upsert of whole rows on `id`
/// that updates `columns`.
async fn upsert<M, A>(
    txn: &DatabaseTransaction,
    rows: Vec<M>,
    id: <A::Entity as EntityTrait>::Column,
    columns: impl IntoIterator<Item = <A::Entity as EntityTrait>::Column>,
) -> Result<(), DbErr>
where
    M: IntoActiveModel<A>,
    A: ActiveModelTrait + Send,
{
    if rows.is_empty() {
        return Ok(());
    }
    <A::Entity as EntityTrait>::insert_many(rows.into_iter().map(as_new_row))
        .on_conflict(OnConflict::column(id).update_columns(columns).to_owned())
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// A whole row with every column set, as an upsert needs it.
fn as_new_row<M, A>(model: M) -> A
where
    M: IntoActiveModel<A>,
    A: ActiveModelTrait,
{
    model.into_active_model().reset_all()
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

/// A new project's row: a draft, nothing tried yet.
pub fn new_project_row(id: String, name: String, now: DateTime<Utc>) -> project::ActiveModel {
    project::ActiveModel {
        id: Set(id),
        name: Set(name),
        status: Set(ProjectStatus::Draft.as_str().to_owned()),
        final_video_url: Set(None),
        stitch_attempts: Set(0),
        last_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        completed_at: Set(None),
    }
}

/// A new scene's row: pending, nothing tried yet.
pub fn new_scene_row(
    id: String,
    project_id: String,
    position: i32,
    prompt: String,
    now: DateTime<Utc>,
) -> scene::ActiveModel {
    scene::ActiveModel {
        id: Set(id),
        project_id: Set(project_id),
        position: Set(position),
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
    }
}

pub async fn create_project(
    db: &DatabaseConnection,
    new: NewProject,
) -> Result<ProjectWithScenes, PipelineError> {
    let now = super::clock::now();
    let txn = super::begin(db).await?;
    let project = new_project_row(new.id.clone(), new.name, now);
    let scenes: Vec<scene::ActiveModel> = new
        .scenes
        .into_iter()
        .enumerate()
        .map(|(position, (id, prompt))| {
            new_scene_row(id, new.id.clone(), position as i32, prompt, now)
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

/// The operator's listing: the newest `limit` projects, of `status` or of any.
pub async fn list_projects(
    db: &DatabaseConnection,
    status: Option<ProjectStatus>,
    limit: u64,
) -> Result<Vec<project::Model>, DbErr> {
    super::rows_of::<project::Entity>(db, &projects_listing(status, limit)).await
}

/// Each status's newest `limit` projects, read backwards along the index on (status,
/// creation) and stopping there, then the newest `limit` of those. Completed projects are
/// kept, by the million: ordered over the table, a listing would sort every project of its
/// status (or all of them) on each call. Public for tests and diagnostics (its plans).
pub fn projects_listing(status: Option<ProjectStatus>, limit: u64) -> SelectStatement {
    let statuses = status.map_or(ProjectStatus::ALL.to_vec(), |s| vec![s]);
    let arms = statuses.into_iter().map(|status| {
        Query::select()
            .column(Asterisk)
            .from(project::Entity)
            .and_where(project::Column::Status.eq(status.as_str()))
            .order_by(project::Column::CreatedAt, Order::Desc)
            .limit(limit)
            .to_owned()
    });
    super::latest_across(arms, project::Column::CreatedAt, limit)
}

/// The operator's `generate`: starts or resumes a project, in one transaction.
pub async fn generate(
    db: &DatabaseConnection,
    project_id: &str,
    jobs: &JobContext,
) -> Result<Effects, PipelineError> {
    let txn = super::begin(db).await?;
    let now = super::clock::now();
    let mut work = load_project(&txn, project_id)
        .await?
        .ok_or(PipelineError::ProjectNotFound)?;
    let mut observations = Vec::new();
    let effects = work
        .apply(start_generation, now, &mut observations)
        .map_err(PipelineError::Transition)?;
    let rows = new_job_rows(project_id, &effects.jobs, jobs, now);
    write(&txn, std::iter::once(&work), rows).await?;
    txn.commit().await?;
    record(observations);
    Ok(effects)
}

/// Stores the task id the video service answered with, unless the callback got there first.
pub async fn store_video_task(
    db: &DatabaseConnection,
    scene_id: &str,
    task_id: &str,
) -> Result<bool, DbErr> {
    let txn = super::begin(db).await?;
    // Locked, so that a callback committing meanwhile is read rather than overwritten.
    let mut query = scene::Entity::find_by_id(scene_id.to_owned());
    if super::is_postgres(&txn) {
        query = query.lock_exclusive();
    }
    let Some(mut row) = query.one(&txn).await? else {
        return Ok(false);
    };
    let mut state = scene_state(&row);
    let stored = record_video_task(&mut state, task_id);
    if stored {
        absorb_scene(&mut row, &state, super::clock::now(), &mut Vec::new());
        upsert_scenes(&txn, vec![row]).await?;
    }
    txn.commit().await?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use sea_orm::DbBackend;

    use super::*;
    use crate::db::query_plan;

    /// A listing reads each status's projects backwards along the index on (status,
    /// creation) and stops at its limit: it sorts only what those reads return.
    #[tokio::test]
    async fn a_projects_listing_reads_the_status_index_backwards_and_stops() {
        let (_dir, db) = crate::db::migrated().await;
        let search = "SEARCH projects USING INDEX idx_projects_status_created (status=?)";
        for (status, arms) in [(Some(ProjectStatus::Completed), 1), (None, 5)] {
            let steps =
                query_plan(&db, DbBackend::Sqlite.build(&projects_listing(status, 10))).await;
            assert!(
                crate::db::reads_each_arm_and_stops(&steps, search, arms, "projects"),
                "{steps:#?}"
            );
        }
    }

    /// A listing holds the newest projects of the status asked for, or of all.
    #[tokio::test]
    async fn a_projects_listing_holds_the_newest_asked_for() {
        let (_dir, db) = crate::db::migrated().await;
        // Project `n` created at minute `n`, the statuses in turn.
        crate::db::insert_projects(
            &db,
            (0..20).map(|n| {
                let status = ProjectStatus::ALL[n % ProjectStatus::ALL.len()];
                (
                    format!("p{n:02}"),
                    status,
                    format!("2026-12-01T10:{n:02}:00+00:00"),
                )
            }),
        )
        .await;
        let ids = async |status, limit| {
            let projects = list_projects(&db, status, limit).await.unwrap();
            projects.into_iter().map(|p| p.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(None, 3).await, ["p19", "p18", "p17"]);
        // Completed is the fourth status: 3, 8, 13, 18.
        let completed = ids(Some(ProjectStatus::Completed), 10).await;
        assert_eq!(completed, ["p18", "p13", "p08", "p03"]);
        assert_eq!(ids(Some(ProjectStatus::Draft), 2).await, ["p15", "p10"]);
    }
}
