//! `/api/v1/projects`: create, read, list, and start or resume generation.

use axum::{
    Json,
    extract::{Path, Request, State},
    http::StatusCode,
};
use entity::{project, scene};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppJson, AppQuery, ErrorBody, parse_word, request_id};
use crate::{
    app::AppState,
    db::pipeline::{self, NewProject, PipelineError},
    domain::{ProjectStatus, TransitionError, ids::Id},
    error::{AppError, AppResult},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(generate))
}

/// A new project; ids are optional (`[A-Za-z0-9_-]{1,64}`, generated when absent).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateProject {
    id: Option<String>,
    name: String,
    scenes: Vec<CreateScene>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateScene {
    id: Option<String>,
    prompt: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SceneOut {
    id: String,
    position: i32,
    prompt: String,
    status: String,
    video_task_id: Option<String>,
    video_url: Option<String>,
    first_frame_url: Option<String>,
    last_frame_url: Option<String>,
    attempts: i32,
    last_error: Option<String>,
    verified_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ProjectOut {
    id: String,
    name: String,
    status: String,
    final_video_url: Option<String>,
    last_error: Option<String>,
    created_at: String,
    updated_at: String,
    completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scenes: Option<Vec<SceneOut>>,
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn project_out(p: project::Model, scenes: Option<Vec<scene::Model>>) -> ProjectOut {
    ProjectOut {
        id: p.id,
        name: p.name,
        status: p.status,
        final_video_url: p.final_video_url,
        last_error: p.last_error,
        created_at: time(p.created_at),
        updated_at: time(p.updated_at),
        completed_at: p.completed_at.map(time),
        scenes: scenes.map(|scenes| {
            scenes
                .into_iter()
                .map(|s| SceneOut {
                    id: s.id,
                    position: s.position,
                    prompt: s.prompt,
                    status: s.status,
                    video_task_id: s.video_task_id,
                    video_url: s.video_url,
                    first_frame_url: s.first_frame_url,
                    last_frame_url: s.last_frame_url,
                    attempts: s.attempts,
                    last_error: s.last_error,
                    verified_at: s.verified_at.map(time),
                })
                .collect()
        }),
    }
}

fn parse_id(value: Option<String>, prefix: &str) -> AppResult<String> {
    match value {
        Some(id) => Id::parse(&id)
            .map(Id::into_string)
            .map_err(|e| AppError::bad_request("invalid_id", e)),
        None => Ok(Id::generate(prefix).into_string()),
    }
}

/// Creates a project with its scenes (positions 0..n-1).
#[utoipa::path(post, path = "/projects", tag = "projects", request_body = CreateProject,
    security(("operator_key" = [])),
    responses((status = 201, body = ProjectOut), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    AppJson(body): AppJson<CreateProject>,
) -> AppResult<(StatusCode, Json<ProjectOut>)> {
    if body.scenes.is_empty() {
        return Err(AppError::bad_request(
            "no_scenes",
            "a project needs at least one scene",
        ));
    }
    if body.scenes.len() > 500 {
        return Err(AppError::bad_request(
            "too_many_scenes",
            "a project has at most 500 scenes",
        ));
    }
    let name = body.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(AppError::bad_request(
            "invalid_name",
            "`name` must be 1 to 200 characters",
        ));
    }
    let mut scenes = Vec::with_capacity(body.scenes.len());
    for scene in body.scenes {
        if scene.prompt.trim().is_empty() || scene.prompt.len() > 10_000 {
            return Err(AppError::bad_request(
                "invalid_prompt",
                "each `prompt` must be 1 to 10000 characters",
            ));
        }
        scenes.push((parse_id(scene.id, "scene")?, scene.prompt));
    }
    let mut seen = std::collections::HashSet::new();
    if !scenes.iter().all(|(id, _)| seen.insert(id.clone())) {
        return Err(AppError::bad_request(
            "duplicate_scene_id",
            "scene ids must be distinct",
        ));
    }
    let new = NewProject {
        id: parse_id(body.id, "proj")?,
        name: name.to_owned(),
        scenes,
    };
    match pipeline::create_project(&app.db, new).await {
        Ok((project, scenes)) => Ok((
            StatusCode::CREATED,
            Json(project_out(project, Some(scenes))),
        )),
        Err(PipelineError::IdTaken) => Err(AppError::conflict(
            "id_taken",
            "a project or scene with that id exists",
        )),
        Err(PipelineError::Db(e)) => Err(e.into()),
        Err(e) => Err(AppError::Internal(e.to_string())),
    }
}

/// A project with its scenes.
#[utoipa::path(get, path = "/projects/{id}", tag = "projects", params(("id" = String, Path)),
    security(("operator_key" = [])),
    responses((status = 200, body = ProjectOut), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn show(State(app): State<AppState>, Path(id): Path<String>) -> AppResult<Json<ProjectOut>> {
    let (project, scenes) = pipeline::find_project(&app.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found("project_not_found", format!("no project `{id}`")))?;
    Ok(Json(project_out(project, Some(scenes))))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// `draft|generating|stitching|completed|failed`
    status: Option<String>,
    /// 1 to 1000, default 100.
    limit: Option<u64>,
}

#[derive(Serialize, ToSchema)]
struct ProjectList {
    projects: Vec<ProjectOut>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct GenerateOut {
    ok: bool,
    project_id: String,
    queued_jobs: usize,
}

/// Projects, newest first, without their scenes.
#[utoipa::path(get, path = "/projects", tag = "projects", params(ListParams),
    security(("operator_key" = [])),
    responses((status = 200, body = ProjectList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list(
    State(app): State<AppState>,
    AppQuery(params): AppQuery<ListParams>,
) -> AppResult<Json<ProjectList>> {
    let status = parse_word(
        params.status.as_deref(),
        ProjectStatus::parse,
        "invalid_status",
    )?;
    let projects =
        pipeline::list_projects(&app.db, status, params.limit.unwrap_or(100).clamp(1, 1000))
            .await?;
    Ok(Json(ProjectList {
        projects: projects.into_iter().map(|p| project_out(p, None)).collect(),
    }))
}

/// Starts generation, or resumes a failed project: queues the first scene not yet verified
/// (or stitching when all are). Takes no body.
#[utoipa::path(post, path = "/projects/{id}/generate", tag = "projects",
    params(("id" = String, Path)), security(("operator_key" = [])),
    responses((status = 202, body = GenerateOut), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn generate(
    State(app): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> AppResult<(StatusCode, Json<GenerateOut>)> {
    let ctx = app.job_context(request_id(&request).map(str::to_owned));
    match pipeline::generate(&app.db, &id, &ctx).await {
        Ok(effects) => {
            app.wake_outbox(&effects.jobs);
            Ok((
                StatusCode::ACCEPTED,
                Json(GenerateOut {
                    ok: true,
                    queued_jobs: effects.jobs.len(),
                    project_id: id,
                }),
            ))
        }
        Err(PipelineError::ProjectNotFound) => Err(AppError::not_found(
            "project_not_found",
            format!("no project `{id}`"),
        )),
        Err(PipelineError::Transition(TransitionError::Conflict(message))) => {
            Err(AppError::conflict("already_running", message))
        }
        Err(PipelineError::Db(e)) => Err(e.into()),
        Err(e) => Err(AppError::Internal(e.to_string())),
    }
}
