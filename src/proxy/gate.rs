//! What the proxy checks at accept, before any work for a connection: the cap on
//! connections (`[proxy] max_connections`, FATAL 53300 past it) and the per-source limit
//! on failed logins (`[proxy] failed_login_limit` per `failed_login_window`).
//!
//! A source past its failed-login limit is refused when its token fails verification (a
//! valid token from the same NAT is still admitted, see `session::refused_token`), and
//! its failures are no longer audited one by one: they are counted, and one
//! `logins_throttled` record per source and window carries the count. So a client that
//! hammers the proxy with bad tokens costs a bounded number of audit records (and export
//! partitions), whatever its rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::source::Source;

/// Sources tracked at most. Past it, every source not in the table shares one window
/// (`Key::Others`): memory stays bounded under a spread-out attack and new sources are
/// still limited (together), never let through unlimited.
const MAX_SOURCES: usize = 65_536;

/// What a failed-login window counts against: a host (`Source`, an IPv6 /64), or every
/// source that found the table full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Host(Source),
    Others,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Host(source) => source.fmt(f),
            Key::Others => f.write_str("other sources (failed-login table full)"),
        }
    }
}

/// Refused connections being told why at once; past it a refused connection is closed
/// without a word, so a flood cannot make the proxy hold a task and socket per attempt.
const MAX_REFUSING: usize = 256;

/// Failed logins of one source in its current window.
struct Window {
    started: Instant,
    started_at: DateTime<Utc>,
    failures: u32,
    /// Failures and refusals past the limit, not audited one by one.
    unrecorded: u64,
}

/// A summary of one source's window, to be audited as `logins_throttled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Throttled {
    /// The source as audited: an address, an IPv6 /64, or the shared window.
    pub(crate) source: String,
    pub(crate) since: DateTime<Utc>,
    pub(crate) count: u64,
}

/// Connection counting and failed-login windows; lives in the `Registry`.
#[derive(Default)]
pub(crate) struct Gate {
    open: AtomicUsize,
    /// Farewells given their full patience now (see [`Slot::into_farewell_pass`]).
    farewells: AtomicUsize,
    /// Of those, how many each engineer's sessions hold: sessions ended when their
    /// engineer chose (a revoke of their own grants, an expiry they saw coming) must not
    /// hold every pass.
    farewells_by_engineer: Mutex<HashMap<String, usize>>,
    refusing: Arc<AtomicUsize>,
    windows: Mutex<HashMap<Key, Window>>,
}

/// One counted connection; the count goes down when it is dropped.
pub(crate) struct Slot {
    gate: Arc<super::Registry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.gate.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slot {
    /// Gives the connection's slot back as its session ends, and takes a pass for its
    /// farewell if fewer than `max` farewells hold one. A farewell does not hold a slot (a
    /// client slow to read why its session ended must not keep another engineer out), so
    /// passes bound how many client sockets wait out slow readers beside the sessions.
    ///
    /// With `engineer` (whose session it was, and the most passes one engineer's sessions
    /// may hold at a time), the pass is also counted against that engineer.
    pub(crate) fn into_farewell_pass(
        self,
        max: usize,
        engineer: Option<(&str, usize)>,
    ) -> Option<FarewellPass> {
        let gate = self.gate.clone();
        drop(self);
        // Held across the check and the count, so two ends of one engineer's sessions
        // cannot both pass the check.
        let mut by_engineer = gate.gate.farewells_by_engineer();
        if let Some((name, most)) = engineer {
            if by_engineer.get(name).copied().unwrap_or(0) >= most {
                return None;
            }
        }
        let taken = gate
            .gate
            .farewells
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            return None;
        }
        let engineer = engineer.map(|(name, _)| {
            *by_engineer.entry(name.to_owned()).or_default() += 1;
            name.to_owned()
        });
        drop(by_engineer);
        // Built only when taken: a pass dropped gives one back.
        Some(FarewellPass { gate, engineer })
    }
}

/// One farewell given its full patience; the counts go down when it is dropped.
pub(crate) struct FarewellPass {
    gate: Arc<super::Registry>,
    /// The engineer it is counted against, if any.
    engineer: Option<String>,
}

impl Drop for FarewellPass {
    fn drop(&mut self) {
        if let Some(name) = self.engineer.take() {
            let mut by_engineer = self.gate.gate.farewells_by_engineer();
            if let Some(held) = by_engineer.get_mut(&name) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    by_engineer.remove(&name);
                }
            }
        }
        self.gate.gate.farewells.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The limits in force (read from the configuration at each accept, so a reload applies).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub failed_login_limit: u32,
    pub failed_login_window: std::time::Duration,
}

impl Gate {
    /// Connections held now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Farewells holding a pass now.
    pub(crate) fn farewells(&self) -> usize {
        self.farewells.load(Ordering::SeqCst)
    }

    /// Failed-login windows held now (the census counts them).
    pub(crate) fn windows_held(&self) -> usize {
        self.windows().len()
    }

    fn farewells_by_engineer(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.farewells_by_engineer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        self.windows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `source` is past its failed-login limit in its current window; a refusal
    /// counts toward the window's summary.
    pub(crate) fn blocked(&self, source: IpAddr, limits: &Limits) -> bool {
        let mut windows = self.windows();
        let key = key_of(&windows, source);
        match windows.get_mut(&key) {
            Some(w) if past_limit(w, limits) => {
                w.unrecorded += 1;
                true
            }
            _ => false,
        }
    }

    /// [`Self::blocked`], only asked: nothing is counted (no refusal follows).
    pub(crate) fn is_blocked(&self, source: IpAddr, limits: &Limits) -> bool {
        let windows = self.windows();
        windows
            .get(&key_of(&windows, source))
            .is_some_and(|w| past_limit(w, limits))
    }

    /// Counts a failed login of `source`; true if it is to be audited on its own (the
    /// window's first `failed_login_limit`), false if only counted for the summary.
    pub(crate) fn failed(&self, source: IpAddr, limits: &Limits) -> bool {
        let mut windows = self.windows();
        let key = key_of(&windows, source);
        let w = windows.entry(key).or_insert_with(|| Window {
            started: Instant::now(),
            started_at: Utc::now(),
            failures: 0,
            unrecorded: 0,
        });
        if w.failures >= limits.failed_login_limit {
            w.unrecorded += 1;
            return false;
        }
        w.failures += 1;
        true
    }

    /// Ends the windows that are over (all of them when `all`), returning a summary for
    /// each that held unrecorded failures.
    pub(crate) fn sweep(&self, limits: &Limits, all: bool) -> Vec<Throttled> {
        let mut out = Vec::new();
        self.windows().retain(|source, w| {
            if !all && w.started.elapsed() < limits.failed_login_window {
                return true;
            }
            if w.unrecorded > 0 {
                out.push(Throttled {
                    source: source.to_string(),
                    since: w.started_at,
                    count: w.unrecorded,
                });
            }
            false
        });
        out
    }
}

/// The window `ip` counts against: its host's, or the shared one when the table is full
/// and holds no window of its host.
fn past_limit(w: &Window, limits: &Limits) -> bool {
    w.started.elapsed() < limits.failed_login_window && w.failures >= limits.failed_login_limit
}

fn key_of(windows: &HashMap<Key, Window>, ip: IpAddr) -> Key {
    let host = Key::Host(Source::of(ip));
    if windows.len() >= MAX_SOURCES && !windows.contains_key(&host) {
        Key::Others
    } else {
        host
    }
}

/// A refusal being told to its client; given back when dropped.
pub(crate) struct Refusing(Arc<AtomicUsize>);

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    /// Room to tell a refused client why, or `None` when `MAX_REFUSING` are being told.
    pub(crate) fn refusing(&self) -> Option<Refusing> {
        self.refusing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_REFUSING).then_some(n + 1)
            })
            .ok()
            .map(|_| Refusing(self.refusing.clone()))
    }
}

/// Takes a connection slot, or `None` when `max_connections` are held.
pub(crate) fn take_slot(registry: &Arc<super::Registry>, limits: &Limits) -> Option<Slot> {
    take_slot_within(registry, limits.max_connections)
}

/// Takes a connection slot for a connection that will shed an unauthenticated one (see
/// `preauth`): past `max_connections` by at most the shedding headroom, for the moment
/// the shed one takes to close; `None` when that is held too or nothing can be shed.
pub(crate) fn take_slot_shedding(registry: &Arc<super::Registry>, limits: &Limits) -> Option<Slot> {
    let max = limits.max_connections;
    let slot = take_slot_within(registry, max + super::preauth::shedding_headroom(max))?;
    registry.preauth.shed_one_anywhere().then_some(slot)
}

fn take_slot_within(registry: &Arc<super::Registry>, most: usize) -> Option<Slot> {
    let taken = registry
        .gate
        .open
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < most).then_some(n + 1)
        })
        .is_ok();
    taken.then(|| Slot {
        gate: registry.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(n: u32) -> Limits {
        Limits {
            max_connections: 2,
            failed_login_limit: n,
            failed_login_window: std::time::Duration::from_secs(3600),
        }
    }

    #[test]
    fn failures_past_the_limit_are_counted_not_recorded() {
        let gate = Gate::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let l = limits(3);
        let recorded: Vec<bool> = (0..5).map(|_| gate.failed(ip, &l)).collect();
        assert_eq!(recorded, [true, true, true, false, false]);
        // Asking is not refusing: the summary counts only the refusal below.
        assert!(gate.is_blocked(ip, &l) && gate.is_blocked(ip, &l));
        assert!(gate.blocked(ip, &l));
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(!gate.blocked(other, &l), "another source is not limited");
        // The window is not over: only a forced sweep (shutdown) reports it.
        assert!(gate.sweep(&l, false).is_empty());
        let summary = gate.sweep(&l, true);
        assert_eq!(summary.len(), 1);
        assert_eq!(
            (summary[0].source.as_str(), summary[0].count),
            ("10.0.0.1", 3)
        );
        assert!(!gate.blocked(ip, &l), "a new window starts clean");
    }

    #[test]
    fn a_window_that_is_over_ends_at_the_sweep() {
        let gate = Gate::default();
        let ip: IpAddr = "::1".parse().unwrap();
        let mut l = limits(1);
        assert!(gate.failed(ip, &l));
        assert!(!gate.failed(ip, &l));
        l.failed_login_window = std::time::Duration::ZERO;
        assert!(!gate.blocked(ip, &l), "the window is over");
        assert_eq!(gate.sweep(&l, false).len(), 1);
    }

    /// A full table still limits new sources: they share one window.
    #[test]
    fn sources_past_a_full_table_share_one_window() {
        let gate = Gate::default();
        let l = limits(3);
        for n in 0..MAX_SOURCES as u32 {
            gate.failed(IpAddr::from(n.to_be_bytes()), &l);
        }
        let late: Vec<IpAddr> = (0..4u32)
            .map(|n| IpAddr::from((u32::MAX - n).to_be_bytes()))
            .collect();
        let recorded: Vec<bool> = late.iter().map(|ip| gate.failed(*ip, &l)).collect();
        assert_eq!(recorded, [true, true, true, false]);
        assert!(gate.blocked(late[0], &l));
        assert!(
            !gate.blocked(IpAddr::from(0u32.to_be_bytes()), &l),
            "a host's own window"
        );
        let summary = gate.sweep(&l, true);
        assert!(summary
            .iter()
            .any(|t| t.source.starts_with("other sources")));
    }

    #[test]
    fn slots_are_capped_and_given_back() {
        let registry = Arc::new(super::super::Registry::default());
        let l = limits(1);
        let a = take_slot(&registry, &l);
        let b = take_slot(&registry, &l);
        assert!(a.is_some() && b.is_some());
        assert!(take_slot(&registry, &l).is_none());
        drop(a);
        assert_eq!(registry.gate.open(), 1);
        assert!(take_slot(&registry, &l).is_some());
    }

    #[test]
    fn refusals_told_at_once_are_bounded() {
        let gate = Gate::default();
        let held: Vec<Refusing> = (0..MAX_REFUSING).filter_map(|_| gate.refusing()).collect();
        assert_eq!(held.len(), MAX_REFUSING);
        assert!(gate.refusing().is_none());
        drop(held);
        assert!(gate.refusing().is_some());
    }
}
