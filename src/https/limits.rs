//! How many connections the API holds, in total and per client address.
//!
//! A connection counts from `accept` until it is closed — during its TLS handshake, while
//! a request runs and while it idles between requests — so what a client holds open is
//! what it is charged for. When a new connection would go over a cap, the *oldest*
//! connection (of the same address for the per-address cap) is closed instead of refusing
//! the new one: refusing would let whoever opens connections first keep everyone else out
//! (the admin who wants to revoke a grant included), while shedding the oldest makes a
//! flood cost its sender its own earlier connections. Connections with no request in a
//! handler go first (idle, handshaking, or still sending a head: what a flood is made of).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// Caps on the API's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    pub total: usize,
    pub per_address: usize,
}

/// Most connections the API holds, when file descriptors allow it.
const MAX_TOTAL: usize = 512;
/// Most connections one client address holds: a CLI or a browser needs a handful, a
/// reverse proxy in front of the API a few dozen.
const MAX_PER_ADDRESS: usize = 64;
/// The API takes at most this share of the process's file descriptors, so that the
/// data-plane proxy, the audit sink and the store keep theirs whatever the API is sent.
const FD_SHARE_DIVISOR: u64 = 4;

impl Caps {
    /// The caps for a process allowed `fd_limit` open files.
    pub(crate) fn for_fd_limit(fd_limit: u64) -> Caps {
        let share = usize::try_from(fd_limit / FD_SHARE_DIVISOR).unwrap_or(usize::MAX);
        let total = share.clamp(1, MAX_TOTAL);
        Caps {
            total,
            per_address: MAX_PER_ADDRESS.min(total),
        }
    }
}

/// The connections open now, oldest first.
pub(crate) struct Tracker {
    caps: Caps,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Counted connections by admission order; a shed one is removed at once (it is
    /// closing) so it is never shed twice.
    open: BTreeMap<u64, Entry>,
    per_address: HashMap<IpAddr, usize>,
}

struct Entry {
    peer: IpAddr,
    shed: Arc<Notify>,
    busy: Arc<AtomicUsize>,
}

/// One admitted connection: its slot is given back when this is dropped.
pub(crate) struct Slot {
    tracker: Arc<Tracker>,
    id: u64,
    /// Notified when this connection is shed to make room for a newer one.
    pub shed: Arc<Notify>,
    /// Requests of this connection inside a handler now (`Busy`).
    busy: Arc<AtomicUsize>,
}

/// Counts a request as in a handler while it lives.
pub(crate) struct Busy(Arc<AtomicUsize>);

impl Slot {
    /// What the connection's service uses to mark each request it runs (`Busy`).
    pub(crate) fn busy_counter(&self) -> BusyCounter {
        BusyCounter(self.busy.clone())
    }
}

/// Hands out `Busy` marks for one connection's requests.
#[derive(Clone)]
pub(crate) struct BusyCounter(Arc<AtomicUsize>);

impl BusyCounter {
    pub(crate) fn mark(&self) -> Busy {
        self.0.fetch_add(1, Ordering::Relaxed);
        Busy(self.0.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tracker {
    pub(crate) fn new(caps: Caps) -> Arc<Tracker> {
        Arc::new(Tracker {
            caps,
            state: Mutex::default(),
        })
    }

    /// Counts a new connection from `peer`, shedding the oldest one over a cap.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Slot {
        // The lock guards plain counters: a panic elsewhere cannot leave them inconsistent
        // in a way that matters more than refusing every connection would.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.per_address.get(&peer).copied().unwrap_or(0) >= self.caps.per_address {
            let oldest = state.oldest(|e| e.peer == peer);
            state.shed(oldest);
        }
        if state.open.len() >= self.caps.total {
            let oldest = state.oldest(|_| true);
            state.shed(oldest);
        }
        let id = state.next;
        state.next += 1;
        let entry = Entry {
            peer,
            shed: Arc::new(Notify::new()),
            busy: Arc::default(),
        };
        let slot = Slot {
            tracker: self.clone(),
            id,
            shed: entry.shed.clone(),
            busy: entry.busy.clone(),
        };
        state.open.insert(id, entry);
        *state.per_address.entry(peer).or_default() += 1;
        slot
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .len()
    }
}

impl State {
    /// The oldest connection `matching`, preferring one with no request in a handler.
    fn oldest(&self, matching: impl Fn(&Entry) -> bool) -> Option<u64> {
        let mut candidates = self.open.iter().filter(|(_, e)| matching(e));
        let first = candidates.clone().next().map(|(id, _)| *id);
        candidates
            .find(|(_, e)| e.busy.load(Ordering::Relaxed) == 0)
            .map(|(id, _)| *id)
            .or(first)
    }

    fn shed(&mut self, id: Option<u64>) {
        let Some(entry) = id.and_then(|id| self.forget(id)) else {
            return;
        };
        tracing::debug!(peer = %entry.peer, "API connection shed to make room for a newer one");
        // `notify_one` keeps the wake-up if the connection is not waiting yet.
        entry.shed.notify_one();
    }

    fn forget(&mut self, id: u64) -> Option<Entry> {
        let entry = self.open.remove(&id)?;
        if let Some(n) = self.per_address.get_mut(&entry.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&entry.peer);
            }
        }
        Some(entry)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self
            .tracker
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// Whether `slot` has been told to close (without waiting).
    fn was_shed(slot: &Slot) -> bool {
        let mut notified = pin!(slot.shed.notified());
        let mut cx = Context::from_waker(Waker::noop());
        matches!(notified.as_mut().poll(&mut cx), Poll::Ready(()))
    }

    #[test]
    fn caps_leave_most_file_descriptors_to_the_rest_of_the_process() {
        assert_eq!(
            Caps::for_fd_limit(300),
            Caps {
                total: 75,
                per_address: 64
            }
        );
        assert_eq!(
            Caps::for_fd_limit(1 << 20),
            Caps {
                total: 512,
                per_address: 64
            }
        );
        assert_eq!(
            Caps::for_fd_limit(0),
            Caps {
                total: 1,
                per_address: 1
            }
        );
    }

    #[test]
    fn a_flooding_address_sheds_its_own_oldest_connections_only() {
        let tracker = Tracker::new(Caps {
            total: 10,
            per_address: 2,
        });
        let other = tracker.admit(ip(2));
        let first = tracker.admit(ip(1));
        let second = tracker.admit(ip(1));
        assert!(!was_shed(&first));
        let third = tracker.admit(ip(1));
        assert!(was_shed(&first), "the flooder's oldest goes");
        assert!(!was_shed(&second) && !was_shed(&third));
        assert!(!was_shed(&other), "another address keeps its connection");
        assert_eq!(tracker.open(), 3);
    }

    #[test]
    fn over_the_total_the_oldest_connection_is_shed() {
        let tracker = Tracker::new(Caps {
            total: 2,
            per_address: 2,
        });
        let a = tracker.admit(ip(1));
        let b = tracker.admit(ip(2));
        let c = tracker.admit(ip(3));
        assert!(was_shed(&a));
        assert!(!was_shed(&b) && !was_shed(&c));
        assert_eq!(tracker.open(), 2);
    }

    #[test]
    fn a_connection_serving_a_request_is_shed_after_idle_ones() {
        let tracker = Tracker::new(Caps {
            total: 3,
            per_address: 3,
        });
        let working = tracker.admit(ip(1));
        let _request = working.busy_counter().mark();
        let idle = tracker.admit(ip(2));
        let third = tracker.admit(ip(3));
        let fourth = tracker.admit(ip(4));
        assert!(was_shed(&idle), "the idle one goes first");
        assert!(!was_shed(&working));
        let _marks = (third.busy_counter().mark(), fourth.busy_counter().mark());
        let _fifth = tracker.admit(ip(5));
        assert!(was_shed(&working), "with none idle, the oldest goes");
        assert!(!was_shed(&third) && !was_shed(&fourth));
    }

    #[test]
    fn a_closed_connection_gives_its_slot_back() {
        let tracker = Tracker::new(Caps {
            total: 1,
            per_address: 1,
        });
        drop(tracker.admit(ip(1)));
        let b = tracker.admit(ip(1));
        assert!(!was_shed(&b));
        assert_eq!(tracker.open(), 1);
        // A shed connection's slot, dropped later, does not free someone else's.
        let c = tracker.admit(ip(1));
        drop(b);
        assert!(!was_shed(&c));
        assert_eq!(tracker.open(), 1);
    }
}
