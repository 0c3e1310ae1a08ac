//! `/api/v1/outbox` (dead letters and replay) and `/api/v1/services` (breaker states).

use axum::{
    Json,
    extract::{Path, State},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppJson, AppQuery, ErrorBody, parse_word};
use crate::{
    app::AppState,
    db,
    error::{AppError, AppResult},
    outbox::{JobStatus, Service},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(replay_all))
        .routes(routes!(replay_one))
        .routes(routes!(services))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// `pending|in_flight|done|dead`
    status: Option<String>,
    /// `video|last_frame|stitch|notification`
    service: Option<String>,
    /// 1 to 1000, default 100.
    limit: Option<u64>,
}

/// Outbox jobs, the latest first by the time that goes with their status: when due (pending),
/// when the lease ends (in flight), when done or dead.
#[derive(Serialize, ToSchema)]
struct JobList {
    #[schema(value_type = Vec<Object>)]
    jobs: Vec<Value>,
}

#[derive(Serialize, ToSchema)]
struct Replayed {
    replayed: u64,
}

#[derive(Serialize, ToSchema)]
struct ServiceList {
    #[schema(value_type = Vec<Object>)]
    services: Vec<Value>,
}

/// Lists jobs, e.g. the dead letters with `?status=dead`.
#[utoipa::path(get, path = "/outbox", tag = "outbox", params(ListParams),
    security(("operator_key" = [])),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list(
    State(app): State<AppState>,
    AppQuery(params): AppQuery<ListParams>,
) -> AppResult<Json<JobList>> {
    let status = parse_word(params.status.as_deref(), JobStatus::parse, "invalid_status")?;
    let service = parse_word(params.service.as_deref(), Service::parse, "invalid_service")?;
    let jobs = db::outbox::list(
        &app.db,
        status,
        service,
        params.limit.unwrap_or(100).clamp(1, 1000),
    )
    .await?;
    let jobs: Vec<Value> = jobs
        .into_iter()
        .map(|j| {
            json!({
                "id": j.id, "kind": j.kind, "service": j.service, "status": j.status,
                "attempts": j.attempts, "lastError": j.last_error, "payload": j.payload,
                "nextAttemptAt": j.next_attempt_at.to_rfc3339(), "createdAt": j.created_at.to_rfc3339(),
                "updatedAt": j.updated_at.to_rfc3339(),
            })
        })
        .collect();
    Ok(Json(JobList { jobs }))
}

/// Re-queues one dead job with a fresh set of attempts.
#[utoipa::path(post, path = "/outbox/{id}/replay", tag = "outbox", params(("id" = String, Path)),
    security(("operator_key" = [])),
    responses((status = 200, body = Replayed), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn replay_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Json<Replayed>> {
    let job = db::outbox::find(&app.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found("job_not_found", format!("no outbox job `{id}`")))?;
    if job.status != JobStatus::Dead.as_str() {
        return Err(AppError::conflict(
            "not_dead",
            format!("job `{id}` is {}, not dead", job.status),
        ));
    }
    let replayed = db::outbox::replay(&app.db, Some(&id), None).await?;
    if let Some(service) = Service::parse(&job.service) {
        app.outbox.wake(service);
    }
    Ok(Json(Replayed { replayed }))
}

/// `{"all": true}`, optionally limited to one service.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayAll {
    all: bool,
    service: Option<String>,
}

/// Re-queues every dead job (of one service, if given).
#[utoipa::path(post, path = "/outbox/replay", tag = "outbox", request_body = ReplayAll,
    security(("operator_key" = [])),
    responses((status = 200, body = Replayed), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn replay_all(
    State(app): State<AppState>,
    AppJson(body): AppJson<ReplayAll>,
) -> AppResult<Json<Replayed>> {
    if !body.all {
        return Err(AppError::bad_request(
            "invalid_body",
            "send `\"all\": true` (and optionally `service`)",
        ));
    }
    let service = parse_word(body.service.as_deref(), Service::parse, "invalid_service")?;
    let replayed = db::outbox::replay(&app.db, None, service).await?;
    for s in service
        .map(|s| vec![s])
        .unwrap_or_else(|| Service::ALL.to_vec())
    {
        app.outbox.wake(s);
    }
    Ok(Json(Replayed { replayed }))
}

/// Circuit-breaker state of each downstream service on this instance.
#[utoipa::path(get, path = "/services", tag = "outbox", security(("operator_key" = [])),
    responses((status = 200, body = ServiceList), (status = 401, body = ErrorBody)))]
async fn services(State(app): State<AppState>) -> Json<ServiceList> {
    let services: Vec<Value> = Service::ALL
        .into_iter()
        .map(|s| json!({"service": s.as_str(), "breaker": app.outbox.breaker_state(s).as_str()}))
        .collect();
    Json(ServiceList { services })
}
