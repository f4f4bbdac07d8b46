//! A grant's places: how many of its sessions this proxy holds at once, under the grant's
//! session limit. A login takes a place after admission and gives it back when its relay
//! ends (or, when its backend may outlive it, once the reaper saw the backend gone); a
//! login that finds every place taken waits a moment for one (`PLACE_WAIT`) before it is
//! refused. Without the wait, a client that closes and connects again at once (a script
//! running `psql -c` in a loop) could be refused because the proxy had not yet seen its
//! last session's close, a race a busy machine makes common.
//!
//! At most as many logins wait as the grant has places: each wait is a client connection
//! held (`[proxy] max_connections`), and an attack review held every one of them with one
//! token of a one-session grant while others' logins were refused. Past that, a login is
//! refused at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::ids::RequestId;

/// How long a login waits for one of its grant's places to be given back (and, for the
/// server's own count of the grant's role, for a backend that is exiting to be gone)
/// before it is refused with 53300.
pub(crate) const PLACE_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(crate) struct Places {
    /// Per grant holding a place or waiting for one; others have no entry.
    grants: Mutex<HashMap<RequestId, Grant>>,
}

#[derive(Default)]
struct Grant {
    held: u32,
    waiting: u32,
    /// Fires when one of this grant's places is given back.
    freed: Arc<Notify>,
}

impl Places {
    /// Takes one of `request`'s `limit` places, waiting until `wait` has passed for one to
    /// be given back, unless as many logins wait already. Refused: the places held.
    pub(crate) async fn take(
        &self,
        request: &RequestId,
        limit: u32,
        wait: Duration,
    ) -> Result<(), u32> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let freed = {
                let mut grants = self.lock();
                let grant = grants.entry(request.clone()).or_default();
                if grant.held < limit {
                    grant.held += 1;
                    return Ok(());
                }
                if waiting.is_none() {
                    if grant.waiting >= limit || wait.is_zero() {
                        let held = grant.held;
                        forget_if_unused(&mut grants, request);
                        return Err(held);
                    }
                    grant.waiting += 1;
                    waiting = Some(Waiting(self, request));
                }
                // Registered while the map is held, so a place given back once it is let
                // go still wakes this login.
                let mut freed = Box::pin(grant.freed.clone().notified_owned());
                freed.as_mut().enable();
                freed
            };
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(self.held(request));
            }
        }
    }

    /// Gives back a place `take` handed out.
    fn give_back(&self, request: &RequestId) {
        let freed = {
            let mut grants = self.lock();
            let Some(grant) = grants.get_mut(request) else {
                return;
            };
            grant.held = grant.held.saturating_sub(1);
            let freed = grant.freed.clone();
            forget_if_unused(&mut grants, request);
            freed
        };
        freed.notify_waiters();
    }

    /// Logins waiting for a place now, every grant's (`/metrics`).
    pub(crate) fn waiting(&self) -> usize {
        self.lock().values().map(|g| g.waiting as usize).sum()
    }

    /// Places `request` holds now.
    fn held(&self, request: &RequestId) -> u32 {
        self.lock().get(request).map_or(0, |g| g.held)
    }

    /// The map holds plain counts, each changed in one statement: a panic elsewhere
    /// while it was held leaves nothing half-done in it.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Grant>> {
        self.grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn forget_if_unused(grants: &mut HashMap<RequestId, Grant>, request: &RequestId) {
    if grants
        .get(request)
        .is_some_and(|g| g.held == 0 && g.waiting == 0)
    {
        grants.remove(request);
    }
}

/// A login counted among its grant's waiting ones, however its wait ends (its task may be
/// dropped mid-wait).
struct Waiting<'a>(&'a Places, &'a RequestId);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut grants = self.0.lock();
        if let Some(grant) = grants.get_mut(self.1) {
            grant.waiting = grant.waiting.saturating_sub(1);
        }
        forget_if_unused(&mut grants, self.1);
    }
}

/// A place taken, given back when dropped.
pub(crate) struct PlaceHold {
    places: Arc<Places>,
    request: RequestId,
}

impl PlaceHold {
    /// Takes a place of `request` as `Places::take` does.
    pub(crate) async fn take(
        places: &Arc<Places>,
        request: &RequestId,
        limit: u32,
        wait: Duration,
    ) -> Result<PlaceHold, u32> {
        places.take(request, limit, wait).await?;
        Ok(PlaceHold {
            places: places.clone(),
            request: request.clone(),
        })
    }
}

impl Drop for PlaceHold {
    fn drop(&mut self) {
        self.places.give_back(&self.request);
    }
}

#[cfg(test)]
#[path = "places_tests.rs"]
mod tests;
