//! Connections that have not yet presented a token. They cost the proxy a slot of
//! `max_connections` and prove nothing, so each source may hold only a few at once and
//! for a short time (`PREAUTH_TIMEOUT`): when a source opens one more, one of its own
//! unauthenticated connections is closed (shed) instead of refusing the new one, so a
//! client that opens silent sockets costs itself its own earlier ones. When every slot of
//! the proxy is held, a new connection sheds one of them too, wherever it comes from,
//! rather than being refused: silent sockets from a few sources cannot fill the proxy (an
//! attack review locked every engineer out from four addresses). The one shed is the one
//! that has done least to log in (`Stage`: a silent socket before one mid-handshake, before
//! one that sent its startup), then the one of the source holding most, then the oldest: an
//! engineer whose login is under way is never shed for a flood of sockets that say nothing,
//! however slow its round trips (a second review lost every 150 ms login behind the same
//! NAT as such a flood when the oldest went first).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::source::Source;

/// How long a client has from accept to sending its token (TLS handshake, startup packet
/// and password message).
pub(crate) const PREAUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The share of `max_connections` one source may hold before it logs in.
const SHARE_DIVISOR: usize = 4;

/// The unauthenticated connections of one source may hold at most this many slots.
pub(crate) fn per_source_cap(max_connections: usize) -> usize {
    (max_connections / SHARE_DIVISOR).max(1)
}

/// How many connections past `max_connections` may be open for a moment while the ones
/// they shed close (each shed one gives its slot back as soon as its task sees it).
pub(crate) fn shedding_headroom(max_connections: usize) -> usize {
    per_source_cap(max_connections)
}

/// How far an unauthenticated connection has got towards its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Stage {
    /// Accepted; no whole packet yet.
    Silent = 0,
    /// Sent a whole startup-phase packet (an SSLRequest, say).
    Spoke = 1,
    /// Finished its TLS handshake.
    Encrypted = 2,
    /// Sent its startup packet on the transport tokens are taken on.
    Started = 3,
}

/// Where a connection says how far it got (see [`Stage`]).
#[derive(Clone)]
pub(crate) struct Progress(Arc<AtomicU8>);

impl Default for Progress {
    fn default() -> Progress {
        Progress(Arc::new(AtomicU8::new(Stage::Silent as u8)))
    }
}

impl Progress {
    pub(crate) fn reached(&self, stage: Stage) {
        self.0.fetch_max(stage as u8, Ordering::Relaxed);
    }

    fn stage(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Entry {
    shed: Arc<Notify>,
    progress: Progress,
}

#[derive(Default)]
struct State {
    next: u64,
    by_source: HashMap<Source, BTreeMap<u64, Entry>>,
}

impl State {
    /// Closes the connection `id` of `source` (told through its `shed`) and forgets it at
    /// once, so it is never shed twice.
    fn shed(&mut self, source: Source, id: u64) {
        let Some(open) = self.by_source.get_mut(&source) else {
            return;
        };
        if let Some(entry) = open.remove(&id) {
            entry.shed.notify_one();
        }
        if open.is_empty() {
            self.by_source.remove(&source);
        }
    }
}

/// The connection of `open` (one source's, oldest first) to shed first: the least far
/// along, the oldest of those.
fn least_along(open: &BTreeMap<u64, Entry>) -> Option<(u8, u64)> {
    open.iter()
        .map(|(id, entry)| (entry.progress.stage(), *id))
        .min()
}

/// The unauthenticated connections open now, per source, oldest first.
#[derive(Default)]
pub(crate) struct PreAuth {
    state: Arc<Mutex<State>>,
}

/// One unauthenticated connection; it stops counting when dropped (after its login).
pub(crate) struct Pending {
    state: Arc<Mutex<State>>,
    source: Source,
    id: u64,
    /// Notified when a newer connection takes its place.
    pub(crate) shed: Arc<Notify>,
    /// How far it got, which decides who is shed first.
    pub(crate) progress: Progress,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PreAuth {
    /// Counts a new connection of `ip`, shedding that source's least advanced ones past
    /// `cap`; also says how many it shed.
    pub(crate) fn enter(&self, ip: IpAddr, cap: usize) -> (Pending, usize) {
        let source = Source::of(ip);
        let shed = Arc::new(Notify::new());
        let progress = Progress::default();
        let mut state = lock(&self.state);
        let id = state.next;
        state.next += 1;
        let entry = Entry {
            shed: shed.clone(),
            progress: progress.clone(),
        };
        state.by_source.entry(source).or_default().insert(id, entry);
        let mut shed_here = 0;
        while let Some(open) = state.by_source.get(&source) {
            if open.len() <= cap.max(1) {
                break;
            }
            let Some((_, victim)) = least_along(open) else {
                break;
            };
            state.shed(source, victim);
            shed_here += 1;
        }
        let pending = Pending {
            state: self.state.clone(),
            source,
            id,
            shed,
            progress,
        };
        (pending, shed_here)
    }

    /// Sheds one unauthenticated connection of any source to make room for a new
    /// connection when every slot is held: the least advanced, of the source holding most,
    /// the oldest. False when there is none (every slot holds a session).
    pub(crate) fn shed_one_anywhere(&self) -> bool {
        let mut state = lock(&self.state);
        let victim = state
            .by_source
            .iter()
            .filter_map(|(source, open)| {
                let (stage, id) = least_along(open)?;
                Some(((stage, std::cmp::Reverse(open.len()), id), *source))
            })
            .min_by_key(|(key, _)| *key);
        match victim {
            Some(((_, _, id), source)) => {
                state.shed(source, id);
                true
            }
            None => false,
        }
    }

    /// Sources with connections not logged in yet (the census counts them).
    pub(crate) fn sources_held(&self) -> usize {
        lock(&self.state).by_source.len()
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        lock(&self.state)
            .by_source
            .get(&Source::of(ip))
            .map_or(0, BTreeMap::len)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if let Some(open) = state.by_source.get_mut(&self.source) {
            open.remove(&self.id);
            if open.is_empty() {
                state.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_source_past_its_cap_loses_its_oldest_connection() {
        let pre = PreAuth::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = pre.enter(a, 2).0;
        let second = pre.enter(a, 2).0;
        let other = pre.enter(b, 2).0;
        let third = pre.enter(a, 2).0;
        // The oldest of `a` is told to go (the permit is stored), the others are not.
        first.shed.notified().await;
        assert_eq!(pre.open(a), 2);
        assert_eq!(pre.open(b), 1);
        drop(first);
        drop((second, third, other));
        assert_eq!(pre.open(a), 0);
        assert_eq!(pre.open(b), 0);
    }

    /// A source's silent socket goes before its own older connection that is logging in:
    /// a slow engineer behind the same address as a flood keeps its login.
    #[tokio::test]
    async fn a_source_past_its_cap_sheds_the_connection_that_did_least() {
        let pre = PreAuth::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let engineer = pre.enter(a, 2).0;
        engineer.progress.reached(Stage::Encrypted);
        let silent = pre.enter(a, 2).0;
        let newer = pre.enter(a, 2).0;
        silent.shed.notified().await;
        assert_eq!(pre.open(a), 2);
        // Of two alike, the oldest goes.
        let newest = pre.enter(a, 2).0;
        newer.shed.notified().await;
        drop(newest);
        // Past its startup it outlasts any number of sockets that say nothing.
        engineer.progress.reached(Stage::Started);
        let flood: Vec<Pending> = (0..50).map(|_| pre.enter(a, 2).0).collect();
        assert_eq!(pre.open(a), 2);
        let still = tokio::time::timeout(Duration::from_millis(50), engineer.shed.notified());
        assert!(still.await.is_err(), "the engineer's login was shed");
        drop(flood);
    }

    /// A full proxy sheds the least advanced connection, of the source holding most.
    #[tokio::test]
    async fn a_full_proxy_sheds_the_least_advanced_of_the_biggest_source() {
        let pre = PreAuth::default();
        let [a, b, c]: [IpAddr; 3] =
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"].map(|ip| ip.parse().unwrap());
        let engineer = pre.enter(c, 10).0;
        engineer.progress.reached(Stage::Spoke);
        let lone = pre.enter(b, 10).0;
        let flood = [pre.enter(a, 10).0, pre.enter(a, 10).0];
        assert!(pre.shed_one_anywhere());
        flood[0].shed.notified().await;
        assert!(pre.shed_one_anywhere());
        // One silent socket each now: the oldest goes.
        lone.shed.notified().await;
        assert!(pre.shed_one_anywhere());
        flood[1].shed.notified().await;
        assert!(pre.shed_one_anywhere());
        engineer.shed.notified().await;
        assert!(!pre.shed_one_anywhere(), "nothing is left to shed");
        assert_eq!(pre.sources_held(), 0);
    }

    #[test]
    fn the_cap_is_a_share_of_max_connections() {
        assert_eq!(per_source_cap(4), 1);
        assert_eq!(per_source_cap(1), 1);
        assert_eq!(per_source_cap(100), 25);
    }
}
