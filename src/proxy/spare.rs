//! Spare backends: the next session of a grant that reconnects finds its backend logged in.
//!
//! Why: a login through the proxy waits, after the token check, for the server's own
//! password login as the grant's role — its backend's start, catalog reads and the SCRAM
//! round trips, most of the 3–5 ms a new connection takes. A client that opens a
//! connection per task (a script running `psql -c` in a loop, `pgbench -C`, an application
//! without a pool) pays it every time. For such a grant the proxy keeps one backend logged
//! in ahead and hands it to the grant's next session, which then waits only for its token
//! check; the server's login overlaps the previous session.
//!
//! What keeps this as strict as a fresh login:
//! - a spare is opened only right after a session of its grant was admitted, and handed
//!   only to a session whose own admission held: the token check and admission never move;
//! - it serves one session and is never given back, so nothing of one session (settings,
//!   prepared statements, temporary tables) reaches another;
//! - it is handed over only on an exact match ([`SpareKey`]): the server and its TLS
//!   settings as configured now, the database, the role, the access level and every
//!   startup parameter passed upstream; otherwise the session logs in as it would have;
//! - one per grant, at most [`MAX_SPARES`] in all; closed unused after [`SPARE_IDLE`] or at
//!   its grant's end, whichever is first, at once when its grant's sessions are dropped
//!   (revocation; none is opened for that grant again, not even by a session admitted
//!   before it and still logging in) and at shutdown; a spare that heard anything from the
//!   server (a termination, a closed socket, a message) is closed, never handed over;
//! - spares yield to logins: a login the server refuses for want of connection slots
//!   (53300, the server's or the role's limit) has every spare on that server give its
//!   slot up, and is tried again once.
//!
//! What it does not keep: a spare logged in up to [`SPARE_IDLE`] before its session, so a
//! change the database makes at login (a role made NOLOGIN, a CONNECT privilege revoked,
//! `pg_hba.conf`, a role's `ALTER ROLE … SET`) reaches that session only at the next login,
//! as it would for a connection a pooler kept open. The grant's own end and revocation are
//! lockbox's, and close the spare.
//!
//! Which grants get one: a grant whose session ended within [`RECONNECT_WINDOW`] before
//! another of its sessions logged in (it reconnects), and a grant whose spare was just
//! taken. A grant with one long session never has a second backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::upstream::{DialTarget, Upstream};
use crate::config::Database;
use crate::ids::RequestId;
use crate::metrics::{Metrics, SpareOutcome};
use crate::policy::AccessLevel;

/// How long a spare waits for its session before it is closed.
pub(crate) const SPARE_IDLE: Duration = Duration::from_secs(10);
/// A session that logs in this soon after another of its grant ended has a spare opened
/// for the next one.
pub(crate) const RECONNECT_WINDOW: Duration = Duration::from_secs(10);
/// Spares open (or opening) at once, over all grants.
pub(crate) const MAX_SPARES: usize = 64;
/// Longest a spare's login may take; a session waiting for it waits no longer.
pub(crate) const SPARE_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A grant that ends sooner than this gets no spare (its login could outlive the role's
/// `VALID UNTIL`, and its session would not be long).
const LEAST_REMAINING: Duration = Duration::from_secs(2);
/// A login refused for want of slots this soon after spares gave theirs up tries again.
const FREED_LATELY: Duration = Duration::from_secs(1);
/// How long a grant whose sessions were dropped (revoked) is refused spares: longer than a
/// login admitted before the revocation can still be running (`LOGIN_TIMEOUT` and the
/// upstream login's own bounds).
const DISCARDED_FOR: Duration = Duration::from_secs(600);

/// Everything a backend's login decided: a spare is handed only to a session that would
/// have logged in with exactly this.
#[derive(Clone, PartialEq)]
pub(crate) struct SpareKey {
    target: DialTarget,
    /// The database as configured, and the server's database it logs in to.
    database: String,
    dbname: String,
    role: String,
    access: AccessLevel,
    params: Vec<(String, String)>,
}

impl SpareKey {
    pub(crate) fn new(
        db: &Database,
        role: &str,
        access: AccessLevel,
        params: &[(String, String)],
    ) -> SpareKey {
        SpareKey {
            target: DialTarget::of(db),
            database: db.name.clone(),
            dbname: db.dbname.clone(),
            role: role.to_owned(),
            access,
            params: params.to_vec(),
        }
    }
}

/// The spares, one slot per grant (in the `Registry`, so that dropping a grant's sessions
/// closes its spare too).
#[derive(Default)]
pub(crate) struct Spares {
    state: Mutex<State>,
    /// Where what becomes of spares is counted (set once at start; tests may leave it).
    metrics: OnceLock<Arc<Metrics>>,
    /// Told when no logout for a refused login (`yield_slots`) is running any more.
    closed_all: Notify,
}

#[derive(Default)]
struct State {
    slots: HashMap<RequestId, Slot>,
    /// When each grant's last session ended, kept for `RECONNECT_WINDOW`.
    ended: HashMap<RequestId, Instant>,
    /// Grants whose sessions were dropped (revocation), kept for `DISCARDED_FOR`: a session
    /// admitted before it and still logging in must not open a spare after it.
    discarded: HashMap<RequestId, Instant>,
    next_id: u64,
    /// Shutdown: no more spares.
    closed: bool,
    /// Spares being logged out for a login the server refused for want of slots.
    closing: usize,
    /// When such logouts last freed a slot: a login refused at the same moment as the one
    /// that freed them may find one free now too.
    last_freed: Option<Instant>,
}

enum Slot {
    /// A spare's login is running; `id` tells it from a later one. One session that would
    /// take it may wait for it (`claimed`): its login started before that session's own
    /// would, so it is ready sooner.
    Opening {
        id: u64,
        key: SpareKey,
        ready: Arc<Notify>,
        claimed: bool,
    },
    Ready {
        id: u64,
        key: SpareKey,
        upstream: Upstream,
    },
}

impl Slot {
    fn key(&self) -> &SpareKey {
        match self {
            Slot::Opening { key, .. } | Slot::Ready { key, .. } => key,
        }
    }
}

/// Leave to open a grant's spare, from [`Spares::reserve`]: [`Reservation::fill`] puts the
/// backend in its slot; dropped unfilled (the login failed), it frees the slot.
pub(crate) struct Reservation {
    spares: Arc<Spares>,
    request: RequestId,
    id: u64,
    /// When the spare is closed unused: its idle time, or its grant's end if sooner.
    close_at: Instant,
    filled: bool,
}

impl Spares {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts what becomes of spares in `metrics` from now on.
    pub(crate) fn count_in(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    fn count(&self, outcome: SpareOutcome) {
        if let Some(metrics) = self.metrics.get() {
            metrics.spare_backend(outcome);
        }
    }

    /// The grant's spare, if it was logged in for exactly `key` and has heard nothing from
    /// the server since; a spare that did is closed. A spare still logging in for `key` is
    /// waited for by the first session that finds it so (its login ends within
    /// `SPARE_LOGIN_TIMEOUT`, failed or not); any other logs in as it would have.
    pub(crate) async fn take(&self, request: &RequestId, key: &SpareKey) -> Option<Upstream> {
        let opening = {
            let mut state = self.lock();
            match state.slots.get_mut(request) {
                Some(Slot::Ready { key: k, .. }) if k == key => None,
                Some(Slot::Opening {
                    id,
                    key: k,
                    ready,
                    claimed,
                }) if k == key && !*claimed => {
                    *claimed = true;
                    Some((*id, ready.clone()))
                }
                _ => return None,
            }
        };
        if let Some((id, ready)) = opening {
            let notified = ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Registered before this look: a login that ends from here on wakes it.
            if self.is_opening(request, id) {
                let wait = SPARE_LOGIN_TIMEOUT + Duration::from_secs(1);
                let _ = tokio::time::timeout(wait, notified).await;
            }
        }
        self.take_ready(request, key)
    }

    fn is_opening(&self, request: &RequestId, id: u64) -> bool {
        matches!(self.lock().slots.get(request), Some(Slot::Opening { id: o, .. }) if *o == id)
    }

    /// The grant's waiting spare, out of its slot, if `wanted` says so of its id and key.
    fn remove_ready(
        &self,
        request: &RequestId,
        wanted: impl Fn(u64, &SpareKey) -> bool,
    ) -> Option<Upstream> {
        let mut state = self.lock();
        if !matches!(state.slots.get(request), Some(Slot::Ready { id, key, .. }) if wanted(*id, key))
        {
            return None;
        }
        match state.slots.remove(request) {
            Some(Slot::Ready { upstream, .. }) => Some(upstream),
            _ => None,
        }
    }

    /// A slot given up unused: a waiting spare is closed, a login still running is closed
    /// when it ends (and whoever waits for it is told now).
    fn give_up(&self, slot: Slot) {
        match slot {
            Slot::Ready { upstream, .. } => {
                self.count(SpareOutcome::Closed);
                close_later(upstream);
            }
            Slot::Opening { ready, .. } => ready.notify_waiters(),
        }
    }

    fn take_ready(&self, request: &RequestId, key: &SpareKey) -> Option<Upstream> {
        let mut upstream = self.remove_ready(request, |_, k| k == key)?;
        if heard_from_server(&mut upstream) {
            tracing::debug!("spare backend closed by the server; logging in afresh");
            self.count(SpareOutcome::Closed);
            close_later(upstream);
            return None;
        }
        // The spare was logged in on the session thread of the session that opened it;
        // its socket comes to this one's, or every message would wake that thread too.
        if let Err(e) = upstream.stream.move_here() {
            tracing::debug!(error = %e, "spare backend stays on the thread that opened it");
        }
        self.count(SpareOutcome::Used);
        Some(upstream)
    }

    /// Leave to open a spare for the grant of a session just admitted: when its spare was
    /// just taken (`taken`), or when another of its sessions ended within
    /// `RECONNECT_WINDOW`; never while the grant has one, past `MAX_SPARES`, or after
    /// shutdown. `ends_at` is the grant's end.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        request: &RequestId,
        key: &SpareKey,
        taken: bool,
        ends_at: Instant,
    ) -> Option<Reservation> {
        let mut state = self.lock();
        let now = Instant::now();
        let reconnects = state
            .ended
            .get(request)
            .is_some_and(|ended| now.duration_since(*ended) < RECONNECT_WINDOW);
        if state.closed
            || !(taken || reconnects)
            || state.discarded.contains_key(request)
            || state.slots.contains_key(request)
            || state.slots.len() >= MAX_SPARES
            || ends_at <= now + LEAST_REMAINING
        {
            return None;
        }
        state.next_id += 1;
        let id = state.next_id;
        state.slots.insert(
            request.clone(),
            Slot::Opening {
                id,
                key: key.clone(),
                ready: Arc::new(Notify::new()),
                claimed: false,
            },
        );
        Some(Reservation {
            spares: self.clone(),
            request: request.clone(),
            id,
            close_at: (now + SPARE_IDLE).min(ends_at),
            filled: false,
        })
    }

    /// A session of the grant ended: its next one, if soon, reconnects.
    pub(crate) fn ended(&self, request: &RequestId) {
        let now = Instant::now();
        let mut state = self.lock();
        state
            .ended
            .retain(|_, at| now.duration_since(*at) < RECONNECT_WINDOW);
        if !state.discarded.contains_key(request) {
            state.ended.insert(request.clone(), now);
        }
    }

    /// Closes the grant's spare (its sessions are being dropped) and opens none for it
    /// again; a spare still logging in is closed when its login ends.
    pub(crate) fn discard(&self, request: &RequestId) {
        let slot = {
            let mut state = self.lock();
            let now = Instant::now();
            state
                .discarded
                .retain(|_, at| now.duration_since(*at) < DISCARDED_FOR);
            state.discarded.insert(request.clone(), now);
            state.ended.remove(request);
            state.slots.remove(request)
        };
        if let Some(slot) = slot {
            self.give_up(slot);
        }
    }

    /// Shutdown: every spare is closed and none is opened again.
    pub(crate) fn close_all(&self) {
        let slots = {
            let mut state = self.lock();
            state.closed = true;
            state.ended.clear();
            std::mem::take(&mut state.slots)
        };
        for slot in slots.into_values() {
            self.give_up(slot);
        }
    }

    /// The server at `target` refused a login for want of connection slots (SQLSTATE
    /// 53300): every spare on that server gives its slot up. Waiting ones are logged out and
    /// waited for until the server closed their connection (the backend has exited, its
    /// slot is free); ones still logging in are given up (closed as their login ends);
    /// logouts another login started are waited for too. Whether the login may find a slot
    /// now: anything was freed, was being freed, or was freed within `FREED_LATELY`.
    pub(crate) async fn yield_slots(&self, target: &DialTarget) -> bool {
        let (idle, given_up, others_closing, freed_lately) = {
            let mut state = self.lock();
            let freed_lately = state
                .last_freed
                .is_some_and(|at| at.elapsed() < FREED_LATELY);
            let on_target: Vec<RequestId> = state
                .slots
                .iter()
                .filter(|(_, slot)| slot.key().target == *target)
                .map(|(request, _)| request.clone())
                .collect();
            let (mut idle, mut given_up) = (Vec::new(), 0);
            for request in on_target {
                match state.slots.remove(&request) {
                    Some(Slot::Ready { upstream, .. }) => idle.push(upstream),
                    Some(Slot::Opening { ready, .. }) => {
                        ready.notify_waiters();
                        given_up += 1;
                    }
                    None => {}
                }
            }
            let others_closing = state.closing;
            state.closing += idle.len();
            (idle, given_up, others_closing, freed_lately)
        };
        let closed = idle.len();
        for _ in 0..closed {
            self.count(SpareOutcome::Closed);
        }
        let logged_out = self.closed_all.notified();
        tokio::pin!(logged_out);
        logged_out.as_mut().enable();
        futures::future::join_all(idle.into_iter().map(Upstream::close_and_wait)).await;
        let still_closing = {
            let mut state = self.lock();
            state.closing -= closed;
            if closed > 0 {
                state.last_freed = Some(Instant::now());
            }
            state.closing
        };
        if still_closing == 0 {
            self.closed_all.notify_waiters();
        } else {
            // Another login's logouts: bounded as they are.
            let _ = tokio::time::timeout(Duration::from_secs(1), logged_out).await;
        }
        closed > 0 || given_up > 0 || others_closing > 0 || freed_lately
    }

    /// Spares open or logging in.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.lock().slots.len()
    }

    /// The grants with a spare open or logging in (whose revocation must reach it).
    pub(crate) fn grants(&self) -> Vec<RequestId> {
        self.lock().slots.keys().cloned().collect()
    }

    /// Closes the spare `id` if it is still waiting.
    fn expire(&self, request: &RequestId, id: u64) {
        let Some(upstream) = self.remove_ready(request, |ready, _| ready == id) else {
            return;
        };
        tracing::debug!("spare backend unused; closed");
        self.count(SpareOutcome::Expired);
        close_later(upstream);
    }
}

impl Reservation {
    /// Puts the logged-in backend in its slot, where it waits until `close_at`; if the
    /// slot was given up meanwhile (revocation, shutdown), the backend is closed.
    pub(crate) fn fill(mut self, upstream: Upstream) {
        self.filled = true;
        let mut state = self.spares.lock();
        let (key, ready) = match state.slots.remove(&self.request) {
            Some(Slot::Opening { id, key, ready, .. }) if id == self.id => (key, ready),
            other => {
                // Given up meanwhile; whatever holds the slot now stays.
                if let Some(slot) = other {
                    state.slots.insert(self.request.clone(), slot);
                }
                drop(state);
                self.spares.count(SpareOutcome::Closed);
                close_later(upstream);
                return;
            }
        };
        state.slots.insert(
            self.request.clone(),
            Slot::Ready {
                id: self.id,
                key,
                upstream,
            },
        );
        drop(state);
        ready.notify_waiters();
        let (spares, request, id) = (self.spares.clone(), self.request.clone(), self.id);
        let close_at = self.close_at;
        tokio::spawn(async move {
            tokio::time::sleep_until(close_at).await;
            spares.expire(&request, id);
        });
    }

    /// The login failed: counted, and the slot freed when the reservation drops.
    pub(crate) fn failed(self) {
        self.spares.count(SpareOutcome::Failed);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.filled {
            return;
        }
        let mut state = self.spares.lock();
        if matches!(state.slots.get(&self.request), Some(Slot::Opening { id, .. }) if *id == self.id)
        {
            if let Some(Slot::Opening { ready, .. }) = state.slots.remove(&self.request) {
                ready.notify_waiters();
            }
        }
    }
}

/// Whether the server closed the spare or sent it anything since its login: an idle
/// backend says nothing unless it is ending (a termination's FATAL, a closed socket) or
/// something changed under it, and either way it is not handed over. Never waited on.
/// A read polled once finds what the TLS session already holds and what the reactor knows
/// of; the socket itself is asked too, since the spare's reactor may be another session
/// thread's, which may not have handled a FATAL that already arrived.
fn heard_from_server(upstream: &mut Upstream) -> bool {
    let mut byte = [0u8; 1];
    upstream.stream.read(&mut byte).now_or_never().is_some() || upstream.stream.peer_spoke()
}

/// Logs a spare out (Terminate), on a task of its own so no lock or caller waits for it.
fn close_later(upstream: Upstream) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(upstream.close());
    }
}

#[cfg(test)]
#[path = "spare_tests.rs"]
mod tests;
