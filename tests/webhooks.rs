//! Webhook ingestion against the real app: signatures, rate limits, idempotency, bad input.
//! Each test runs on the embedded backend (SQLite + in-process) and on Postgres + Redis.

mod common;

use std::time::Duration;

use common::*;
use scenehook::outbox::Service;
use serde_json::json;

const SEED: &str = r#"{"task_id":"test_123","status":"completed","scene_id":"scene_001","project_id":"proj_test","video_url":"https://example.com/test.mp4","timestamp":"2025-10-04T10:30:00.000Z"}"#;

/// `proj_test` with `scene_001` whose generation was started and answered with `test_123`
/// (done without the outbox worker, as the video service would have).
async fn seeded(backend: Backend, test: &str) -> Option<TestApp> {
    seeded_with(backend, test, |_| ()).await
}

/// [`seeded`], its configuration changed by `configure` first.
async fn seeded_with(
    backend: Backend,
    test: &str,
    configure: impl FnOnce(&mut scenehook::config::Config),
) -> Option<TestApp> {
    let mut config = config(backend, test).await?;
    configure(&mut config);
    let app = TestApp::start_with(config, false).await;
    app.project_awaiting_video(
        "proj_test",
        &[("scene_001", "first"), ("scene_002", "second")],
        "test_123",
    )
    .await;
    Some(app)
}

async fn outbox_count(app: &TestApp, service: Service) -> usize {
    scenehook::db::outbox::list(&app.gateway.state.db, None, Some(service), 1000)
        .await
        .unwrap()
        .len()
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn seed_manual_test_with_openssl_signature(backend: Backend) {
    let Some(app) = seeded(backend, "seed_manual_test").await else {
        return;
    };
    // Exactly the seed's command: echo -n "$PAYLOAD" | openssl dgst -sha256 -hmac "$SECRET" -hex
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"echo -n "$PAYLOAD" | openssl dgst -sha256 -hmac "$SECRET" -hex | cut -d' ' -f2"#)
        .env("PAYLOAD", SEED)
        .env("SECRET", VIDEO_SECRET)
        .output()
        .expect("openssl runs");
    let signature = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(signature.len(), 64, "openssl printed {signature:?}");
    let response = app
        .http
        .post(format!("{}/api/webhooks/video-complete", app.url))
        .header("Content-Type", "application/json")
        .header("X-Webhook-Signature", &signature)
        .body(SEED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for header in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
        "x-request-id",
    ] {
        assert!(response.headers().contains_key(header), "missing {header}");
    }
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, json!({"ok": true, "duplicate": false}));
    let (_, project) = app.get("/projects/proj_test").await;
    assert_eq!(
        project["scenes"][0]["videoUrl"],
        "https://example.com/test.mp4"
    );
    assert_eq!(project["scenes"][0]["status"], "extracting");
    assert_eq!(outbox_count(&app, Service::LastFrame).await, 1);
}

async fn forged_truncated_empty_and_rotated_signatures(backend: Backend) {
    let Some(mut cfg) = config(backend, "signatures").await else {
        return;
    };
    cfg.webhooks.video_secrets = vec![
        scenehook::config::Secret::new("new-rotated-video-secret-000000000000"),
        scenehook::config::Secret::new(VIDEO_SECRET),
    ];
    let app = TestApp::start_with(cfg, false).await;
    let good = scenehook::signature::sign_hex(VIDEO_SECRET, SEED.as_bytes());
    let forged = scenehook::signature::sign_hex("attacker-secret", SEED.as_bytes());
    for (signature, why) in [
        (forged.as_str(), "forged"),
        (&good[..40], "truncated"),
        ("", "empty"),
        ("sha256=", "empty sha256"),
    ] {
        let response = app
            .http
            .post(format!("{}/api/webhooks/video-complete", app.url))
            .header("content-type", "application/json")
            .header("x-webhook-signature", signature)
            .body(SEED)
            .send()
            .await
            .unwrap();
        let (status, code) = error_code(response).await;
        assert_eq!((status, code.as_str()), (401, "invalid_signature"), "{why}");
    }
    // No signature at all.
    let response = app
        .http
        .post(format!("{}/api/webhooks/video-complete", app.url))
        .header("content-type", "application/json")
        .body(SEED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // The previous secret still works during rotation (unknown project: 404, past the check).
    let response = app.webhook("video-complete", VIDEO_SECRET, SEED).await;
    assert_eq!(
        error_code(response).await,
        (404, "project_not_found".into())
    );
    // The secret never appears in a body.
    let response = app.webhook("video-complete", "wrong", SEED).await;
    let text = response.text().await.unwrap();
    assert!(!text.contains(VIDEO_SECRET) && !text.contains("new-rotated"));
}

async fn standard_webhooks_headers_and_replay_window(backend: Backend) {
    let Some(mut cfg) = config(backend, "standard_webhooks").await else {
        return;
    };
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    cfg.webhooks.video_secrets = vec![scenehook::config::Secret::new(secret)];
    let app = TestApp::start_with(cfg, false).await;
    // Offsets from the clock at each send; the exact ±301 s boundary is tested with a fixed
    // clock in tests/signatures.rs.
    let send = |offset: i64, id: &str| {
        let ts = chrono::Utc::now().timestamp() + offset;
        let signature = scenehook::signature::sign_standard(secret, id, ts, SEED.as_bytes());
        app.http
            .post(format!("{}/api/webhooks/video-complete", app.url))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", format!("v1,bm9wZQ== {signature}"))
            .body(SEED)
            .send()
    };
    let fresh = send(0, "msg_1").await.unwrap();
    assert_eq!(
        error_code(fresh).await,
        (404, "project_not_found".into()),
        "valid signature passes"
    );
    let replayed = send(-310, "msg_2").await.unwrap();
    assert_eq!(
        error_code(replayed).await,
        (401, "invalid_signature".into())
    );
    let future = send(310, "msg_3").await.unwrap();
    assert_eq!(future.status(), 401);
}

async fn rate_limit_101st_request_is_429(backend: Backend) {
    let Some(app) = seeded(backend, "rate_limit").await else {
        return;
    };
    let mut statuses = Vec::new();
    for _ in 0..101 {
        // Unauthenticated requests count too.
        let response = app.webhook("video-complete", "not-the-secret", "{}").await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
        }
    }
    assert!(statuses[..100].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses[100], 429);
    // A correctly signed delivery, read and submitted while the limiter decided, is refused
    // all the same and leaves nothing behind.
    let signed = app.webhook("video-complete", VIDEO_SECRET, SEED).await;
    assert_eq!(signed.status(), 429);
    assert_eq!(outbox_count(&app, Service::LastFrame).await, 0);
    let scenes = scenehook::db::pipeline::find_project(&app.gateway.state.db, "proj_test")
        .await
        .unwrap()
        .unwrap()
        .1;
    assert_eq!(scenes[0].status, "generating");
    // Another endpoint has its own window.
    let other = app.webhook("stitch-complete", "x", "{}").await;
    assert_eq!(other.status(), 401);
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let spoofed = app
        .http
        .post(format!("{}/api/webhooks/video-complete", app.url))
        .header("content-type", "application/json")
        .header("x-forwarded-for", "203.0.113.77")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 429);
}

async fn duplicate_delivery_has_one_effect(backend: Backend) {
    let Some(app) = seeded(backend, "duplicate").await else {
        return;
    };
    let first = app.webhook("video-complete", VIDEO_SECRET, SEED).await;
    assert_eq!(
        first.json::<serde_json::Value>().await.unwrap()["duplicate"],
        false
    );
    let second = app.webhook("video-complete", VIDEO_SECRET, SEED).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        second.json::<serde_json::Value>().await.unwrap(),
        json!({"ok": true, "duplicate": true})
    );
    assert_eq!(outbox_count(&app, Service::LastFrame).await, 1);
}

async fn concurrent_duplicates_have_one_effect(backend: Backend) {
    // Two writers (on Postgres; SQLite has one): duplicates racing within one instance may
    // then land in two transactions side by side, as they do across instances.
    let Some(app) = seeded_with(backend, "concurrent_duplicates", |config| {
        config.database.ingest_writers = 2
    })
    .await
    else {
        return;
    };
    let sends = (0..8).map(|_| app.webhook("video-complete", VIDEO_SECRET, SEED));
    let responses = futures::future::join_all(sends).await;
    let mut duplicates = 0;
    for r in responses {
        assert_eq!(r.status(), 200);
        if r.json::<serde_json::Value>().await.unwrap()["duplicate"] == true {
            duplicates += 1;
        }
    }
    assert_eq!(duplicates, 7);
    assert_eq!(outbox_count(&app, Service::LastFrame).await, 1);
}

async fn bad_input_is_a_clear_4xx(backend: Backend) {
    let Some(app) = seeded(backend, "bad_input").await else {
        return;
    };
    let url = format!("{}/api/webhooks/video-complete", app.url);
    // 415: not JSON.
    let r = app
        .http
        .post(&url)
        .header("content-type", "text/plain")
        .header(
            "x-webhook-signature",
            scenehook::signature::sign_hex(VIDEO_SECRET, SEED.as_bytes()),
        )
        .body(SEED)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (415, "unsupported_media_type".into()));
    // 413: over the body limit.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
    let r = app.webhook("video-complete", VIDEO_SECRET, &big).await;
    assert_eq!(error_code(r).await, (413, "payload_too_large".into()));
    // 400: malformed JSON, missing field, wrong type, non-http URL.
    let cases = [
        ("{not json", "malformed"),
        (
            r#"{"status":"completed","scene_id":"scene_001","project_id":"proj_test","video_url":"https://e.com/x"}"#,
            "task_id",
        ),
        (
            r#"{"task_id":5,"status":"completed","scene_id":"scene_001","project_id":"proj_test","video_url":"https://e.com/x"}"#,
            "invalid type",
        ),
        (
            r#"{"task_id":"t","status":"completed","scene_id":"scene_001","project_id":"proj_test","video_url":"ftp://e.com/x"}"#,
            "video_url",
        ),
    ];
    for (body, needle) in cases {
        let r = app.webhook("video-complete", VIDEO_SECRET, body).await;
        let status = r.status().as_u16();
        let json: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert_eq!(json["error"]["code"], "invalid_payload");
        assert!(
            json["error"]["message"].as_str().unwrap().contains(needle),
            "{json}"
        );
    }
    // 404s.
    let unknown_project = SEED.replace("proj_test", "proj_nope");
    let r = app
        .webhook("video-complete", VIDEO_SECRET, &unknown_project)
        .await;
    assert_eq!(error_code(r).await, (404, "project_not_found".into()));
    let unknown_scene = SEED.replace("scene_001", "scene_999");
    let r = app
        .webhook("video-complete", VIDEO_SECRET, &unknown_scene)
        .await;
    assert_eq!(error_code(r).await, (404, "scene_not_found".into()));
    // 409: a late callback from another task.
    let stale = SEED.replace("test_123", "test_old");
    let r = app.webhook("video-complete", VIDEO_SECRET, &stale).await;
    assert_eq!(error_code(r).await, (409, "stale_task".into()));
    // 409: last frame for a scene whose video never completed.
    let frame = r#"{"task_id":"lf1","status":"completed","scene_id":"scene_002","project_id":"proj_test","last_frame_url":"https://e.com/f.png"}"#;
    let r = app
        .webhook("last-frame-complete", LAST_FRAME_SECRET, frame)
        .await;
    assert_eq!(error_code(r).await, (409, "invalid_transition".into()));
    // None of it wrote anything.
    assert_eq!(outbox_count(&app, Service::LastFrame).await, 0);
    let (_, project) = app.get("/projects/proj_test").await;
    assert_eq!(project["scenes"][0]["status"], "generating");
    // Errors were recorded for operators.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, errors) = app.get("/errors?type=webhook").await;
    let messages: Vec<String> = errors["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("unknown project")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("unknown scene")),
        "{messages:?}"
    );
}

async fn get_is_a_health_check(backend: Backend) {
    let Some(cfg) = config(backend, "webhook_health").await else {
        return;
    };
    let app = TestApp::start_with(cfg, false).await;
    for endpoint in ["video-complete", "last-frame-complete", "stitch-complete"] {
        let body: serde_json::Value = app
            .http
            .get(format!("{}/api/webhooks/{endpoint}", app.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["endpoint"], endpoint);
    }
}

async fn unfit_request_ids_are_replaced_and_fit_ones_echoed(backend: Backend) {
    let Some(app) = seeded(backend, "request_ids").await else {
        return;
    };
    let signature = scenehook::signature::sign_hex(VIDEO_SECRET, SEED.as_bytes());
    let send = |request_id: String| {
        app.http
            .post(format!("{}/api/webhooks/video-complete", app.url))
            .header("content-type", "application/json")
            .header("x-webhook-signature", &signature)
            .header("x-request-id", request_id)
            .body(SEED)
            .send()
    };
    // The accepted webhook stores its request id on the outbox job: a 100-character one
    // must not reach the database.
    let long = "r".repeat(100);
    let response = send(long.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(echoed != long && echoed.len() <= 64, "{echoed}");
    let jobs =
        scenehook::db::outbox::list(&app.gateway.state.db, None, Some(Service::LastFrame), 10)
            .await
            .unwrap();
    assert_eq!(jobs[0].request_id.as_deref(), Some(echoed.as_str()));
    let plain = send("trace-abc.123".into()).await.unwrap();
    assert_eq!(plain.headers()["x-request-id"], "trace-abc.123");
}

async fn cors_preflight_answers_configured_origins_only(backend: Backend) {
    let Some(mut cfg) = config(backend, "cors").await else {
        return;
    };
    cfg.cors_allowed_origins = vec!["https://app.example.com".into()];
    let app = TestApp::start_with(cfg, false).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/webhooks/video-complete", app.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "x-webhook-signature,content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = preflight("https://evil.example.com").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

on_all_backends!(
    unfit_request_ids_are_replaced_and_fit_ones_echoed,
    cors_preflight_answers_configured_origins_only,
    seed_manual_test_with_openssl_signature,
    forged_truncated_empty_and_rotated_signatures,
    standard_webhooks_headers_and_replay_window,
    rate_limit_101st_request_is_429,
    duplicate_delivery_has_one_effect,
    concurrent_duplicates_have_one_effect,
    bad_input_is_a_clear_4xx,
    get_is_a_health_check,
    a_request_past_its_time_limit_is_answered_408,
    headers_sent_too_slowly_cost_the_connection,
);

/// Two instances on one Redis and one Postgres share the limit and deduplicate together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_limits_and_idempotency() {
    let Some(cfg) = config(Backend::Shared, "two_instances").await else {
        return;
    };
    let a = TestApp::start_with(cfg.clone(), false).await;
    let b = TestApp::start_with(cfg, false).await;
    let (status, _) = a.post("/projects", json!({"id": "proj_test", "name": "Seed", "scenes": [{"id": "scene_001", "prompt": "p"}]})).await;
    assert_eq!(status, 201);
    assert_eq!(
        a.post("/projects/proj_test/generate", json!(null)).await.0,
        202
    );
    // Racing duplicates from both instances: one effect.
    let sends = (0..6).map(|i| {
        if i % 2 == 0 {
            a.webhook("video-complete", VIDEO_SECRET, SEED)
        } else {
            b.webhook("video-complete", VIDEO_SECRET, SEED)
        }
    });
    let responses = futures::future::join_all(sends).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(outbox_count(&a, Service::LastFrame).await, 1);
    // 100 requests per minute across both instances, not per instance (6 already counted).
    let mut allowed = 6;
    for i in 0..120 {
        let app = if i % 2 == 0 { &a } else { &b };
        if app.webhook("video-complete", "x", "{}").await.status() != 429 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 100);
}

/// A gateway configured by `configure` and a connection to it on which `sent` was written and
/// nothing after, with the moment it was written.
async fn stalled_client(
    backend: Backend,
    test: &str,
    configure: impl FnOnce(&mut scenehook::config::Config),
    sent: &[u8],
) -> Option<(TestApp, tokio::net::TcpStream, std::time::Instant)> {
    use tokio::io::AsyncWriteExt;
    let mut config = config(backend, test).await?;
    configure(&mut config);
    let app = TestApp::start_with(config, false).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(sent).await.unwrap();
    Some((app, stream, std::time::Instant::now()))
}

/// A body that does not arrive within `request_timeout_secs` is answered 408 with the JSON
/// error body, instead of holding the connection and its task for as long as the client likes.
async fn a_request_past_its_time_limit_is_answered_408(backend: Backend) {
    use tokio::io::AsyncReadExt;
    let Some((_app, mut stream, started)) = stalled_client(
        backend,
        "slow_body",
        |config| config.request_timeout_secs = 1,
        b"POST /api/webhooks/video-complete HTTP/1.1\r\nHost: gateway\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    else {
        return;
    };
    let mut answer = Vec::new();
    let mut buffer = [0; 1024];
    while !String::from_utf8_lossy(&answer).contains("}}") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(read > 0, "closed without an answer: {answer:?}");
        answer.extend_from_slice(&buffer[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900), "{answer}");
}

/// A client that does not finish its headers within `header_read_timeout_secs` loses its
/// connection (hyper's limit, which needs the timer `app::serve` gives it).
async fn headers_sent_too_slowly_cost_the_connection(backend: Backend) {
    use tokio::io::AsyncReadExt;
    let Some((_app, mut stream, started)) = stalled_client(
        backend,
        "slow_headers",
        |config| config.header_read_timeout_secs = 1,
        b"POST /api/webhooks/video-complete HTTP/1.1\r\nHost: gateway\r\n",
    )
    .await
    else {
        return;
    };
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the connection closed within 10 s");
    // Closed, with or without an answer (hyper may send a 408 first), or reset.
    if let Ok(n) = read {
        let answer = String::from_utf8_lossy(&rest[..n]);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
}
