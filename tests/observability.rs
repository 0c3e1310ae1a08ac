//! Metrics after an end-to-end run, the deploy/ dashboards and alerts against what is really
//! exported, and logs that never carry a secret, written plainly and completely.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use scenehook::{
    fakes::{Behaviour, FakeConfig, FakeServices},
    signature::sign_hex,
};
use serde_json::json;

/// The gateway binary serving `port`, with its SQLite database in `dir`, no Redis, and its
/// stdout and stderr piped (the caller adds its own settings and spawns it).
fn gateway_command(dir: &std::path::Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scenehook"));
    cmd.current_dir(dir)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/gw.db?mode=rwc", dir.display()),
        )
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A video-complete webhook signed with the wrong secret; its status.
async fn send_forged_webhook(http: &reqwest::Client, url: &str) -> reqwest::StatusCode {
    let forged = http
        .post(format!("{url}/api/webhooks/video-complete"))
        .header("content-type", "application/json")
        .header("x-webhook-signature", sign_hex("attacker", b"{}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    forged.status()
}

/// SIGTERM, then the process's output once it has exited, which must be with 0.
fn terminate(child: std::process::Child) -> std::process::Output {
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "graceful shutdown exits 0");
    out
}

async fn until_up(http: &reqwest::Client, url: &str) {
    eventually(Duration::from_secs(20), "the gateway is up", || async {
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_the_pipeline_shows_every_outcome_and_every_referenced_metric() {
    let (mut cfg, fakes) = with_fakes(Backend::Embedded, "observability")
        .await
        .unwrap();
    cfg.rate_limit.stitch_complete = 2;
    fakes.set_behaviour(
        "notification",
        Behaviour {
            fail_with: Some(503),
            ..Default::default()
        },
    );
    let app = TestApp::start(cfg).await;
    // Every outcome is exported from zero, before its first webhook, so that alerts on its
    // rate see a series.
    assert_eq!(
        sample(
            &app.scrape().await,
            "scenehook_webhooks_total",
            &[
                ("endpoint", "last-frame-complete"),
                ("outcome", "unavailable")
            ]
        ),
        Some(0.0)
    );
    assert_eq!(
        app.post(
            "/projects",
            json!({"id": "po", "name": "obs", "scenes": [{"prompt": "a"}, {"prompt": "b"}]})
        )
        .await
        .0,
        201
    );
    assert_eq!(app.post("/projects/po/generate", json!(null)).await.0, 202);
    eventually(
        Duration::from_secs(20),
        "the notification breaker opens",
        || async { app.get("/services").await.1["services"][3]["breaker"] == "open" },
    )
    .await;
    fakes.set_behaviour("notification", Behaviour::default());
    eventually(
        Duration::from_secs(20),
        "the notification is delivered",
        || async { !fakes.accepted("notification").is_empty() },
    )
    .await;
    assert_eq!(
        app.webhook("video-complete", "forged", "{}").await.status(),
        401
    );
    let statuses: Vec<u16> =
        futures::future::join_all((0..3).map(|_| app.webhook("stitch-complete", "forged", "{}")))
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
    assert!(statuses.contains(&429), "{statuses:?}");

    let scrape = app.scrape().await;
    for outcome in ["accepted", "invalid_signature"] {
        assert!(
            sample(
                &scrape,
                "scenehook_webhooks_total",
                &[("endpoint", "video-complete"), ("outcome", outcome)]
            ) > Some(0.0),
            "{outcome}"
        );
    }
    assert!(
        sample(
            &scrape,
            "scenehook_webhooks_total",
            &[("endpoint", "stitch-complete"), ("outcome", "rate_limited")]
        ) > Some(0.0)
    );
    for service in ["video", "last_frame", "stitch", "notification"] {
        assert!(
            sample(
                &scrape,
                "scenehook_outbound_requests_total",
                &[("service", service), ("result", "success")]
            ) > Some(0.0),
            "{service}"
        );
    }
    assert!(
        sample(
            &scrape,
            "scenehook_circuit_breaker_transitions_total",
            &[("service", "notification"), ("to", "open")]
        ) > Some(0.0)
    );
    // Every batch is timed once: as many transactions as batch sizes, and time spent in them.
    let batches = sample(&scrape, "scenehook_ingest_batch_size_count", &[]);
    assert!(batches > Some(0.0));
    assert_eq!(
        sample(&scrape, "scenehook_ingest_transaction_seconds_count", &[]),
        batches
    );
    assert!(sample(&scrape, "scenehook_ingest_transaction_seconds_sum", &[]) > Some(0.0));
    assert_eq!(
        sample(&scrape, "scenehook_projects", &[("status", "completed")]),
        Some(1.0)
    );
    assert!(
        sample(
            &scrape,
            "scenehook_pipeline_project_duration_seconds_count",
            &[]
        ) > Some(0.0)
    );
    assert!(
        sample(
            &scrape,
            "scenehook_http_requests_total",
            &[
                ("route", "/api/v1/projects/{id}/generate"),
                ("status", "202")
            ]
        ) > Some(0.0)
    );

    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "deploy/grafana/scenehook.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let names = referenced_metrics(&text);
        assert!(names.len() >= 5, "{file} references {names:?}");
        // HTTPS's own metrics are exported when it is on (`tests/https.rs` checks them), the
        // database clock's on Postgres (`tests/process.rs`).
        let elsewhere = ["scenehook_tls_", "scenehook_database_clock_"];
        for name in names
            .iter()
            .filter(|n| !elsewhere.iter().any(|prefix| n.starts_with(prefix)))
        {
            assert!(
                scrape.contains(&format!("\n{name}")),
                "{file} uses {name}, which the gateway does not export"
            );
        }
    }

    // promtool's own lint of the exposition format.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(scrape.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) if std::env::var("SCENEHOOK_REQUIRE_SERVICES").is_ok_and(|v| v == "1") => {
            panic!("promtool is not installed")
        }
        Err(_) => println!("SKIPPED promtool check metrics: promtool is not installed"),
    }
}

/// Logs (JSON, debug level) of a whole pipeline run, a forged webhook and a bad operator key
/// contain no secret and no key; SIGTERM ends the process with 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_carry_secrets_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        ("VIDEO_WEBHOOK_SECRET", "log-test-video-secret-7f3a9c1e5b"),
        (
            "LAST_FRAME_WEBHOOK_SECRET",
            "log-test-frame-secret-2d8e4b6a0c",
        ),
        ("STITCH_WEBHOOK_SECRET", "log-test-stitch-secret-9a1c3e5f7b"),
        ("VIDEO_API_KEY", "log-test-video-api-key-4c2e"),
        ("LAST_FRAME_API_KEY", "log-test-frame-api-key-8b1d"),
        ("STITCH_API_KEY", "log-test-stitch-api-key-6f0a"),
        ("NOTIFICATION_API_KEY", "log-test-notify-api-key-3e9c"),
    ];
    let operator_key = "log-test-operator-key-5d7b";
    let fakes = FakeServices::start(
        FakeConfig {
            video_secret: secrets[0].1.into(),
            last_frame_secret: secrets[1].1.into(),
            stitch_secret: secrets[2].1.into(),
            delay: Duration::from_millis(20),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = gateway_command(dir.path(), port);
    cmd.env("APP_URL", &url)
        .env("OPERATOR_API_KEYS", format!("ops:{operator_key}:rw"))
        .env("RUST_LOG", "scenehook=debug,tower_http=debug")
        .env("LOG_FORMAT", "json")
        .env("SCENEHOOK_OUTBOX__POLL_INTERVAL_MS", "50");
    for (k, v) in secrets {
        cmd.env(k, v);
    }
    for var in [
        "VIDEO_SERVICE_URL",
        "LAST_FRAME_SERVICE_URL",
        "STITCH_SERVICE_URL",
        "NOTIFICATION_SERVICE_URL",
    ] {
        cmd.env(var, fakes.url());
    }
    let child = cmd.spawn().unwrap();
    let http = reqwest::Client::new();
    until_up(&http, &url).await;
    let api = |path: &str| format!("{url}/api/v1{path}");
    let created = http
        .post(api("/projects"))
        .bearer_auth(operator_key)
        .json(&json!({"id": "pl", "name": "logs", "scenes": [{"prompt": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(
        http.post(api("/projects/pl/generate"))
            .bearer_auth(operator_key)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    project_completes(&http, &url, operator_key, "pl").await;
    assert_eq!(send_forged_webhook(&http, &url).await, 401);
    assert_eq!(
        http.get(api("/errors"))
            .bearer_auth("log-test-wrong-key")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let out = terminate(child);
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.lines().count() > 10, "debug logs were captured");
    assert!(
        logs.contains("\"request_id\""),
        "log lines carry the request id"
    );
    assert!(logs.contains("webhook committed"));
    for (name, value) in secrets.iter().chain([&("OPERATOR_API_KEYS", operator_key)]) {
        assert!(!logs.contains(value), "{name} leaked into the logs");
    }
}

/// Text logs (the default format) written to a pipe carry no terminal colour codes, and the
/// lines logged while shutting down still reach stdout: the log thread's queue is written out
/// before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_off_a_terminal_are_plain_and_complete_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let child = gateway_command(dir.path(), port)
        .env("VIDEO_WEBHOOK_SECRET", "text-log-test-video-secret-0123")
        .env_remove("RUST_LOG")
        .env_remove("LOG_FORMAT")
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    until_up(&http, &url).await;
    assert_eq!(send_forged_webhook(&http, &url).await, 401);
    let scrape = scrape(&http, &url).await;
    assert_eq!(
        sample(&scrape, "scenehook_log_lines_dropped_total", &[]),
        Some(0.0),
        "{scrape}"
    );
    let out = terminate(child);
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("scenehook listening"), "{logs}");
    assert!(logs.contains("webhook signature rejected"), "{logs}");
    assert!(
        logs.contains("stopped accepting; finishing background work"),
        "the lines logged at shutdown are written before exit: {logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "no colour codes off a terminal: {logs}"
    );
}

/// A stdout nobody reads (a log collector that stalls) holds no request: once the pipe and the
/// log thread's queue are full, new lines are dropped and counted, and requests are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_drops_log_lines_and_holds_no_request() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // Its stdout is a pipe that is read only once the process has exited.
    let mut child = gateway_command(dir.path(), port)
        .env("RUST_LOG", "scenehook=debug,tower_http=debug")
        .env_remove("LOG_FORMAT")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    until_up(&http, &url).await;
    // Two debug lines a request: far more than a pipe (64 KiB) and the queue (8,192 lines) hold.
    let healthz = format!("{url}/healthz");
    let answered = tokio::time::timeout(
        Duration::from_secs(60),
        futures::stream::iter(0..8_000)
            .map(|_| http.get(&healthz).send())
            .buffer_unordered(16)
            .filter(|r| std::future::ready(r.as_ref().is_ok_and(|r| r.status() == 200)))
            .count(),
    )
    .await
    .expect("requests are answered while nobody reads the log");
    assert_eq!(answered, 8_000);
    let dropped = sample(
        &scrape(&http, &url).await,
        "scenehook_log_lines_dropped_total",
        &[],
    );
    assert!(
        dropped.is_some_and(|n| n > 0.0),
        "lines past the queue are dropped and counted: {dropped:?}"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.stdout.is_empty());
}
