//! `/api/openapi.json` describes every route, and every operation it describes is served.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_covers_and_matches_the_router() {
    let app = TestApp::start_with(config(Backend::Embedded, "openapi").await.unwrap(), false).await;
    let doc: serde_json::Value = app
        .http
        .get(format!("{}/api/openapi.json", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                operations.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    operations.sort();
    let expected = [
        "GET /api/v1/errors",
        "GET /api/v1/errors/stats",
        "POST /api/v1/errors/dismiss",
        "GET /api/v1/projects",
        "POST /api/v1/projects",
        "GET /api/v1/projects/{id}",
        "POST /api/v1/projects/{id}/generate",
        "GET /api/v1/outbox",
        "POST /api/v1/outbox/replay",
        "POST /api/v1/outbox/{id}/replay",
        "GET /api/v1/services",
        "GET /api/webhooks/video-complete",
        "POST /api/webhooks/video-complete",
        "GET /api/webhooks/last-frame-complete",
        "POST /api/webhooks/last-frame-complete",
        "GET /api/webhooks/stitch-complete",
        "POST /api/webhooks/stitch-complete",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    ];
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(operations, expected);
    // Each documented operation reaches a handler, not the router's fallbacks.
    for op in &operations {
        let (method, path) = op.split_once(' ').unwrap();
        let url = format!("{}{}", app.url, path.replace("{id}", "x"));
        let request = app
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(RW_KEY)
            .header("content-type", "application/json")
            .body("{}");
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert_ne!(status, 405, "{op} is not routed");
        if status == 404 {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert_ne!(
                body["error"]["code"], "route_not_found",
                "{op} is not routed"
            );
        }
    }
    // Client mistakes the router itself catches still get the error body.
    let (status, body) = app.get("/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "route_not_found");
    let wrong_method = app
        .http
        .delete(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let body: serde_json::Value = wrong_method.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let (status, body) = app.get("/errors?limit=lots").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_query");
    // Documented errors use the shared body.
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["operator_key"].is_object());
    let responses = &doc["paths"]["/api/webhooks/video-complete"]["post"]["responses"];
    for code in [
        "200", "400", "401", "404", "409", "413", "415", "429", "503",
    ] {
        assert!(
            responses.get(code).is_some(),
            "video-complete documents {code}"
        );
    }
}
