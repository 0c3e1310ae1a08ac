//! The outbox worker: one lane per service, in every instance. A lane claims due jobs of its
//! service (never while its breaker is open: waiting jobs are not burned as failed attempts),
//! keeps up to the service's limit of them in flight, claiming more as each is settled, and
//! settles each: done, retried later (exponential backoff, or the service's `Retry-After`),
//! or dead after the last attempt.

use std::{sync::Arc, time::Duration};

use entity::outbox_job;
use sea_orm::DatabaseConnection;
use tokio::{sync::Notify, task::JoinSet};
use tracing::Instrument;

use super::{
    Service,
    breaker::{Breaker, BreakerState},
    client::{CallResult, OutboundClient},
};
use crate::{
    config::Config,
    credentials::SharedCredentials,
    db::{
        self,
        outbox::{Claim, Settle},
    },
    reporter::Reporter,
    store::{ErrorType, NewError, Severity},
};

pub struct Outbox {
    db: DatabaseConnection,
    config: Arc<Config>,
    /// The services' API keys among them, which a rotation may change.
    credentials: SharedCredentials,
    client: OutboundClient,
    reporter: Reporter,
    lanes: Vec<Lane>,
}

struct Lane {
    breaker: Breaker,
    wake: Notify,
}

impl Outbox {
    pub fn new(
        db: DatabaseConnection,
        config: Arc<Config>,
        credentials: SharedCredentials,
        reporter: Reporter,
    ) -> Self {
        let o = &config.outbox;
        let lanes = Service::ALL
            .into_iter()
            .map(|service| Lane {
                breaker: Breaker::new(
                    service,
                    o.breaker_consecutive_failures,
                    Duration::from_millis(o.breaker_open_min_ms),
                    Duration::from_millis(o.breaker_open_max_ms),
                ),
                wake: Notify::new(),
            })
            .collect();
        Self {
            client: OutboundClient::new(o),
            db,
            config,
            credentials,
            reporter,
            lanes,
        }
    }

    fn lane(&self, service: Service) -> &Lane {
        &self.lanes[service as usize]
    }

    /// Tells this instance's lane that jobs were queued, so it need not wait for its poll.
    pub fn wake(&self, service: Service) {
        self.lane(service).wake.notify_one();
    }

    pub fn breaker_state(&self, service: Service) -> BreakerState {
        self.lane(service).breaker.state()
    }

    /// Runs every lane until `shutdown` turns true; a lane finishes the jobs it is sending.
    pub async fn run(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut lanes = JoinSet::new();
        for service in Service::ALL {
            let outbox = self.clone();
            let shutdown = shutdown.clone();
            lanes.spawn(async move { outbox.run_lane(service, shutdown).await });
        }
        while lanes.join_next().await.is_some() {}
    }

    async fn run_lane(
        self: &Arc<Self>,
        service: Service,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let lane = self.lane(service);
        let lease = Duration::from_secs(self.config.outbox.lease_secs);
        let capacity = self.config.outbox.concurrency_per_service.max(1);
        // Each job in flight holds one slot until it is settled, and a slot that frees is
        // filled by the next claim: a slow call holds its own slot, not the lane. Each is a
        // task of its own, so that it goes on while the lane writes.
        let mut in_flight = JoinSet::new();
        // What became of the jobs that finished, written with the next claim in one
        // transaction. Kept when that write fails, for the next turn (no claim is made
        // meanwhile, so they stay within the lane's capacity); a job whose lease expires
        // first is sent again, as it would be after a crash.
        let mut finished: Vec<(outbox_job::Model, Settle)> = Vec::new();
        // Whether due jobs may be waiting: after a claim that filled every free slot, a wake
        // (jobs were queued) or a poll (retries come due). Slots that free claim again only
        // then, so that an idle lane does not query (on SQLite: take the write lock the
        // ingestion writer waits for) at every settled job.
        let mut due = true;
        let mut poll = crate::app::ticker(Duration::from_millis(
            self.config.outbox.poll_interval_ms.max(1),
        ));
        while !*shutdown.borrow() {
            let slots = if due && lane.breaker.permits() {
                // Half-open: one probe at a time.
                match lane.breaker.state() {
                    BreakerState::HalfOpen => 1,
                    _ => capacity,
                }
                .saturating_sub(in_flight.len())
            } else {
                0
            };
            if slots > 0 || !finished.is_empty() {
                let next = (slots > 0).then(|| Claim {
                    service: service.as_str(),
                    limit: slots as u64,
                    lease,
                    now: db::clock::now(),
                });
                match db::outbox::settle_and_claim(&self.db, &finished, next).await {
                    Ok(settled) => {
                        for job_id in settled.lost {
                            tracing::warn!(service = service.as_str(), %job_id, "job was re-claimed elsewhere after its lease expired");
                        }
                        finished.clear();
                        if slots > 0 {
                            due = settled.claimed.len() == slots;
                        }
                        for job in settled.claimed {
                            in_flight.spawn(self.clone().send(service, job));
                        }
                    }
                    Err(e) => {
                        due = false;
                        tracing::warn!(service = service.as_str(), error = %e, settled = finished.len(), "outbox settle and claim failed; trying again at the lane's next turn");
                    }
                }
            }
            tokio::select! {
                Some(sent) = in_flight.join_next(), if !in_flight.is_empty() => {
                    keep_settled(service, sent, &mut finished);
                    // Every other call already back goes in the same write.
                    while let Some(sent) = in_flight.try_join_next() {
                        keep_settled(service, sent, &mut finished);
                    }
                }
                () = lane.wake.notified() => due = true,
                _ = poll.tick() => due = true,
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        // Shutting down: no new claims; the jobs in flight are sent, and all settled at once.
        while let Some(sent) = in_flight.join_next().await {
            keep_settled(service, sent, &mut finished);
        }
        if !finished.is_empty()
            && let Err(e) = db::outbox::settle_and_claim(&self.db, &finished, None).await
        {
            tracing::warn!(service = service.as_str(), error = %e, settled = finished.len(), "could not settle jobs on shutdown; their leases will expire and they are sent again");
        }
    }

    /// Sends one claimed job, in a span of its own; returns what became of it.
    async fn send(
        self: Arc<Self>,
        service: Service,
        job: outbox_job::Model,
    ) -> (outbox_job::Model, Settle) {
        let span = tracing::info_span!(
            "outbox_job",
            job_id = %job.id,
            service = service.as_str(),
            kind = %job.kind,
            attempt = job.attempts,
            request_id = job.request_id.as_deref().unwrap_or(""),
        );
        let settle = self.process(service, &job).instrument(span).await;
        (job, settle)
    }

    async fn process(&self, service: Service, job: &outbox_job::Model) -> Settle {
        let lane = self.lane(service);
        if !lane.breaker.permits() {
            return Settle::Release {
                at: db::outbox::after(
                    db::clock::now(),
                    Duration::from_millis(self.config.outbox.poll_interval_ms),
                ),
            };
        }
        let (result, elapsed) = self
            .client
            .post(
                self.config.services.get(service),
                self.credentials.current().service_key(service),
                &job.id,
                job.request_id.as_deref(),
                &job.payload,
            )
            .await;
        metrics::counter!(
            "scenehook_outbound_requests_total",
            "service" => service.as_str(),
            "result" => result.label()
        )
        .increment(1);
        metrics::histogram!("scenehook_outbound_duration_seconds", "service" => service.as_str())
            .record(elapsed.as_secs_f64());
        match result {
            CallResult::Delivered(body) => {
                lane.breaker.success();
                if job.kind == "generate_scene"
                    && let (Some(scene_id), Some(task_id)) = (
                        job.payload.get("scene_id").and_then(|v| v.as_str()),
                        body.as_ref()
                            .and_then(|b| b.get("task_id"))
                            .and_then(|v| v.as_str()),
                    )
                    && let Err(e) =
                        db::pipeline::store_video_task(&self.db, scene_id, task_id).await
                {
                    tracing::warn!(error = %e, "could not store the video task id; the callback will");
                }
                tracing::debug!("delivered");
                Settle::Done
            }
            CallResult::Transient {
                error,
                retry_after,
                counts_against_service,
            } => {
                if counts_against_service {
                    lane.breaker.failure();
                }
                if job.attempts >= self.config.outbox.max_attempts {
                    self.bury(service, job, error)
                } else {
                    let delay = retry_after
                        .map(|d| d.min(Duration::from_secs(3600)))
                        .unwrap_or_else(|| self.backoff(job.attempts));
                    metrics::counter!("scenehook_outbox_retries_total", "service" => service.as_str())
                        .increment(1);
                    tracing::info!(%error, delay_ms = delay.as_millis() as u64, "outbound call failed, retrying later");
                    Settle::RetryAt {
                        at: db::outbox::after(db::clock::now(), delay),
                        error,
                    }
                }
            }
            CallResult::Permanent(error) => {
                lane.breaker.success();
                self.bury(service, job, error)
            }
        }
    }

    /// Exponential backoff from the configured base, capped.
    fn backoff(&self, attempts: i32) -> Duration {
        let o = &self.config.outbox;
        let exp = attempts.saturating_sub(1).clamp(0, 20) as u32;
        let delay = o.base_delay_ms.saturating_mul(1u64 << exp);
        Duration::from_millis(delay.min(o.max_delay_secs.saturating_mul(1000)))
    }

    fn bury(&self, service: Service, job: &outbox_job::Model, error: String) -> Settle {
        metrics::counter!("scenehook_outbox_dead_total", "service" => service.as_str())
            .increment(1);
        tracing::error!(%error, "outbound job is dead after its last attempt");
        let (severity, kind) = match service {
            Service::Notification => (Severity::Error, ErrorType::Notification),
            _ => (Severity::Critical, ErrorType::Automation),
        };
        self.reporter.report(
            NewError::new(
                severity,
                kind,
                format!(
                    "{} job to the {} service is dead: {error}",
                    job.kind,
                    service.as_str()
                ),
            )
            .with_source(format!("outbox:{}", service.as_str()))
            .with_details(serde_json::json!({"jobId": job.id, "attempts": job.attempts})),
        );
        Settle::Dead { error }
    }
}

/// Keeps what became of a job whose task has ended. A task that panicked settled nothing: its
/// lease expires and the job is sent again.
fn keep_settled(
    service: Service,
    sent: Result<(outbox_job::Model, Settle), tokio::task::JoinError>,
    finished: &mut Vec<(outbox_job::Model, Settle)>,
) {
    match sent {
        Ok(settled) => finished.push(settled),
        Err(e) => {
            tracing::error!(service = service.as_str(), error = %e, "an outbound job's task failed; its lease will expire and it is sent again")
        }
    }
}
