//! How a domain [`Job`] becomes an outbox row: which service, and the exact request body.

use chrono::{DateTime, Utc};
use entity::outbox_job;
use serde_json::json;

use crate::{
    domain::{Job, ids::time_ordered_token},
    text_enum::text_enum,
};

text_enum!(
    /// The downstream services, one circuit breaker and one worker lane each.
    Service {
        Video => "video",
        LastFrame => "last_frame",
        Stitch => "stitch",
        Notification => "notification",
    }
);

text_enum!(
    /// Where an outbox job is: due or waiting for its next attempt, claimed by a worker (until
    /// its lease ends), delivered, or out of attempts until an operator replays it.
    JobStatus {
        Pending => "pending",
        InFlight => "in_flight",
        Done => "done",
        Dead => "dead",
    }
);

impl JobStatus {
    /// The statuses a job is in until it is done.
    pub const NOT_DONE: [JobStatus; 3] = [Self::Pending, Self::InFlight, Self::Dead];
}

/// What building a job's request needs besides the job: our public URL and the request id.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub app_url: String,
    pub request_id: Option<String>,
}

impl JobContext {
    fn callback(&self, endpoint: &str) -> String {
        format!(
            "{}/api/webhooks/{endpoint}",
            self.app_url.trim_end_matches('/')
        )
    }
}

/// The outbox rows for `jobs`, due now.
pub fn new_job_rows(
    project_id: &str,
    jobs: &[Job],
    ctx: &JobContext,
    now: DateTime<Utc>,
) -> Vec<outbox_job::Model> {
    jobs.iter()
        .map(|job| {
            let (kind, service, payload) = request(project_id, job, ctx);
            outbox_job::Model {
                // Time-ordered: the outbox's primary key index grows at its end.
                id: format!("job_{}", time_ordered_token(16)),
                kind: kind.to_owned(),
                service: service.as_str().to_owned(),
                payload,
                status: JobStatus::Pending.as_str().to_owned(),
                attempts: 0,
                next_attempt_at: now,
                last_error: None,
                request_id: ctx.request_id.clone(),
                created_at: now,
                updated_at: now,
            }
        })
        .collect()
}

fn request(
    project_id: &str,
    job: &Job,
    ctx: &JobContext,
) -> (&'static str, Service, serde_json::Value) {
    match job {
        Job::GenerateScene {
            scene_id,
            prompt,
            first_frame_url,
        } => (
            "generate_scene",
            Service::Video,
            json!({
                "scene_id": scene_id,
                "project_id": project_id,
                "prompt": prompt,
                "first_frame_url": first_frame_url,
                "callback_url": ctx.callback("video-complete"),
            }),
        ),
        Job::ExtractLastFrame {
            scene_id,
            video_url,
        } => (
            "extract_last_frame",
            Service::LastFrame,
            json!({
                "scene_id": scene_id,
                "project_id": project_id,
                "video_url": video_url,
                "callback_url": ctx.callback("last-frame-complete"),
            }),
        ),
        Job::Stitch { video_urls } => (
            "stitch",
            Service::Stitch,
            json!({
                "project_id": project_id,
                "video_urls": video_urls,
                "callback_url": ctx.callback("stitch-complete"),
            }),
        ),
        Job::Notify {
            event,
            final_video_url,
            error,
        } => {
            let mut body = json!({
                "project_id": project_id,
                "event": event.as_str(),
                "final_video_url": final_video_url,
            });
            if let Some(error) = error {
                body["error"] = json!(error);
            }
            ("notify", Service::Notification, body)
        }
    }
}
