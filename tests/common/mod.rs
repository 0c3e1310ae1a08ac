//! Starts the real gateway for integration tests, on SQLite + in-process stores or on real
//! Postgres + Redis (URLs from `scripts/test`), with fresh databases and key prefixes per test.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use scenehook::{Gateway, config::Config, signature::sign_hex};
use sea_orm::{ConnectionTrait, Database};

pub const VIDEO_SECRET: &str = "test-video-secret-0123456789abcdef0123";
pub const LAST_FRAME_SECRET: &str = "test-last-frame-secret-0123456789abcdef";
pub const STITCH_SECRET: &str = "test-stitch-secret-0123456789abcdef012";
pub const RW_KEY: &str = "ops-key-read-write-0001";
pub const RO_KEY: &str = "ops-key-read-only-0002";

/// The error store's time rules for store tests: short lives and small caps.
pub const POLICY: scenehook::store::ErrorPolicy = scenehook::store::ErrorPolicy {
    success_ttl_ms: 5_000,
    info_ttl_ms: 60_000,
    warning_ttl_ms: 600_000,
    retention_ms: 86_400_000,
    max_entries: 500,
    max_successes: 100,
};

/// A fixed time (ms since the epoch) for store tests.
pub const T0: i64 = 1_764_400_000_000;

/// A signed video callback for a project that does not exist: answered 404 once let through.
pub const UNKNOWN_PROJECT_VIDEO: &str = r#"{"task_id":"t1","status":"completed","scene_id":"s1","project_id":"nope","video_url":"https://e.com/v.mp4"}"#;

/// Two video callbacks a window per client, and a Redis that does not answer answered 503
/// rather than left to this instance's own limiter: every decision is then Redis's.
pub fn limit_by_redis_alone(config: &mut Config) {
    config.rate_limit.fail_open = false;
    config.rate_limit.video_complete = 2;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite and the in-process stores: the embedded default.
    Embedded,
    /// Postgres and Redis: the scaled-out deployment.
    Shared,
    /// Postgres and a 3-node Redis Cluster.
    Cluster,
}

/// Whether a missing server fails the test (CI) or skips it (a bare `cargo test`).
fn required() -> bool {
    std::env::var("SCENEHOOK_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn service_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if required() => panic!("{var} is not set and SCENEHOOK_REQUIRE_SERVICES=1"),
        _ => {
            println!("SKIPPED {test}: {var} is not set (run scripts/test for Redis and Postgres)");
            None
        }
    }
}

/// A webhook to `endpoint` of the gateway at `url` (one started in-process or as a process),
/// signed with `secret` in the hex scheme.
pub async fn signed_webhook(
    http: &reqwest::Client,
    url: &str,
    endpoint: &str,
    secret: &str,
    body: &str,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{url}/api/webhooks/{endpoint}"))
        .header("content-type", "application/json")
        .header("x-webhook-signature", sign_hex(secret, body.as_bytes()))
        .body(body.to_owned())
        .send()
        .await
}

/// Waits up to 20 s for project `id` of the gateway at `url` to be completed, asking with the
/// operator key `key`.
pub async fn project_completes(http: &reqwest::Client, url: &str, key: &str, id: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("project {id} completes"),
        || async {
            let project = http
                .get(format!("{url}/api/v1/projects/{id}"))
                .bearer_auth(key)
                .send()
                .await;
            match project {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|p| p["status"] == "completed"),
                Err(_) => false,
            }
        },
    )
    .await;
}

/// libfaketime's library, to run a binary on a clock of the test's choosing (`FAKETIME`).
pub fn faketime_library(test: &str) -> Option<String> {
    service_url("SCENEHOOK_TEST_FAKETIME_LIB", test)
}

pub fn redis_url(test: &str) -> Option<String> {
    service_url("SCENEHOOK_TEST_REDIS_URL", test)
}

pub fn cluster_url(test: &str) -> Option<String> {
    service_url("SCENEHOOK_TEST_REDIS_CLUSTER_URL", test)
}

/// A fresh Postgres database for one test.
pub async fn fresh_postgres(test: &str) -> Option<String> {
    let admin = service_url("SCENEHOOK_TEST_POSTGRES_URL", test)?;
    let name = format!("t_{}", scenehook::domain::ids::random_token(12));
    let db = Database::connect(&admin)
        .await
        .expect("connect to the scratch Postgres");
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let (base, _) = admin.rsplit_once('/').expect("a database URL has a path");
    Some(format!("{base}/{name}"))
}

/// The first column of the first row `statement` returns, if any.
pub async fn first_value<T: sea_orm::TryGetable>(
    db: &sea_orm::DatabaseConnection,
    statement: sea_orm::Statement,
) -> Option<T> {
    let row = db.query_one_raw(statement).await.unwrap()?;
    Some(row.try_get_by_index(0).unwrap())
}

pub fn random_prefix() -> String {
    format!("t{}", scenehook::domain::ids::random_token(10))
}

/// A test config for `backend`; `None` when its servers are not available (and not required).
pub async fn config(backend: Backend, test: &str) -> Option<Config> {
    let mut c = Config::defaults();
    match backend {
        Backend::Embedded => {
            let dir = tempfile::tempdir().expect("a temp dir").keep();
            c.database_url = format!("sqlite://{}/scenehook.db?mode=rwc", dir.display());
        }
        Backend::Shared => {
            c.redis_url = redis_url(test)?;
            c.database_url = fresh_postgres(test).await?;
        }
        Backend::Cluster => {
            c.redis_url = service_url("SCENEHOOK_TEST_REDIS_CLUSTER_URL", test)?;
            c.database_url = fresh_postgres(test).await?;
        }
    }
    c.redis_key_prefix = random_prefix();
    c.webhooks.video_secrets = vec![scenehook::config::Secret::new(VIDEO_SECRET)];
    c.webhooks.last_frame_secrets = vec![scenehook::config::Secret::new(LAST_FRAME_SECRET)];
    c.webhooks.stitch_secrets = vec![scenehook::config::Secret::new(STITCH_SECRET)];
    c.operator_api_keys = vec![
        format!("ops:{RW_KEY}:rw").parse().unwrap(),
        format!("viewer:{RO_KEY}:ro").parse().unwrap(),
    ];
    c.outbox.poll_interval_ms = 50;
    c.outbox.base_delay_ms = 100;
    c.outbox.max_delay_secs = 1;
    c.outbox.request_timeout_ms = 2000;
    c.outbox.inline_retries = 0;
    c.outbox.lease_secs = 3;
    c.outbox.breaker_open_min_ms = 1000;
    c.outbox.breaker_open_max_ms = 2000;
    c.outbox.breaker_consecutive_failures = 3;
    Some(c)
}

/// A running gateway on a loopback port.
pub struct TestApp {
    pub addr: SocketAddr,
    pub url: String,
    pub http: reqwest::Client,
    pub gateway: Gateway,
}

impl TestApp {
    pub async fn start(config: Config) -> Self {
        Self::start_with(config, true).await
    }

    /// Serves HTTPS when `config.tls` names a certificate; its client then trusts the
    /// `ca.pem` beside that certificate ([`make_certificates`]'s).
    pub async fn start_with(mut config: Config, outbox: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (scheme, http) = match config.tls.files() {
            Some((cert, _)) => ("https", https_client(&cert.with_file_name("ca.pem"))),
            None => (
                "http",
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap(),
            ),
        };
        config.app_url = format!("{scheme}://{addr}").parse().unwrap();
        let gateway = Gateway::start_with(config, outbox)
            .await
            .expect("the gateway starts");
        tokio::spawn(gateway.serve(listener, std::future::pending()));
        Self {
            addr,
            url: format!("{scheme}://{addr}"),
            http,
            gateway,
        }
    }

    /// `/readyz`'s status and body.
    pub async fn readiness(&self) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}/readyz", self.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Sends three video callbacks for a project that does not exist, from this one client,
    /// under [`limit_by_redis_alone`]'s limit: Redis lets two through (404) and refuses the
    /// third (429).
    pub async fn assert_redis_decides(&self) {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let r = self
                .webhook("video-complete", VIDEO_SECRET, UNKNOWN_PROJECT_VIDEO)
                .await;
            statuses.push(r.status().as_u16());
        }
        assert_eq!(statuses, [404, 404, 429], "the limit is Redis's");
    }

    /// POSTs a body signed with the hex scheme.
    pub async fn webhook(&self, endpoint: &str, secret: &str, body: &str) -> reqwest::Response {
        self.webhook_via(&self.http, endpoint, secret, body)
            .await
            .unwrap()
    }

    /// As [`TestApp::webhook`], through `http`, which may fail to connect.
    pub async fn webhook_via(
        &self,
        http: &reqwest::Client,
        endpoint: &str,
        secret: &str,
        body: &str,
    ) -> reqwest::Result<reqwest::Response> {
        signed_webhook(http, &self.url, endpoint, secret, body).await
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.api(reqwest::Method::GET, path, RW_KEY, None).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.api(reqwest::Method::POST, path, RW_KEY, Some(body))
            .await
    }

    /// Project `id` with `scenes` (id and prompt, in order), its generation started and the
    /// first scene's answered with `task`, as the video service would have (without the outbox).
    pub async fn project_awaiting_video(&self, id: &str, scenes: &[(&str, &str)], task: &str) {
        let first = scenes[0].0;
        let scenes: Vec<_> = scenes
            .iter()
            .map(|(scene, prompt)| serde_json::json!({"id": scene, "prompt": prompt}))
            .collect();
        let (status, body) = self
            .post(
                "/projects",
                serde_json::json!({"id": id, "name": id, "scenes": scenes}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .post(&format!("/projects/{id}/generate"), serde_json::Value::Null)
            .await;
        assert_eq!(status, 202, "{body}");
        assert!(
            scenehook::db::pipeline::store_video_task(&self.gateway.state.db, first, task)
                .await
                .unwrap()
        );
    }
}

/// Waits until `check` holds, polling; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Generates `mod $module` with one `#[tokio::test]` per `async fn name(backend: Backend)`,
/// each run on `Backend::$backend`.
#[macro_export]
macro_rules! backend_tests {
    ($module:ident, $backend:ident; $($name:ident),+ $(,)?) => {
        mod $module {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::common::Backend::$backend).await })+
        }
    };
}

/// One test per backend: embedded, Postgres + Redis, Postgres + Redis Cluster.
#[macro_export]
macro_rules! on_all_backends {
    ($($name:ident),+ $(,)?) => {
        $crate::backend_tests!(embedded, Embedded; $($name),+);
        $crate::backend_tests!(shared, Shared; $($name),+);
        $crate::backend_tests!(cluster, Cluster; $($name),+);
    };
}

/// For tests of the database alone (Redis plays no part): one test on SQLite, one on Postgres.
#[macro_export]
macro_rules! on_databases {
    ($($name:ident),+ $(,)?) => {
        $crate::backend_tests!(embedded, Embedded; $($name),+);
        $crate::backend_tests!(postgres, Shared; $($name),+);
    };
}

/// In `dir`, by `openssl`: a CA (`ca.pem`), a server certificate for `server_names` alone (a
/// `subjectAltName` list, e.g. `DNS:localhost` or `IP:127.0.0.1`; `server.pem`, `server.key`),
/// a client certificate for `certuser` (`client.pem`, `client.key`), and a CA that signed none
/// of them (`stranger.pem`).
pub fn make_certificates(dir: &std::path::Path, server_names: &str) {
    let script = r#"
set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -days 2 -subj /CN=scenehook-test-ca -out ca.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
key stranger.key
openssl req -x509 -new -key stranger.key -days 2 -subj /CN=stranger-ca -out stranger.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
leaf() { # name, subject, extensions
  key "$1.key"
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  printf '%b' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
leaf server /CN=scenehook-test-server "subjectAltName=$SERVER_NAMES\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
leaf client /CN=certuser 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n'
"#;
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("SERVER_NAMES", server_names)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why the gateway did not start with `config` (`case` names it in a failure), within 20 s.
pub async fn start_error(config: Config, case: &str) -> String {
    let started = tokio::time::timeout(Duration::from_secs(20), Gateway::start_with(config, false))
        .await
        .unwrap_or_else(|_| panic!("{case}: the start neither failed nor succeeded"));
    started
        .err()
        .unwrap_or_else(|| panic!("{case}: started"))
        .to_string()
}

/// An HTTPS client that trusts the CA in `ca_file` alone and opens a connection (a handshake)
/// for every request.
pub fn https_client(ca_file: &std::path::Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_file).unwrap()).unwrap();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_certs_only([ca])
        // HTTP/2 (which the gateway offers) would keep one connection for every request.
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// `redis-cli args…` against the server on `port` (0: none, for `--cluster create`), over TLS
/// with `make_certificates`'s client certificate when `certs` is given; its output, or its
/// error output if it failed.
pub fn redis_cli(
    certs: Option<&std::path::Path>,
    port: u16,
    args: &[&str],
) -> Result<String, String> {
    let mut command = std::process::Command::new("redis-cli");
    if let Some(certs) = certs {
        command
            .args(["--tls", "--cacert"])
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("client.pem"))
            .arg("--key")
            .arg(certs.join("client.key"));
    }
    if port != 0 {
        command.args(["-p", &port.to_string()]);
    }
    let out = command.args(args).output().expect("redis-cli runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// What a server needs to reach another as a client (a replica its primary, a Sentinel its
/// servers, a cluster node the others): nothing over plain TCP; with `certs`, TLS for those
/// links and `make_certificates`'s client certificate.
fn tls_client_args(certs: Option<&std::path::Path>) -> Vec<String> {
    let Some(certs) = certs else {
        return Vec::new();
    };
    let file = |name: &str| certs.join(name).to_string_lossy().into_owned();
    vec![
        "--tls-replication".into(),
        "yes".into(),
        "--tls-client-cert-file".into(),
        file("client.pem"),
        "--tls-client-key-file".into(),
        file("client.key"),
    ]
}

/// A Redis server of one test's own, to stop and restart (outage tests).
pub struct OwnRedis {
    pub port: u16,
    /// The certificates' directory, when it takes TLS connections only.
    tls: Option<std::path::PathBuf>,
    /// `redis-server`'s first arguments: a cluster node's, a replica's, or a Sentinel's
    /// configuration file and mode.
    extra: Vec<String>,
    child: Option<std::process::Child>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl OwnRedis {
    /// `None` (skip) when `redis-server` is not installed and services are not required.
    pub fn start(test: &str) -> Option<Self> {
        Self::launch(test, free_port(), None, Vec::new())
    }

    /// A Redis that takes TLS connections only, with `make_certificates`'s server certificate
    /// from `certs`, and asks clients for a certificate signed by its CA.
    pub fn start_tls(test: &str, certs: &std::path::Path) -> Option<Self> {
        Self::launch(test, free_port(), Some(certs.to_owned()), Vec::new())
    }

    /// A node of a cluster yet to be created, its cluster file in `dir`. With `certs`, as
    /// [`OwnRedis::start_tls`], and its bus is TLS too (the nodes use the client certificate
    /// with each other).
    pub fn start_cluster_node(
        test: &str,
        dir: &std::path::Path,
        certs: Option<&std::path::Path>,
    ) -> Option<Self> {
        // The node's bus listens on its port + 10000.
        let port = std::iter::repeat_with(free_port)
            .find(|&p| {
                p.checked_add(10_000)
                    .is_some_and(|bus| std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok())
            })
            .expect("a free port");
        let mut cluster = vec![
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            dir.join(format!("nodes-{port}.conf"))
                .to_string_lossy()
                .into_owned(),
        ];
        if certs.is_some() {
            cluster.extend(["--tls-cluster".into(), "yes".into()]);
        }
        cluster.extend(tls_client_args(certs));
        Self::launch(test, port, certs.map(ToOwned::to_owned), cluster)
    }

    /// A replica of `primary`, over TLS (as a client with the client certificate) when
    /// `primary` takes TLS only, as it then does too.
    pub fn start_replica_of(test: &str, primary: &OwnRedis) -> Option<Self> {
        let mut replica_of = vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port.to_string(),
        ];
        replica_of.extend(tls_client_args(primary.tls.as_deref()));
        Self::launch(test, free_port(), primary.tls.clone(), replica_of)
    }

    /// A Sentinel watching `primary` as `name`, alone (quorum 1) and quick to fail over: the
    /// primary counts as down after 500 ms. Its configuration file, which it rewrites, is in
    /// `dir`. Over TLS, with the client certificate, when `primary` takes TLS only, as it then
    /// does too.
    pub fn start_sentinel(
        test: &str,
        primary: &OwnRedis,
        name: &str,
        dir: &std::path::Path,
    ) -> Option<Self> {
        let file = dir.join(format!("sentinel-{name}.conf"));
        std::fs::write(
            &file,
            format!(
                "sentinel monitor {name} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {name} 500\n\
                 sentinel failover-timeout {name} 2000\n",
                primary.port
            ),
        )
        .unwrap();
        // The configuration file comes first, as redis-server wants it.
        let mut sentinel = vec![file.to_string_lossy().into_owned(), "--sentinel".into()];
        sentinel.extend(tls_client_args(primary.tls.as_deref()));
        Self::launch(test, free_port(), primary.tls.clone(), sentinel)
    }

    fn launch(
        test: &str,
        port: u16,
        tls: Option<std::path::PathBuf>,
        extra: Vec<String>,
    ) -> Option<Self> {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(!required(), "redis-server is not installed");
            println!("SKIPPED {test}: redis-server is not installed");
            return None;
        }
        let mut redis = Self {
            port,
            tls,
            extra,
            child: None,
        };
        redis.restart();
        Some(redis)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let listen: Vec<String> = match &self.tls {
            None => vec!["--port".into(), port],
            Some(certs) => {
                let file = |name: &str| certs.join(name).to_string_lossy().into_owned();
                vec![
                    "--port".into(),
                    "0".into(),
                    "--tls-port".into(),
                    port,
                    "--tls-cert-file".into(),
                    file("server.pem"),
                    "--tls-key-file".into(),
                    file("server.key"),
                    "--tls-ca-cert-file".into(),
                    file("ca.pem"),
                ]
            }
        };
        let child = std::process::Command::new("redis-server")
            .args(&self.extra)
            .args(&listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not come up");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Postgres cluster of one test's own (run as the `postgres` user when we are root).
pub struct OwnPostgres {
    pub port: u16,
    dir: std::path::PathBuf,
    bin: String,
}

impl OwnPostgres {
    pub fn start(test: &str) -> Option<Self> {
        let Ok(bin) = std::env::var("SCENEHOOK_PG_BIN") else {
            assert!(!required(), "SCENEHOOK_PG_BIN is not set");
            println!("SKIPPED {test}: SCENEHOOK_PG_BIN is not set (run scripts/test)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("scenehook-pg-{}", random_prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = Self {
            port: free_port(),
            dir,
            bin,
        };
        pg.run("chown", &["postgres", pg.dir.to_str().unwrap()], false);
        pg.run(
            &format!("{}/initdb", pg.bin),
            &[
                "-D",
                pg.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
            true,
        );
        pg.restart();
        Some(pg)
    }

    fn data(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn run(&self, program: &str, args: &[&str], as_postgres: bool) {
        let mut cmd = if as_postgres && self.as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            std::process::Command::new(program)
        };
        let out = cmd.args(args).output().expect("a Postgres tool runs");
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The directory of its Unix socket.
    pub fn socket_dir(&self) -> &str {
        self.data()
    }

    pub fn restart(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data()
        );
        let log = format!("{}/log", self.data());
        self.run(
            &format!("{}/pg_ctl", self.bin),
            &["-D", self.data(), "-l", &log, "-w", "-o", &opts, "start"],
            true,
        );
    }

    pub fn stop(&self) {
        self.run(
            &format!("{}/pg_ctl", self.bin),
            &["-D", self.data(), "-m", "immediate", "-w", "stop"],
            true,
        );
    }

    /// Writes `files` into the data directory (readable by the server alone, as it wants its
    /// keys), appends `settings` to postgresql.conf, replaces pg_hba.conf with `hba` and has
    /// the server reload them.
    pub fn configure(&self, files: &[(&str, &[u8])], settings: &str, hba: &str) {
        use std::{io::Write, os::unix::fs::PermissionsExt};
        let dir = std::path::Path::new(self.data());
        for (name, content) in files {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("postgresql.conf"))
            .unwrap()
            .write_all(settings.as_bytes())
            .unwrap();
        std::fs::write(dir.join("pg_hba.conf"), hba).unwrap();
        let mut owned: Vec<&str> = vec!["postgres"];
        let paths: Vec<String> = ["postgresql.conf", "pg_hba.conf"]
            .iter()
            .chain(files.iter().map(|(name, _)| name))
            .map(|name| dir.join(name).to_string_lossy().into_owned())
            .collect();
        owned.extend(paths.iter().map(String::as_str));
        if self.as_root() {
            self.run("chown", &owned, false);
        }
        self.run(
            &format!("{}/pg_ctl", self.bin),
            &["-D", self.data(), "reload"],
            true,
        );
    }

    fn as_root(&self) -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new(format!("{}/pg_ctl", self.bin))
            .args(["-D", self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{}/pg_ctl", self.bin),
                "-D",
                self.data(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test config whose downstream services are fake services on loopback.
pub async fn with_fakes(
    backend: Backend,
    test: &str,
) -> Option<(Config, scenehook::fakes::FakeServices)> {
    let mut cfg = config(backend, test).await?;
    let fakes = scenehook::fakes::FakeServices::start(
        scenehook::fakes::FakeConfig::for_gateway(&cfg, Duration::from_millis(20)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    cfg.services.point_all_at(&fakes.url().parse().unwrap());
    Some((cfg, fakes))
}

impl TestApp {
    /// The Prometheus text of this instance.
    pub async fn scrape(&self) -> String {
        scrape(&self.http, &self.url).await
    }
}

/// The Prometheus text of the gateway at `url` (one started in-process or as a process).
pub async fn scrape(http: &reqwest::Client, url: &str) -> String {
    let response = http.get(format!("{url}/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

/// The value of the first sample of `name` whose labels include every `labels` pair.
pub fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())?
        })
}

/// Metric names used by a dashboard or rule file, histogram suffixes removed.
pub fn referenced_metrics(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("scenehook_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .fold(w.to_owned(), |n, suffix| {
                    n.strip_suffix(suffix).map(str::to_owned).unwrap_or(n)
                })
        })
        .collect();
    names.sort();
    names.dedup();
    names
}
