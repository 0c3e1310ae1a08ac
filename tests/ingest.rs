//! Grouped ingestion, driven below HTTP so that a batch's composition is exact: many
//! deliveries in one transaction keep the guarantees each would have in a transaction of its
//! own. Runs on SQLite and on Postgres (Redis plays no part here).

mod common;

use common::*;
use scenehook::{
    db::{
        self,
        ingest::{Admission, Batch, IngestDb, Submission, ingest_batch},
        pipeline::{IngestOutcome, PipelineError},
    },
    domain::{
        Job, Limits, TransitionError,
        webhook::{WebhookKind, parse_callback},
    },
    outbox::{JobContext, JobStatus},
};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::json;

const LIMITS: Limits = Limits {
    max_scene_attempts: 3,
    max_extract_attempts: 3,
    max_stitch_attempts: 3,
};

on_databases!(
    the_later_migrations_apply_and_roll_back,
    retention_deletes_what_is_past_its_age_and_nothing_younger,
    the_gateway_applies_retention_on_its_own,
    the_job_queries_by_status_cover_every_service,
    one_transaction_applies_a_batch_as_if_one_by_one,
    a_delivery_the_limiter_refuses_leaves_no_trace,
    a_video_callback_reads_only_its_scene,
    a_failing_statement_costs_only_its_own_delivery,
    concurrent_webhooks_share_commits,
);

// SQLite runs one transaction at a time: no interleaving to test there.
backend_tests!(
    postgres_only,
    Shared;
    a_late_task_id_does_not_overwrite_a_committed_callback,
    postgres_ingestion_reaches_every_row_through_an_index,
    a_session_a_panic_left_mid_transaction_is_never_used_again,
    a_duplicate_locks_nothing
);

// SQLite's ingestion runs on a connection of its own (`db::ingest::SqliteWriter`).
backend_tests!(
    sqlite_only,
    Embedded;
    statistics_do_not_make_sqlite_reprepare_the_ingestion_statements,
    sqlite_ingestion_stores_timestamps_as_the_other_connection_does,
    the_checkpointer_bounds_the_wal_and_a_long_reader_does_not_stall_ingestion
);

/// Projects `ids`, two scenes each, generation started and `scene_001` answered with task
/// `task_<project>`.
async fn started(backend: Backend, test: &str, ids: &[&str]) -> Option<TestApp> {
    let mut config = config(backend, test).await?;
    // The gateway's own retention pass runs as it starts, maybe after a test has written the
    // rows it dates [`years_ago`]: at the longest retention it leaves them.
    config.database.delivery_retention_hours = 87_840;
    config.database.done_job_retention_hours = 87_840;
    let app = TestApp::start_with(config, false).await;
    for id in ids {
        let (first, second) = (format!("{id}_s1"), format!("{id}_s2"));
        let scenes = [(first.as_str(), "first"), (second.as_str(), "second")];
        app.project_awaiting_video(id, &scenes, &format!("task_{id}"))
            .await;
    }
    Some(app)
}

/// Midnight `years` years ago, as rows are stamped: past any retention a test passes to
/// [`db::prune`], within the ten years [`started`] gives the gateway's own passes.
fn years_ago(years: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(365 * years))
        .format("%Y-%m-%dT00:00:00+00:00")
        .to_string()
}

fn db(app: &TestApp) -> &DatabaseConnection {
    &app.gateway.state.db
}

fn ingest_db(app: &TestApp) -> &IngestDb {
    app.gateway.state.ingestor.db()
}

fn submission(kind: WebhookKind, key: &str, body: serde_json::Value) -> Submission {
    Submission {
        kind: kind.as_str(),
        key: key.to_owned(),
        callback: parse_callback(kind, body.to_string().as_bytes()).unwrap(),
        jobs: JobContext {
            app_url: "http://127.0.0.1:1".into(),
            request_id: None,
        },
        admission: Admission::granted(),
    }
}

fn video_done(key: &str, project: &str, task: &str) -> Submission {
    submission(
        WebhookKind::VideoComplete,
        key,
        json!({"task_id": task, "status": "completed", "scene_id": format!("{project}_s1"),
               "project_id": project, "video_url": format!("https://cdn.test/{project}_s1.mp4")}),
    )
}

/// The last frame of `{project}_s1`, at `https://cdn.test/{project}_s1.png`.
fn last_frame_done(key: &str, project: &str) -> Submission {
    submission(
        WebhookKind::LastFrameComplete,
        key,
        json!({"task_id": format!("frame_{project}"), "status": "completed",
               "scene_id": format!("{project}_s1"), "project_id": project,
               "last_frame_url": format!("https://cdn.test/{project}_s1.png")}),
    )
}

fn batch(submissions: Vec<Submission>) -> Batch {
    let mut batch = Batch::default();
    for s in submissions {
        batch.push(s).expect("distinct deliveries");
    }
    batch
}

/// Applies `submissions` in one batch; the outcomes in order.
async fn ingest(
    app: &TestApp,
    submissions: Vec<Submission>,
) -> Vec<Result<IngestOutcome, PipelineError>> {
    ingest_batch(ingest_db(app), batch(submissions), &LIMITS)
        .await
        .unwrap()
}

fn outcome_names(outcomes: &[Result<IngestOutcome, PipelineError>]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Ok(IngestOutcome::Accepted(effects)) => format!("accepted:{}", effects.jobs.len()),
            Ok(IngestOutcome::Duplicate) => "duplicate".into(),
            Err(PipelineError::ProjectNotFound) => "project_not_found".into(),
            Err(PipelineError::Transition(TransitionError::StaleTask { .. })) => "stale".into(),
            Err(e) => format!("error:{e}"),
        })
        .collect()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let statement = sea_orm::Statement::from_string(db(app).get_database_backend(), sql);
    first_value(db(app), statement).await.unwrap()
}

/// Inserts video-complete deliveries given as (id, time received), each keyed `k<id>`.
async fn insert_deliveries(app: &TestApp, rows: &[(i64, &str)]) {
    let values: Vec<String> = rows
        .iter()
        .map(|(id, at)| format!("({id}, 'video-complete', 'k{id}', 'accepted', '{at}')"))
        .collect();
    db(app)
        .execute_unprepared(&format!(
            "INSERT INTO webhook_deliveries (id, kind, delivery_key, outcome, received_at) \
             VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
}

/// Inserts outbox jobs given as (id, service, status, time): created, updated and due then.
async fn insert_jobs(app: &TestApp, rows: &[(String, &str, &str, &str)]) {
    let values: Vec<String> = rows
        .iter()
        .map(|(id, service, status, at)| {
            format!("('{id}', 'k', '{service}', '{{}}', '{status}', 1, '{at}', '{at}', '{at}')")
        })
        .collect();
    db(app)
        .execute_unprepared(&format!(
            "INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
             next_attempt_at, created_at, updated_at) VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
}

async fn scene(app: &TestApp, id: &str) -> entity::scene::Model {
    use sea_orm::EntityTrait;
    entity::scene::Entity::find_by_id(id.to_owned())
        .one(db(app))
        .await
        .unwrap()
        .unwrap()
}

async fn one_transaction_applies_a_batch_as_if_one_by_one(backend: Backend) {
    let Some(app) = started(backend, "ingest_batch", &["p_a", "p_b"]).await else {
        return;
    };
    let jobs_before = count(&app, "SELECT COUNT(*) FROM outbox_jobs").await;
    // The same delivery twice in one batch is refused: it waits for the next batch.
    let mut probe = Batch::default();
    probe.push(video_done("k_a", "p_a", "task_p_a")).unwrap();
    assert!(probe.push(video_done("k_a", "p_a", "task_p_a")).is_err());

    let submissions = || {
        vec![
            video_done("k_a", "p_a", "task_p_a"),
            video_done("k_b", "p_b", "task_p_b"),
            // Two transitions of one scene in one batch: the second sees the first.
            last_frame_done("k_a_frame", "p_a"),
            // Rejected ones leave no trace, and do not disturb the others.
            video_done("k_stale", "p_b", "an_old_task"),
            video_done("k_unknown", "p_nope", "task_x"),
        ]
    };
    let outcomes = ingest(&app, submissions()).await;
    assert_eq!(
        outcome_names(&outcomes),
        [
            "accepted:1",
            "accepted:1",
            "accepted:1",
            "stale",
            "project_not_found"
        ]
    );
    let a1 = scene(&app, "p_a_s1").await;
    assert_eq!(a1.status, "verified");
    assert!(a1.verified_at.is_some());
    assert_eq!(
        a1.last_frame_url.as_deref(),
        Some("https://cdn.test/p_a_s1.png")
    );
    let a2 = scene(&app, "p_a_s2").await;
    assert_eq!(a2.status, "generating");
    assert_eq!(
        a2.first_frame_url.as_deref(),
        Some("https://cdn.test/p_a_s1.png")
    );
    assert_eq!(scene(&app, "p_b_s1").await.status, "extracting");
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM webhook_deliveries").await,
        3
    );
    // extract p_a, extract p_b, generate p_a_s2.
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM outbox_jobs").await - jobs_before,
        3
    );

    // The same deliveries again: the committed ones are duplicates, the rejected ones are
    // judged again (nothing of them was kept).
    let again = ingest(&app, submissions()).await;
    assert_eq!(
        outcome_names(&again),
        [
            "duplicate",
            "duplicate",
            "duplicate",
            "stale",
            "project_not_found"
        ]
    );
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM outbox_jobs").await - jobs_before,
        3
    );
}

/// Requests submit their deliveries before the rate limiter has decided (`Admission`): the
/// writer waits for each decision, applies what was admitted and takes back what was refused,
/// or left undecided by a request that went away.
async fn a_delivery_the_limiter_refuses_leaves_no_trace(backend: Backend) {
    let Some(app) = started(backend, "ingest_admission", &["p_a", "p_b", "p_c"]).await else {
        return;
    };
    let deliveries_before = count(&app, "SELECT COUNT(*) FROM webhook_deliveries").await;
    let jobs_before = count(&app, "SELECT COUNT(*) FROM outbox_jobs").await;
    let (refuse, refused) = Admission::pending();
    let (admit, admitted) = Admission::pending();
    let (drop_undecided, undecided) = Admission::pending();
    let submissions = vec![
        Submission {
            admission: refused,
            ..video_done("k_a", "p_a", "task_p_a")
        },
        Submission {
            admission: admitted,
            ..video_done("k_b", "p_b", "task_p_b")
        },
        Submission {
            admission: undecided,
            ..video_done("k_c", "p_c", "task_p_c")
        },
    ];
    let writing = tokio::spawn({
        let db = ingest_db(&app).clone();
        async move { ingest_batch(&db, batch(submissions), &LIMITS).await }
    });
    // Decided while the batch is under way: nothing may be applied before.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        !writing.is_finished(),
        "the writer must wait for the decisions"
    );
    refuse.decide(false);
    admit.decide(true);
    drop(drop_undecided);
    let outcomes = writing.await.unwrap().unwrap();
    assert_eq!(
        outcome_names(&outcomes),
        [
            "error:not admitted by the rate limiter",
            "accepted:1",
            "error:not admitted by the rate limiter"
        ]
    );
    assert_eq!(scene(&app, "p_a_s1").await.status, "generating");
    assert_eq!(scene(&app, "p_b_s1").await.status, "extracting");
    assert_eq!(scene(&app, "p_c_s1").await.status, "generating");
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM webhook_deliveries").await - deliveries_before,
        1
    );
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM outbox_jobs").await - jobs_before,
        1
    );
    // Nothing of a refused delivery was kept: admitted later, it is applied.
    let again = ingest(&app, vec![video_done("k_a", "p_a", "task_p_a")]).await;
    assert_eq!(outcome_names(&again), ["accepted:1"]);
    assert_eq!(scene(&app, "p_a_s1").await.status, "extracting");
}

/// A video callback loads only its scene; what it decides must not change: a retry still
/// starts from the previous scene's last frame (the first frame its scene was chained from),
/// and a scene named under another project's id is still not found there.
async fn a_video_callback_reads_only_its_scene(backend: Backend) {
    let Some(app) = started(backend, "ingest_partial", &["p_a", "p_b", "p_c"]).await else {
        return;
    };
    // p_c: scene 1 verified, scene 2 generating from scene 1's last frame, as task_p_c_2.
    let first = batch(vec![
        video_done("c_video", "p_c", "task_p_c"),
        last_frame_done("c_frame", "p_c"),
    ]);
    let outcomes = ingest_batch(ingest_db(&app), first, &LIMITS).await.unwrap();
    assert_eq!(outcome_names(&outcomes), ["accepted:1", "accepted:1"]);
    assert!(
        db::pipeline::store_video_task(db(&app), "p_c_s2", "task_p_c_2")
            .await
            .unwrap()
    );

    let misnamed = |key: &str, scene: &str| {
        submission(
            WebhookKind::VideoComplete,
            key,
            json!({"task_id": "task_x", "status": "completed", "scene_id": scene,
                   "project_id": "p_a", "video_url": "https://cdn.test/x.mp4"}),
        )
    };
    let outcomes = ingest(
        &app,
        vec![
            submission(
                WebhookKind::VideoComplete,
                "c2_failed",
                json!({"task_id": "task_p_c_2", "status": "failed", "scene_id": "p_c_s2",
                       "project_id": "p_c", "error": "model overloaded"}),
            ),
            // Scenes of p_c (in this batch) and of p_b (not in it), named under p_a.
            misnamed("to_p_c", "p_c_s2"),
            misnamed("to_p_b", "p_b_s2"),
            video_done("a_video", "p_a", "task_p_a"),
        ],
    )
    .await;
    assert_eq!(
        outcome_names(&outcomes),
        [
            "accepted:1",
            "error:SceneNotFound",
            "error:SceneNotFound",
            "accepted:1"
        ]
    );
    let Ok(IngestOutcome::Accepted(effects)) = &outcomes[0] else {
        unreachable!()
    };
    assert_eq!(
        effects.jobs,
        [Job::GenerateScene {
            scene_id: "p_c_s2".into(),
            prompt: "second".into(),
            first_frame_url: Some("https://cdn.test/p_c_s1.png".into()),
        }]
    );
    let c2 = scene(&app, "p_c_s2").await;
    assert_eq!((c2.status.as_str(), c2.attempts), ("generating", 2));
    assert_eq!(scene(&app, "p_c_s1").await.status, "verified");
    assert_eq!(scene(&app, "p_a_s1").await.status, "extracting");
    assert_eq!(scene(&app, "p_b_s2").await.status, "pending");
}

/// Nothing looks deliveries up by project, nor by age since migration 5 (retention reads them
/// by id), nor jobs by status alone. On Postgres the scenes' pages keep room for their
/// updates. On SQLite delivery ids do without `AUTOINCREMENT`, and the table's rebuilds, both
/// ways, keep every delivery with its id. Since migration 6 projects are indexed by status and
/// creation, for the operator's listing, instead of by status alone.
async fn the_later_migrations_apply_and_roll_back(backend: Backend) {
    use migration::{Migrator, MigratorTrait};
    let Some(app) = started(backend, "ingest_indexes", &[]).await else {
        return;
    };
    let postgres = db::is_postgres(db(&app));
    let index = |name: &str| {
        if postgres {
            format!("SELECT COUNT(*) FROM pg_indexes WHERE indexname = '{name}'")
        } else {
            format!("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = '{name}'")
        }
    };
    let by_age = index("idx_webhook_deliveries_received_at");
    let by_project = index("idx_webhook_deliveries_project");
    let by_key = index("uq_webhook_deliveries_kind_key");
    let jobs_by_status = index("idx_outbox_jobs_status_next");
    let projects_by_status = index("idx_projects_status");
    let projects_by_status_and_age = index("idx_projects_status_created");
    let fillfactor = "SELECT COUNT(*) FROM pg_class \
        WHERE relname = 'scenes' AND 'fillfactor=70' = ANY(reloptions)";
    let autoincrement = "SELECT COUNT(*) FROM sqlite_master \
        WHERE name = 'webhook_deliveries' AND sql LIKE '%AUTOINCREMENT%'";
    // A delivery recorded before, which SQLite's rebuilds must carry over with its id.
    let kept = "SELECT COUNT(*) FROM webhook_deliveries \
        WHERE id = 7 AND delivery_key = 'k7' AND received_at = '2026-11-30T00:00:00+00:00'";
    insert_deliveries(&app, &[(7, "2026-11-30T00:00:00+00:00")]).await;
    // (age index, project index, key index, fillfactor, AUTOINCREMENT, the delivery kept, jobs'
    // status index), then the projects' indexes (by status and creation, by status alone);
    // SQLite has no fillfactor and Postgres no AUTOINCREMENT: their columns stay put there.
    let schema = async || {
        (
            (
                count(&app, &by_age).await,
                count(&app, &by_project).await,
                count(&app, &by_key).await,
                if postgres {
                    count(&app, fillfactor).await
                } else {
                    1
                },
                if postgres {
                    0
                } else {
                    count(&app, autoincrement).await
                },
                count(&app, kept).await,
                count(&app, &jobs_by_status).await,
            ),
            (
                count(&app, &projects_by_status_and_age).await,
                count(&app, &projects_by_status).await,
            ),
        )
    };
    let (no_fillfactor, with_autoincrement) = if postgres { (0, 0) } else { (1, 1) };
    let latest = (0, 0, 1, 1, 0, 1, 0);
    assert_eq!(schema().await, (latest, (1, 0)));
    Migrator::down(db(&app), Some(1)).await.unwrap();
    assert_eq!(schema().await, (latest, (0, 1)));
    Migrator::down(db(&app), Some(1)).await.unwrap();
    assert_eq!(schema().await, ((1, 0, 1, 1, 0, 1, 1), (0, 1)));
    Migrator::down(db(&app), Some(1)).await.unwrap();
    assert_eq!(
        schema().await,
        ((1, 0, 1, 1, with_autoincrement, 1, 1), (0, 1))
    );
    Migrator::down(db(&app), Some(1)).await.unwrap();
    assert_eq!(
        schema().await,
        ((1, 0, 1, no_fillfactor, with_autoincrement, 1, 1), (0, 1))
    );
    Migrator::down(db(&app), Some(1)).await.unwrap();
    assert_eq!(
        schema().await,
        ((0, 1, 1, no_fillfactor, with_autoincrement, 1, 1), (0, 1))
    );
    Migrator::up(db(&app), None).await.unwrap();
    assert_eq!(schema().await, (latest, (1, 0)));
}

/// Retention deletes what is past its age and nothing younger: deliveries by id, up to the
/// first one young enough to keep (one stamped out of order may wait for a later pass), all
/// of them once none is young, in chunks; done jobs by their time done, whatever their
/// service.
async fn retention_deletes_what_is_past_its_age_and_nothing_younger(backend: Backend) {
    let Some(app) = started(backend, "ingest_retention", &[]).await else {
        return;
    };
    let old = years_ago(5);
    let old = old.as_str();
    const YOUNG: &str = "2999-01-01T00:00:00+00:00";
    let ids = async || -> Vec<i64> {
        let rows = db(&app)
            .query_all_raw(sea_orm::Statement::from_string(
                db(&app).get_database_backend(),
                "SELECT id FROM webhook_deliveries ORDER BY id",
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.try_get_by_index(0).unwrap())
            .collect()
    };
    // 4 was stamped after 3 by a clock set back: the search for the first young id stops at 3
    // in the first pass.
    insert_deliveries(
        &app,
        &[(1, old), (2, old), (3, YOUNG), (4, old), (5, YOUNG)],
    )
    .await;
    let mut done_and_not = Vec::new();
    for service in scenehook::outbox::Service::ALL {
        for (status, at) in [
            ("done", old),
            ("done", YOUNG),
            ("pending", old),
            ("dead", old),
        ] {
            let id = format!("{}_{status}_{}", service.as_str(), &at[..4]);
            done_and_not.push((id, service.as_str(), status, at));
        }
    }
    insert_jobs(&app, &done_and_not).await;
    let day = std::time::Duration::from_secs(24 * 3600);
    let services = scenehook::outbox::Service::ALL.len() as u64;
    assert_eq!(db::prune(db(&app), day, day).await.unwrap(), (2, services));
    assert_eq!(ids().await, [3, 4, 5]);
    let left = count(&app, "SELECT COUNT(*) FROM outbox_jobs").await;
    assert_eq!(
        left as u64,
        3 * services,
        "young done, pending and dead jobs stay"
    );
    // 4 goes in a later pass; the young ones never do.
    let mut later = 0;
    for _ in 0..3 {
        later += db::prune(db(&app), day, day).await.unwrap().0;
    }
    assert_eq!((later, ids().await), (1, vec![3, 5]));
    // Nothing young left: every delivery goes.
    db(&app)
        .execute_unprepared(&format!(
            "UPDATE webhook_deliveries SET received_at = '{old}'"
        ))
        .await
        .unwrap();
    assert_eq!(db::prune(db(&app), day, day).await.unwrap(), (2, 0));
    assert!(ids().await.is_empty());
    // An empty table stays empty without complaint.
    assert_eq!(db::prune(db(&app), day, day).await.unwrap(), (0, 0));
    // More than a chunk of each: every chunk goes, and a young delivery after them stays.
    let many = 2 * db::PRUNE_CHUNK as i64 + 500;
    let mut rows: Vec<(i64, &str)> = (100..100 + many).map(|id| (id, old)).collect();
    rows.push((100 + many, YOUNG));
    insert_deliveries(&app, &rows).await;
    let done: Vec<_> = (0..many)
        .map(|n| (format!("done_{n}"), "video", "done", old))
        .collect();
    insert_jobs(&app, &done).await;
    assert_eq!(
        db::prune(db(&app), day, day).await.unwrap(),
        (many as u64, many as u64)
    );
    assert_eq!(ids().await, [100 + many]);
}

/// The queries by status, which go through the claims' index by naming every service, find
/// the jobs of every service: the gauges' counts (done jobs left out), the oldest pending job,
/// the listing by status and the replay of dead jobs.
async fn the_job_queries_by_status_cover_every_service(backend: Backend) {
    let Some(app) = started(backend, "ingest_job_status", &[]).await else {
        return;
    };
    let (old, new) = (years_ago(5), years_ago(4));
    let (old, new) = (old.as_str(), new.as_str());
    let rows: Vec<_> = [
        ("v1", "video", "pending", new),
        ("v2", "video", "pending", old),
        ("l1", "last_frame", "in_flight", new),
        ("s1", "stitch", "dead", new),
        ("n1", "notification", "dead", new),
        ("n2", "notification", "done", old),
    ]
    .into_iter()
    .map(|(id, service, status, at)| (id.to_owned(), service, status, at))
    .collect();
    insert_jobs(&app, &rows).await;
    let stats = db::outbox::stats(db(&app)).await.unwrap();
    let mut counts: Vec<_> = stats
        .counts
        .iter()
        .map(|(service, status, n)| (service.as_str(), status.as_str(), *n))
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [
            ("last_frame", "in_flight", 1),
            ("notification", "dead", 1),
            ("stitch", "dead", 1),
            ("video", "pending", 2),
        ]
    );
    let oldest: chrono::DateTime<chrono::Utc> = old.parse().unwrap();
    let since_oldest = (chrono::Utc::now() - oldest).num_seconds() as f64;
    assert!((stats.oldest_pending_secs - since_oldest).abs() < 60.0);
    let app = &app;
    let listed = |status: JobStatus| async move {
        let mut ids: Vec<String> = db::outbox::list(db(app), Some(status), None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|job| job.id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(listed(JobStatus::Dead).await, ["n1", "s1"]);
    assert_eq!(listed(JobStatus::Done).await, ["n2"]);
    assert_eq!(db::outbox::replay(db(app), None, None).await.unwrap(), 2);
    assert_eq!(listed(JobStatus::Pending).await, ["n1", "s1", "v1", "v2"]);
}

/// The gateway prunes at every cleanup interval, without being asked.
async fn the_gateway_applies_retention_on_its_own(backend: Backend) {
    let Some(mut config) = config(backend, "ingest_retention_task").await else {
        return;
    };
    config.errors.cleanup_interval_secs = 1;
    let app = TestApp::start_with(config, false).await;
    insert_deliveries(&app, &[(1, "2020-01-01T00:00:00+00:00")]).await;
    let sql = "SELECT COUNT(*) FROM webhook_deliveries";
    eventually(
        std::time::Duration::from_secs(10),
        "the old delivery pruned",
        || async { count(&app, sql).await == 0 },
    )
    .await;
}

/// The ingestion statements run prepared, with the plan Postgres makes for any values (a
/// generic plan, which the writers' connections are set to use): each table they read or
/// write must be reached through a condition on an index. With sequential scans disabled, one
/// the planner cannot avoid still shows.
async fn postgres_ingestion_reaches_every_row_through_an_index(backend: Backend) {
    let Some(app) = started(backend, "ingest_pg_plans", &[]).await else {
        return;
    };
    let IngestDb::Postgres(writer) = ingest_db(&app) else {
        panic!("Postgres ingests through its writers' connections");
    };
    // A connection with the writers' own settings, of this test's own: it plans as they do,
    // and what this test changes on it goes with it.
    let connection = writer.sessions().connect().await.unwrap();
    let mode: String = connection
        .query_one("SHOW plan_cache_mode", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "force_generic_plan");
    connection
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    for (n, sql) in db::ingest::POSTGRES_STATEMENTS.iter().enumerate() {
        let parameters = (1..)
            .take_while(|i| sql.contains(&format!("${i}:")) || sql.contains(&format!("${i} ")))
            .count();
        assert!(parameters > 0, "{sql}");
        let name = format!("ingest_{n}");
        connection
            .batch_execute(&format!("PREPARE {name} AS {sql}"))
            .await
            .unwrap();
        let nulls = vec!["NULL"; parameters].join(", ");
        let plan: Vec<String> = connection
            .query(&format!("EXPLAIN EXECUTE {name}({nulls})"), &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        // Every index scan has a condition on the index: a filter over a whole index (which
        // `ORDER BY id` makes the planner prefer to a disabled sequential scan) would not.
        let scans = plan
            .iter()
            .filter(|l| l.contains("Scan using") || l.contains("Bitmap Index Scan"))
            .count();
        let conditions = plan.iter().filter(|l| l.contains("Index Cond:")).count();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{sql}\n{plan}");
        assert_eq!(scans, conditions, "{sql}\n{plan}");
    }
}

/// A batch sends its claims before it knows which of them are duplicates; only the projects of
/// the deliveries it claimed may be locked (a lock is a write, and a wait on whoever holds it).
/// A duplicate is answered while another transaction holds its project.
async fn a_duplicate_locks_nothing(backend: Backend) {
    use sea_orm::TransactionTrait;
    let Some(app) = started(backend, "ingest_pg_dup_lock", &["p_a"]).await else {
        return;
    };
    let first = ingest(&app, vec![video_done("k_a", "p_a", "task_p_a")]).await;
    assert!(matches!(first[..], [Ok(IngestOutcome::Accepted(_))]));
    let holder = db(&app).begin().await.unwrap();
    holder
        .execute_unprepared("SELECT * FROM projects WHERE id = 'p_a' FOR UPDATE")
        .await
        .unwrap();
    let again = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        ingest_batch(
            ingest_db(&app),
            batch(vec![video_done("k_a", "p_a", "task_p_a")]),
            &LIMITS,
        ),
    )
    .await
    .expect("a duplicate does not wait for its project's lock")
    .unwrap();
    assert!(matches!(again[..], [Ok(IngestOutcome::Duplicate)]));
    holder.rollback().await.unwrap();
}

/// A bug that panics mid-transaction must not leave its transaction open on a session that
/// the next batch then uses: that batch's COMMIT would commit the rows of both.
async fn a_session_a_panic_left_mid_transaction_is_never_used_again(backend: Backend) {
    use scenehook::db::ingest::{PgWriter, Session};
    let Some(app) = started(backend, "ingest_pg_panic", &[]).await else {
        return;
    };
    let url = &app.gateway.state.config.database_url;
    // One session, so that every batch here takes the same slot.
    let writer = PgWriter::open(url, 1, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let sessions = writer.sessions().clone();
    let panicked: Result<Result<(), _>, _> = tokio::spawn(async move {
        sessions
            .run(async |session: &Session| {
                session
                    .client
                    .batch_execute(
                        "BEGIN; INSERT INTO webhook_deliveries (kind, delivery_key, project_id, \
                         outcome, received_at) VALUES ('video-complete', 'leaked', 'p', \
                         'accepted', now())",
                    )
                    .await
                    .unwrap();
                panic!("a bug mid-transaction")
            })
            .await
    })
    .await;
    assert!(panicked.is_err());
    for _ in 0..2 {
        writer
            .sessions()
            .run(async |session: &Session| {
                session.client.batch_execute("BEGIN; COMMIT").await.unwrap();
                Ok::<_, sea_orm::DbErr>(())
            })
            .await
            .unwrap();
    }
    let leaked = "SELECT COUNT(*) FROM webhook_deliveries WHERE delivery_key = 'leaked'";
    assert_eq!(count(&app, leaked).await, 0);
}

async fn a_failing_statement_costs_only_its_own_delivery(backend: Backend) {
    let Some(app) = started(backend, "ingest_split", &["p_a", "p_b"]).await else {
        return;
    };
    // A delivery the database refuses, standing in for any statement-level failure.
    let refuse = match db(&app).get_database_backend() {
        sea_orm::DbBackend::Postgres => vec![
            "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN \
             IF NEW.delivery_key = 'poison' THEN RAISE EXCEPTION 'refused delivery'; END IF; \
             RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON webhook_deliveries \
             FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        ],
        _ => vec![
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON webhook_deliveries \
             WHEN NEW.delivery_key = 'poison' BEGIN SELECT RAISE(ABORT, 'refused delivery'); END",
        ],
    };
    for sql in refuse {
        db(&app).execute_unprepared(sql).await.unwrap();
    }
    let splits_before = splits(&app).await;
    let outcomes = db::ingest::apply(
        ingest_db(&app),
        batch(vec![
            video_done("k_a", "p_a", "task_p_a"),
            video_done("poison", "p_b", "task_p_b"),
            video_done("k_b", "p_b", "task_p_b"),
        ]),
        &LIMITS,
    )
    .await;
    let names = outcome_names(&outcomes);
    assert_eq!(names[0], "accepted:1");
    assert!(names[1].contains("refused delivery"), "{names:?}");
    assert_eq!(names[2], "accepted:1");
    assert_eq!(scene(&app, "p_a_s1").await.status, "extracting");
    assert_eq!(scene(&app, "p_b_s1").await.status, "extracting");
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM webhook_deliveries").await,
        2
    );
    assert!(splits(&app).await > splits_before, "the split is counted");
}

async fn splits(app: &TestApp) -> f64 {
    app.scrape()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("scenehook_ingest_batch_splits_total "))
        .expect("the counter is exported")
        .parse()
        .unwrap()
}

/// The video service's answer (the task id) is stored while a callback for the same scene is
/// committing: the answer must see the callback's row, not write back the row it read before.
async fn a_late_task_id_does_not_overwrite_a_committed_callback(backend: Backend) {
    use sea_orm::TransactionTrait;
    let Some(app) = started(backend, "ingest_task_race", &["p_a"]).await else {
        return;
    };
    // p_a_s2 is still pending; make it generating without a task id, as right after its
    // generation job was queued.
    db(&app)
        .execute_unprepared("UPDATE scenes SET status = 'generating' WHERE id = 'p_a_s2'")
        .await
        .unwrap();
    // A callback's transaction moves it on, and has not committed yet.
    let callback = db(&app).begin().await.unwrap();
    callback
        .execute_unprepared(
            "UPDATE scenes SET status = 'extracting', video_task_id = 't2' WHERE id = 'p_a_s2'",
        )
        .await
        .unwrap();
    let connection = db(&app).clone();
    let store =
        tokio::spawn(
            async move { db::pipeline::store_video_task(&connection, "p_a_s2", "t2").await },
        );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    callback.commit().await.unwrap();
    assert!(!store.await.unwrap().unwrap(), "nothing left to store");
    let row = scene(&app, "p_a_s2").await;
    assert_eq!(row.status, "extracting");
    assert_eq!(row.video_task_id.as_deref(), Some("t2"));
}

/// Concurrent webhooks over HTTP: each is answered after its own effects are committed, and
/// they are committed in fewer transactions than there are webhooks.
async fn concurrent_webhooks_share_commits(backend: Backend) {
    const N: usize = 48;
    let ids: Vec<String> = (0..N).map(|i| format!("p_{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let Some(app) = started(backend, "ingest_http", &refs).await else {
        return;
    };
    let jobs_before = count(&app, "SELECT COUNT(*) FROM outbox_jobs").await;
    let (batches_before, webhooks_before) = batch_histogram(&app).await;
    let bodies: Vec<String> = ids
        .iter()
        .map(|id| {
            json!({"task_id": format!("task_{id}"), "status": "completed",
                   "scene_id": format!("{id}_s1"), "project_id": id,
                   "video_url": format!("https://cdn.test/{id}.mp4")})
            .to_string()
        })
        .collect();
    let responses = futures::future::join_all(
        bodies
            .iter()
            .map(|body| app.webhook("video-complete", VIDEO_SECRET, body)),
    )
    .await;
    for response in responses {
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["duplicate"], false);
    }
    for id in &ids {
        assert_eq!(scene(&app, &format!("{id}_s1")).await.status, "extracting");
    }
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM outbox_jobs").await - jobs_before,
        N as i64
    );
    let (batches_after, webhooks) = batch_histogram(&app).await;
    let batches = batches_after - batches_before;
    assert!(
        batches >= 1.0 && batches < N as f64,
        "{N} concurrent webhooks took {batches} commits"
    );
    assert!(webhooks - webhooks_before >= N as f64);
}

/// (`_count`, `_sum`) of the ingestion batch-size histogram.
async fn batch_histogram(app: &TestApp) -> (f64, f64) {
    let text = app.scrape().await;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    (
        value("scenehook_ingest_batch_size_count "),
        value("scenehook_ingest_batch_size_sum "),
    )
}

fn sqlite_writer(app: &TestApp) -> &db::ingest::SqliteWriter {
    match ingest_db(app) {
        IngestDb::Sqlite(writer) => writer,
        IngestDb::Postgres(_) => panic!("SQLite ingests through its own connection"),
    }
}

/// With STAT4 statistics (ANALYZE, `PRAGMA optimize`), SQLite re-prepares a statement whenever
/// a bound value its plan may depend on changes: every webhook would parse and plan its
/// lookups again, which once cost more than the rest of the write.
async fn statistics_do_not_make_sqlite_reprepare_the_ingestion_statements(backend: Backend) {
    let Some(app) = started(backend, "ingest_reprepare", &["p_a", "p_b", "p_c"]).await else {
        return;
    };
    db(&app).execute_unprepared("ANALYZE").await.unwrap();
    // Every statement, each batch with different values: accepted video and last-frame
    // callbacks (scene and project updates, jobs, whole projects read) and a rejected one (its
    // delivery deleted). The first batch prepares them (SQLite may re-prepare a statement
    // once on its first run); after it, a re-prepare would be one per value bound.
    let mut after_first = None;
    for (project, key) in [("p_a", "a"), ("p_b", "b"), ("p_c", "c")] {
        let outcomes = ingest(
            &app,
            vec![
                video_done(&format!("{key}_video"), project, &format!("task_{project}")),
                last_frame_done(&format!("{key}_frame"), project),
                video_done(&format!("{key}_stale"), project, "an_old_task"),
            ],
        )
        .await;
        assert_eq!(
            outcome_names(&outcomes),
            ["accepted:1", "accepted:1", "stale"]
        );
        let reprepared = sqlite_writer(&app).statements_reprepared().unwrap();
        assert_eq!(*after_first.get_or_insert(reprepared), reprepared);
    }
}

/// Both connections write timestamps as the same text, so that they sort and compare alike:
/// retention deletes delivery rows by comparing `received_at` with a bound sqlx encodes.
async fn sqlite_ingestion_stores_timestamps_as_the_other_connection_does(backend: Backend) {
    let Some(app) = started(backend, "ingest_timestamps", &["p_a"]).await else {
        return;
    };
    let outcomes = ingest(&app, vec![video_done("k_a", "p_a", "task_p_a")]).await;
    assert_eq!(outcome_names(&outcomes), ["accepted:1"]);
    let stored = text(
        &app,
        "SELECT received_at FROM webhook_deliveries WHERE delivery_key = 'k_a'",
        vec![],
    )
    .await;
    let parsed = chrono::DateTime::parse_from_rfc3339(&stored)
        .unwrap_or_else(|e| panic!("{stored}: {e}"))
        .with_timezone(&chrono::Utc);
    let as_sqlx_writes_it = text(&app, "SELECT CAST(? AS TEXT)", vec![parsed.into()]).await;
    assert_eq!(stored, as_sqlx_writes_it);
}

async fn text(app: &TestApp, sql: &str, values: Vec<sea_orm::Value>) -> String {
    let backend = db(app).get_database_backend();
    let statement = sea_orm::Statement::from_sql_and_values(backend, sql, values);
    first_value(db(app), statement).await.unwrap()
}

/// Checkpoints run beside ingestion (`db::checkpointer`): the WAL starts over once it reaches
/// `sqlite_wal_max_mib`, and a reader that keeps it from starting over delays that, not the
/// webhooks.
async fn the_checkpointer_bounds_the_wal_and_a_long_reader_does_not_stall_ingestion(
    backend: Backend,
) {
    let Some(mut config) = config(backend, "ingest_checkpoints").await else {
        return;
    };
    config.database.sqlite_wal_max_mib = 1;
    let path = db::sqlite_file(&config.database_url).unwrap();
    let app = TestApp::start_with(config, false).await;
    // Each batch inserts a delivery for an unknown project and deletes it again: a few pages
    // per commit, about 16 KiB of WAL. 600 of them would leave a WAL of about 10 MiB.
    let mut sent = 0;
    let mut write = |n: usize| {
        let batches: Vec<_> = (sent..sent + n)
            .map(|i| batch(vec![video_done(&format!("k{i}"), "no_such_project", "t")]))
            .collect();
        sent += n;
        let app = &app;
        async move {
            for b in batches {
                let outcomes = ingest_batch(ingest_db(app), b, &LIMITS).await.unwrap();
                assert_eq!(outcome_names(&outcomes), ["project_not_found"]);
            }
        }
    };
    let wal_bytes = || std::fs::metadata(format!("{path}-wal")).unwrap().len();
    // The WAL's frames and how many of them are copied into the database file, as SQLite's
    // checkpoint in NOOP mode reports them: it copies nothing and takes no lock, so it only
    // watches the checkpointer.
    let probe = rusqlite::Connection::open(&path).unwrap();
    let frames = || -> (i64, i64) {
        probe
            .query_row("PRAGMA wal_checkpoint(NOOP)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .unwrap()
    };
    // In rounds, each waiting for the checkpointer to copy what it wrote, so that a thread
    // starved by a busy machine (tests run in parallel, and it runs at a lower priority) gets
    // its turn however long that takes: the WAL may overshoot its bound by a round, not more.
    for _ in 0..12 {
        write(50).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (written, copied) = frames();
            if copied == written {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the checkpointer copied {copied} of the WAL's {written} frames"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert!(wal_bytes() <= 4 << 20, "WAL grew to {} bytes", wal_bytes());

    // A reader's snapshot keeps the WAL from starting over: ingestion goes on regardless
    // (a restart that waited for the reader would hold every writer back).
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader
        .busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    let busy_restarts = |scrape: &str| {
        sample(scrape, "scenehook_sqlite_wal_restart_busy_total", &[]).unwrap_or(0.0)
    };
    let busy_before = busy_restarts(&app.scrape().await);
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM webhook_deliveries", [], |r| r.get(0))
        .unwrap();
    // For as long as a backup's read might last, with the WAL past its bound throughout.
    let reading = std::time::Instant::now();
    let mut written = 0;
    while written < 300 || reading.elapsed() < std::time::Duration::from_millis(1500) {
        write(10).await;
        written += 10;
    }
    let restart_frames = (1 << 20) / (4096 + 24);
    let held = frames().0;
    assert!(
        held > restart_frames,
        "the reader held the WAL back: {held} frames"
    );
    // Each restart the reader keeps waiting holds the writers for a moment; they back off
    // (50 ms, doubling to 1 s: six in the first 1.5 s, then one a second) instead of coming
    // every pass (about 20 a second).
    let elapsed = reading.elapsed().as_secs_f64();
    let busy = busy_restarts(&app.scrape().await) - busy_before;
    assert!(
        busy >= 1.0 && busy <= 5.0 + 2.0 * elapsed.ceil(),
        "{busy} restarts kept waiting by the reader in {elapsed:.1} s"
    );
    reader.execute_batch("COMMIT").unwrap();
    // Once the reader is gone, the next restart succeeds and the next commit starts over.
    let mut restarted = false;
    for _ in 0..500 {
        write(1).await;
        if frames().0 < restart_frames {
            restarted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        restarted,
        "the WAL never started over: {} frames",
        frames().0
    );
    // The pass that found the WAL past its bound synced the database file ahead of the
    // restart, beside the writer, once from three quarters of the bound and once or more in
    // the rounds before the restart (or had at three quarters already).
    let synced = sample(
        &app.scrape().await,
        "scenehook_sqlite_sync_ahead_seconds_count",
        &[],
    );
    assert!(
        synced.is_some_and(|n| n >= 2.0),
        "syncs ahead of the restart: {synced:?}"
    );
}
