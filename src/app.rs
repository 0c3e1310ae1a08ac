//! Assembles one gateway instance from a [`Config`]: database, stores, outbox, background
//! tasks and the router. Tests start exactly what `main` starts.

use std::{sync::Arc, time::Duration};

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    config::Config,
    credentials::{Credentials, SharedCredentials},
    db,
    outbox::{JobContext, Service, worker::Outbox},
    ratelimit::RateLimiter,
    reporter::{Reporter, now_ms},
    store::{
        ErrorPolicy, ErrorStore, RateLimitStore,
        memory::{MemoryErrorStore, MemoryRateLimiter},
        redis::{self as redis_store, RedisErrorStore, RedisRateLimiter},
    },
    telemetry,
    tls::ServerCertificate,
};

/// Everything a request handler may use.
pub struct App {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub redis: Option<fred::prelude::Client>,
    pub limiter: RateLimiter,
    pub reporter: Reporter,
    pub outbox: Arc<Outbox>,
    pub ingestor: db::ingest::Ingestor,
    pub metrics: PrometheusHandle,
    pub webhook_metrics: crate::http::WebhookMetrics,
    pub flood_guard: crate::http::FloodGuard,
    pub project_counts: db::project_counts::ProjectCounts,
    /// Swapped whole when secret files change ([`reread_secret_files`]).
    credentials: SharedCredentials,
}

/// Cheap to clone; extracted by handlers.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

impl App {
    /// The credentials in force now.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.current()
    }

    pub fn job_context(&self, request_id: Option<String>) -> JobContext {
        JobContext {
            app_url: self.config.app_url.to_string(),
            request_id,
        }
    }

    /// Wakes this instance's outbox lanes for the jobs just committed.
    pub fn wake_outbox(&self, jobs: &[crate::domain::Job]) {
        use crate::domain::Job;
        for job in jobs {
            self.outbox.wake(match job {
                Job::GenerateScene { .. } => Service::Video,
                Job::ExtractLastFrame { .. } => Service::LastFrame,
                Job::Stitch { .. } => Service::Stitch,
                Job::Notify { .. } => Service::Notification,
            });
        }
    }
}

fn limits(config: &Config) -> crate::domain::Limits {
    let p = &config.pipeline;
    crate::domain::Limits {
        max_scene_attempts: p.max_scene_attempts,
        max_extract_attempts: p.max_extract_attempts,
        max_stitch_attempts: p.max_stitch_attempts,
    }
}

/// Why start-up failed; `main` prints it as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("redis: {0}")]
    Redis(#[from] crate::store::StoreError),
    #[error("tls: {0}")]
    Tls(String),
}

/// A running gateway: its router, and the background tasks to stop on shutdown.
pub struct Gateway {
    pub state: AppState,
    pub router: Router,
    /// The HTTPS certificate, when `tls` is configured: then every connection is TLS.
    certificate: Option<Arc<ServerCertificate>>,
    shutdown: watch::Sender<bool>,
    reloads: FileReloads,
    tasks: JoinSet<()>,
}

/// Asks a running gateway to read its certificate and secret files at once, instead of at
/// their next `*_reload_secs` check (`SIGHUP` does it for the binary).
#[derive(Clone)]
pub struct FileReloads(Arc<watch::Sender<()>>);

impl FileReloads {
    fn new() -> Self {
        Self(Arc::new(watch::channel(()).0))
    }

    /// Reads them now: each file's reload runs once more, soon, whatever its schedule.
    pub fn request(&self) {
        self.0.send_replace(());
    }

    fn requested(&self) -> watch::Receiver<()> {
        self.0.subscribe()
    }
}

impl Gateway {
    /// Connects, migrates (unless disabled) and starts the background tasks (the outbox
    /// worker unless `outbox.enabled` is false).
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let outbox = config.outbox.enabled;
        Self::start_with(config, outbox).await
    }

    /// As [`Gateway::start`], with the outbox worker optional (tests of ingestion alone).
    pub async fn start_with(config: Config, run_outbox: bool) -> Result<Self, StartError> {
        crate::install_crypto_provider();
        let config = Arc::new(config);
        let metrics = telemetry::metrics_handle();
        // First: a certificate that cannot be served stops the start before anything else.
        let certificate = match config.tls.files() {
            Some((cert, key)) => Some(Arc::new(
                ServerCertificate::load(cert, key).map_err(StartError::Tls)?,
            )),
            None => None,
        };
        let db = db::connect_gateway(&config).await?;
        if config.run_migrations {
            db::migrate(&db).await?;
        }
        // Before anything is written: the first jobs' due times are the server's too.
        measure_database_clock(&db).await;
        let policy = ErrorPolicy::from_config(&config.errors);
        let prefix = config.redis_key_prefix.clone();
        let (redis, limit_store, error_store): (_, Arc<dyn RateLimitStore>, Arc<dyn ErrorStore>) =
            if config.redis_url.is_empty() {
                (
                    None,
                    Arc::new(MemoryRateLimiter::new()),
                    Arc::new(MemoryErrorStore::new(policy)),
                )
            } else {
                let timeout = Duration::from_millis(config.rate_limit.redis_timeout_ms);
                let client =
                    redis_store::connect(&config.redis_url, timeout, &config.redis_tls).await?;
                (
                    Some(client.clone()),
                    Arc::new(RedisRateLimiter::new(client.clone(), &prefix)),
                    Arc::new(RedisErrorStore::new(client, &prefix, policy)),
                )
            };
        let reporter = Reporter::new(error_store);
        let limiter = RateLimiter::new(limit_store, config.rate_limit.clone(), reporter.clone());
        let credentials = SharedCredentials::new(Credentials::new(&config));
        let outbox = Arc::new(Outbox::new(
            db.clone(),
            config.clone(),
            credentials.clone(),
            reporter.clone(),
        ));
        let ingestor = db::ingest::Ingestor::start(&db, &config, limits(&config)).await?;
        let state = AppState(Arc::new(App {
            config: config.clone(),
            db,
            redis,
            limiter,
            reporter,
            outbox: outbox.clone(),
            ingestor,
            metrics,
            webhook_metrics: crate::http::WebhookMetrics::register(),
            flood_guard: crate::http::FloodGuard::new(&config.rate_limit),
            project_counts: Default::default(),
            credentials,
        }));
        let (shutdown, stop) = watch::channel(false);
        let reloads = FileReloads::new();
        let mut tasks = JoinSet::new();
        if run_outbox {
            tasks.spawn(outbox.run(stop.clone()));
        }
        tasks.spawn(state.reporter.clone().run(stop.clone()));
        tasks.spawn(housekeeping(state.clone(), stop.clone()));
        if let Some(certificate) = &certificate {
            tasks.spawn(renew_certificate(
                certificate.clone(),
                config.tls.reload_interval(),
                reloads.requested(),
                stop.clone(),
            ));
        }
        if config.reloadable_secret_files().next().is_some() {
            tasks.spawn(reread_secret_files(
                state.clone(),
                reloads.requested(),
                stop.clone(),
            ));
        }
        tasks.spawn(retention(state.clone(), stop));
        let router = crate::http::router(state.clone());
        Ok(Self {
            state,
            router,
            certificate,
            shutdown,
            reloads,
            tasks,
        })
    }

    /// What asks this gateway to read its certificate and secret files at once.
    pub fn file_reloads(&self) -> FileReloads {
        self.reloads.clone()
    }

    /// Whether this gateway reads any file again while it serves (a certificate, a secret).
    pub fn reloads_files(&self) -> bool {
        self.certificate.is_some() || self.state.config.reloadable_secret_files().next().is_some()
    }

    /// Serves this gateway's routes on `listener` until `shutdown` resolves ([`serve`]), with
    /// its configured header read timeout, over TLS when `tls` is configured. The future owns
    /// what it needs, so it can be spawned.
    pub fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tls = self.certificate.as_ref().map(|certificate| {
            tokio_rustls::TlsAcceptor::from(Arc::new(certificate.server_config()))
        });
        self.serve_with(listener, tls, shutdown)
    }

    /// As [`Gateway::serve`], in plain HTTP whatever `tls` says: the separate metrics port, for
    /// a scraper inside the deployment's network.
    pub fn serve_plain(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.serve_with(listener, None, shutdown)
    }

    fn serve_with(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        serve(
            listener,
            self.router.clone(),
            tls,
            self.state.config.header_read_timeout(),
            shutdown,
        )
    }

    /// Whether [`Gateway::serve`] serves HTTPS.
    pub fn is_https(&self) -> bool {
        self.certificate.is_some()
    }

    /// Stops the background tasks, letting the outbox finish the jobs it is sending.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("background tasks did not stop within the grace period");
            self.tasks.abort_all();
        }
    }
}

/// Periodic chores: error-store cleanup, metric upkeep, the flood guard's idle peers (database
/// retention runs apart: [`retention`]; the error entries' writer too: [`Reporter::run`]).
async fn housekeeping(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut cleanup = ticker(state.config.errors.cleanup_interval());
    let mut tick = ticker(Duration::from_secs(2));
    let mut clock = ticker(DATABASE_CLOCK_INTERVAL);
    clock.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = clock.tick() => measure_database_clock(&state.db).await,
            _ = cleanup.tick() => {
                // Safe on every instance at once: each removal is idempotent.
                match state.reporter.store().cleanup(now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "error store cleanup"),
                    Err(e) => tracing::warn!(error = %e, "error store cleanup failed"),
                }
            }
            _ = tick.tick() => {
                state.metrics.run_upkeep();
                // Often, so that peers rotating addresses hold only seconds' worth of buckets.
                state.flood_guard.prune();
            }
        }
    }
}

/// How often an instance measures its clock against the database's: often enough to follow a
/// clock that is stepped or drifts, at one query a minute.
const DATABASE_CLOCK_INTERVAL: Duration = Duration::from_secs(60);

/// Measures the database's clock against this instance's ([`db::clock`]), which corrects the
/// times it writes from then on, and exports the offset. A failed measurement keeps the last.
async fn measure_database_clock(db: &DatabaseConnection) {
    match db::clock::measure(db).await {
        Ok(Some(offset)) => {
            let seconds = offset.as_seconds_f64();
            telemetry::database_clock_offset().set(seconds);
            if seconds.abs() >= 1.0 {
                tracing::warn!(
                    offset_seconds = seconds,
                    "this instance's clock is off the database server's; the times it writes \
                     are corrected, but its logs and webhook timestamp checks use its own clock"
                );
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(
            error = %e,
            "could not read the database server's clock; the last offset stays"
        ),
    }
}

/// An interval whose missed ticks are put off rather than fired in a burst after a slow one.
pub(crate) fn ticker(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// Reads the HTTPS certificate's files every `interval`, so that a renewal is served without a
/// restart; a renewal that cannot be used is reported and the current certificate kept.
async fn renew_certificate(
    certificate: Arc<ServerCertificate>,
    interval: Duration,
    requested: watch::Receiver<()>,
    stop: watch::Receiver<bool>,
) {
    let expiry = telemetry::certificate_expiry();
    expiry.set(certificate.not_after() as f64);
    let reloads = telemetry::ReloadCounters::register("scenehook_tls_certificate_reloads_total");
    let schedule = Schedule {
        interval,
        requested,
        stop,
    };
    reload_on(schedule, reloads, "TLS certificate", move || {
        let renewed = certificate.reload()?;
        if renewed {
            expiry.set(certificate.not_after() as f64);
            tracing::info!(
                not_after = certificate.not_after(),
                "TLS certificate renewed"
            );
        }
        Ok(renewed)
    })
    .await
}

/// Reads the files the webhook secrets, the operator keys and the services' API keys came from
/// every `secret_files_reload_secs`, so that a rotation takes effect without a restart; new
/// values that production would refuse are reported and the current ones kept.
async fn reread_secret_files(
    state: AppState,
    requested: watch::Receiver<()>,
    stop: watch::Receiver<bool>,
) {
    let schedule = Schedule {
        interval: Duration::from_secs(state.config.secret_files_reload_secs),
        requested,
        stop,
    };
    let reloads = telemetry::ReloadCounters::register("scenehook_secret_files_reloads_total");
    reload_on(schedule, reloads, "secret files", move || {
        let config = state
            .config
            .with_secret_files_reread()
            .map_err(|e| e.0.join("; "))?;
        let credentials = Credentials::new(&config);
        let changed = state.credentials().changed(&credentials);
        if changed.is_empty() {
            return Ok(false);
        }
        state.credentials.replace(credentials);
        tracing::info!(changed = ?changed, "secrets read again from their files");
        Ok(true)
    })
    .await
}

/// When a file is read again: every `interval`, and at once when [`FileReloads::request`]ed,
/// until stopped.
struct Schedule {
    interval: Duration,
    requested: watch::Receiver<()>,
    stop: watch::Receiver<bool>,
}

/// Runs `reload` on `schedule`, on a blocking thread (it reads files): `Ok(true)` counts a
/// renewal, `Ok(false)` (no change) nothing, an error a failure, logged as `what`'s.
async fn reload_on(
    mut schedule: Schedule,
    reloads: telemetry::ReloadCounters,
    what: &str,
    reload: impl Fn() -> Result<bool, String> + Send + Sync + 'static,
) {
    let reload = Arc::new(reload);
    let mut ticks = ticker(schedule.interval);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = schedule.stop.changed() => return,
            _ = ticks.tick() => {}
            Ok(()) = schedule.requested.changed() => {
                tracing::info!("reading the {what} again, as asked");
            }
        }
        let reload = reload.clone();
        let reloaded = tokio::task::spawn_blocking(move || reload())
            .await
            .unwrap_or_else(|_| Err("the reload panicked".to_owned()));
        match reloaded {
            Ok(false) => {}
            Ok(true) => reloads.renewed.increment(1),
            Err(e) => {
                reloads.failed.increment(1);
                tracing::error!(error = %e, "{what} not renewed; the current ones stay");
            }
        }
    }
}

/// Database retention ([`db::prune`]) at the error store's cleanup interval, apart from the
/// other chores: it deletes in chunks with pauses, which after a busy hour takes a while, and
/// the error store's cleanup and the metrics' upkeep must not wait for it. A stop drops it
/// where it waits: each chunk is a statement of its own, so what went stays gone and the rest
/// waits for the next pass.
async fn retention(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut interval = ticker(state.config.errors.cleanup_interval());
    let d = &state.config.database;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = interval.tick() => {}
        }
        let prune = db::prune(&state.db, d.delivery_retention(), d.done_job_retention());
        tokio::select! {
            _ = stop.changed() => return,
            result = prune => match result {
                Ok((0, 0)) => {}
                Ok((deliveries, jobs)) => tracing::info!(deliveries, jobs, "database retention"),
                Err(e) => tracing::warn!(error = %e, "database retention failed"),
            },
        }
    }
}

/// Builds and starts one gateway instance from `config` (the entry point tests use).
pub async fn build_app(config: Config) -> Result<Gateway, StartError> {
    Gateway::start(config).await
}

/// Serves `router` on `listener` with client addresses, over TLS with `tls` if given, until
/// `shutdown` resolves; in-flight requests are finished first. The loop `axum::serve` runs,
/// with hyper given a timer, which its header read timeout needs and `axum::serve` does not
/// give it: without one, a client that sends its headers a byte at a time, or never sends
/// another request, holds a connection for as long as it likes. Past `header_read_timeout`
/// hyper closes it (and a TLS handshake not done by then is dropped); the body and the handler
/// have `request_timeout_secs` (the HTTP metrics layer).
async fn serve(
    mut listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_read_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::{conn::auto, graceful::GracefulShutdown},
        service::TowerToHyperService,
    };
    use tower::ServiceExt;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let builder = Arc::new(builder);
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // axum's accept: it retries a failed accept, after a pause if the process is out of
        // file descriptors.
        let (stream, client) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(client));
                request
            },
        ));
        let builder = builder.clone();
        let watcher = connections.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(connection).await
                }
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(header_read_timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %client, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(connection).await
                }
            };
            if let Err(e) = served {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}
