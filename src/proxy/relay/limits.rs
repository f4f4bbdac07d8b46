//! The grant's limits on running statements: the statement timeout the proxy enforces
//! whatever the session set, and which rows count against the row limit.

use std::time::Instant;

use super::{End, Relay};

/// Grace past the grant's statement timeout before the proxy cancels: the server's own
/// timeout, when still in force, ends the statement first with its usual error.
const TIMEOUT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl Relay {
    /// Whether the guard's analysis reads only catalogs, with what only the session knows:
    /// a name it may call (`f(x)`, `c.f`, a built-in's name overloaded by the database)
    /// that is one of the database's own functions, or an operator the database defines
    /// (not an extension's), could return any data.
    pub(super) fn catalog_only(&self, facts: &crate::guard::Facts) -> bool {
        facts.catalog_only
            && crate::guard::database_function_used(facts, &self.grant.database_functions).is_none()
    }

    /// Takes up a read of the database's code made since the session's own (see
    /// `provision::code`): its functions, what its relations reach, and the code
    /// generation that read saw. One atomic load when there is none. Ends the session when
    /// the catalog could not be read again for two periods.
    pub(super) fn catch_up_on_code(&mut self) -> Result<(), End> {
        let Some(updates) = self.grant.code_updates.as_mut() else {
            return Ok(());
        };
        if !updates.has_changed().unwrap_or(false) {
            return Ok(());
        }
        let Some(read) = updates.borrow_and_update().clone() else {
            return Ok(());
        };
        if let Some(why) = &read.unreadable {
            return Err(End::CodeUnreadable(why.clone()));
        }
        // A read like the last (the common case: nothing changed) leaves prepared
        // statements as they were checked.
        let changed = *read.code.functions != *self.grant.database_functions
            || *read.code.links != *self.grant.database_links;
        if changed {
            self.grant.code_epoch += 1;
        }
        self.grant.database_functions = read.code.functions.clone();
        self.grant.database_links = read.code.links.clone();
        self.grant.catalog_reach = read.code.reach(&self.grant.rules);
        self.grant.code_generation_at_login = read.generation;
        tracing::debug!(
            generation = read.generation,
            "the database's code read again"
        );
        Ok(())
    }

    /// A prepared statement checked under an earlier read of the database's code is checked
    /// again under the session's current one before the server plans it again (an attack
    /// review ran a view replaced behind lockbox's back through statements prepared before).
    pub(super) fn recheck_prepared(
        &self,
        statement: &crate::proxy::statements::Prepared,
    ) -> Result<(), crate::guard::Refusal> {
        if statement.code_epoch == self.grant.code_epoch {
            return Ok(());
        }
        crate::guard::analyze_query_cached(&statement.text)
            .iter()
            .try_for_each(|s| self.check(&s.analysis))
    }

    /// Notes what a statement the proxy forwards may change for later catalog reads.
    pub(super) fn note_catalog_changes(&mut self, analysis: &crate::guard::Analysis) {
        self.catalog_shadowed |= analysis.facts.may_shadow_catalog;
        let changes_code = matches!(
            analysis.class,
            crate::guard::Class::Ddl | crate::guard::Class::Escalation(_)
        );
        if changes_code {
            // This session's list of the database's functions, the other sessions' and the
            // shared one are stale from now on.
            self.grant
                .code_generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Whether a statement's rows are catalog rows, which a row limit does not count:
    /// unqualified catalog names count as catalogs only while nothing can shadow them: the
    /// session has named no temporary relation (`pg_temp` is searched first and could hold
    /// a `pg_class`) and put no schema before pg_catalog on its search path.
    /// Nor once this session, or any other of this process, changed the database's schema
    /// or code (DDL) since the function list was read: the code generation moved.
    pub(super) fn reads_catalog_only(&self, catalog_only: bool, unqualified: bool) -> bool {
        catalog_only
            && !(unqualified && self.catalog_shadowed)
            && self
                .grant
                .code_generation
                .load(std::sync::atomic::Ordering::SeqCst)
                == self.grant.code_generation_at_login
    }

    /// Whether the rows arriving now count against the grant's row limit: not those of a
    /// statement that reads the system catalogs only.
    pub(super) fn counts_rows(&self) -> bool {
        self.tracker
            .running()
            .is_none_or(|seq| !self.uncounted.contains(&seq))
    }

    /// Counts one more row of the statement the server is working on; returns how many it
    /// returned so far. A statement that takes rows from a portal (an Execute, a FETCH of a
    /// cursor) adds to the portal's count: fetching a result a few rows at a time returns
    /// no more of it than one statement may.
    pub(super) fn count_row(&mut self) -> u64 {
        let portal = self
            .tracker
            .running()
            .and_then(|seq| self.drawn_from.get(&seq));
        if let Some(taken) = portal.and_then(|p| self.statements.take_row(p)) {
            return taken;
        }
        self.rows += 1;
        self.rows
    }

    /// When what the server is working on passes the grant's statement timeout: a
    /// statement, or the Bind that plans one, or the Sync that commits a group (see
    /// `Tracker::working`).
    pub(super) fn statement_deadline(&mut self) -> Option<tokio::time::Instant> {
        let limit = self.grant.limits.statement_timeout?;
        let Some(work) = self.tracker.working() else {
            self.running = None;
            return None;
        };
        let since = match self.running {
            Some((running, since)) if running == work => since,
            _ => {
                let now = Instant::now();
                self.running = Some((work, now));
                now
            }
        };
        if self.cancelled == Some(work) {
            return None;
        }
        Some(tokio::time::Instant::from_std(since) + limit + TIMEOUT_GRACE)
    }

    /// Cancels the running statement, once; its error comes back as its outcome.
    pub(super) fn cancel_running(&mut self) {
        let Some((work, _)) = self.running else {
            return;
        };
        self.cancelled = Some(work);
        let Some(key) = self.grant.limits.cancel.clone() else {
            return;
        };
        tracing::info!(?work, "statement timeout of the grant: cancelling");
        self.cancel_in_flight = Some(tokio::spawn(async move {
            if let Err(e) =
                crate::proxy::upstream::send_cancel(&key.host, key.port, key.pid, key.secret).await
            {
                tracing::warn!(error = %e, "could not cancel a statement past the grant's timeout");
            }
        }));
    }
}

/// The grant's statement timeout, as one timer for the session's life: moved when the
/// running statement's deadline moves, where a new timer per relay step would cost a
/// timer-wheel insert and remove for every message a running statement's session relays.
pub(super) struct StatementTimer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The deadline `sleep` is set to, once set.
    set_to: Option<tokio::time::Instant>,
}

impl StatementTimer {
    /// Must be called within the runtime (as the relay is made).
    pub(super) fn new() -> StatementTimer {
        StatementTimer {
            // Never polled before `wait` moves it to a deadline.
            sleep: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(86_400))),
            set_to: None,
        }
    }

    /// Sleeps until `deadline`, or forever without one.
    pub(super) async fn wait(&mut self, deadline: Option<tokio::time::Instant>) {
        let Some(at) = deadline else {
            return std::future::pending().await;
        };
        if self.set_to != Some(at) {
            self.sleep.as_mut().reset(at);
            self.set_to = Some(at);
        }
        self.sleep.as_mut().await
    }
}
