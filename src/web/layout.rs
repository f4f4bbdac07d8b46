//! The frame every page shares (header navigation, the signed-in user, a flash message)
//! and the small formatting helpers the pages use. maud escapes every `(value)` it
//! renders, so text a requester typed (a reason holding `<script>`) stays text.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::session::{Flash, Signed};

/// `body` as an HTML response.
pub(crate) fn html_response(body: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body.into_string(),
    )
        .into_response()
}

/// A page for the signed-in user: the header's navigation, one `<h1>` (`title`), the
/// flash message if one is waiting, then `content`.
pub(crate) fn page(signed: &Signed, title: &str, content: Markup) -> Response {
    // Links to pages the user may not open are left out (the pages still answer 403).
    let audit = crate::policy::check_audit_read(&signed.user).is_ok();
    let exports = crate::policy::check_export_admin(&signed.user).is_ok();
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header class="top" {
                    a class="brand" href="/requests" { "lockbox" }
                    nav aria-label="Main" {
                        ul {
                            li { a href="/requests" { "Requests" } }
                            li { a href="/sessions" { "Sessions" } }
                            @if audit { li { a href="/audit" { "Audit" } } }
                            li { a href="/policy" { "Policy" } }
                            @if exports { li { a href="/exports" { "Exports" } } }
                            li { a href="/health" { "Health" } }
                        }
                    }
                    form class="signout" method="post" action="/logout" {
                        (csrf_field(signed))
                        button type="submit" { "Sign out " span class="who" { (signed.user.name) } }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    @if let Some(flash) = &signed.flash {
                        (flash_box(flash))
                    }
                    (content)
                }
            }
        }
    };
    html_response(body)
}

/// The `<head>` of every page: the one stylesheet, nothing from elsewhere.
pub(crate) fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · lockbox" }
            link rel="stylesheet" href="/assets/app.css";
        }
    }
}

fn flash_box(flash: &Flash) -> Markup {
    html! {
        @if flash.error {
            p class="flash error" role="alert" { (flash.text) }
        } @else {
            p class="flash" role="status" { (flash.text) }
        }
    }
}

/// The hidden field every form carries.
pub(crate) fn csrf_field(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.csrf); }
}

/// A time as people read it, in UTC.
/// Text someone else wrote (a ticket, a reason, a statement), with what would hide or
/// reorder it in the page (controls, bidi overrides, zero-width characters) shown as
/// escapes, as the CLI shows it (`crate::visible`); maud then escapes it for HTML.
pub(crate) fn shown(text: &str) -> String {
    crate::visible::escape(text, true).into_owned()
}

pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub(crate) fn time_or(t: Option<DateTime<Utc>>, none: &str) -> String {
    t.map_or_else(|| none.to_owned(), time)
}

/// A length of time (`1h 30m`).
pub(crate) fn span(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// A table inside a wrapper that scrolls sideways on a narrow screen.
pub(crate) fn table(caption: &str, head: &[&str], rows: Markup) -> Markup {
    html! {
        div class="table-wrap" tabindex="0" role="region" aria-label=(caption) {
            table {
                caption { (caption) }
                thead { tr { @for h in head { th scope="col" { (h) } } } }
                tbody { (rows) }
            }
        }
    }
}
