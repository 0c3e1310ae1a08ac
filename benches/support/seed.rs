//! Seeds scenes that await their video: 10 per project, each with a known task id. Scene `i`
//! belongs to project `i % projects`, so consecutive deliveries belong to different projects,
//! as real traffic does: webhooks of one project apply one after the other (its row is
//! locked), so bunching them would measure that lock, not the gateway.

use chrono::Utc;
use entity::{project, scene};
use sea_orm::{ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait};

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
    for chunk in (0..projects).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<project::ActiveModel> = chunk
            .iter()
            .map(|p| project::ActiveModel {
                id: Set(format!("lp_{run}_{p}")),
                name: Set(format!("load {p}")),
                status: Set("generating".into()),
                final_video_url: Set(None),
                stitch_attempts: Set(0),
                last_error: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
                completed_at: Set(None),
            })
            .collect();
        project::Entity::insert_many(rows)
            .exec_without_returning(db)
            .await
            .expect("insert projects");
    }
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<scene::ActiveModel> = chunk
            .iter()
            .map(|i| scene::ActiveModel {
                id: Set(format!("ls_{run}_{i}")),
                project_id: Set(format!("lp_{run}_{}", i % projects)),
                position: Set((i / projects) as i32),
                prompt: Set("load".into()),
                status: Set("generating".into()),
                video_task_id: Set(Some(format!("lt_{run}_{i}"))),
                video_url: Set(None),
                first_frame_url: Set(None),
                last_frame_url: Set(None),
                attempts: Set(1),
                extract_attempts: Set(0),
                last_error: Set(None),
                verified_at: Set(None),
                status_changed_at: Set(Some(now)),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .collect();
        scene::Entity::insert_many(rows)
            .exec_without_returning(db)
            .await
            .expect("insert scenes");
    }
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
