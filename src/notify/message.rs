//! What a notification says: who gets it, the email text, and the webhook payload.

use serde::Serialize;

use crate::config::{Config, Role, User};
use crate::policy::{Request, Stage};

/// Why people are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A request waits for the recipients' decision.
    AwaitingApproval,
    Approved,
    Denied,
    Expired,
    Revoked,
    BreakGlass,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::AwaitingApproval => "awaiting_approval",
            Event::Approved => "approved",
            Event::Denied => "denied",
            Event::Expired => "expired",
            Event::Revoked => "revoked",
            Event::BreakGlass => "break_glass",
        }
    }
}

/// One notification, before it is fanned out to channels.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub event: Event,
    pub request_id: String,
    pub database: String,
    pub engineer: String,
    pub ticket: String,
    pub access: String,
    pub reason: String,
    pub status: String,
    pub access_expires_at: Option<String>,
    /// User names told, and the addresses of those with one.
    pub recipients: Vec<String>,
    #[serde(skip)]
    pub emails: Vec<String>,
    pub subject: String,
    pub text: String,
    /// How to act on it, for the awaiting approvers.
    pub actions: Vec<String>,
}

/// Who is told of `event` on `request`: the designated approvers of the waiting stage;
/// for outcomes the requester and everyone who decided or could decide; for break-glass
/// every approver.
pub fn recipients<'a>(config: &'a Config, request: &Request, event: Event) -> Vec<&'a User> {
    let designated = |stage: Stage| -> Vec<&User> {
        config
            .users
            .iter()
            .filter(|u| u.name != request.engineer)
            .filter(|u| match stage {
                Stage::Internal => u.has(request.internal_role.clone()),
                Stage::Customer => u.has(Role::Approver) && approves_database(config, u, request),
            })
            .collect()
    };
    let mut out: Vec<&User> = match event {
        Event::AwaitingApproval => match request.stage(chrono::Utc::now()) {
            Some(stage) => designated(stage),
            None => Vec::new(),
        },
        Event::BreakGlass => config
            .users
            .iter()
            .filter(|u| u.has(Role::Approver))
            .collect(),
        _ => {
            let mut list = designated(Stage::Customer);
            list.extend(
                config
                    .users
                    .iter()
                    .filter(|u| request.approvals.iter().any(|a| a.by == u.name)),
            );
            list
        }
    };
    if event != Event::AwaitingApproval {
        out.extend(config.users.iter().filter(|u| u.name == request.engineer));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

fn approves_database(config: &Config, user: &User, request: &Request) -> bool {
    let named = config
        .databases
        .get(&request.database)
        .map(|d| d.approvers.as_slice())
        .unwrap_or_default();
    named.is_empty()
        || named
            .iter()
            .any(|n| *n == user.name || user.groups.contains(n))
}

pub fn compose(config: &Config, request: &Request, event: Event) -> Message {
    let people = recipients(config, request, event);
    let base = &config.notifications.public_url;
    let id = &request.id;
    let headline = match event {
        Event::AwaitingApproval => format!("Request {id} awaits your approval"),
        Event::Approved => format!("Request {id} was approved"),
        Event::Denied => format!("Request {id} was denied"),
        Event::Expired => format!("Request {id} expired unanswered"),
        Event::Revoked => format!("Request {id} was revoked"),
        Event::BreakGlass => format!("BREAK-GLASS access granted: {id}"),
    };
    let subject = format!(
        "[lockbox] {headline} ({}, {}, {})",
        request.database,
        request.access.as_str(),
        request.ticket
    );
    let actions = match event {
        Event::AwaitingApproval => vec![
            format!("lockbox request approve {id} --reason \"…\""),
            format!("lockbox request deny {id} --reason \"…\""),
            format!("POST {base}/v1/requests/{id}/approve {{\"reason\": \"…\"}}"),
            format!("POST {base}/v1/requests/{id}/deny {{\"reason\": \"…\"}}"),
        ],
        Event::BreakGlass => vec![
            format!("lockbox request acknowledge {id} --reason \"…\""),
            format!("lockbox request revoke {id} --reason \"…\""),
            format!("GET {base}/v1/requests/{id}/audit/stream (watch the session live)"),
        ],
        _ => vec![format!("lockbox request show {id}")],
    };
    let expires = request.access_expires_at.map(|t| t.to_rfc3339());
    let mut text = format!(
        "{headline}.\n\nEngineer:  {}\nDatabase:  {}\nAccess:    {}\nTicket:    {}\nReason:    {}\nStatus:    {}\nDuration:  {}\n",
        request.engineer,
        request.database,
        request.access.as_str(),
        request.ticket,
        request.reason,
        request.effective_status(chrono::Utc::now()),
        humantime::format_duration(std::time::Duration::from_secs(request.duration_secs)),
    );
    if let Some(end) = &expires {
        text.push_str(&format!("Access until: {end}\n"));
    }
    text.push_str("\nTo act on it:\n");
    for a in &actions {
        text.push_str(&format!("  {a}\n"));
    }
    Message {
        event,
        request_id: id.0.clone(),
        database: request.database.clone(),
        engineer: request.engineer.clone(),
        ticket: request.ticket.clone(),
        access: request.access.as_str().to_owned(),
        reason: request.reason.clone(),
        status: request.effective_status(chrono::Utc::now()).to_string(),
        access_expires_at: expires,
        recipients: people.iter().map(|u| u.name.clone()).collect(),
        emails: people.iter().filter_map(|u| u.email.clone()).collect(),
        subject,
        text,
        actions,
    }
}
