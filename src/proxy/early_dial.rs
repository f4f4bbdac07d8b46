//! A login's upstream connection, dialed before the login is decided. PostgreSQL forks a
//! backend for each connection it accepts, before it reads a byte: that is most of a
//! login's time. Dialing once the login is decided puts the whole fork after the client's
//! password round trip, the token check and admission; dialing earlier lets them overlap.
//!
//! Nothing of a login is sent on an early dial until admission holds: a dial whose login
//! fails is closed without a byte, which PostgreSQL does not even log. What may start one:
//! - a token whose signature verifies (only lockbox mints them): dialed while its request
//!   is read from the store and admitted;
//! - the startup packet of a *trusted* source: one admitted within [`TRUST_FOR`] that has
//!   not failed or abandoned a login since. Each admission earns the trust; each failed
//!   login, and each early dial left unused, loses it. So an address without a token makes
//!   the database fork at most one backend per admission of that address, never one per
//!   connection it opens.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::source::Source;
use super::stream::BoxStream;
use super::upstream::{self, DialTarget, UpstreamError};
use crate::metrics::Metrics;

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

/// Sources trusted at most; past it, new sources are not trusted until old trust lapses
/// (they still get the dial after their token verifies).
const MAX_TRUSTED: usize = 4096;

/// Sources admitted lately, and when.
#[derive(Default)]
pub(crate) struct TrustedSources {
    admitted: Mutex<HashMap<Source, Instant>>,
}

impl TrustedSources {
    fn admitted(&self) -> std::sync::MutexGuard<'_, HashMap<Source, Instant>> {
        self.admitted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A login from `ip` was admitted.
    pub(crate) fn earn(&self, ip: IpAddr) {
        self.earn_at(ip, Instant::now());
    }

    fn earn_at(&self, ip: IpAddr, now: Instant) {
        let source = Source::of(ip);
        let mut admitted = self.admitted();
        if admitted.len() >= MAX_TRUSTED && !admitted.contains_key(&source) {
            admitted.retain(|_, at| now.saturating_duration_since(*at) < TRUST_FOR);
            if admitted.len() >= MAX_TRUSTED {
                return;
            }
        }
        admitted.insert(source, now);
    }

    /// A login from `ip` failed, or left its early dial unused.
    pub(crate) fn lose(&self, ip: IpAddr) {
        self.admitted().remove(&Source::of(ip));
    }

    /// Whether a connection from `ip` may be dialed at its startup packet.
    pub(crate) fn holds(&self, ip: IpAddr) -> bool {
        self.holds_at(ip, Instant::now())
    }

    fn holds_at(&self, ip: IpAddr, now: Instant) -> bool {
        self.admitted()
            .get(&Source::of(ip))
            .is_some_and(|at| now.saturating_duration_since(*at) < TRUST_FOR)
    }
}

/// A dial running as a task of its own. Dropped unused, it is aborted (its connection
/// closed with nothing sent), counted, and its source loses its trust.
pub(crate) struct EarlyDial {
    task: Option<JoinHandle<Result<BoxStream, UpstreamError>>>,
    source: IpAddr,
    registry: Arc<super::Registry>,
    metrics: Arc<Metrics>,
}

impl EarlyDial {
    /// Starts dialing `target` for a login from `source`.
    pub(crate) fn start(
        target: DialTarget,
        source: IpAddr,
        registry: Arc<super::Registry>,
        metrics: Arc<Metrics>,
    ) -> EarlyDial {
        let task = tokio::spawn(async move { upstream::dial(&target).await });
        EarlyDial {
            task: Some(task),
            source,
            registry,
            metrics,
        }
    }

    /// The dialed connection, once it is there.
    pub(crate) async fn stream(mut self) -> Result<BoxStream, UpstreamError> {
        let Some(task) = self.task.take() else {
            return Err(UpstreamError::Protocol("early dial taken twice".into()));
        };
        self.metrics.early_dial(true);
        match task.await {
            Ok(dialed) => dialed,
            Err(e) => Err(UpstreamError::Io(std::io::Error::other(e))),
        }
    }
}

impl Drop for EarlyDial {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            self.metrics.early_dial(false);
            self.registry.trusted.lose(self.source);
        }
    }
}

#[cfg(test)]
#[path = "early_dial_tests.rs"]
mod tests;
