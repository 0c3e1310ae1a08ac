//! The real binary: crash recovery after SIGKILL, and the `demo`, `migrate` and `backup`
//! commands (which, in production, need no secrets).

mod common;
// Shared with the benchmarks; this file seeds scenes that await their video only.
#[allow(dead_code)]
#[path = "../benches/support/seed.rs"]
mod seed;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use scenehook::fakes::{Behaviour, FakeConfig, FakeServices};
use serde_json::json;

fn gateway(env: &[(&str, String)], dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_scenehook"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the gateway binary starts")
}

/// The binary run as a command (`demo`, `migrate`, `backup`) in `dir`, which is also its
/// config directory, without the caller's Redis: what it uses comes from the test.
fn command_in(dir: &std::path::Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_scenehook"));
    command
        .args(args)
        .current_dir(dir)
        .env("SCENEHOOK_CONFIG_DIR", dir)
        .env_remove("REDIS_URL");
    command
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

/// Fakes for a gateway run as a process (with the default secrets), `service` behaving as
/// `behaviour` until told otherwise.
async fn fakes_where(service: &'static str, behaviour: Behaviour) -> FakeServices {
    let fakes = FakeServices::start(
        FakeConfig::for_gateway(
            &scenehook::config::Config::defaults(),
            Duration::from_millis(20),
        ),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    fakes.set_behaviour(service, behaviour);
    fakes
}

/// The environment that points the gateway's four services at `fakes`.
fn services_at(fakes: &FakeServices) -> [(&'static str, String); 4] {
    [
        "VIDEO_SERVICE_URL",
        "LAST_FRAME_SERVICE_URL",
        "STITCH_SERVICE_URL",
        "NOTIFICATION_SERVICE_URL",
    ]
    .map(|var| (var, fakes.url()))
}

/// Creates a project of `scenes` on the gateway at `url` and starts its generation.
async fn create_and_generate(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    scenes: serde_json::Value,
) {
    let post = |path: String, body: serde_json::Value| {
        http.post(format!("{url}/api/v1{path}"))
            .bearer_auth(RW_KEY)
            .json(&body)
            .send()
    };
    let created = post(
        "/projects".into(),
        json!({"id": id, "name": id, "scenes": scenes}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let started = post(format!("/projects/{id}/generate"), json!(null))
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
}

/// Killed between the webhook's commit and the end of the outbound call: after a restart the
/// job is sent exactly once more and the project completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_call_is_recovered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let fakes = fakes_where(
        "last_frame",
        Behaviour {
            hang: true,
            ..Default::default()
        },
    )
    .await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut env = vec![
        ("BIND_ADDR", format!("127.0.0.1:{port}")),
        ("APP_URL", url.clone()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/gw.db?mode=rwc", dir.path().display()),
        ),
        ("OPERATOR_API_KEYS", format!("ops:{RW_KEY}:rw")),
        // A short lease, so that the restarted gateway sends the job again soon; the call it
        // is killed in hangs until its timeout, which leaves the kill seconds to land and
        // which the lease outlasts.
        ("SCENEHOOK_OUTBOX__LEASE_SECS", "4".into()),
        ("SCENEHOOK_OUTBOX__POLL_INTERVAL_MS", "50".into()),
        ("SCENEHOOK_OUTBOX__REQUEST_TIMEOUT_MS", "3500".into()),
        ("SCENEHOOK_OUTBOX__INLINE_RETRIES", "0".into()),
    ];
    env.extend(services_at(&fakes));
    let http = reqwest::Client::new();
    let mut child = gateway(&env, dir.path());
    healthy(&http, &url).await;
    create_and_generate(&http, &url, "pk", json!([{"id": "pk_s0", "prompt": "x"}])).await;
    // The video callback was committed and the extraction request is in flight (hanging).
    eventually(
        Duration::from_secs(10),
        "the extraction request is in flight",
        || async { !fakes.received_by("last_frame").is_empty() },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    fakes.set_behaviour("last_frame", Behaviour::default());

    let mut child = gateway(&env, dir.path());
    healthy(&http, &url).await;
    project_completes(&http, &url, RW_KEY, "pk").await;
    let frames = fakes.received_by("last_frame");
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

/// Killed while webhooks pour in on SQLite: every webhook answered 2xx before the kill has its
/// effects in the database afterwards, and the database is whole. (Ingestion's WAL writes go
/// through `db::wal_vfs`, which gathers a commit's frames: they must be in the file by the
/// time the webhook is answered.) The WAL is bounded at 1 MiB, so that it starts over every
/// hundred webhooks or so and the kill may land in any part of its cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_webhook() {
    const SECRET: &str = "crash-test-video-secret-0123456789";
    const DELIVERIES: usize = 4_000;
    const SENDERS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.db");
    let database_url = format!("sqlite://{}?mode=rwc", path.display());
    let mut config = scenehook::config::Config::defaults();
    config.database_url = database_url.clone();
    let db = scenehook::db::connect(&config).await.unwrap();
    scenehook::db::migrate(&db).await.unwrap();
    let seeded = seed::seed(&db, DELIVERIES, seed::Awaiting::Video).await;
    db.close().await.unwrap();

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let env = [
        ("BIND_ADDR", format!("127.0.0.1:{port}")),
        ("DATABASE_URL", database_url),
        ("VIDEO_WEBHOOK_SECRET", SECRET.into()),
        ("SCENEHOOK_RATE_LIMIT__VIDEO_COMPLETE", "1000000000".into()),
        (
            "SCENEHOOK_RATE_LIMIT__FLOOD_GUARD_PER_SECOND",
            "1000000".into(),
        ),
        ("SCENEHOOK_RATE_LIMIT__FLOOD_GUARD_BURST", "1000000".into()),
        ("SCENEHOOK_OUTBOX__ENABLED", "false".into()),
        ("SCENEHOOK_DATABASE__SQLITE_WAL_MAX_MIB", "1".into()),
    ];
    let http = reqwest::Client::new();
    let mut child = gateway(&env, dir.path());
    healthy(&http, &url).await;

    let endpoint = format!("{url}/api/webhooks/{}", seeded.kind().as_str());
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (http, endpoint, acknowledged) =
                (http.clone(), endpoint.clone(), acknowledged.clone());
            let bodies: Vec<String> = (sender..DELIVERIES)
                .step_by(SENDERS)
                .map(|i| seeded.delivery(i))
                .collect();
            tokio::spawn(async move {
                for body in bodies {
                    let signature = scenehook::signature::sign_hex(SECRET, body.as_bytes());
                    let sent = http
                        .post(&endpoint)
                        .header("content-type", "application/json")
                        .header("x-webhook-signature", signature)
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => acknowledged.lock().unwrap().push(body),
                        Ok(r) => panic!("webhook answered {}", r.status()),
                        // The gateway is gone.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    eventually(
        Duration::from_secs(30),
        "a thousand webhooks are acknowledged",
        || async { acknowledged.lock().unwrap().len() >= 1_000 },
    )
    .await;
    let restarts = sample(
        &scrape(&http, &url).await,
        "scenehook_sqlite_wal_restart_seconds_count",
        &[],
    )
    .expect("the WAL restarts are counted");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        restarts >= 2.0,
        "the WAL started over before the kill ({restarts} restarts)"
    );
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() < DELIVERIES,
        "killed before the last webhook"
    );

    let connection = rusqlite::Connection::open(&path).unwrap();
    let check: String = connection
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut stored = connection
        .prepare("SELECT video_url FROM scenes WHERE id = ?1")
        .unwrap();
    for body in &acknowledged {
        let delivery: serde_json::Value = serde_json::from_str(body).unwrap();
        let video_url: Option<String> = stored
            .query_row([delivery["scene_id"].as_str().unwrap()], |r| r.get(0))
            .unwrap();
        assert_eq!(
            video_url.as_deref(),
            delivery["video_url"].as_str(),
            "an acknowledged webhook's clip is stored ({} of {} acknowledged)",
            acknowledged.len(),
            DELIVERIES
        );
    }
}

/// `scenehook demo` drives a 3-scene project to its final video on its own.
#[test]
fn demo_runs_a_project_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    let out = command_in(dir.path(), &["demo".as_ref()])
        .env_remove("DATABASE_URL")
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

/// `scenehook migrate` applies the migrations and exits, on SQLite and on Postgres, where two
/// run at once (two release jobs, or a job beside an instance's start) both succeed;
/// `migrate status` lists them and `migrate down N` rolls back the last N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_the_migrations_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![format!("sqlite://{}/m.db?mode=rwc", dir.path().display())];
    urls.extend(fresh_postgres("migrate_applies_the_migrations_and_exits").await);
    for url in urls {
        let runs = if url.starts_with("postgres") { 2 } else { 1 };
        let migrating: Vec<Child> = (0..runs)
            .map(|_| {
                command_in(dir.path(), &["migrate".as_ref()])
                    .env("DATABASE_URL", &url)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for run in migrating {
            let out = run.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let db = sea_orm::Database::connect(&url).await.unwrap();
        assert!(
            scenehook::db::migrations_applied(&db).await.unwrap(),
            "{url}"
        );
        db.close().await.unwrap();

        // `status` lists them; `down N` rolls back the last N, and `up` applies them again.
        let migrate = |args: &[&str]| {
            let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
            command_in(dir.path(), &args)
                .env("DATABASE_URL", &url)
                .output()
                .unwrap()
        };
        let status = || {
            let out = migrate(&["migrate", "status"]);
            assert!(out.status.success(), "{url}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let all_applied = status();
        let lines: Vec<&str> = all_applied.lines().collect();
        assert!(
            lines.len() >= 5 && lines.iter().all(|l| l.starts_with("applied m")),
            "{url}: {all_applied}"
        );
        assert!(migrate(&["migrate", "down", "2"]).status.success(), "{url}");
        let rolled_back = status();
        let states: Vec<&str> = rolled_back
            .lines()
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let kept = lines.len() - 2;
        assert_eq!(states[..kept], vec!["applied"; kept][..], "{url}");
        assert_eq!(states[kept..], ["pending", "pending"], "{url}");
        let db = sea_orm::Database::connect(&url).await.unwrap();
        assert!(!scenehook::db::migrations_applied(&db).await.unwrap());
        db.close().await.unwrap();
        assert!(migrate(&["migrate", "up"]).status.success(), "{url}");
        assert_eq!(status(), all_applied, "{url}");
        for refused in [
            &["migrate", "down"][..],
            &["migrate", "down", "0"],
            &["migrate", "sideways"],
        ] {
            let out = migrate(refused);
            assert_eq!(out.status.code(), Some(2), "{refused:?}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("down N"));
        }
        assert_eq!(status(), all_applied, "{url}");
    }
}

/// `--help` and `--version` answer on stdout and exit 0, without reading a configuration (a
/// broken one does not stop them); an unknown command is refused with the usage.
#[test]
fn help_and_version_need_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let run = |arg: &str| {
        command_in(dir.path(), &[arg.as_ref()])
            .env("DATABASE_URL", "not a database")
            .output()
            .unwrap()
    };
    for arg in ["--help", "-h", "help"] {
        let out = run(arg);
        assert!(out.status.success(), "{arg}: {out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("backup PATH") && help.contains("migrate"),
            "{help}"
        );
    }
    let version = run("--version");
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("scenehook {}", env!("CARGO_PKG_VERSION"))
    );
    let unknown = command_in(dir.path(), &["serve-please".as_ref()])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("unknown command `serve-please`; usage"),
        "{unknown:?}"
    );
}

/// In production, `migrate` and `backup` need the database and nothing the instances keep
/// secret, so a release job can run them with `DATABASE_URL` alone; serving still refuses to
/// start without the webhook secrets and an operator key.
#[test]
fn maintenance_commands_in_production_need_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("prod.db");
    let in_production = |args: &[&std::ffi::OsStr]| {
        let mut command = command_in(dir.path(), args);
        for var in [
            "NODE_ENV",
            "VIDEO_WEBHOOK_SECRET",
            "LAST_FRAME_WEBHOOK_SECRET",
            "STITCH_WEBHOOK_SECRET",
            "OPERATOR_API_KEYS",
        ] {
            command.env_remove(var);
        }
        command
            .env("APP_ENV", "production")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", database.display()),
            )
            .output()
            .unwrap()
    };
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let migrated = in_production(&["migrate".as_ref()]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let copy = dir.path().join("copy.db");
    let backed_up = in_production(&["backup".as_ref(), copy.as_os_str()]);
    assert!(backed_up.status.success(), "{}", stderr(&backed_up));
    assert!(copy.exists());

    let served = in_production(&[]);
    assert_eq!(served.status.code(), Some(2), "{}", stderr(&served));
    assert!(
        stderr(&served).contains("VIDEO_WEBHOOK_SECRET"),
        "{}",
        stderr(&served)
    );
    assert!(
        stderr(&served).contains("OPERATOR_API_KEYS"),
        "{}",
        stderr(&served)
    );
}

/// `scenehook backup PATH` copies the embedded database while the gateway runs: the copy is
/// intact and holds what was committed; an existing file is never overwritten; a Postgres
/// deployment is pointed to its own tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_copies_the_running_embedded_database() {
    let live = config(Backend::Embedded, "backup").await.unwrap();
    let database_url = live.database_url.clone();
    let app = TestApp::start(live).await;
    app.project_awaiting_video("p1", &[("s1", "a"), ("s2", "b")], "task-1")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let backup = |target: &std::path::Path, url: &str| {
        command_in(dir.path(), &["backup".as_ref(), target.as_os_str()])
            .env("DATABASE_URL", url)
            .output()
            .unwrap()
    };
    let target = dir.path().join("copy.db");
    let out = backup(&target, &database_url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("copy.db.partial").exists());

    let copy = sea_orm::Database::connect(format!("sqlite://{}?mode=rw", target.display()))
        .await
        .unwrap();
    let sqlite = |sql: &str| sea_orm::Statement::from_string(sea_orm::DbBackend::Sqlite, sql);
    assert_eq!(
        first_value::<String>(&copy, sqlite("PRAGMA integrity_check")).await,
        Some("ok".into())
    );
    assert_eq!(
        first_value::<String>(
            &copy,
            sqlite("SELECT video_task_id FROM scenes WHERE id = 's1'")
        )
        .await,
        Some("task-1".into())
    );
    assert_eq!(
        first_value::<i64>(&copy, sqlite("SELECT COUNT(*) FROM scenes")).await,
        Some(2)
    );
    copy.close().await.unwrap();

    // Restored as the README says: a gateway started on the copy serves what it holds.
    let restored_dir = tempfile::tempdir().unwrap();
    let restored = restored_dir.path().join("scenehook.db");
    std::fs::copy(&target, &restored).unwrap();
    let mut restored_config = config(Backend::Embedded, "backup").await.unwrap();
    restored_config.database_url = format!("sqlite://{}?mode=rwc", restored.display());
    let restored_app = TestApp::start(restored_config).await;
    let (status, project) = restored_app.get("/projects/p1").await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(
        project["scenes"].as_array().map(Vec::len),
        Some(2),
        "{project}"
    );

    let before = std::fs::read(&target).unwrap();
    let out = backup(&target, &database_url);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    assert_eq!(std::fs::read(&target).unwrap(), before);
    assert_eq!(
        backup(std::path::Path::new("--no-migrate"), &database_url)
            .status
            .code(),
        Some(2)
    );

    let out = backup(
        &dir.path().join("pg.db"),
        "postgres://127.0.0.1:1/scenehook",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"));
    assert!(!dir.path().join("pg.db").exists());
}

/// SIGHUP reads the secret files at once, long before their next scheduled check, and leaves
/// the gateway serving; a gateway with no such file logs it and goes on (SIGHUP's default
/// would end it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_secret_files_at_once() {
    const BEFORE: &str = "hangup-video-secret-before-0123456789";
    const AFTER: &str = "hangup-video-secret-after-01234567890";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("video.secret");
    std::fs::write(&secret_file, BEFORE).unwrap();
    let http = reqwest::Client::new();
    let start = |name: &str, secret: (&str, String)| {
        let port = free_port();
        let env = [
            ("BIND_ADDR", format!("127.0.0.1:{port}")),
            (
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", dir.path().join(name).display()),
            ),
            secret,
            ("SCENEHOOK_SECRET_FILES_RELOAD_SECS", "3600".into()),
            ("SCENEHOOK_OUTBOX__ENABLED", "false".into()),
        ];
        (
            gateway(&env, dir.path()),
            format!("http://127.0.0.1:{port}"),
        )
    };
    let hang_up = |child: &Child| {
        let sent = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    // 404 (no such project) once the signature is accepted, 401 if not.
    let signed_with = |url: String, secret: &'static str| {
        let http = http.clone();
        async move {
            signed_webhook(&http, &url, "video-complete", secret, UNKNOWN_PROJECT_VIDEO)
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    let (mut with_file, url) = start(
        "file.db",
        (
            "VIDEO_WEBHOOK_SECRET_FILE",
            secret_file.display().to_string(),
        ),
    );
    healthy(&http, &url).await;
    assert_eq!(signed_with(url.clone(), BEFORE).await, 404);
    std::fs::write(&secret_file, AFTER).unwrap();
    assert_eq!(signed_with(url.clone(), AFTER).await, 401);
    hang_up(&with_file);
    eventually(
        Duration::from_secs(10),
        "the rotated secret is in force after SIGHUP",
        || {
            let status = signed_with(url.clone(), AFTER);
            async move { status.await == 404 }
        },
    )
    .await;
    assert_eq!(signed_with(url.clone(), BEFORE).await, 401);
    assert!(with_file.try_wait().unwrap().is_none(), "SIGHUP ended it");
    with_file.kill().unwrap();
    with_file.wait().unwrap();

    let (mut without_files, url) = start("plain.db", ("VIDEO_WEBHOOK_SECRET", BEFORE.into()));
    healthy(&http, &url).await;
    hang_up(&without_files);
    // A signal's default action is taken as it is delivered; a request answered after it
    // shows the process still there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(signed_with(url.clone(), BEFORE).await, 404);
    assert!(
        without_files.try_wait().unwrap().is_none(),
        "SIGHUP ended it"
    );
    without_files.kill().unwrap();
    without_files.wait().unwrap();
}

/// A gateway whose clock runs two hours ahead of the Postgres server's drives a project to
/// completion at the usual pace, a failed call retried on the way: the jobs it queues and
/// reschedules are due by the server's clock, which the claims judge by, not two hours late.
/// libfaketime moves the binary's clock (its `FAKETIME`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_clock_ahead_of_the_database_delays_no_job() {
    let test = "clock_ahead";
    let (Some(faketime), Some(database_url)) = (faketime_library(test), fresh_postgres(test).await)
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The first generation request fails: the job is retried after its backoff.
    let fakes = fakes_where(
        "video",
        Behaviour {
            fail_with: Some(503),
            ..Default::default()
        },
    )
    .await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut env = vec![
        ("LD_PRELOAD", faketime),
        ("FAKETIME", "+2h".into()),
        ("BIND_ADDR", format!("127.0.0.1:{port}")),
        ("APP_URL", url.clone()),
        ("DATABASE_URL", database_url),
        ("OPERATOR_API_KEYS", format!("ops:{RW_KEY}:rw")),
        ("SCENEHOOK_OUTBOX__POLL_INTERVAL_MS", "50".into()),
        ("SCENEHOOK_OUTBOX__BASE_DELAY_MS", "200".into()),
        ("SCENEHOOK_OUTBOX__INLINE_RETRIES", "0".into()),
    ];
    env.extend(services_at(&fakes));
    let http = reqwest::Client::new();
    let mut child = gateway(&env, dir.path());
    healthy(&http, &url).await;
    let offset = sample(
        &scrape(&http, &url).await,
        "scenehook_database_clock_offset_seconds",
        &[],
    )
    .expect("the offset is exported");
    assert!(
        (-7_205.0..-7_195.0).contains(&offset),
        "the server's clock is two hours behind the instance's, not {offset} s"
    );
    let alerts = std::fs::read_to_string(format!(
        "{}/deploy/prometheus/alerts.yml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert!(
        referenced_metrics(&alerts)
            .iter()
            .any(|name| name == "scenehook_database_clock_offset_seconds"),
        "the alert watches the exported offset"
    );

    let scenes = json!([{"id": "ck_s0", "prompt": "a"}, {"id": "ck_s1", "prompt": "b"}]);
    create_and_generate(&http, &url, "ck", scenes).await;
    eventually(
        Duration::from_secs(10),
        "the first generation request is refused",
        || async { !fakes.received_by("video").is_empty() },
    )
    .await;
    fakes.set_behaviour("video", Behaviour::default());
    project_completes(&http, &url, RW_KEY, "ck").await;
    let generations = fakes.received_by("video");
    assert_eq!(
        generations.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 200, 200],
        "one refusal, retried; then the second scene"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
