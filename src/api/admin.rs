//! `/v1/policy` and `/v1/admin/…`: what admins change at run time.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, Caller};
use crate::policy;
use crate::service::{PolicyView, ReloadReport, ServiceError};

pub async fn show_policy(
    State(state): State<ApiState>,
    Caller(_user): Caller,
) -> Result<Json<PolicyView>, ApiError> {
    Ok(Json(state.lockbox.policy_view().await?))
}

/// Body of `PUT /v1/policy`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyChange {
    /// `all`, `none` or `DB,DB…`.
    pub protect: String,
}

pub async fn set_policy(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Json(change): Json<PolicyChange>,
) -> Result<Json<PolicyView>, ApiError> {
    Ok(Json(
        state.lockbox.set_protection(&user, &change.protect).await?,
    ))
}

pub async fn reload(
    State(state): State<ApiState>,
    Caller(user): Caller,
) -> Result<Json<ReloadReport>, ApiError> {
    policy::check_policy_change(&user).map_err(ServiceError::from)?;
    Ok(Json(state.lockbox.reload(&user.name).await?))
}

#[derive(Debug, Deserialize)]
pub struct NotificationQuery {
    pub request: Option<String>,
    pub limit: Option<usize>,
}

/// Recent deliveries with their status, attempts and last error, newest first.
pub async fn notifications(
    State(state): State<ApiState>,
    Caller(user): Caller,
    axum::extract::Query(query): axum::extract::Query<NotificationQuery>,
) -> Result<Json<Vec<crate::notify::Delivery>>, ApiError> {
    let config = state.lockbox.config();
    let within = policy::audit_scope(&config, &user).map_err(ServiceError::from)?;
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let mut list = state
        .lockbox
        .notifier
        .recent(query.request, limit, &config.notifications.webhooks)
        .await
        .map_err(ServiceError::from)?;
    // An approver sees the deliveries about the requests of the databases they approve,
    // as they read those databases' trail only (who was told what, and where to).
    if let Some(databases) = within {
        let mut kept = Vec::with_capacity(list.len());
        let mut known: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        for delivery in list {
            let visible = match known.get(&delivery.request_id) {
                Some(v) => *v,
                None => {
                    let id = crate::ids::RequestId(delivery.request_id.clone());
                    let v = state
                        .lockbox
                        .store
                        .get(&id)
                        .await
                        .map_err(ServiceError::from)?
                        .is_some_and(|r| databases.contains(&r.database));
                    known.insert(delivery.request_id.clone(), v);
                    v
                }
            };
            if visible {
                kept.push(delivery);
            }
        }
        list = kept;
    }
    Ok(Json(list))
}
