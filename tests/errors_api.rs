//! `/api/v1/errors` over HTTP: the seed's calls, authentication, and one store shared by
//! every instance.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use scenehook::store::{ErrorType, NewError};
use serde_json::json;

async fn record(app: &TestApp, entry: NewError) -> String {
    app.gateway
        .state
        .reporter
        .store()
        .record(entry, scenehook::reporter::now_ms())
        .await
        .unwrap()
        .id
}

async fn list_filter_dismiss_and_stats(backend: Backend) {
    let Some(cfg) = config(backend, "errors_api").await else {
        return;
    };
    let app = TestApp::start_with(cfg, false).await;
    let error_id = record(
        &app,
        NewError::new(
            scenehook::store::Severity::Error,
            ErrorType::Generation,
            "clip failed",
        ),
    )
    .await;
    record(&app, NewError::warning(ErrorType::Webhook, "odd signature")).await;
    let critical = record(&app, NewError::critical(ErrorType::System, "database full")).await;

    let (status, body) = app.get("/errors").await;
    assert_eq!(status, 200);
    assert_eq!(body["errors"].as_array().unwrap().len(), 3);
    assert!(body.get("nextCursor").is_some());
    let (_, body) = app.get("/errors?severity=error").await;
    assert_eq!(body["errors"][0]["id"], error_id.as_str());
    assert_eq!(body["errors"][0]["type"], "generation");
    assert!(
        body["errors"][0]["createdAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(app.get("/errors?severity=nope").await.0, 400);

    // A multi-byte reason over the 500-character cap is cut on a character boundary.
    let long_reason = format!("retried{}", "é".repeat(600));
    let (status, body) = app
        .post(
            "/errors/dismiss",
            json!({"errorId": error_id, "reason": long_reason}),
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"dismissed": [error_id], "count": 1}))
    );
    let (_, body) = app
        .get("/errors?includeDismissed=true&severity=error")
        .await;
    assert_eq!(body["errors"][0]["dismissedBy"], "ops");
    let stored_reason = body["errors"][0]["dismissReason"].as_str().unwrap();
    assert!(stored_reason.starts_with("retried") && stored_reason.chars().count() == 500);

    let (status, body) = app
        .post("/errors/dismiss", json!({"errorId": critical}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_dismissible"))
    );
    assert_eq!(
        app.post("/errors/dismiss", json!({"errorId": "err_missing"}))
            .await
            .0,
        404
    );
    assert_eq!(app.post("/errors/dismiss", json!({})).await.0, 400);
    assert_eq!(
        app.post("/errors/dismiss", json!({"errorId": "x", "all": true}))
            .await
            .0,
        400
    );
    let (status, body) = app.post("/errors/dismiss", json!({"all": true})).await;
    assert_eq!(
        (status, body["count"].as_u64()),
        (200, Some(1)),
        "critical stays: {body}"
    );

    let (_, stats) = app.get("/errors/stats").await;
    assert_eq!(
        stats,
        json!({"total": 3, "active": 1, "dismissed": 2,
        "bySeverity": {"critical": 1}, "byType": {"system": 1}})
    );
}

async fn operator_authentication(backend: Backend) {
    let Some(cfg) = config(backend, "errors_auth").await else {
        return;
    };
    let app = TestApp::start_with(cfg, false).await;
    let no_key = app
        .http
        .get(format!("{}/api/v1/errors", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let mut almost = RW_KEY.to_owned();
    almost.pop();
    almost.push('X');
    assert_eq!(
        app.api(Method::GET, "/errors", &almost, None).await.0,
        401,
        "last byte differs"
    );
    assert_eq!(app.api(Method::GET, "/errors", RO_KEY, None).await.0, 200);
    assert_eq!(
        app.api(Method::GET, "/errors/stats", RO_KEY, None).await.0,
        200
    );
    let (status, body) = app
        .api(
            Method::POST,
            "/errors/dismiss",
            RO_KEY,
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        app.api(
            Method::POST,
            "/errors/dismiss",
            RW_KEY,
            Some(json!({"all": true}))
        )
        .await
        .0,
        200
    );
}

async fn success_entries_leave_the_active_list(backend: Backend) {
    let Some(mut cfg) = config(backend, "errors_success_ttl").await else {
        return;
    };
    cfg.errors.success_ttl_secs = 3;
    let app = TestApp::start_with(cfg, false).await;
    record(&app, NewError::success("Project done")).await;
    assert_eq!(
        app.get("/errors?type=success").await.1["errors"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        app.get("/errors?type=success").await.1["errors"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

on_all_backends!(
    list_filter_dismiss_and_stats,
    operator_authentication,
    success_entries_leave_the_active_list
);

/// An error added through instance A is listed, counted and dismissed through instance B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_for_every_instance() {
    let Some(cfg) = config(Backend::Shared, "errors_two_instances").await else {
        return;
    };
    let a = TestApp::start_with(cfg.clone(), false).await;
    let b = TestApp::start_with(cfg, false).await;
    let id = record(
        &a,
        NewError::new(
            scenehook::store::Severity::Error,
            ErrorType::Processing,
            "from A",
        ),
    )
    .await;
    assert_eq!(b.get("/errors").await.1["errors"][0]["id"], id.as_str());
    assert_eq!(b.get("/errors/stats").await.1["active"], 1);
    assert_eq!(
        b.post("/errors/dismiss", json!({"errorId": id})).await.0,
        200
    );
    assert_eq!(a.get("/errors/stats").await.1["dismissed"], 1);
}

/// Reports reach Redis in batches: a success for every verified scene must not cost a round
/// trip each. 643 reports take about 21 EVALSHA calls (32 entries a call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_reach_redis_in_batches() {
    // INFO commandstats is server-wide: a Redis of this test's own keeps the count exact.
    let Some(redis) = OwnRedis::start("errors_batched_reports") else {
        return;
    };
    let mut cfg = config(Backend::Embedded, "errors_batched_reports")
        .await
        .unwrap();
    cfg.redis_url = redis.url();
    let app = TestApp::start_with(cfg, false).await;
    let reporter = &app.gateway.state.reporter;
    let client =
        scenehook::store::redis::connect(&redis.url(), Duration::from_secs(2), &Default::default())
            .await
            .unwrap();
    let evalsha_calls = || async {
        scenehook::store::redis::command_calls(&client)
            .await
            .unwrap()
            .into_iter()
            .find(|(name, _)| name == "evalsha")
            .map_or(0, |(_, calls)| calls)
    };
    let before = evalsha_calls().await;
    for i in 0..640 {
        reporter.report(NewError::success(format!("Scene {i} verified")));
    }
    for i in 0..3 {
        reporter.report(NewError::warning(
            ErrorType::Generation,
            format!("slow {i}"),
        ));
    }
    // `queued` counts the batch in flight too: at 0, every call has returned.
    eventually(Duration::from_secs(10), "the queue is written", || async {
        reporter.queued() == 0
    })
    .await;
    let calls = evalsha_calls().await - before;
    assert!(
        (21..=25).contains(&calls),
        "643 reports took {calls} EVALSHA calls"
    );
    let stats = app.get("/errors/stats").await.1;
    assert_eq!(stats["byType"]["success"], 640, "{stats}");
    assert_eq!(stats["byType"]["generation"], 3, "{stats}");
}
