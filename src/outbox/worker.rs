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
    config::{Config, ServiceConfig},
    db,
    reporter::Reporter,
    store::{ErrorType, NewError, Severity},
};

pub struct Outbox {
    db: DatabaseConnection,
    config: Arc<Config>,
    client: OutboundClient,
    reporter: Reporter,
    lanes: Vec<Lane>,
}

struct Lane {
    breaker: Breaker,
    wake: Notify,
}

impl Outbox {
    pub fn new(db: DatabaseConnection, config: Arc<Config>, reporter: Reporter) -> Self {
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

    fn service_config(&self, service: Service) -> &ServiceConfig {
        let s = &self.config.services;
        match service {
            Service::Video => &s.video,
            Service::LastFrame => &s.last_frame,
            Service::Stitch => &s.stitch,
            Service::Notification => &s.notification,
        }
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
        // task of its own, so that it goes on while the lane awaits a claim: a settle left
        // unpolled mid-statement would hold SQLite's write lock the claim waits for.
        let mut in_flight = JoinSet::new();
        // Whether due jobs may be waiting: after a claim that filled every free slot, a wake
        // (jobs were queued) or a poll (retries come due). A slot that frees claims again only
        // then, so that an idle lane does not query (on SQLite: take the write lock the
        // ingestion writer waits for) at every settled job.
        let mut due = true;
        let mut poll = crate::app::ticker(Duration::from_millis(
            self.config.outbox.poll_interval_ms.max(1),
        ));
        while !*shutdown.borrow() {
            if due && lane.breaker.permits() {
                // Half-open: one probe at a time.
                let slots = match lane.breaker.state() {
                    BreakerState::HalfOpen => 1,
                    _ => capacity,
                }
                .saturating_sub(in_flight.len());
                if slots > 0 {
                    match db::outbox::claim(&self.db, service.as_str(), slots as u64, lease).await {
                        Ok(jobs) => {
                            due = jobs.len() == slots;
                            for job in jobs {
                                in_flight.spawn(self.clone().send(service, job));
                            }
                        }
                        Err(e) => {
                            due = false;
                            tracing::warn!(service = service.as_str(), error = %e, "outbox claim failed")
                        }
                    }
                }
            }
            tokio::select! {
                Some(settled) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Err(e) = settled {
                        tracing::error!(service = service.as_str(), error = %e, "an outbound job's task failed; its lease will expire and it is sent again");
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
        // Shutting down: no new claims; the jobs in flight are sent and settled.
        while in_flight.join_next().await.is_some() {}
    }

    /// Sends and settles one claimed job, in a span of its own.
    async fn send(self: Arc<Self>, service: Service, job: outbox_job::Model) {
        let span = tracing::info_span!(
            "outbox_job",
            job_id = %job.id,
            service = service.as_str(),
            kind = %job.kind,
            attempt = job.attempts,
            request_id = job.request_id.as_deref().unwrap_or(""),
        );
        self.process(service, job).instrument(span).await
    }

    async fn process(&self, service: Service, job: outbox_job::Model) {
        let lane = self.lane(service);
        if !lane.breaker.permits() {
            let _ = db::outbox::release(
                &self.db,
                &job,
                Duration::from_millis(self.config.outbox.poll_interval_ms),
            )
            .await;
            return;
        }
        let (result, elapsed) = self
            .client
            .post(
                self.service_config(service),
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
        let settled = match result {
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
                db::outbox::complete(&self.db, &job).await
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
                    self.bury(service, &job, error).await
                } else {
                    let delay = retry_after
                        .map(|d| d.min(Duration::from_secs(3600)))
                        .unwrap_or_else(|| self.backoff(job.attempts));
                    metrics::counter!("scenehook_outbox_retries_total", "service" => service.as_str())
                        .increment(1);
                    tracing::info!(%error, delay_ms = delay.as_millis() as u64, "outbound call failed, retrying later");
                    db::outbox::retry_later(&self.db, &job, delay, error).await
                }
            }
            CallResult::Permanent(error) => {
                lane.breaker.success();
                self.bury(service, &job, error).await
            }
        };
        match settled {
            Ok(true) => {}
            Ok(false) => tracing::warn!("job was re-claimed elsewhere after its lease expired"),
            Err(e) => {
                tracing::warn!(error = %e, "could not settle job; its lease will expire and it is sent again")
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

    async fn bury(
        &self,
        service: Service,
        job: &outbox_job::Model,
        error: String,
    ) -> Result<bool, sea_orm::DbErr> {
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
        db::outbox::kill(&self.db, job, error).await
    }
}
