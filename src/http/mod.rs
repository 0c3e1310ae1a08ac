//! HTTP: axum handlers only. Each parses, calls one domain or store operation, and maps the
//! result; the rules live elsewhere.

mod auth;
mod errors_api;
mod health;
mod outbox_api;
mod projects;
mod webhooks;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{ConnectInfo, FromRequest, MatchedPath, Request, State, rejection::JsonRejection},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Serialize, de::DeserializeOwned};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::TraceLayer,
};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;

use crate::{app::AppState, error::AppError};

pub use webhooks::{FloodGuard, WebhookMetrics, client_ip};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The error body every failure answers with.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_signature`.
    code: String,
    message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "scenehook", description = "Signed webhook gateway for a scene-by-scene AI video pipeline."),
    components(schemas(ErrorBody)),
    modifiers(&OperatorKeyScheme),
    tags(
        (name = "webhooks", description = "Signed callbacks from the video, last-frame and stitch services"),
        (name = "errors", description = "The global error store"),
        (name = "projects", description = "Projects and their generation"),
        (name = "outbox", description = "Outbound jobs, dead letters, circuit breakers"),
        (name = "health", description = "Liveness, readiness, metrics"),
    )
)]
struct ApiDoc;

struct OperatorKeyScheme;

impl Modify for OperatorKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "operator_key",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The whole HTTP surface of one instance. The OpenAPI document is built from the same
/// routes, so it cannot drift from what is served; it is at `/api/openapi.json`.
pub fn router(state: AppState) -> Router {
    let api = OpenApiRouter::new()
        .merge(errors_api::router())
        .merge(projects::router())
        .merge(outbox_api::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_operator,
        ));
    let (routes, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api)
        // Merged with full paths rather than nested: a nested router strips its prefix and
        // records the nested path on every request, the hottest route's too.
        .merge(webhooks::router(&state.flood_guard))
        .merge(health::router())
        .split_for_parts();
    let document = Arc::new(document);
    routes
        .route(
            "/api/openapi.json",
            get(move || async move { Json(document.as_ref().clone()) }),
        )
        .fallback(|| async { AppError::not_found("route_not_found", "no such route") })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        // One `layer` call: each wraps every route in a boxed service of its own, so separate
        // calls would cost a request one boxed future per call.
        .layer(
            ServiceBuilder::new()
                .map_request(drop_unfit_request_id)
                .layer(SetRequestIdLayer::new(
                    X_REQUEST_ID.clone(),
                    MakeRequestUuid,
                ))
                .layer(
                    // The fields are only computed when the span is enabled.
                    TraceLayer::new_for_http().make_span_with(|request: &Request| {
                        tracing::info_span!(
                            "request",
                            method = %request.method(),
                            path = %request.uri().path(),
                            request_id = request_id(request).unwrap_or_default(),
                        )
                    }),
                )
                .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
                .layer(CatchPanicLayer::custom(|_| {
                    AppError::Internal("handler panicked".into()).into_response()
                }))
                .layer(cors(&state.config.cors_allowed_origins))
                .layer(middleware::from_fn_with_state(
                    state.config.request_timeout(),
                    track_http,
                )),
        )
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-webhook-signature"),
            HeaderName::from_static("webhook-id"),
            HeaderName::from_static("webhook-timestamp"),
            HeaderName::from_static("webhook-signature"),
        ])
        .max_age(Duration::from_secs(600))
}

/// Counts requests by route template (never the raw path: ids would explode cardinality).
async fn track_http(
    State(time_limit): State<Duration>,
    request: Request,
    next: middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    // A client that sends its body slowly, or a handler stuck on a dependency, holds a task and
    // a connection: past the limit the request is answered 408 and its handler dropped. A
    // webhook dropped so may still have been committed by the writer: its redelivery is then
    // answered as a duplicate.
    let response = match tokio::time::timeout(time_limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => AppError::RequestTimeout(time_limit.as_secs()).into_response(),
    };
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    HttpSeries::record(route, method, response.status(), started.elapsed());
    response
}

/// One (route template, method, status)'s HTTP metrics: `scenehook_http_requests_total` and
/// `scenehook_http_request_duration_seconds` (whose series leaves the status out).
struct HttpSeries {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

impl HttpSeries {
    /// Records one request. Each key's handles are registered on its first request and kept,
    /// by route template and then by method and status: later requests record through one
    /// lookup here, which allocates nothing, instead of two in the registry, which hashes and
    /// compares every label. Route templates, methods and statuses are bounded sets.
    fn record(route: &str, method: &'static str, status: StatusCode, took: Duration) {
        type ByRoute = HashMap<String, HashMap<(&'static str, u16), HttpSeries>>;
        static SERIES: std::sync::OnceLock<parking_lot::RwLock<ByRoute>> =
            std::sync::OnceLock::new();
        let series = SERIES.get_or_init(Default::default);
        let key = (method, status.as_u16());
        let record = |series: &HttpSeries| {
            series.requests.increment(1);
            series.duration.record(took.as_secs_f64());
        };
        if let Some(known) = series.read().get(route).and_then(|by_key| by_key.get(&key)) {
            return record(known);
        }
        let mut series = series.write();
        let by_key = series.entry(route.to_owned()).or_default();
        record(by_key.entry(key).or_insert_with(|| Self {
            requests: metrics::counter!("scenehook_http_requests_total",
                "route" => route.to_owned(), "method" => method,
                "status" => status.as_str().to_owned()),
            duration: metrics::histogram!("scenehook_http_request_duration_seconds",
                "route" => route.to_owned(), "method" => method),
        }));
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// An incoming `X-Request-Id` is honoured only when it is 1 to 64 of `[A-Za-z0-9._-]`;
/// otherwise it is dropped and a fresh one is made. The id reaches logs, response headers and
/// stored outbox rows, so a client must not be able to put anything there.
fn drop_unfit_request_id(mut request: Request) -> Request {
    let fit = request.headers().get(&X_REQUEST_ID).is_none_or(|v| {
        let b = v.as_bytes();
        (1..=64).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
    });
    if !fit {
        request.headers_mut().remove(&X_REQUEST_ID);
    }
    request
}

/// `text`, if given, as one of the words `parse` knows, or a 400 `code` (`invalid_<what>`)
/// naming it.
pub(crate) fn parse_word<T>(
    text: Option<&str>,
    parse: fn(&str) -> Option<T>,
    code: &'static str,
) -> crate::error::AppResult<Option<T>> {
    let what = code.trim_start_matches("invalid_");
    text.map(|t| {
        parse(t).ok_or_else(|| AppError::bad_request(code, format!("unknown {what} `{t}`")))
    })
    .transpose()
}

/// The request id set by the request-id layer (or sent by the client).
pub fn request_id(request: &Request) -> Option<&str> {
    request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
}

/// The socket peer, when the server was started with connect info.
fn peer_addr(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}

/// `Json` whose rejections answer with our error body (400 naming the problem, 415).
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(AppError::UnsupportedMediaType),
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(AppError::bad_request("invalid_json", e.body_text()))
            }
            Err(JsonRejection::JsonDataError(e)) => {
                Err(AppError::bad_request("invalid_body", e.body_text()))
            }
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(AppError::PayloadTooLarge)
            }
            Err(e) => Err(AppError::bad_request("invalid_body", e.body_text())),
        }
    }
}

/// `Query` whose rejections answer 400 with our error body, naming the parameter.
pub struct AppQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|e| AppError::bad_request("invalid_query", e.body_text()))
    }
}

impl<T: serde::Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}
