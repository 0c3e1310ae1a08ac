//! `POST /api/webhooks/{video-complete,last-frame-complete,stitch-complete}` and their `GET`
//! health checks. Order of checks: rate limit (unauthenticated floods count), content type,
//! body size, signature over the raw bytes, payload, then one database transaction. The
//! limiter's call runs beside the rest (see [`Admission`]), but its decision comes first:
//! a refused request is answered 429 whatever else it would have been, and leaves no trace.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json,
    body::to_bytes,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use governor::middleware::NoOpMiddleware;
use ipnet::IpNet;
use serde::Serialize;
use serde_json::json;
use tower_governor::{
    GovernorLayer,
    governor::{GovernorConfig, GovernorConfigBuilder},
    key_extractor::KeyExtractor,
};
use tracing::Instrument;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ErrorBody, peer_addr, request_id};
use crate::{
    app::AppState,
    config::RateLimitConfig,
    db::{
        ingest::{Admission, Submission},
        pipeline::{IngestOutcome, PipelineError},
    },
    domain::{
        ReportLevel, TransitionError,
        webhook::{
            LastFrameCompletePayload, StitchCompletePayload, VideoCompletePayload, WebhookKind,
            delivery_key, parse_callback,
        },
    },
    error::AppError,
    signature::{
        HEX_SIGNATURE_HEADER, SignatureHeaders, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
        WEBHOOK_TIMESTAMP_HEADER,
    },
    store::{ErrorType, NewError, RateDecision, Severity},
};

pub fn router(flood_guard: &FloodGuard) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(video_complete_health, video_complete))
        .routes(routes!(last_frame_complete_health, last_frame_complete))
        .routes(routes!(stitch_complete_health, stitch_complete))
        .layer(
            GovernorLayer::new(flood_guard.0.clone()).error_handler(|_| {
                AppError::RateLimited {
                    retry_after_secs: 1,
                }
                .into_response()
            }),
        )
}

/// The per-peer flood guard in front of the webhook routes, checked before anything else. It
/// keeps a bucket for every peer address it has seen until [`FloodGuard::prune`] drops those
/// that have refilled; housekeeping does so every 2 s, or peers that rotate addresses (an
/// IPv6 prefix holds billions) would grow the gateway's memory without bound.
#[derive(Clone)]
pub struct FloodGuard(Arc<GovernorConfig<PeerIp, NoOpMiddleware>>);

impl FloodGuard {
    pub fn new(limits: &RateLimitConfig) -> Self {
        let per_second = limits.flood_guard_per_second.max(1);
        let config = GovernorConfigBuilder::default()
            .period(Duration::from_nanos(1_000_000_000 / per_second))
            .burst_size(limits.flood_guard_burst.max(1))
            .key_extractor(PeerIp)
            .finish()
            .expect("period and burst are positive");
        Self(Arc::new(config))
    }

    /// Forgets the peers whose bucket is full again (a new peer's is the same).
    pub fn prune(&self) {
        let limiter = self.0.limiter();
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// The flood guard's key: the socket peer (unspecified when the server runs without connect
/// info, as in-process tests do).
#[derive(Debug, Clone, Copy)]
struct PeerIp;

impl KeyExtractor for PeerIp {
    type Key = IpAddr;
    fn extract<T>(
        &self,
        req: &axum::http::Request<T>,
    ) -> Result<Self::Key, tower_governor::GovernorError> {
        Ok(req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
    }
}

/// A delivery was committed, or was a duplicate of one that was.
#[derive(Serialize, ToSchema)]
struct WebhookAck {
    ok: bool,
    duplicate: bool,
}

/// Responses every webhook endpoint documents.
macro_rules! webhook_endpoint {
    ($post:ident, $get:ident, $kind:expr, $path:literal, $payload:ty, $summary:literal) => {
        #[doc = $summary]
        #[utoipa::path(post, path = $path, tag = "webhooks", request_body = $payload,
            params(
                ("X-Webhook-Signature" = Option<String>, Header,
                    description = "hex HMAC-SHA256 of the raw body, or `sha256=<hex>`"),
                ("webhook-id" = Option<String>, Header, description = "Standard Webhooks id"),
                ("webhook-timestamp" = Option<String>, Header, description = "Standard Webhooks Unix time"),
                ("webhook-signature" = Option<String>, Header, description = "`v1,<base64>` …"),
            ),
            responses(
                (status = 200, body = WebhookAck, description = "committed (or a duplicate)"),
                (status = 400, body = ErrorBody, description = "`invalid_payload`, naming the field"),
                (status = 401, body = ErrorBody, description = "`invalid_signature`"),
                (status = 404, body = ErrorBody, description = "`project_not_found` or `scene_not_found`"),
                (status = 409, body = ErrorBody, description = "`stale_task` or `invalid_transition`"),
                (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
                (status = 429, body = ErrorBody, description = "rate limited; see `Retry-After`"),
                (status = 503, body = ErrorBody, description = "retry later; see `Retry-After`"),
            ))]
        async fn $post(state: State<AppState>, request: Request) -> Response {
            ingest(state, $kind, request).await
        }

        /// Health check of the endpoint.
        #[utoipa::path(get, path = $path, tag = "webhooks",
            responses((status = 200, description = "`{\"status\":\"ok\",\"endpoint\":…}`")))]
        async fn $get() -> Json<serde_json::Value> {
            health($kind).await
        }
    };
}

webhook_endpoint!(
    video_complete,
    video_complete_health,
    WebhookKind::VideoComplete,
    "/api/webhooks/video-complete",
    VideoCompletePayload,
    "The video service finished a scene's clip."
);
webhook_endpoint!(
    last_frame_complete,
    last_frame_complete_health,
    WebhookKind::LastFrameComplete,
    "/api/webhooks/last-frame-complete",
    LastFrameCompletePayload,
    "The last-frame service extracted a frame."
);
webhook_endpoint!(
    stitch_complete,
    stitch_complete_health,
    WebhookKind::StitchComplete,
    "/api/webhooks/stitch-complete",
    StitchCompletePayload,
    "The stitch service joined the clips."
);

async fn health(kind: WebhookKind) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "endpoint": kind.as_str(),
        "method": "POST",
        "timestamp": chrono::Utc::now().to_rfc3339(),
    }))
}

/// The client address used for rate limits: the socket peer, unless the peer is a trusted
/// proxy, in which case the rightmost `X-Forwarded-For` hop that is not itself trusted.
pub fn client_ip(peer: Option<SocketAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer
        .map(|p| p.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

async fn ingest(State(app): State<AppState>, kind: WebhookKind, request: Request) -> Response {
    let started = Instant::now();
    let ip = client_ip(
        peer_addr(&request),
        request.headers(),
        &app.config.trusted_proxies,
    );
    // The delivery is read, verified and submitted while the limiter decides, so that the
    // limiter's round trip overlaps the database's ([`Admission`]). Until the limiter has let
    // it in, nothing of it is applied, reported or answered; once it refuses, the rest of the
    // work is dropped.
    let (decide, admission) = Admission::pending();
    let mut limit = pin!(async {
        let checked = app.limiter.check(kind, ip).await;
        decide.decide(matches!(checked, Ok(decision) if decision.allowed));
        checked
    });
    let mut work = pin!(process(&app, kind, request, &admission));
    let mut processed = None;
    let checked = loop {
        tokio::select! {
            biased;
            checked = &mut limit => break checked,
            result = &mut work, if processed.is_none() => processed = Some(result),
        }
    };
    let (outcome, mut response, decision) = match checked {
        Err(_) => (
            Outcome::Unavailable,
            AppError::unavailable("rate limiter unavailable, retry later").into_response(),
            None,
        ),
        Ok(decision) if !decision.allowed => (
            Outcome::RateLimited,
            AppError::RateLimited {
                retry_after_secs: decision.reset_ms.div_ceil(1000).max(1),
            }
            .into_response(),
            Some(decision),
        ),
        Ok(decision) => {
            let processed = match processed {
                Some(result) => result,
                None => work.await,
            };
            let (outcome, response) = match processed {
                Ok(Accepted { duplicate }) => (
                    if duplicate {
                        Outcome::Duplicate
                    } else {
                        Outcome::Accepted
                    },
                    Json(json!({"ok": true, "duplicate": duplicate})).into_response(),
                ),
                Err(e) => (Outcome::of(&e), e.into_response()),
            };
            (outcome, response, Some(decision))
        }
    };
    if let Some(decision) = decision {
        rate_limit_headers(response.headers_mut(), &decision, app.limiter.window());
    }
    app.webhook_metrics.record(kind, outcome, started.elapsed());
    response
}

/// What became of a webhook: the `outcome` label of `scenehook_webhooks_total`.
#[derive(Clone, Copy)]
enum Outcome {
    Accepted,
    Duplicate,
    RateLimited,
    Unavailable,
    InvalidSignature,
    NotFound,
    Conflict,
    BadRequest,
    Error,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::RateLimited,
        Outcome::Unavailable,
        Outcome::InvalidSignature,
        Outcome::NotFound,
        Outcome::Conflict,
        Outcome::BadRequest,
        Outcome::Error,
    ];

    fn of(e: &AppError) -> Self {
        match e.status() {
            StatusCode::UNAUTHORIZED => Self::InvalidSignature,
            StatusCode::TOO_MANY_REQUESTS => Self::RateLimited,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::CONFLICT => Self::Conflict,
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable,
            s if s.is_client_error() => Self::BadRequest,
            _ => Self::Error,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::InvalidSignature => "invalid_signature",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::BadRequest => "bad_request",
            Self::Error => "error",
        }
    }
}

/// The webhook endpoints' metric handles, registered once at start: every outcome is exported
/// from zero, so a dashboard or an alert sees its series before the first such webhook, and a
/// request records without looking its labels up in the registry.
pub struct WebhookMetrics {
    /// Per endpoint, per outcome (each indexed by its enum's discriminant).
    outcomes: [[metrics::Counter; Outcome::ALL.len()]; WebhookKind::ALL.len()],
    durations: [metrics::Histogram; WebhookKind::ALL.len()],
}

impl WebhookMetrics {
    /// Registers every series with the process's recorder (installed before this is called).
    pub fn register() -> Self {
        Self {
            outcomes: WebhookKind::ALL.map(|kind| {
                Outcome::ALL.map(|outcome| {
                    metrics::counter!("scenehook_webhooks_total",
                        "endpoint" => kind.as_str(), "outcome" => outcome.label())
                })
            }),
            durations: WebhookKind::ALL.map(|kind| {
                metrics::histogram!("scenehook_webhook_duration_seconds", "endpoint" => kind.as_str())
            }),
        }
    }

    fn record(&self, kind: WebhookKind, outcome: Outcome, took: Duration) {
        self.outcomes[kind as usize][outcome as usize].increment(1);
        self.durations[kind as usize].record(took.as_secs_f64());
    }
}

struct Accepted {
    duplicate: bool,
}

async fn process(
    app: &AppState,
    kind: WebhookKind,
    request: Request,
    admission: &Admission,
) -> Result<Accepted, AppError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    if !is_json {
        return Err(AppError::UnsupportedMediaType);
    }
    let request_id = request_id(&request).map(str::to_owned);
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, app.config.max_body_bytes)
        .await
        .map_err(|_| AppError::PayloadTooLarge)?;
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let signature = SignatureHeaders {
        hex_signature: header(HEX_SIGNATURE_HEADER),
        webhook_id: header(WEBHOOK_ID_HEADER),
        webhook_timestamp: header(WEBHOOK_TIMESTAMP_HEADER),
        webhook_signature: header(WEBHOOK_SIGNATURE_HEADER),
    };
    if let Err(e) =
        app.credentials()
            .verifier(kind)
            .verify(&signature, &body, chrono::Utc::now().timestamp())
    {
        // Logged and reported only for a request the limiter let in: a refused one is answered
        // 429, as if it had never been read.
        if admission.admitted().await {
            tracing::warn!(endpoint = kind.as_str(), reason = %e, "webhook signature rejected");
            app.reporter.report_throttled(
                &format!("invalid_signature:{}", kind.as_str()),
                Duration::from_secs(1),
                NewError::warning(
                    ErrorType::Webhook,
                    format!("Invalid webhook signature: {e}"),
                )
                .with_source(kind.as_str()),
            );
        }
        return Err(AppError::InvalidSignature(format!(
            "invalid signature: {e}"
        )));
    }
    let callback =
        parse_callback(kind, &body).map_err(|e| AppError::bad_request("invalid_payload", e.0))?;
    let key = delivery_key(signature.webhook_id, &callback);
    let span = tracing::info_span!(
        "webhook",
        endpoint = kind.as_str(),
        project_id = %callback.project_id(),
        scene_id = callback.scene_id().map(|s| s.as_str()).unwrap_or(""),
        task_id = callback.task_id(),
        delivery_key = %key,
    );
    let result = app
        .ingestor
        .submit(Submission {
            kind: kind.as_str(),
            key,
            callback: callback.clone(),
            jobs: app.job_context(request_id),
            admission: admission.clone(),
        })
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    // Built only for a report: most webhooks make none.
    let source = || {
        callback
            .scene_id()
            .map(|s| format!("{}:{}", callback.project_id(), s))
            .unwrap_or_else(|| callback.project_id().to_string())
    };
    match result {
        Ok(IngestOutcome::Duplicate) => {
            tracing::info!("duplicate delivery, nothing done again");
            Ok(Accepted { duplicate: true })
        }
        Ok(IngestOutcome::Accepted(effects)) => {
            tracing::info!(jobs = effects.jobs.len(), "webhook committed");
            app.wake_outbox(&effects.jobs);
            for report in effects.reports {
                let kind = ErrorType::parse(report.kind).unwrap_or(ErrorType::Processing);
                let entry = match report.level {
                    ReportLevel::Success => NewError::success(report.message),
                    ReportLevel::Warning => NewError::warning(kind, report.message),
                    ReportLevel::Error => NewError::new(Severity::Error, kind, report.message),
                };
                app.reporter.report(entry.with_source(source()));
            }
            Ok(Accepted { duplicate: false })
        }
        Err(PipelineError::ProjectNotFound) => {
            let message = format!("Webhook for unknown project {}", callback.project_id());
            app.reporter.report(
                NewError::new(Severity::Error, ErrorType::Webhook, &message)
                    .with_source(kind.as_str()),
            );
            Err(AppError::not_found("project_not_found", message))
        }
        Err(PipelineError::Transition(TransitionError::SceneNotFound)) => {
            let message = format!(
                "Webhook for unknown scene {} of project {}",
                callback.scene_id().map(|s| s.as_str()).unwrap_or(""),
                callback.project_id()
            );
            app.reporter.report(
                NewError::new(Severity::Error, ErrorType::Webhook, &message)
                    .with_source(kind.as_str()),
            );
            Err(AppError::not_found("scene_not_found", message))
        }
        Err(PipelineError::Transition(TransitionError::StaleTask { .. })) => {
            let message = format!(
                "Late {} callback for task {} ignored: the scene has moved on to another task",
                kind.as_str(),
                callback.task_id()
            );
            app.reporter
                .report(NewError::warning(ErrorType::Webhook, &message).with_source(source()));
            Err(AppError::conflict("stale_task", message))
        }
        Err(PipelineError::Transition(
            TransitionError::Invalid(message) | TransitionError::Conflict(message),
        )) => {
            app.reporter.report(
                NewError::warning(
                    ErrorType::Webhook,
                    format!("Rejected {}: {message}", kind.as_str()),
                )
                .with_source(source()),
            );
            Err(AppError::conflict("invalid_transition", message))
        }
        Err(PipelineError::IdTaken) => Err(AppError::Internal("unexpected id conflict".into())),
        // Never answered: the limiter's refusal is, and this request's work was dropped with it.
        Err(PipelineError::NotAdmitted) => Err(AppError::unavailable("not admitted")),
        Err(PipelineError::Db(e)) => Err(e.into()),
    }
}

/// `X-RateLimit-*` (the de-facto form) and the IETF draft's `RateLimit-Policy` / `RateLimit`.
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

fn rate_limit_headers(headers: &mut HeaderMap, d: &RateDecision, window: Duration) {
    let reset = d.reset_ms.div_ceil(1000);
    // Numbers need no validation as header values.
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(d.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(reset));
    let mut structured = |name: HeaderName, (first, a): (&str, u64), (second, b): (&str, u64)| {
        // `"webhooks";<first>=<a>;<second>=<b>`, numbers written without the formatter.
        let mut numbers = (itoa::Buffer::new(), itoa::Buffer::new());
        let (a, b) = (numbers.0.format(a), numbers.1.format(b));
        let mut value = String::with_capacity(20 + a.len() + b.len());
        for part in ["\"webhooks\";", first, "=", a, ";", second, "=", b] {
            value.push_str(part);
        }
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    };
    structured(
        RATELIMIT_POLICY,
        ("q", d.limit.into()),
        ("w", window.as_secs()),
    );
    structured(RATELIMIT, ("r", d.remaining.into()), ("t", reset));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_carry_the_decision() {
        let mut headers = HeaderMap::new();
        let decision = RateDecision {
            allowed: true,
            limit: 100,
            remaining: 99,
            reset_ms: 59_001,
        };
        rate_limit_headers(&mut headers, &decision, Duration::from_secs(60));
        let value = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(value("x-ratelimit-limit"), "100");
        assert_eq!(value("x-ratelimit-remaining"), "99");
        assert_eq!(value("x-ratelimit-reset"), "60");
        assert_eq!(value("ratelimit-policy"), "\"webhooks\";q=100;w=60");
        assert_eq!(value("ratelimit"), "\"webhooks\";r=99;t=60");
    }

    #[test]
    fn every_outcome_and_endpoint_has_its_own_metric_slot() {
        for (slot, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, slot, "{}", outcome.label());
        }
        for (slot, kind) in WebhookKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, slot, "{}", kind.as_str());
        }
    }

    #[test]
    fn the_flood_guard_forgets_peers_whose_bucket_refilled() {
        let limits = RateLimitConfig {
            flood_guard_per_second: 4,
            flood_guard_burst: 2,
            ..crate::config::Config::defaults().rate_limit
        };
        let guard = FloodGuard::new(&limits);
        let limiter = guard.0.limiter();
        for i in 0..100u8 {
            let _ = limiter.check_key(&IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)));
        }
        assert_eq!(limiter.len(), 100);
        // A token comes back every 250 ms, and a peer is forgotten once its bucket has been
        // full for as long: 500 ms after one request, 750 ms after two.
        std::thread::sleep(Duration::from_millis(700));
        let busy = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        for _ in 0..2 {
            let _ = limiter.check_key(&busy);
        }
        guard.prune();
        assert_eq!(
            limiter.len(),
            1,
            "only the peer whose bucket is not full stays"
        );
    }

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let h = headers("198.51.100.7, 10.9.9.9");
        assert_eq!(
            client_ip(Some(proxy), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A spoofed header from an untrusted peer changes nothing.
        assert_eq!(client_ip(Some(stranger), &h, &trusted), stranger.ip());
        // The client may prepend anything; the rightmost untrusted hop counts.
        let h = headers("1.1.1.1, 198.51.100.7");
        assert_eq!(
            client_ip(Some(proxy), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(Some(proxy), &HeaderMap::new(), &trusted),
            proxy.ip()
        );
    }
}
