//! The per-statement records, encoded by hand. A statement and its outcome are what every
//! proxied statement costs the audit, and serde's generic path (an internally tagged enum
//! with a flattened struct becomes a map, every member name escaped again) was the largest
//! share of the record's CPU. This writes exactly the bytes `serde_json::to_writer` writes
//! for the same record (`encode_tests.rs` checks it on generated records), with the
//! session's members serialized once per session ([`SessionFields::members`]).
//!
//! Every other record kind is rare and goes through serde.

use std::sync::OnceLock;

use super::record::{OutcomeRecord, OutcomeStatus, Protocol, SessionFields, StatementRecord};
use super::AuditEvent;
use crate::sql::StatementKind;

/// A session's members (`"session_id":…,…,"client_addr":…[,"break_glass":true]`) as JSON,
/// made on first use. A clone starts empty, so a cloned-then-changed `SessionFields` never
/// carries the old bytes.
#[derive(Default)]
pub(crate) struct EncodedMembers(OnceLock<Box<[u8]>>);

impl Clone for EncodedMembers {
    fn clone(&self) -> Self {
        EncodedMembers::default()
    }
}

impl std::fmt::Debug for EncodedMembers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncodedMembers")
    }
}

impl SessionFields {
    /// The session's members as they appear in each of its records, serialized once.
    pub(crate) fn members(&self) -> &[u8] {
        self.encoded.0.get_or_init(|| {
            let mut out = Vec::with_capacity(256);
            member_str(&mut out, b"\"session_id\":", &self.session_id);
            member_str(&mut out, b",\"request_id\":", &self.request_id);
            member_str(&mut out, b",\"ticket\":", &self.ticket);
            member_str(&mut out, b",\"engineer\":", &self.engineer);
            member_str(&mut out, b",\"database\":", &self.database);
            member_str(&mut out, b",\"client_addr\":", &self.client_addr);
            if self.break_glass {
                out.extend_from_slice(b",\"break_glass\":true");
            }
            out.into_boxed_slice()
        })
    }
}

/// Writes `event` as a JSON object, as `serde_json::to_writer` would.
pub(super) fn write_event(out: &mut Vec<u8>, event: &AuditEvent) {
    match event {
        AuditEvent::Statement(s) => statement(out, s),
        AuditEvent::Outcome(o) => outcome(out, o),
        other => serde_fallback(out, other),
    }
}

/// A record kind with no hand encoder; one that cannot be serialized (none can today)
/// still takes its place in the chain, so the sequence has no gap.
fn serde_fallback(out: &mut Vec<u8>, event: &AuditEvent) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, event).is_err() {
        tracing::error!("audit event failed to serialize");
        out.truncate(start);
        out.extend_from_slice(br#"{"type":"unserializable"}"#);
    }
}

fn statement(out: &mut Vec<u8>, s: &StatementRecord) {
    out.extend_from_slice(b"{\"type\":\"statement\",");
    out.extend_from_slice(s.session.members());
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(protocol_name(s.protocol).as_bytes());
    member_str(out, b"\",\"statement\":", &s.statement);
    if let Some(params) = &s.params {
        out.extend_from_slice(b",\"params\":");
        json_value(out, params);
    }
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(kind_name(s.kind).as_bytes());
    out.push(b'"');
    if !s.redacted.is_empty() {
        out.extend_from_slice(b",\"redacted\":[");
        for (i, name) in s.redacted.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, name);
        }
        out.push(b']');
    }
    out.push(b'}');
}

fn outcome(out: &mut Vec<u8>, o: &OutcomeRecord) {
    out.extend_from_slice(b"{\"type\":\"outcome\",\"statement_seq\":");
    u64_decimal(out, o.statement_seq);
    out.push(b',');
    out.extend_from_slice(o.session.members());
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(status_name(o.status).as_bytes());
    out.push(b'"');
    if let Some(tag) = &o.command_tag {
        member_str(out, b",\"command_tag\":", tag);
    }
    if let Some(rows) = o.rows {
        out.extend_from_slice(b",\"rows\":");
        u64_decimal(out, rows);
    }
    if let Some(sqlstate) = &o.sqlstate {
        member_str(out, b",\"sqlstate\":", sqlstate);
    }
    if let Some(message) = &o.message {
        member_str(out, b",\"message\":", message);
    }
    if let Some(rule) = &o.rule {
        member_str(out, b",\"rule\":", rule);
    }
    if let Some(bytes) = o.bytes {
        out.extend_from_slice(b",\"bytes\":");
        u64_decimal(out, bytes);
    }
    out.extend_from_slice(b",\"duration_ms\":");
    json_value(out, &o.duration_ms);
    out.push(b'}');
}

/// A value whose encoding is serde_json's own (floats: ryu, `null` when not finite; bind
/// parameters: arbitrary JSON). Writing into a `Vec` allocates nothing beyond its growth.
fn json_value(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        // Unreachable for these types (no maps with non-string keys); `null` keeps the
        // record valid JSON.
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

fn member_str(out: &mut Vec<u8>, name: &[u8], value: &str) {
    out.extend_from_slice(name);
    string(out, value);
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, the control characters
/// U+0000–U+001F as `\b \t \n \f \r` or `\u00xx` (lowercase hex), everything else as is.
pub(super) fn string(out: &mut Vec<u8>, value: &str) {
    out.reserve(value.len() + 2);
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            b'\t' => b't',
            b'\n' => b'n',
            0x0c => b'f',
            b'\r' => b'r',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `n` in decimal, without going through `fmt`.
pub(super) fn u64_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `n % 10` is below 10, so the cast keeps it.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Simple => "simple",
        Protocol::Extended => "extended",
        Protocol::FunctionCall => "function_call",
        Protocol::Bind => "bind",
    }
}

fn kind_name(kind: StatementKind) -> &'static str {
    match kind {
        StatementKind::Select => "select",
        StatementKind::Insert => "insert",
        StatementKind::Update => "update",
        StatementKind::Delete => "delete",
        StatementKind::Merge => "merge",
        StatementKind::Ddl => "ddl",
        StatementKind::Other => "other",
        StatementKind::Unknown => "unknown",
        StatementKind::Empty => "empty",
    }
}

fn status_name(status: OutcomeStatus) -> &'static str {
    match status {
        OutcomeStatus::Ok => "ok",
        OutcomeStatus::Error => "error",
        OutcomeStatus::NotExecuted => "not_executed",
        OutcomeStatus::Interrupted => "interrupted",
        OutcomeStatus::Refused => "refused",
    }
}

/// A record's `time`: RFC 3339 in UTC with microseconds (`2026-12-01T03:03:10.652874Z`),
/// formatted without allocating; the same text as chrono's
/// `to_rfc3339_opts(SecondsFormat::Micros, true)`, which remains the path for what the
/// fixed layout cannot hold (a year past 9999, a leap second).
pub(super) enum TimeStamp {
    Fixed([u8; 27]),
    Other(String),
}

/// `2026-12-01T03:03:10`: the part of a [`TimeStamp`] before the fraction.
const DATE_TIME_LEN: usize = 19;

thread_local! {
    /// The last second this thread stamped, and its date and time of day.
    static SECOND: std::cell::Cell<Option<(i64, [u8; DATE_TIME_LEN])>> =
        const { std::cell::Cell::new(None) };
}

/// Writes `n`'s last `out.len()` decimal digits into `out`, zero-padded.
fn put_digits(out: &mut [u8], mut n: u32) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The date and time of day of `t` (a year within 0..=9999, no leap second).
fn date_time_of(t: &chrono::DateTime<chrono::Utc>) -> [u8; DATE_TIME_LEN] {
    use chrono::{Datelike, Timelike};
    let mut b = *b"0000-00-00T00:00:00";
    // Every value fits its field: the year is checked by the caller, the rest bounded by
    // the calendar.
    put_digits(&mut b[0..4], t.year().unsigned_abs());
    put_digits(&mut b[5..7], t.month());
    put_digits(&mut b[8..10], t.day());
    put_digits(&mut b[11..13], t.hour());
    put_digits(&mut b[14..16], t.minute());
    put_digits(&mut b[17..19], t.second());
    b
}

impl TimeStamp {
    pub(super) fn of(t: chrono::DateTime<chrono::Utc>) -> TimeStamp {
        use chrono::{Datelike, Timelike};
        // A leap second's nanoseconds run past 10^9, beyond the fixed layout.
        let nanos = t.nanosecond();
        if nanos >= 1_000_000_000 {
            return TimeStamp::other(&t);
        }
        // Every record of a second shares its date and time of day: the calendar is
        // worked out once a second per thread, not once a record.
        let second = t.timestamp();
        let date_time = match SECOND.get() {
            Some((cached, text)) if cached == second => text,
            _ if !(0..=9999).contains(&t.year()) => return TimeStamp::other(&t),
            _ => {
                let text = date_time_of(&t);
                SECOND.set(Some((second, text)));
                text
            }
        };
        TimeStamp::fixed(date_time, nanos)
    }

    /// The time now (the system's wall clock, as `Utc::now`).
    pub(super) fn now() -> TimeStamp {
        TimeStamp::of_system(std::time::SystemTime::now())
    }

    /// [`TimeStamp::of`] of `t`, without working out the calendar (as a `DateTime` would)
    /// when this thread stamped its second already.
    fn of_system(t: std::time::SystemTime) -> TimeStamp {
        if let Ok(since) = t.duration_since(std::time::UNIX_EPOCH) {
            let second = i64::try_from(since.as_secs()).ok();
            if let Some((_, date_time)) = SECOND.get().filter(|(s, _)| Some(*s) == second) {
                return TimeStamp::fixed(date_time, since.subsec_nanos());
            }
        }
        TimeStamp::of(chrono::DateTime::<chrono::Utc>::from(t))
    }

    fn fixed(date_time: [u8; DATE_TIME_LEN], nanos: u32) -> TimeStamp {
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        b[..DATE_TIME_LEN].copy_from_slice(&date_time);
        put_digits(&mut b[20..26], nanos / 1000);
        TimeStamp::Fixed(b)
    }

    fn other(t: &chrono::DateTime<chrono::Utc>) -> TimeStamp {
        TimeStamp::Other(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            // Only ASCII digits and punctuation were written.
            TimeStamp::Fixed(b) => std::str::from_utf8(b).unwrap_or(""),
            TimeStamp::Other(s) => s,
        }
    }
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "encode_attack_tests.rs"]
mod attack_tests;
