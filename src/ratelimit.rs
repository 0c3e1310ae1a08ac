//! The per-IP, per-endpoint webhook limit: the shared store's decision, with the configured
//! behaviour when that store (Redis) is unreachable: fall back to this instance's in-process
//! window (fail open, reported once per outage) or refuse with 503 (fail closed).

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    config::RateLimitConfig,
    domain::webhook::WebhookKind,
    reporter::Reporter,
    store::{ErrorType, NewError, RateDecision, RateLimitStore, memory::MemoryRateLimiter},
};

pub struct RateLimiter {
    store: Arc<dyn RateLimitStore>,
    fallback: MemoryRateLimiter,
    config: RateLimitConfig,
    degraded: AtomicBool,
    reporter: Reporter,
    /// Registered once, rather than looked up by its label on every webhook.
    store_duration: metrics::Histogram,
    /// `scenehook_rate_limit_store_errors_total`, registered once and so exported from zero,
    /// for the alert on it (`ScenehookRedisUnreachable`).
    store_errors: metrics::Counter,
    /// `scenehook_rate_limit_decisions_total`, registered once (every series is exported from
    /// zero): per endpoint, per [`Backend`], allowed then rejected.
    decisions: [[[metrics::Counter; 2]; Backend::ALL.len()]; WebhookKind::ALL.len()],
}

/// Which limiter decided (its discriminant is its slot in `decisions`).
#[derive(Clone, Copy)]
enum Backend {
    Store,
    InProcessFallback,
}

impl Backend {
    const ALL: [Self; 2] = [Self::Store, Self::InProcessFallback];

    /// The `backend` label: the store's own name, or the in-process fallback's.
    fn label(self, store: &dyn RateLimitStore) -> &'static str {
        match self {
            Self::Store => store.backend(),
            Self::InProcessFallback => "memory_fallback",
        }
    }
}

/// The limiter could not decide (store down and failing closed).
#[derive(Debug)]
pub struct LimiterUnavailable;

impl RateLimiter {
    pub fn new(
        store: Arc<dyn RateLimitStore>,
        config: RateLimitConfig,
        reporter: Reporter,
    ) -> Self {
        let store_duration = metrics::histogram!(
            "scenehook_rate_limit_store_duration_seconds", "backend" => store.backend()
        );
        let store_errors = metrics::counter!(
            "scenehook_rate_limit_store_errors_total", "backend" => store.backend()
        );
        let decisions = WebhookKind::ALL.map(|kind| {
            Backend::ALL.map(|backend| {
                let backend = backend.label(store.as_ref());
                ["allowed", "rejected"].map(|decision| {
                    metrics::counter!("scenehook_rate_limit_decisions_total",
                        "endpoint" => kind.as_str(), "backend" => backend, "decision" => decision)
                })
            })
        });
        Self {
            store_duration,
            store_errors,
            decisions,
            store,
            fallback: MemoryRateLimiter::new(),
            config,
            degraded: AtomicBool::new(false),
            reporter,
        }
    }

    pub fn limit_for(&self, kind: WebhookKind) -> u32 {
        match kind {
            WebhookKind::VideoComplete => self.config.video_complete,
            WebhookKind::LastFrameComplete => self.config.last_frame_complete,
            WebhookKind::StitchComplete => self.config.stitch_complete,
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(self.config.window_secs)
    }

    pub async fn check(
        &self,
        kind: WebhookKind,
        ip: IpAddr,
    ) -> Result<RateDecision, LimiterUnavailable> {
        let key = format!("{}:{ip}", kind.as_str());
        let limit = self.limit_for(kind);
        let started = Instant::now();
        let result = self.store.hit(&key, limit, self.window()).await;
        self.store_duration.record(started.elapsed().as_secs_f64());
        let (decision, backend) = match result {
            Ok(decision) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate-limit store is back");
                }
                (decision, Backend::Store)
            }
            Err(e) => {
                self.store_errors.increment(1);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    let mode = if self.config.fail_open {
                        "failing open to the in-process limiter"
                    } else {
                        "failing closed"
                    };
                    tracing::error!(error = %e, "rate-limit store unreachable, {mode}");
                    self.reporter.report(
                        NewError::critical(
                            ErrorType::System,
                            format!("Rate-limit store unreachable, {mode}"),
                        )
                        .with_source("rate_limit"),
                    );
                }
                if !self.config.fail_open {
                    return Err(LimiterUnavailable);
                }
                metrics::counter!("scenehook_rate_limit_fail_open_total").increment(1);
                let decision = self
                    .fallback
                    .hit(&key, limit, self.window())
                    .await
                    .expect("the in-process limiter cannot fail");
                (decision, Backend::InProcessFallback)
            }
        };
        self.decisions[kind as usize][backend as usize][usize::from(!decision.allowed)]
            .increment(1);
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_has_its_own_metric_slot() {
        for (slot, backend) in Backend::ALL.into_iter().enumerate() {
            assert_eq!(backend as usize, slot);
        }
    }
}
