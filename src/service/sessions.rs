//! Live proxy sessions for the control plane: `lockbox session list` and `session kill`.
//! The API asks here; the registry (data plane) is only told what to do, so HTTP code
//! never reaches into the proxy.

use super::{request_event, Lockbox, ServiceError};
use crate::audit::{AuditEvent, RequestEvent, RequestRecord};
use crate::config::User;
use crate::ids::{RequestId, SessionId};
use crate::policy::sessions::{check_kill, check_kill_reason, sees_sessions_of};
use crate::proxy::{Registry, SessionInfo};

/// Why a session could not be ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KillError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("session {0} is not live on this proxy")]
    NotLive(String),
}

impl From<crate::policy::PolicyError> for KillError {
    fn from(e: crate::policy::PolicyError) -> Self {
        KillError::Service(e.into())
    }
}

impl Lockbox {
    /// The live, admitted sessions `caller` may see: all of them for admins and auditors,
    /// those of their databases for approvers, an engineer's own otherwise.
    pub(crate) fn list_sessions(&self, caller: &User, registry: &Registry) -> Vec<SessionInfo> {
        let mut list = registry.list();
        let node = self.config().node_id.clone();
        list.iter_mut().for_each(|s| s.node.clone_from(&node));
        self.visible_sessions(caller, list)
    }

    /// The live sessions of every node sharing the state store that `caller` may see: this
    /// node's as they are now, the others' as of their last heartbeat; and, where the list
    /// may be missing some, why: the other nodes' could not be read (this node's alone are
    /// listed: ending a session must not depend on the store), or a node that had sessions
    /// has gone silent. A list must not pass for whole.
    pub(crate) async fn list_fleet_sessions(
        &self,
        caller: &User,
        registry: &Registry,
    ) -> (Vec<SessionInfo>, Option<String>) {
        let mut list = self.list_sessions(caller, registry);
        match crate::cluster::nodes::remote_sessions(self).await {
            Ok(remote) => {
                list.extend(self.visible_sessions(caller, remote.sessions));
                list.sort_by(|a, b| (a.since, &a.session_id).cmp(&(b.since, &b.session_id)));
                let silent = (!remote.silent.is_empty()).then(|| {
                    format!(
                        "sessions of silent nodes may be missing: {}",
                        remote.silent.join("; ")
                    )
                });
                (list, silent)
            }
            Err(e) => {
                tracing::warn!(error = %e, "session list without the other nodes' sessions");
                (
                    list,
                    Some(format!(
                        "only this node's sessions: the other nodes' could not be read ({})",
                        ServiceError::from(e)
                    )),
                )
            }
        }
    }

    /// The sessions of `list` that `caller` may see: their own, and those of the databases
    /// they may see sessions of.
    fn visible_sessions(&self, caller: &User, mut list: Vec<SessionInfo>) -> Vec<SessionInfo> {
        let config = self.config();
        list.retain(|s| {
            sees_sessions_of(&config, caller, &s.database) || s.engineer == caller.name
        });
        list
    }

    /// Ends one live session like a revocation ends a request's: a durable
    /// `session_killed` record of who and why first, then the session is dropped (FATAL
    /// 57P01 with the reason, a `dropped_killed` record, its backend reaped). The grant
    /// itself stays: the engineer may connect again unless the request is revoked.
    pub(crate) async fn kill_session(
        &self,
        caller: &User,
        registry: &Registry,
        session: &SessionId,
        reason: &str,
    ) -> Result<SessionInfo, KillError> {
        // A reason is asked for before the session is looked up; whose sessions, once its
        // engineer and database are known.
        check_kill_reason(reason)?;
        // A session on another node (shared store) is ended by that node, told below.
        let (info, remote) = match registry.get(session) {
            Some(mut info) => {
                info.node.clone_from(&self.config().node_id);
                (info, false)
            }
            None => match crate::cluster::nodes::remote_session(self, &session.0).await {
                Ok(Some(info)) => (info, true),
                Ok(None) => return Err(KillError::NotLive(session.0.clone())),
                Err(e) => return Err(ServiceError::from(e).into()),
            },
        };
        // A session the caller may not see is not live to them, as an unknown one is: an
        // engineer learns nothing of others' sessions, an approver nothing of another
        // database's (an attack review's finding). One they see and may not end is 403.
        let config = self.config();
        if info.engineer != caller.name && !sees_sessions_of(&config, caller, &info.database) {
            return Err(KillError::NotLive(session.0.clone()));
        }
        check_kill(&config, caller, (&info.database, &info.engineer), reason)?;
        let why = format!("session {}: {}", session.0, reason.trim());
        let record = match self.store.get(&RequestId(info.request_id.clone())).await {
            Ok(Some(request)) => request_event(
                &request,
                RequestEvent::SessionKilled,
                &caller.name,
                Some(&why),
            ),
            // The record is written all the same, from what the session knows.
            _ => AuditEvent::Request(RequestRecord {
                event: RequestEvent::SessionKilled,
                request_id: info.request_id.clone(),
                actor: caller.name.clone(),
                engineer: info.engineer.clone(),
                database: info.database.clone(),
                ticket: String::new(),
                access: String::new(),
                reason: Some(why),
                access_expires_at: None,
                status: None,
                break_glass: info.break_glass,
            }),
        };
        self.audit
            .append_durable(vec![record])
            .await
            .map_err(ServiceError::from)?;
        let reason = format!("{} (by {})", reason.trim(), caller.name);
        // Its own engineer's end is one the client could bring about at will: its farewell
        // draws on the passes as such ends do (see `relay::last_words::is_provoked`).
        let by_its_engineer = info.engineer == caller.name;
        if remote {
            // Kept in the store, not only announced: a node whose listener is reconnecting
            // would miss the announcement, and its session run on while the trail says it
            // was ended (an attack review's finding). Its reconcile finds the order.
            let Some(pg) = self.store.postgres_backend() else {
                return Err(KillError::NotLive(session.0.clone()));
            };
            let order = crate::store::pg::nodes::KillOrder {
                session: session.0.clone(),
                reason,
                by_its_engineer,
            };
            pg.order_kill(&info.node, &order)
                .await
                .map_err(ServiceError::from)?;
            tracing::info!(session_id = %session.0, node = %info.node, actor = %caller.name, "session kill relayed");
            return Ok(info);
        }
        if !registry.kill(session, &reason, by_its_engineer) {
            tracing::info!(session_id = %session.0, "session ended before it could be killed");
        }
        tracing::info!(session_id = %session.0, actor = %caller.name, "session killed");
        Ok(info)
    }
}
