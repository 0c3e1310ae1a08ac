//! Webhook secrets, operator keys and the services' API keys given as files (`<NAME>_FILE`) are
//! read again while the gateway serves: a rotation takes effect without a restart, and values
//! production would refuse are not taken.

mod common;

use std::time::Duration;

use common::*;
use scenehook::config::{Secret, SecretFile};

const NEW_VIDEO_SECRET: &str = "rotated-video-secret-0123456789abcdef01";
const NEW_KEY: &str = "ops-key-rotated-0003";

/// A video callback for an unknown project signed with `secret`: 404 if the secret is in
/// force, 401 if not.
async fn signed_with(app: &TestApp, secret: &str) -> u16 {
    app.webhook("video-complete", secret, UNKNOWN_PROJECT_VIDEO)
        .await
        .status()
        .as_u16()
}

async fn listing_with(app: &TestApp, key: &str) -> u16 {
    app.api(reqwest::Method::GET, "/errors", key, None).await.0
}

fn reloads(scrape: &str, result: &str) -> f64 {
    sample(
        scrape,
        "scenehook_secret_files_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_files_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("video.secret");
    let keys = dir.path().join("operator.keys");
    std::fs::write(&video, format!("{VIDEO_SECRET}\n")).unwrap();
    std::fs::write(&keys, format!("ops:{RW_KEY}:rw\n")).unwrap();
    let mut cfg = config(Backend::Embedded, "secret_files").await.unwrap();
    // As `Config::load` leaves it with VIDEO_WEBHOOK_SECRET_FILE and OPERATOR_API_KEYS_FILE
    // set; in production, whose rules a new value must pass too.
    cfg.env = "production".into();
    cfg.webhooks.video_secrets = vec![Secret::new(VIDEO_SECRET)];
    cfg.operator_api_keys = vec![format!("ops:{RW_KEY}:rw").parse().unwrap()];
    cfg.secret_files = vec![
        SecretFile {
            variable: "VIDEO_WEBHOOK_SECRET",
            path: video.clone(),
        },
        SecretFile {
            variable: "OPERATOR_API_KEYS",
            path: keys.clone(),
        },
    ];
    cfg.secret_files_reload_secs = 1;
    let app = TestApp::start_with(cfg, false).await;
    assert_eq!(signed_with(&app, VIDEO_SECRET).await, 404);
    assert_eq!(signed_with(&app, NEW_VIDEO_SECRET).await, 401);
    assert_eq!(listing_with(&app, NEW_KEY).await, 401);

    // Rotation, step one: the new secret beside the old, and a new key beside the old.
    std::fs::write(&video, format!("{NEW_VIDEO_SECRET},{VIDEO_SECRET}\n")).unwrap();
    std::fs::write(&keys, format!("ops:{RW_KEY}:rw,new:{NEW_KEY}:rw")).unwrap();
    // Both, as a check may fall between the two writes.
    eventually(
        Duration::from_secs(10),
        "the new secret and key are in force",
        || async {
            signed_with(&app, NEW_VIDEO_SECRET).await == 404
                && listing_with(&app, NEW_KEY).await == 200
        },
    )
    .await;
    assert_eq!(signed_with(&app, VIDEO_SECRET).await, 404);
    assert_eq!(listing_with(&app, RW_KEY).await, 200);

    // Step two: the old ones go.
    std::fs::write(&video, NEW_VIDEO_SECRET).unwrap();
    std::fs::write(&keys, format!("new:{NEW_KEY}:rw")).unwrap();
    eventually(
        Duration::from_secs(10),
        "the old secret and key are refused",
        || async {
            signed_with(&app, VIDEO_SECRET).await == 401 && listing_with(&app, RW_KEY).await == 401
        },
    )
    .await;
    assert_eq!(signed_with(&app, NEW_VIDEO_SECRET).await, 404);
    assert_eq!(listing_with(&app, NEW_KEY).await, 200);
    let rotated = scrape(&app.http, &app.url).await;
    assert!(reloads(&rotated, "renewed") >= 2.0, "{rotated}");

    // A secret production refuses (too short) is not taken, nor the key file beside it.
    std::fs::write(&video, "short").unwrap();
    std::fs::write(&keys, format!("ops:{RW_KEY}:rw")).unwrap();
    eventually(
        Duration::from_secs(10),
        "the refused files are counted",
        || async {
            reloads(&scrape(&app.http, &app.url).await, "failed") > reloads(&rotated, "failed")
        },
    )
    .await;
    assert_eq!(signed_with(&app, "short").await, 401);
    assert_eq!(signed_with(&app, NEW_VIDEO_SECRET).await, 404);
    assert_eq!(listing_with(&app, RW_KEY).await, 401);
}

/// A project started with the outbox running: its first scene's generation goes to the video
/// service; the authorization the video service saw on its latest call.
async fn generation_authorized_with(
    app: &TestApp,
    fakes: &scenehook::fakes::FakeServices,
    project: &str,
) -> String {
    let scenes = serde_json::json!([{"id": format!("{project}_s1"), "prompt": "a lighthouse"}]);
    let (status, _) = app
        .post(
            "/projects",
            serde_json::json!({"id": project, "name": project, "scenes": scenes}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .post(
            &format!("/projects/{project}/generate"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 202);
    eventually(
        Duration::from_secs(10),
        "the video service is called for the project",
        || async {
            fakes
                .received_by("video")
                .iter()
                .any(|r| r.body.to_string().contains(project))
        },
    )
    .await;
    fakes
        .received_by("video")
        .into_iter()
        .rfind(|r| r.body.to_string().contains(project))
        .and_then(|r| r.authorization)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_api_key_is_sent_from_the_next_call_on() {
    let Some((mut cfg, fakes)) = with_fakes(Backend::Embedded, "secret_files_api_key").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("video.key");
    std::fs::write(&key_file, "video-key-before\n").unwrap();
    cfg.services.video.api_key = Secret::new("video-key-before");
    cfg.secret_files = vec![SecretFile {
        variable: "VIDEO_API_KEY",
        path: key_file.clone(),
    }];
    cfg.secret_files_reload_secs = 1;
    let app = TestApp::start(cfg).await;
    assert_eq!(
        generation_authorized_with(&app, &fakes, "before").await,
        "Bearer video-key-before"
    );

    let before = app.scrape().await;
    std::fs::write(&key_file, "video-key-after").unwrap();
    eventually(
        Duration::from_secs(10),
        "the rotated key is read",
        || async { reloads(&app.scrape().await, "renewed") > reloads(&before, "renewed") },
    )
    .await;
    assert_eq!(
        generation_authorized_with(&app, &fakes, "after").await,
        "Bearer video-key-after"
    );
}
