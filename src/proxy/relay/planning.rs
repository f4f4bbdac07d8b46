//! A Bind plans its statement: PostgreSQL builds the portal's plan at Bind, not at Execute,
//! and planning runs functions (an immutable or stable call with constant arguments is
//! folded, an INSERT's column defaults are evaluated), so a database function among them
//! runs then — and may do anything, through the volatile functions it calls. Where the
//! portal's Execute follows its Bind, that Execute's record, durable before the batch goes
//! upstream, covers the planning too. A Bind without it gets a record of its own
//! (`protocol: "bind"`, its outcome the server's answer to the Bind), so no planning runs
//! unrecorded. Whether the Execute follows is read from the client's next messages: a Bind
//! at the end of what the client sent so far waits in the buffer for them. That delays no
//! reply: the server answers a Bind only at the client's next Flush or Sync.

use std::sync::Arc;

use super::names::unknown_name_refusal;
use super::{Pending, Relay};
use crate::audit::Protocol;
use crate::policy::AccessLevel;
use crate::proxy::statements::MessageId;
use crate::proxy::tracker::Step;
use crate::wire;

/// How far past a Bind the client's messages are searched for its Execute. Clients send
/// the Execute next, or after a Describe of the portal; past this many bytes of other
/// messages the Bind is taken to come alone.
const LOOKAHEAD: usize = 64 << 10;

/// What follows a Bind in what the client sent so far.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AfterBind {
    /// The Execute of its portal (past Describes).
    Execute,
    /// Another message first, or more than [`LOOKAHEAD`] bytes of Describes.
    Alone,
    /// Not known until the client sends more.
    NotYet,
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
        if tag == b'E' {
            let body = &rest[at + 5..at + len];
            let named = body.iter().position(|b| *b == 0).map(|end| &body[..end]);
            return if named == Some(portal) {
                AfterBind::Execute
            } else {
                AfterBind::Alone
            };
        }
        at += len;
    }
}

impl Relay {
    /// Whether the Bind `frame` must wait for the client's next messages; if not, whether it
    /// comes alone (see [`Relay::bind_step`]). `rest`: what the client sent after it.
    pub(super) fn bind_waits(&mut self, frame: &[u8], rest: &[u8]) -> bool {
        let body = &frame[5..];
        let (Some(portal_end), Some(statement)) =
            (body.iter().position(|b| *b == 0), wire::cstr_at(body, 1))
        else {
            // Malformed: refused as it is inspected.
            self.bind_alone = false;
            return false;
        };
        if !self.statements.planned_at_bind(&statement) {
            self.bind_alone = false;
            return false;
        }
        match after_bind(rest, &body[..portal_end], self.max_message) {
            AfterBind::NotYet => true,
            after => {
                self.bind_alone = after == AfterBind::Alone;
                false
            }
        }
    }

    /// The record of the planning a Bind (message `id`) of `portal` to `statement` runs,
    /// when it comes alone (`bind_waits`). Returns the stand-in to send instead if that is
    /// refused: below admin, a statement lockbox did not see prepared is not planned, as it
    /// is not run.
    pub(super) fn planned_bind(
        &mut self,
        portal: &str,
        statement: &str,
        id: MessageId,
        pending: &mut Vec<Pending>,
    ) -> Option<Vec<u8>> {
        let Some(bound) = self.statements.portal(portal) else {
            pending.push(Pending::Step(Step::Bind, id));
            return None;
        };
        let prepared = bound.statement;
        if prepared.text.is_empty() {
            let text = format!(
                "-- Bind of statement \"{statement}\", whose statement lockbox did not see prepared"
            );
            let (record, _) = self.statement_record(
                Protocol::Bind,
                text.as_str(),
                prepared.kind,
                Some(bound.params),
                None,
            );
            if self.grant.access != AccessLevel::Admin {
                let refusal = unknown_name_refusal("unknown_statement", statement);
                pending.push(Pending::Refused(record, Arc::new(refusal)));
                return Some(stand_in_bind(portal, &self.stand_in_portal));
            }
            pending.push(Pending::Planned(record, id));
            return None;
        }
        let (record, recorded) = self.statement_record(
            Protocol::Bind,
            prepared.text,
            prepared.kind,
            Some(bound.params),
            prepared.mentions,
        );
        if let Err(refusal) = recorded {
            pending.push(Pending::Refused(record, Arc::new(refusal)));
            return Some(stand_in_bind(portal, &self.stand_in_portal));
        }
        pending.push(Pending::Planned(record, id));
        None
    }
}

/// A Bind the server fails: of a statement no client can know (the stand-in portal's name,
/// which names no statement), so its error is the refusal's.
fn stand_in_bind(portal: &str, unknown: &str) -> Vec<u8> {
    let body = [
        portal.as_bytes(),
        b"\0",
        unknown.as_bytes(),
        b"\0\0\0\0\0\0\0",
    ]
    .concat();
    let mut message = Vec::with_capacity(body.len() + 5);
    message.push(b'B');
    message.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    message.extend_from_slice(&body);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

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
