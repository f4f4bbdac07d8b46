//! Reading the audit trail back for `lockbox audit list`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::segments::segments_after;
use super::AuditError;

/// Filters for reading records; every set field must match.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AuditQuery {
    pub request: Option<String>,
    pub database: Option<String>,
    pub session: Option<String>,
    pub engineer: Option<String>,
    /// Statement kind (`select`, `update`, …); only statement records have one.
    pub kind: Option<String>,
    /// Outcome status (`ok`, `error`, `refused`, …); only outcome records have one.
    pub outcome: Option<String>,
    /// Substring of the statement text.
    pub text: Option<String>,
    /// RFC 3339, a date or an age when read from a query string ([`super::filters`]).
    #[serde(default, deserialize_with = "super::filters::deserialize_time")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::filters::deserialize_time")]
    pub until: Option<DateTime<Utc>>,
    /// Records with a sequence number above this (for paging and following).
    pub after_seq: Option<u64>,
    /// With `after_seq`, when the fleet's trail is read from the audit database: records
    /// after that node's record `after_seq` in the fleet's order (the sink table's arrival order). The
    /// local trail is one node's and ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_node: Option<String>,
    pub limit: Option<usize>,
    /// Only records of these databases: an approver's own (`policy::audit_scope`). Set by
    /// the server for the caller, never read from a query string nor written into a link.
    #[serde(skip)]
    pub within: Option<Vec<String>>,
}

/// Whether a record's statement holds `text`: its text, or for a clipped statement, a name
/// its record keeps of what it touches (padding ahead of a table's name cannot hide it from
/// a search for that table).
fn statement_mentions(record: &serde_json::Value, text: &str) -> bool {
    if record
        .get("statement")
        .and_then(|v| v.as_str())
        .is_some_and(|s| s.contains(text))
    {
        return true;
    }
    let Some(clipped) = record.get("statement_clipped") else {
        return false;
    };
    CLIPPED_NAME_LISTS.iter().any(|list| {
        clipped
            .get(list)
            .and_then(|v| v.as_array())
            .is_some_and(|names| {
                names
                    .iter()
                    .any(|n| n.as_str().is_some_and(|n| n.contains(text)))
            })
    })
}

/// The lists of names a clipped statement's record keeps (`audit::clip`).
const CLIPPED_NAME_LISTS: [&str; 3] = ["relations", "functions", "fields"];

/// A name as SQL would write it where it could be read as something else: in double
/// quotes (doubled inside) unless it is lower-case letters, digits, `_`, `$` and `.`, so a
/// name holding `; functions: …` cannot pass for the summary's own words.
fn quoted_if_needed(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_$.".contains(c));
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// A record's statement as a person reads it in a list: the text, and for a clipped one
/// what was cut and the names kept of it (the prefix may be padding only).
pub fn shown_statement(record: &serde_json::Value) -> String {
    let text = record
        .get("statement")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let Some(clipped) = record.get("statement_clipped") else {
        return text.to_owned();
    };
    let length = clipped.get("length").and_then(|v| v.as_u64()).unwrap_or(0);
    let mut shown = format!("{text} … (clipped: {length} bytes");
    for list in CLIPPED_NAME_LISTS {
        let names: Vec<String> = clipped
            .get(list)
            .and_then(|v| v.as_array())
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str())
                    .map(quoted_if_needed)
                    .collect()
            })
            .unwrap_or_default();
        if !names.is_empty() {
            shown.push_str(&format!("; {list}: {}", names.join(", ")));
        }
    }
    if let Some(n) = clipped.get("names_omitted").and_then(|v| v.as_u64()) {
        shown.push_str(&format!("; {n} more names"));
    }
    shown.push(')');
    shown
}

impl AuditQuery {
    pub fn matches(&self, record: &serde_json::Value) -> bool {
        let field = |name: &str| record.get(name).and_then(|v| v.as_str());
        if self
            .request
            .as_deref()
            .is_some_and(|r| field("request_id") != Some(r))
        {
            return false;
        }
        if self
            .database
            .as_deref()
            .is_some_and(|d| field("database") != Some(d))
        {
            return false;
        }
        if self.within.as_ref().is_some_and(|databases| {
            field("database").is_none_or(|d| !databases.iter().any(|w| w == d))
        }) {
            return false;
        }
        if self
            .session
            .as_deref()
            .is_some_and(|s| field("session_id") != Some(s))
        {
            return false;
        }
        if self
            .engineer
            .as_deref()
            .is_some_and(|e| field("engineer") != Some(e))
        {
            return false;
        }
        if self
            .kind
            .as_deref()
            .is_some_and(|k| field("kind") != Some(k))
        {
            return false;
        }
        if self
            .outcome
            .as_deref()
            .is_some_and(|o| field("type") != Some("outcome") || field("status") != Some(o))
        {
            return false;
        }
        if self
            .text
            .as_deref()
            .is_some_and(|t| !statement_mentions(record, t))
        {
            return false;
        }
        if let Some(until) = self.until {
            let at = field("time").and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            if at.is_none_or(|t| t > until) {
                return false;
            }
        }
        if let Some(since) = self.since {
            let at = field("time").and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            if at.is_none_or(|t| t < since) {
                return false;
            }
        }
        if let Some(after) = self.after_seq {
            if record
                .get("seq")
                .and_then(|s| s.as_u64())
                .is_none_or(|s| s <= after)
            {
                return false;
            }
        }
        true
    }
}

/// Records of the trail whose active file is `path` (rotated files included, oldest first)
/// that match `query`, in order.
pub fn read_records(path: &Path, query: &AuditQuery) -> Result<Vec<serde_json::Value>, AuditError> {
    let mut out = Vec::new();
    visit_records(path, query, |record| {
        out.push(record);
        query.limit.is_none_or(|l| out.len() < l)
    })?;
    Ok(out)
}

/// Hands each record matching `query` to `visit`, in order, until it answers `false`: for
/// readers that keep less than everything (the newest page) or pass records on as they go
/// (a download), so the trail's size never becomes their memory's.
pub fn visit_records(
    path: &Path,
    query: &AuditQuery,
    mut visit: impl FnMut(serde_json::Value) -> bool,
) -> Result<(), AuditError> {
    for (segment, file) in open_segments(path, query.after_seq)? {
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| io_error(&segment, e))?;
            // A line being written right now may be incomplete; it shows up next time.
            let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if query.matches(&record) && !visit(record) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Opens the trail's files as one consistent set. A rotation between listing the folder
/// and opening the active file would hand over the new, nearly empty file while the records
/// just rotated out were listed under no name; so the listing is repeated after opening,
/// and the whole set is taken again if it changed.
pub fn open_segments(
    active: &Path,
    after_seq: Option<u64>,
) -> Result<Vec<(PathBuf, File)>, AuditError> {
    loop {
        let listed = segments_after(active, after_seq).map_err(|e| io_error(active, e))?;
        let mut opened = Vec::with_capacity(listed.len());
        let mut vanished = false;
        for segment in &listed {
            match File::open(&segment.path) {
                Ok(f) => opened.push((segment.path.clone(), f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => vanished = true,
                Err(e) => return Err(io_error(&segment.path, e)),
            }
        }
        let again = segments_after(active, after_seq).map_err(|e| io_error(active, e))?;
        if !vanished && again == listed {
            return Ok(opened);
        }
    }
}

fn io_error(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod shown_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_clipped_statement_is_shown_with_what_was_cut_and_what_it_names() {
        let record = json!({
            "statement": "/* xxxx",
            "statement_clipped": {
                "length": 70_000, "sha256": "ab",
                "relations": ["orders", "hr.payroll", "Odd; functions: x"], "functions": [],
                "names_omitted": 3,
            },
        });
        assert_eq!(
            shown_statement(&record),
            "/* xxxx … (clipped: 70000 bytes; relations: orders, hr.payroll, \"Odd; functions: x\"; 3 more names)"
        );
        assert_eq!(
            shown_statement(&json!({"statement": "SELECT 1"})),
            "SELECT 1"
        );
    }

    #[test]
    fn a_text_search_finds_a_clipped_statement_by_a_name_it_keeps() {
        let record = json!({
            "statement": "/* xxxx",
            "statement_clipped": {
                "relations": ["orders"], "functions": ["app.leak"], "fields": ["nextval"],
            },
        });
        let search = |text: &str| AuditQuery {
            text: Some(text.into()),
            ..AuditQuery::default()
        };
        assert!(search("order").matches(&record));
        assert!(search("leak").matches(&record));
        assert!(search("nextval").matches(&record));
        assert!(search("xxxx").matches(&record));
        assert!(!search("payroll").matches(&record));
    }
}
