//! `/policy`, `/exports` and `/health`: the protection policy (changed by admins, through
//! `Lockbox::set_protection` as `lockbox policy set` does, so the change is audited the
//! same way), scheduled exports (the `Exports` service the API uses), and the health the
//! API reports, with the notification backlog.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::error::WebError;
use super::layout::{csrf_field, page, span, table, time, time_or};
use super::session::Signed;
use super::WebState;
use crate::exports::{ExportsError, NewExport};
use crate::policy;

impl From<ExportsError> for WebError {
    fn from(e: ExportsError) -> Self {
        match e {
            ExportsError::NotFound(_) => WebError::NotFound(e.to_string()),
            ExportsError::Service(e) => e.into(),
        }
    }
}

pub(crate) async fn policy(
    State(state): State<WebState>,
    signed: Signed,
) -> Result<Response, WebError> {
    let view = state.api.lockbox.policy_view().await?;
    let databases: Vec<&String> = view
        .protected_databases
        .iter()
        .chain(&view.unprotected_databases)
        .collect();
    let mode = match view.protect.as_str() {
        "all" => "all",
        "none" => "none",
        _ => "some",
    };
    let may_change = policy::check_policy_change(&signed.user).is_ok();
    let content = html! {
        p { "Databases that need customer approval: " strong { (mode) } }
        (table("Protection by database", &["Database", "Customer approval"], html! {
            @for d in &databases {
                tr { td { (d) } td { @if view.protected_databases.contains(d) { "required" } @else { "not required" } } }
            }
        }))
        p { "Last changed by " (view.changed_by) " " (time_or(view.changed_at, "")) "." }
        p { "Break-glass access: " @if view.break_glass { "enabled" } @else { "disabled" } "." }
        @if !view.rules.is_empty() { p { "Rules: " (view.rules.join(", ")) } }
        @if may_change {
            h2 { "Change the policy" }
            form method="post" action="/policy" {
                (csrf_field(&signed))
                fieldset {
                    legend { "Protect" }
                    @for (value, label) in [("all", "All databases"), ("some", "Only the databases ticked below"), ("none", "No database")] {
                        p { input type="radio" id=(format!("protect-{value}")) name="protect" value=(value) checked[mode == value];
                            " " label for=(format!("protect-{value}")) { (label) } }
                    }
                }
                fieldset {
                    legend { "Protected databases (with “only the ticked”)" }
                    @for d in &databases {
                        p { input type="checkbox" id=(format!("db-{d}")) name="database" value=(d) checked[view.protected_databases.contains(d)];
                            " " label for=(format!("db-{d}")) { (d) } }
                    }
                }
                button type="submit" { "Save policy" }
            }
        }
    };
    Ok(page(&signed, "Lockbox policy", content))
}

/// `protect` and every ticked `database`, as the form sends them.
pub(crate) async fn set_policy(
    State(state): State<WebState>,
    signed: Signed,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    signed.check_csrf(field("csrf"))?;
    let ticked: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| k == "database")
        .map(|(_, v)| v.as_str())
        .collect();
    let protect = match field("protect") {
        Some("some") => ticked.join(","),
        Some(mode) => mode.to_owned(),
        None => return Err(WebError::Invalid("choose what to protect".into())),
    };
    match state
        .api
        .lockbox
        .set_protection(&signed.user, &protect)
        .await
    {
        Ok(view) => {
            state
                .sessions
                .flash(
                    &signed.id,
                    false,
                    format!("Policy saved: protect {}.", view.protect),
                )
                .await
        }
        Err(crate::service::ServiceError::Policy(e @ policy::PolicyError::Invalid(_))) => {
            state.sessions.flash(&signed.id, true, e.to_string()).await
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Redirect::to("/policy").into_response())
}

pub(crate) async fn exports(
    State(state): State<WebState>,
    signed: Signed,
) -> Result<Response, WebError> {
    let exports = &state.api.exports;
    let list = exports.list(&signed.user).await?;
    let mut histories = Vec::with_capacity(list.len());
    for e in &list {
        let mut runs = exports.history(&signed.user, &e.schedule.name).await?;
        runs.truncate(10);
        histories.push(runs);
    }
    let content = html! {
        @if list.is_empty() { p { "No scheduled export yet." } }
        @for (e, runs) in list.iter().zip(&histories) {
            section class="export" {
                h2 { (e.schedule.name) }
                dl class="facts" {
                    dt { "Database" } dd { (e.schedule.database.as_deref().unwrap_or("all")) }
                    dt { "Format" } dd { (e.schedule.format.as_str()) }
                    dt { "Folder" } dd { code { (e.schedule.target) } }
                    dt { "Every" } dd { (span(e.schedule.every_secs)) }
                    dt { "Status" } dd { (e.last_status.map_or("never run".to_owned(), |s| format!("{s:?}").to_lowercase())) }
                    dt { "Last run" } dd { (time_or(e.last_run_at, "never")) }
                    @if let Some(err) = &e.last_error { dt { "Last error" } dd { (err) } }
                    dt { "Watermark" } dd { "seq " (e.schedule.watermark) }
                    dt { "Next run" } dd { (time(e.next_run_at)) }
                }
                form method="post" action=(format!("/exports/{}/run", e.schedule.name)) {
                    (csrf_field(&signed))
                    button type="submit" { "Run now" }
                }
                (history_table(runs))
            }
        }
        h2 { "New scheduled export" }
        (create_form(&signed))
    };
    Ok(page(&signed, "Data exports", content))
}

fn history_table(runs: &[crate::store::ExportRun]) -> Markup {
    table(
        "History",
        &[
            "Started",
            "By",
            "Status",
            "Records",
            "Through seq",
            "Folder or error",
        ],
        html! {
            @for r in runs {
                tr {
                    td { (time(r.started_at)) }
                    td { (r.trigger) }
                    td { (format!("{:?}", r.status).to_lowercase()) }
                    td { (r.records) }
                    td { (r.through_seq) }
                    td { (r.path.as_deref().or(r.error.as_deref()).unwrap_or("")) }
                }
            }
        },
    )
}

fn create_form(signed: &Signed) -> Markup {
    html! {
        form method="post" action="/exports" {
            (csrf_field(signed))
            p { label for="x-name" { "Name" } input id="x-name" name="name" type="text" required; }
            p { label for="x-db" { "Database (empty: all)" } input id="x-db" name="database" type="text"; }
            p { label for="x-format" { "Format" }
                select id="x-format" name="format" {
                    option value="jsonl" { "JSON Lines" }
                    option value="csv" { "CSV" }
                    option value="parquet" { "Parquet" }
                } }
            p { label for="x-to" { "Folder on the server" } input id="x-to" name="to" type="text" required; }
            p { label for="x-every" { "Every" } input id="x-every" name="every" type="text" value="1d" required; }
            button type="submit" { "Create" }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ExportForm {
    csrf: Option<String>,
    name: String,
    #[serde(default)]
    database: String,
    format: String,
    to: String,
    every: String,
}

pub(crate) async fn create_export(
    State(state): State<WebState>,
    signed: Signed,
    Form(form): Form<ExportForm>,
) -> Result<Response, WebError> {
    signed.check_csrf(form.csrf.as_deref())?;
    let format = serde_json::from_value(serde_json::Value::String(form.format.clone()))
        .map_err(|_| WebError::Invalid(format!("unknown format `{}`", form.format)))?;
    let new = NewExport {
        name: form.name.trim().to_owned(),
        database: Some(form.database.trim().to_owned()).filter(|d| !d.is_empty()),
        format,
        to: form.to.trim().to_owned(),
        every: form.every.trim().to_owned(),
    };
    match state.api.exports.create(&signed.user, new).await {
        Ok(e) => {
            state
                .sessions
                .flash(
                    &signed.id,
                    false,
                    format!("Export {} created.", e.schedule.name),
                )
                .await
        }
        Err(ExportsError::Service(crate::service::ServiceError::Policy(
            e @ (policy::PolicyError::Invalid(_) | policy::PolicyError::Conflict(_)),
        ))) => state.sessions.flash(&signed.id, true, e.to_string()).await,
        Err(e) => return Err(e.into()),
    }
    Ok(Redirect::to("/exports").into_response())
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    csrf: Option<String>,
}

pub(crate) async fn run_export(
    State(state): State<WebState>,
    signed: Signed,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, WebError> {
    signed.check_csrf(form.csrf.as_deref())?;
    let run = state.api.exports.run_now(&signed.user, &name).await?;
    let status = format!("{:?}", run.status).to_lowercase();
    state
        .sessions
        .flash(
            &signed.id,
            run.error.is_some(),
            match &run.error {
                Some(e) => format!("Export {name} failed: {e}"),
                None => format!("Export {name} ran: {status}, {} records.", run.records),
            },
        )
        .await;
    Ok(Redirect::to("/exports").into_response())
}

pub(crate) async fn health(
    State(state): State<WebState>,
    signed: Signed,
) -> Result<Response, WebError> {
    let (_, health) = crate::api::health_report(&state.api, Some(&signed.user)).await;
    let backlog = if policy::check_audit_read(&signed.user).is_ok() {
        crate::api::pending_notifications(&state.api.lockbox.store).await
    } else {
        None
    };
    let sink = health
        .audit_sink
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok());
    let content = html! {
        dl class="facts" {
            dt { "Overall" } dd { (health.status) }
            dt { "Audit writer" } dd { (health.audit) }
            @if let Some(n) = health.live_sessions { dt { "Live sessions" } dd { (n) } }
            @if let Some(n) = backlog { dt { "Notifications waiting" } dd { (n) } }
            dt { "PostgreSQL audit sink" } dd {
                @match &sink {
                    None => "not configured",
                    Some(serde_json::Value::Object(fields)) => {
                        @for (k, v) in fields { (k) ": " (v) "; " }
                    }
                    Some(other) => (other),
                }
            }
        }
        @if let Some(databases) = &health.databases {
            (table("Databases", &["Database", "Status"], html! {
                @for d in databases { tr { td { (d.name) } td { (d.status) } } }
            }))
        }
    };
    Ok(page(&signed, "Health", content))
}
