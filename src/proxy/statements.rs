//! The prepared statements and portals of a session, as the server holds them.
//!
//! A Parse, Bind or Close takes effect only if the server confirms it (ParseComplete,
//! BindComplete, CloseComplete): the server rejects a Parse of a name that exists, and
//! skips everything after an error until Sync. Were the proxy to believe the client, a
//! rejected `Parse s1 'SELECT 1'` would make the audit name the wrong text for a later
//! execution of `s1`. So changes wait in order until confirmed; lookups for messages still
//! in flight see them (if those run, the changes before them took effect).
//!
//! Which reply confirms which change is not decided here: every change is named by the
//! [`MessageId`] of the message that made it, and the tracker, which follows the server
//! through its replies (errors, skips to Sync, COPY), says which message a reply answers
//! ([`Statements::confirm`]) and which messages are settled ([`Statements::settle`]).
//! Matching replies to changes by their kind alone let a client that desynchronised the
//! two (a query string sent where the server skips to Sync) confirm one Parse with
//! another's ParseComplete, and so run a statement under the text of a different one.
//!
//! SQL shares these namespaces with the protocol, as in the server: `PREPARE` creates a
//! statement a Bind may use and `EXECUTE` runs one a Parse made; `DECLARE` creates a portal
//! an Execute may fetch from; `DEALLOCATE [ALL]`, `CLOSE [ALL]` and `DISCARD ALL` remove
//! them. Those changes wait for their CommandComplete the same way.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use weight::Weighed;

use crate::audit::StatementNames;
use crate::guard::NameChange;
use crate::sql::StatementKind;

/// A statement prepared with Parse or SQL PREPARE ("" is the unnamed one).
#[derive(Clone)]
pub struct Prepared {
    pub text: Arc<str>,
    pub kind: StatementKind,
    /// What running it does to the namespaces (a Parse of `PREPARE …`, `DECLARE …`).
    pub names: Option<NameChange>,
    /// It reads the system catalogs only: a row limit does not count its rows.
    pub catalog_only: bool,
    /// …naming some of them without their schema (a temporary table could shadow them).
    pub catalog_unqualified: bool,
    /// It is EXPLAIN: a row limit does not count its plan's lines (`Facts::plan_only`).
    pub plan_only: bool,
    /// It is `COPY … FROM STDIN` (see `Facts::copy_in`).
    pub copy_in: bool,
    /// Its text is in the audit trail already: it was made by SQL PREPARE or DECLARE,
    /// whose records hold it. A Parse has no record of its own.
    pub recorded: bool,
    /// The relations and functions its text names, kept when its record may clip the text
    /// (`StatementRecord::mentions`).
    pub mentions: Option<StatementNames>,
    /// Which of the session's reads of the database's code it was checked against
    /// (`Grant::code_epoch`): the server plans it again at each Bind or EXECUTE, against
    /// the catalog as it is then, so under a newer read it is checked again.
    pub code_epoch: u64,
}

/// A portal created with Bind or SQL DECLARE.
#[derive(Clone)]
pub struct Portal {
    pub statement: Prepared,
    /// Shared with the records of its Executes.
    pub params: Arc<[serde_json::Value]>,
    /// A cursor declared WITH HOLD survives the end of its transaction.
    pub held: bool,
    /// Rows it returned so far, across the Executes and FETCHes that took them (a row
    /// limit counts them all). A new Bind or DECLARE of its name starts from none.
    pub rows: u64,
    /// Opened in the transaction still going on, under this many savepoints: if the
    /// transaction aborts, or rolls back to a savepoint made before it, the server drops the
    /// portal even WITH HOLD. `None`: held from an earlier transaction (or not yet open).
    pub opened_in: Option<usize>,
}

enum Change {
    Parse(String, Prepared),
    /// A refused Parse of the unnamed statement: its stand-in fails on the server, which
    /// dropped the unnamed statement before parsing it (see [`Statements::failed`]).
    RefusedUnnamedParse,
    /// A query string: as the server starts one it drops the unnamed statement, and it runs
    /// each statement in the unnamed portal, dropping the one there (`exec_simple_query`).
    /// It took effect when its own ReadyForQuery came (see [`Statements::settle`]); one the
    /// server skipped (after an error, up to a Sync) did nothing.
    QueryString {
        runs_statement: bool,
    },
    Bind(String, Portal),
    CloseStatement(String),
    ClosePortal(String),
    /// A SQL statement's change, confirmed by its CommandComplete.
    Sql(SqlChange),
}

/// The number of a client message, in the order the server reads them: what names a
/// change, a step the server answers, or the end of a group.
pub type MessageId = u64;

/// A reply that does not fit what lockbox knows was sent: from here on it could name the
/// wrong statement in the audit, so the session must end.
#[derive(Debug, thiserror::Error)]
#[error("lockbox lost track of the server's replies: {0}")]
pub struct LostTrack(pub String);

/// What SQL does to the namespaces.
pub enum SqlChange {
    Prepare(String, Prepared),
    Deallocate(Option<String>),
    Declare(String, Portal),
    Close(Option<String>),
    DiscardAll,
    /// COMMIT, ROLLBACK, PREPARE TRANSACTION.
    EndTransaction,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
}

impl SqlChange {
    /// The command tag the server answers when the change took effect.
    fn confirmed_by(&self, tag: &str) -> bool {
        match self {
            SqlChange::Prepare(..) => tag == "PREPARE",
            SqlChange::Deallocate(_) => tag.starts_with("DEALLOCATE"),
            SqlChange::Declare(..) => tag == "DECLARE CURSOR",
            SqlChange::Close(_) => tag.starts_with("CLOSE CURSOR"),
            SqlChange::DiscardAll => tag == "DISCARD ALL",
            SqlChange::EndTransaction => {
                matches!(tag, "COMMIT" | "ROLLBACK" | "PREPARE TRANSACTION")
            }
            SqlChange::Savepoint(_) => tag == "SAVEPOINT",
            SqlChange::Release(_) => tag == "RELEASE",
            SqlChange::RollbackTo(_) => tag == "ROLLBACK",
        }
    }
}

/// Most changes that may wait for confirmation, and most statements a session may keep.
/// The relay stops reading a client well before (`PENDING_HIGH`): these bound what one
/// batch of client messages can add before the relay looks again.
pub const MAX_PENDING: usize = 10_000;
pub const MAX_PREPARED: usize = 10_000;
/// Most bytes of statement text that may wait for confirmation (the texts of Parse,
/// PREPARE and DECLARE; a Bind shares its statement's).
pub const MAX_PENDING_TEXT: usize = 64 << 20;
/// Past this many changes, or bytes of text, waiting for the server, the relay reads no
/// more client messages until the server has answered some (`PENDING_LOW`).
pub const PENDING_HIGH: usize = 2_048;
pub const PENDING_TEXT_HIGH: usize = 8 << 20;
pub const PENDING_LOW: usize = 512;

#[derive(Default)]
pub struct Statements {
    prepared: Weighed<Prepared>,
    portals: Weighed<Portal>,
    pending: VecDeque<(MessageId, Change)>,
    /// How many pending changes name each statement (Parse, PREPARE, Close, DEALLOCATE),
    /// and how many change them all (DEALLOCATE ALL, DISCARD ALL): a lookup of a name no
    /// pending change touches goes straight to `prepared`, without a walk of `pending`.
    pending_by_statement: HashMap<String, usize>,
    pending_all_statements: usize,
    /// Bytes of statement text in `pending`.
    pending_text: usize,
    /// What the changes in `pending` weigh (statements, names, parameter values).
    pending_weight: usize,
    /// The next message's number.
    next_id: MessageId,
    /// The first message of the group the client is sending now (after its last Sync,
    /// query string or FunctionCall).
    group_start: MessageId,
    /// The server answered an error since its last ReadyForQuery: a ReadyForQuery outside a
    /// transaction then ends one that was rolled back.
    failed_since_ready: bool,
    /// The savepoints of the transaction going on, oldest first (a name may repeat; the
    /// newest of a name is the one RELEASE and ROLLBACK TO mean).
    savepoints: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TooMany(&'static str);

impl Statements {
    fn push(&mut self, change: Change) -> Result<MessageId, TooMany> {
        if self.pending.len() >= MAX_PENDING {
            return Err(TooMany("too many messages waiting for the server's answer"));
        }
        let text = own_text(&change);
        if self.pending_text + text > MAX_PENDING_TEXT {
            return Err(TooMany(
                "too much statement text waiting for the server's answer",
            ));
        }
        self.pending_text += text;
        self.pending_weight += own_weight(&change);
        match statement_named(&change) {
            Some(Some(name)) => {
                *self
                    .pending_by_statement
                    .entry(name.to_owned())
                    .or_default() += 1
            }
            Some(None) => self.pending_all_statements += 1,
            None => {}
        }
        let id = self.message();
        self.pending.push_back((id, change));
        Ok(id)
    }

    /// Takes the oldest pending change off the queue.
    fn pop_pending(&mut self) -> Option<(MessageId, Change)> {
        let (id, change) = self.pending.pop_front()?;
        self.pending_text -= own_text(&change);
        self.pending_weight -= own_weight(&change);
        match statement_named(&change) {
            Some(Some(name)) => {
                if let Some(count) = self.pending_by_statement.get_mut(name) {
                    *count -= 1;
                    if *count == 0 {
                        self.pending_by_statement.remove(name);
                    }
                }
            }
            Some(None) => self.pending_all_statements -= 1,
            None => {}
        }
        Some((id, change))
    }

    /// No pending change touches the statement `name`.
    fn statement_untouched(&self, name: &str) -> bool {
        self.pending_all_statements == 0 && !self.pending_by_statement.contains_key(name)
    }

    /// Changes waiting for the server, and the bytes of statement text among them: the
    /// relay's backpressure.
    pub fn pending_load(&self) -> (usize, usize) {
        (self.pending.len(), self.pending_text)
    }

    /// The bytes the session keeps for its statements and portals, and for the changes to
    /// them waiting for the server: what a client makes the proxy hold past its messages.
    pub fn retained(&self) -> usize {
        self.prepared.bytes() + self.portals.bytes() + self.pending_weight
    }

    /// Numbers a message that changes no name (a Describe, a Sync, the end of a query
    /// string), so that it can be told apart from the messages around it.
    pub fn message(&mut self) -> MessageId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Numbers a message that ends a group (a Sync, a query string, a FunctionCall).
    pub fn end_group(&mut self) -> MessageId {
        let id = self.message();
        self.group_start = self.next_id;
        id
    }

    /// Numbers the end of a query string (see `Change::QueryString`), which `runs_statement`
    /// when it is not empty and not refused. Only a session with an unnamed statement or
    /// portal, or with changes still waiting (one may make them), has it kept as a change:
    /// the usual query string costs nothing more than its number.
    pub fn end_query(&mut self, runs_statement: bool) -> Result<MessageId, TooMany> {
        let may_drop = self.prepared.contains_key("")
            || self.portals.contains_key("")
            || !self.pending.is_empty();
        if !may_drop {
            return Ok(self.end_group());
        }
        let id = self.push(Change::QueryString { runs_statement })?;
        self.group_start = self.next_id;
        Ok(id)
    }

    /// Whether the statement `name`, as the next message would find it, is certain: it
    /// comes from no change still waiting in an earlier group. Within a group a change
    /// that fails makes the server skip the rest of the group, so a message that runs saw
    /// it take effect; a change in an earlier group can fail (a Parse of a name that
    /// exists, a syntax error) and the next group then runs with what was there before.
    pub fn statement_certain(&self, name: &str) -> bool {
        self.certain(self.deciding_statement(name))
    }

    /// Whether the portal `name`, as the next Execute would find it, is certain (see
    /// [`Self::statement_certain`]).
    pub fn portal_certain(&self, name: &str) -> bool {
        self.certain(self.deciding_portal(name))
    }

    fn certain(&self, decided_by: Option<&(MessageId, Change)>) -> bool {
        decided_by.is_none_or(|(id, _)| *id >= self.group_start)
    }

    /// The latest pending change that decides what the statement `name` is, if any. A
    /// refused Parse decides nothing for the rest of its own group: its stand-in fails, so
    /// the server skips what follows it up to the Sync, which is recorded as it would have
    /// run had the Parse not been sent. Past the Sync it decides, and what relies on it
    /// waits for its answer.
    fn deciding_statement(&self, name: &str) -> Option<&(MessageId, Change)> {
        if self.statement_untouched(name) {
            return None;
        }
        self.pending.iter().rev().find(|(id, change)| {
            let decides = match statement_named(change) {
                Some(Some(n)) => n == name,
                Some(None) => true,
                None => false,
            };
            decides && !(matches!(change, Change::RefusedUnnamedParse) && *id >= self.group_start)
        })
    }

    /// The latest pending change that decides what the portal `name` is, if any.
    fn deciding_portal(&self, name: &str) -> Option<&(MessageId, Change)> {
        self.pending.iter().rev().find(|(_, change)| match change {
            Change::Bind(n, _)
            | Change::Sql(SqlChange::Declare(n, _))
            | Change::ClosePortal(n)
            | Change::Sql(SqlChange::Close(Some(n))) => n == name,
            Change::QueryString {
                runs_statement: true,
            } => name.is_empty(),
            Change::Sql(
                SqlChange::Close(None)
                | SqlChange::DiscardAll
                | SqlChange::EndTransaction
                | SqlChange::RollbackTo(_),
            ) => true,
            _ => false,
        })
    }

    pub fn parse(&mut self, name: String, statement: Prepared) -> Result<MessageId, TooMany> {
        if self.prepared.len() >= MAX_PREPARED && !name.is_empty() {
            return Err(TooMany("too many prepared statements in one session"));
        }
        self.push(Change::Parse(name, statement))
    }

    /// A refused Parse of statement `name`, whose stand-in the server will fail. Only one of
    /// the unnamed statement changes anything (it leaves none, see [`Self::failed`]), so
    /// only that one is numbered: a named one keeps what the name held.
    pub fn refused_parse(&mut self, name: &str) -> Result<Option<MessageId>, TooMany> {
        if !name.is_empty() {
            return Ok(None);
        }
        self.push(Change::RefusedUnnamedParse).map(Some)
    }

    /// Binds `portal` to the statement `name` as it will be when the Bind runs.
    pub fn bind(
        &mut self,
        portal: String,
        name: &str,
        params: Arc<[serde_json::Value]>,
    ) -> Result<MessageId, TooMany> {
        // Made only when the statement is unknown: an empty `Arc<str>` allocates too.
        let statement = self.statement(name).unwrap_or_else(|| Prepared {
            text: "".into(),
            kind: StatementKind::Unknown,
            names: None,
            catalog_only: false,
            catalog_unqualified: false,
            plan_only: false,
            copy_in: false,
            recorded: false,
            mentions: None,
            code_epoch: 0,
        });
        self.push(Change::Bind(
            portal,
            Portal {
                statement,
                params,
                held: false,
                rows: 0,
                opened_in: None,
            },
        ))
    }

    pub fn close_statement(&mut self, name: String) -> Result<MessageId, TooMany> {
        self.push(Change::CloseStatement(name))
    }

    pub fn close_portal(&mut self, name: String) -> Result<MessageId, TooMany> {
        self.push(Change::ClosePortal(name))
    }

    /// A SQL statement's change, in the order the server will run it.
    pub fn sql(&mut self, change: SqlChange) -> Result<MessageId, TooMany> {
        if matches!(change, SqlChange::Prepare(..)) && self.prepared.len() >= MAX_PREPARED {
            return Err(TooMany("too many prepared statements in one session"));
        }
        self.push(Change::Sql(change))
    }

    /// The statement `name` as the next message will find it.
    pub fn statement(&self, name: &str) -> Option<Prepared> {
        match self.deciding_statement(name) {
            Some((_, Change::Parse(_, p) | Change::Sql(SqlChange::Prepare(_, p)))) => {
                Some(p.clone())
            }
            Some(_) => None,
            None => self.prepared.get(name).cloned(),
        }
    }

    /// Whether lockbox saw the statement `name` prepared (a Parse or SQL PREPARE it
    /// recorded): server-side code can prepare one it did not.
    pub fn knows_statement(&self, name: &str) -> bool {
        match self.deciding_statement(name) {
            Some((_, Change::Parse(..) | Change::Sql(SqlChange::Prepare(..)))) => true,
            Some(_) => false,
            None => self.prepared.contains_key(name),
        }
    }

    /// The portal `name` as the next Execute will find it.
    pub fn portal(&self, name: &str) -> Option<Portal> {
        match self.deciding_portal(name) {
            Some((_, Change::Bind(_, p) | Change::Sql(SqlChange::Declare(_, p)))) => {
                Some(p.clone())
            }
            // Whether the transaction commits or aborts is the server's to say: only a
            // cursor held from an earlier transaction outlives it either way.
            Some((_, Change::Sql(SqlChange::EndTransaction))) => self
                .portals
                .get(name)
                .filter(|p| p.held && p.opened_in.is_none())
                .cloned(),
            // Which savepoint a name means then is not known yet: only a cursor from an
            // earlier transaction outlives the rollback for certain.
            Some((_, Change::Sql(SqlChange::RollbackTo(_)))) => self
                .portals
                .get(name)
                .filter(|p| p.opened_in.is_none())
                .cloned(),
            Some(_) => None,
            None => self.portals.get(name).cloned(),
        }
    }

    /// One more row taken from the portal `name` (as the server holds it); how many it
    /// returned so far. `None` when no such portal is known to be open.
    pub fn take_row(&mut self, name: &str) -> Option<u64> {
        let portal = self.portals.get_mut(name)?;
        portal.rows += 1;
        Some(portal.rows)
    }

    /// The server took message `id` (its ParseComplete, BindComplete or CloseComplete, or,
    /// for a SQL change, its CommandComplete `tag`). Changes made before it that are still
    /// waiting were not taken: after an error the server takes nothing more until Sync.
    pub fn confirm(&mut self, id: MessageId, tag: Option<&str>) -> Result<(), LostTrack> {
        while self.pending.front().is_some_and(|(at, _)| *at < id) {
            self.pop_pending();
        }
        let change = match self.pending.front() {
            Some((at, _)) if *at == id => self.pop_pending().map(|(_, c)| c),
            _ => None,
        };
        let Some(change) = change else {
            return Err(LostTrack(format!("message {id} changed no name")));
        };
        match (change, tag) {
            (Change::Parse(name, statement), None) => {
                self.prepared.insert(name, statement);
            }
            (Change::Bind(name, portal), None) => self.open_portal(name, portal),
            (Change::CloseStatement(name), None) => {
                self.prepared.remove(&name);
            }
            (Change::ClosePortal(name), None) => {
                self.portals.remove(&name);
            }
            (Change::Sql(change), Some(tag)) if change.confirmed_by(tag) => self.apply(change, tag),
            // A statement that completed as something else changed no name.
            (Change::Sql(_), Some(_)) => {}
            (_, tag) => {
                return Err(LostTrack(format!(
                    "message {id} was answered by {}",
                    tag.unwrap_or("a protocol reply")
                )))
            }
        }
        Ok(())
    }

    /// A portal the server opened, in the transaction going on.
    fn open_portal(&mut self, name: String, mut portal: Portal) {
        portal.opened_in = Some(self.savepoints.len());
        self.portals.insert(name, portal);
    }

    fn apply(&mut self, change: SqlChange, tag: &str) {
        match change {
            SqlChange::Prepare(name, statement) => {
                self.prepared.insert(name, statement);
            }
            SqlChange::Deallocate(Some(name)) => {
                self.prepared.remove(&name);
            }
            // The server keeps its unnamed statement apart from the named ones, and
            // `DEALLOCATE ALL` and `DISCARD ALL` drop only those: forgetting it here would
            // leave it to run later as a statement lockbox never saw, its text unrecorded.
            SqlChange::Deallocate(None) => self.prepared.retain(|name, _| name.is_empty()),
            SqlChange::Declare(name, portal) => self.open_portal(name, portal),
            SqlChange::Close(Some(name)) => {
                self.portals.remove(&name);
            }
            SqlChange::Close(None) => self.portals.clear(),
            SqlChange::DiscardAll => {
                self.prepared.retain(|name, _| name.is_empty());
                self.portals.clear();
            }
            SqlChange::EndTransaction => self.end_transaction(tag == "ROLLBACK"),
            SqlChange::Savepoint(name) => self.savepoints.push(name),
            SqlChange::Release(name) => {
                // The savepoint and every later one go; what was opened under them now
                // belongs to the level the savepoint was made at.
                if let Some(at) = self.savepoints.iter().rposition(|s| *s == name) {
                    self.savepoints.truncate(at);
                    for portal in self.portals.values_mut() {
                        portal.opened_in = portal.opened_in.map(|depth| depth.min(at));
                    }
                }
            }
            SqlChange::RollbackTo(name) => {
                // The savepoint stays; what was opened since it goes, WITH HOLD or not.
                if let Some(at) = self.savepoints.iter().rposition(|s| *s == name) {
                    self.savepoints.truncate(at + 1);
                    self.portals
                        .retain(|_, portal| portal.opened_in.is_none_or(|depth| depth <= at));
                }
            }
        }
    }

    /// The transaction ended: its portals end with it, but for those declared WITH HOLD
    /// when it committed (the server materialises them). Closing a portal is not undone by
    /// a rollback, and prepared statements are not transactional.
    fn end_transaction(&mut self, aborted: bool) {
        self.portals.retain(|_, portal| {
            let kept = portal.held && !(aborted && portal.opened_in.is_some());
            portal.opened_in = None;
            kept
        });
        self.savepoints.clear();
    }

    /// The server failed message `id` (its ErrorResponse answered it, rather than skipped
    /// it). PostgreSQL drops its unnamed statement before it parses a new one, so a Parse of
    /// the unnamed statement that fails (a syntax error, an aborted transaction, a refused
    /// one's stand-in) leaves none: a later Bind of it must not run under the text it held
    /// before. Any other change that fails changed nothing. Changes before it still
    /// waiting were not taken, as in [`Self::confirm`].
    pub fn failed(&mut self, id: MessageId) {
        while self.pending.front().is_some_and(|(at, _)| *at < id) {
            self.pop_pending();
        }
        if self.pending.front().is_none_or(|(at, _)| *at != id) {
            return;
        }
        match self.pop_pending() {
            Some((_, Change::Parse(name, _))) if name.is_empty() => {
                self.prepared.remove("");
            }
            Some((_, Change::RefusedUnnamedParse)) => {
                self.prepared.remove("");
            }
            // The server drops its unnamed portal before it decodes the parameters and
            // plans (`exec_bind_message`): whether this one failed before that or after,
            // lockbox cannot tell, so it knows of none (an Execute of it is refused below
            // admin rather than recorded under the text of a portal that may be gone).
            Some((_, Change::Bind(name, _))) if name.is_empty() => {
                self.portals.remove("");
            }
            _ => {}
        }
    }

    /// A refused Parse of the statement `name` earlier in the group being sent: the server
    /// will skip the rest of the group, so a Bind of it there binds nothing and is no
    /// refusal of its own.
    pub fn refused_in_group(&self, name: &str) -> bool {
        name.is_empty()
            && self
                .pending
                .iter()
                .rev()
                .take_while(|(id, _)| *id >= self.group_start)
                .any(|(_, change)| matches!(change, Change::RefusedUnnamedParse))
    }

    /// The server answered an ErrorResponse.
    pub fn server_failed(&mut self) {
        self.failed_since_ready = true;
    }

    /// ReadyForQuery, which ends the group up to message `through` (when the tracker knows
    /// of one): what the group did not get confirmed never happened; outside a transaction
    /// only cursors declared WITH HOLD survive, and not those of an implicit transaction
    /// (a query string's, a pipeline's up to its Sync) that an error rolled back. An
    /// explicit one ended already, at its COMMIT or ROLLBACK.
    pub fn settle(&mut self, through: Option<MessageId>, transaction_status: u8) {
        if let Some(through) = through {
            while self.pending.front().is_some_and(|(at, _)| *at <= through) {
                // The query string this ReadyForQuery ends ran (one the server skipped
                // has none of its own: its changes end with the Sync's). Its unnamed portal
                // is gone even when it failed: an error before its statement took the
                // portal (an aborted transaction, analysis, planning) leaves the old one,
                // but one after leaves a failed portal in its place, whose Execute in a
                // transaction block crashes PostgreSQL 15 (a review found it); lockbox
                // cannot tell the two apart, so it knows of none.
                if let Some((at, Change::QueryString { runs_statement })) = self.pop_pending() {
                    if at == through {
                        self.prepared.remove("");
                        if runs_statement {
                            self.portals.remove("");
                        }
                    }
                }
            }
        }
        let failed = std::mem::take(&mut self.failed_since_ready);
        if transaction_status == b'I' {
            self.end_transaction(failed);
        }
    }
}

/// The bytes of statement text a change brings of its own.
fn own_text(change: &Change) -> usize {
    match change {
        Change::Parse(_, p) | Change::Sql(SqlChange::Prepare(_, p)) => p.text.len(),
        Change::Sql(SqlChange::Declare(_, portal)) => portal.statement.text.len(),
        _ => 0,
    }
}

/// What a change brings the session to keep: a statement (its text and names), a portal's
/// parameter values (a Bind shares its statement's), a cursor.
fn own_weight(change: &Change) -> usize {
    use weight::Weighs;
    match change {
        Change::Parse(name, p) | Change::Sql(SqlChange::Prepare(name, p)) => {
            name.len() + p.weight()
        }
        Change::Bind(_, portal) => weight::params_weight(&portal.params),
        Change::Sql(SqlChange::Declare(name, portal)) => name.len() + portal.weight(),
        _ => 0,
    }
}

/// The statement a change touches: `Some(Some(name))`, or `Some(None)` for all of them.
fn statement_named(change: &Change) -> Option<Option<&str>> {
    match change {
        Change::Parse(n, _)
        | Change::Sql(SqlChange::Prepare(n, _))
        | Change::CloseStatement(n)
        | Change::Sql(SqlChange::Deallocate(Some(n))) => Some(Some(n)),
        Change::RefusedUnnamedParse | Change::QueryString { .. } => Some(Some("")),
        Change::Sql(SqlChange::Deallocate(None) | SqlChange::DiscardAll) => Some(None),
        _ => None,
    }
}

#[path = "statements_weight.rs"]
mod weight;

#[cfg(test)]
#[path = "statements_tests.rs"]
mod tests;
