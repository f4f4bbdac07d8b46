//! Live sessions: the kill switch of each (for revocation and shutdown) and the cancel
//! keys handed to clients, mapped to the upstream backends they stand for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use rand::Rng;
use tokio::sync::{broadcast, watch};

use crate::audit::SessionFields;
use crate::ids::{RequestId, SessionId};
use crate::policy::RequestStatus;
use crate::service::Lockbox;

/// Why the proxy ends a session on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    Expired,
    Revoked,
    Shutdown,
    /// Someone ended it (`lockbox session kill`), saying why: an admin or approver, or
    /// the session's own engineer (`by_its_engineer`), an end the client could bring about
    /// at will (see `relay::last_words::is_provoked`).
    Killed {
        why: Arc<str>,
        by_its_engineer: bool,
    },
}

/// What the control plane tells a live session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    Run,
    /// The grant was extended: the session may run until then.
    ExtendTo(chrono::DateTime<chrono::Utc>),
    Drop(DropReason),
}

/// Where a client's CancelRequest must go.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub backend_pid: i32,
    pub backend_secret: i32,
}

struct LiveSession {
    request_id: RequestId,
    kill: watch::Sender<Control>,
    /// Set once the session is admitted (its `connected` record appended).
    admitted: Option<(Arc<SessionFields>, chrono::DateTime<chrono::Utc>)>,
    /// One of its grant's places (see `places`), held until its relay is over (the client
    /// left, or was told to), or, when its backend may outlive it, until the reaper saw
    /// the backend gone; given back when dropped.
    place: Option<super::places::PlaceHold>,
}

/// A live, admitted session as `lockbox session list` shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub request_id: String,
    pub engineer: String,
    pub database: String,
    pub client_addr: String,
    pub since: chrono::DateTime<chrono::Utc>,
    /// Statements recorded so far.
    pub statements: u64,
    #[serde(default)]
    pub break_glass: bool,
    /// The node (`[node] id`) the session is on.
    #[serde(default)]
    pub node: String,
}

impl SessionInfo {
    fn of(fields: &SessionFields, since: chrono::DateTime<chrono::Utc>) -> SessionInfo {
        SessionInfo {
            session_id: fields.session_id.clone(),
            request_id: fields.request_id.clone(),
            engineer: fields.engineer.clone(),
            database: fields.database.clone(),
            client_addr: fields.client_addr.clone(),
            since,
            statements: fields.statements.get(),
            break_glass: fields.break_glass,
            node: String::new(),
        }
    }
}

#[derive(Default)]
pub struct Registry {
    sessions: DashMap<SessionId, LiveSession>,
    cancel_keys: DashMap<(i32, i32), CancelTarget>,
    shutting_down: AtomicBool,
    /// Connection cap and failed-login windows, checked at accept.
    pub(crate) gate: super::gate::Gate,
    /// Connections that have not sent their token yet, per source.
    pub(crate) preauth: super::preauth::PreAuth,
    /// Sources admitted lately, whose logins are dialed upstream at their startup packet.
    pub(crate) trusted: super::early_dial::TrustedSources,
    /// Backends logged in ahead for grants that reconnect (see `spare`).
    pub(crate) spares: Arc<super::spare::Spares>,
    /// What sessions hold together for large client messages (see `message_memory`).
    pub(crate) message_memory: Arc<super::message_memory::MessageMemory>,
    /// Sessions on each session thread, once the threads started (see `threads`).
    pub(crate) thread_sessions: std::sync::OnceLock<super::threads::LiveSessions>,
    /// The places of grants with a session limit (see `places`).
    places: Arc<super::places::Places>,
    /// The reapers' turn of each grant with a session limit that has one running (see
    /// `reaper`).
    reaper_turns: DashMap<RequestId, Arc<tokio::sync::Mutex<()>>>,
}

impl Registry {
    /// Registers a session; the receiver fires when it must end.
    pub fn register(
        &self,
        session: &SessionId,
        request_id: &RequestId,
    ) -> watch::Receiver<Control> {
        let (kill, rx) = watch::channel(Control::Run);
        if self.shutting_down.load(Ordering::SeqCst) {
            let _ = kill.send(Control::Drop(DropReason::Shutdown));
        }
        self.sessions.insert(
            session.clone(),
            LiveSession {
                request_id: request_id.clone(),
                kill,
                admitted: None,
                place: None,
            },
        );
        rx
    }

    /// Marks a registered session admitted, with what `session list` shows of it.
    pub(crate) fn admitted(&self, session: &SessionId, fields: Arc<SessionFields>) {
        if let Some(mut entry) = self.sessions.get_mut(session) {
            entry.admitted = Some((fields, chrono::Utc::now()));
        }
    }

    /// The admitted sessions, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut list: Vec<SessionInfo> = self
            .sessions
            .iter()
            .filter_map(|e| {
                e.admitted
                    .as_ref()
                    .map(|(fields, since)| SessionInfo::of(fields, *since))
            })
            .collect();
        list.sort_by(|a, b| (a.since, &a.session_id).cmp(&(b.since, &b.session_id)));
        list
    }

    /// The admitted session `id`, if live.
    pub fn get(&self, session: &SessionId) -> Option<SessionInfo> {
        let entry = self.sessions.get(session)?;
        let (fields, since) = entry.admitted.as_ref()?;
        Some(SessionInfo::of(fields, *since))
    }

    /// Tells one session to end, with `reason`; false if it is no longer live.
    /// `by_its_engineer`: the session's own engineer asked.
    pub(crate) fn kill(&self, session: &SessionId, reason: &str, by_its_engineer: bool) -> bool {
        let Some(entry) = self.sessions.get(session) else {
            return false;
        };
        let reason = Control::Drop(DropReason::Killed {
            why: Arc::from(reason),
            by_its_engineer,
        });
        // A session already told to end keeps its first reason.
        entry.kill.send_if_modified(|c| {
            if matches!(c, Control::Drop(_)) {
                return false;
            }
            *c = reason;
            true
        });
        true
    }

    /// Registered sessions now (the census counts them).
    pub(crate) fn sessions_held(&self) -> usize {
        self.sessions.len()
    }

    /// Cancel keys held now (the census counts them).
    pub(crate) fn cancel_keys_held(&self) -> usize {
        self.cancel_keys.len()
    }

    /// Forgets a session; a place it still holds is given back (once the map is let go).
    pub fn unregister(&self, session: &SessionId) {
        self.sessions.remove(session);
    }

    /// Tells every session of `request_id` to end.
    pub fn drop_request(&self, request_id: &RequestId, reason: DropReason) -> usize {
        self.spares.discard(request_id);
        let mut n = 0;
        for entry in self.sessions.iter() {
            if &entry.request_id == request_id {
                let _ = entry.kill.send(Control::Drop(reason.clone()));
                n += 1;
            }
        }
        n
    }

    pub fn drop_all(&self, reason: DropReason) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.spares.close_all();
        for entry in self.sessions.iter() {
            let _ = entry.kill.send(Control::Drop(reason.clone()));
        }
    }

    /// Moves the deadline of every session of `request_id` to `end` (an approved extension).
    pub fn extend_request(
        &self,
        request_id: &RequestId,
        end: chrono::DateTime<chrono::Utc>,
    ) -> usize {
        let mut n = 0;
        for entry in self.sessions.iter() {
            if &entry.request_id == request_id {
                // A session already told to end stays ended.
                entry.kill.send_if_modified(|c| {
                    if matches!(c, Control::Drop(_)) {
                        return false;
                    }
                    *c = Control::ExtendTo(end);
                    true
                });
                n += 1;
            }
        }
        n
    }

    /// The requests of the live sessions and of the spare backends, each once.
    pub(crate) fn live_requests(&self) -> std::collections::HashSet<RequestId> {
        let mut live: std::collections::HashSet<RequestId> =
            self.sessions.iter().map(|e| e.request_id.clone()).collect();
        live.extend(self.spares.grants());
        live
    }

    /// Takes one of its grant's `limit` places for a registered session, waiting up to
    /// `wait` for one to be given back. Refused: the places held when it gave up.
    pub(crate) async fn take_place(
        &self,
        session: &SessionId,
        request_id: &RequestId,
        limit: u32,
        wait: std::time::Duration,
    ) -> Result<(), u32> {
        let hold = super::places::PlaceHold::take(&self.places, request_id, limit, wait).await?;
        // Not registered (no session's task calls it so): the hold is dropped, given back.
        if let Some(mut entry) = self.sessions.get_mut(session) {
            entry.place = Some(hold);
        }
        Ok(())
    }

    /// Logins waiting for one of their grant's places now (`/metrics`).
    pub(crate) fn logins_waiting_for_place(&self) -> usize {
        self.places.waiting()
    }

    /// The reapers' turn of `request_id`'s grant; one no reaper holds or waits for is
    /// forgotten when the next is asked for.
    pub(crate) fn reaper_turn(&self, request_id: &RequestId) -> Arc<tokio::sync::Mutex<()>> {
        self.reaper_turns
            .retain(|_, turn| Arc::strong_count(turn) > 1);
        self.reaper_turns
            .entry(request_id.clone())
            .or_default()
            .clone()
    }

    /// The session's relay is over: its place, if it holds one, for the caller to give
    /// back (drop) now, or once its backend is gone.
    pub(crate) fn relay_ended(&self, session: &SessionId) -> Option<super::places::PlaceHold> {
        self.sessions
            .get_mut(session)
            .and_then(|mut entry| entry.place.take())
    }

    pub fn live_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Issues a fresh client-facing cancel key for `target`.
    pub fn issue_cancel_key(&self, target: CancelTarget) -> (i32, i32) {
        let mut rng = rand::rng();
        loop {
            let key = (rng.random_range(1..i32::MAX), rng.random::<i32>());
            if let dashmap::Entry::Vacant(slot) = self.cancel_keys.entry(key) {
                slot.insert(target);
                return key;
            }
        }
    }

    pub fn cancel_target(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        self.cancel_keys.get(&(pid, secret)).map(|t| t.clone())
    }

    pub fn forget_cancel_key(&self, key: (i32, i32)) {
        self.cancel_keys.remove(&key);
    }

    /// Drops the sessions of each request revoked through the control plane.
    pub async fn follow_revocations(
        &self,
        lockbox: &Lockbox,
        mut revoked: broadcast::Receiver<RequestId>,
    ) {
        loop {
            match revoked.recv().await {
                Ok(id) => {
                    let n = self.drop_request(&id, DropReason::Revoked);
                    tracing::info!(request_id = %id, sessions = n, "request revoked; dropping its sessions");
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Which requests were revoked is lost: ask the store about every live one.
                    tracing::warn!(
                        missed,
                        "revocation notices were missed; re-checking live sessions"
                    );
                    self.recheck_all(lockbox).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Drops every session whose request is no longer approved (or cannot be read: fail closed).
    async fn recheck_all(&self, lockbox: &Lockbox) {
        let mut requests: Vec<RequestId> = self.live_requests().into_iter().collect();
        requests.sort();
        for id in requests {
            let still_approved = match lockbox.store.get(&id).await {
                Ok(Some(r)) => r.effective_status(chrono::Utc::now()) == RequestStatus::Active,
                Ok(None) | Err(_) => false,
            };
            if !still_approved {
                self.drop_request(&id, DropReason::Revoked);
            }
        }
    }
}
