//! `/api/v1/outbox` (dead letters and replay) and `/api/v1/services` (breaker states).

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppJson;
use crate::{
    app::AppState,
    db,
    error::{AppError, AppResult},
    outbox::Service,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/outbox", get(list))
        .route("/outbox/replay", post(replay_all))
        .route("/outbox/{id}/replay", post(replay_one))
        .route("/services", get(services))
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
    service: Option<String>,
    limit: Option<u64>,
}

fn parse_service(service: Option<&str>) -> AppResult<Option<Service>> {
    service
        .map(|s| {
            Service::parse(s).ok_or_else(|| {
                AppError::bad_request("invalid_service", format!("unknown service `{s}`"))
            })
        })
        .transpose()
}

async fn list(
    State(app): State<AppState>,
    Query(params): Query<ListParams>,
) -> AppResult<Json<Value>> {
    if let Some(status) = params.status.as_deref()
        && !["pending", "in_flight", "done", "dead"].contains(&status)
    {
        return Err(AppError::bad_request(
            "invalid_status",
            format!("unknown status `{status}`"),
        ));
    }
    let service = parse_service(params.service.as_deref())?;
    let jobs = db::outbox::list(
        &app.db,
        params.status.as_deref(),
        service.map(Service::as_str),
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
    Ok(Json(json!({"jobs": jobs})))
}

async fn replay_one(State(app): State<AppState>, Path(id): Path<String>) -> AppResult<Json<Value>> {
    let job = db::outbox::find(&app.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found("job_not_found", format!("no outbox job `{id}`")))?;
    if job.status != "dead" {
        return Err(AppError::conflict(
            "not_dead",
            format!("job `{id}` is {}, not dead", job.status),
        ));
    }
    let replayed = db::outbox::replay(&app.db, Some(&id), None).await?;
    if let Some(service) = Service::parse(&job.service) {
        app.outbox.wake(service);
    }
    Ok(Json(json!({"replayed": replayed})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayAll {
    all: bool,
    service: Option<String>,
}

async fn replay_all(
    State(app): State<AppState>,
    AppJson(body): AppJson<ReplayAll>,
) -> AppResult<Json<Value>> {
    if !body.all {
        return Err(AppError::bad_request(
            "invalid_body",
            "send `\"all\": true` (and optionally `service`)",
        ));
    }
    let service = parse_service(body.service.as_deref())?;
    let replayed = db::outbox::replay(&app.db, None, service.map(Service::as_str)).await?;
    for s in service
        .map(|s| vec![s])
        .unwrap_or_else(|| Service::ALL.to_vec())
    {
        app.outbox.wake(s);
    }
    Ok(Json(json!({"replayed": replayed})))
}

async fn services(State(app): State<AppState>) -> Json<Value> {
    let services: Vec<Value> = Service::ALL
        .into_iter()
        .map(|s| json!({"service": s.as_str(), "breaker": app.outbox.breaker_state(s).as_str()}))
        .collect();
    Json(json!({"services": services}))
}
