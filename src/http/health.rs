//! Liveness, readiness and the Prometheus scrape.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{app::AppState, db, reporter::now_ms, store::redis as redis_store};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Liveness: answers without touching any dependency.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "`{\"status\":\"ok\"}`")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

const READY_TIMEOUT: Duration = Duration::from_millis(1500);

/// 200 when the database answers with every migration applied and Redis (if used) answers,
/// each within a timeout; 503 naming the failing component otherwise.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready"),
        (status = 503, description = "not ready; `components` names the failing one")))]
async fn readyz(State(app): State<AppState>) -> Response {
    let database = tokio::time::timeout(READY_TIMEOUT, async {
        db::ping(&app.db).await?;
        db::migrations_applied(&app.db).await
    })
    .await;
    let database = match database {
        Ok(Ok(true)) => "ok",
        Ok(Ok(false)) => "migrations pending",
        Ok(Err(_)) => "unreachable",
        Err(_) => "timed out",
    };
    let redis = match &app.redis {
        None => "not used",
        Some(client) => {
            match tokio::time::timeout(READY_TIMEOUT, redis_store::ping(client)).await {
                Ok(Ok(())) => "ok",
                Ok(Err(_)) => "unreachable",
                Err(_) => "timed out",
            }
        }
    };
    let ready = database == "ok" && matches!(redis, "ok" | "not used");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not ready" },
            "components": {"database": database, "redis": redis},
        })),
    )
        .into_response()
}

/// Prometheus text format. Gauges read from the database and the error store are refreshed
/// on each scrape.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus exposition", content_type = "text/plain")))]
async fn metrics(State(app): State<AppState>) -> Response {
    refresh_gauges(&app).await;
    crate::telemetry::record_dropped_log_lines();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn refresh_gauges(app: &AppState) {
    use crate::{
        outbox::{JobStatus, Service},
        store::{ErrorType, Severity},
    };
    if let Ok(Ok(stats)) = tokio::time::timeout(READY_TIMEOUT, db::outbox::stats(&app.db)).await {
        for service in Service::ALL {
            for status in JobStatus::NOT_DONE.map(JobStatus::as_str) {
                let n = stats
                    .counts
                    .iter()
                    .find(|(s, st, _)| s == service.as_str() && st == status)
                    .map(|c| c.2)
                    .unwrap_or(0);
                metrics::gauge!("scenehook_outbox_jobs", "service" => service.as_str(), "status" => status)
                    .set(n as f64);
            }
        }
        metrics::gauge!("scenehook_outbox_oldest_pending_seconds").set(stats.oldest_pending_secs);
    }
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    if let Ok(counts) = app.project_counts.refresh(&app.db, deadline).await {
        for (status, n) in counts {
            metrics::gauge!("scenehook_projects", "status" => status.as_str()).set(n as f64);
        }
    }
    if let Ok(Ok(stats)) =
        tokio::time::timeout(READY_TIMEOUT, app.reporter.store().stats(now_ms())).await
    {
        for severity in Severity::ALL {
            for kind in ErrorType::ALL {
                let n = stats
                    .by_severity_and_type
                    .get(&(severity.as_str().to_owned(), kind.as_str().to_owned()))
                    .copied()
                    .unwrap_or(0);
                metrics::gauge!("scenehook_errors_active",
                    "severity" => severity.as_str(), "type" => kind.as_str())
                .set(n as f64);
            }
        }
    }
    for service in Service::ALL {
        metrics::gauge!("scenehook_circuit_breaker_state", "service" => service.as_str())
            .set(app.outbox.breaker_state(service) as u8 as f64);
    }
}
