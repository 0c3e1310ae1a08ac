//! Stand-ins for the external services (video, last-frame, stitch, notification) on loopback:
//! they accept the gateway's requests and call it back with correctly signed webhooks after a
//! delay, with optional failure injection. Used by `fake-services`, the `demo` command and the
//! end-to-end tests.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::signature::sign_hex;

/// The secrets the fakes sign callbacks with, and how long they "work".
#[derive(Clone)]
pub struct FakeConfig {
    pub video_secret: String,
    pub last_frame_secret: String,
    pub stitch_secret: String,
    pub delay: Duration,
}

impl FakeConfig {
    /// Signs with the current (first) secrets of a gateway config.
    pub fn for_gateway(config: &crate::config::Config, delay: Duration) -> Self {
        let first = |s: &[crate::config::Secret]| {
            s.first().map(|s| s.expose().to_owned()).unwrap_or_default()
        };
        Self {
            video_secret: first(&config.webhooks.video_secrets),
            last_frame_secret: first(&config.webhooks.last_frame_secrets),
            stitch_secret: first(&config.webhooks.stitch_secrets),
            delay,
        }
    }
}

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `video`, `last_frame`, `stitch` or `notification`.
    pub service: &'static str,
    pub body: Value,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    /// The status the fake answered with.
    pub status: u16,
}

/// How a fake service misbehaves, set per service while the fakes run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Answer every request with this status (e.g. 503) instead of working.
    pub fail_with: Option<u16>,
    /// Work, but call back with `status: "failed"`.
    pub report_failure: bool,
    /// Never answer (the gateway's request times out).
    pub hang: bool,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    behaviour: Mutex<HashMap<&'static str, Behaviour>>,
}

/// Running fakes: their address and what they received.
#[derive(Clone)]
pub struct FakeServices {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
}

struct FakeState {
    config: FakeConfig,
    shared: Shared,
    seq: AtomicU64,
    http: reqwest::Client,
}

impl FakeServices {
    /// Serves the fakes on `addr` (port 0 picks a free one) until the process ends.
    pub async fn start(config: FakeConfig, addr: SocketAddr) -> std::io::Result<Self> {
        crate::install_crypto_provider();
        let state = Arc::new(FakeState {
            config,
            shared: Shared::default(),
            seq: AtomicU64::new(1),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("the TLS backend initialises"),
        });
        let router = Router::new()
            .route("/tasks", post(|s, h, b| handle(s, "video", h, b)))
            .route("/extract", post(|s, h, b| handle(s, "last_frame", h, b)))
            .route("/stitch", post(|s, h, b| handle(s, "stitch", h, b)))
            .route("/notify", post(|s, h, b| handle(s, "notification", h, b)))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { addr, state })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_behaviour(&self, service: &'static str, behaviour: Behaviour) {
        self.state
            .shared
            .behaviour
            .lock()
            .insert(service, behaviour);
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state.shared.received.lock().clone()
    }

    /// The requests one service received, in arrival order, however it answered.
    pub fn received_by(&self, service: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.service == service)
            .collect()
    }

    /// Received requests of one service that were answered 2xx.
    pub fn accepted(&self, service: &str) -> Vec<Received> {
        self.received_by(service)
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}

async fn handle(
    State(state): State<Arc<FakeState>>,
    service: &'static str,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let behaviour = state
        .shared
        .behaviour
        .lock()
        .get(service)
        .copied()
        .unwrap_or_default();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = if behaviour.hang {
        0
    } else {
        behaviour.fail_with.unwrap_or(200)
    };
    state.shared.received.lock().push(Received {
        service,
        body: body.clone(),
        idempotency_key: header("idempotency-key"),
        authorization: header("authorization"),
        status,
    });
    if behaviour.hang {
        std::future::pending::<()>().await;
    }
    if let Some(code) = behaviour.fail_with {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (code, Json(json!({"error": "injected failure"}))).into_response();
    }
    let n = state.seq.fetch_add(1, Ordering::Relaxed);
    let task_id = format!("{service}_task_{n}");
    if service != "notification" {
        let state = state.clone();
        let task = task_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(state.config.delay).await;
            state
                .call_back(service, &task, &body, behaviour.report_failure)
                .await;
        });
    }
    Json(json!({"task_id": task_id, "status": "accepted"})).into_response()
}

impl FakeState {
    async fn call_back(&self, service: &str, task_id: &str, request: &Value, fail: bool) {
        let Some(callback_url) = request.get("callback_url").and_then(Value::as_str) else {
            return;
        };
        let field = |name: &str| request.get(name).cloned().unwrap_or(Value::Null);
        let status = if fail { "failed" } else { "completed" };
        let timestamp = chrono::Utc::now().to_rfc3339();
        let scene = request
            .get("scene_id")
            .and_then(Value::as_str)
            .unwrap_or("x");
        let (secret, mut payload) = match service {
            "video" => (
                &self.config.video_secret,
                json!({"task_id": task_id, "status": status, "scene_id": field("scene_id"),
                       "project_id": field("project_id"), "timestamp": timestamp,
                       "video_url": format!("https://cdn.fake.example/videos/{scene}_{task_id}.mp4")}),
            ),
            "last_frame" => (
                &self.config.last_frame_secret,
                json!({"task_id": task_id, "status": status, "scene_id": field("scene_id"),
                       "project_id": field("project_id"), "timestamp": timestamp,
                       "last_frame_url": format!("https://cdn.fake.example/frames/{scene}_{task_id}.png")}),
            ),
            _ => (
                &self.config.stitch_secret,
                json!({"task_id": task_id, "status": status, "project_id": field("project_id"),
                       "timestamp": timestamp,
                       "final_video_url": format!("https://cdn.fake.example/final/{task_id}.mp4")}),
            ),
        };
        if fail {
            payload["error"] = json!("injected failure");
        }
        let body = payload.to_string();
        // The gateway may be briefly unavailable; a real service retries, so do we.
        for attempt in 0..20u64 {
            let result = self
                .http
                .post(callback_url)
                .header("content-type", "application/json")
                .header("x-webhook-signature", sign_hex(secret, body.as_bytes()))
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(r)
                    if r.status().is_success()
                        || r.status().is_client_error()
                            && r.status() != StatusCode::TOO_MANY_REQUESTS =>
                {
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await,
            }
        }
    }
}
