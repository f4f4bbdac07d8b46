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
    /// When the read began.
    at: Instant,
    /// Set when the catalog could not be read again for two periods: the sessions holding
    /// an older read end rather than go on with it (fail closed, as a login does).
    pub unreadable: Option<Arc<str>>,
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
            unreadable: None,
        }
    }

    fn fresh(&self, refresh: Duration, generation: u64) -> bool {
        self.unreadable.is_none() && self.at.elapsed() < refresh && self.generation == generation
    }

    /// What sessions holding this read are told once the catalog has been unreadable for
    /// two periods since it was made.
    fn gone_stale(&self, why: &str) -> CodeRead {
        CodeRead {
            code: self.code.clone(),
            generation: self.generation,
            at: self.at,
            unreadable: Some(Arc::from(why)),
        }
    }
}

/// The reads of a database made after a session's own: `has_changed` is one atomic load.
pub type CodeUpdates = watch::Receiver<Option<Arc<CodeRead>>>;

/// One database's latest read, its followers, and its refresher. Kept per database and
/// server (see `Provisioner::database_code`): sessions on a server a reload moved away
/// from keep following reads of that server.
pub(super) struct CodeWatch {
    latest: watch::Sender<Option<Arc<CodeRead>>>,
    /// The database as the latest login saw it configured (its rules, credentials).
    db: Mutex<Option<Database>>,
    /// `[timings] catalog_refresh` as the latest login saw it, in milliseconds.
    refresh_ms: AtomicU64,
    refreshing: AtomicBool,
}

impl Default for CodeWatch {
    fn default() -> CodeWatch {
        CodeWatch {
            latest: watch::Sender::new(None),
            db: Mutex::new(None),
            refresh_ms: AtomicU64::new(60_000),
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
        self.refresh_ms.store(
            u64::try_from(refresh.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
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
                self.offer(read.clone());
                // Ours, or one a refresher began since, which is newer.
                updates.borrow_and_update().clone().unwrap_or(read)
            }
        };
        self.keep_fresh(generation.clone());
        Ok((read, updates))
    }

    /// Makes `read` the latest unless one begun later is there already (a login's read
    /// that outlasted a refresher's must not bring back an older catalog).
    fn offer(&self, read: Arc<CodeRead>) {
        self.latest.send_if_modified(|latest| {
            if latest.as_ref().is_some_and(|l| l.at > read.at) {
                return false;
            }
            *latest = Some(read);
            true
        });
    }

    /// Starts the database's refresher unless one runs.
    fn keep_fresh(self: &Arc<Self>, generation: Arc<AtomicU64>) {
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let watch = self.clone();
        tokio::spawn(async move {
            loop {
                let refresh = Duration::from_millis(watch.refresh_ms.load(Ordering::SeqCst));
                tokio::time::sleep(refresh).await;
                if !watch.followed() {
                    return;
                }
                let Some(db) = watch.db.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
                    continue;
                };
                let now = generation.load(Ordering::SeqCst);
                let failed = match tokio::time::timeout(READ_TIMEOUT, read_code(&db, now)).await {
                    Ok(Ok(read)) => {
                        // Computed here once, not by the first session to hear of it.
                        read.code.reach(&db.guardrails);
                        watch.offer(Arc::new(read));
                        continue;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {}s", READ_TIMEOUT.as_secs()),
                };
                tracing::warn!(database = %db.name, error = %failed, "could not read the database's code again");
                watch.failed(&failed, refresh);
            }
        });
    }

    /// A read of the catalog failed: once the latest good read is two periods old, the
    /// sessions holding it are told to end (logins, finding it stale, read for themselves
    /// and are refused while the catalog cannot be read).
    fn failed(&self, why: &str, refresh: Duration) {
        self.latest.send_if_modified(|latest| {
            let Some(read) = latest.as_ref() else {
                return false;
            };
            if read.unreadable.is_some() || read.at.elapsed() < refresh * 2 {
                return false;
            }
            *latest = Some(Arc::new(read.gone_stale(why)));
            true
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
    let at = Instant::now();
    let (functions, links) = catalog::database_code(db).await?;
    Ok(CodeRead {
        code: DatabaseCode {
            functions: Arc::new(functions.into_iter().collect()),
            links: links.into(),
            reach: Arc::default(),
        },
        generation,
        at,
        unreadable: None,
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
        assert!(!read.gone_stale("down").fresh(Duration::from_secs(60), 4));
    }

    #[test]
    fn a_read_begun_later_is_never_replaced_by_an_earlier_one() {
        let watch = CodeWatch::default();
        let earlier = Arc::new(CodeRead::none(1));
        let later = Arc::new(CodeRead::none(2));
        watch.offer(later.clone());
        watch.offer(earlier);
        let latest = watch.latest.borrow().clone().expect("a read");
        assert!(Arc::ptr_eq(&latest, &later));
    }

    #[test]
    fn sessions_are_told_only_once_the_catalog_was_unreadable_for_two_periods() {
        let watch = CodeWatch::default();
        let mut follower = watch.latest.subscribe();
        watch.offer(Arc::new(CodeRead::none(1)));
        follower.borrow_and_update();
        watch.failed("down", Duration::from_secs(60));
        assert!(!follower.has_changed().expect("open"), "the read is recent");
        watch.failed("down", Duration::ZERO);
        assert!(follower.has_changed().expect("open"));
        let told = follower.borrow_and_update().clone().expect("a read");
        assert_eq!(told.unreadable.as_deref(), Some("down"));
        watch.failed("still down", Duration::ZERO);
        assert!(!follower.has_changed().expect("open"), "told once");
    }

    #[tokio::test]
    async fn the_refresher_stops_when_no_session_follows_and_restarts_for_one() {
        let watch = Arc::new(CodeWatch::default());
        watch.refresh_ms.store(10, Ordering::SeqCst);
        let follower = watch.latest.subscribe();
        watch.keep_fresh(Arc::default());
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
        watch.keep_fresh(Arc::default());
        assert!(watch.refreshing(), "a new follower starts it again");
    }
}
