//! The three webhook payloads, exactly as the services send them (snake_case; unknown fields
//! ignored), their validation, and the delivery key that makes them idempotent.

use serde::Deserialize;
use utoipa::ToSchema;

use super::ids::{Id, parse_http_url};

/// Which webhook endpoint a delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookKind {
    VideoComplete,
    LastFrameComplete,
    StitchComplete,
}

impl WebhookKind {
    pub const ALL: [WebhookKind; 3] = [
        Self::VideoComplete,
        Self::LastFrameComplete,
        Self::StitchComplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::VideoComplete => "video-complete",
            Self::LastFrameComplete => "last-frame-complete",
            Self::StitchComplete => "stitch-complete",
        }
    }
}

/// `status` of a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallbackStatus {
    Completed,
    Failed,
}

/// The video service finished (or failed) a scene's clip.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct VideoCompletePayload {
    pub task_id: String,
    pub status: CallbackStatus,
    pub scene_id: String,
    pub project_id: String,
    pub video_url: Option<String>,
    pub error: Option<String>,
    pub timestamp: Option<String>,
}

/// The last-frame service extracted (or failed to extract) a clip's last frame.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LastFrameCompletePayload {
    pub task_id: String,
    pub status: CallbackStatus,
    pub scene_id: String,
    pub project_id: String,
    pub last_frame_url: Option<String>,
    pub error: Option<String>,
    pub timestamp: Option<String>,
}

/// The stitch service joined (or failed to join) a project's clips.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct StitchCompletePayload {
    pub task_id: String,
    pub status: CallbackStatus,
    pub project_id: String,
    pub final_video_url: Option<String>,
    pub error: Option<String>,
    pub timestamp: Option<String>,
}

/// A validated callback, ready for the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callback {
    Video {
        project_id: Id,
        scene_id: Id,
        task_id: String,
        outcome: Outcome,
    },
    LastFrame {
        project_id: Id,
        scene_id: Id,
        task_id: String,
        outcome: Outcome,
    },
    Stitch {
        project_id: Id,
        task_id: String,
        outcome: Outcome,
    },
}

/// A callback's result: the produced URL, or the service's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed { url: String },
    Failed { error: String },
}

impl Callback {
    pub fn kind(&self) -> WebhookKind {
        match self {
            Self::Video { .. } => WebhookKind::VideoComplete,
            Self::LastFrame { .. } => WebhookKind::LastFrameComplete,
            Self::Stitch { .. } => WebhookKind::StitchComplete,
        }
    }
    pub fn project_id(&self) -> &Id {
        match self {
            Self::Video { project_id, .. }
            | Self::LastFrame { project_id, .. }
            | Self::Stitch { project_id, .. } => project_id,
        }
    }
    pub fn scene_id(&self) -> Option<&Id> {
        match self {
            Self::Video { scene_id, .. } | Self::LastFrame { scene_id, .. } => Some(scene_id),
            Self::Stitch { .. } => None,
        }
    }
    pub fn task_id(&self) -> &str {
        match self {
            Self::Video { task_id, .. }
            | Self::LastFrame { task_id, .. }
            | Self::Stitch { task_id, .. } => task_id,
        }
    }
}

/// A payload that does not fit: names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPayload(pub String);

fn outcome(
    status: CallbackStatus,
    url_field: &str,
    url: Option<String>,
    error: Option<String>,
) -> Result<Outcome, InvalidPayload> {
    match status {
        CallbackStatus::Completed => {
            let url = url.ok_or_else(|| {
                InvalidPayload(format!(
                    "`{url_field}` is required when status is completed"
                ))
            })?;
            let url = parse_http_url(url_field, &url).map_err(InvalidPayload)?;
            Ok(Outcome::Completed { url })
        }
        CallbackStatus::Failed => Ok(Outcome::Failed {
            error: error
                .map(|e| e.chars().take(2000).collect())
                .unwrap_or_else(|| "the service reported a failure".to_owned()),
        }),
    }
}

fn id(field: &str, value: &str) -> Result<Id, InvalidPayload> {
    Id::parse(value).map_err(|e| InvalidPayload(format!("`{field}`: {e}")))
}

fn task_id(value: String) -> Result<String, InvalidPayload> {
    if value.is_empty() || value.len() > 255 {
        return Err(InvalidPayload(
            "`task_id` must be 1 to 255 characters".to_owned(),
        ));
    }
    Ok(value)
}

impl TryFrom<VideoCompletePayload> for Callback {
    type Error = InvalidPayload;
    fn try_from(p: VideoCompletePayload) -> Result<Self, Self::Error> {
        Ok(Self::Video {
            project_id: id("project_id", &p.project_id)?,
            scene_id: id("scene_id", &p.scene_id)?,
            outcome: outcome(p.status, "video_url", p.video_url, p.error)?,
            task_id: task_id(p.task_id)?,
        })
    }
}

impl TryFrom<LastFrameCompletePayload> for Callback {
    type Error = InvalidPayload;
    fn try_from(p: LastFrameCompletePayload) -> Result<Self, Self::Error> {
        Ok(Self::LastFrame {
            project_id: id("project_id", &p.project_id)?,
            scene_id: id("scene_id", &p.scene_id)?,
            outcome: outcome(p.status, "last_frame_url", p.last_frame_url, p.error)?,
            task_id: task_id(p.task_id)?,
        })
    }
}

impl TryFrom<StitchCompletePayload> for Callback {
    type Error = InvalidPayload;
    fn try_from(p: StitchCompletePayload) -> Result<Self, Self::Error> {
        Ok(Self::Stitch {
            project_id: id("project_id", &p.project_id)?,
            outcome: outcome(p.status, "final_video_url", p.final_video_url, p.error)?,
            task_id: task_id(p.task_id)?,
        })
    }
}

/// Parses and validates a raw body for `kind`.
pub fn parse_callback(kind: WebhookKind, body: &[u8]) -> Result<Callback, InvalidPayload> {
    fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, InvalidPayload> {
        serde_json::from_slice(body).map_err(|e| InvalidPayload(describe_json_error(&e)))
    }
    match kind {
        WebhookKind::VideoComplete => json::<VideoCompletePayload>(body)?.try_into(),
        WebhookKind::LastFrameComplete => json::<LastFrameCompletePayload>(body)?.try_into(),
        WebhookKind::StitchComplete => json::<StitchCompletePayload>(body)?.try_into(),
    }
}

/// serde_json's message names the missing or mistyped field; drop the position noise.
fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text);
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("malformed JSON: {text}")
        }
        _ => format!("invalid payload: {text}"),
    }
}

/// The idempotency key of a delivery (unique per endpoint): the Standard Webhooks `webhook-id`
/// when present, else the callback's task id, which every payload must carry (one task calls
/// back once per endpoint).
pub fn delivery_key(webhook_id: Option<&str>, callback: &Callback) -> String {
    match webhook_id {
        Some(id) if !id.is_empty() => format!("id:{}", super::ids::truncate_chars(id, 200)),
        _ => format!("task:{}", callback.task_id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"task_id":"test_123","status":"completed","scene_id":"scene_001","project_id":"proj_test","video_url":"https://example.com/test.mp4","timestamp":"2025-10-04T10:30:00.000Z"}"#;

    #[test]
    fn parses_the_seed_payload() {
        let cb = parse_callback(WebhookKind::VideoComplete, SEED.as_bytes()).unwrap();
        assert_eq!(cb.project_id().as_str(), "proj_test");
        assert_eq!(cb.scene_id().unwrap().as_str(), "scene_001");
        assert_eq!(delivery_key(None, &cb), "task:test_123");
        assert_eq!(delivery_key(Some("msg_1"), &cb), "id:msg_1");
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_named() {
        let extra = SEED.replace("\"task_id\"", "\"extra\":{\"a\":1},\"task_id\"");
        assert!(parse_callback(WebhookKind::VideoComplete, extra.as_bytes()).is_ok());
        let missing = r#"{"status":"completed","scene_id":"s","project_id":"p","video_url":"https://e.com/x"}"#;
        let err = parse_callback(WebhookKind::VideoComplete, missing.as_bytes()).unwrap_err();
        assert!(err.0.contains("task_id"), "{}", err.0);
        let wrong_type = SEED.replace("\"test_123\"", "123");
        let err = parse_callback(WebhookKind::VideoComplete, wrong_type.as_bytes()).unwrap_err();
        assert!(err.0.contains("invalid type"), "{}", err.0);
        let err = parse_callback(WebhookKind::VideoComplete, b"{nope").unwrap_err();
        assert!(err.0.starts_with("malformed JSON"), "{}", err.0);
    }

    #[test]
    fn completed_needs_an_http_url_and_failed_does_not() {
        let ftp = SEED.replace("https://example.com/test.mp4", "ftp://example.com/x");
        let err = parse_callback(WebhookKind::VideoComplete, ftp.as_bytes()).unwrap_err();
        assert!(err.0.contains("video_url"));
        let failed = r#"{"task_id":"t","status":"failed","project_id":"p","error":"boom"}"#;
        let cb = parse_callback(WebhookKind::StitchComplete, failed.as_bytes()).unwrap();
        assert!(matches!(
            cb,
            Callback::Stitch {
                outcome: Outcome::Failed { .. },
                ..
            }
        ));
        let bad_status = SEED.replace("\"completed\"", "\"done\"");
        assert!(parse_callback(WebhookKind::VideoComplete, bad_status.as_bytes()).is_err());
    }
}
