//! Several lockbox nodes on one PostgreSQL state store. Each node hears the others'
//! changes on `LISTEN lockbox_changes` (a connection of its own) and applies them to its
//! live sessions through the registry, as a local revocation or extension is applied; a
//! reconcile from the store every [`RECONCILE_INTERVAL`] is the backstop for a listener
//! that dropped, and every live grant is re-read when the listener (re)connects.
//!
//! On SQLite there is one node and nothing to follow: [`follow`] returns at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use crate::ids::{RequestId, SessionId};
use crate::policy::RequestStatus;
use crate::proxy::{DropReason, Registry};
use crate::service::Lockbox;
use crate::store::pg::{pool, PgStore, CHANNEL};
use crate::store::Change;

pub(crate) mod nodes;
pub use nodes::NodeInfo;

/// How often live grants are re-read from the store whatever the listener heard.
pub(crate) const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// Pause before the listener connects again after its connection broke, doubled while
/// the store stays down (the reconcile covers the gap either way).
const RELISTEN_PAUSE: Duration = Duration::from_millis(500);
const RELISTEN_MAX_PAUSE: Duration = Duration::from_secs(5);

/// The advisory lock key of the deadline sweep (`sweep` in ASCII).
const SWEEP_LOCK: i64 = 0x0073_7765_6570;

/// Records passed deadlines (expiry, completion) once across nodes: on a shared store one
/// node sweeps at a time, so each change is recorded (and notified) by one node rather
/// than won by one and recorded as superseded by the others; a node that dies mid-sweep
/// lets go of the lock with its connection.
pub(crate) async fn sweep_once(lockbox: &Lockbox) -> Result<usize, crate::service::ServiceError> {
    match lockbox.store.postgres_backend() {
        Some(pg) => Ok(pg
            .exclusive(SWEEP_LOCK, lockbox.sweep())
            .await?
            .transpose()?
            .unwrap_or(0)),
        None => lockbox.sweep().await,
    }
}

/// What the follower acts on.
#[derive(Debug)]
enum Event {
    Change(Change),
    /// The listener (re)connected: changes may have been missed, re-read every grant.
    Listening,
}

/// Follows the other nodes' changes until `shutdown`.
pub(crate) async fn follow(
    lockbox: Arc<Lockbox>,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(pg) = lockbox.store.postgres_backend().cloned() else {
        return;
    };
    let (tx, mut rx) = mpsc::channel(4096);
    let listener = tokio::spawn(listen(pg.clone(), tx, shutdown.clone()));
    let mut follower = Follower {
        lockbox,
        registry,
        node: pg.node.clone(),
        pg: pg.clone(),
        relayed_ends: HashMap::new(),
    };
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            event = rx.recv() => match event {
                Some(Event::Change(change)) => follower.apply(change).await,
                Some(Event::Listening) => follower.reconcile().await,
                None => break,
            },
            _ = tick.tick() => follower.reconcile().await,
        }
    }
    listener.abort();
}

/// Keeps a listening connection open, handing each notification to the follower.
async fn listen(pg: Arc<PgStore>, tx: mpsc::Sender<Event>, mut shutdown: watch::Receiver<bool>) {
    let mut pause = RELISTEN_PAUSE;
    loop {
        let sender = tx.clone();
        let on_message = move |message| {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                match serde_json::from_str::<Change>(n.payload()) {
                    // A full queue only delays: the reconcile re-reads every live grant.
                    Ok(change) => {
                        let _ = sender.try_send(Event::Change(change));
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable change notification"),
                }
            }
        };
        match pool::connect_with(&pg.config, on_message).await {
            Ok((client, connection)) => {
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        tracing::info!("listening for changes of other nodes");
                        pause = RELISTEN_PAUSE;
                        let _ = tx.send(Event::Listening).await;
                        tokio::select! {
                            _ = connection => {}
                            _ = shutdown.changed() => return,
                        }
                        tracing::warn!("the state store's change listener dropped; reconnecting");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot listen for changes"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect the change listener"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
        pause = (pause * 2).min(RELISTEN_MAX_PAUSE);
    }
}

struct Follower {
    lockbox: Arc<Lockbox>,
    registry: Arc<Registry>,
    node: String,
    pg: Arc<PgStore>,
    /// The window end last passed to each live grant's sessions, so a reconcile tells
    /// sessions only about an end that moved.
    relayed_ends: HashMap<RequestId, DateTime<Utc>>,
}

impl Follower {
    async fn apply(&mut self, change: Change) {
        match change {
            Change::Request { id } => {
                let id = RequestId(id);
                if self.registry.live_requests().contains(&id) {
                    self.recheck(&id).await;
                }
            }
            Change::Kill {
                session,
                node,
                reason,
                by_its_engineer,
            } if node == self.node => {
                self.registry
                    .kill(&SessionId(session), &reason, by_its_engineer);
            }
            // Protection and other settings are read from the store when used.
            Change::Kill { .. } | Change::Setting { .. } => {}
        }
    }

    /// Carries out the kills ordered for this node's sessions (an order whose announcement
    /// was missed, or one already carried out when it came: ending a session twice keeps
    /// its first reason), then re-reads the grant of every live session.
    async fn reconcile(&mut self) {
        match self.pg.take_kill_orders().await {
            Ok(orders) => {
                for order in orders {
                    let session = SessionId(order.session);
                    if self
                        .registry
                        .kill(&session, &order.reason, order.by_its_engineer)
                    {
                        tracing::info!(session_id = %session.0, "session killed on another node's order");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the kills ordered for this node"),
        }
        let live = self.registry.live_requests();
        self.relayed_ends.retain(|id, _| live.contains(id));
        for id in live {
            self.recheck(&id).await;
        }
    }

    /// Applies the stored state of `id` to its live sessions: a revoked or cancelled grant
    /// drops them, a moved end extends them. A store that cannot be read changes nothing:
    /// the sessions keep the grant they hold until its deadline, which they already know.
    async fn recheck(&mut self, id: &RequestId) {
        let request = match self.lockbox.store.get(id).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(request_id = %id, error = %e, "cannot re-read a live grant");
                return;
            }
        };
        match request.status {
            RequestStatus::Revoked | RequestStatus::Cancelled => {
                let n = self.registry.drop_request(id, DropReason::Revoked);
                if n > 0 {
                    tracing::info!(request_id = %id, sessions = n, "request ended on another node; dropping its sessions");
                }
                self.relayed_ends.remove(id);
            }
            // Another node's sweep found the window over: its clock may be ahead of this
            // node's, whose own deadline would keep the sessions on by the difference. The
            // stored end is final (an ended grant is never extended), so they end now.
            RequestStatus::Completed => {
                let n = self.registry.drop_request(id, DropReason::Expired);
                if n > 0 {
                    tracing::info!(request_id = %id, sessions = n, "access window recorded as ended by another node; dropping its sessions");
                }
                self.relayed_ends.remove(id);
            }
            _ if request.effective_status(Utc::now()) == RequestStatus::Active => {
                let Some(end) = request.access_expires_at else {
                    return;
                };
                if self.relayed_ends.get(id) != Some(&end) {
                    // Sessions only ever move their deadline later, so an end they
                    // already hold is no change to them.
                    self.registry.extend_request(id, end);
                    self.relayed_ends.insert(id.clone(), end);
                }
            }
            _ => {}
        }
    }
}
