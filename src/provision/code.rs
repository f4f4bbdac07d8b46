//! What a database's own code and schema are, as the guard needs them: its functions (not
//! built in) and the links between its relations, read from its catalog (`catalog.rs`).
//!
//! A read is shared by every session of the database and kept fresh for as long as one of
//! them holds it: a session follows the reads made after its login (`CodeUpdates`), so an
//! object the customer made behind lockbox's back (a view over a function that writes)
//! reaches a session open for hours within `[timings] catalog_refresh`, as it reaches a new
//! login. A refresher task per database reads again every `catalog_refresh` while any
//! session follows it, and stops when none does; a login finds a read older than that, or
//! older than DDL forwarded by this process, stale and reads again itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{catalog, ProvisionError};
use crate::config::{Database, Guardrails};
use crate::guard::CatalogReach;

/// A database's own functions and the links between its relations, as its catalog had
/// them.
#[derive(Clone, Default)]
pub struct DatabaseCode {
    /// Names of its functions that are not built in (lowercased as PostgreSQL stores
    /// unquoted names), and its operators that no extension installed (`operator <symbol>`).
    pub functions: Arc<std::collections::HashSet<String>>,
    /// How its relations reach each other's rows (inheritance, views and rules, cascades).
    pub links: Arc<[crate::guard::RelationLink]>,
    /// What its links reach under the rules last asked for: computed once per read of the
    /// catalog, not at every login.
    reach: ReachCache,
}

/// The reach last computed from a database's links, and the rules it was computed for.
type ReachCache = Arc<Mutex<Option<(Guardrails, Arc<CatalogReach>)>>>;

impl DatabaseCode {
    /// What naming each relation reaches under `rules` (see `guard::CatalogReach`).
    pub fn reach(&self, rules: &Guardrails) -> Arc<CatalogReach> {
        // A poisoned lock only means another session panicked computing it: compute again.
        let mut cached = self.reach.lock().unwrap_or_else(|e| e.into_inner());
        match cached.as_ref() {
            Some((for_rules, reach)) if for_rules == rules => reach.clone(),
            _ => {
                let reach = Arc::new(CatalogReach::new(rules, &self.links));
                *cached = Some((rules.clone(), reach.clone()));
                reach
            }
        }
    }
}

/// One read of a database's code.
pub struct CodeRead {
    pub code: DatabaseCode,
    /// The database's code generation before the read began: DDL this process forwarded
    /// since makes the read stale.
    pub generation: u64,
    at: Instant,
}

impl std::fmt::Debug for CodeRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeRead")
            .field("generation", &self.generation)
            .field("functions", &self.code.functions.len())
            .field("links", &self.code.links.len())
            .finish_non_exhaustive()
    }
}

impl CodeRead {
    /// What a session without statement rules or a row limit, which reads no code, holds
    /// (at the database's code generation now).
    pub fn none(generation: u64) -> CodeRead {
        CodeRead {
            code: DatabaseCode::default(),
            generation,
            at: Instant::now(),
        }
    }

    fn fresh(&self, refresh: Duration, generation: u64) -> bool {
        self.at.elapsed() < refresh && self.generation == generation
    }
}

/// The reads of a database made after a session's own: `has_changed` is one atomic load.
pub type CodeUpdates = watch::Receiver<Option<Arc<CodeRead>>>;

/// One database's latest read, its followers, and its refresher.
pub(super) struct CodeWatch {
    latest: watch::Sender<Option<Arc<CodeRead>>>,
    /// The database as the latest login saw it configured (a reload may move it).
    db: Mutex<Option<Database>>,
    refreshing: AtomicBool,
}

impl Default for CodeWatch {
    fn default() -> CodeWatch {
        CodeWatch {
            latest: watch::Sender::new(None),
            db: Mutex::new(None),
            refreshing: AtomicBool::new(false),
        }
    }
}

/// Longest one read of the catalog may take before the refresher gives up on it (and tries
/// again a period later); a login's own read is bounded by the session.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

impl CodeWatch {
    /// The latest read of `db` if fresh, else a new one; with the updates that follow it.
    pub(super) async fn read(
        self: &Arc<Self>,
        db: &Database,
        generation: &Arc<AtomicU64>,
        refresh: Duration,
    ) -> Result<(Arc<CodeRead>, CodeUpdates), ProvisionError> {
        *self.db.lock().unwrap_or_else(|e| e.into_inner()) = Some(db.clone());
        // Subscribed first: a read sent from here on is one this session hears of.
        let mut updates = self.latest.subscribe();
        let now = generation.load(Ordering::SeqCst);
        let cached = updates
            .borrow_and_update()
            .clone()
            .filter(|read| read.fresh(refresh, now));
        let read = match cached {
            Some(read) => read,
            None => {
                let read = Arc::new(read_code(db, now).await?);
                self.latest.send_replace(Some(read.clone()));
                // Ours, or one a refresher sent since, which is newer.
                updates.borrow_and_update().clone().unwrap_or(read)
            }
        };
        self.keep_fresh(generation.clone(), refresh);
        Ok((read, updates))
    }

    /// Starts the database's refresher unless one runs.
    fn keep_fresh(self: &Arc<Self>, generation: Arc<AtomicU64>, refresh: Duration) {
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let watch = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(refresh).await;
                if !watch.followed() {
                    return;
                }
                let Some(db) = watch.db.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
                    continue;
                };
                let now = generation.load(Ordering::SeqCst);
                match tokio::time::timeout(READ_TIMEOUT, read_code(&db, now)).await {
                    Ok(Ok(read)) => {
                        // Computed here once, not by the first session to hear of it.
                        read.code.reach(&db.guardrails);
                        watch.latest.send_replace(Some(Arc::new(read)));
                    }
                    // The sessions keep the read they have; logins read for themselves.
                    Ok(Err(e)) => {
                        tracing::warn!(database = %db.name, error = %e, "could not read the database's code again")
                    }
                    Err(_) => {
                        tracing::warn!(database = %db.name, "reading the database's code again timed out")
                    }
                }
            }
        });
    }

    /// Whether a session still follows the reads; if none does, the refresher is marked
    /// stopped, unless a login subscribed meanwhile and found it running.
    fn followed(&self) -> bool {
        if self.latest.receiver_count() > 0 {
            return true;
        }
        self.refreshing.store(false, Ordering::SeqCst);
        // A login that subscribed after the count and before the store saw the refresher
        // running and started none: this one goes on for it.
        self.latest.receiver_count() > 0 && !self.refreshing.swap(true, Ordering::SeqCst)
    }

    /// Whether a refresher runs now (tests).
    #[cfg(test)]
    pub(super) fn refreshing(&self) -> bool {
        self.refreshing.load(Ordering::SeqCst)
    }
}

async fn read_code(db: &Database, generation: u64) -> Result<CodeRead, ProvisionError> {
    let (functions, links) = catalog::database_code(db).await?;
    Ok(CodeRead {
        code: DatabaseCode {
            functions: Arc::new(functions.into_iter().collect()),
            links: links.into(),
            reach: Arc::default(),
        },
        generation,
        at: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{LinkKind, RelationLink};

    #[test]
    fn a_databases_reach_is_computed_once_per_rules() {
        let code = DatabaseCode {
            links: vec![RelationLink {
                kind: LinkKind::Inherits,
                from: "public.base".into(),
                to: "hr.pay".into(),
            }]
            .into(),
            ..DatabaseCode::default()
        };
        let rules = Guardrails {
            off_limits: vec!["hr.*".into()],
            ..Guardrails::default()
        };
        let first = code.reach(&rules);
        assert!(Arc::ptr_eq(&first, &code.clone().reach(&rules)));
        // Rules changed by a reload are computed afresh.
        let other = Guardrails {
            off_limits: vec!["secret".into()],
            ..rules.clone()
        };
        assert!(!Arc::ptr_eq(&first, &code.reach(&other)));
    }

    #[test]
    fn a_read_is_stale_after_its_period_or_after_ddl() {
        let read = CodeRead::none(4);
        assert!(read.fresh(Duration::from_secs(60), 4));
        assert!(
            !read.fresh(Duration::from_secs(60), 5),
            "DDL forwarded since"
        );
        assert!(!read.fresh(Duration::ZERO, 4), "older than the period");
    }

    #[tokio::test]
    async fn the_refresher_stops_when_no_session_follows_and_restarts_for_one() {
        let watch = Arc::new(CodeWatch::default());
        let follower = watch.latest.subscribe();
        watch.keep_fresh(Arc::default(), Duration::from_millis(10));
        assert!(watch.refreshing());
        // No database known yet: the refresher only waits, while it is followed.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(watch.refreshing(), "followed: still running");
        drop(follower);
        let mut stopped = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if !watch.refreshing() {
                stopped = true;
                break;
            }
        }
        assert!(stopped, "nobody follows: the refresher stops");
        let _again = watch.latest.subscribe();
        watch.keep_fresh(Arc::default(), Duration::from_millis(10));
        assert!(watch.refreshing(), "a new follower starts it again");
    }
}
