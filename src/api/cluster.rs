//! `GET /v1/cluster`: the nodes sharing this node's state store, seen recently.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, ApiState, Caller};
use crate::cluster::nodes::{self, Local};
use crate::cluster::NodeInfo;
use crate::service::ServiceError;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/cluster", get(cluster))
}

async fn cluster(
    State(state): State<ApiState>,
    Caller(user): Caller,
) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    // Each node's live sessions and audit-sink state: for the callers `/v1/health` shows
    // them to (those who may read the audit trail).
    if !crate::health::visible_to(Some(&user)) {
        return Err(
            ServiceError::from(crate::policy::PolicyError::Forbidden(format!(
                "{} may not see the nodes: it needs the admin, auditor or approver role",
                user.name
            )))
            .into(),
        );
    }
    let local = Local {
        lockbox: state.lockbox.clone(),
        registry: state.registry.clone(),
        sink: state.audit_sink.clone(),
    };
    nodes::cluster(&local)
        .await
        .map(Json)
        .map_err(|e| ApiError::from(ServiceError::from(e)))
}
