//! The prepared statements and portals of a session, as the server holds them.
//!
//! A Parse, Bind or Close takes effect only if the server confirms it (ParseComplete,
//! BindComplete, CloseComplete): the server rejects a Parse of a name that exists, and
//! skips everything after an error until Sync. Were the proxy to believe the client, a
//! rejected `Parse s1 'SELECT 1'` would make the audit name the wrong text for a later
//! execution of `s1`. So changes wait in order until confirmed; lookups for messages still
//! in flight see them (if those run, the changes before them took effect).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::sql::StatementKind;

/// A statement prepared with Parse ("" is the unnamed one).
#[derive(Clone)]
pub struct Prepared {
    pub text: Arc<str>,
    pub kind: StatementKind,
}

/// A portal created with Bind.
#[derive(Clone)]
pub struct Portal {
    pub statement: Prepared,
    pub params: Vec<serde_json::Value>,
}

enum Change {
    Parse(String, Prepared),
    Bind(String, Portal),
    CloseStatement(String),
    ClosePortal(String),
    /// A Sync or a simple Query: its ReadyForQuery drops what was not confirmed.
    GroupEnd,
}

/// What confirms a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// CloseComplete.
    Close,
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
        });
        self.push(Change::Bind(portal, Portal { statement, params }))
    }

    pub fn close_statement(&mut self, name: String) -> Result<(), TooMany> {
        self.push(Change::CloseStatement(name))
    }

    pub fn close_portal(&mut self, name: String) -> Result<(), TooMany> {
        self.push(Change::ClosePortal(name))
    }

    pub fn group_end(&mut self) -> Result<(), TooMany> {
        self.push(Change::GroupEnd)
    }

    /// The statement `name` as the next message will find it.
    fn statement(&self, name: &str) -> Option<Prepared> {
        for change in self.pending.iter().rev() {
            match change {
                Change::Parse(n, p) if n == name => return Some(p.clone()),
                Change::CloseStatement(n) if n == name => return None,
                _ => {}
            }
        }
        self.prepared.get(name).cloned()
    }

    /// The portal `name` as the next Execute will find it.
    pub fn portal(&self, name: &str) -> Option<Portal> {
        for change in self.pending.iter().rev() {
            match change {
                Change::Bind(n, p) if n == name => return Some(p.clone()),
                Change::ClosePortal(n) if n == name => return None,
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
            (what, _) => tracing::warn!(
                ?what,
                "confirmation does not match the oldest pending change"
            ),
        }
    }

    /// ReadyForQuery: what the group did not get confirmed never happened; outside a
    /// transaction no portal survives.
    pub fn ready(&mut self, transaction_status: u8) {
        while let Some(change) = self.pending.pop_front() {
            if matches!(change, Change::GroupEnd) {
                break;
            }
        }
        if transaction_status == b'I' {
            self.portals.clear();
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
}
