//! Redis behind Sentinel (`redis-sentinel://…?sentinelServiceName=…`): the gateway asks the
//! sentinel for the primary, and after a failover finds the promoted replica by itself.

mod common;

use std::time::Duration;

use common::*;

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
    limit_by_redis_alone(&mut cfg);
    let app = TestApp::start_with(cfg, false).await;
    app.assert_redis_decides().await;
    let limited_on_primary = redis_cli(primary.port, &["dbsize"]);
    assert_ne!(limited_on_primary.trim(), "0");

    primary.stop();
    eventually(
        Duration::from_secs(30),
        "the gateway decides on the promoted replica",
        || async {
            app.webhook("video-complete", VIDEO_SECRET, UNKNOWN_PROJECT_VIDEO)
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
    assert_eq!(app.readiness().await.0, 200);
}
