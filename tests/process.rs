//! The real binary: crash recovery after SIGKILL, and the `demo` command.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use scenehook::fakes::{Behaviour, FakeConfig, FakeServices};
use serde_json::json;

fn gateway(env: &[(String, String)], dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_scenehook"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the gateway binary starts")
}

async fn healthy(http: &reqwest::Client, url: &str) {
    eventually(
        Duration::from_secs(20),
        "the gateway answers /healthz",
        || async {
            http.get(format!("{url}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
}

/// Killed between the webhook's commit and the end of the outbound call: after a restart the
/// job is sent exactly once more and the project completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_call_is_recovered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = scenehook::config::Config::defaults();
    let fakes = FakeServices::start(
        FakeConfig::for_gateway(&defaults, Duration::from_millis(20)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    fakes.set_behaviour(
        "last_frame",
        Behaviour {
            hang: true,
            ..Default::default()
        },
    );
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut env: Vec<(String, String)> = [
        ("BIND_ADDR", format!("127.0.0.1:{port}")),
        ("APP_URL", url.clone()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/gw.db?mode=rwc", dir.path().display()),
        ),
        ("OPERATOR_API_KEYS", format!("ops:{RW_KEY}:rw")),
        ("SCENEHOOK_OUTBOX__LEASE_SECS", "2".into()),
        ("SCENEHOOK_OUTBOX__POLL_INTERVAL_MS", "50".into()),
        ("SCENEHOOK_OUTBOX__REQUEST_TIMEOUT_MS", "60000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for var in [
        "VIDEO_SERVICE_URL",
        "LAST_FRAME_SERVICE_URL",
        "STITCH_SERVICE_URL",
        "NOTIFICATION_SERVICE_URL",
    ] {
        env.push((var.to_owned(), fakes.url()));
    }
    let http = reqwest::Client::new();
    let mut child = gateway(&env, dir.path());
    healthy(&http, &url).await;
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{url}/api/v1{path}"))
            .bearer_auth(RW_KEY)
            .json(&body)
            .send()
    };
    assert_eq!(
        post(
            "/projects",
            json!({"id": "pk", "name": "crash", "scenes": [{"id": "pk_s0", "prompt": "x"}]})
        )
        .await
        .unwrap()
        .status(),
        201
    );
    assert_eq!(
        post("/projects/pk/generate", json!(null))
            .await
            .unwrap()
            .status(),
        202
    );
    // The video callback was committed and the extraction request is in flight (hanging).
    eventually(
        Duration::from_secs(10),
        "the extraction request is in flight",
        || async { fakes.received().iter().any(|r| r.service == "last_frame") },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    fakes.set_behaviour("last_frame", Behaviour::default());

    let mut child = gateway(&env, dir.path());
    healthy(&http, &url).await;
    eventually(
        Duration::from_secs(20),
        "the project completes after the restart",
        || async {
            let r = http
                .get(format!("{url}/api/v1/projects/pk"))
                .bearer_auth(RW_KEY)
                .send()
                .await;
            match r {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|p| p["status"] == "completed"),
                Err(_) => false,
            }
        },
    )
    .await;
    let frames: Vec<_> = fakes
        .received()
        .into_iter()
        .filter(|r| r.service == "last_frame")
        .collect();
    assert_eq!(
        frames.len(),
        2,
        "sent once before the crash, exactly once more after"
    );
    assert_eq!(
        frames[0].idempotency_key, frames[1].idempotency_key,
        "the same job"
    );
    assert_eq!(frames[1].status, 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `scenehook demo` drives a 3-scene project to its final video on its own.
#[test]
fn demo_runs_a_project_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_scenehook"))
        .arg("demo")
        .current_dir(dir.path())
        .env("SCENEHOOK_CONFIG_DIR", dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("final video: https://"), "{stdout}");
    assert_eq!(stdout.matches("first frame").count(), 3);
}
