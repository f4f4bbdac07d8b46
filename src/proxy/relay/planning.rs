//! A Bind runs code before any Execute: PostgreSQL converts its parameters (a domain's
//! check runs then) and plans a query (planning folds an immutable or stable call with
//! constant arguments and evaluates an INSERT's column defaults), so a database function
//! among them runs at Bind — and may do anything, through the volatile functions it calls.
//! A Bind goes upstream only behind a durable record that covers it: its portal's Execute's,
//! when that Execute is inspected in the same batch right after it (past Describes of the
//! portal), or else a record of its own (`protocol: "bind"`, its outcome the server's answer
//! to the Bind). A Bind at the end of what the client sent so far waits in the buffer for
//! the client's next messages to tell; that delays no reply, since the server answers a
//! Bind only at the client's next Flush or Sync. A review showed why "the Execute follows"
//! must mean "inspected in the same batch": an Execute held back (the backlog bound) let
//! its Bind go upstream alone, and the server planned it while no record existed.

use std::sync::Arc;

use super::inspect::stand_in_bind;
use super::names::unknown_name_refusal;
use super::{Pending, Relay};
use crate::audit::{AuditEvent, Protocol};
use crate::proxy::tracker::Step;
use crate::wire;

/// How far past a Bind the client's messages are searched for its Execute. Clients send
/// the Execute next, or after a Describe of the portal; past this many bytes of such
/// Describes the Bind is taken to come alone.
const LOOKAHEAD: usize = 64 << 10;

/// What follows a Bind in what the client sent so far.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AfterBind {
    /// The Execute of its portal (past Describes of the portal).
    Execute,
    /// Another message first, or more than [`LOOKAHEAD`] bytes of Describes.
    Alone,
    /// Not known until the client sends more.
    NotYet,
}

/// A Bind whose portal's Execute the client sent right after it, not inspected yet: the
/// Bind's pending step, and its portal and statement.
pub(super) struct Unexecuted {
    at: usize,
    portal: String,
    /// The statement's name, when lockbox did not see it prepared.
    unknown_statement: Option<String>,
}

/// What follows a Bind of `portal`: `rest` is what the client sent after it.
pub(super) fn after_bind(rest: &[u8], portal: &[u8], max_message: usize) -> AfterBind {
    let mut at = 0;
    loop {
        let Some(&tag) = rest.get(at) else {
            return AfterBind::NotYet;
        };
        if at > LOOKAHEAD || !matches!(tag, b'D' | b'E') {
            return AfterBind::Alone;
        }
        let len = match wire::frame_len(&rest[at..], max_message) {
            Ok(Some(len)) => len,
            Ok(None) => return AfterBind::NotYet,
            // Refused as it is inspected.
            Err(_) => return AfterBind::Alone,
        };
        let body = &rest[at + 5..at + len];
        match tag {
            b'E' if named(body) == Some(portal) => return AfterBind::Execute,
            // A Describe of the portal cannot fail once it is bound; any other Describe
            // can, and the server would then skip the Execute (a review's Describe of a
            // missing statement between them).
            b'D' if body.first() == Some(&b'P') && named(&body[1..]) == Some(portal) => {}
            _ => return AfterBind::Alone,
        }
        at += len;
    }
}

impl Relay {
    /// Whether the Bind `frame` must wait for the client's next messages; if not, whether it
    /// comes alone (see [`Relay::bind_step`]). `rest`: what the client sent after it.
    pub(super) fn bind_waits(&mut self, frame: &[u8], rest: &[u8]) -> bool {
        let body = &frame[5..];
        let Some(portal_end) = body.iter().position(|b| *b == 0) else {
            // Malformed: refused as it is inspected.
            self.bind_alone = false;
            return false;
        };
        match after_bind(rest, &body[..portal_end], self.max_message) {
            AfterBind::NotYet => true,
            after => {
                self.bind_alone = after == AfterBind::Alone;
                false
            }
        }
    }

    /// The Bind (message `id`, already applied to the session's names) of `portal`, to a
    /// statement lockbox saw prepared or to `unknown_statement`: a step whose Execute's
    /// record covers it, or a record of its own.
    pub(super) fn bind_step(
        &mut self,
        portal: String,
        unknown_statement: Option<String>,
        id: crate::proxy::statements::MessageId,
        pending: &mut Vec<Pending>,
    ) {
        pending.push(Pending::Step(Step::Bind, id));
        self.bind_unexecuted = Some(Unexecuted {
            at: pending.len() - 1,
            portal,
            unknown_statement,
        });
        if std::mem::take(&mut self.bind_alone) {
            self.bind_went_unexecuted(pending);
        }
    }

    /// Called before each message is inspected and at the end of a batch: a Bind whose
    /// Execute is not this message (nor a Describe of its portal before it) gets a record
    /// of its own. `next`: the message's tag and body, `None` at the end of the batch.
    pub(super) fn bind_covered_by(&mut self, next: Option<(u8, &[u8])>, pending: &mut [Pending]) {
        let Some(unexecuted) = &self.bind_unexecuted else {
            return;
        };
        let portal = unexecuted.portal.as_bytes();
        match next {
            // Settled once it is inspected (`bind_executed`): it may be refused.
            Some((b'E', body)) if named(body) == Some(portal) => {}
            Some((b'D', body))
                if body.first() == Some(&b'P') && named(&body[1..]) == Some(portal) => {}
            _ => self.bind_went_unexecuted(pending),
        }
    }

    /// The Execute of the Bind of `bind_unexecuted` was inspected: its record covers the
    /// Bind, unless it was refused (a stand-in goes in its place and the Bind would run
    /// alone: a review's refused FETCH let its Bind run a domain's check).
    pub(super) fn bind_executed(&mut self, refused: bool, pending: &mut [Pending]) {
        if refused {
            self.bind_went_unexecuted(pending);
        } else {
            self.bind_unexecuted = None;
        }
    }

    /// The pending Bind step of `bind_unexecuted` becomes a record of the planning it runs.
    fn bind_went_unexecuted(&mut self, pending: &mut [Pending]) {
        let Some(Unexecuted {
            at,
            portal,
            unknown_statement,
        }) = self.bind_unexecuted.take()
        else {
            return;
        };
        let Some(Pending::Step(Step::Bind, id)) = pending.get(at) else {
            return;
        };
        let id = *id;
        if let Some(record) = self.planning_record(&portal, unknown_statement.as_deref()) {
            pending[at] = Pending::Planned(record, id);
        }
    }

    /// The record of what a Bind of `portal` runs: its statement's text (or the name of one
    /// lockbox did not see prepared) and the Bind's parameters.
    fn planning_record(&self, portal: &str, unknown_statement: Option<&str>) -> Option<AuditEvent> {
        let bound = self.statements.portal(portal)?;
        let prepared = bound.statement;
        let (record, _) = if let Some(statement) = unknown_statement {
            self.statement_record(
                Protocol::Bind,
                unknown_bind_text(statement).as_str(),
                prepared.kind,
                Some(bound.params),
                None,
            )
        } else {
            // The Parse passed every check of its text already, the record's among them.
            self.statement_record(
                Protocol::Bind,
                prepared.text,
                prepared.kind,
                Some(bound.params),
                prepared.mentions,
            )
        };
        Some(record)
    }

    /// A Bind of a statement prepared under an earlier read of the database's code that
    /// the current one refuses (see `recheck_prepared`): recorded with the statement's text,
    /// refused, and a stand-in sent that fails as the Bind would.
    pub(super) fn refuse_rechecked_bind(
        &self,
        portal: &str,
        statement: &crate::proxy::statements::Prepared,
        params: Arc<[serde_json::Value]>,
        refusal: crate::guard::Refusal,
        pending: &mut Vec<Pending>,
    ) -> Vec<u8> {
        let (record, _) = self.statement_record(
            Protocol::Bind,
            statement.text.clone(),
            statement.kind,
            Some(params),
            statement.mentions.clone(),
        );
        self.refuse_bind(portal, record, refusal, pending)
    }

    /// Below admin, a Bind of a statement lockbox did not see prepared (server-side code can
    /// PREPARE) is refused: what it plans cannot be recorded, as what it runs cannot.
    /// Returns the stand-in to send instead.
    pub(super) fn refuse_unknown_bind(
        &self,
        portal: &str,
        statement: &str,
        params: Arc<[serde_json::Value]>,
        pending: &mut Vec<Pending>,
    ) -> Vec<u8> {
        let (record, _) = self.statement_record(
            Protocol::Bind,
            unknown_bind_text(statement).as_str(),
            crate::sql::StatementKind::Unknown,
            Some(params),
            None,
        );
        let refusal = unknown_name_refusal("unknown_statement", statement);
        self.refuse_bind(portal, record, refusal, pending)
    }

    /// A refused Bind's record and refusal, and the stand-in that fails in its place.
    fn refuse_bind(
        &self,
        portal: &str,
        record: crate::audit::AuditEvent,
        refusal: crate::guard::Refusal,
        pending: &mut Vec<Pending>,
    ) -> Vec<u8> {
        pending.push(Pending::Refused(record, Arc::new(refusal), None));
        stand_in_bind(portal, &self.stand_in_portal)
    }
}

/// The name a message body starts with (up to its NUL).
fn named(body: &[u8]) -> Option<&[u8]> {
    body.iter().position(|b| *b == 0).map(|end| &body[..end])
}

fn unknown_bind_text(statement: &str) -> String {
    format!("-- Bind of statement \"{statement}\", whose statement lockbox did not see prepared")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AccessLevel;
    use crate::proxy::relay::fuzz::message;

    #[test]
    fn a_bind_is_alone_unless_its_portals_execute_comes_next_past_describes() {
        let max = 1 << 20;
        let execute = |portal: &[u8]| message(b'E', &[portal, b"\0\0\0\0\0"].concat());
        let describe = message(b'D', b"Pp\0");
        let sync = message(b'S', b"");
        let follows = |parts: &[&[u8]]| after_bind(&parts.concat(), b"p", max);

        assert_eq!(follows(&[&execute(b"p")]), AfterBind::Execute);
        assert_eq!(
            follows(&[&describe, &execute(b"p"), &sync]),
            AfterBind::Execute
        );
        assert_eq!(follows(&[&sync]), AfterBind::Alone);
        assert_eq!(follows(&[&execute(b"q")]), AfterBind::Alone);
        assert_eq!(follows(&[&execute(b"")]), AfterBind::Alone);
        // A Describe of anything but the portal can fail, and the server then skips the
        // Execute.
        for other in [message(b'D', b"Sp\0"), message(b'D', b"Pq\0")] {
            assert_eq!(follows(&[&other, &execute(b"p")]), AfterBind::Alone);
        }
        assert_eq!(
            follows(&[&describe, &sync, &execute(b"p")]),
            AfterBind::Alone
        );
        // Not known yet: nothing, a Describe and no more, an Execute cut short.
        assert_eq!(follows(&[]), AfterBind::NotYet);
        assert_eq!(follows(&[&describe]), AfterBind::NotYet);
        assert_eq!(follows(&[&execute(b"p")[..4]]), AfterBind::NotYet);
        // Another message is known from its first byte.
        assert_eq!(follows(&[b"S"]), AfterBind::Alone);
        // Describes without end are not waited through.
        let many = describe.repeat(LOOKAHEAD / describe.len() + 2);
        assert_eq!(follows(&[&many]), AfterBind::Alone);
        // A message over the limit is the inspection's to refuse.
        assert_eq!(
            after_bind(&message(b'E', &[0u8; 64]), b"p", 16),
            AfterBind::Alone
        );
    }

    /// What a batch of `messages` gives the tracker, under `access`, and how many of the
    /// messages it consumed.
    fn inspected(access: AccessLevel, messages: &[Vec<u8>]) -> (Vec<&'static str>, usize) {
        let fixture = super::super::fuzz::fixture().expect("fixture");
        let _entered = fixture.runtime.enter();
        let mut relay = super::super::fuzz::relay(fixture, access, 1 << 20);
        let bytes = messages.concat();
        let batch = relay.inspect_batch(&bytes).expect("inspected");
        let consumed = messages
            .iter()
            .scan(0, |at, m| {
                *at += m.len();
                Some(*at)
            })
            .take_while(|at| *at <= batch.consumed)
            .count();
        let kinds = batch
            .pending
            .iter()
            .map(|p| match p {
                Pending::Planned(..) => "planned",
                Pending::Step(Step::Bind, _) => "bind",
                Pending::Statement { .. } => "statement",
                Pending::Refused(..) => "refused",
                _ => "other",
            })
            .filter(|kind| *kind != "other")
            .collect();
        (kinds, consumed)
    }

    fn parse(name: &str) -> Vec<u8> {
        parse_text(name, "SELECT 1")
    }

    fn parse_text(name: &str, sql: &str) -> Vec<u8> {
        message(
            b'P',
            &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
        )
    }

    fn bind(portal: &str, statement: &str) -> Vec<u8> {
        message(
            b'B',
            &[
                portal.as_bytes(),
                b"\0",
                statement.as_bytes(),
                b"\0\0\0\0\0\0\0",
            ]
            .concat(),
        )
    }

    fn execute(portal: &str) -> Vec<u8> {
        message(b'E', &[portal.as_bytes(), b"\0\0\0\0\0"].concat())
    }

    #[test]
    fn a_bind_goes_with_its_executes_record_only_when_that_execute_is_inspected_with_it() {
        let (read, sync) = (AccessLevel::Read, message(b'S', b""));
        let describe_portal = message(b'D', b"Pp\0");
        // Its Execute follows, past a Describe of the portal: the Execute's record covers it.
        let (kinds, _) = inspected(
            read,
            &[
                parse("s"),
                bind("p", "s"),
                describe_portal,
                execute("p"),
                sync.clone(),
            ],
        );
        assert_eq!(kinds, ["bind", "statement"]);
        // Alone, or behind anything else: a record of its own.
        let (kinds, _) = inspected(read, &[parse("s"), bind("p", "s"), sync.clone()]);
        assert_eq!(kinds, ["planned"]);
        let describe_other = message(b'D', b"Sx\0");
        let (kinds, _) = inspected(
            read,
            &[
                parse("s"),
                bind("p", "s"),
                describe_other,
                execute("p"),
                sync.clone(),
            ],
        );
        assert_eq!(kinds, ["planned", "statement"]);
        let (kinds, _) = inspected(
            read,
            &[
                parse("s"),
                bind("p", "s"),
                bind("q", "s"),
                execute("q"),
                sync.clone(),
            ],
        );
        assert_eq!(kinds, ["planned", "bind", "statement"]);
        // At the end of what the client sent: it waits for what follows.
        let (kinds, consumed) = inspected(read, &[parse("s"), bind("p", "s")]);
        assert_eq!((kinds.len(), consumed), (0, 1));
        // Its Execute held back (the backlog of changes the server has not answered): the
        // Bind goes upstream with a record of its own (a review's planning ran with none).
        let mut messages: Vec<Vec<u8>> = (0..crate::proxy::statements::PENDING_HIGH - 1)
            .map(|i| parse(&format!("s{i}")))
            .collect();
        messages.extend([bind("p", "s0"), execute("p"), sync]);
        let (kinds, consumed) = inspected(read, &messages);
        assert_eq!(consumed, messages.len() - 2, "the Execute is held");
        assert_eq!(kinds, ["planned"]);
        // Its Execute refused (a cursor lockbox did not see declared): the Bind would run
        // alone, so it has a record of its own (a review's domain check ran at such a Bind).
        let (kinds, _) = inspected(
            read,
            &[
                parse_text("s", "FETCH 1 FROM nowhere"),
                bind("p", "s"),
                execute("p"),
                message(b'S', b""),
            ],
        );
        assert_eq!(kinds, ["planned", "refused"]);
    }

    #[test]
    fn below_admin_a_bind_of_a_statement_lockbox_never_saw_prepared_is_refused() {
        let messages = [bind("p", "hidden"), execute("p"), message(b'S', b"")];
        let (kinds, _) = inspected(AccessLevel::Write, &messages);
        assert_eq!(kinds.first(), Some(&"refused"));
        let (kinds, _) = inspected(AccessLevel::Admin, &messages);
        assert_eq!(kinds, ["bind", "statement"]);
    }

    #[test]
    fn the_stand_in_bind_is_a_whole_bind_of_the_unknown_name() {
        let m = stand_in_bind("p", "lockbox refused 00");
        let bind = wire::decode_bind(&m[5..]).expect("a Bind");
        assert_eq!(bind.portal, "p");
        assert_eq!(bind.statement, "lockbox refused 00");
        assert!(bind.params.is_empty());
        assert_eq!(
            usize::try_from(i32::from_be_bytes([m[1], m[2], m[3], m[4]])).expect("length"),
            m.len() - 1
        );
    }
}
