//! `lockbox_nodes`: the heartbeat each node writes, read by `GET /v1/cluster` and by a
//! session kill looking for the node that holds a session.

use chrono::{DateTime, Utc};

use super::super::StoreError;
use super::pool;
use super::{millis, PgStore};

/// The store's own clock in milliseconds: heartbeats are stamped and judged by it, so a
/// node whose clock is off neither keeps its row fresh for ever nor ages others' early (an
/// attack review's node 10 minutes ahead kept a dead node's sessions listed that long).
const STORE_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// One node's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeRow {
    pub id: String,
    /// When its last heartbeat reached the store (the store's clock; ignored when writing).
    pub last_seen: DateTime<Utc>,
    /// How long ago that was, by the store's clock (zero when writing).
    pub silent_for: std::time::Duration,
    pub live_sessions: u64,
    pub audit_seq: Option<u64>,
    pub audit_sink_lag: Option<u64>,
    /// The node's live sessions, as JSON (`SessionInfo` list).
    pub sessions: String,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PgStore {
    /// Writes this node's heartbeat for its run `run`, unless that run stopped already.
    pub(crate) async fn beat(&self, row: &NodeRow, run: &str) -> Result<(), StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let live = i32::try_from(row.live_sessions).unwrap_or(i32::MAX);
            conn.execute(
                &format!(
                    "INSERT INTO lockbox_nodes (id, last_seen, live_sessions, audit_seq, audit_sink_lag, sessions, run)
                 VALUES ($1, {STORE_NOW_MS}, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen,
                     live_sessions = excluded.live_sessions, audit_seq = excluded.audit_seq,
                     audit_sink_lag = excluded.audit_sink_lag, sessions = excluded.sessions,
                     run = excluded.run, stopped = false
                 WHERE NOT (lockbox_nodes.stopped AND lockbox_nodes.run = excluded.run)"
                ),
                &[
                    &row.id,
                    &live,
                    &row.audit_seq.map(to_i64),
                    &row.audit_sink_lag.map(to_i64),
                    &row.sessions,
                    &run,
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Marks this node's run stopped (a clean stop: its sessions are over, and it is not
    /// silent); a later heartbeat of the same run leaves the mark.
    pub(crate) async fn forget_node(&self, id: &str, run: &str) -> Result<(), StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            conn.execute(
                "UPDATE lockbox_nodes SET stopped = true, sessions = '[]', live_sessions = 0
                 WHERE id = $1 AND run = $2",
                &[&id, &run],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// The nodes heard from within `within` (by the store's clock), by id.
    pub(crate) async fn nodes(
        &self,
        within: std::time::Duration,
    ) -> Result<Vec<NodeRow>, StoreError> {
        let within = i64::try_from(within.as_millis()).unwrap_or(i64::MAX);
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let rows = conn
                .query(
                    &format!(
                        "SELECT id, last_seen, live_sessions, audit_seq, audit_sink_lag, sessions,
                                greatest({STORE_NOW_MS} - last_seen, 0)
                         FROM lockbox_nodes
                         WHERE NOT stopped AND last_seen >= {STORE_NOW_MS} - $1 ORDER BY id"
                    ),
                    &[&within],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(NodeRow {
                        id: r.try_get(0)?,
                        last_seen: millis(r.try_get(1)?),
                        live_sessions: u64::try_from(r.try_get::<_, i32>(2)?).unwrap_or(0),
                        audit_seq: r.try_get::<_, Option<i64>>(3)?.map(to_u64),
                        audit_sink_lag: r.try_get::<_, Option<i64>>(4)?.map(to_u64),
                        sessions: r.try_get(5)?,
                        silent_for: std::time::Duration::from_millis(to_u64(r.try_get(6)?)),
                    })
                })
                .collect()
        })
        .await
    }
}

/// A kill ordered for a session of this node (`lockbox_session_kills`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KillOrder {
    pub session: String,
    pub reason: String,
    pub by_its_engineer: bool,
}

impl PgStore {
    /// Orders the kill of `session` on `node`: kept in the table, then announced. The
    /// announcement only hurries it: the node's reconcile finds the order if it was missed.
    pub(crate) async fn order_kill(&self, node: &str, order: &KillOrder) -> Result<(), StoreError> {
        pool::bounded_change(async {
            let conn = self.pool.get().await?;
            conn.execute(
                "INSERT INTO lockbox_session_kills (session_id, node, reason, by_its_engineer, ordered_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (session_id) DO NOTHING",
                &[
                    &order.session,
                    &node,
                    &order.reason,
                    &order.by_its_engineer,
                    &Utc::now().timestamp_millis(),
                ],
            )
            .await?;
            drop(conn);
            // The order stands once stored: an announcement that fails (a reason past NOTIFY's
            // 8000 bytes, a dropped connection) only leaves it to the reconcile.
            let announced = self
                .publish(&super::Change::Kill {
                    session: order.session.clone(),
                    node: node.to_owned(),
                    reason: order.reason.clone(),
                    by_its_engineer: order.by_its_engineer,
                })
                .await;
            if let Err(e) = announced {
                tracing::warn!(session_id = %order.session, error = %e, "kill stored but not announced; the node's reconcile carries it out");
            }
            Ok(())
        })
        .await
    }

    /// The kills ordered for this node's sessions, taken off the table: the caller carries
    /// them out (a session already gone needs nothing more). Orders a day old for a node
    /// that never came back go too (their sessions ended with it).
    pub(crate) async fn take_kill_orders(&self) -> Result<Vec<KillOrder>, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let stale = (Utc::now() - chrono::Duration::days(1)).timestamp_millis();
            conn.execute(
                "DELETE FROM lockbox_session_kills WHERE ordered_at < $1",
                &[&stale],
            )
            .await?;
            let rows = conn
                .query(
                    "DELETE FROM lockbox_session_kills WHERE node = $1
                     RETURNING session_id, reason, by_its_engineer",
                    &[&self.node],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(KillOrder {
                        session: r.try_get(0)?,
                        reason: r.try_get(1)?,
                        by_its_engineer: r.try_get(2)?,
                    })
                })
                .collect()
        })
        .await
    }
}
