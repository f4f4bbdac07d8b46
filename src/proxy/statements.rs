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
}

enum Change {
    Parse(String, Prepared),
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
    prepared: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    pending: VecDeque<(MessageId, Change)>,
    /// How many pending changes name each statement (Parse, PREPARE, Close, DEALLOCATE),
    /// and how many change them all (DEALLOCATE ALL, DISCARD ALL): a lookup of a name no
    /// pending change touches goes straight to `prepared`, without a walk of `pending`.
    pending_by_statement: HashMap<String, usize>,
    pending_all_statements: usize,
    /// Bytes of statement text in `pending`.
    pending_text: usize,
    /// The next message's number.
    next_id: MessageId,
    /// The first message of the group the client is sending now (after its last Sync,
    /// query string or FunctionCall).
    group_start: MessageId,
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

    /// The latest pending change that decides what the statement `name` is, if any.
    fn deciding_statement(&self, name: &str) -> Option<&(MessageId, Change)> {
        if self.statement_untouched(name) {
            return None;
        }
        self.pending
            .iter()
            .rev()
            .find(|(_, change)| match statement_named(change) {
                Some(Some(n)) => n == name,
                Some(None) => true,
                None => false,
            })
    }

    /// The latest pending change that decides what the portal `name` is, if any.
    fn deciding_portal(&self, name: &str) -> Option<&(MessageId, Change)> {
        self.pending.iter().rev().find(|(_, change)| match change {
            Change::Bind(n, _)
            | Change::Sql(SqlChange::Declare(n, _))
            | Change::ClosePortal(n)
            | Change::Sql(SqlChange::Close(Some(n))) => n == name,
            Change::Sql(SqlChange::Close(None) | SqlChange::DiscardAll) => true,
            _ => false,
        })
    }

    pub fn parse(&mut self, name: String, statement: Prepared) -> Result<MessageId, TooMany> {
        if self.prepared.len() >= MAX_PREPARED && !name.is_empty() {
            return Err(TooMany("too many prepared statements in one session"));
        }
        self.push(Change::Parse(name, statement))
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
        });
        self.push(Change::Bind(
            portal,
            Portal {
                statement,
                params,
                held: false,
                rows: 0,
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

    /// The portal `name` as the next Execute will find it.
    pub fn portal(&self, name: &str) -> Option<Portal> {
        match self.deciding_portal(name) {
            Some((_, Change::Bind(_, p) | Change::Sql(SqlChange::Declare(_, p)))) => {
                Some(p.clone())
            }
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
            (Change::Bind(name, portal), None) => {
                self.portals.insert(name, portal);
            }
            (Change::CloseStatement(name), None) => {
                self.prepared.remove(&name);
            }
            (Change::ClosePortal(name), None) => {
                self.portals.remove(&name);
            }
            (Change::Sql(change), Some(tag)) if change.confirmed_by(tag) => self.apply(change),
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

    fn apply(&mut self, change: SqlChange) {
        match change {
            SqlChange::Prepare(name, statement) => {
                self.prepared.insert(name, statement);
            }
            SqlChange::Deallocate(Some(name)) => {
                self.prepared.remove(&name);
            }
            SqlChange::Deallocate(None) => self.prepared.clear(),
            SqlChange::Declare(name, portal) => {
                self.portals.insert(name, portal);
            }
            SqlChange::Close(Some(name)) => {
                self.portals.remove(&name);
            }
            SqlChange::Close(None) => self.portals.clear(),
            SqlChange::DiscardAll => {
                self.prepared.clear();
                self.portals.clear();
            }
        }
    }

    /// ReadyForQuery, which ends the group up to message `through` (when the tracker knows
    /// of one): what the group did not get confirmed never happened; outside a transaction
    /// only cursors declared WITH HOLD survive.
    pub fn settle(&mut self, through: Option<MessageId>, transaction_status: u8) {
        if let Some(through) = through {
            while self.pending.front().is_some_and(|(at, _)| *at <= through) {
                self.pop_pending();
            }
        }
        if transaction_status == b'I' {
            self.portals.retain(|_, portal| portal.held);
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

/// The statement a change touches: `Some(Some(name))`, or `Some(None)` for all of them.
fn statement_named(change: &Change) -> Option<Option<&str>> {
    match change {
        Change::Parse(n, _)
        | Change::Sql(SqlChange::Prepare(n, _))
        | Change::CloseStatement(n)
        | Change::Sql(SqlChange::Deallocate(Some(n))) => Some(Some(n)),
        Change::Sql(SqlChange::Deallocate(None) | SqlChange::DiscardAll) => Some(None),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(text: &str) -> Prepared {
        Prepared {
            text: text.into(),
            kind: StatementKind::Other,
            names: None,
            catalog_only: false,
            catalog_unqualified: false,
            plan_only: false,
            copy_in: false,
            recorded: false,
            mentions: None,
        }
    }

    fn text_of(s: &Statements, portal: &str) -> String {
        s.portal(portal)
            .map(|p| p.statement.text.to_string())
            .unwrap_or_default()
    }

    /// A Sync: its ReadyForQuery settles what came before it.
    fn sync(s: &mut Statements, status: u8) {
        let id = s.message();
        s.settle(Some(id), status);
    }

    #[test]
    fn a_rejected_parse_does_not_replace_the_statement() {
        let mut s = Statements::default();
        let parse = s.parse("s1".into(), stmt("DELETE FROM t")).expect("parse");
        s.confirm(parse, None).expect("confirmed");
        sync(&mut s, b'I');
        // The server answers 42P05 (already exists): no ParseComplete.
        s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
        sync(&mut s, b'I');
        s.bind("".into(), "s1", Arc::from([])).expect("bind");
        assert_eq!(text_of(&s, ""), "DELETE FROM t");
    }

    #[test]
    fn a_name_changed_in_an_earlier_group_is_uncertain_until_that_group_settles() {
        let mut s = Statements::default();
        let parse = s.parse("s1".into(), stmt("DELETE FROM t")).expect("parse");
        s.confirm(parse, None).expect("confirmed");
        sync(&mut s, b'T');
        assert!(s.statement_certain("s1"));
        // Pipelined: a Parse of the same name (the server will reject it: 42P05), its
        // Sync, then a Bind.
        s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
        assert!(
            s.statement_certain("s1"),
            "in its own group the Parse decides: if it fails, the rest is skipped"
        );
        let group_end = s.end_group();
        assert!(
            !s.statement_certain("s1"),
            "past its Sync it may have failed"
        );
        assert!(
            s.statement_certain("s2"),
            "a name nothing changes is certain"
        );
        s.settle(Some(group_end), b'T');
        assert!(s.statement_certain("s1"));
        s.bind("p".into(), "s1", Arc::from([])).expect("bind");
        assert_eq!(text_of(&s, "p"), "DELETE FROM t");
        // Portals likewise.
        assert!(s.portal_certain("p"));
        let group_end = s.end_group();
        assert!(!s.portal_certain("p"));
        s.settle(Some(group_end), b'T');
        assert!(s.portal_certain("p"));
        // DISCARD ALL decides every name.
        s.sql(SqlChange::DiscardAll).expect("discard");
        s.end_group();
        assert!(!s.statement_certain("s2") && !s.portal_certain("q"));
    }

    #[test]
    fn the_changes_waiting_and_their_text_are_counted_until_answered() {
        let mut s = Statements::default();
        let parse = s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
        s.bind("".into(), "s1", Arc::from([])).expect("bind");
        assert_eq!(
            s.pending_load(),
            (2, "SELECT 1".len()),
            "a Bind shares its text"
        );
        assert_eq!(text_of(&s, ""), "SELECT 1");
        s.confirm(parse, None).expect("confirmed");
        assert_eq!(s.pending_load(), (1, 0));
        let group_end = s.end_group();
        s.settle(Some(group_end), b'I');
        assert_eq!(s.pending_load(), (0, 0));
        assert_eq!(
            s.statement("s1").map(|p| p.text.to_string()).as_deref(),
            Some("SELECT 1"),
            "a name no pending change touches is found without a walk"
        );
        // A bound on text: what waits may not grow past it.
        let big = "x".repeat(MAX_PENDING_TEXT / 2 + 1);
        s.parse("a".into(), stmt(&big)).expect("half fits");
        assert!(
            s.parse("b".into(), stmt(&big)).is_err(),
            "the second half does not"
        );
    }

    #[test]
    fn in_flight_changes_are_seen_by_later_messages_of_the_pipeline() {
        let mut s = Statements::default();
        let parse = s.parse("".into(), stmt("SELECT 2")).expect("parse");
        let bind = s.bind("".into(), "", Arc::from([])).expect("bind");
        assert_eq!(text_of(&s, ""), "SELECT 2");
        s.confirm(parse, None).expect("parse confirmed");
        s.confirm(bind, None).expect("bind confirmed");
        sync(&mut s, b'T');
        assert_eq!(text_of(&s, ""), "SELECT 2");
        sync(&mut s, b'I');
        assert_eq!(text_of(&s, ""), "", "portals end with the transaction");
    }

    #[test]
    fn a_confirmation_takes_effect_only_for_the_message_it_answers() {
        // Two Parses of one name: the reply to the second cannot confirm the first's text,
        // whatever was left waiting before it.
        let mut s = Statements::default();
        s.parse("s1".into(), stmt("SELECT 'harmless'"))
            .expect("parse");
        let real = s
            .parse("s1".into(), stmt("UPDATE t SET x = 1"))
            .expect("parse");
        s.confirm(real, None).expect("confirmed");
        sync(&mut s, b'I');
        s.bind("".into(), "s1", Arc::from([])).expect("bind");
        assert_eq!(text_of(&s, ""), "UPDATE t SET x = 1");
    }

    #[test]
    fn a_reply_for_a_message_that_changed_nothing_is_lost_track() {
        let mut s = Statements::default();
        let parse = s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
        let describe = s.message();
        assert!(
            s.confirm(describe, None).is_err(),
            "no change was made by it"
        );
        // A settled message cannot be confirmed afterwards either.
        sync(&mut s, b'I');
        assert!(s.confirm(parse, None).is_err());
        // Nor can a Parse be confirmed by a SQL statement's tag.
        let parse = s.parse("s2".into(), stmt("SELECT 2")).expect("parse");
        assert!(s.confirm(parse, Some("PREPARE")).is_err());
    }

    #[test]
    fn sql_prepare_and_deallocate_share_the_namespace_of_parse() {
        let mut s = Statements::default();
        let parse = s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
        s.confirm(parse, None).expect("confirmed");
        sync(&mut s, b'I');
        // DEALLOCATE s1; PREPARE s1 AS DELETE … in one simple Query, both confirmed.
        let deallocate = s
            .sql(SqlChange::Deallocate(Some("s1".into())))
            .expect("deallocate");
        let prepare = s
            .sql(SqlChange::Prepare(
                "s1".into(),
                stmt("PREPARE s1 AS DELETE FROM t"),
            ))
            .expect("prepare");
        s.confirm(deallocate, Some("DEALLOCATE"))
            .expect("confirmed");
        s.confirm(prepare, Some("PREPARE")).expect("confirmed");
        sync(&mut s, b'I');
        s.bind("".into(), "s1", Arc::from([])).expect("bind");
        assert_eq!(text_of(&s, ""), "PREPARE s1 AS DELETE FROM t");
    }

    #[test]
    fn an_unconfirmed_sql_change_never_happened() {
        let mut s = Statements::default();
        let parse = s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
        s.confirm(parse, None).expect("confirmed");
        sync(&mut s, b'I');
        // DEALLOCATE ALL fails (inside an aborted transaction, say): no CommandComplete.
        s.sql(SqlChange::Deallocate(None)).expect("deallocate");
        sync(&mut s, b'E');
        s.bind("".into(), "s1", Arc::from([])).expect("bind");
        assert_eq!(text_of(&s, ""), "SELECT 1");
        // One that completes as something else changed nothing either.
        let odd = s.sql(SqlChange::Deallocate(None)).expect("deallocate");
        s.confirm(odd, Some("SELECT 1"))
            .expect("a statement's own tag");
        sync(&mut s, b'I');
        s.bind("".into(), "s1", Arc::from([])).expect("bind");
        assert_eq!(text_of(&s, ""), "SELECT 1");
    }

    #[test]
    fn declared_cursors_are_portals_and_held_ones_outlive_the_transaction() {
        let mut s = Statements::default();
        let cursor = |text: &str, held| Portal {
            statement: stmt(text),
            params: Arc::from([]),
            held,
            rows: 0,
        };
        let c = s
            .sql(SqlChange::Declare(
                "c".into(),
                cursor("DECLARE c CURSOR FOR SELECT 1", false),
            ))
            .expect("declare");
        let h = s
            .sql(SqlChange::Declare(
                "h".into(),
                cursor("DECLARE h CURSOR WITH HOLD FOR SELECT 2", true),
            ))
            .expect("declare");
        s.confirm(c, Some("DECLARE CURSOR")).expect("confirmed");
        s.confirm(h, Some("DECLARE CURSOR")).expect("confirmed");
        sync(&mut s, b'T');
        assert_eq!(text_of(&s, "c"), "DECLARE c CURSOR FOR SELECT 1");
        sync(&mut s, b'I');
        assert_eq!(
            text_of(&s, "c"),
            "",
            "a plain cursor ends with its transaction"
        );
        assert_eq!(text_of(&s, "h"), "DECLARE h CURSOR WITH HOLD FOR SELECT 2");
        let discard = s.sql(SqlChange::DiscardAll).expect("discard");
        s.confirm(discard, Some("DISCARD ALL")).expect("confirmed");
        sync(&mut s, b'I');
        assert_eq!(text_of(&s, "h"), "");
    }

    #[test]
    fn a_portals_rows_add_up_until_its_name_is_bound_again() {
        let mut s = Statements::default();
        let parse = s.parse("".into(), stmt("SELECT 1")).expect("parse");
        let bind = s.bind("".into(), "", Arc::from([])).expect("bind");
        assert_eq!(s.take_row(""), None, "not open until the server says so");
        s.confirm(parse, None).expect("parse confirmed");
        s.confirm(bind, None).expect("bind confirmed");
        assert_eq!(s.take_row(""), Some(1));
        assert_eq!(
            s.take_row(""),
            Some(2),
            "a second Execute adds to the first's"
        );
        let again = s.bind("".into(), "", Arc::from([])).expect("bind");
        s.confirm(again, None).expect("bind confirmed");
        assert_eq!(s.take_row(""), Some(1), "a new portal of the same name");
        assert_eq!(s.take_row("c"), None);
    }
}
