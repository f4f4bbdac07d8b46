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

/// Like `compare`, for sessions of real clients, which start with statements of their
/// own rather than a marker: each server session is paired with the audit session that
/// accounts for it (the first that agrees in full, else the one with fewest problems).
pub fn compare_by_content(server: &[ServerSession], audit: &[Vec<Audited>]) -> Vec<String> {
    let mut unused: Vec<usize> = (0..audit.len()).collect();
    let mut problems = Vec::new();
    for (n, session) in server.iter().enumerate() {
        let label = format!("{} session {n}", session.user);
        let mut best: Option<(usize, Vec<String>)> = None;
        for &i in &unused {
            let mut found = Vec::new();
            walk(&label, &session.statements, &audit[i], &mut found);
            if best.as_ref().is_none_or(|(_, b)| found.len() < b.len()) {
                best = Some((i, found));
            }
            if best.as_ref().is_some_and(|(_, b)| b.is_empty()) {
                break;
            }
        }
        match best {
            Some((i, found)) => {
                unused.retain(|u| *u != i);
                problems.extend(found);
            }
            None => problems.push(format!(
                "no audit session for server session {label}: {:#?}",
                session.statements
            )),
        }
    }
    for i in unused {
        problems.push(format!(
            "an audit session the server never logged: {:#?}",
            audit[i]
        ));
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
        // A string with no statement (only blanks, comments, semicolons) still reached
        // the server, which answers EmptyQueryResponse: lockbox records it, once, below.
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

/// Audit records no server line matched: wrong unless the server skipped them (or, for an
/// Execute, its Parse or Bind failed), or it was a refused FunctionCall (its stand-in, a
/// call of function OID 0, fails before the server logs a call).
fn unlogged(session: &str, records: &[Audited], problems: &mut Vec<String>) {
    for r in records {
        let skipped = r.outcome == "not_executed";
        let kept_from_running = r.protocol == "extended" && r.outcome == "error";
        let refused_call = r.protocol == "function_call" && r.outcome == "refused";
        if !(skipped || kept_from_running || refused_call) {
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
        Logged::Simple(text) if text == STAND_IN => refused_string(audit),
        Logged::Simple(text) => pieces(text, audit),
        // A query string the server could not parse runs nothing: it is logged only as an
        // ERROR naming it, and the audit must hold it, failed, piece by piece.
        Logged::Failed { text } if first.protocol == "simple" => pieces(text, audit).filter(|&n| {
            audit[..n].iter().any(|r| r.outcome == "error")
                && audit[..n]
                    .iter()
                    .all(|r| r.outcome == "error" || r.outcome == "not_executed")
        }),
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

/// The records of one refused query string, for which the server logged the stand-in:
/// the statements before and after the refused one are `not_executed`.
fn refused_string(audit: &[Audited]) -> Option<usize> {
    let simple_not_run = |r: &Audited| r.protocol == "simple" && r.outcome == "not_executed";
    let before = audit.iter().take_while(|r| simple_not_run(r)).count();
    let refused = audit.get(before)?;
    if refused.protocol != "simple" || refused.outcome != "refused" {
        return None;
    }
    let after = audit[before + 1..]
        .iter()
        .take_while(|r| simple_not_run(r))
        .count();
    Some(before + 1 + after)
}

/// The number of simple-protocol records whose texts, in order, make up `text`.
fn pieces(text: &str, audit: &[Audited]) -> Option<usize> {
    let texts: Vec<&str> = audit
        .iter()
        .take_while(|r| r.protocol == "simple" && !r.text.is_empty())
        .map(|r| r.text.as_str())
        .collect();
    let taken = cover(text, &texts)?;
    (taken > 0).then_some(taken)
}

/// How many of `texts` (from the front) make up `text` in order, with nothing between,
/// before or after them but what PostgreSQL's scanner skips and semicolons; `None` if
/// they do not. A text may start with such blanks itself (a comment before a statement).
pub fn cover(text: &str, texts: &[&str]) -> Option<usize> {
    let mut rest = text;
    let mut taken = 0;
    loop {
        let next = texts.get(taken).filter(|t| !t.is_empty());
        if let Some(after) = next.and_then(|t| rest.strip_prefix(t)) {
            rest = after;
            taken += 1;
        } else if rest.is_empty() {
            return Some(taken);
        } else {
            rest = skip_blank(rest)?;
        }
    }
}

/// Whether `text` holds no statement: only blanks, comments and semicolons.
pub fn no_statement(text: &str) -> bool {
    let mut rest = text;
    while !rest.is_empty() {
        match skip_blank(rest) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    true
}

/// `text` past the one blank, comment or semicolon it starts with, as PostgreSQL's
/// scanner (scan.l) reads them: blanks are space, tab, newline, carriage return, form
/// feed (and vertical tab since 16); a `--` comment runs to the end of the line (a
/// newline or a carriage return ends it); `/* */` comments nest. No other character is a
/// blank: a no-break space is part of an identifier. `None` if `text` starts with none
/// of these, or with a `/*` comment that is never closed.
fn skip_blank(text: &str) -> Option<&str> {
    let mut chars = text.chars();
    match chars.next()? {
        ' ' | '\t' | '\n' | '\r' | '\x0c' | '\x0b' | ';' => Some(chars.as_str()),
        '-' if text.starts_with("--") => {
            Some(text.find(['\n', '\r']).map_or("", |end| &text[end..]))
        }
        '/' if text.starts_with("/*") => after_c_comment(text),
        _ => None,
    }
}

/// The text after the `/* */` comment `text` starts with, nesting counted.
fn after_c_comment(text: &str) -> Option<&str> {
    let mut depth = 0usize;
    let mut at = 0;
    let bytes = text.as_bytes();
    while at + 1 < bytes.len() {
        match (bytes[at], bytes[at + 1]) {
            (b'/', b'*') => {
                depth += 1;
                at += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                at += 2;
                if depth == 0 {
                    return Some(&text[at..]);
                }
            }
            _ => at += 1,
        }
    }
    None
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
    out.extend(array_rendering(b));
    out
}

/// The text form of a one-dimensional binary array of integers or OIDs (drivers send
/// `oid[]` parameters so when they look up types): `{1,2}`.
fn array_rendering(b: &[u8]) -> Option<String> {
    let word = |at: usize| -> Option<[u8; 4]> { b.get(at..at + 4)?.try_into().ok() };
    let ndim = i32::from_be_bytes(word(0)?);
    let element = u32::from_be_bytes(word(8)?);
    if ndim == 0 && b.len() == 12 {
        return Some("{}".into());
    }
    if ndim != 1 {
        return None;
    }
    let count = usize::try_from(i32::from_be_bytes(word(12)?)).ok()?;
    let mut at = 20;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let len = i32::from_be_bytes(word(at)?);
        at += 4;
        if len < 0 {
            items.push("NULL".to_owned());
            continue;
        }
        let value = b.get(at..at + len as usize)?;
        at += len as usize;
        items.push(match (element, value.len()) {
            (26, 4) => u32::from_be_bytes(value.try_into().ok()?).to_string(),
            (23, 4) => i32::from_be_bytes(value.try_into().ok()?).to_string(),
            (20, 8) => i64::from_be_bytes(value.try_into().ok()?).to_string(),
            (21, 2) => i16::from_be_bytes(value.try_into().ok()?).to_string(),
            _ => return None,
        });
    }
    (at == b.len()).then(|| format!("{{{}}}", items.join(",")))
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

#[test]
fn the_comparison_reads_blanks_as_the_server_scanner_does() {
    // Comments between and around the recorded statements are blanks; a `--` comment
    // ends at a carriage return; `/* */` comments nest.
    let texts = ["SELECT 1", "/* lead */ SELECT 2"];
    assert_eq!(
        cover("SELECT 1; /* lead */ SELECT 2; -- end", &texts),
        Some(2)
    );
    assert_eq!(
        cover(
            "SELECT 1;/* a /* b */ c */SELECT 2",
            &["SELECT 1", "SELECT 2"]
        ),
        Some(2)
    );
    assert_eq!(cover("SELECT 1; --c\rDELETE FROM t", &["SELECT 1"]), None);
    assert_eq!(
        cover("SELECT 1; /* a /* b */ DELETE FROM t", &["SELECT 1"]),
        None
    );
    // A no-break space is no blank to the server.
    assert_eq!(cover("SELECT 1\u{a0}", &["SELECT 1"]), None);
    assert!(no_statement(" ; /* a /* b */ */ -- c\r\n"));
    assert!(!no_statement("-- c\rSELECT 1"));
    assert!(!no_statement("/* never closed"));

    let record = |text: &str, outcome: &str| Audited {
        seq: 0,
        protocol: "simple".into(),
        text: text.into(),
        params: vec![],
        outcome: outcome.into(),
    };
    let marker = "SELECT 'complete:t'";
    let session = |lines: Vec<Logged>| {
        let mut statements = vec![Logged::Simple(marker.into())];
        statements.extend(lines);
        [ServerSession {
            user: "lockbox_read".into(),
            application: String::new(),
            statements,
        }]
    };
    let check = |lines: Vec<Logged>, records: Vec<Audited>| {
        let mut all = vec![record(marker, "ok")];
        all.extend(records);
        compare(&session(lines), &[(marker.to_owned(), all)])
    };
    // A comment-only string runs nothing, but reached the server: it has its record.
    assert_eq!(
        check(
            vec![Logged::Simple("-- only".into())],
            vec![record("-- only", "ok")]
        ),
        Vec::<String>::new()
    );
    assert!(!check(vec![Logged::Simple("-- only".into())], vec![]).is_empty());
    // A string the server cannot parse is logged only as an ERROR; its pieces failed.
    let bad = "SELECT 1; SELEC 2";
    assert_eq!(
        check(
            vec![Logged::Failed { text: bad.into() }],
            vec![
                record("SELECT 1", "error"),
                record("SELEC 2", "not_executed")
            ]
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        check(
            vec![Logged::Failed { text: bad.into() }],
            vec![record("SELECT 1", "ok"), record("SELEC 2", "ok")]
        )
        .len(),
        3
    );
    // A refused string: the stand-in goes with all of its pieces.
    assert_eq!(
        check(
            vec![
                Logged::Simple(STAND_IN.into()),
                Logged::Simple("SELECT 3".into())
            ],
            vec![
                record("SELECT 1", "not_executed"),
                record("DELETE FROM t", "refused"),
                record("SELECT 2", "not_executed"),
                record("SELECT 3", "ok"),
            ]
        ),
        Vec::<String>::new()
    );
}

#[test]
fn binary_arrays_render_as_the_server_logs_them() {
    let mut oids = Vec::new();
    for word in [1i32, 0, 26, 2, 1, 4, 16391, 4, 16400] {
        oids.extend(word.to_be_bytes());
    }
    assert!(renderings(&oids).contains(&"{16391,16400}".to_owned()));
    let mut empty = Vec::new();
    for word in [0i32, 0, 23] {
        empty.extend(word.to_be_bytes());
    }
    assert!(renderings(&empty).contains(&"{}".to_owned()));
}
