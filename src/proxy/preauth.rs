//! Connections that have not yet presented a token. They cost the proxy a slot of
//! `max_connections` and prove nothing, so each source may hold only a few at once and
//! for a short time (`PREAUTH_TIMEOUT`): when a source opens one more, its *oldest*
//! unauthenticated connection is closed (shed) instead of refusing the new one, so a
//! client that opens silent sockets costs itself its own earlier ones and never keeps an
//! engineer at the same address out (the `https::limits` rule for the API, applied here).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
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

#[derive(Default)]
struct State {
    next: u64,
    by_source: HashMap<Source, BTreeMap<u64, Arc<Notify>>>,
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
    /// Notified when a newer connection of the same source takes its place.
    pub(crate) shed: Arc<Notify>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PreAuth {
    /// Counts a new connection of `ip`, shedding that source's oldest ones past `cap`.
    pub(crate) fn enter(&self, ip: IpAddr, cap: usize) -> Pending {
        let source = Source::of(ip);
        let shed = Arc::new(Notify::new());
        let mut state = lock(&self.state);
        let id = state.next;
        state.next += 1;
        let open = state.by_source.entry(source).or_default();
        open.insert(id, shed.clone());
        while open.len() > cap.max(1) {
            // A shed connection is removed at once, so it is never shed twice.
            if let Some((_, oldest)) = open.pop_first() {
                oldest.notify_one();
            }
        }
        Pending {
            state: self.state.clone(),
            source,
            id,
            shed,
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
        let first = pre.enter(a, 2);
        let second = pre.enter(a, 2);
        let other = pre.enter(b, 2);
        let third = pre.enter(a, 2);
        // The oldest of `a` is told to go (the permit is stored), the others are not.
        first.shed.notified().await;
        assert_eq!(pre.open(a), 2);
        assert_eq!(pre.open(b), 1);
        drop(first);
        drop((second, third, other));
        assert_eq!(pre.open(a), 0);
        assert_eq!(pre.open(b), 0);
    }

    #[test]
    fn the_cap_is_a_share_of_max_connections() {
        assert_eq!(per_source_cap(4), 1);
        assert_eq!(per_source_cap(1), 1);
        assert_eq!(per_source_cap(100), 25);
    }
}
