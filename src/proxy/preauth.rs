//! Connections that have not yet presented a token. They cost the proxy a slot of
//! `max_connections` and prove nothing, so each source may hold only a few at once and
//! for a short time (`PREAUTH_TIMEOUT`): when a source opens one more, one of its own
//! unauthenticated connections is closed (shed) instead of refusing the new one, so a
//! client that opens silent sockets costs itself its own earlier ones. When every slot of
//! the proxy is held, a new connection sheds one of them too, wherever it comes from,
//! rather than being refused: silent sockets from a few sources cannot fill the proxy (an
//! attack review locked every engineer out from four addresses).
//!
//! The one shed is the one that has gone longest without a step towards its token (`Stage`:
//! its first packet, its ClientHello, the end of its TLS handshake, its startup packet; a new
//! connection has just taken one), then the one of the source holding most. A login under way
//! takes a step every round trip, while a socket that stalls — silent, or after an
//! SSLRequest, or after its startup — only ages: a flood sheds its own stalled sockets first,
//! and reaches an engineer's login only once it replaces all of them faster than that login's
//! round trip (a quarter of `max_connections` per round trip from one address, all of them
//! from several), or somewhat slower with sockets that hold their steps back and take them
//! on purpose (a third review did so): a heuristic that raises the price of a flood, no
//! guarantee. Two reviews broke the rules before it: the oldest first lost every 150 ms login
//! behind the same NAT as a flood, and the least advanced first lost every login, still
//! silent for its first half round trip, to sockets that sent an SSLRequest and stalled.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

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
    /// Sent its TLS ClientHello.
    Hello = 2,
    /// Finished its TLS handshake.
    Encrypted = 3,
    /// Sent its startup packet on the transport tokens are taken on.
    Started = 4,
}

/// Where a connection says how far it got (see [`Stage`]), and when it last got further.
#[derive(Clone)]
pub(crate) struct Progress(Arc<Steps>);

struct Steps {
    stage: AtomicU8,
    /// When it took its last step, in nanoseconds after `origin`.
    since: AtomicU64,
    origin: Instant,
}

impl Default for Progress {
    /// A connection accepted now: its first step.
    fn default() -> Progress {
        Progress(Arc::new(Steps {
            stage: AtomicU8::new(Stage::Silent as u8),
            since: AtomicU64::new(0),
            origin: Instant::now(),
        }))
    }
}

impl Progress {
    /// A step to `stage`; one it had reached already is none.
    pub(crate) fn reached(&self, stage: Stage) {
        let steps = &self.0;
        if steps.stage.fetch_max(stage as u8, Ordering::Relaxed) < stage as u8 {
            let nanos = steps.origin.elapsed().as_nanos();
            steps
                .since
                .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// When it took its last step.
    fn last_step(&self) -> Instant {
        let steps = &self.0;
        steps.origin + Duration::from_nanos(steps.since.load(Ordering::Relaxed))
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

/// The connection of `open` (one source's, oldest first) to shed first: the one whose last
/// step towards its token is longest ago (of two alike, the oldest).
fn longest_stalled(open: &BTreeMap<u64, Entry>) -> Option<(Instant, u64)> {
    open.iter()
        .map(|(id, entry)| (entry.progress.last_step(), *id))
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
    /// How far it got and when it last got further, which decides who is shed first.
    pub(crate) progress: Progress,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PreAuth {
    /// Counts a new connection of `ip`, shedding that source's ones longest without a step
    /// past `cap`; also says how many it shed.
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
            let Some((_, victim)) = longest_stalled(open) else {
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
    /// connection when every slot is held: the one longest without a step, then of the
    /// source holding most. False when there is none (every slot holds a session).
    pub(crate) fn shed_one_anywhere(&self) -> bool {
        let mut state = lock(&self.state);
        let victim = state
            .by_source
            .iter()
            .filter_map(|(source, open)| {
                let (last_step, id) = longest_stalled(open)?;
                Some(((last_step, std::cmp::Reverse(open.len()), id), *source))
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

    /// Within a source, the socket longest without a step goes: an engineer's login that
    /// took its last step after the flood's sockets took theirs is kept, whether it was
    /// accepted before them (an oldest-first rule shed it) or after (a least-advanced-first
    /// rule shed it, still silent, for sockets that sent an SSLRequest and stalled).
    #[tokio::test(start_paused = true)]
    async fn a_source_past_its_cap_sheds_the_connection_longest_without_a_step() {
        let pre = PreAuth::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let step = Duration::from_millis(10);
        let engineer = pre.enter(a, 3).0;
        tokio::time::advance(step).await;
        let stalled = [pre.enter(a, 3).0, pre.enter(a, 3).0];
        for socket in &stalled {
            socket.progress.reached(Stage::Spoke);
        }
        tokio::time::advance(step).await;
        engineer.progress.reached(Stage::Spoke);
        tokio::time::advance(step).await;
        let (newer, shed) = pre.enter(a, 3);
        assert_eq!(shed, 1);
        stalled[0].shed.notified().await;
        // A step taken again is none: the stalled socket stays as stalled as it was.
        stalled[1].progress.reached(Stage::Spoke);
        tokio::time::advance(step).await;
        let newest = pre.enter(a, 3).0;
        stalled[1].shed.notified().await;
        // A newcomer, still silent, is the one that stepped last of all.
        tokio::time::advance(step).await;
        let (_late, _) = pre.enter(a, 3);
        engineer.shed.notified().await;
        assert_eq!(pre.open(a), 3);
        drop((newer, newest));
    }

    /// A full proxy sheds the connection longest without a step, of the source holding
    /// most when two took their last step at once.
    #[tokio::test(start_paused = true)]
    async fn a_full_proxy_sheds_the_connection_longest_without_a_step() {
        let pre = PreAuth::default();
        let [a, b, c]: [IpAddr; 3] =
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"].map(|ip| ip.parse().unwrap());
        let flood = [pre.enter(a, 10).0, pre.enter(a, 10).0];
        let lone = pre.enter(b, 10).0;
        tokio::time::advance(Duration::from_millis(10)).await;
        let engineer = pre.enter(c, 10).0;
        assert!(pre.shed_one_anywhere());
        flood[0].shed.notified().await;
        assert!(pre.shed_one_anywhere());
        // Alike in time, one each now: the oldest.
        flood[1].shed.notified().await;
        assert!(pre.shed_one_anywhere());
        lone.shed.notified().await;
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
