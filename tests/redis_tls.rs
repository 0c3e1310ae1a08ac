//! TLS to Redis (`rediss://`): against a Redis of the test's own that takes TLS connections
//! only and asks every client for a certificate, the gateway decides its limits and keeps its
//! errors there with the CA and the client certificate its configuration names; a server it
//! cannot trust, or no client certificate, stops the start with an error naming Redis. A
//! cluster whose nodes (and bus) take TLS only is reached the same way.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use scenehook::{Gateway, config::RedisTlsConfig};

fn certificates(certs: &Path, ca: &str, client: bool) -> RedisTlsConfig {
    RedisTlsConfig {
        ca_file: Some(certs.join(ca)),
        cert_file: client.then(|| certs.join("client.pem")),
        key_file: client.then(|| certs.join("client.key")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_errors_are_shared_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path(), "IP:127.0.0.1");
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
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path(), "IP:127.0.0.1");
    let Some(nodes) = (0..3)
        .map(|_| OwnRedis::start_tls_cluster_node("redis_tls_cluster", certs.path()))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let file = |name: &str| certs.path().join(name);
    let redis_cli = || {
        let mut command = std::process::Command::new("redis-cli");
        command
            .args(["--tls", "--cacert"])
            .arg(file("ca.pem"))
            .arg("--cert")
            .arg(file("client.pem"))
            .arg("--key")
            .arg(file("client.key"));
        command
    };
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let created = redis_cli()
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    eventually(Duration::from_secs(10), "the cluster is ok", || async {
        redis_cli()
            .args(["-p", &nodes[0].port.to_string(), "cluster", "info"])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok"))
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
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path(), "IP:127.0.0.1");
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
