//! A login's upstream connection, dialed before the login is decided. PostgreSQL forks a
//! backend for each connection it accepts, before it reads a byte: that is most of a
//! login's time. Dialing once the login is decided puts the whole fork after the client's
//! password round trip, the token check and admission; dialing earlier lets them overlap.
//!
//! Nothing of a login is sent on an early dial until admission holds: a dial whose login
//! fails is closed without a byte of a login (PostgreSQL then logs at most the connection
//! received, with `log_connections` on, or an upstream TLS handshake cut short). At most
//! [`MAX_EARLY_IN_FLIGHT`] are open at once. What may start one (`[proxy] early_dial`):
//! - a token whose signature verifies (only lockbox mints them), for the user and database
//!   it was minted for, from a source not past its failed-login limit: dialed while its
//!   request is read from the store and admitted;
//! - the startup packet of a *trusted* source, once it passed the startup checks: a source
//!   admitted within [`TRUST_FOR`] that has not failed or abandoned a login since, with
//!   fewer than [`MAX_IN_FLIGHT`] such dials open. Each admission earns the trust; each
//!   failed login, and each early dial left unused, loses it. So an address without a valid
//!   token makes the database fork at most [`MAX_IN_FLIGHT`] backends per admission of that
//!   address, never one per connection it opens.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::source::Source;
use super::stream::BoxStream;
use super::upstream::{self, DialTarget, UpstreamError};
use crate::metrics::{EarlyDialOutcome, Metrics};

/// `[proxy] early_dial`: when a login's upstream is dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyDialPolicy {
    /// At the startup packet for a trusted source, else once the token verifies.
    #[default]
    Trusted,
    /// Once the token's signature verifies, for every source.
    Verified,
    /// Once the login is admitted (no dial before it).
    Off,
}

/// How long an admission keeps its source trusted to have connections dialed at their
/// startup packet.
pub(crate) const TRUST_FOR: Duration = Duration::from_secs(600);

/// A trusted source's startup dials open at once (a client pool opening connections side
/// by side); more wait for their token.
pub(crate) const MAX_IN_FLIGHT: u32 = 2;

/// Early dials open at once across the proxy, whatever started them: past it logins dial
/// once admitted, so no burst of logins (a grant's revoked token sent on many parked
/// connections at once, say) holds more backends than this before they are refused.
pub(crate) const MAX_EARLY_IN_FLIGHT: usize = 64;

/// Sources trusted at most; past it, new sources are not trusted until old trust lapses
/// (they still get the dial after their token verifies).
const MAX_TRUSTED: usize = 4096;

/// A trusted source: when it was last admitted, and its startup dials not yet settled.
#[derive(Clone, Copy)]
struct Trust {
    admitted: Instant,
    in_flight: u32,
    /// Which trust this is: a source that lost its trust and earned it again has a new one,
    /// and dials claimed from the old one are not given back to it.
    earned: u64,
}

/// One of a trusted source's startup dials, taken by [`TrustedSources::claim`] and given
/// back with [`TrustedSources::settled`] to the trust it was taken from. Not `Copy`: a
/// claim is given back once, by whoever holds it.
#[derive(Debug)]
pub(crate) struct Claim {
    ip: IpAddr,
    earned: u64,
}

/// Sources admitted lately.
#[derive(Default)]
pub(crate) struct TrustedSources {
    sources: Mutex<HashMap<Source, Trust>>,
    /// Early dials open now (see [`MAX_EARLY_IN_FLIGHT`]).
    in_flight: AtomicUsize,
    /// Trusts handed out so far (each new one is numbered by it).
    earnings: AtomicU64,
}

impl TrustedSources {
    /// Takes one of the proxy's early dials, if one is free.
    fn begin_dial(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_EARLY_IN_FLIGHT).then_some(n + 1)
            })
            .is_ok()
    }

    fn end_dial(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<Source, Trust>> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A login from `ip` was admitted.
    pub(crate) fn earn(&self, ip: IpAddr) {
        self.earn_at(ip, Instant::now());
    }

    fn earn_at(&self, ip: IpAddr, now: Instant) {
        let source = Source::of(ip);
        let mut sources = self.sources();
        if let Some(trust) = sources.get_mut(&source) {
            trust.admitted = now;
            return;
        }
        if sources.len() >= MAX_TRUSTED {
            sources.retain(|_, t| {
                t.in_flight > 0 || now.saturating_duration_since(t.admitted) < TRUST_FOR
            });
            if sources.len() >= MAX_TRUSTED {
                return;
            }
        }
        sources.insert(
            source,
            Trust {
                admitted: now,
                in_flight: 0,
                earned: self.earnings.fetch_add(1, Ordering::Relaxed),
            },
        );
    }

    /// A login from `ip` failed, or left its early dial unused.
    pub(crate) fn lose(&self, ip: IpAddr) {
        self.sources().remove(&Source::of(ip));
    }

    /// Takes one of a trusted `ip`'s startup dials, if it is trusted and has one free; give
    /// it back with [`Self::settled`] (or lose the trust).
    pub(crate) fn claim(&self, ip: IpAddr) -> Option<Claim> {
        self.claim_at(ip, Instant::now())
    }

    fn claim_at(&self, ip: IpAddr, now: Instant) -> Option<Claim> {
        match self.sources().get_mut(&Source::of(ip)) {
            Some(trust)
                if now.saturating_duration_since(trust.admitted) < TRUST_FOR
                    && trust.in_flight < MAX_IN_FLIGHT =>
            {
                trust.in_flight += 1;
                Some(Claim {
                    ip,
                    earned: trust.earned,
                })
            }
            _ => None,
        }
    }

    /// A startup dial is over (used by its login, failed, stale, or never started). Given
    /// back only to the trust it was claimed from: one lost and earned again since started
    /// with none in flight, and must not count this one's end as one of its own.
    pub(crate) fn settled(&self, claim: Claim) {
        if let Some(trust) = self.sources().get_mut(&Source::of(claim.ip)) {
            if trust.earned == claim.earned {
                trust.in_flight = trust.in_flight.saturating_sub(1);
            }
        }
    }
}

/// A dial running as a task of its own. Dropped unused (the login failed, or was given
/// up), it is aborted (its connection closed with nothing of a login sent), counted, and
/// its source loses its trust.
pub(crate) struct EarlyDial {
    task: Option<JoinHandle<Result<BoxStream, UpstreamError>>>,
    target: DialTarget,
    source: IpAddr,
    /// Started at the startup packet on the source's trust (one of its dials in flight).
    on_trust: Option<Claim>,
    registry: Arc<super::Registry>,
    metrics: Arc<Metrics>,
}

impl EarlyDial {
    /// Starts dialing `target` for a login from `source`; `on_trust`: the source's claimed
    /// dial, when its trust is what allowed it.
    /// `None` when [`MAX_EARLY_IN_FLIGHT`] dials are open already (the claim is given back).
    pub(crate) fn start(
        target: DialTarget,
        source: IpAddr,
        on_trust: Option<Claim>,
        registry: Arc<super::Registry>,
        metrics: Arc<Metrics>,
    ) -> Option<EarlyDial> {
        if !registry.trusted.begin_dial() {
            if let Some(claim) = on_trust {
                registry.trusted.settled(claim);
            }
            return None;
        }
        let dialing = target.clone();
        let task = tokio::spawn(async move { upstream::dial(&dialing).await });
        Some(EarlyDial {
            task: Some(task),
            target,
            source,
            on_trust,
            registry,
            metrics,
        })
    }

    /// The dialed connection, for a login to `expected`. A dial to anywhere else (the
    /// configuration was reloaded since it started) is closed unused and `Stale` returned:
    /// the login dials afresh. Cancelled while it waits, the dial is dropped unused.
    pub(crate) async fn stream(
        mut self,
        expected: &DialTarget,
    ) -> Result<BoxStream, EarlyDialError> {
        if &self.target != expected {
            if let Some(task) = self.task.take() {
                task.abort();
                self.registry.trusted.end_dial();
            }
            self.metrics.early_dial(EarlyDialOutcome::Stale);
            self.settle();
            return Err(EarlyDialError::Stale);
        }
        let Some(task) = self.task.as_mut() else {
            return Err(EarlyDialError::Stale);
        };
        let dialed = task.await;
        self.task = None;
        self.registry.trusted.end_dial();
        self.settle();
        match dialed {
            Ok(Ok(stream)) => {
                self.metrics.early_dial(EarlyDialOutcome::Used);
                Ok(stream)
            }
            Ok(Err(e)) => {
                self.metrics.early_dial(EarlyDialOutcome::Failed);
                Err(EarlyDialError::Dial(e))
            }
            Err(e) => {
                self.metrics.early_dial(EarlyDialOutcome::Failed);
                Err(EarlyDialError::Dial(UpstreamError::Io(
                    std::io::Error::other(e),
                )))
            }
        }
    }

    /// The source's claimed startup dial is given back.
    fn settle(&mut self) {
        if let Some(claim) = self.on_trust.take() {
            self.registry.trusted.settled(claim);
        }
    }
}

/// Why an early dial gave no connection to log in on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EarlyDialError {
    #[error("the early dial went to a database configured differently since")]
    Stale,
    #[error(transparent)]
    Dial(UpstreamError),
}

impl Drop for EarlyDial {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            self.registry.trusted.end_dial();
            self.metrics.early_dial(EarlyDialOutcome::Unused);
            self.registry.trusted.lose(self.source);
        }
    }
}

#[cfg(test)]
#[path = "early_dial_tests.rs"]
mod tests;
