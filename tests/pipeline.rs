//! End to end: the real gateway and the fake services on loopback drive whole projects.

mod common;

use std::time::Duration;

use common::*;
use scenehook::fakes::Behaviour;
use serde_json::{Value, json};

async fn create_and_generate(app: &TestApp, id: &str, scenes: usize) {
    let scenes: Vec<Value> = (0..scenes)
        .map(|i| json!({"id": format!("{id}_s{i}"), "prompt": format!("scene {i}")}))
        .collect();
    assert_eq!(
        app.post(
            "/projects",
            json!({"id": id, "name": "E2E", "scenes": scenes})
        )
        .await
        .0,
        201
    );
    assert_eq!(
        app.post(&format!("/projects/{id}/generate"), json!(null))
            .await
            .0,
        202
    );
}

async fn wait_for_status(app: &TestApp, id: &str, status: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        last = app.get(&format!("/projects/{id}")).await.1;
        if last["status"] == status {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("project {id} did not become {status}: {last}");
}

async fn five_scenes_chain_stitch_and_notify(backend: Backend) {
    let Some((cfg, fakes)) = with_fakes(backend, "e2e_five").await else {
        return;
    };
    let app = TestApp::start(cfg).await;
    create_and_generate(&app, "p5", 5).await;
    let project = wait_for_status(&app, "p5", "completed", Duration::from_secs(30)).await;
    let scenes = project["scenes"].as_array().unwrap();
    assert!(scenes[0]["firstFrameUrl"].is_null());
    for k in 1..5 {
        assert_eq!(
            scenes[k]["firstFrameUrl"],
            scenes[k - 1]["lastFrameUrl"],
            "scene {k} chains"
        );
        assert_eq!(scenes[k]["status"], "verified");
    }
    let stitches = fakes.accepted("stitch");
    assert_eq!(stitches.len(), 1);
    let clips: Vec<Value> = scenes.iter().map(|s| s["videoUrl"].clone()).collect();
    assert_eq!(stitches[0].body["video_urls"], Value::Array(clips));
    assert!(
        project["finalVideoUrl"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    eventually(Duration::from_secs(5), "one notification", || async {
        fakes.accepted("notification").len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let notes = fakes.accepted("notification");
    assert_eq!(notes.len(), 1, "exactly one notification");
    // Retention: nothing is young enough to go at the configured ages; everything at zero.
    let db = &app.gateway.state.db;
    let week = Duration::from_secs(7 * 24 * 3600);
    assert_eq!(scenehook::db::prune(db, week, week).await.unwrap(), (0, 0));
    let (deliveries, jobs) = scenehook::db::prune(db, Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        deliveries, 11,
        "5 video + 5 last-frame + 1 stitch deliveries"
    );
    assert!(jobs >= 11, "{jobs} done jobs pruned");
    let (_, left) = app.get("/outbox?status=done").await;
    assert_eq!(left["jobs"].as_array().unwrap().len(), 0);
    assert_eq!(notes[0].body["event"], "project.completed");
    // Every outbound request carried the service key and an idempotency key.
    for r in fakes.received() {
        assert!(
            r.authorization
                .as_deref()
                .unwrap_or("")
                .starts_with("Bearer dev-")
        );
        assert!(
            r.idempotency_key
                .as_deref()
                .unwrap_or("")
                .starts_with("job_")
        );
    }
}

async fn breaker_opens_during_an_outage_and_nothing_is_lost(backend: Backend) {
    let Some((mut cfg, fakes)) = with_fakes(backend, "e2e_outage").await else {
        return;
    };
    cfg.outbox.max_attempts = 100;
    fakes.set_behaviour(
        "last_frame",
        Behaviour {
            fail_with: Some(503),
            ..Default::default()
        },
    );
    let app = TestApp::start(cfg).await;
    let outage = std::time::Instant::now();
    create_and_generate(&app, "po", 2).await;
    eventually(Duration::from_secs(10), "the breaker opens", || async {
        app.get("/services").await.1["services"][1]["breaker"] == "open"
    })
    .await;
    // The service answers 503 for 20 s. The outbox schedule alone (100 ms doubling, capped
    // at 1 s) would call it ~23 times; the breaker (open after 3 failures, then one probe
    // every 1-2 s) lets about 13 through.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed())).await;
    let during_outage = fakes.received_by("last_frame").len();
    assert!(
        (3..=15).contains(&during_outage),
        "{during_outage} calls reached the failing service"
    );
    fakes.set_behaviour("last_frame", Behaviour::default());
    wait_for_status(&app, "po", "completed", Duration::from_secs(30)).await;
    let (_, dead) = app.get("/outbox?status=dead").await;
    assert_eq!(dead["jobs"].as_array().unwrap().len(), 0);
    let metrics = app.scrape().await;
    assert!(metrics.contains(
        "scenehook_circuit_breaker_transitions_total{service=\"last_frame\",to=\"open\"}"
    ));
}

/// A call that hangs holds one of its service's slots, not the service's queue: the jobs
/// queued after it go out beside it, and their projects complete while it still waits.
async fn a_hanging_call_holds_one_slot_not_the_lane(backend: Backend) {
    let Some((mut cfg, fakes)) = with_fakes(backend, "e2e_hanging_call").await else {
        return;
    };
    cfg.outbox.concurrency_per_service = 2;
    cfg.outbox.request_timeout_ms = 60_000;
    cfg.outbox.inline_retries = 0;
    fakes.set_behaviour(
        "video",
        Behaviour {
            hang: true,
            ..Default::default()
        },
    );
    let app = TestApp::start(cfg).await;
    create_and_generate(&app, "ph0", 1).await;
    eventually(
        Duration::from_secs(10),
        "the first video request hangs",
        || async { !fakes.received_by("video").is_empty() },
    )
    .await;
    fakes.set_behaviour("video", Behaviour::default());
    for i in 1..=3 {
        create_and_generate(&app, &format!("ph{i}"), 1).await;
    }
    for i in 1..=3 {
        wait_for_status(
            &app,
            &format!("ph{i}"),
            "completed",
            Duration::from_secs(20),
        )
        .await;
    }
    let (_, first) = app.get("/projects/ph0").await;
    assert_eq!(first["status"], "generating", "{first}");
    let video_requests = fakes.received_by("video").len();
    assert_eq!(video_requests, 4, "the hanging call was not sent again");
}

async fn permanent_failure_is_dead_lettered_and_replayed(backend: Backend) {
    let Some((mut cfg, fakes)) = with_fakes(backend, "e2e_dead").await else {
        return;
    };
    cfg.outbox.max_attempts = 2;
    fakes.set_behaviour(
        "video",
        Behaviour {
            fail_with: Some(400),
            ..Default::default()
        },
    );
    let app = TestApp::start(cfg).await;
    create_and_generate(&app, "pd", 1).await;
    eventually(Duration::from_secs(10), "a dead job", || async {
        app.get("/outbox?status=dead").await.1["jobs"]
            .as_array()
            .is_some_and(|j| j.len() == 1)
    })
    .await;
    let (_, dead) = app.get("/outbox?status=dead").await;
    let job_id = dead["jobs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(fakes.received_by("video").len(), 1, "a 400 is not retried");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, errors) = app.get("/errors?severity=critical&type=automation").await;
    assert_eq!(errors["errors"].as_array().unwrap().len(), 1);
    fakes.set_behaviour("video", Behaviour::default());
    assert_eq!(
        app.post(&format!("/outbox/{job_id}/replay"), json!(null))
            .await
            .0,
        200
    );
    wait_for_status(&app, "pd", "completed", Duration::from_secs(20)).await;
}

async fn failed_videos_are_retried_then_fail_the_project(backend: Backend) {
    let Some((cfg, fakes)) = with_fakes(backend, "e2e_failed_video").await else {
        return;
    };
    fakes.set_behaviour(
        "video",
        Behaviour {
            report_failure: true,
            ..Default::default()
        },
    );
    let app = TestApp::start(cfg).await;
    create_and_generate(&app, "pf", 2).await;
    let project = wait_for_status(&app, "pf", "failed", Duration::from_secs(20)).await;
    assert_eq!(project["scenes"][0]["status"], "failed");
    assert_eq!(project["scenes"][0]["attempts"], 3);
    // The projects gauge, a status at a time: (failed, completed).
    let counted = || async {
        let scrape = app.scrape().await;
        let count = |status| sample(&scrape, "scenehook_projects", &[("status", status)]);
        (count("failed"), count("completed"))
    };
    assert_eq!(counted().await, (Some(1.0), Some(0.0)));
    eventually(
        Duration::from_secs(5),
        "a project.failed notification",
        || async {
            fakes
                .accepted("notification")
                .iter()
                .any(|n| n.body["event"] == "project.failed")
        },
    )
    .await;
    // An operator resumes once the service is healthy.
    fakes.set_behaviour("video", Behaviour::default());
    assert_eq!(app.post("/projects/pf/generate", json!(null)).await.0, 202);
    wait_for_status(&app, "pf", "completed", Duration::from_secs(20)).await;
    assert_eq!(counted().await, (Some(0.0), Some(1.0)));
}

async fn project_api_refuses_taken_ids_and_bad_input(backend: Backend) {
    let Some(cfg) = config(backend, "project_api").await else {
        return;
    };
    let app = TestApp::start_with(cfg, false).await;
    let project = json!({"id": "pt", "name": "n", "scenes": [{"id": "pt_s0", "prompt": "x"}]});
    assert_eq!(app.post("/projects", project.clone()).await.0, 201);
    let (status, body) = app.post("/projects", project).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("id_taken"))
    );
    // A scene id taken by another project is refused too, and nothing of it is kept.
    let (status, _) = app
        .post(
            "/projects",
            json!({"id": "pu", "name": "n", "scenes": [{"id": "pt_s0", "prompt": "x"}]}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(app.get("/projects/pu").await.0, 404);
    for (body, code) in [
        (json!({"name": "n", "scenes": []}), "no_scenes"),
        (
            json!({"id": "a b", "name": "n", "scenes": [{"prompt": "x"}]}),
            "invalid_id",
        ),
        (
            json!({"name": "n", "scenes": [{"prompt": "x"}], "extra": 1}),
            "invalid_body",
        ),
    ] {
        let (status, body) = app.post("/projects", body).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)));
    }
    assert_eq!(app.get("/projects?status=nope").await.0, 400);
    let (status, body) = app.post("/projects/pt/generate", json!(null)).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app.post("/projects/pt/generate", json!(null)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_running"))
    );
}

async fn outbox_api_refuses_unknown_statuses_and_services(backend: Backend) {
    let Some(cfg) = config(backend, "outbox_api").await else {
        return;
    };
    let app = TestApp::start_with(cfg, false).await;
    for (query, code) in [
        ("status=nope", "invalid_status"),
        ("status=Dead", "invalid_status"),
        ("service=nope", "invalid_service"),
        ("status=dead&service=last-frame", "invalid_service"),
    ] {
        let (status, body) = app.get(&format!("/outbox?{query}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
    for query in ["status=in_flight&service=last_frame", "status=done", ""] {
        let (status, body) = app.get(&format!("/outbox?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
    }
    let (status, body) = app
        .post("/outbox/replay", json!({"all": true, "service": "nope"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_service"))
    );
    assert_eq!(
        app.post("/outbox/job_nope/replay", json!(null)).await.0,
        404
    );
}

on_all_backends!(
    outbox_api_refuses_unknown_statuses_and_services,
    project_api_refuses_taken_ids_and_bad_input,
    five_scenes_chain_stitch_and_notify,
    breaker_opens_during_an_outage_and_nothing_is_lost,
    a_hanging_call_holds_one_slot_not_the_lane,
    permanent_failure_is_dead_lettered_and_replayed,
    failed_videos_are_retried_then_fail_the_project,
);

/// Two instances on one Postgres: every job is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_send_every_job_exactly_once() {
    let Some((cfg, fakes)) = with_fakes(Backend::Shared, "e2e_two_instances").await else {
        return;
    };
    let a = TestApp::start(cfg.clone()).await;
    let b = TestApp::start(cfg).await;
    for i in 0..4 {
        create_and_generate(if i % 2 == 0 { &a } else { &b }, &format!("pm{i}"), 3).await;
    }
    for i in 0..4 {
        wait_for_status(&a, &format!("pm{i}"), "completed", Duration::from_secs(40)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = fakes.received();
    let mut keys: Vec<&str> = received
        .iter()
        .filter_map(|r| r.idempotency_key.as_deref())
        .collect();
    let total = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "a job was sent twice");
    assert_eq!(fakes.accepted("video").len(), 12);
    assert_eq!(fakes.accepted("notification").len(), 4);
}

/// A claim on Postgres reads the jobs it takes, not every job that is due: after an outage
/// thousands wait, and a lane claims as each of its calls is settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_reads_only_the_jobs_it_takes() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let Some(db) = migrated_postgres("claim_reads_what_it_takes").await else {
        return;
    };
    // 5,000 jobs due for the last-frame service, and as many done ones beside them.
    db.execute_unprepared(
        "INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
           next_attempt_at, created_at, updated_at) \
         SELECT 'job_' || lpad(i::text, 8, '0'), 'extract_last_frame', 'last_frame', '{}', \
           CASE WHEN i % 2 = 0 THEN 'pending' ELSE 'done' END, 0, \
           now() - (10000 - i) * interval '1 ms', now(), now() \
         FROM generate_series(1, 10000) i; ANALYZE outbox_jobs",
    )
    .await
    .unwrap();
    let claim = Statement::from_sql_and_values(
        DbBackend::Postgres,
        scenehook::db::outbox::CLAIM_POSTGRES,
        [30_000i64.into(), "last_frame".into(), 8i64.into()],
    );
    // One scan for the pending jobs, one for the expired leases.
    assert_each_scan_stops_at_the_limit(&db, claim, CLAIMS_INDEX, 2, 8).await;
}

/// On Postgres a lease ends by the server's clock, which every instance shares: an instance
/// whose own clock runs two minutes ahead neither takes a lease another instance holds for a
/// minute more, nor stamps the lease it takes with its own clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ends_by_the_servers_clock() {
    use scenehook::db::outbox::{Claim, settle_and_claim};
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let Some(db) = migrated_postgres("lease_by_servers_clock").await else {
        return;
    };
    db.execute_unprepared(
        "INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
           next_attempt_at, created_at, updated_at) VALUES \
         ('job_held', 'extract_last_frame', 'last_frame', '{}', 'in_flight', 1, \
           now() + interval '60 s', now(), now()), \
         ('job_due', 'extract_last_frame', 'last_frame', '{}', 'pending', 0, \
           now() - interval '1 s', now(), now())",
    )
    .await
    .unwrap();
    let ahead = Claim {
        service: "last_frame",
        limit: 10,
        lease: Duration::from_secs(30),
        now: chrono::Utc::now() + chrono::Duration::minutes(2),
    };
    let claimed = settle_and_claim(&db, &[], Some(ahead))
        .await
        .unwrap()
        .claimed;
    let ids: Vec<&str> = claimed.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(ids, ["job_due"], "job_held's lease has a minute left");
    let lease_left: f64 = first_value(
        &db,
        Statement::from_string(
            DbBackend::Postgres,
            "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::float8 FROM outbox_jobs \
             WHERE id = 'job_due'",
        ),
    )
    .await
    .unwrap();
    assert!((25.0..=30.0).contains(&lease_left), "{lease_left} s left");
}

/// An operator's listing on Postgres reads, for each service and status, the jobs it may
/// return and no more, however many are stored: each pair's scan backwards along the claims'
/// index stops at the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_reads_only_the_jobs_it_may_return() {
    use scenehook::outbox::{JobStatus, Service};
    use sea_orm::{ConnectionTrait, DbBackend};
    let Some(db) = migrated_postgres("listing_reads_what_it_returns").await else {
        return;
    };
    // 16,000 jobs, a thousand for each service and status.
    db.execute_unprepared(
        "INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
           next_attempt_at, created_at, updated_at) \
         SELECT 'job_' || lpad(i::text, 8, '0'), 'k', \
           (ARRAY['video', 'last_frame', 'stitch', 'notification'])[1 + i % 4], '{}', \
           (ARRAY['pending', 'in_flight', 'done', 'dead'])[1 + (i / 4) % 4], 1, \
           now() - i * interval '1 ms', now(), now() \
         FROM generate_series(1, 16000) i; ANALYZE outbox_jobs",
    )
    .await
    .unwrap();
    for (status, service, pairs) in [
        (None, None, 16),
        (Some(JobStatus::Dead), None, 4),
        (None, Some(Service::Stitch), 4),
        (Some(JobStatus::Done), Some(Service::Video), 1),
    ] {
        let listing = scenehook::db::outbox::listing(status, service, 10);
        let listing = DbBackend::Postgres.build(&listing);
        assert_each_scan_stops_at_the_limit(&db, listing, CLAIMS_INDEX, pairs, 10).await;
    }
}

/// An operator's listing of projects on Postgres reads, for each status, the projects it may
/// return and no more: completed ones are kept by the million.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projects_listing_reads_only_the_projects_it_may_return() {
    use scenehook::domain::ProjectStatus;
    use sea_orm::{ConnectionTrait, DbBackend};
    let Some(db) = migrated_postgres("projects_listing_reads_what_it_returns").await else {
        return;
    };
    // 10,000 projects, 2,000 of each status.
    db.execute_unprepared(
        "INSERT INTO projects (id, name, status, stitch_attempts, created_at, updated_at) \
         SELECT 'p' || lpad(i::text, 8, '0'), 'p', \
           (ARRAY['draft', 'generating', 'stitching', 'completed', 'failed'])[1 + i % 5], 0, \
           now() - i * interval '1 ms', now() \
         FROM generate_series(1, 10000) i; ANALYZE projects",
    )
    .await
    .unwrap();
    for (status, statuses) in [(None, 5), (Some(ProjectStatus::Completed), 1)] {
        let listing = scenehook::db::pipeline::projects_listing(status, 10);
        let listing = DbBackend::Postgres.build(&listing);
        let index = "idx_projects_status_created";
        assert_each_scan_stops_at_the_limit(&db, listing, index, statuses, 10).await;
    }
}

/// Runs `statement` (a listing or a claim) on Postgres and checks how: `scans` scans of
/// `index` (one an arm), none reading more rows than the `limit` it returns.
async fn assert_each_scan_stops_at_the_limit(
    db: &sea_orm::DatabaseConnection,
    statement: sea_orm::Statement,
    index: &str,
    scans: usize,
    limit: u64,
) {
    let plan = explain_analyze(db, statement).await;
    let root = &plan[0]["Plan"];
    let found = scans_of(index, root);
    assert_eq!(found.len(), scans, "one scan an arm: {plan}");
    assert!(
        found.iter().all(|(_, rows)| *rows <= limit),
        "a scan read more rows than the statement returns: {found:?}"
    );
    assert_eq!(root["Actual Rows"], limit, "{plan}");
}

/// The index a lane's claims and the operator's listings of jobs read.
const CLAIMS_INDEX: &str = "idx_outbox_jobs_due";

/// A scratch Postgres database of this test's own, migrated; none when Postgres is not set up.
async fn migrated_postgres(test: &str) -> Option<sea_orm::DatabaseConnection> {
    let url = fresh_postgres(test).await?;
    let db = sea_orm::Database::connect(&url).await.unwrap();
    scenehook::db::migrate(&db).await.unwrap();
    Some(db)
}

/// `statement`'s plan as Postgres ran it (`EXPLAIN (ANALYZE, FORMAT JSON)`).
async fn explain_analyze(
    db: &sea_orm::DatabaseConnection,
    statement: sea_orm::Statement,
) -> serde_json::Value {
    let explain = sea_orm::Statement {
        sql: format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", statement.sql),
        ..statement
    };
    first_value(db, explain).await.unwrap()
}

/// Each scan of `index` under `node`: its kind and the rows it read.
fn scans_of(index: &str, node: &serde_json::Value) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    if node["Index Name"] == index {
        let kind = node["Node Type"].as_str().unwrap_or_default().to_owned();
        found.push((kind, node["Actual Rows"].as_u64().unwrap_or(u64::MAX)));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        found.extend(scans_of(index, child));
    }
    found
}

/// A lane writes what became of its finished jobs and its next claim in one transaction.
/// Each job is settled only if this worker still holds that attempt of it: one re-claimed
/// elsewhere after its lease expired is left to its new holder and reported lost.
async fn a_lane_settles_its_jobs_and_claims_the_next_together(backend: Backend) {
    use scenehook::db::outbox::{Claim, Settle, settle_and_claim};
    use sea_orm::ConnectionTrait;
    let Some(config) = config(backend, "settle_and_claim").await else {
        return;
    };
    let db = scenehook::db::connect(&config).await.unwrap();
    scenehook::db::migrate(&db).await.unwrap();
    db.execute_unprepared(
        "INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
           next_attempt_at, created_at, updated_at) VALUES \
         ('job_1', 'extract_last_frame', 'last_frame', '{}', 'pending', 0, \
           '2026-01-01 00:00:01+00:00', '2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00'), \
         ('job_2', 'extract_last_frame', 'last_frame', '{}', 'pending', 0, \
           '2026-01-01 00:00:02+00:00', '2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00'), \
         ('job_3', 'extract_last_frame', 'last_frame', '{}', 'pending', 0, \
           '2026-01-01 00:00:03+00:00', '2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00'), \
         ('job_4', 'extract_last_frame', 'last_frame', '{}', 'pending', 0, \
           '2026-01-01 00:00:04+00:00', '2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00'), \
         ('job_5', 'extract_last_frame', 'last_frame', '{}', 'pending', 0, \
           '2026-01-01 00:00:05+00:00', '2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00'), \
         ('job_6', 'extract_last_frame', 'last_frame', '{}', 'pending', 0, \
           '2026-01-01 00:00:06+00:00', '2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00'), \
         ('job_7', 'extract_last_frame', 'last_frame', '{}', 'pending', 0, \
           '2026-01-01 00:00:07+00:00', '2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00')",
    )
    .await
    .unwrap();
    let claim = |limit| Claim {
        service: "last_frame",
        limit,
        lease: Duration::from_secs(30),
        now: chrono::Utc::now(),
    };
    let first = settle_and_claim(&db, &[], Some(claim(5))).await.unwrap();
    let ids: Vec<&str> = first.claimed.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(
        ids,
        ["job_1", "job_2", "job_3", "job_4", "job_5"],
        "the oldest due first"
    );
    assert!(first.claimed.iter().all(|job| job.attempts == 1));
    // job_2's lease expired and another worker took it: its attempt is now the 2nd.
    db.execute_unprepared("UPDATE outbox_jobs SET attempts = 2 WHERE id = 'job_2'")
        .await
        .unwrap();
    let retry_at = chrono::Utc::now() + chrono::Duration::minutes(5);
    let mut jobs = first.claimed.into_iter();
    let mut next = || jobs.next().unwrap();
    let finished = [
        (next(), Settle::Done),
        (next(), Settle::Done),
        (
            next(),
            Settle::RetryAt {
                at: retry_at,
                error: "503".into(),
            },
        ),
        (
            next(),
            Settle::Dead {
                error: "404".into(),
            },
        ),
        (next(), Settle::Release { at: retry_at }),
    ];
    let second = settle_and_claim(&db, &finished, Some(claim(5)))
        .await
        .unwrap();
    assert_eq!(second.lost, ["job_2"]);
    let ids: Vec<&str> = second.claimed.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(
        ids,
        ["job_6", "job_7"],
        "the settled jobs are not due again yet"
    );
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT id, status, attempts, last_error FROM outbox_jobs ORDER BY id",
        ))
        .await
        .unwrap();
    let states: Vec<(String, String, i32, Option<String>)> = rows
        .iter()
        .map(|row| {
            (
                row.try_get_by_index(0).unwrap(),
                row.try_get_by_index(1).unwrap(),
                row.try_get_by_index(2).unwrap(),
                row.try_get_by_index(3).unwrap(),
            )
        })
        .collect();
    let state = |id: &str, status: &str, attempts: i32, error: Option<&str>| {
        (
            id.to_owned(),
            status.to_owned(),
            attempts,
            error.map(str::to_owned),
        )
    };
    assert_eq!(
        states,
        [
            state("job_1", "done", 1, None),
            state("job_2", "in_flight", 2, None),
            state("job_3", "pending", 1, Some("503")),
            state("job_4", "dead", 1, Some("404")),
            state("job_5", "pending", 0, None),
            state("job_6", "in_flight", 1, None),
            state("job_7", "in_flight", 1, None),
        ]
    );
}

backend_tests!(sqlite, Embedded; a_lane_settles_its_jobs_and_claims_the_next_together);
backend_tests!(postgres, Shared; a_lane_settles_its_jobs_and_claims_the_next_together);

/// Migrations go up, down and up again on SQLite and Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_round_trip() {
    use migration::{Migrator, MigratorTrait};
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![format!("sqlite://{}/m.db?mode=rwc", dir.path().display())];
    if let Some(pg) = fresh_postgres("migrations_round_trip").await {
        urls.push(pg);
    }
    for url in urls {
        let db = sea_orm::Database::connect(&url).await.unwrap();
        Migrator::up(&db, None).await.unwrap();
        Migrator::down(&db, None).await.unwrap();
        // Down all the way: every migration is pending again.
        assert_eq!(
            Migrator::get_pending_migrations(&db).await.unwrap().len(),
            Migrator::migrations().len()
        );
        assert_eq!(Migrator::migrations().len(), 6);
        Migrator::up(&db, None).await.unwrap();
        assert!(
            Migrator::get_pending_migrations(&db)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// Instances started together on a new Postgres database (a fleet's first start, compose's
/// replicas) migrate it once between them: each waits for the one migrating, then finds
/// nothing pending, and none fails its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_once() {
    let Some(url) = fresh_postgres("instances_starting_together_migrate_once").await else {
        return;
    };
    let mut instances = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        instances.spawn(async move {
            let db = sea_orm::Database::connect(&url).await.unwrap();
            scenehook::db::migrate(&db).await
        });
    }
    // A migration that waited on an instance waiting for the lock would never end.
    let all_started = async {
        while let Some(migrated) = instances.join_next().await {
            migrated.unwrap().expect("every instance starts");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all_started)
        .await
        .expect("the instances migrate within a minute");
    let db = sea_orm::Database::connect(&url).await.unwrap();
    assert!(scenehook::db::migrations_applied(&db).await.unwrap());
}

/// A fresh Postgres database migrated up to migration 5, with projects p1 and p2; none without
/// Postgres.
async fn before_migration_6(test: &str) -> Option<sea_orm::DatabaseConnection> {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::ConnectionTrait;
    let db = sea_orm::Database::connect(&fresh_postgres(test).await?)
        .await
        .unwrap();
    Migrator::up(&db, Some(5)).await.unwrap();
    db.execute_unprepared(
        "INSERT INTO projects (id, name, status, stitch_attempts, created_at, updated_at) \
         VALUES ('p1', 'p1', 'generating', 0, now(), now()), \
                ('p2', 'p2', 'generating', 0, now(), now())",
    )
    .await
    .unwrap();
    Some(db)
}

/// A transaction that changed project p1, left open: migration 6's index build waits for it.
async fn write_held_open(db: &sea_orm::DatabaseConnection) -> sea_orm::DatabaseTransaction {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let writer = db.begin().await.unwrap();
    writer
        .execute_unprepared("UPDATE projects SET name = 'changed' WHERE id = 'p1'")
        .await
        .unwrap();
    writer
}

/// Waits until migration 6's index build, in this test's database, waits for a lock.
async fn until_the_index_build_waits(db: &sea_orm::DatabaseConnection) {
    let waiting = sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE '% INDEX CONCURRENTLY %' \
         AND wait_event_type = 'Lock'",
    );
    eventually(
        Duration::from_secs(20),
        "the migration waits for the open write",
        || async { first_value::<i64>(db, waiting.clone()).await == Some(1) },
    )
    .await;
}

/// On Postgres, migration 6 swaps the projects' index without holding project writes. While
/// it waits for a transaction that changed a project, another project is written all the same
/// (a plain `CREATE` or `DROP INDEX` would queue for its lock and every write behind it). And
/// an index a build cut short left invalid under the new index's name is built again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projects_index_is_replaced_without_holding_project_writes() {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let Some(db) = before_migration_6("projects_index_concurrently").await else {
        return;
    };
    let postgres = |sql: &str| sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql);
    let valid = || {
        first_value::<bool>(
            &db,
            postgres(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE c.relname = 'idx_projects_status_created'",
            ),
        )
    };
    // Two projects of one status: a unique build fails and leaves its index invalid.
    db.execute_unprepared(
        "CREATE UNIQUE INDEX CONCURRENTLY idx_projects_status_created ON projects (status)",
    )
    .await
    .unwrap_err();
    assert_eq!(valid().await, Some(false));

    let writer = write_held_open(&db).await;
    let migrating = tokio::spawn({
        let db = db.clone();
        async move { Migrator::up(&db, None).await }
    });
    until_the_index_build_waits(&db).await;
    let other = db.begin().await.unwrap();
    other
        .execute_unprepared("SET LOCAL lock_timeout = '2s'")
        .await
        .unwrap();
    other
        .execute_unprepared("UPDATE projects SET name = 'changed' WHERE id = 'p2'")
        .await
        .expect("another project is written while the index waits");
    other.commit().await.unwrap();
    assert!(!migrating.is_finished());
    writer.commit().await.unwrap();
    migrating.await.unwrap().unwrap();
    assert_eq!(valid().await, Some(true));
}

/// The migrations' advisory lock ("scenehok" as a number, as the README gives it).
const MIGRATIONS_LOCK: i64 = i64::from_be_bytes(*b"scenehok");

/// On Postgres, the migrations run on the session that holds their lock. When that session is
/// lost mid-migration (terminated here while migration 6 waits to build its index), the lock
/// goes and the migration stops with it, instead of going on unlocked beside the instance that
/// takes the lock next; the next start finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_stops_when_its_lock_is_lost() {
    use sea_orm::ConnectionTrait;
    let Some(db) = before_migration_6("a_migration_stops_when_its_lock_is_lost").await else {
        return;
    };
    let writer = write_held_open(&db).await;
    let migrating = tokio::spawn({
        let db = db.clone();
        async move { scenehook::db::migrate(&db).await }
    });
    until_the_index_build_waits(&db).await;
    let postgres = |sql: String| sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql);
    let lock_holders = format!(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ((classid::int8 << 32) | objid::int8) = {MIGRATIONS_LOCK}"
    );
    let holder = first_value::<i32>(&db, postgres(lock_holders.clone()))
        .await
        .expect("the migrating instance holds the lock");
    db.execute_unprepared(&format!("SELECT pg_terminate_backend({holder}, 5000)"))
        .await
        .unwrap();
    writer.commit().await.unwrap();
    migrating
        .await
        .unwrap()
        .expect_err("the migration stops with its lock");
    assert_eq!(first_value::<i32>(&db, postgres(lock_holders)).await, None);
    assert!(!scenehook::db::migrations_applied(&db).await.unwrap());

    scenehook::db::migrate(&db).await.unwrap();
    assert!(scenehook::db::migrations_applied(&db).await.unwrap());
}

/// An instance waiting for another's migrations holds nothing yet, so a connection it loses
/// while it waits is replaced and it goes on waiting, then migrates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_waiting_for_the_lock_survives_a_lost_connection() {
    use sea_orm::ConnectionTrait;
    let Some(url) = fresh_postgres("waiting_for_the_lock_survives").await else {
        return;
    };
    let mut options = sea_orm::ConnectOptions::new(url.clone());
    options.max_connections(1);
    let other_instance = sea_orm::Database::connect(options).await.unwrap();
    other_instance
        .execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATIONS_LOCK})"))
        .await
        .unwrap();
    let db = sea_orm::Database::connect(&url).await.unwrap();
    let migrating = tokio::spawn({
        let db = db.clone();
        async move { scenehook::db::migrate(&db).await }
    });
    let postgres = |sql: &str| sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql);
    let poller = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
        AND query LIKE 'SELECT pg_try_advisory_lock(%'";
    let found = std::sync::Mutex::new(None);
    let (db_ref, found_ref) = (&db, &found);
    let poller_pid = || async move {
        let pid = first_value::<i32>(db_ref, postgres(poller)).await;
        *found_ref.lock().unwrap() = pid;
        pid
    };
    eventually(
        Duration::from_secs(20),
        "the instance polls for the lock",
        || async { poller_pid().await.is_some() },
    )
    .await;
    let lost = found.lock().unwrap().expect("a poller");
    db.execute_unprepared(&format!("SELECT pg_terminate_backend({lost}, 5000)"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the instance polls again on a new connection",
        || async { poller_pid().await.is_some_and(|pid| pid != lost) },
    )
    .await;
    assert!(!migrating.is_finished());
    other_instance
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATIONS_LOCK})"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), migrating)
        .await
        .expect("the instance migrates once the lock is free")
        .unwrap()
        .unwrap();
    assert!(scenehook::db::migrations_applied(&db).await.unwrap());
}

/// Production refuses placeholder or short secrets, with one line naming the variable.
#[test]
fn production_refuses_weak_secrets() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scenehook"))
        .env("NODE_ENV", "production")
        .env("VIDEO_WEBHOOK_SECRET", "your-video-webhook-secret")
        .env("LAST_FRAME_WEBHOOK_SECRET", "0123456789")
        .env("STITCH_WEBHOOK_SECRET", "s".repeat(40))
        .env("OPERATOR_API_KEYS", "ops:key:rw")
        .env("SCENEHOOK_CONFIG_DIR", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("VIDEO_WEBHOOK_SECRET") && l.contains("placeholder")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("LAST_FRAME_WEBHOOK_SECRET") && l.contains("too short")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("0123456789") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
