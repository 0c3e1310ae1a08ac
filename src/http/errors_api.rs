//! `/api/v1/errors`: list, count and dismiss entries of the global error store.

use axum::{
    Extension, Json, Router,
    extract::{Query, State},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AppJson, auth::Operator};
use crate::{
    app::AppState,
    error::{AppError, AppResult},
    reporter::now_ms,
    store::{DismissOutcome, ErrorEntry, ErrorType, ListQuery, Severity, StoreError},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/errors", get(list))
        .route("/errors/stats", get(stats))
        .route("/errors/dismiss", post(dismiss))
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "error store unavailable");
        AppError::unavailable("error store unavailable, retry later")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    severity: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    include_dismissed: Option<bool>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// An entry as the API shows it: camelCase, times in RFC 3339.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorOut {
    id: String,
    severity: Severity,
    #[serde(rename = "type")]
    kind: ErrorType,
    message: String,
    details: Option<Value>,
    source: Option<String>,
    created_at: String,
    last_seen_at: String,
    count: u64,
    dismissible: bool,
    dismissed: bool,
    dismissed_at: Option<String>,
    dismissed_by: Option<String>,
    dismiss_reason: Option<String>,
    auto_dismiss_at: Option<String>,
    reopened_count: u64,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl From<ErrorEntry> for ErrorOut {
    fn from(e: ErrorEntry) -> Self {
        Self {
            id: e.id,
            severity: e.severity,
            kind: e.kind,
            message: e.message,
            details: e.details,
            source: e.source,
            created_at: rfc3339(e.created_at),
            last_seen_at: rfc3339(e.last_seen_at),
            count: e.count,
            dismissible: e.dismissible,
            dismissed: e.dismissed,
            dismissed_at: e.dismissed_at.map(rfc3339),
            dismissed_by: e.dismissed_by,
            dismiss_reason: e.dismiss_reason,
            auto_dismiss_at: e.auto_dismiss_at.map(rfc3339),
            reopened_count: e.reopened_count,
        }
    }
}

async fn list(
    State(app): State<AppState>,
    Query(params): Query<ListParams>,
) -> AppResult<Json<Value>> {
    let severity = params
        .severity
        .as_deref()
        .map(|s| {
            Severity::parse(s).ok_or_else(|| {
                AppError::bad_request("invalid_severity", format!("unknown severity `{s}`"))
            })
        })
        .transpose()?;
    let kind = params
        .kind
        .as_deref()
        .map(|t| {
            ErrorType::parse(t)
                .ok_or_else(|| AppError::bad_request("invalid_type", format!("unknown type `{t}`")))
        })
        .transpose()?;
    let query = ListQuery {
        severity,
        kind,
        include_dismissed: params.include_dismissed.unwrap_or(false),
        limit: params.limit.unwrap_or(50).clamp(1, 500),
        cursor: params.cursor,
    };
    let page = app.reporter.store().list(&query, now_ms()).await?;
    let errors: Vec<ErrorOut> = page.errors.into_iter().map(ErrorOut::from).collect();
    Ok(Json(
        json!({"errors": errors, "nextCursor": page.next_cursor}),
    ))
}

async fn stats(State(app): State<AppState>) -> AppResult<Json<Value>> {
    let stats = app.reporter.store().stats(now_ms()).await?;
    Ok(Json(serde_json::to_value(stats).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DismissRequest {
    error_id: Option<String>,
    all: Option<bool>,
    reason: Option<String>,
}

async fn dismiss(
    State(app): State<AppState>,
    Extension(operator): Extension<Operator>,
    AppJson(request): AppJson<DismissRequest>,
) -> AppResult<Json<Value>> {
    let reason = request.reason.as_deref().map(|r| &r[..r.len().min(500)]);
    let store = app.reporter.store();
    let ids = match (request.error_id, request.all) {
        (Some(id), None | Some(false)) => {
            match store.dismiss(&id, &operator.name, reason, now_ms()).await? {
                DismissOutcome::Dismissed => vec![id],
                DismissOutcome::NotFound => {
                    return Err(AppError::not_found(
                        "error_not_found",
                        format!("no error `{id}`"),
                    ));
                }
                DismissOutcome::NotDismissible => {
                    return Err(AppError::conflict(
                        "not_dismissible",
                        "critical errors cannot be dismissed",
                    ));
                }
            }
        }
        (None, Some(true)) => store.dismiss_all(&operator.name, reason, now_ms()).await?,
        _ => {
            return Err(AppError::bad_request(
                "invalid_body",
                "send exactly one of `errorId` or `\"all\": true`",
            ));
        }
    };
    Ok(Json(json!({"count": ids.len(), "dismissed": ids})))
}
