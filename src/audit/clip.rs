//! A size limit per audit record. A 60 MiB bind parameter became a 125 MB audit line (hex
//! doubles binary values): one such line slows every reader of the trail and every sink.
//! A value over the limit keeps a prefix, its full length and the SHA-256 of the whole
//! value, so the record still proves what ran: whoever holds the value can hash it and
//! compare.
//!
//! Each field (the statement text, each parameter, an outcome's error message, which can
//! quote a value) keeps at most `max_field_bytes`, and a record's fields together at most
//! `max_record_bytes`, in order, counted as the bytes they take in the record (JSON
//! escapes included: a control character is six). A record within both is serialized as
//! before: the check is a sum of lengths, with nothing copied.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{AuditEvent, StatementNames};

/// `[audit] max_field_bytes` when unset.
pub const DEFAULT_MAX_FIELD_BYTES: usize = 64 * 1024;
/// `[audit] max_record_bytes` when unset.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// How much of its values one record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipLimits {
    pub max_field_bytes: usize,
    pub max_record_bytes: usize,
}

impl Default for ClipLimits {
    fn default() -> Self {
        ClipLimits {
            max_field_bytes: DEFAULT_MAX_FIELD_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// Serializes `event` clipped into `out` if any of its values is over the limits; returns
/// false (writing nothing) when it is within them, for the caller's usual path.
pub(crate) fn write_if_oversized(
    out: &mut Vec<u8>,
    event: &AuditEvent,
    limits: ClipLimits,
) -> bool {
    if !oversized(event, limits) {
        return false;
    }
    let Ok(mut record) = serde_json::to_value(event) else {
        return false;
    };
    let names = match event {
        AuditEvent::Statement(s) => s.mentions.as_ref(),
        _ => None,
    };
    if let Value::Object(fields) = &mut record {
        clip_fields(fields, limits, names);
    }
    let start = out.len();
    if serde_json::to_writer(&mut *out, &record).is_err() {
        out.truncate(start);
        return false;
    }
    true
}

/// Whether a statement of `text` may be clipped: the field limit against the most bytes it
/// can take (a statement comes first in its record, so the record limit never clips it
/// before the field limit does).
pub(crate) fn may_clip(text: &str, limits: ClipLimits) -> bool {
    worst_len(text) > limits.max_field_bytes
}

/// Whether a record's values exceed the limits: lengths only, nothing copied or allocated.
fn oversized(event: &AuditEvent, limits: ClipLimits) -> bool {
    // Every statement passes here: its text is scanned for escapes only when even six
    // bytes per byte could reach a limit, which a statement of a few KiB never does.
    if let AuditEvent::Statement(s) = event {
        let worst = std::iter::once((worst_len(&s.statement), 0)).chain(
            s.params
                .iter()
                .flat_map(|params| params.iter())
                .map(|v| (worst_value_len(v), frame_len(v))),
        );
        if !over(worst, limits) {
            return false;
        }
    }
    match event {
        AuditEvent::Statement(s) => over(
            std::iter::once((json_len(&s.statement), 0)).chain(
                s.params
                    .iter()
                    .flat_map(|params| params.iter())
                    .map(|v| (value_len(v), frame_len(v))),
            ),
            limits,
        ),
        AuditEvent::Outcome(o) => over(o.message.iter().map(|m| (json_len(m), 0)), limits),
        _ => false,
    }
}

/// Whether one size is over the field limit or their running sum (with each value's frame)
/// over the record limit.
fn over(mut sizes: impl Iterator<Item = (usize, usize)>, limits: ClipLimits) -> bool {
    let mut total = 0usize;
    sizes.any(|(n, frame)| {
        total = total.saturating_add(n).saturating_add(frame);
        n > limits.max_field_bytes || total > limits.max_record_bytes
    })
}

/// What a parameter takes in a record besides its value: `null` for a NULL, the object
/// around a binary value's hex. Counted against the record's budget: 65,535 NULL or empty
/// binary parameters are 0 bytes of values but 1.2 MB of record, and with a megabyte of
/// values beside them made a record over twice `max_record_bytes`.
fn frame_len(v: &Value) -> usize {
    match v {
        Value::Null => "null".len(),
        Value::Object(_) => r#"{"binary_hex":""}"#.len(),
        _ => 0,
    }
}

/// The bytes `text` takes in a record, inside its quotes: JSON escapes a control
/// character as six bytes (`\u0001`) and a quote or backslash as two, so a value of 64 KiB
/// of control characters was a field of 384 KiB, and a record within the limits by its raw
/// lengths six times `max_record_bytes`.
fn json_len(text: &str) -> usize {
    text.len() + text.bytes().map(escape_extra).sum::<usize>()
}

/// The most bytes `text` can take in a record: every byte escaped as six.
fn worst_len(text: &str) -> usize {
    text.len().saturating_mul(6)
}

/// The most bytes a parameter's value can take in a record (a binary value's hex needs no
/// escape).
fn worst_value_len(v: &Value) -> usize {
    match v {
        Value::String(s) => worst_len(s),
        _ => value_len(v),
    }
}

/// The bytes JSON adds to escape `b` (serde_json's escapes).
fn escape_extra(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
        0..=0x1f => 5,
        _ => 0,
    }
}

/// The bytes a parameter takes in a record.
fn value_len(v: &Value) -> usize {
    match v {
        Value::String(s) => json_len(s),
        Value::Object(o) => o
            .get("binary_hex")
            .and_then(Value::as_str)
            .map_or(0, str::len),
        _ => 0,
    }
}

/// Clips the serialized record's `statement`, `params` and `message`, in that order,
/// against one budget.
fn clip_fields(
    fields: &mut Map<String, Value>,
    limits: ClipLimits,
    names: Option<&StatementNames>,
) {
    let mut budget = limits.max_record_bytes;
    for name in ["statement", "message"] {
        if let Some(Value::String(text)) = fields.get(name) {
            // A clipped statement's names come before its prefix: they say what it
            // touched, which padding fills the prefix to hide.
            let names = names.filter(|_| name == "statement");
            let mut keep = limits.max_field_bytes.min(budget);
            if names.is_some() && json_len(text) > keep {
                // The names, then the skeleton, say more than the prefix does.
                let said = names.map_or(0, |n| names_cost(n) + skeleton_cost(n));
                keep = keep.min(budget.saturating_sub(said));
            }
            if let Some((prefix, mut clipped)) = clip_text(text, keep) {
                // A clipped value spends all it was allowed (see `clip_param`).
                budget -= keep;
                if let (Some(names), Value::Object(clipped)) = (names, &mut clipped) {
                    // All of them, unless they alone are over the record's limit (the
                    // relay refuses such a statement: `names_fit`).
                    budget -= add_names(clipped, names, budget);
                    budget -= add_skeleton(clipped, names, budget);
                }
                fields.insert(name.into(), Value::String(prefix));
                fields.insert(format!("{name}_clipped"), clipped);
            } else {
                budget -= json_len(text);
            }
        }
    }
    let Some(Value::Array(params)) = fields.get_mut("params") else {
        return;
    };
    // Once the budget is spent the rest are summarised as one: each parameter clipped to
    // nothing still cost its stand-in, and 65,535 of them made a record eight times the
    // limit.
    let omitted_from = params.iter_mut().position(|param| {
        if budget == 0 {
            return true;
        }
        let keep = limits.max_field_bytes.min(budget);
        let frame = frame_len(param);
        budget = budget.saturating_sub(clip_param(param, keep).saturating_add(frame));
        false
    });
    if let Some(from) = omitted_from {
        let omitted: Vec<Value> = params.drain(from..).collect();
        fields.insert("params_clipped".into(), omitted_summary(&omitted));
    }
}

/// The lists of a clipped statement's names, by key.
fn name_lists(names: &StatementNames) -> [(&'static str, &[String]); 3] {
    [
        ("relations", &names.relations[..]),
        ("functions", &names.functions[..]),
        ("fields", &names.fields[..]),
    ]
}

/// The bytes one name takes in a record's list: its JSON, its quotes and a comma.
fn name_cost(name: &str) -> usize {
    json_len(name) + 3
}

/// The bytes a clipped statement's names take in its record, each once.
pub(crate) fn names_cost(names: &StatementNames) -> usize {
    name_lists(names)
        .into_iter()
        .map(|(_, list)| {
            let mut seen = std::collections::HashSet::new();
            list.iter()
                .filter(|n| seen.insert(n.as_str()))
                .map(|n| name_cost(n))
                .sum::<usize>()
        })
        .sum()
}

/// The bytes a clipped statement's skeleton takes in its record, key included.
fn skeleton_cost(names: &StatementNames) -> usize {
    names
        .skeleton
        .as_deref()
        .map_or(0, |s| json_len("skeleton") + 4 + json_len(s))
}

/// Whether a statement's skeleton fits in its record beside its names should its text be
/// clipped: a statement whose record cannot say what it does does not run.
pub(crate) fn skeleton_fits(names: &StatementNames, limits: ClipLimits) -> bool {
    names_cost(names) + skeleton_cost(names) <= limits.max_record_bytes
}

/// Whether a statement's names fit in its record should its text be clipped: a statement
/// whose record cannot say what it touches does not run.
pub(crate) fn names_fit(names: &StatementNames, limits: ClipLimits) -> bool {
    names_cost(names) <= limits.max_record_bytes
}

/// Adds what a clipped statement names to its `statement_clipped`: `relations`,
/// `functions` and `fields`, each name once, as many as fit in `room` bytes in order, and
/// `names_omitted`, the count of those that did not. Returns the bytes they take.
fn add_names(clipped: &mut Map<String, Value>, names: &StatementNames, room: usize) -> usize {
    let mut used = 0usize;
    let mut omitted = 0usize;
    for (key, list) in name_lists(names) {
        let mut seen = std::collections::HashSet::new();
        let mut kept = Vec::new();
        for name in list.iter().filter(|n| seen.insert(n.as_str())) {
            let cost = name_cost(name);
            if used + cost > room {
                omitted += 1;
                continue;
            }
            used += cost;
            kept.push(Value::String(name.clone()));
        }
        clipped.insert(key.into(), Value::Array(kept));
    }
    if omitted > 0 {
        clipped.insert("names_omitted".into(), omitted.into());
    }
    used
}

/// Adds a clipped statement's skeleton (its text without comments and long constants),
/// whole if it fits in `room`, else a prefix and `skeleton_length`. Returns the bytes taken.
fn add_skeleton(clipped: &mut Map<String, Value>, names: &StatementNames, room: usize) -> usize {
    let Some(skeleton) = &names.skeleton else {
        return 0;
    };
    // The key and its punctuation.
    let frame = json_len("skeleton") + 4;
    let Some(keep) = room.checked_sub(frame) else {
        return 0;
    };
    match clip_text(skeleton, keep) {
        None => {
            clipped.insert("skeleton".into(), Value::String(skeleton.to_string()));
            frame + json_len(skeleton)
        }
        Some((prefix, _)) => {
            let taken = frame + json_len(&prefix) + json_len("skeleton_length") + 24;
            clipped.insert("skeleton".into(), Value::String(prefix));
            clipped.insert("skeleton_length".into(), skeleton.len().into());
            taken.min(room)
        }
    }
}

/// The parameters past the budget, as one: `{"omitted": count, "length": their bytes,
/// "sha256": …}`. The hash is of the omitted parameters as the unclipped record's `params`
/// would have held them (a JSON array, compact), so whoever holds the values can check
/// them too.
fn omitted_summary(omitted: &[Value]) -> Value {
    let mut hasher = Sha256::new();
    // The writer only feeds the hash and these values always serialize: nothing can fail.
    let _ = serde_json::to_writer(HashWriter(&mut hasher), omitted);
    json!({
        "omitted": omitted.len(),
        "length": omitted.iter().map(value_bytes).sum::<usize>(),
        "sha256": hex::encode(hasher.finalize()),
    })
}

/// A parameter's own length: a text value's bytes, a binary value's bytes (not its hex).
fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Object(_) => value_len(v) / 2,
        Value::String(s) => s.len(),
        _ => 0,
    }
}

/// An `io::Write` that feeds a hash, so a large array is hashed without a copy of its JSON.
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `text` cut to at most `keep` bytes of JSON (on a character boundary) and the record of
/// what was cut; `None` if it fits.
fn clip_text(text: &str, keep: usize) -> Option<(String, Value)> {
    if json_len(text) <= keep {
        return None;
    }
    let mut taken = 0usize;
    let end = text
        .char_indices()
        .find_map(|(at, c)| {
            let mut utf8 = [0u8; 4];
            taken += json_len(c.encode_utf8(&mut utf8));
            (taken > keep).then_some(at)
        })
        .unwrap_or(text.len());
    Some((
        text[..end].to_owned(),
        json!({"length": text.len(), "sha256": hex::encode(Sha256::digest(text))}),
    ))
}

/// Clips one parameter in place; returns the budget it spends: the bytes of a value kept
/// whole, all of `keep` for a value clipped. What a clipped value keeps can be less than
/// `keep` (whole characters, whole bytes of a binary value), down to nothing: costing only
/// that, a budget left at one byte was never spent and every later parameter got a stand-in
/// of its own. A binary value's length and hash are of its bytes, not of their hex.
fn clip_param(param: &mut Value, keep: usize) -> usize {
    match param {
        Value::String(text) => match clip_text(text, keep) {
            Some((prefix, clipped)) => {
                *param = with_prefix(clipped, "prefix", prefix);
                keep
            }
            None => json_len(text),
        },
        Value::Object(o) => {
            let Some(hex_text) = o.get("binary_hex").and_then(Value::as_str) else {
                return 0;
            };
            if hex_text.len() <= keep {
                return hex_text.len();
            }
            // The hex was written by lockbox from the message's bytes: always valid.
            let bytes = hex::decode(hex_text).unwrap_or_default();
            let prefix = hex_text[..keep - keep % 2].to_owned();
            let clipped =
                json!({"length": bytes.len(), "sha256": hex::encode(Sha256::digest(&bytes))});
            *param = with_prefix(clipped, "prefix_hex", prefix);
            keep
        }
        _ => 0,
    }
}

/// A clipped parameter: `{"clipped": {"prefix": …, "length": …, "sha256": …}}`, an object
/// like the `binary_hex` one, so no reader takes it for the value itself.
fn with_prefix(mut clipped: Value, key: &str, prefix: String) -> Value {
    if let Value::Object(o) = &mut clipped {
        o.insert(key.into(), Value::String(prefix));
    }
    json!({ "clipped": clipped })
}

#[cfg(test)]
#[path = "clip_tests.rs"]
mod tests;
