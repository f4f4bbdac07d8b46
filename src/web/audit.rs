//! `/audit`: the trail with the filters of `audit list` (engineer, database, request,
//! kind, outcome, since, until), newest first, a page at a time, and a CSV or JSON Lines
//! download of everything the filter selects. Readable by whoever may read the trail
//! through the API (`policy::check_audit_read`).

use std::collections::VecDeque;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use maud::html;

use super::error::WebError;
use super::layout::{page, table};
use super::request_page::record_line;
use super::session::Signed;
use super::WebState;
use crate::audit::export::columns::{cell, csv_field, LIST_COLUMNS};
use crate::audit::source::TrailSource;
use crate::audit::AuditQuery;
use crate::policy;

/// Records per page.
const PAGE_SIZE: usize = 50;

/// The filters the page offers, in the order shown: (field, label, hint).
const FILTERS: &[(&str, &str, &str)] = &[
    ("engineer", "Engineer", ""),
    ("database", "Database", ""),
    ("request", "Request id", ""),
    ("kind", "Statement kind", "select, update, …"),
    ("outcome", "Outcome", "ok, error, refused, …"),
    ("since", "Since", "2026-01-31, 1h or RFC 3339"),
    ("until", "Until", "2026-01-31, 1h or RFC 3339"),
];

/// The filled-in filters of a query string (empty fields of the form dropped) and the
/// page number.
fn filters(raw: Option<&str>) -> (Vec<(String, String)>, usize) {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).unwrap_or_default();
    let page = pairs
        .iter()
        .find(|(k, _)| k == "page")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let kept = pairs
        .into_iter()
        .filter(|(k, v)| !v.trim().is_empty() && FILTERS.iter().any(|(f, _, _)| f == k))
        .map(|(k, v)| (k, v.trim().to_owned()))
        .collect();
    (kept, page)
}

/// The query the filters describe, validated as the API validates it.
fn query_of(pairs: &[(String, String)]) -> Result<AuditQuery, WebError> {
    let text = serde_urlencoded::to_string(pairs).unwrap_or_default();
    let query: AuditQuery =
        serde_urlencoded::from_str(&text).map_err(|e| WebError::Invalid(e.to_string()))?;
    query
        .validate()
        .map_err(|e| WebError::Invalid(e.to_string()))?;
    Ok(query)
}

/// Deepest page the table goes to: what a page keeps in memory is bounded by it.
const MAX_PAGES: usize = 200;

/// The newest `keep` records the filters select (oldest first) and how many match in all:
/// the whole fleet's from the audit database when the sink is configured, else this node's.
pub(crate) async fn newest(
    state: &WebState,
    query: AuditQuery,
    keep: usize,
) -> Result<(VecDeque<serde_json::Value>, usize), WebError> {
    // An unreadable trail (the audit database down or stalled) is a 503, as the API
    // answers, not a bug's 500; the details go to the log, not the page.
    trail(state)
        .newest(query, keep)
        .await
        .map_err(|e| WebError::Service(e.into()))
}

fn trail(state: &WebState) -> TrailSource {
    let lockbox = &state.api.lockbox;
    TrailSource::of(&lockbox.config(), lockbox.audit.path())
}

pub(crate) async fn page_view(
    state: &WebState,
    signed: &Signed,
    raw: Option<&str>,
) -> Result<Response, WebError> {
    let within = policy::audit_scope(&state.api.lockbox.config(), &signed.user)?;
    let (pairs, page_no) = filters(raw);
    let page_no = page_no.min(MAX_PAGES);
    let query = AuditQuery {
        within,
        ..query_of(&pairs)?
    };
    let (records, total) = newest(state, query, page_no * PAGE_SIZE).await?;
    let pages = total.div_ceil(PAGE_SIZE).clamp(1, MAX_PAGES);
    let shown: Vec<&serde_json::Value> = records
        .iter()
        .rev()
        .skip((page_no - 1).saturating_mul(PAGE_SIZE))
        .take(PAGE_SIZE)
        .collect();
    let value = |k: &str| {
        pairs
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let filter_query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    let link = |extra: &str| {
        if filter_query.is_empty() {
            format!("?{extra}")
        } else {
            format!("?{filter_query}&{extra}")
        }
    };
    let content = html! {
        form class="filters" method="get" action="/audit" {
            @for (field, label, hint) in FILTERS {
                p {
                    label for=(field) { (label) }
                    input id=(field) name=(field) type="text" value=(value(field)) placeholder=(hint);
                }
            }
            p { button type="submit" { "Filter" } }
        }
        p class="downloads" {
            (total) " records match. Download: "
            a href=(format!("/audit/download{}", link("format=csv"))) download="audit.csv" { "CSV" }
            " · "
            a href=(format!("/audit/download{}", link("format=jsonl"))) download="audit.jsonl" { "JSON Lines" }
        }
        (table("Audit records, newest first", &["Seq", "Node", "Record"], html! {
            @for r in &shown {
                tr {
                    td { (r.get("seq").and_then(|s| s.as_u64()).unwrap_or(0)) }
                    td { (r.get("node").and_then(|n| n.as_str()).unwrap_or_default()) }
                    td { (record_line(r)) }
                }
            }
        }))
        nav class="pager" aria-label="Pages" {
            @if page_no > 1 { a href=(format!("/audit{}", link(&format!("page={}", page_no - 1)))) rel="prev" { "Newer" } }
            span { "Page " (page_no) " of " (pages) }
            @if page_no < pages { a href=(format!("/audit{}", link(&format!("page={}", page_no + 1)))) rel="next" { "Older" } }
        }
    };
    Ok(page(signed, "Audit trail", content))
}

pub(crate) async fn show(
    State(state): State<WebState>,
    signed: Signed,
    RawQuery(raw): RawQuery,
) -> Result<Response, WebError> {
    page_view(&state, &signed, raw.as_deref()).await
}

/// The records the filters select, oldest first, as CSV (the columns of `audit list
/// --format csv`, each cell neutralised against spreadsheet formulas) or JSON Lines.
pub(crate) async fn download(
    State(state): State<WebState>,
    signed: Signed,
    RawQuery(raw): RawQuery,
) -> Result<Response, WebError> {
    let within = policy::audit_scope(&state.api.lockbox.config(), &signed.user)?;
    let format = serde_urlencoded::from_str::<Vec<(String, String)>>(raw.as_deref().unwrap_or(""))
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v)
        .unwrap_or_else(|| "csv".into());
    let (pairs, _) = filters(raw.as_deref());
    let query = AuditQuery {
        within,
        ..query_of(&pairs)?
    };
    let (content_type, name) = match format.as_str() {
        "csv" => ("text/csv; charset=utf-8", "audit.csv"),
        "jsonl" => ("application/jsonl", "audit.jsonl"),
        other => {
            return Err(WebError::Invalid(format!(
                "unknown format `{other}` (csv or jsonl)"
            )))
        }
    };
    let body = Body::from_stream(stream_records(&state, query, format == "csv"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// The selected records as lines, read on the blocking pool and sent as they are read, so
/// a download of the whole trail holds a few lines in memory, not the trail.
fn stream_records(
    state: &WebState,
    query: AuditQuery,
    csv: bool,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    let records = trail(state).stream(query);
    let header = csv.then(|| Ok(csv_header()));
    let lines = futures::stream::unfold(records, move |mut rx| async move {
        let line = match rx.recv().await? {
            Ok(r) if csv => Ok(csv_line(&r)),
            Ok(r) => Ok(format!("{r}\n")),
            Err(e) => {
                tracing::error!(error = %e, "audit download could not read the trail");
                // Cut the download short: a truncated file must not pass for a whole one.
                Err(std::io::Error::other("the audit trail cannot be read"))
            }
        };
        Some((line, rx))
    });
    futures::stream::iter(header).chain(lines)
}

/// The header of a CSV download: the columns of `audit list --format csv`.
fn csv_header() -> String {
    format!("{}\r\n", LIST_COLUMNS.join(","))
}

/// One record as a CSV row, each cell neutralised against spreadsheet formulas.
fn csv_line(record: &serde_json::Value) -> String {
    let row: Vec<String> = LIST_COLUMNS
        .iter()
        .map(|c| csv_field(&cell(record, c).unwrap_or_default()))
        .collect();
    format!("{}\r\n", row.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_form_fields_are_no_filter() {
        let (pairs, page) = filters(Some("engineer=&database=app&page=3&format=csv"));
        assert_eq!(pairs, vec![("database".to_owned(), "app".to_owned())]);
        assert_eq!(page, 3);
        assert!(query_of(&pairs).is_ok());
        assert!(query_of(&[("kind".into(), "nonsense".into())]).is_err());
    }

    #[test]
    fn csv_cells_are_neutralised() {
        let text = csv_line(&serde_json::json!({"seq": 1, "statement": "=cmd|' /C calc'!A0"}));
        assert!(text.contains("'=cmd"), "{text}");
        assert!(text.starts_with("1,"), "{text}");
        assert!(csv_header().starts_with("seq,time,"));
    }
}
