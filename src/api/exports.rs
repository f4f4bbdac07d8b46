//! `/v1/exports`: scheduled audit exports (the data export page). Admins only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{ApiError, ApiState, Caller};
use crate::exports::{ExportStatus, ExportsError, NewExport};
use crate::store::ExportRun;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/exports", post(create).get(list))
        .route("/v1/exports/{name}/history", get(history))
        .route("/v1/exports/{name}/run", post(run))
}

impl From<ExportsError> for ApiError {
    fn from(e: ExportsError) -> Self {
        match e {
            ExportsError::NotFound(_) => ApiError {
                status: StatusCode::NOT_FOUND,
                code: "not_found",
                message: e.to_string(),
            },
            ExportsError::Service(e) => e.into(),
        }
    }
}

async fn create(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Json(new): Json<NewExport>,
) -> Result<(StatusCode, Json<ExportStatus>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.exports.create(&user, new).await?),
    ))
}

async fn list(
    State(state): State<ApiState>,
    Caller(user): Caller,
) -> Result<Json<Vec<ExportStatus>>, ApiError> {
    Ok(Json(state.exports.list(&user).await?))
}

async fn history(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<ExportRun>>, ApiError> {
    Ok(Json(state.exports.history(&user, &name).await?))
}

/// Runs the export now and answers with its history entry; a failed run is a result
/// (status `failed`, with its error), not an API error.
async fn run(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> Result<Json<ExportRun>, ApiError> {
    Ok(Json(state.exports.run_now(&user, &name).await?))
}
