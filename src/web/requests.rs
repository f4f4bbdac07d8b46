//! `/requests`: the table of lockbox requests the signed-in user may see (the service's
//! `list` decides which), filtered by status, newest first, a page at a time; approvers
//! see pending requests first unless they pick a status.

use axum::extract::{Query, State};
use axum::response::Response;
use chrono::Utc;
use maud::{html, Markup};
use serde::Deserialize;

use super::error::WebError;
use super::layout::{page, shown, span, table, time, time_or};
use super::session::Signed;
use super::WebState;
use crate::config::{Config, Role, User};
use crate::policy::{Request, RequestStatus, Stage};

/// Rows per page.
pub(crate) const PAGE_SIZE: usize = 25;

/// The statuses the filter offers (`pending` and `approved` take in their sub-states).
const STATUSES: &[&str] = &[
    "pending",
    "pending_internal",
    "pending_customer",
    "approved",
    "active",
    "denied",
    "expired",
    "revoked",
    "cancelled",
    "completed",
];

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    page: Option<usize>,
}

pub(crate) async fn list(
    State(state): State<WebState>,
    signed: Signed,
    Query(query): Query<ListQuery>,
) -> Result<Response, WebError> {
    let status = match query.status.as_str() {
        "" => None,
        s => Some(s.parse::<RequestStatus>().map_err(WebError::Invalid)?),
    };
    let mut list = state.api.lockbox.list(&signed.user, status).await?;
    order(&mut list, approves(&signed.user) && status.is_none());
    let page_no = query.page.unwrap_or(1).max(1);
    let pages = list.len().div_ceil(PAGE_SIZE).max(1);
    let config = state.api.lockbox.config();
    let rows: Vec<&Request> = list
        .iter()
        .skip((page_no - 1).saturating_mul(PAGE_SIZE))
        .take(PAGE_SIZE)
        .collect();
    let content = html! {
        form class="filters" method="get" action="/requests" {
            label for="status" { "Status" }
            select id="status" name="status" {
                option value="" selected[status.is_none()] { "All" }
                @for s in STATUSES {
                    option value=(s) selected[query.status == *s] { (s.replace('_', " ")) }
                }
            }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p { "No requests to show." }
        } @else {
            (table("Lockbox requests", &["Support request", "Database", "Status", "Requested",
                "Request expires", "Access period", "Access expires", "Approvers"],
                html! { @for r in &rows { (row(&config, r)) } }))
        }
        (pager(&query.status, page_no, pages))
    };
    Ok(page(&signed, "Requests", content))
}

/// Newest first; for approvers, everything still pending ahead of the rest.
fn order(list: &mut [Request], pending_first: bool) {
    list.sort_by(|a, b| {
        let pending = |r: &Request| pending_first && r.status.is_pending();
        pending(b)
            .cmp(&pending(a))
            .then(b.created_at.cmp(&a.created_at))
    });
}

/// Whether the user decides on requests (and so wants the pending ones first).
fn approves(user: &User) -> bool {
    user.has(Role::Approver) || user.has(Role::SupportLead)
}

fn row(config: &Config, r: &Request) -> Markup {
    html! {
        tr {
            td {
                a href=(format!("/requests/{}", r.id)) { (shown(&r.ticket)) }
                @if r.break_glass { " " span class="badge warn" { "break-glass" } }
                @if r.extends.is_some() { " " span class="badge" { "extension" } }
            }
            td { (r.database) }
            td { span class=(format!("status s-{}", r.status.as_str())) { (r.status.as_str().replace('_', " ")) } }
            td { (time(r.created_at)) }
            td { (time(r.request_expires_at)) }
            td { (access_period(r)) }
            td { (access_expires(r)) }
            td { (approvers(config, r)) }
        }
    }
}

/// The window granted (from – to) once approved, else the length asked for.
pub(crate) fn access_period(r: &Request) -> String {
    match (r.access_starts_at, r.access_expires_at) {
        (Some(from), Some(to)) => format!("{} – {}", time(from), time(to)),
        _ => format!("{} ({})", span(r.duration_secs), r.access.as_str()),
    }
}

pub(crate) fn access_expires(r: &Request) -> String {
    match r.access_expires_at {
        Some(t) => time(t),
        None if r.status.is_pending() => format!("{} after approval", span(r.duration_secs)),
        None => "never opened".to_owned(),
    }
}

/// Who decided (approved ✓ or denied ✗), or, while pending, who may decide the stage now.
pub(crate) fn approvers(config: &Config, r: &Request) -> String {
    if !r.approvals.is_empty() {
        return r
            .approvals
            .iter()
            .map(|a| format!("{} {}", a.by, if a.approved { "✓" } else { "✗" }))
            .collect::<Vec<_>>()
            .join(", ");
    }
    match r.stage(Utc::now()) {
        Some(Stage::Internal) => format!("awaiting {} ({})", r.internal_role, r.internal_required),
        Some(Stage::Customer) => {
            let named = config
                .databases
                .get(&r.database)
                .map(|d| d.approvers.join(", "))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "any approver".into());
            format!("awaiting {named} ({})", r.customer_required)
        }
        None if r.break_glass => format!(
            "break-glass; acknowledged: {}",
            r.acknowledged_by.as_deref().unwrap_or("not yet")
        ),
        None => time_or(r.decided_at, "none"),
    }
}

fn pager(status: &str, page_no: usize, pages: usize) -> Markup {
    let link = |n: usize| {
        let query = serde_urlencoded::to_string([("status", status), ("page", &n.to_string())])
            .unwrap_or_default();
        format!("/requests?{query}")
    };
    html! {
        nav class="pager" aria-label="Pages" {
            @if page_no > 1 { a href=(link(page_no - 1)) rel="prev" { "Newer" } }
            span { "Page " (page_no) " of " (pages) }
            @if page_no < pages { a href=(link(page_no + 1)) rel="next" { "Older" } }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Request {
        let now = Utc::now();
        serde_json::from_value(serde_json::json!({
            "id": "req-1", "engineer": "eve", "database": "sales", "ticket": "T-1",
            "reason": "<b>debug</b>", "access": "read", "duration_secs": 3600,
            "status": "pending_customer", "customer_required": 1,
            "created_at": now, "request_expires_at": now + chrono::Duration::hours(12),
            "decided_by": null, "decided_at": null, "decision_reason": null,
            "access_starts_at": null, "access_expires_at": null,
            "revoked_by": null, "revoked_at": null, "revoke_reason": null,
        }))
        .expect("request")
    }

    #[test]
    fn approvers_see_pending_first_then_newest() {
        let base = sample();
        let mut old_pending = base.clone();
        old_pending.status = RequestStatus::PendingCustomer;
        old_pending.created_at = base.created_at - chrono::Duration::hours(2);
        let mut new_done = base.clone();
        new_done.status = RequestStatus::Denied;
        let mut list = vec![new_done.clone(), old_pending.clone()];
        order(&mut list, true);
        assert_eq!(list[0].status, RequestStatus::PendingCustomer);
        order(&mut list, false);
        assert_eq!(list[0].status, RequestStatus::Denied);
    }

    #[test]
    fn pages_link_to_their_neighbours_keeping_the_filter() {
        let html = pager("pending", 2, 3).into_string();
        assert!(
            html.contains("/requests?status=pending&amp;page=1"),
            "{html}"
        );
        assert!(
            html.contains("/requests?status=pending&amp;page=3"),
            "{html}"
        );
        let first = pager("", 1, 1).into_string();
        assert!(!first.contains("href"), "{first}");
    }

    #[test]
    fn a_pending_request_fills_every_column() {
        let r = sample();
        assert_eq!(access_period(&r), "1h (read)");
        assert_eq!(access_expires(&r), "1h after approval");
    }
}
