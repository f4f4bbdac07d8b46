//! The verdict on one string: what lockbox recorded and let through, against what the
//! server itself did with it.

use std::fmt::Write as _;

use serde_json::Value;

use lockbox::policy::AccessLevel;

use super::Protocol;
use crate::completeness::compare::{cover, no_statement};
use crate::completeness::wire::Reply;

/// Everything seen for one string over one protocol.
pub(super) struct Observed<'a> {
    pub(super) protocol: Protocol,
    pub(super) sql: &'a str,
    pub(super) generated: bool,
    pub(super) grant: AccessLevel,
    /// The server's replies to the string, sent straight to it.
    pub(super) reference: &'a [Reply],
    /// Whether the server refuses to run it in a read-only transaction (read runs only).
    pub(super) writes: bool,
    /// The replies through lockbox.
    pub(super) via: &'a [Reply],
    /// Lockbox's statement records for the string.
    pub(super) audited: &'a [Value],
    /// The server's replies to each recorded statement sent alone (simple protocol).
    pub(super) alone: &'a [Vec<Reply>],
    /// Whether each recorded statement, sent alone, writes (simple protocol).
    pub(super) alone_writes: &'a [bool],
}

/// The audit kind for a statement the server completed with `tag`.
fn kind_of_tag(tag: &str) -> &'static str {
    match tag.split(' ').next().unwrap_or_default() {
        "SELECT" => "select",
        "INSERT" => "insert",
        "UPDATE" => "update",
        "DELETE" => "delete",
        "MERGE" => "merge",
        _ => "other",
    }
}

/// A tag that does not say whether its statement wrote: a SELECT with a writable CTE or
/// INTO, an EXPLAIN ANALYZE, a MERGE (of which actions), `COPY (DELETE …) TO`.
pub(super) fn tag_may_hide_a_write(tag: &str) -> bool {
    matches!(
        tag.split(' ').next().unwrap_or_default(),
        "SELECT" | "EXPLAIN" | "MERGE" | "COPY"
    )
}

/// The kinds lockbox may record a statement the server says writes as, whatever its tag.
const WRITE_KINDS: [&str; 5] = ["insert", "update", "delete", "merge", "ddl"];

fn is_write_tag(tag: &str) -> bool {
    matches!(kind_of_tag(tag), "insert" | "update" | "delete" | "merge")
}

/// What is wrong with one observation; empty when lockbox agrees with the server.
pub(super) fn judge(o: &Observed) -> Vec<String> {
    let mut issues = Vec::new();
    let ran: Vec<&str> = o.reference.iter().filter_map(Reply::tag).collect();
    let failed = o.reference.iter().any(Reply::is_error);
    if o.generated && failed {
        issues.push("the server rejects this generated string: a bug in the generator".into());
    }
    let texts: Vec<&str> = o
        .audited
        .iter()
        .map(|r| r["statement"].as_str().unwrap_or_default())
        .collect();
    if let Some(r) = o
        .audited
        .iter()
        .find(|r| r["protocol"] != o.protocol.name())
    {
        issues.push(format!("a record of protocol {}", r["protocol"]));
    }
    match o.protocol {
        Protocol::Simple => {
            if cover(o.sql, &texts) != Some(texts.len()) {
                issues.push(
                    "the recorded statements do not make up the string (the server's scanner \
                     sees more than blanks, comments and semicolons between them)"
                        .into(),
                );
            }
            // A string with no statement gets one record of its own (kind `empty`).
            let empty = ran.is_empty() && texts.len() == 1 && no_statement(o.sql);
            if !failed && !empty && texts.len() != ran.len() {
                issues.push(format!(
                    "the server ran {} statement(s); lockbox recorded {}",
                    ran.len(),
                    texts.len()
                ));
            }
            if failed && texts.len() <= ran.len() {
                issues.push(format!(
                    "the server ran {} statement(s) and failed on the next; lockbox recorded {}",
                    ran.len(),
                    texts.len()
                ));
            }
        }
        Protocol::Extended => {
            // Other records may come with it, of statements the server skipped after the
            // error; `Run::finish` checks that their outcome says so.
            if texts.iter().filter(|t| **t == o.sql).count() != 1 {
                issues.push("not exactly one record of the statement's text".into());
            }
        }
    }
    let ours: Vec<&Value> = match o.protocol {
        Protocol::Simple => o.audited.iter().collect(),
        Protocol::Extended => o
            .audited
            .iter()
            .filter(|r| r["statement"] == o.sql)
            .collect(),
    };
    for (i, tag) in ran.iter().enumerate() {
        let Some(record) = ours.get(i) else {
            break;
        };
        let want = kind_of_tag(tag);
        // Where the server says the statement writes and its tag hides it, the record may
        // name the write instead (`WITH d AS (DELETE …) SELECT` is a delete); anywhere
        // else it names what the tag does.
        let writes = match o.protocol {
            Protocol::Simple => o.alone_writes.get(i).copied().unwrap_or(false),
            Protocol::Extended => o.writes,
        };
        let named_write =
            writes && tag_may_hide_a_write(tag) && WRITE_KINDS.iter().any(|k| record["kind"] == *k);
        if record["kind"] != want && !named_write {
            issues.push(format!(
                "statement {} ran as {tag}; recorded as kind {}",
                i + 1,
                record["kind"]
            ));
        }
        if let Some(alone) = o.alone.get(i) {
            if alone.as_slice() != [Reply::Done((*tag).to_owned())] {
                issues.push(format!(
                    "recorded statement {} run alone: {}; in the string the server ran {tag}",
                    i + 1,
                    replies(alone)
                ));
            }
        }
    }
    match o.grant {
        AccessLevel::Read => {
            if let Some(tag) = o
                .via
                .iter()
                .filter_map(Reply::tag)
                .find(|t| is_write_tag(t))
            {
                issues.push(format!("a write ran under a read grant: {tag}"));
            }
            if !failed && !o.writes && o.via != o.reference {
                issues.push(
                    "the server runs this in a read-only transaction, but not through lockbox \
                     under a read grant"
                        .into(),
                );
            }
        }
        _ => {
            if o.via != o.reference {
                issues.push("through lockbox the replies differ from the server's".into());
            }
        }
    }
    issues
}

fn replies(list: &[Reply]) -> String {
    let shown: Vec<String> = list
        .iter()
        .map(|r| match r {
            Reply::Done(tag) => tag.clone(),
            Reply::Empty => "(empty query)".into(),
            Reply::Failed { code, message } => format!("error {code} {message:?}"),
        })
        .collect();
    format!("[{}]", shown.join(", "))
}

pub(super) fn describe(name: &str, o: &Observed, issues: &[String]) -> String {
    let mut out = format!("[{name}] {} {:?}\n", o.protocol.name(), o.sql);
    let _ = writeln!(out, "    the server ran:      {}", replies(o.reference));
    let recorded: Vec<String> = o
        .audited
        .iter()
        .map(|r| {
            let outcome = r["kind"].as_str().unwrap_or("?");
            format!(
                "{outcome} {:?}",
                r["statement"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let _ = writeln!(out, "    lockbox recorded:    [{}]", recorded.join(", "));
    let _ = writeln!(out, "    through lockbox:     {}", replies(o.via));
    for issue in issues {
        let _ = writeln!(out, "    - {issue}");
    }
    out
}

#[test]
fn the_judge_sees_a_hidden_statement() {
    let sql = "SELECT 1; --c\rDELETE FROM probe WHERE id = 2";
    let reference = [
        Reply::Done("SELECT 1".into()),
        Reply::Done("DELETE 1".into()),
    ];
    let record = |text: &str, kind: &str| serde_json::json!({"type": "statement", "protocol": "simple", "statement": text, "kind": kind});
    let hidden = [record("SELECT 1", "select")];
    let split = [
        record("SELECT 1", "select"),
        record("--c\rDELETE FROM probe WHERE id = 2", "delete"),
    ];
    let alone = [
        vec![Reply::Done("SELECT 1".into())],
        vec![Reply::Done("DELETE 1".into())],
    ];
    let observe = |audited: &[Value], alone: &[Vec<Reply>]| {
        judge(&Observed {
            protocol: Protocol::Simple,
            sql,
            generated: false,
            grant: AccessLevel::Admin,
            reference: &reference,
            writes: false,
            via: &reference,
            audited,
            alone,
            alone_writes: &[],
        })
    };
    assert_eq!(observe(&split, &alone), Vec::<String>::new());
    let issues = observe(&hidden, &alone[..1]);
    assert!(
        issues
            .iter()
            .any(|i| i.contains("ran 2 statement(s); lockbox recorded 1")),
        "{issues:?}"
    );
    assert!(
        issues
            .iter()
            .any(|i| i.contains("do not make up the string")),
        "{issues:?}"
    );
}
