//! A grant's places: how many of its sessions this proxy holds at once, under the grant's
//! session limit. A login takes a place after admission and gives it back when its relay
//! ends; a login that finds every place taken waits a moment for one (`PLACE_WAIT`)
//! before it is refused. Without the wait, a client that closes and connects again at once
//! (a script running `psql -c` in a loop) could be refused because the proxy had not yet
//! seen its last session's close, a race a busy machine makes common.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::ids::RequestId;

/// How long a login waits for one of its grant's places to be given back (and, for the
/// server's own count of the grant's role, for a backend that is exiting to be gone)
/// before it is refused with 53300.
pub(crate) const PLACE_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(crate) struct Places {
    /// Places held per grant; a grant holding none has no entry.
    held: Mutex<HashMap<RequestId, u32>>,
    /// Fires when any place is given back.
    freed: Notify,
}

impl Places {
    /// Takes one of `request`'s `limit` places, waiting until `wait` has passed for one to
    /// be given back. Refused: the places held when it gave up.
    pub(crate) async fn take(
        &self,
        request: &RequestId,
        limit: u32,
        wait: Duration,
    ) -> Result<(), u32> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a place given back between the check and
            // the wait still wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let held = match self.try_take(request, limit) {
                Ok(()) => return Ok(()),
                Err(held) => held,
            };
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(held);
            }
        }
    }

    fn try_take(&self, request: &RequestId, limit: u32) -> Result<(), u32> {
        let mut held = self.lock();
        let count = held.entry(request.clone()).or_insert(0);
        if *count < limit {
            *count += 1;
            return Ok(());
        }
        let full = *count;
        if full == 0 {
            held.remove(request);
        }
        Err(full)
    }

    /// Gives back a place `take` handed out.
    pub(crate) fn give_back(&self, request: &RequestId) {
        {
            let mut held = self.lock();
            if let Some(count) = held.get_mut(request) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    held.remove(request);
                }
            }
        }
        self.freed.notify_waiters();
    }

    /// Places `request` holds now.
    #[cfg(test)]
    fn held(&self, request: &RequestId) -> u32 {
        self.lock().get(request).copied().unwrap_or(0)
    }

    /// The map holds plain counts, each changed in one statement: a panic elsewhere
    /// while it was held leaves nothing half-done in it.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, u32>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn grant(id: &str) -> RequestId {
        RequestId(id.into())
    }

    #[tokio::test]
    async fn a_grant_holds_at_most_its_limit_and_others_are_apart() {
        let places = Places::default();
        let a = grant("req-a");
        places.take(&a, 2, Duration::ZERO).await.expect("first");
        places.take(&a, 2, Duration::ZERO).await.expect("second");
        assert_eq!(places.take(&a, 2, Duration::ZERO).await, Err(2));
        places
            .take(&grant("req-b"), 1, Duration::ZERO)
            .await
            .expect("another grant's place");
        places.give_back(&a);
        assert_eq!(places.held(&a), 1);
        places
            .take(&a, 2, Duration::ZERO)
            .await
            .expect("given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_at_the_limit_takes_a_place_given_back_while_it_waits() {
        let places = Arc::new(Places::default());
        let a = grant("req-a");
        places.take(&a, 1, Duration::ZERO).await.expect("first");
        let waiting = {
            let (places, a) = (places.clone(), a.clone());
            tokio::spawn(async move { places.take(&a, 1, PLACE_WAIT).await })
        };
        tokio::time::sleep(PLACE_WAIT / 2).await;
        assert!(!waiting.is_finished(), "it waits for a place");
        places.give_back(&a);
        assert_eq!(waiting.await.expect("task"), Ok(()));
        assert_eq!(places.held(&a), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_is_refused_when_no_place_is_given_back_in_time() {
        let places = Places::default();
        let a = grant("req-a");
        places.take(&a, 1, Duration::ZERO).await.expect("first");
        let start = tokio::time::Instant::now();
        assert_eq!(places.take(&a, 1, PLACE_WAIT).await, Err(1));
        assert!(start.elapsed() >= PLACE_WAIT, "it waited the whole time");
    }

    #[tokio::test(start_paused = true)]
    async fn two_logins_waiting_for_one_place_get_it_one_at_a_time() {
        let places = Arc::new(Places::default());
        let a = grant("req-a");
        places.take(&a, 1, Duration::ZERO).await.expect("first");
        let wait = |places: Arc<Places>, a: RequestId| {
            tokio::spawn(async move { places.take(&a, 1, PLACE_WAIT).await })
        };
        let (one, two) = (
            wait(places.clone(), a.clone()),
            wait(places.clone(), a.clone()),
        );
        tokio::task::yield_now().await;
        places.give_back(&a);
        let (one, two) = (one.await.expect("task"), two.await.expect("task"));
        assert!(
            one.is_ok() != two.is_ok(),
            "exactly one of them took the place: {one:?} {two:?}"
        );
        assert_eq!(places.held(&a), 1);
    }

    #[test]
    fn giving_back_a_grants_last_place_forgets_it() {
        let places = Places::default();
        let a = grant("req-a");
        assert!(places.try_take(&a, 1).is_ok());
        places.give_back(&a);
        assert!(places.lock().is_empty());
        assert_eq!(places.try_take(&a, 0), Err(0));
        assert!(places.lock().is_empty(), "a refusal leaves no entry behind");
    }
}
