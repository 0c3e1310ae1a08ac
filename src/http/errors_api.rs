//! `/api/v1/errors`: list, count and dismiss entries of the global error store.

use axum::{Extension, Json, extract::State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppJson, AppQuery, ErrorBody, auth::Operator};
use crate::{
    app::AppState,
    error::{AppError, AppResult},
    reporter::now_ms,
    store::{DismissOutcome, ErrorEntry, ErrorType, ListQuery, Severity, StoreError},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(stats))
        .routes(routes!(dismiss))
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "error store unavailable");
        AppError::unavailable("error store unavailable, retry later")
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// `critical|error|warning|info`
    severity: Option<String>,
    /// `system|webhook|generation|processing|automation|notification|validation|success`
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    include_dismissed: Option<bool>,
    /// 1 to 500, default 50.
    limit: Option<usize>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// An entry as the API shows it: camelCase, times in RFC 3339.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ErrorOut {
    id: String,
    #[schema(value_type = String, example = "error")]
    severity: Severity,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "generation")]
    kind: ErrorType,
    message: String,
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
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

/// A page of the error list.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ErrorList {
    errors: Vec<ErrorOut>,
    next_cursor: Option<String>,
}

/// Active and retained dismissed entries, with active counts by severity and type.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct StatsOut {
    total: u64,
    active: u64,
    dismissed: u64,
    by_severity: std::collections::BTreeMap<String, u64>,
    by_type: std::collections::BTreeMap<String, u64>,
}

/// What was dismissed.
#[derive(Serialize, ToSchema)]
struct DismissOut {
    dismissed: Vec<String>,
    count: usize,
}

/// Lists entries, newest first.
#[utoipa::path(get, path = "/errors", tag = "errors", params(ListParams),
    security(("operator_key" = [])),
    responses((status = 200, body = ErrorList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list(
    State(app): State<AppState>,
    AppQuery(params): AppQuery<ListParams>,
) -> AppResult<Json<ErrorList>> {
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
    Ok(Json(ErrorList {
        errors: page.errors.into_iter().map(ErrorOut::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Counts, read from counters kept by every change (no scan).
#[utoipa::path(get, path = "/errors/stats", tag = "errors", security(("operator_key" = [])),
    responses((status = 200, body = StatsOut), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn stats(State(app): State<AppState>) -> AppResult<Json<StatsOut>> {
    let s = app.reporter.store().stats(now_ms()).await?;
    Ok(Json(StatsOut {
        total: s.total,
        active: s.active,
        dismissed: s.dismissed,
        by_severity: s.by_severity,
        by_type: s.by_type,
    }))
}

/// Exactly one of `errorId` or `"all": true`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DismissRequest {
    error_id: Option<String>,
    all: Option<bool>,
    reason: Option<String>,
}

/// Dismisses one entry or every dismissible one; needs a read-write key.
#[utoipa::path(post, path = "/errors/dismiss", tag = "errors", request_body = DismissRequest,
    security(("operator_key" = [])),
    responses((status = 200, body = DismissOut), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn dismiss(
    State(app): State<AppState>,
    Extension(operator): Extension<Operator>,
    AppJson(request): AppJson<DismissRequest>,
) -> AppResult<Json<DismissOut>> {
    let reason = request
        .reason
        .as_deref()
        .map(|r| crate::domain::ids::truncate_chars(r, 500));
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
    Ok(Json(DismissOut {
        count: ids.len(),
        dismissed: ids,
    }))
}
