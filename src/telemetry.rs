//! Logging (tracing, `RUST_LOG`, text or JSON lines) and the Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber once; later calls (tests start many apps) do nothing.
/// `LOG_FORMAT=json` gives one JSON object per line.
pub fn init_tracing(json: bool) {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("scenehook=info,tower_http=warn,warn"));
        let registry = tracing_subscriber::registry().with(filter);
        let result = if json {
            registry
                .with(
                    fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(true),
                )
                .try_init()
        } else {
            registry.with(fmt::layer().with_target(false)).try_init()
        };
        // A test harness may have installed its own subscriber first; that one stays.
        drop(result);
    });
}

/// Latency buckets in seconds, from sub-millisecond webhook answers to slow downstream calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
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
                .and_then(|b| b.set_buckets(LATENCY_BUCKETS))
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (a test harness); ours still renders.
            drop(metrics::set_global_recorder(recorder));
            metrics::gauge!("scenehook_build_info", "version" => env!("CARGO_PKG_VERSION"))
                .set(1.0);
            handle
        })
        .clone()
}
