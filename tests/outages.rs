//! Redis or the database going away: no panic, no hang, the configured behaviour, readiness
//! reflecting it within 2 s, and recovery when they return.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

async fn readiness_turns(app: &TestApp, status: u16, within: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (s, body) = app.readiness().await;
        if s == status {
            return body;
        }
        assert!(
            started.elapsed() < within,
            "/readyz did not turn {status} within {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_reports_once_and_recovers() {
    let Some(mut redis) = OwnRedis::start("redis_outage_fail_open") else {
        return;
    };
    let mut cfg = config(Backend::Embedded, "redis_outage_fail_open")
        .await
        .unwrap();
    cfg.redis_url = redis.url();
    let app = TestApp::start_with(cfg, false).await;
    assert_eq!(
        app.webhook("video-complete", VIDEO_SECRET, UNKNOWN_PROJECT_VIDEO)
            .await
            .status(),
        404
    );
    readiness_turns(&app, 200, Duration::from_secs(2)).await;

    redis.stop();
    let body = readiness_turns(&app, 503, Duration::from_secs(2)).await;
    assert_ne!(body["components"]["redis"], "ok");
    // Webhooks are still answered, limited by this instance alone, without hanging.
    for _ in 0..5 {
        let started = Instant::now();
        let r = app
            .webhook("video-complete", VIDEO_SECRET, UNKNOWN_PROJECT_VIDEO)
            .await;
        assert_eq!(r.status(), 404, "fail open: the request goes through");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        app.gateway.state.reporter.queued() >= 1,
        "entries wait in the queue"
    );

    redis.restart();
    readiness_turns(&app, 200, Duration::from_secs(5)).await;
    // The buffer is flushed: one critical entry for the outage, not one per request.
    eventually(
        Duration::from_secs(8),
        "the buffered critical entry arrives",
        || async {
            let (_, body) = app.get("/errors?severity=critical").await;
            body["errors"]
                .as_array()
                .is_some_and(|e| e.len() == 1 && e[0]["count"] == 1)
        },
    )
    .await;
    let metrics = app.scrape().await;
    assert!(metrics.contains("scenehook_rate_limit_fail_open_total"));
    // Each decision is counted under the limiter that made it.
    let decisions = |backend, decision| {
        sample(
            &metrics,
            "scenehook_rate_limit_decisions_total",
            &[
                ("endpoint", "video-complete"),
                ("backend", backend),
                ("decision", decision),
            ],
        )
    };
    assert_eq!(decisions("redis", "allowed"), Some(1.0));
    assert_eq!(decisions("memory_fallback", "allowed"), Some(5.0));
    assert_eq!(decisions("memory_fallback", "rejected"), Some(0.0));
    // What the ScenehookRedisUnreachable alert watches: one error per call that failed.
    assert_eq!(
        sample(
            &metrics,
            "scenehook_rate_limit_store_errors_total",
            &[("backend", "redis")]
        ),
        Some(5.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_when_configured() {
    let Some(mut redis) = OwnRedis::start("redis_outage_fail_closed") else {
        return;
    };
    let mut cfg = config(Backend::Embedded, "redis_outage_fail_closed")
        .await
        .unwrap();
    cfg.redis_url = redis.url();
    cfg.rate_limit.fail_open = false;
    let app = TestApp::start_with(cfg, false).await;
    app.project_awaiting_video("p", &[("s1", "x")], "t1").await;
    redis.stop();
    // A delivery that would be applied, submitted while the limiter's call was on its way:
    // the limiter's failure refuses it, and nothing of it is kept.
    let applicable = UNKNOWN_PROJECT_VIDEO.replace("nope", "p");
    let r = app
        .webhook("video-complete", VIDEO_SECRET, &applicable)
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    let (_, project) = app.get("/projects/p").await;
    assert_eq!(project["scenes"][0]["status"], "generating", "{project}");
    assert!(project["scenes"][0]["video_url"].is_null(), "{project}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_then_recovers() {
    let Some(pg) = OwnPostgres::start("database_outage") else {
        return;
    };
    let mut cfg = config(Backend::Embedded, "database_outage").await.unwrap();
    cfg.database_url = pg.url();
    cfg.database.acquire_timeout_ms = 1000;
    let app = TestApp::start_with(cfg, false).await;
    assert_eq!(
        app.post(
            "/projects",
            json!({"id": "p", "name": "n", "scenes": [{"id": "s1", "prompt": "x"}]})
        )
        .await
        .0,
        201
    );
    assert_eq!(app.post("/projects/p/generate", json!(null)).await.0, 202);

    pg.stop();
    readiness_turns(&app, 503, Duration::from_secs(2)).await;
    let good = UNKNOWN_PROJECT_VIDEO.replace("nope", "p");
    let r = app.webhook("video-complete", VIDEO_SECRET, &good).await;
    assert_eq!(r.status(), 503, "2xx only when committed");
    assert!(r.headers().contains_key("retry-after"));

    pg.restart();
    readiness_turns(&app, 200, Duration::from_secs(10)).await;
    let r = app.webhook("video-complete", VIDEO_SECRET, &good).await;
    assert_eq!(r.status(), 200, "the sender's retry is accepted");
    let (_, project) = app.get("/projects/p").await;
    assert_eq!(project["scenes"][0]["status"], "extracting");
}
