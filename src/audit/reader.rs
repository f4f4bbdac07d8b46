//! Reading the audit trail back for `lockbox audit list`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Records with a sequence number above this (for paging and following).
    pub after_seq: Option<u64>,
    pub limit: Option<usize>,
}

impl AuditQuery {
    fn matches(&self, record: &serde_json::Value) -> bool {
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
            .is_some_and(|t| !field("statement").is_some_and(|s| s.contains(t)))
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

/// Records of the file at `path` that match `query`, in order.
pub fn read_records(path: &Path, query: &AuditQuery) -> Result<Vec<serde_json::Value>, AuditError> {
    let io = |e: std::io::Error| AuditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io)?;
        // A line being written right now may be incomplete; it shows up next time.
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if query.matches(&record) {
            out.push(record);
            if query.limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
    }
    Ok(out)
}
