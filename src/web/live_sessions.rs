//! `/sessions`: the live sessions the signed-in user may see, on every node sharing the
//! state store (`Lockbox::list_fleet_sessions`), each with a form to end it where the user
//! may: what `lockbox session list` and `session kill` do from the command line.

use axum::extract::State;
use axum::response::Response;
use maud::{html, Markup};

use super::error::WebError;
use super::layout::{csrf_field, page, table, time};
use super::session::Signed;
use super::WebState;
use crate::config::Config;
use crate::proxy::SessionInfo;

pub(crate) async fn list(
    State(state): State<WebState>,
    signed: Signed,
) -> Result<Response, WebError> {
    let lockbox = &state.api.lockbox;
    let (sessions, partial) = lockbox
        .list_fleet_sessions(&signed.user, &state.api.registry)
        .await;
    let config = lockbox.config();
    let content = html! {
        @if let Some(why) = &partial { (incomplete(why)) }
        @if sessions.is_empty() {
            p { "No session is connected now." }
        } @else {
            (table("Live sessions", &["Session", "Engineer", "Request", "Database", "Node",
                "Since", "Statements", "Client", "End"],
                html! { @for s in &sessions { (row(&config, &signed, s)) } }))
        }
        p { a href="/sessions" { "Refresh" } }
    };
    Ok(page(&signed, "Sessions", content))
}

/// Said above a list of sessions that may be missing some, with why.
pub(crate) fn incomplete(why: &str) -> Markup {
    html! {
        p class="flash error" role="alert" {
            "This list may be incomplete: " (why) "."
        }
    }
}

fn row(config: &Config, signed: &Signed, s: &SessionInfo) -> Markup {
    // Others' sessions: admins and the database's approvers; their own: the engineer.
    let may_end = s.engineer == signed.user.name
        || crate::policy::sessions::check_kill_role(config, &signed.user, &s.database).is_ok();
    let field = format!("end-{}", s.session_id);
    html! {
        tr {
            td { code { (s.session_id) } }
            td { (s.engineer) }
            td { a href=(format!("/requests/{}", s.request_id)) { (s.request_id) } }
            td { (s.database) }
            td { (s.node) }
            td { (time(s.since)) }
            td { (s.statements) }
            td { (s.client_addr) }
            td {
                @if may_end {
                    form class="inline" method="post" action=(format!("/sessions/{}/end", s.session_id)) {
                        (csrf_field(signed))
                        input type="hidden" name="back" value="sessions";
                        label for=(field) { "Reason" }
                        input id=(field) name="reason" type="text" required;
                        button type="submit" class="danger" { "End session" }
                    }
                }
            }
        }
    }
}
