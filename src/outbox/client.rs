//! The outbound HTTP client: reqwest with reqwest-retry for transient failures inside one
//! attempt, and the classification of each answer for the outbox schedule and the breakers.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};

use crate::config::{OutboxConfig, Secret, ServiceConfig};

/// How one logical call (retries included) ended.
#[derive(Debug)]
pub enum CallResult {
    /// 2xx, with the body when it was JSON.
    Delivered(Option<serde_json::Value>),
    /// Worth another attempt later. `counts_against_service` is false for 429: the service is
    /// alive, only busy, so its breaker should not open.
    Transient {
        error: String,
        retry_after: Option<Duration>,
        counts_against_service: bool,
    },
    /// A 4xx other than 408/429: retrying cannot help.
    Permanent(String),
}

impl CallResult {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered(_) => "success",
            Self::Transient {
                counts_against_service: false,
                ..
            } => "throttled",
            Self::Transient { .. } => "transient_error",
            Self::Permanent(_) => "permanent_error",
        }
    }
}

/// The longest wait between two tries of one attempt (reqwest-retry's bound).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// The longest one attempt of a job can take: every try timed out, with the longest wait
/// before each retry. A job's lease must outlast it.
pub fn longest_attempt(config: &OutboxConfig) -> Duration {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    timeout.saturating_mul(config.inline_retries.saturating_add(1))
        + MAX_RETRY_DELAY.saturating_mul(config.inline_retries)
}

#[derive(Clone)]
pub struct OutboundClient {
    http: ClientWithMiddleware,
}

impl OutboundClient {
    pub fn new(config: &OutboxConfig) -> Self {
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("scenehook/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend initialises");
        let policy = ExponentialBackoff::builder()
            .retry_bounds(Duration::from_millis(100), MAX_RETRY_DELAY)
            .build_with_max_retries(config.inline_retries);
        Self {
            http: ClientBuilder::new(http)
                .with(RetryTransientMiddleware::new_with_policy(policy))
                .build(),
        }
    }

    /// POSTs `payload` to the service with `api_key` and the job id as idempotency key.
    pub async fn post(
        &self,
        service: &ServiceConfig,
        api_key: &Secret,
        idempotency_key: &str,
        request_id: Option<&str>,
        payload: &serde_json::Value,
    ) -> (CallResult, Duration) {
        let started = Instant::now();
        let mut request = self
            .http
            .post(service.endpoint())
            .bearer_auth(api_key.expose())
            .header("Idempotency-Key", idempotency_key)
            .json(payload);
        if let Some(id) = request_id {
            request = request.header("X-Request-Id", id);
        }
        let result = match request.send().await {
            Ok(response) => classify(response).await,
            Err(e) => CallResult::Transient {
                error: format!("request failed: {}", without_url(&e)),
                retry_after: None,
                counts_against_service: true,
            },
        };
        (result, started.elapsed())
    }
}

/// Error text without the URL (it may carry credentials in a userinfo part).
fn without_url(e: &reqwest_middleware::Error) -> String {
    match e {
        reqwest_middleware::Error::Reqwest(e) if e.is_timeout() => "timed out".to_owned(),
        reqwest_middleware::Error::Reqwest(e) if e.is_connect() => "connection failed".to_owned(),
        reqwest_middleware::Error::Reqwest(_) => "transport error".to_owned(),
        reqwest_middleware::Error::Middleware(e) => e.to_string(),
    }
}

async fn classify(response: reqwest::Response) -> CallResult {
    let status = response.status();
    if status.is_success() {
        let body = response.json::<serde_json::Value>().await.ok();
        return CallResult::Delivered(body);
    }
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let error = format!("service answered {status}");
    if status == StatusCode::TOO_MANY_REQUESTS {
        CallResult::Transient {
            error,
            retry_after,
            counts_against_service: false,
        }
    } else if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        CallResult::Transient {
            error,
            retry_after,
            counts_against_service: true,
        }
    } else {
        CallResult::Permanent(error)
    }
}
