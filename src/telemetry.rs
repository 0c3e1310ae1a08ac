//! Logging (tracing, `RUST_LOG`, text or JSON lines) and the Prometheus recorder.

use std::{
    io::{BufWriter, IsTerminal},
    sync::OnceLock,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log lines queued for the log thread at most (a few MiB). Past it, new lines are dropped
/// and counted (`scenehook_log_lines_dropped_total`) rather than holding requests until the
/// log drains.
const LOG_QUEUE_LINES: usize = 8_192;

/// The log thread's count of dropped lines, once logging is installed.
static DROPPED_LOG_LINES: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the global subscriber. `LOG_FORMAT=json` gives one JSON object per line. Lines are
/// formatted where they are logged and written to stdout by a thread of their own, so that a
/// stdout that stalls (a pipe to a log collector) never blocks a tokio worker; lines queued
/// together leave in one write. Keep the guard until exit: dropping it writes out what is still
/// queued. `None` when a subscriber is installed already (a test harness's, which stays).
pub fn init_tracing(json: bool) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("scenehook=info,tower_http=warn,warn"));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("scenehook-log")
        .finish(BufWriter::new(std::io::stdout()));
    let dropped = writer.error_counter();
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(writer),
            )
            .try_init()
    } else {
        // Colours for a terminal only: in a file or a collector they are noise.
        let ansi = std::io::stdout().is_terminal();
        registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .try_init()
    };
    installed.ok()?;
    DROPPED_LOG_LINES.get_or_init(|| dropped);
    Some(guard)
}

/// Brings `scenehook_log_lines_dropped_total` up to date (on each scrape).
pub fn record_dropped_log_lines() {
    if let Some(dropped) = DROPPED_LOG_LINES.get() {
        metrics::counter!("scenehook_log_lines_dropped_total")
            .absolute(dropped.dropped_lines() as u64);
    }
}

/// Latency buckets in seconds, from sub-millisecond webhook answers to slow downstream calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Deliveries per ingestion transaction.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0,
];
/// Pipeline durations: seconds to hours.
const PIPELINE_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Prefix("scenehook_pipeline_".into()),
                    PIPELINE_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("scenehook_ingest_batch_size".into()),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| b.set_buckets(LATENCY_BUCKETS))
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (a test harness); ours still renders.
            drop(metrics::set_global_recorder(recorder));
            describe_metrics();
            metrics::gauge!("scenehook_build_info", "version" => env!("CARGO_PKG_VERSION"))
                .set(1.0);
            handle
        })
        .clone()
}

/// HELP text for every metric, and label-less counters registered at zero so that dashboards
/// and alerts see them before their first event.
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "scenehook_build_info",
        "Build information; the value is always 1."
    );
    describe_counter!(
        "scenehook_webhooks_total",
        "Webhooks received, by endpoint and outcome."
    );
    describe_histogram!(
        "scenehook_webhook_duration_seconds",
        Unit::Seconds,
        "Time to answer a webhook, by endpoint."
    );
    describe_histogram!(
        "scenehook_ingest_batch_size",
        "Webhook deliveries committed per ingestion transaction."
    );
    describe_histogram!(
        "scenehook_ingest_transaction_seconds",
        Unit::Seconds,
        "Time an ingestion batch's transaction took, from taking a connection to its commit \
         (or its failure); a webhook's answer waits for the batch ahead of its own and for this."
    );
    describe_gauge!(
        "scenehook_sqlite_wal_bytes",
        Unit::Bytes,
        "SQLite: the write-ahead log's content at the last checkpoint."
    );
    describe_gauge!(
        "scenehook_sqlite_wal_limit_bytes",
        Unit::Bytes,
        "SQLite: the WAL size at which the checkpointer starts it over (sqlite_wal_max_mib)."
    );
    describe_histogram!(
        "scenehook_sqlite_wal_restart_seconds",
        Unit::Seconds,
        "SQLite: time the checkpoint that starts the WAL over held new transactions back."
    );
    describe_histogram!(
        "scenehook_sqlite_sync_ahead_seconds",
        Unit::Seconds,
        "SQLite: the checkpointer's syncs of the database file ahead of a WAL restart, beside the \
         writer (so that the restart's own sync, which holds new transactions, is short)."
    );
    describe_counter!(
        "scenehook_sqlite_wal_restart_busy_total",
        "SQLite: WAL restarts given up because a reader or writer held the log."
    );
    describe_counter!(
        "scenehook_log_lines_dropped_total",
        "Log lines dropped because stdout did not keep up with them."
    );
    describe_counter!(
        "scenehook_ingest_batch_splits_total",
        "Ingestion batches whose transaction failed and were applied delivery by delivery."
    );
    describe_counter!(
        "scenehook_http_requests_total",
        "HTTP requests by route template, method and status."
    );
    describe_histogram!(
        "scenehook_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route template and method."
    );
    describe_counter!(
        "scenehook_rate_limit_decisions_total",
        "Rate-limit decisions by endpoint, backend and decision."
    );
    describe_histogram!(
        "scenehook_rate_limit_store_duration_seconds",
        Unit::Seconds,
        "Latency of the shared rate-limit store, by backend."
    );
    describe_counter!(
        "scenehook_rate_limit_store_errors_total",
        "Failed calls to the shared rate-limit store, by backend."
    );
    describe_counter!(
        "scenehook_rate_limit_fail_open_total",
        "Decisions taken by the in-process fallback while the shared store was unreachable."
    );
    describe_counter!(
        "scenehook_outbound_requests_total",
        "Outbound calls by service and result (retries inside one call count once)."
    );
    describe_histogram!(
        "scenehook_outbound_duration_seconds",
        Unit::Seconds,
        "Outbound call latency by service, retries included."
    );
    describe_counter!(
        "scenehook_outbox_retries_total",
        "Outbound jobs rescheduled after a transient failure, by service."
    );
    describe_counter!(
        "scenehook_outbox_dead_total",
        "Outbound jobs dead-lettered after their last attempt, by service."
    );
    describe_gauge!(
        "scenehook_outbox_jobs",
        "Outbox jobs by service and status (shared: the same on every instance)."
    );
    describe_gauge!(
        "scenehook_outbox_oldest_pending_seconds",
        Unit::Seconds,
        "How long the pending outbox job that came due first has waited since (0 when none is due)."
    );
    describe_gauge!(
        "scenehook_circuit_breaker_state",
        "Circuit-breaker state by service: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        "scenehook_circuit_breaker_transitions_total",
        "Circuit-breaker transitions by service and new state."
    );
    describe_gauge!(
        "scenehook_errors_active",
        "Active entries of the global error store by severity and type."
    );
    describe_counter!(
        "scenehook_errors_recorded_total",
        "Entries recorded in the global error store by severity and type."
    );
    describe_counter!(
        "scenehook_error_store_failures_total",
        "Failed writes to the error store (the entries stay queued)."
    );
    describe_counter!(
        "scenehook_error_store_dropped_total",
        "Error entries dropped because the queue for the store was full."
    );
    describe_gauge!(
        "scenehook_projects",
        "Projects by status; a status slow to count is counted again less often."
    );
    describe_counter!(
        "scenehook_pipeline_project_transitions_total",
        "Project state changes by new status."
    );
    describe_histogram!(
        "scenehook_pipeline_scene_step_seconds",
        Unit::Seconds,
        "Duration of a scene's generation or extraction step."
    );
    describe_histogram!(
        "scenehook_pipeline_project_duration_seconds",
        Unit::Seconds,
        "Project creation to completion."
    );
    describe_gauge!(
        "scenehook_tls_certificate_expiry_timestamp_seconds",
        Unit::Seconds,
        "When the HTTPS certificate served now expires (Unix time); HTTPS only."
    );
    describe_gauge!(
        "scenehook_database_clock_offset_seconds",
        Unit::Seconds,
        "The Postgres server's clock minus this instance's, measured every minute; the times \
         the instance writes are corrected by it. Postgres only."
    );
    describe_counter!(
        "scenehook_tls_certificate_reloads_total",
        "HTTPS certificate files found changed, by result: renewed (served from then on) or \
         failed (unusable; the current certificate stays). HTTPS only."
    );
    describe_counter!(
        "scenehook_secret_files_reloads_total",
        "Secret files (webhook secrets, operator keys) found changed, by result: renewed (in \
         force from then on) or failed (unusable; the current secrets stay)."
    );
    // Exported whether or not a secret comes from a file, as the alert on it expects.
    ReloadCounters::register("scenehook_secret_files_reloads_total");
    for counter in [
        "scenehook_rate_limit_fail_open_total",
        "scenehook_error_store_failures_total",
        "scenehook_error_store_dropped_total",
        "scenehook_ingest_batch_splits_total",
        "scenehook_log_lines_dropped_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
}

/// The database server's clock minus this instance's ([`crate::db::clock`]).
pub fn database_clock_offset() -> metrics::Gauge {
    metrics::gauge!("scenehook_database_clock_offset_seconds")
}

/// When the HTTPS certificate served now expires (Unix seconds).
pub fn certificate_expiry() -> metrics::Gauge {
    metrics::gauge!("scenehook_tls_certificate_expiry_timestamp_seconds")
}

/// A reloaded file's outcomes: renewed (taken) and failed (unusable; the current value stays).
pub struct ReloadCounters {
    pub renewed: metrics::Counter,
    pub failed: metrics::Counter,
}

impl ReloadCounters {
    /// Registers both results of `name` at zero, so that an alert sees a failure's first
    /// increase.
    pub fn register(name: &'static str) -> Self {
        let result = |result: &'static str| {
            let counter = metrics::counter!(name, "result" => result);
            counter.increment(0);
            counter
        };
        Self {
            renewed: result("renewed"),
            failed: result("failed"),
        }
    }
}
