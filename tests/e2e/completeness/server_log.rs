//! Reading PostgreSQL's own statement log (`log_statement = all`, `log_destination =
//! csvlog`) back as the statements the server ran, per backend session.

use std::path::Path;

/// What the server logged for one statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Logged {
    /// `statement: …`: a simple-protocol query string, whole.
    Simple(String),
    /// `execute <name>: …` (or `execute fetch from …`) with its `parameters:` detail:
    /// `None` for NULL, the server's text rendering otherwise.
    Execute {
        text: String,
        params: Vec<Option<String>>,
    },
    /// `fastpath function call: "name" (OID n)`: a FunctionCall message.
    Fastpath { oid: u32 },
    /// An ERROR with the statement it happened in (`log_min_error_statement`): either the
    /// failure of the statement logged just before, or of one that failed before it could
    /// execute (in Parse or Bind), which `log_statement` never logs.
    Failed { text: String },
}

/// One backend's statements, in the order it ran them.
#[derive(Debug, Default)]
pub struct ServerSession {
    pub user: String,
    /// `application_name` of the connection.
    pub application: String,
    pub statements: Vec<Logged>,
}

// Columns of the csvlog format (stable since PostgreSQL 9.0; later versions only append).
const USER: usize = 1;
const DATABASE: usize = 2;
const SESSION_ID: usize = 5;
const SEVERITY: usize = 11;
const MESSAGE: usize = 13;
const DETAIL: usize = 14;
const QUERY: usize = 19;
const APPLICATION: usize = 22;

/// The statements logged in `database` by any role but `exclude_user`, per server session
/// (`%c`, unique even when a process id is reused), in the order sessions first logged.
/// Lockbox's provisioning connections (its service role deciding about, creating and
/// dropping grant roles) are no engineer's session and are left out.
pub fn read(
    log_dir: &Path,
    database: &str,
    exclude_user: &str,
) -> Result<Vec<ServerSession>, String> {
    let mut sessions: Vec<(String, ServerSession)> = Vec::new();
    for row in rows(log_dir)? {
        if row.len() <= DETAIL || row[DATABASE] != database || row[USER] == exclude_user {
            continue;
        }
        if row.get(APPLICATION).map(String::as_str) == Some(lockbox::provision::APPLICATION_NAME) {
            continue;
        }
        let logged = match row[SEVERITY].as_str() {
            "LOG" => statement_of(&row[MESSAGE], &row[DETAIL])?,
            "ERROR" => row
                .get(QUERY)
                .filter(|q| !q.is_empty())
                .map(|q| Logged::Failed { text: q.clone() }),
            _ => None,
        };
        let Some(logged) = logged else {
            continue;
        };
        let at = match sessions.iter().position(|(id, _)| *id == row[SESSION_ID]) {
            Some(at) => at,
            None => {
                sessions.push((
                    row[SESSION_ID].clone(),
                    ServerSession {
                        user: row[USER].clone(),
                        application: row.get(APPLICATION).cloned().unwrap_or_default(),
                        statements: Vec::new(),
                    },
                ));
                sessions.len() - 1
            }
        };
        sessions[at].1.statements.push(logged);
    }
    Ok(sessions.into_iter().map(|(_, s)| s).collect())
}

/// Every complete row of every `.csv` file in `log_dir`, oldest file first.
fn rows(log_dir: &Path) -> Result<Vec<Vec<String>>, String> {
    let mut files: Vec<_> = std::fs::read_dir(log_dir)
        .map_err(|e| format!("cannot read {}: {e}", log_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        out.extend(parse_csv(&text));
    }
    Ok(out)
}

/// RFC 4180 rows (quoted fields may hold commas, newlines and doubled quotes). A last row
/// without its newline is still being written and is left out.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

/// The statement a LOG message reports, if it reports one.
fn statement_of(message: &str, detail: &str) -> Result<Option<Logged>, String> {
    if let Some(text) = message.strip_prefix("statement: ") {
        return Ok(Some(Logged::Simple(text.to_owned())));
    }
    if let Some(rest) = message.strip_prefix("execute ") {
        let rest = rest.strip_prefix("fetch from ").unwrap_or(rest);
        let (_, text) = rest
            .split_once(": ")
            .ok_or_else(|| format!("unreadable execute line: {message}"))?;
        let params = if detail.is_empty() {
            Vec::new()
        } else {
            parse_params(detail).ok_or_else(|| format!("unreadable parameters: {detail}"))?
        };
        return Ok(Some(Logged::Execute {
            text: text.to_owned(),
            params,
        }));
    }
    if let Some(rest) = message.strip_prefix("fastpath function call: ") {
        let oid = rest
            .rsplit_once("(OID ")
            .and_then(|(_, n)| n.strip_suffix(')'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unreadable fastpath line: {message}"))?;
        return Ok(Some(Logged::Fastpath { oid }));
    }
    Ok(None)
}

/// `parameters: $1 = '1', $2 = NULL, $3 = 'it''s'`.
fn parse_params(detail: &str) -> Option<Vec<Option<String>>> {
    let mut rest = detail.strip_prefix("parameters: ")?;
    let mut out = Vec::new();
    loop {
        rest = &rest[rest.find(" = ")? + 3..];
        if let Some(after) = rest.strip_prefix("NULL") {
            out.push(None);
            rest = after;
        } else {
            let (value, after) = quoted(rest)?;
            out.push(Some(value));
            rest = after;
        }
        match rest.strip_prefix(", ") {
            Some(after) => rest = after,
            None => return rest.is_empty().then_some(out),
        }
    }
}

/// A single-quoted literal at the start of `text` (quotes doubled inside), and the rest.
fn quoted(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('\'')?;
    let mut value = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            value.push(c);
        } else if chars.peek().is_some_and(|(_, n)| *n == '\'') {
            value.push('\'');
            chars.next();
        } else {
            return Some((value, &body[i + 1..]));
        }
    }
    None
}

#[test]
fn csv_rows_and_parameter_lists_parse() {
    let rows = parse_csv("a,\"b,\"\"c\"\"\nd\",e\nf,g\npartial");
    assert_eq!(
        rows,
        vec![vec!["a", "b,\"c\"\nd", "e"], vec!["f", "g"]]
            .into_iter()
            .map(|r| r.into_iter().map(str::to_owned).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        parse_params("parameters: $1 = '1', $2 = NULL, $3 = 'it''s, = ok'"),
        Some(vec![Some("1".into()), None, Some("it's, = ok".into())])
    );
    assert_eq!(parse_params("parameters: $1 = 'unterminated"), None);
}
