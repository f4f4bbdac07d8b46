//! Names of prepared statements and portals that a statement runs: whether the text they
//! run is in the audit trail, and whether the server reads a name as the proxy does. A
//! Parse or Bind makes no record of its own (its text is recorded as an Execute runs it),
//! so SQL that runs one by name (`EXECUTE s`, `FETCH p`) would run text no record holds.

use std::sync::Arc;

use super::Relay;
use crate::guard::{self, NameChange, Refusal};
use crate::policy::AccessLevel;
use crate::sql::StatementKind;

impl Relay {
    /// The audit kind of a statement; one that runs a prepared statement or portal by name
    /// takes the kind of what it runs (see [`Relay::kind_by_name`]).
    pub(super) fn kind_of(&self, analysis: &guard::Analysis) -> StatementKind {
        self.kind_by_name(analysis.facts.names.as_ref(), analysis.kind)
    }

    /// `EXECUTE name` takes the kind of the statement it runs, and `FETCH`/`MOVE` the kind
    /// of its portal's statement (a Bind of a prepared DELETE … RETURNING deletes as it is
    /// fetched); `own`: the statement's own kind.
    pub(super) fn kind_by_name(
        &self,
        names: Option<&NameChange>,
        own: StatementKind,
    ) -> StatementKind {
        match names {
            Some(NameChange::Execute(name)) if own == StatementKind::Other => {
                self.statements.statement(name).map_or(own, |p| p.kind)
            }
            Some(NameChange::Fetch(name)) => self
                .statements
                .portal(name)
                .map_or(own, |p| p.statement.kind),
            _ => own,
        }
    }

    /// The Bind values a statement runs with by name: `FETCH` from a portal a Bind made of
    /// a prepared statement runs it with the portal's values, which no other record holds.
    pub(super) fn params_by_name(
        &self,
        names: Option<&NameChange>,
    ) -> Option<Arc<[serde_json::Value]>> {
        match names {
            Some(NameChange::Fetch(name)) => self
                .statements
                .portal(name)
                .map(|p| p.params.clone())
                .filter(|params| !params.is_empty()),
            _ => None,
        }
    }

    /// `EXECUTE name`, `FETCH`/`MOVE` from a cursor: the name must be one lockbox saw
    /// created by a recorded statement, or the audit could not say what runs (server-side
    /// code can PREPARE and open cursors; an admin grant may use those).
    pub(super) fn check_names(&self, analysis: &guard::Analysis) -> Result<(), Refusal> {
        self.check_name_use(analysis.facts.names.as_ref())
    }

    /// A statement that runs a prepared statement or fetches from a cursor by name: below
    /// admin, the name must be one lockbox saw created; for any grant, not one it saw made
    /// by a Parse or Bind.
    pub(super) fn check_name_use(&self, names: Option<&NameChange>) -> Result<(), Refusal> {
        // Only a name whose text is in the trail: one made by SQL PREPARE or DECLARE (a
        // Parse or Bind has no record of its own; its text is recorded as an Execute runs
        // it, which SQL EXECUTE or FETCH would not do). An admin may also use a name
        // lockbox never saw made: only code whose own text is recorded (a DO block's
        // dynamic PREPARE) can have made it.
        // And, for every grant, one no unanswered change of an earlier group decides: a
        // re-PREPARE the server rejects (42P05) would leave the old statement to run, a
        // DEALLOCATE or CLOSE it skips would leave the name to a Parse or Bind.
        let admin = self.grant.access == AccessLevel::Admin;
        if let Some((name, rule)) = names.and_then(name_and_rule) {
            if !self.grant.server_utf8 && !read_alike_in_any_encoding(name) {
                return Err(Refusal {
                    rule,
                    message: format!(
                        "lockbox: the name \"{name}\" may mean another one to this server, whose encoding is not UTF8 (only ASCII names under 60 bytes are read alike), so what it runs could go unrecorded (rule {rule})"
                    ),
                });
            }
        }
        match names {
            Some(NameChange::Execute(name)) if !self.statements.statement_certain(name) => {
                Err(uncertain_name_refusal("unknown_statement", name))
            }
            Some(NameChange::Fetch(name)) if !self.statements.portal_certain(name) => {
                Err(uncertain_name_refusal("unknown_cursor", name))
            }
            Some(NameChange::Execute(name))
                if !self
                    .statements
                    .statement(name)
                    .map_or(admin, |p| p.recorded) =>
            {
                Err(unknown_name_refusal("unknown_statement", name))
            }
            Some(NameChange::Fetch(name))
                if !self
                    .statements
                    .portal(name)
                    .map_or(admin, |p| p.statement.recorded) =>
            {
                Err(unknown_name_refusal("unknown_cursor", name))
            }
            // SQL EXECUTE plans its statement again, under the catalog as it is now.
            Some(NameChange::Execute(name)) if self.grant.code_epoch != 0 => self
                .statements
                .statement(name)
                .map_or(Ok(()), |statement| self.recheck_prepared(&statement)),
            _ => Ok(()),
        }
    }

    /// A statement's or portal's name in a Parse, Bind, Execute or Close: on a server whose
    /// encoding is not UTF8, ASCII only. The server converts a name to its encoding, where
    /// it may take more than 63 bytes and be cut to another name, one the proxy would not
    /// know it for (what ran under it could go unrecorded). Drivers name their statements
    /// in ASCII.
    pub(super) fn protocol_name(&self, name: &str) -> Result<(), String> {
        if self.grant.server_utf8 || name.is_ascii() {
            return Ok(());
        }
        Err(format!(
            "the statement or portal name \"{name}\" is not ASCII, which lockbox takes only where the server's encoding is UTF8"
        ))
    }
}

/// The name a statement gives a prepared statement or cursor, and the rule it falls under.
fn name_and_rule(change: &NameChange) -> Option<(&str, &'static str)> {
    match change {
        NameChange::Prepare(name)
        | NameChange::Execute(name)
        | NameChange::Deallocate(Some(name)) => Some((name, "unknown_statement")),
        NameChange::Declare(name) | NameChange::Fetch(name) | NameChange::Close(Some(name)) => {
            Some((name, "unknown_cursor"))
        }
        NameChange::Deallocate(None)
        | NameChange::Close(None)
        | NameChange::DiscardAll
        | NameChange::EndTransaction
        | NameChange::Savepoint(_)
        | NameChange::Release(_)
        | NameChange::RollbackTo(_) => None,
    }
}

/// A name the parser and a server of any encoding read alike: ASCII (one byte per character
/// everywhere), and too short to have been cut: the parser cuts an identifier over 63 bytes
/// at a UTF-8 character's start, so a cut name is at least 60 bytes long, and a server in
/// another encoding cuts the same text elsewhere (an attack review ran a Parse'd
/// statement's text, unrecorded, under a name a LATIN1 server and the parser read apart).
fn read_alike_in_any_encoding(name: &str) -> bool {
    name.is_ascii() && name.len() < 60
}

pub(super) fn unknown_name_refusal(rule: &'static str, name: &str) -> Refusal {
    Refusal {
        rule,
        message: format!(
            "lockbox: \"{name}\" was not created by a statement lockbox recorded, so what it runs cannot be recorded (rule {rule})"
        ),
    }
}

fn uncertain_name_refusal(rule: &'static str, name: &str) -> Refusal {
    Refusal {
        rule,
        message: format!(
            "lockbox: \"{name}\" was changed by a message the server has not answered yet, so what it runs cannot be known; send this once that is answered (rule {rule})"
        ),
    }
}
