//! Comparing one session's audit records with the server's log lines for it, under the
//! rules stated at the top of `completeness.rs`.

use serde_json::Value;

use super::server_log::{Logged, ServerSession};

/// What lockbox sends upstream in place of a refused query string (`proxy/relay.rs`).
const STAND_IN: &str = "SELECT \"lockbox refused this statement\"";

/// A statement record as the comparison needs it.
#[derive(Debug, Clone)]
pub struct Audited {
    pub seq: u64,
    pub protocol: String,
    pub text: String,
    pub params: Vec<Value>,
    pub outcome: String,
}

/// Every disagreement between the server's sessions and the audit's, paired by marker.
pub fn compare(server: &[ServerSession], audit: &[(String, Vec<Audited>)]) -> Vec<String> {
    let mut problems = Vec::new();
    for session in server {
        let first = match session.statements.first() {
            Some(Logged::Simple(text)) => text.clone(),
            other => {
                problems.push(format!(
                    "a server session of {} starts without a marker: {other:?}",
                    session.user
                ));
                continue;
            }
        };
        match audit.iter().find(|(m, _)| *m == first) {
            Some((_, records)) => walk(&first, &session.statements, records, &mut problems),
            None => problems.push(format!(
                "no audit session for server session {first}: {:#?}",
                session.statements
            )),
        }
    }
    for (m, records) in audit {
        let logged = server
            .iter()
            .any(|s| s.statements.first() == Some(&Logged::Simple(m.clone())));
        if !logged {
            problems.push(format!(
                "audit session {m} has no server session: {records:#?}"
            ));
        }
    }
    problems
}

/// Walks one session's server lines and audit records in order.
fn walk(session: &str, lines: &[Logged], audit: &[Audited], problems: &mut Vec<String>) {
    let mut next = 0;
    // The text of the statement logged last, until an ERROR line of its own takes it.
    let mut may_fail: Option<&str> = None;
    for line in lines {
        if let Logged::Failed { text } = line {
            if may_fail.take() == Some(text.as_str()) {
                continue;
            }
        }
        let found = (next..audit.len()).find_map(|k| covers(line, &audit[k..]).map(|n| (k, n)));
        let Some((at, taken)) = found else {
            problems.push(format!(
                "[{session}] the server ran {line:?}; no audit record matches"
            ));
            continue;
        };
        unlogged(session, &audit[next..at], problems);
        next = at + taken;
        may_fail = match line {
            Logged::Simple(text) | Logged::Execute { text, .. } => Some(text),
            _ => None,
        };
    }
    unlogged(session, &audit[next..], problems);
}

/// Audit records no server line matched: wrong unless the server skipped them.
fn unlogged(session: &str, records: &[Audited], problems: &mut Vec<String>) {
    for r in records {
        if !(r.protocol == "extended" && r.outcome == "not_executed") {
            problems.push(format!(
                "[{session}] audit record {} the server never logged: {r:?}",
                r.seq
            ));
        }
    }
}

/// How many audit records (from the front of `audit`) `line` accounts for, if it matches.
fn covers(line: &Logged, audit: &[Audited]) -> Option<usize> {
    let first = audit.first()?;
    match line {
        Logged::Simple(text) if text == STAND_IN => (first.outcome == "refused"
            && (first.protocol == "simple" || first.protocol == "function_call"))
            .then_some(1),
        Logged::Simple(text) => pieces(text, audit),
        Logged::Execute { text, params } => (first.protocol == "extended"
            && first.text == *text
            && params_match(&first.params, params))
        .then_some(1),
        Logged::Fastpath { oid } => (first.protocol == "function_call"
            && first.text == format!("-- FunctionCall of function oid {oid}"))
        .then_some(1),
        Logged::Failed { text } => (first.protocol == "extended"
            && ((first.outcome == "error" && first.text == *text)
                || (first.outcome == "refused" && text == STAND_IN)))
            .then_some(1),
    }
}

/// The number of simple-protocol records whose texts, in order, make up `text`.
fn pieces(text: &str, audit: &[Audited]) -> Option<usize> {
    let mut rest = text;
    let mut taken = 0;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if rest.is_empty() {
            return (taken > 0).then_some(taken);
        }
        let record = audit.get(taken)?;
        if record.protocol != "simple" || record.text.is_empty() {
            return None;
        }
        rest = rest.strip_prefix(record.text.as_str())?;
        taken += 1;
    }
}

fn params_match(audited: &[Value], logged: &[Option<String>]) -> bool {
    audited.len() == logged.len()
        && audited
            .iter()
            .zip(logged)
            .all(|(a, l)| param_matches(a, l.as_deref()))
}

/// A recorded parameter against the server's text rendering of it. Binary values are
/// recorded as hex; the server logs them through the type's output function, so the hex
/// must decode to the logged text under one of the encodings the workload uses.
fn param_matches(audited: &Value, logged: Option<&str>) -> bool {
    match (audited, logged) {
        (Value::Null, None) => true,
        (Value::String(text), Some(logged)) => text == logged,
        (Value::Object(o), Some(logged)) => o
            .get("binary_hex")
            .and_then(Value::as_str)
            .and_then(|h| hex::decode(h).ok())
            .is_some_and(|b| renderings(&b).iter().any(|r| r == logged)),
        _ => false,
    }
}

/// Text renderings of a binary value as bytea, text, bool, int2/4/8 or float4/8.
fn renderings(b: &[u8]) -> Vec<String> {
    let mut out = vec![format!("\\x{}", hex::encode(b))];
    if let Ok(text) = std::str::from_utf8(b) {
        out.push(text.to_owned());
    }
    match *b {
        [x] => out.push(if x == 0 { "f" } else { "t" }.to_owned()),
        [x, y] => out.push(i16::from_be_bytes([x, y]).to_string()),
        [a, b2, c, d] => {
            out.push(i32::from_be_bytes([a, b2, c, d]).to_string());
            out.push(f32::from_be_bytes([a, b2, c, d]).to_string());
        }
        _ => {}
    }
    if let Ok(eight) = <[u8; 8]>::try_from(b) {
        out.push(i64::from_be_bytes(eight).to_string());
        out.push(f64::from_be_bytes(eight).to_string());
    }
    out
}

#[test]
fn the_comparison_finds_missing_extra_and_duplicated_records() {
    let marker = "SELECT 'complete:t'";
    let server = [ServerSession {
        user: "lockbox_write".into(),
        application: String::new(),
        statements: vec![
            Logged::Simple(marker.into()),
            Logged::Simple("SELECT 1; SELECT 'a;b'".into()),
            Logged::Execute {
                text: "SELECT $1::int4".into(),
                params: vec![Some("7".into())],
            },
        ],
    }];
    let record = |protocol: &str, text: &str, params: Vec<Value>| Audited {
        seq: 0,
        protocol: protocol.into(),
        text: text.into(),
        params,
        outcome: "ok".into(),
    };
    let complete = vec![
        record("simple", marker, vec![]),
        record("simple", "SELECT 1", vec![]),
        record("simple", "SELECT 'a;b'", vec![]),
        record(
            "extended",
            "SELECT $1::int4",
            vec![serde_json::json!({"binary_hex": "00000007"})],
        ),
    ];
    let check = |records: Vec<Audited>| compare(&server, &[(marker.to_owned(), records)]);
    assert_eq!(check(complete.clone()), Vec::<String>::new());
    let mut missing = complete.clone();
    missing.remove(2);
    let problems = check(missing);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("no audit record matches")),
        "a piece of the string is missing: {problems:?}"
    );
    let mut duplicated = complete.clone();
    duplicated.push(complete[3].clone());
    let problems = check(duplicated);
    assert!(
        problems.len() == 1 && problems[0].contains("never logged"),
        "one execution, two records: {problems:?}"
    );
    let mut wrong_param = complete;
    wrong_param[3].params = vec![serde_json::json!({"binary_hex": "00000008"})];
    assert_eq!(
        check(wrong_param).len(),
        2,
        "{:?}",
        "unmatched line and record"
    );
}
