//! Redis behind Sentinel (`redis-sentinel://…?sentinelServiceName=…`): the gateway asks the
//! sentinel for the primary, and after a failover finds the promoted replica by itself.

mod common;

use std::time::Duration;

use common::*;

const BODY: &str = r#"{"task_id":"t1","status":"completed","scene_id":"s1","project_id":"nope","video_url":"https://e.com/v.mp4"}"#;

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_follow_the_primary_through_a_failover() {
    let test = "redis_sentinel";
    let Some(mut primary) = OwnRedis::start(test) else {
        return;
    };
    let replica = OwnRedis::start_replica_of(test, &primary).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sentinel = OwnRedis::start_sentinel(test, &primary, "scenehook", dir.path()).unwrap();
    // The replica in sync and known to the sentinel: a failover can then promote it.
    eventually(
        Duration::from_secs(15),
        "the replica is in sync",
        || async {
            redis_cli(replica.port, &["info", "replication"]).contains("master_link_status:up")
        },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the sentinel knows the replica",
        || async {
            redis_cli(sentinel.port, &["sentinel", "replicas", "scenehook"])
                .contains(&replica.port.to_string())
        },
    )
    .await;

    let mut cfg = config(Backend::Embedded, test).await.unwrap();
    cfg.redis_url = format!(
        "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=scenehook",
        sentinel.port
    );
    // Redis unreachable answers 503 rather than falling back to this instance's own limiter.
    cfg.rate_limit.fail_open = false;
    cfg.rate_limit.video_complete = 2;
    let app = TestApp::start_with(cfg, false).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = app.webhook("video-complete", VIDEO_SECRET, BODY).await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [404, 404, 429], "the limit is the primary's");
    let limited_on_primary = redis_cli(primary.port, &["dbsize"]);
    assert_ne!(limited_on_primary.trim(), "0");

    primary.stop();
    eventually(
        Duration::from_secs(30),
        "the gateway decides on the promoted replica",
        || async {
            app.webhook("video-complete", VIDEO_SECRET, BODY)
                .await
                .status()
                != 503
        },
    )
    .await;
    assert!(
        redis_cli(replica.port, &["role"]).starts_with("master"),
        "the replica was promoted"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
