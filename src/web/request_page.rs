//! `/requests/{id}`: one request, its approvals and history, the actions the signed-in
//! user may take, and while access is active its live sessions and statements. Which
//! forms show is decided by the policy checks the service runs on the POST itself
//! (`check_decision`, `check_revoke`, …), so the page never offers what would be refused.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::StreamExt;
use maud::{html, Markup};

use super::error::WebError;
use super::layout::{csrf_field, page, shown, span, table, time, time_or};
use super::requests::{access_expires, access_period, approvers};
use super::session::Signed;
use super::WebState;
use crate::audit::AuditQuery;
use crate::ids::RequestId;
use crate::policy::{self, Request, RequestStatus};
use crate::proxy::SessionInfo;

/// Statements shown on the page as it is first rendered (the stream adds newer ones).
const LATEST: usize = 50;

pub(crate) async fn show(
    State(state): State<WebState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let lockbox = &state.api.lockbox;
    let request = lockbox.get(&signed.user, &RequestId(id)).await?;
    let extensions: Vec<Request> = lockbox
        .list(&signed.user, None)
        .await?
        .into_iter()
        .filter(|r| r.extends.as_ref() == Some(&request.id))
        .collect();
    let live = matches!(
        request.status,
        RequestStatus::Active | RequestStatus::Approved
    );
    // Every node's: a session on another node is ended from here too.
    let (sessions, partial) = lockbox
        .list_fleet_sessions(&signed.user, &state.api.registry)
        .await;
    let sessions: Vec<SessionInfo> = sessions
        .into_iter()
        .filter(|s| s.request_id == request.id.0)
        .collect();
    // The trail as the API shows it: only to those who may read it.
    // A trail that cannot be read (with the sink, the audit database down or stalled)
    // leaves the list out, not the page: deciding, revoking and ending sessions must not
    // depend on reading a copy of the trail.
    // An approver of another database reads none of this one's statements.
    let statements =
        if policy::may_read_audit_of(&lockbox.config(), &signed.user, &request.database) {
            Some(
                latest_records(&state, &request.id.0).await.inspect_err(
                    |e| tracing::warn!(error = %e, "request page without its statements"),
                ),
            )
        } else {
            None
        };
    let config = lockbox.config();
    // With the sink the page lists the fleet's records, but the live list follows this
    // node's trail only: it resumes after this node's newest record.
    let this_node = config
        .audit_pg_sink
        .is_some()
        .then_some(config.node_id.as_str());
    // What needs a decision or is happening now comes first; the record of how the
    // request got here after it.
    let content = html! {
        (details(&config, &request))
        (actions(&config, &signed, &request))
        @if live || !sessions.is_empty() {
            (sessions_list(&config, &signed, &request, &sessions, partial.as_deref()))
        }
        @match &statements {
            Some(Ok(records)) => (statement_list(&request, records, live, stream_after(records, this_node))),
            Some(Err(_)) => {
                h2 { "Statements and outcomes" }
                p role="alert" { "The statements cannot be shown right now: lockbox cannot read the audit trail. " a href=(format!("/requests/{}", request.id)) { "Try again" } }
            }
            None => {}
        }
        (approvals(&request))
        (history(&request))
        @if !extensions.is_empty() {
            h2 { "Extensions" }
            ul { @for e in &extensions {
                li { a href=(format!("/requests/{}", e.id)) { (e.id) } " — " (e.status.as_str().replace('_', " ")) ", " (span(e.duration_secs)) }
            } }
        }
    };
    Ok(page(
        &signed,
        &format!(
            "Request {} ({})",
            shown(&request.ticket),
            shown(&request.database)
        ),
        content,
    ))
}

fn details(config: &crate::config::Config, r: &Request) -> Markup {
    html! {
        dl class="facts" {
            dt { "Request" } dd { code { (r.id) } }
            dt { "Status" } dd { span class=(format!("status s-{}", r.status.as_str())) { (r.status.as_str().replace('_', " ")) }
                @if r.break_glass { " " span class="badge warn" { "break-glass" } } }
            dt { "Engineer" } dd { (shown(&r.engineer)) }
            dt { "Database" } dd { (r.database) }
            dt { "Support request" } dd { (shown(&r.ticket)) }
            dt { "Reason" } dd class="reason" { (shown(&r.reason)) }
            dt { "Level" } dd { (r.access.as_str()) }
            dt { "Limits" } dd { (r.limits().unwrap_or_else(|| "none".into())) }
            dt { "Requested" } dd { (time(r.created_at)) }
            dt { "Request expires" } dd { (time(r.request_expires_at)) }
            dt { "Access period" } dd { (access_period(r)) }
            dt { "Access expires" } dd { (access_expires(r)) }
            dt { "Approvers" } dd { (approvers(config, r)) }
            dt { "Rules that applied" } dd {
                @if r.rules_applied.is_empty() { "none" } @else { (r.rules_applied.join(", ")) }
            }
            @if let Some(original) = &r.extends {
                dt { "Extends" } dd { a href=(format!("/requests/{original}")) { (original) } }
            }
            @if r.break_glass {
                dt { "Acknowledged" } dd { (r.acknowledged_by.as_deref().unwrap_or("not yet")) }
            }
            @if let Some(by) = &r.revoked_by {
                dt { "Revoked" } dd { (by) ", " (time_or(r.revoked_at, "")) ": " (shown(r.revoke_reason.as_deref().unwrap_or(""))) }
            }
        }
    }
}

fn approvals(r: &Request) -> Markup {
    html! {
        h2 { "Approvals" }
        p { "Internal: " (r.approvals_in(policy::Stage::Internal)) " of " (r.internal_required)
            " · Customer: " (r.approvals_in(policy::Stage::Customer)) " of " (r.customer_required) }
        @if !r.approvals.is_empty() {
            (table("Approvals by stage", &["Stage", "By", "Decision", "Justification", "When"], html! {
                @for a in &r.approvals {
                    tr {
                        td { (format!("{:?}", a.stage).to_lowercase()) }
                        td { (a.by) }
                        td { @if a.approved { "approved" } @else { "denied" }
                             @if let Some(s) = a.shortened_to_secs { " (shortened to " (span(s)) ")" } }
                        td { (shown(&a.justification)) }
                        td { (time(a.at)) }
                    }
                }
            }))
        }
    }
}

fn history(r: &Request) -> Markup {
    html! {
        h2 { "History" }
        (table("History", &["When", "Who", "Change", "Why"], html! {
            @for t in &r.history {
                tr {
                    td { (time(t.at)) }
                    td { (t.by) }
                    td { (t.from.map_or("new", |f| f.as_str())) " → " (t.to.as_str()) }
                    td { (shown(t.reason.as_deref().unwrap_or(""))) }
                }
            }
        }))
    }
}

/// The forms the signed-in user may use on `r` now.
fn actions(config: &crate::config::Config, signed: &Signed, r: &Request) -> Markup {
    let now = Utc::now();
    let user = &signed.user;
    let decide = policy::check_decision(config, user, r, now).is_ok();
    let revoke = policy::check_revoke(config, user, r, now).is_ok();
    let cancel = policy::check_cancel(user, r, now).is_ok();
    let extend = policy::check_extend(user, r, now).is_ok();
    let acknowledge = policy::check_acknowledge(config, user, r).is_ok();
    let url = |action: &str| format!("/requests/{}/{action}", r.id);
    html! {
        @if decide || revoke || cancel || extend || acknowledge {
            h2 { "Actions" }
        }
        @if decide {
            form class="action" method="post" action=(url("approve")) {
                (csrf_field(signed))
                p { label for="approve-reason" { "Justification for approving" }
                    textarea id="approve-reason" name="reason" required rows="2" {} }
                p { label for="approve-duration" { "Shorten the window to (optional, e.g. 30m)" }
                    input id="approve-duration" name="duration" type="text"; }
                button type="submit" name="do" value="approve" { "Approve" }
            }
            form class="action" method="post" action=(url("deny")) {
                (csrf_field(signed))
                p { label for="deny-reason" { "Justification for denying" }
                    textarea id="deny-reason" name="reason" required rows="2" {} }
                button type="submit" class="danger" { "Deny" }
            }
        }
        @if acknowledge {
            (simple_form(signed, &url("acknowledge"), "acknowledge", "Review note", "Acknowledge break-glass access", false))
        }
        @if revoke {
            (simple_form(signed, &url("revoke"), "revoke", "Why revoke", "Revoke", true))
        }
        @if cancel {
            (simple_form(signed, &url("cancel"), "cancel", "Why cancel (optional)", "Cancel request", true))
        }
        @if extend {
            form class="action" method="post" action=(url("extend")) {
                (csrf_field(signed))
                p { label for="extend-duration" { "Extend by" }
                    input id="extend-duration" name="duration" type="text" required value="30m"; }
                p { label for="extend-reason" { "Why more time" }
                    textarea id="extend-reason" name="reason" required rows="2" {} }
                button type="submit" { "Ask for an extension" }
            }
        }
    }
}

fn simple_form(
    signed: &Signed,
    url: &str,
    id: &str,
    label: &str,
    button: &str,
    danger: bool,
) -> Markup {
    let field = format!("{id}-reason");
    html! {
        form class="action" method="post" action=(url) {
            (csrf_field(signed))
            p { label for=(field) { (label) }
                textarea id=(field) name="reason" rows="2" required[id != "cancel"] {} }
            button type="submit" class=[danger.then_some("danger")] { (button) }
        }
    }
}

fn sessions_list(
    config: &crate::config::Config,
    signed: &Signed,
    r: &Request,
    sessions: &[SessionInfo],
    incomplete: Option<&str>,
) -> Markup {
    // Others' sessions: admins and the database's approvers; their own: the engineer.
    let may_end_others =
        crate::policy::sessions::check_kill_role(config, &signed.user, &r.database).is_ok();
    let may_end = |s: &SessionInfo| may_end_others || s.engineer == signed.user.name;
    html! {
        h2 { "Live sessions" }
        @if let Some(why) = incomplete { (super::live_sessions::incomplete(why)) }
        @if sessions.is_empty() {
            p { "No session is connected now." }
        } @else {
            ul class="sessions" {
                @for s in sessions {
                    li {
                        span { code { (s.session_id) } " from " (s.client_addr) " since " (time(s.since)) ", " (s.statements) " statements" }
                        @if may_end(s) { form class="inline" method="post" action=(format!("/sessions/{}/end", s.session_id)) {
                            (csrf_field(signed))
                            input type="hidden" name="request" value=(r.id);
                            label for=(format!("end-{}", s.session_id)) { "Reason" }
                            input id=(format!("end-{}", s.session_id)) name="reason" type="text" required;
                            button type="submit" class="danger" { "End session" }
                        } }
                    }
                }
            }
        }
    }
}

/// Where the live list resumes in this node's trail: after the newest listed record, or,
/// when the list is the fleet's (`this_node` is set), after the newest of this node's own.
/// Another node's `seq` counts in its own trail: resuming after it skipped this node's
/// records up to that number. With none of this node's listed, it resumes from the start
/// of the request (this node's older records may come again; none is lost).
fn stream_after(records: &[serde_json::Value], this_node: Option<&str>) -> u64 {
    let seq = |r: &serde_json::Value| r.get("seq").and_then(|s| s.as_u64());
    match this_node {
        None => records.first().and_then(seq).unwrap_or(0),
        Some(node) => records
            .iter()
            .filter(|r| r.get("node").and_then(|n| n.as_str()) == Some(node))
            .filter_map(seq)
            .max()
            .unwrap_or(0),
    }
}

fn statement_list(r: &Request, records: &[serde_json::Value], live: bool, after: u64) -> Markup {
    html! {
        h2 id="statements-heading" { "Statements and outcomes" }
        p {
            a href=(format!("/requests/{}", r.id)) { "Refresh" }
            @if live { " · " span id="live-state" { "The list updates by itself while JavaScript is on." } }
        }
        ol id="statements" class="records" reversed aria-labelledby="statements-heading"
            data-stream=[live.then(|| format!("/requests/{}/stream?after_seq={after}", r.id))] {
            @for record in records { li { (record_line(record)) } }
        }
        @if live { script src="/assets/live.js" {} }
    }
}

/// One audit record as a line: time, type, what, and how it ended.
pub(crate) fn record_line(record: &serde_json::Value) -> Markup {
    let field = |k: &str| match record.get(k) {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => shown(s),
        Some(other) => other.to_string(),
    };
    html! {
        span class="t" { (field("time")) } " "
        span class="k" { (field("type")) } " "
        @for k in ["event", "kind", "status", "sqlstate", "rows"] {
            @let v = field(k);
            @if !v.is_empty() { span class=(k) { (v) } " " }
        }
        code class="sql" { (shown(&crate::audit::shown_statement(record))) }
    }
}

/// The newest records of request `id`, newest first.
async fn latest_records(state: &WebState, id: &str) -> Result<Vec<serde_json::Value>, WebError> {
    let query = AuditQuery {
        request: Some(id.to_owned()),
        ..AuditQuery::default()
    };
    let (records, _) = super::audit::newest(state, query, LATEST).await?;
    Ok(records.into_iter().rev().collect())
}

/// `/requests/{id}/stream`: the request's records as server-sent events, for the page's
/// script; the API's stream behind `/v1/requests/{id}/audit/stream`, same checks.
pub(crate) async fn stream(
    State(state): State<WebState>,
    signed: Signed,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, WebError> {
    let request = state.api.lockbox.get(&signed.user, &RequestId(id)).await?;
    let guard = state.sessions.open_stream(&signed.id).ok_or_else(|| {
        WebError::TooMany(format!(
            "this sign-in already follows {} live streams: close a tab and try again",
            super::session::MAX_STREAMS
        ))
    })?;
    let sse = match crate::api::request_live(
        state.api.clone(),
        &signed.user,
        request.id.0,
        &headers,
        raw,
    ) {
        Ok(sse) => sse.into_response(),
        Err(e) => return Ok(e.into_response()),
    };
    // The stream lasts only as long as the sign-in that opened it and its right to read
    // the trail: signing out, the session's expiry, a rotated key or a reload taking the
    // role away ends it too (the browser's EventSource then
    // reconnects, and is refused like any page).
    let (parts, body) = sse.into_parts();
    let until = Box::pin(super::session::ended(
        state.clone(),
        signed.id.clone(),
        |user| policy::check_audit_read(user).is_ok(),
    ));
    // The guard lives in the stream, so the place is freed when the stream is dropped.
    let body = Body::from_stream(body.into_data_stream().take_until(until).map(move |frame| {
        let _held = &guard;
        frame
    }));
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approver_sees_the_grants_limits() {
        let config = crate::policy::test_support::two_databases();
        let mut r = crate::web::requests::tests::sample();
        let none = details(&config, &r).into_string();
        assert!(none.contains("<dt>Limits</dt><dd>none</dd>"), "{none}");
        r.max_rows = Some(100);
        r.max_sessions = Some(2);
        let both = details(&config, &r).into_string();
        assert!(
            both.contains("<dt>Limits</dt><dd>max rows 100, max sessions 2</dd>"),
            "{both}"
        );
    }
}
