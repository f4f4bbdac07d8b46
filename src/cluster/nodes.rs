//! Which nodes run: each writes a heartbeat to the shared store every
//! [`HEARTBEAT_INTERVAL`] (its live sessions, how far its audit sink lags), and
//! `GET /v1/cluster` / `lockbox status` list those seen within [`SEEN_WITHIN`]. On SQLite
//! the cluster is this node alone, described live.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::audit::pg_sink::SinkStatus;
use crate::proxy::{Registry, SessionInfo};
use crate::service::Lockbox;
use crate::store::pg::nodes::NodeRow;
use crate::store::StoreError;

pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// A node not heard from for this long (by the store's clock) is no longer listed.
pub(crate) const SEEN_WITHIN: Duration = Duration::from_secs(30);

/// A node silent for longer than [`SEEN_WITHIN`] is named for this long by every session
/// list as one whose sessions may be missing (a node cut off from the store runs its
/// sessions on; one that crashed ran none since). A node that stops cleanly marks its row
/// stopped, so it is never named.
pub(crate) const SILENT_NAMED_FOR: Duration = Duration::from_secs(24 * 3600);

/// One node as `GET /v1/cluster` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub last_seen: DateTime<Utc>,
    pub live_sessions: u64,
    /// The last sequence number of the node's audit trail.
    #[serde(default)]
    pub audit_seq: Option<u64>,
    /// Records of its trail not yet in the audit database (with `[audit.postgres]`).
    #[serde(default)]
    pub audit_sink_lag: Option<u64>,
    /// The node that answered.
    #[serde(default)]
    pub this_node: bool,
}

/// What a node knows of itself.
pub(crate) struct Local {
    pub lockbox: Arc<Lockbox>,
    pub registry: Arc<Registry>,
    pub sink: Option<Arc<SinkStatus>>,
}

impl Local {
    fn row(&self) -> NodeRow {
        let node = self.lockbox.config().node_id.clone();
        let mut sessions = self.registry.list();
        sessions.iter_mut().for_each(|s| s.node.clone_from(&node));
        NodeRow {
            id: node,
            last_seen: Utc::now(),
            silent_for: Duration::ZERO,
            live_sessions: u64::try_from(self.registry.live_sessions()).unwrap_or(u64::MAX),
            audit_seq: Some(*self.lockbox.audit.subscribe().borrow()),
            audit_sink_lag: self.sink.as_ref().map(|s| s.health().lag),
            sessions: serde_json::to_string(&sessions).unwrap_or_else(|_| "[]".into()),
        }
    }
}

fn info(row: NodeRow, this_node: &str) -> NodeInfo {
    NodeInfo {
        this_node: row.id == this_node,
        id: row.id,
        last_seen: row.last_seen,
        live_sessions: row.live_sessions,
        audit_seq: row.audit_seq,
        audit_sink_lag: row.audit_sink_lag,
    }
}

/// The nodes seen recently, this one described live.
pub(crate) async fn cluster(local: &Local) -> Result<Vec<NodeInfo>, StoreError> {
    let me = local.row();
    let id = me.id.clone();
    let mut rows = match local.lockbox.store.postgres_backend() {
        Some(pg) => pg.nodes(SEEN_WITHIN).await?,
        None => Vec::new(),
    };
    rows.retain(|r| r.id != id);
    rows.push(me);
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(rows.into_iter().map(|r| info(r, &id)).collect())
}

/// The session `id` on another node seen recently, and that node's id.
pub(crate) async fn remote_session(
    lockbox: &Lockbox,
    id: &str,
) -> Result<Option<SessionInfo>, StoreError> {
    Ok(remote_sessions(lockbox)
        .await?
        .sessions
        .into_iter()
        .find(|s| s.session_id == id))
}

/// The other nodes' live sessions, as their heartbeats last listed them.
#[derive(Debug, Default)]
pub(crate) struct RemoteSessions {
    /// Those of the nodes seen recently, each naming its node.
    pub sessions: Vec<SessionInfo>,
    /// The nodes silent for longer, said as such: their sessions may be missing from the
    /// list.
    pub silent: Vec<String>,
}

/// The live sessions of the other nodes seen recently, as of each one's last heartbeat
/// (their statement counts up to [`HEARTBEAT_INTERVAL`] old), and the silent nodes. None
/// on SQLite (one node).
pub(crate) async fn remote_sessions(lockbox: &Lockbox) -> Result<RemoteSessions, StoreError> {
    let Some(pg) = lockbox.store.postgres_backend() else {
        return Ok(RemoteSessions::default());
    };
    let me = lockbox.config().node_id.clone();
    let mut out = RemoteSessions::default();
    for row in pg.nodes(SILENT_NAMED_FOR).await? {
        if row.id == me {
            continue;
        }
        let sessions: Vec<SessionInfo> = serde_json::from_str(&row.sessions).unwrap_or_default();
        if row.silent_for >= SEEN_WITHIN {
            // Named whether or not its last heartbeat listed sessions: one admitted since
            // would be missing without a word (a re-attack's finding). No count: it would
            // count sessions the caller may not see.
            out.silent.push(format!(
                "node {} has not reported for {} s",
                row.id,
                row.silent_for.as_secs()
            ));
            continue;
        }
        out.sessions.extend(sessions.into_iter().map(|mut s| {
            s.node.clone_from(&row.id);
            s
        }));
    }
    Ok(out)
}

/// Writes this node's heartbeat until `shutdown` (a PostgreSQL store only).
pub(crate) async fn heartbeat(local: Local, mut shutdown: watch::Receiver<bool>) {
    let Some(pg) = local.lockbox.store.postgres_backend().cloned() else {
        return;
    };
    // This run's id: a heartbeat of it stored after its clean stop does not undo the stop.
    let run = format!("{:016x}", rand::random::<u64>());
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                // Stopped cleanly: its sessions are over, and it is not a silent node.
                let id = local.lockbox.config().node_id.clone();
                if let Err(e) = pg.forget_node(&id, &run).await {
                    tracing::debug!(error = %e, "cannot remove this node's heartbeat");
                }
                return;
            }
            _ = tick.tick() => {
                if let Err(e) = pg.beat(&local.row(), &run).await {
                    tracing::debug!(error = %e, "cannot write this node's heartbeat");
                }
            }
        }
    }
}
