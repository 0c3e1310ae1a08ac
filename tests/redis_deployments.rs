//! Redis as deployments run it, each against servers of the test's own.
//!
//! TLS (`rediss://`): against a Redis that takes TLS connections only and asks every client
//! for a certificate, the gateway decides its limits and keeps its errors there with the CA and
//! the client certificate its configuration names; a server it cannot trust, or no client
//! certificate, stops the start with an error naming Redis. A cluster whose nodes (and bus)
//! take TLS only is reached the same way.
//!
//! Sentinel (`redis-sentinel://…?sentinelServiceName=…`): the gateway asks the sentinel for the
//! primary, and after a failover finds the promoted replica by itself.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use scenehook::{Gateway, config::RedisTlsConfig};

/// `make_certificates`'s set in a directory of its own, the server's for 127.0.0.1 (what the
/// test servers listen on and a cluster's nodes and a Sentinel announce).
fn loopback_certificates() -> tempfile::TempDir {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path(), "IP:127.0.0.1");
    certs
}

fn certificates(certs: &Path, ca: &str, client: bool) -> RedisTlsConfig {
    RedisTlsConfig {
        ca_file: Some(certs.join(ca)),
        cert_file: client.then(|| certs.join("client.pem")),
        key_file: client.then(|| certs.join("client.key")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_errors_are_shared_over_tls() {
    let certs = loopback_certificates();
    let Some(redis) = OwnRedis::start_tls("redis_tls", certs.path()) else {
        return;
    };
    let mut cfg = config(Backend::Embedded, "redis_tls").await.unwrap();
    cfg.redis_url = redis.url();
    cfg.redis_tls = certificates(certs.path(), "ca.pem", true);
    limit_by_redis_alone(&mut cfg);
    let app = TestApp::start_with(cfg.clone(), false).await;

    app.assert_redis_decides().await;
    assert_eq!(app.readiness().await.0, 200);

    // The 404s were reported to the error store, in that Redis.
    eventually(
        Duration::from_secs(5),
        "the webhook errors reach the store",
        || async {
            let (status, body) = app.get("/errors?type=webhook").await;
            status == 200 && body["errors"].as_array().is_some_and(|e| !e.is_empty())
        },
    )
    .await;
    let direct =
        scenehook::store::redis::connect(&redis.url(), Duration::from_secs(2), &cfg.redis_tls)
            .await
            .unwrap();
    let keys: Vec<String> = fred::interfaces::KeysInterface::scan_page(
        &direct,
        "0",
        format!("*{}*", cfg.redis_key_prefix),
        Some(1000),
        None,
    )
    .await
    .map(|(_, keys): (String, Vec<String>)| keys)
    .unwrap();
    assert!(keys.iter().any(|k| k.contains("errors")), "{keys:?}");
}

/// A cluster over TLS (`rediss-cluster://`): the client connects to every node the seed
/// announces with the same certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_reached_over_tls() {
    let certs = loopback_certificates();
    let Some(nodes) = (0..3)
        .map(|_| OwnRedis::start_tls_cluster_node("redis_tls_cluster", certs.path()))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addresses.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    if let Err(e) = redis_cli(Some(certs.path()), 0, &create) {
        panic!("the cluster was not created: {e}");
    }
    // Every node, not only the first: a client asks any of them for the slots.
    eventually(Duration::from_secs(10), "the cluster is ok", || async {
        nodes.iter().all(|node| {
            redis_cli(Some(certs.path()), node.port, &["cluster", "info"])
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        })
    })
    .await;

    let mut cfg = config(Backend::Embedded, "redis_tls_cluster")
        .await
        .unwrap();
    cfg.redis_url = format!(
        "rediss-cluster://{}?node={}&node={}",
        addresses[0], addresses[1], addresses[2]
    );
    cfg.redis_tls = certificates(certs.path(), "ca.pem", true);
    limit_by_redis_alone(&mut cfg);
    let app = TestApp::start_with(cfg, false).await;
    app.assert_redis_decides().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_or_no_client_certificate_stops_the_start() {
    let certs = loopback_certificates();
    let Some(redis) = OwnRedis::start_tls("redis_tls_refused", certs.path()) else {
        return;
    };
    let cases = [
        (
            "webpki's roots alone",
            RedisTlsConfig::default(),
            "UnknownIssuer",
        ),
        (
            "a CA that signed nothing of the server's",
            certificates(certs.path(), "stranger.pem", true),
            "UnknownIssuer",
        ),
        (
            "no client certificate",
            certificates(certs.path(), "ca.pem", false),
            "CertificateRequired",
        ),
    ];
    for (case, tls, why) in cases {
        let mut cfg = config(Backend::Embedded, "redis_tls_refused")
            .await
            .unwrap();
        cfg.redis_url = redis.url();
        cfg.redis_tls = tls;
        let started =
            tokio::time::timeout(Duration::from_secs(20), Gateway::start_with(cfg, false))
                .await
                .unwrap_or_else(|_| panic!("{case}: the start neither failed nor succeeded"));
        let error = started
            .err()
            .unwrap_or_else(|| panic!("{case}: started"))
            .to_string();
        assert!(
            error.starts_with("redis:") && error.contains(why),
            "{case}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_follow_the_primary_through_a_failover() {
    failover("redis_sentinel", None).await;
}

/// The same over TLS (`rediss-sentinel://`): the sentinel, the primary and the replica take
/// TLS only, and the gateway reaches the sentinel and each primary in turn with its
/// certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_follow_the_primary_through_a_failover_over_tls() {
    let certs = loopback_certificates();
    failover("redis_sentinel_tls", Some(certs.path())).await;
}

/// A primary, its replica and a Sentinel, over TLS with `certs`' certificates if given; the
/// primary is killed under a running gateway that fails closed.
async fn failover(test: &str, certs: Option<&Path>) {
    let start = || match certs {
        Some(certs) => OwnRedis::start_tls(test, certs),
        None => OwnRedis::start(test),
    };
    let Some(mut primary) = start() else {
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
            redis_cli(certs, replica.port, &["info", "replication"])
                .is_ok_and(|info| info.contains("master_link_status:up"))
        },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the sentinel knows the replica",
        || async {
            redis_cli(certs, sentinel.port, &["sentinel", "replicas", "scenehook"])
                .is_ok_and(|replicas| replicas.contains(&replica.port.to_string()))
        },
    )
    .await;

    let mut cfg = config(Backend::Embedded, test).await.unwrap();
    let scheme = if certs.is_some() { "rediss" } else { "redis" };
    cfg.redis_url = format!(
        "{scheme}-sentinel://127.0.0.1:{}/0?sentinelServiceName=scenehook",
        sentinel.port
    );
    if let Some(certs) = certs {
        cfg.redis_tls = certificates(certs, "ca.pem", true);
    }
    limit_by_redis_alone(&mut cfg);
    let app = TestApp::start_with(cfg, false).await;
    app.assert_redis_decides().await;
    let keys_on_primary = redis_cli(certs, primary.port, &["dbsize"]).unwrap();
    assert_ne!(keys_on_primary.trim(), "0");

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
        redis_cli(certs, replica.port, &["role"]).is_ok_and(|role| role.starts_with("master")),
        "the replica was promoted"
    );
    assert_eq!(app.readiness().await.0, 200);
}
