//! Seeds scenes that await their video: 10 per project, each with a known task id. Scene `i`
//! belongs to project `i % projects`, so deliveries taken in order (as `benches/ingest` takes
//! them) belong to different projects: webhooks of one project apply one after the other (its
//! row is locked), so bunching them would measure that lock, not the gateway. The load
//! benchmark sends them in random order (`loadprep.rs`).

use chrono::Utc;
use entity::{project, scene};
use scenehook::{
    db::pipeline::{new_project_row, new_scene_row},
    domain::{ProjectStatus, SceneStatus},
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait,
};

const SCENES_PER_PROJECT: usize = 10;

/// The scenes seeded by one [`seed`] call.
pub struct Seeded {
    run: String,
    pub projects: usize,
}

impl Seeded {
    /// The body of the video-complete delivery for scene `i`.
    pub fn video_complete(&self, i: usize) -> String {
        format!(
            r#"{{"task_id":"lt_{run}_{i}","status":"completed","scene_id":"ls_{run}_{i}","project_id":"lp_{run}_{p}","video_url":"https://cdn.example.com/{run}/{i}.mp4","timestamp":"2025-10-04T10:30:00.000Z"}}"#,
            run = self.run,
            p = i % self.projects
        )
    }
}

pub async fn seed(db: &DatabaseConnection, count: usize) -> Seeded {
    let run = scenehook::domain::ids::random_token(6);
    let now = Utc::now();
    let projects = count.div_ceil(SCENES_PER_PROJECT);
    insert_in_chunks(
        db,
        (0..projects).map(|p| project::ActiveModel {
            status: Set(ProjectStatus::Generating.as_str().into()),
            ..new_project_row(format!("lp_{run}_{p}"), format!("load {p}"), now)
        }),
    )
    .await;
    insert_in_chunks(
        db,
        (0..count).map(|i| scene::ActiveModel {
            status: Set(SceneStatus::Generating.as_str().into()),
            video_task_id: Set(Some(format!("lt_{run}_{i}"))),
            attempts: Set(1),
            ..new_scene_row(
                format!("ls_{run}_{i}"),
                format!("lp_{run}_{}", i % projects),
                (i / projects) as i32,
                "load".into(),
                now,
            )
        }),
    )
    .await;
    // The state a long-running database is in (autovacuum would get there a minute later):
    // statistics, without which Postgres may plan the batch's `IN` lookups as sequential
    // scans, and on Postgres a vacuumed heap, so the run does not pay the first pass over the
    // freshly loaded rows.
    let settle = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => "VACUUM ANALYZE",
        _ => "ANALYZE",
    };
    db.execute_unprepared(settle)
        .await
        .expect("settle the tables");
    Seeded { run, projects }
}

/// Inserts rows 500 at a time (a statement's bound values stay within every backend's limit).
async fn insert_in_chunks<A: ActiveModelTrait>(
    db: &DatabaseConnection,
    rows: impl Iterator<Item = A>,
) {
    let mut rest = rows.peekable();
    while rest.peek().is_some() {
        let chunk: Vec<A> = rest.by_ref().take(500).collect();
        <A::Entity as EntityTrait>::insert_many(chunk)
            .exec_without_returning(db)
            .await
            .expect("insert seed rows");
    }
}
