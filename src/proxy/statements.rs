//! The prepared statements and portals of a session, as the server holds them.
//!
//! A Parse, Bind or Close takes effect only if the server confirms it (ParseComplete,
//! BindComplete, CloseComplete): the server rejects a Parse of a name that exists, and
//! skips everything after an error until Sync. Were the proxy to believe the client, a
//! rejected `Parse s1 'SELECT 1'` would make the audit name the wrong text for a later
//! execution of `s1`. So changes wait in order until confirmed; lookups for messages still
//! in flight see them (if those run, the changes before them took effect).
//!
//! SQL shares these namespaces with the protocol, as in the server: `PREPARE` creates a
//! statement a Bind may use and `EXECUTE` runs one a Parse made; `DECLARE` creates a portal
//! an Execute may fetch from; `DEALLOCATE [ALL]`, `CLOSE [ALL]` and `DISCARD ALL` remove
//! them. Those changes wait for their CommandComplete the same way.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

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
}

/// A portal created with Bind or SQL DECLARE.
#[derive(Clone)]
pub struct Portal {
    pub statement: Prepared,
    pub params: Vec<serde_json::Value>,
    /// A cursor declared WITH HOLD survives the end of its transaction.
    pub held: bool,
}

enum Change {
    Parse(String, Prepared),
    Bind(String, Portal),
    CloseStatement(String),
    ClosePortal(String),
    /// A SQL statement's change, confirmed by its CommandComplete.
    Sql(SqlChange),
    /// A Sync or a simple Query: its ReadyForQuery drops what was not confirmed.
    GroupEnd,
}

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

/// Whether a command tag is one that confirms a SQL change.
pub fn is_namespace_tag(tag: &str) -> bool {
    matches!(tag, "PREPARE" | "DECLARE CURSOR" | "DISCARD ALL")
        || tag.starts_with("DEALLOCATE")
        || tag.starts_with("CLOSE CURSOR")
}

/// What confirms a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// CloseComplete.
    Close,
    /// CommandComplete of PREPARE, DEALLOCATE, DECLARE CURSOR, CLOSE CURSOR, DISCARD ALL.
    Command(String),
}

/// Most changes that may wait for confirmation, and most statements a session may keep.
pub const MAX_PENDING: usize = 10_000;
pub const MAX_PREPARED: usize = 10_000;

#[derive(Default)]
pub struct Statements {
    prepared: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    pending: VecDeque<Change>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TooMany(&'static str);

impl Statements {
    fn push(&mut self, change: Change) -> Result<(), TooMany> {
        if self.pending.len() >= MAX_PENDING {
            return Err(TooMany("too many messages waiting for the server's answer"));
        }
        self.pending.push_back(change);
        Ok(())
    }

    pub fn parse(&mut self, name: String, statement: Prepared) -> Result<(), TooMany> {
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
        params: Vec<serde_json::Value>,
    ) -> Result<(), TooMany> {
        let statement = self.statement(name).unwrap_or(Prepared {
            text: "".into(),
            kind: StatementKind::Unknown,
            names: None,
            catalog_only: false,
            catalog_unqualified: false,
        });
        self.push(Change::Bind(
            portal,
            Portal {
                statement,
                params,
                held: false,
            },
        ))
    }

    pub fn close_statement(&mut self, name: String) -> Result<(), TooMany> {
        self.push(Change::CloseStatement(name))
    }

    pub fn close_portal(&mut self, name: String) -> Result<(), TooMany> {
        self.push(Change::ClosePortal(name))
    }

    /// A SQL statement's change, in the order the server will run it.
    pub fn sql(&mut self, change: SqlChange) -> Result<(), TooMany> {
        if matches!(change, SqlChange::Prepare(..)) && self.prepared.len() >= MAX_PREPARED {
            return Err(TooMany("too many prepared statements in one session"));
        }
        self.push(Change::Sql(change))
    }

    pub fn group_end(&mut self) -> Result<(), TooMany> {
        self.push(Change::GroupEnd)
    }

    /// The statement `name` as the next message will find it.
    pub fn statement(&self, name: &str) -> Option<Prepared> {
        for change in self.pending.iter().rev() {
            match change {
                Change::Parse(n, p) | Change::Sql(SqlChange::Prepare(n, p)) if n == name => {
                    return Some(p.clone())
                }
                Change::CloseStatement(n) | Change::Sql(SqlChange::Deallocate(Some(n)))
                    if n == name =>
                {
                    return None
                }
                Change::Sql(SqlChange::Deallocate(None) | SqlChange::DiscardAll) => return None,
                _ => {}
            }
        }
        self.prepared.get(name).cloned()
    }

    /// The portal `name` as the next Execute will find it.
    pub fn portal(&self, name: &str) -> Option<Portal> {
        for change in self.pending.iter().rev() {
            match change {
                Change::Bind(n, p) | Change::Sql(SqlChange::Declare(n, p)) if n == name => {
                    return Some(p.clone())
                }
                Change::ClosePortal(n) | Change::Sql(SqlChange::Close(Some(n))) if n == name => {
                    return None
                }
                Change::Sql(SqlChange::Close(None) | SqlChange::DiscardAll) => return None,
                _ => {}
            }
        }
        self.portals.get(name).cloned()
    }

    /// The server confirmed the oldest change of this kind.
    pub fn confirm(&mut self, what: Confirmation) {
        let Some(position) = self
            .pending
            .iter()
            .position(|c| !matches!(c, Change::GroupEnd))
        else {
            return;
        };
        let Some(change) = self.pending.remove(position) else {
            return;
        };
        match (what, change) {
            (Confirmation::Parse, Change::Parse(name, statement)) => {
                self.prepared.insert(name, statement);
            }
            (Confirmation::Bind, Change::Bind(name, portal)) => {
                self.portals.insert(name, portal);
            }
            (Confirmation::Close, Change::CloseStatement(name)) => {
                self.prepared.remove(&name);
            }
            (Confirmation::Close, Change::ClosePortal(name)) => {
                self.portals.remove(&name);
            }
            (Confirmation::Command(tag), Change::Sql(change)) if change.confirmed_by(&tag) => {
                self.apply(change)
            }
            (what, _) => tracing::warn!(
                ?what,
                "confirmation does not match the oldest pending change"
            ),
        }
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

    /// ReadyForQuery: what the group did not get confirmed never happened; outside a
    /// transaction only cursors declared WITH HOLD survive.
    pub fn ready(&mut self, transaction_status: u8) {
        while let Some(change) = self.pending.pop_front() {
            if matches!(change, Change::GroupEnd) {
                break;
            }
        }
        if transaction_status == b'I' {
            self.portals.retain(|_, portal| portal.held);
        }
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
        }
    }

    fn text_of(s: &Statements, portal: &str) -> String {
        s.portal(portal)
            .map(|p| p.statement.text.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_rejected_parse_does_not_replace_the_statement() {
        let mut s = Statements::default();
        s.parse("s1".into(), stmt("DELETE FROM t")).expect("parse");
        s.group_end().expect("sync");
        s.confirm(Confirmation::Parse);
        s.ready(b'I');
        // The server answers 42P05 (already exists): no ParseComplete.
        s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
        s.group_end().expect("sync");
        s.ready(b'I');
        s.bind("".into(), "s1", vec![]).expect("bind");
        assert_eq!(text_of(&s, ""), "DELETE FROM t");
    }

    #[test]
    fn in_flight_changes_are_seen_by_later_messages_of_the_pipeline() {
        let mut s = Statements::default();
        s.parse("".into(), stmt("SELECT 2")).expect("parse");
        s.bind("".into(), "", vec![]).expect("bind");
        assert_eq!(text_of(&s, ""), "SELECT 2");
        s.confirm(Confirmation::Parse);
        s.confirm(Confirmation::Bind);
        s.group_end().expect("sync");
        s.ready(b'T');
        assert_eq!(text_of(&s, ""), "SELECT 2");
        s.ready(b'I');
        assert_eq!(text_of(&s, ""), "", "portals end with the transaction");
    }

    #[test]
    fn sql_prepare_and_deallocate_share_the_namespace_of_parse() {
        let mut s = Statements::default();
        s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
        s.group_end().expect("sync");
        s.confirm(Confirmation::Parse);
        s.ready(b'I');
        // DEALLOCATE s1; PREPARE s1 AS DELETE … in one simple Query, both confirmed.
        s.sql(SqlChange::Deallocate(Some("s1".into())))
            .expect("deallocate");
        s.sql(SqlChange::Prepare(
            "s1".into(),
            stmt("PREPARE s1 AS DELETE FROM t"),
        ))
        .expect("prepare");
        s.group_end().expect("query end");
        s.confirm(Confirmation::Command("DEALLOCATE".into()));
        s.confirm(Confirmation::Command("PREPARE".into()));
        s.ready(b'I');
        s.bind("".into(), "s1", vec![]).expect("bind");
        assert_eq!(text_of(&s, ""), "PREPARE s1 AS DELETE FROM t");
    }

    #[test]
    fn an_unconfirmed_sql_change_never_happened() {
        let mut s = Statements::default();
        s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
        s.group_end().expect("sync");
        s.confirm(Confirmation::Parse);
        s.ready(b'I');
        // DEALLOCATE ALL fails (inside an aborted transaction, say): no CommandComplete.
        s.sql(SqlChange::Deallocate(None)).expect("deallocate");
        s.group_end().expect("query end");
        s.ready(b'E');
        s.bind("".into(), "s1", vec![]).expect("bind");
        assert_eq!(text_of(&s, ""), "SELECT 1");
    }

    #[test]
    fn declared_cursors_are_portals_and_held_ones_outlive_the_transaction() {
        let mut s = Statements::default();
        let cursor = |text: &str, held| Portal {
            statement: stmt(text),
            params: vec![],
            held,
        };
        s.sql(SqlChange::Declare(
            "c".into(),
            cursor("DECLARE c CURSOR FOR SELECT 1", false),
        ))
        .expect("declare");
        s.sql(SqlChange::Declare(
            "h".into(),
            cursor("DECLARE h CURSOR WITH HOLD FOR SELECT 2", true),
        ))
        .expect("declare");
        s.group_end().expect("query end");
        s.confirm(Confirmation::Command("DECLARE CURSOR".into()));
        s.confirm(Confirmation::Command("DECLARE CURSOR".into()));
        s.ready(b'T');
        assert_eq!(text_of(&s, "c"), "DECLARE c CURSOR FOR SELECT 1");
        s.ready(b'I');
        assert_eq!(
            text_of(&s, "c"),
            "",
            "a plain cursor ends with its transaction"
        );
        assert_eq!(text_of(&s, "h"), "DECLARE h CURSOR WITH HOLD FOR SELECT 2");
        s.sql(SqlChange::DiscardAll).expect("discard");
        s.group_end().expect("query end");
        s.confirm(Confirmation::Command("DISCARD ALL".into()));
        s.ready(b'I');
        assert_eq!(text_of(&s, "h"), "");
    }
}
