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
//!
//! ACLs: README's `ACL SETUSER` lines, run on a single server, a cluster and behind Sentinel,
//! are enough for everything the gateway sends, and no server refuses a command.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use fred::interfaces::ClientLike as _;
use scenehook::{
    config::RedisTlsConfig,
    store::{
        ErrorStore, ErrorType, ListQuery, NewError, RateLimitStore, Severity,
        redis::{self as redis_store, RedisErrorStore, RedisRateLimiter},
    },
};

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
    let Some((_nodes, addresses)) =
        start_cluster("redis_tls_cluster", certs.path(), Some(certs.path())).await
    else {
        return;
    };
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

/// Three nodes made one cluster (their files in `dir`), each taking TLS only when `certs` is
/// given; the nodes and their addresses.
async fn start_cluster(
    test: &str,
    dir: &Path,
    certs: Option<&Path>,
) -> Option<(Vec<OwnRedis>, Vec<String>)> {
    let nodes = (0..3)
        .map(|_| OwnRedis::start_cluster_node(test, dir, certs))
        .collect::<Option<Vec<_>>>()?;
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addresses.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    if let Err(e) = redis_cli(certs, 0, &create) {
        panic!("the cluster was not created: {e}");
    }
    // Every node, not only the first: a client asks any of them for the slots.
    eventually(Duration::from_secs(10), "the cluster is ok", || async {
        nodes.iter().all(|node| {
            redis_cli(certs, node.port, &["cluster", "info"])
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        })
    })
    .await;
    Some((nodes, addresses))
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
        let error = start_error(cfg, case).await;
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
    let dir = tempfile::tempdir().unwrap();
    let Some([mut primary, replica, sentinel]) =
        start_sentinel_group(test, dir.path(), certs).await
    else {
        return;
    };
    // README's ACLs: the gateway's user on the primary and the replica, the Sentinel's user on
    // the Sentinel, whose default user may then do nothing (an administrator reads its log).
    for node in [&primary, &replica] {
        grant(
            certs,
            node.port,
            &[],
            &documented_acl("scenehook", "resetkeys"),
        );
        grant(certs, node.port, &[], &documented_acl("scenehook", "+role"));
    }
    let sentinel_user = documented_acl("scenehook-sentinel", "+sentinel|");
    grant(certs, sentinel.port, &[], &sentinel_user);
    grant(certs, sentinel.port, &[], &words(SENTINEL_ADMIN));
    grant(
        certs,
        sentinel.port,
        ADMIN_LOGIN,
        &words("ACL SETUSER default -@all"),
    );

    let mut cfg = config(Backend::Embedded, test).await.unwrap();
    let scheme = if certs.is_some() { "rediss" } else { "redis" };
    cfg.redis_url = format!(
        "{scheme}-sentinel://scenehook:{ACL_PASSWORD}@127.0.0.1:{}/0?sentinelServiceName=scenehook\
         &sentinelUsername=scenehook-sentinel&sentinelPassword={ACL_PASSWORD}",
        sentinel.port
    );
    // The prefix README's ACL is for; these servers are the test's own.
    cfg.redis_key_prefix = "scenehook".into();
    if let Some(certs) = certs {
        cfg.redis_tls = certificates(certs, "ca.pem", true);
    }
    limit_by_redis_alone(&mut cfg);
    let app = TestApp::start_with(cfg, false).await;
    app.assert_redis_decides().await;
    let keys_on_primary = redis_cli(certs, primary.port, &["dbsize"]).unwrap();
    assert_ne!(keys_on_primary.trim(), "0");
    assert_nothing_refused(certs, primary.port, &[]);

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
    assert_nothing_refused(certs, replica.port, &[]);
    assert_nothing_refused(certs, sentinel.port, ADMIN_LOGIN);
}

/// A primary, its replica and a Sentinel watching them as `scenehook` (its file in `dir`), over
/// TLS with `certs`' certificates if given, once the replica is in sync and known to the
/// Sentinel, so that a failover can promote it.
async fn start_sentinel_group(
    test: &str,
    dir: &Path,
    certs: Option<&Path>,
) -> Option<[OwnRedis; 3]> {
    let primary = match certs {
        Some(certs) => OwnRedis::start_tls(test, certs),
        None => OwnRedis::start(test),
    }?;
    let replica = OwnRedis::start_replica_of(test, &primary).unwrap();
    let sentinel = OwnRedis::start_sentinel(test, &primary, "scenehook", dir).unwrap();
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
    Some([primary, replica, sentinel])
}

const ACL_PASSWORD: &str = "acl-test-password";
/// An administrator on the Sentinel, for the test to read its ACL log.
const SENTINEL_ADMIN: &str = "ACL SETUSER admin on >admin-password ~* &* +@all";
const ADMIN_LOGIN: &[&str] = &["--user", "admin", "--pass", "admin-password"];

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// README's `ACL SETUSER <user> …` line that has `part` in it, its password filled in.
fn documented_acl(user: &str, part: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|line| line.starts_with(&format!("ACL SETUSER {user} ")) && line.contains(part))
        .unwrap_or_else(|| panic!("README documents {user}'s ACL with {part}"));
    words(&line.replace(">PASSWORD", &format!(">{ACL_PASSWORD}")))
}

/// Runs `acl` on the server on `port`, logged in as `login` (`redis-cli`'s options).
fn grant(certs: Option<&Path>, port: u16, login: &[&str], acl: &[String]) {
    let mut args = login.to_vec();
    args.extend(acl.iter().map(String::as_str));
    assert_eq!(
        redis_cli(certs, port, &args).unwrap().trim(),
        "OK",
        "{acl:?}"
    );
}

/// The server on `port` refused none of the commands sent to it: its ACL log is empty.
fn assert_nothing_refused(certs: Option<&Path>, port: u16, login: &[&str]) {
    let mut args = login.to_vec();
    args.extend(["acl", "log"]);
    let log = redis_cli(certs, port, &args).unwrap();
    assert!(log.trim().is_empty(), "the server on {port} refused: {log}");
}

/// The Redis ACL README documents is enough on a single server: a user with exactly those
/// rights connects (reading the server's version), runs the limiter and every error-store
/// operation, and the server refuses none of its commands; a command or a key beyond them is
/// refused, so the rights do restrict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough() {
    let Some(redis) = OwnRedis::start("redis_acl") else {
        return;
    };
    grant(
        None,
        redis.port,
        &[],
        &documented_acl("scenehook", "resetkeys"),
    );
    let url = format!("redis://scenehook:{ACL_PASSWORD}@127.0.0.1:{}", redis.port);
    let client = works_within_the_acl(&url).await;
    assert_nothing_refused(None, redis.port, &[]);

    let elsewhere = RedisRateLimiter::new(client.clone(), "other");
    assert!(
        elsewhere.hit("video:127.0.0.1", 1, WINDOW).await.is_err(),
        "a key beyond the prefix"
    );
    let flushed: Result<String, _> = client
        .custom(
            fred::types::CustomCommand::new_static(
                "FLUSHALL",
                fred::types::ClusterHash::FirstKey,
                false,
            ),
            Vec::<String>::new(),
        )
        .await;
    assert!(flushed.is_err(), "a command beyond the list");
}

/// On a Redis Cluster, README's line and its cluster line, on every node, are enough: the
/// client reads the cluster's state and slots, and no node refuses a command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough_on_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let Some((nodes, addresses)) = start_cluster("redis_acl_cluster", dir.path(), None).await
    else {
        return;
    };
    for node in &nodes {
        grant(
            None,
            node.port,
            &[],
            &documented_acl("scenehook", "resetkeys"),
        );
        grant(
            None,
            node.port,
            &[],
            &documented_acl("scenehook", "+cluster|"),
        );
    }
    let url = format!(
        "redis-cluster://scenehook:{ACL_PASSWORD}@{}?node={}&node={}",
        addresses[0], addresses[1], addresses[2]
    );
    works_within_the_acl(&url).await;
    for node in &nodes {
        assert_nothing_refused(None, node.port, &[]);
    }
}

const WINDOW: Duration = Duration::from_secs(60);

/// Connects to `url` and runs the limiter and every error-store operation there.
async fn works_within_the_acl(url: &str) -> fred::clients::Client {
    let client = redis_store::connect(url, Duration::from_secs(2), &Default::default())
        .await
        .unwrap();
    redis_store::ping(&client).await.unwrap();
    assert!(
        client.server_version().is_some(),
        "the client reads the server's version when it connects"
    );
    let limiter = RedisRateLimiter::new(client.clone(), "scenehook");
    assert!(
        limiter
            .hit("video:127.0.0.1", 1, WINDOW)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !limiter
            .hit("video:127.0.0.1", 1, WINDOW)
            .await
            .unwrap()
            .allowed
    );

    let store = RedisErrorStore::new(client.clone(), "scenehook", POLICY);
    let failure = store
        .record(
            NewError::new(Severity::Error, ErrorType::Webhook, "bad"),
            T0,
        )
        .await
        .unwrap();
    store
        .record_many(&[
            (
                NewError::new(Severity::Info, ErrorType::Success, "verified"),
                T0 + 1,
            ),
            (
                NewError::new(Severity::Warning, ErrorType::Processing, "slow"),
                T0 + 2,
            ),
        ])
        .await
        .unwrap();
    assert!(store.get(&failure.id, T0 + 3).await.unwrap().is_some());
    let all = ListQuery {
        limit: 10,
        include_dismissed: true,
        ..Default::default()
    };
    assert_eq!(store.list(&all, T0 + 3).await.unwrap().errors.len(), 3);
    store
        .dismiss(&failure.id, "ops", Some("seen"), T0 + 4)
        .await
        .unwrap();
    store.dismiss_all("ops", None, T0 + 5).await.unwrap();
    assert_eq!(store.stats(T0 + 6).await.unwrap().active, 0);
    // Past the retention, the dismissed entries are cleaned up.
    assert!(store.cleanup(T0 + POLICY.retention_ms + 10).await.unwrap() >= 2);
    client
}
