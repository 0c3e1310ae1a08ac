//! Seeds the database for the load benchmark: `--count` scenes awaiting their video (10 per
//! project, each with a known task id), and writes one correctly signed, distinct
//! video-complete delivery per scene, as `body<TAB>signature` lines for wrk's script.
//! Consecutive deliveries belong to different projects, as real traffic does: webhooks of one
//! project apply one after the other (its row is locked), so bunching them would measure
//! that lock, not the gateway.
//!
//! `loadprep --database-url URL --count N --secret S --out FILE [--parts K]` writes FILE.0 …
//! FILE.K-1 when several load generators each need their own deliveries.

use chrono::Utc;
use entity::{project, scene};
use migration::{Migrator, MigratorTrait};
use scenehook::signature::sign_hex;
use sea_orm::{ActiveValue::Set, ConnectionTrait, Database, EntityTrait};

const SCENES_PER_PROJECT: usize = 10;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (Some(url), Some(count), Some(secret), Some(out)) = (
        flag("--database-url"),
        flag("--count"),
        flag("--secret"),
        flag("--out"),
    ) else {
        eprintln!("usage: loadprep --database-url URL --count N --secret S --out FILE [--parts K]");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("--count is a number");
    let parts: usize = flag("--parts")
        .map(|p| p.parse().expect("--parts is a number"))
        .unwrap_or(1);
    let run = scenehook::domain::ids::random_token(6);
    let db = Database::connect(&url).await.expect("the database answers");
    Migrator::up(&db, None).await.expect("migrations apply");
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
            .exec_without_returning(&db)
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
            .exec_without_returning(&db)
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
    let mut files: Vec<String> = vec![String::new(); parts];
    for i in 0..count {
        let body = format!(
            r#"{{"task_id":"lt_{run}_{i}","status":"completed","scene_id":"ls_{run}_{i}","project_id":"lp_{run}_{p}","video_url":"https://cdn.example.com/{run}/{i}.mp4","timestamp":"2025-10-04T10:30:00.000Z"}}"#,
            p = i % projects
        );
        let signature = sign_hex(&secret, body.as_bytes());
        let file = &mut files[i % parts];
        file.push_str(&body);
        file.push('\t');
        file.push_str(&signature);
        file.push('\n');
    }
    for (k, text) in files.iter().enumerate() {
        let path = if parts == 1 {
            out.clone()
        } else {
            format!("{out}.{k}")
        };
        std::fs::write(&path, text).expect("write the deliveries");
    }
    println!("seeded {count} scenes in {projects} projects (run {run})");
}
