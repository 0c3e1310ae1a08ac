//! Seeds projects of 10 scenes whose scenes await a callback ([`Awaiting`]), each with a
//! known task id. Scene `i` belongs to project `i % projects`, so deliveries taken in order
//! (as `benches/ingest` takes them) belong to different projects: webhooks of one project apply
//! one after the other (its row is locked), so bunching them would measure that lock, not the
//! gateway. The load benchmark sends them in random order (`loadprep.rs`).

use std::cmp::Ordering;

use chrono::Utc;
use entity::{project, scene};
use scenehook::{
    db::pipeline::{new_project_row, new_scene_row},
    domain::{ProjectStatus, SceneStatus, webhook::WebhookKind},
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait,
};

const SCENES_PER_PROJECT: usize = 10;

/// Which callback the seeded scenes await.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    /// Every scene its video: one video-complete delivery per scene.
    Video,
    /// One scene per project its last frame, the scenes before it verified and the ones after
    /// it pending, as a project stands midway (at every position, the last one included, from
    /// project to project): one last-frame-complete delivery per project.
    LastFrame,
}

/// The scenes seeded by one [`seed`] call.
pub struct Seeded {
    run: String,
    pub projects: usize,
    awaiting: Awaiting,
}

impl Seeded {
    /// The webhook the deliveries go to.
    pub fn kind(&self) -> WebhookKind {
        match self.awaiting {
            Awaiting::Video => WebhookKind::VideoComplete,
            Awaiting::LastFrame => WebhookKind::LastFrameComplete,
        }
    }

    /// The body of delivery `i`: for scene `i`, or for project `i`'s scene awaiting its last
    /// frame.
    pub fn delivery(&self, i: usize) -> String {
        let run = &self.run;
        match self.awaiting {
            Awaiting::Video => format!(
                r#"{{"task_id":"lt_{run}_{i}","status":"completed","scene_id":"ls_{run}_{i}","project_id":"lp_{run}_{p}","video_url":"https://cdn.example.com/{run}/{i}.mp4","timestamp":"2025-10-04T10:30:00.000Z"}}"#,
                p = i % self.projects
            ),
            Awaiting::LastFrame => format!(
                r#"{{"task_id":"lf_{run}_{scene}","status":"completed","scene_id":"ls_{run}_{scene}","project_id":"lp_{run}_{i}","last_frame_url":"https://cdn.example.com/{run}/{scene}.jpg","timestamp":"2025-10-04T10:30:00.000Z"}}"#,
                scene = extracting_position(i) * self.projects + i
            ),
        }
    }
}

/// Where project `p`'s scene awaiting its last frame is, with [`Awaiting::LastFrame`].
fn extracting_position(p: usize) -> usize {
    p % SCENES_PER_PROJECT
}

/// The scenes' indexes in the order their rows are inserted. A project's scenes are created
/// together, so their rows lie side by side, and a last-frame callback's scene and the next one
/// share a page. The video benchmarks keep their first layout, one project's scenes apart
/// (each of their callbacks reads one scene), so that their results compare with earlier ones.
fn rows_in_insertion_order(
    count: usize,
    projects: usize,
    awaiting: Awaiting,
) -> Box<dyn Iterator<Item = usize>> {
    match awaiting {
        Awaiting::Video => Box::new(0..count),
        Awaiting::LastFrame => Box::new((0..projects).flat_map(move |p| {
            (0..SCENES_PER_PROJECT).map(move |position| position * projects + p)
        })),
    }
}

/// Seeds scenes for `deliveries` distinct deliveries.
pub async fn seed(db: &DatabaseConnection, deliveries: usize, awaiting: Awaiting) -> Seeded {
    let run = scenehook::domain::ids::random_token(6);
    let now = Utc::now();
    let (projects, count) = match awaiting {
        Awaiting::Video => (deliveries.div_ceil(SCENES_PER_PROJECT), deliveries),
        Awaiting::LastFrame => (deliveries, deliveries * SCENES_PER_PROJECT),
    };
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
        rows_in_insertion_order(count, projects, awaiting).map(|i| {
            let (p, position) = (i % projects, i / projects);
            let row = new_scene_row(
                format!("ls_{run}_{i}"),
                format!("lp_{run}_{p}"),
                position as i32,
                "load".into(),
                now,
            );
            let video = || Set(Some(format!("https://cdn.example.com/{run}/{i}.mp4")));
            match awaiting {
                Awaiting::Video => scene::ActiveModel {
                    status: Set(SceneStatus::Generating.as_str().into()),
                    video_task_id: Set(Some(format!("lt_{run}_{i}"))),
                    attempts: Set(1),
                    ..row
                },
                Awaiting::LastFrame => match position.cmp(&extracting_position(p)) {
                    Ordering::Less => scene::ActiveModel {
                        status: Set(SceneStatus::Verified.as_str().into()),
                        video_task_id: Set(Some(format!("lt_{run}_{i}"))),
                        video_url: video(),
                        last_frame_url: Set(Some(format!("https://cdn.example.com/{run}/{i}.jpg"))),
                        attempts: Set(1),
                        verified_at: Set(Some(now)),
                        ..row
                    },
                    Ordering::Equal => scene::ActiveModel {
                        status: Set(SceneStatus::Extracting.as_str().into()),
                        video_task_id: Set(Some(format!("lt_{run}_{i}"))),
                        video_url: video(),
                        attempts: Set(1),
                        ..row
                    },
                    Ordering::Greater => row,
                },
            }
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
    Seeded {
        run,
        projects,
        awaiting,
    }
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
