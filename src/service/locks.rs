//! One lock per request, held while a change of it is read, checked, recorded and stored.
//!
//! A lock exists only while someone holds or waits for it: the last guard out removes it,
//! so a process that sees thousands of requests a day does not keep one entry for each of
//! them for ever (the soak found this map growing with every request ever changed).

use std::sync::Arc;

use dashmap::DashMap;

use crate::ids::RequestId;

type Slot = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(crate) struct RequestLocks {
    map: Arc<DashMap<RequestId, Slot>>,
}

/// The lock of one request, held; dropping it releases the lock and, when nobody else
/// holds or waits for it, forgets it.
pub(crate) struct RequestGuard {
    id: RequestId,
    map: Arc<DashMap<RequestId, Slot>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl RequestLocks {
    /// Waits for the lock of `id`.
    pub(crate) async fn lock(&self, id: &RequestId) -> RequestGuard {
        // The clone is taken under the map's shard lock, so a guard being dropped sees it
        // in the count and leaves the entry in place.
        let slot = self.map.entry(id.clone()).or_default().clone();
        RequestGuard {
            id: id.clone(),
            map: self.map.clone(),
            guard: Some(slot.lock_owned().await),
        }
    }

    /// Requests whose lock is held or awaited now (the census counts it).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Release first, so the guard's own reference to the slot is gone.
        drop(self.guard.take());
        // Only the map's reference left: nobody holds it, nobody waits (a waiter holds a
        // clone), and anyone who comes later makes a new one under the shard lock.
        self.map
            .remove_if(&self.id, |_, slot| Arc::strong_count(slot) == 1);
    }
}

impl super::Lockbox {
    /// Requests whose lock is held or awaited now (the census counts them).
    pub(crate) fn locked_requests(&self) -> usize {
        self.locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> RequestId {
        RequestId(format!("req-{n}"))
    }

    #[tokio::test]
    async fn locks_of_requests_no_longer_changed_are_forgotten() {
        let locks = RequestLocks::default();
        for n in 0..100 {
            let guard = locks.lock(&id(n)).await;
            assert_eq!(locks.len(), 1);
            drop(guard);
        }
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn a_lock_someone_waits_for_stays_until_the_last_guard_goes() {
        let locks = Arc::new(RequestLocks::default());
        let first = locks.lock(&id(1)).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let second = locks.lock(&id(1)).await;
                // The first guard is gone, this one holds the same lock.
                let _ = tx.send(locks.len());
                drop(second);
            })
        };
        // Let the waiter queue up behind the first guard.
        while Arc::strong_count(&locks.map.get(&id(1)).expect("held").clone()) < 4 {
            tokio::task::yield_now().await;
        }
        drop(first);
        assert_eq!(rx.await.expect("the waiter got the lock"), 1);
        waiter.await.expect("waiter");
        assert_eq!(locks.len(), 0);
    }
}
