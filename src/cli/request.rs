//! `lockbox request …`, `lockbox policy …` and `lockbox admin …`: the request workflow
//! and its administration, through the API.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

use super::display::{self, clean, Column};
use super::{parse_access, parse_status, Cli};
use crate::policy::{AccessLevel, NewRequest, ReasonCategory, Request, RequestStatus};

#[derive(Subcommand)]
pub enum RequestCommand {
    /// File a new access request; prints its id.
    Create {
        #[arg(long)]
        database: String,
        /// Support ticket id, or `provider-initiated`.
        #[arg(long)]
        ticket: String,
        #[arg(long)]
        reason: String,
        #[arg(long, value_parser = parse_access)]
        access: AccessLevel,
        /// How long access should last once approved (`30s`, `15m`, `8h`).
        #[arg(long)]
        duration: Option<String>,
        /// Per-grant limit: longest any statement may run (`30s`).
        #[arg(long)]
        statement_timeout: Option<String>,
        /// Per-grant limit: most rows any statement may return.
        #[arg(long)]
        max_rows: Option<u64>,
        /// Per-grant limit: most sessions open at once.
        #[arg(long)]
        max_sessions: Option<u32>,
        /// incident, service_request, maintenance, investigation or other.
        #[arg(long, value_parser = |s: &str| s.parse::<ReasonCategory>())]
        reason_category: Option<ReasonCategory>,
        /// Earliest start of the access window (RFC 3339); at approval by default.
        #[arg(long)]
        starts_at: Option<chrono::DateTime<chrono::Utc>>,
        /// Emergency access without approvals (only where the policy allows it, for its
        /// roles); short, flagged on every audit record, and reviewed afterwards.
        #[arg(long)]
        break_glass: bool,
    },
    /// List requests you may see.
    List {
        #[arg(long, value_parser = parse_status)]
        status: Option<RequestStatus>,
        /// Only break-glass grants.
        #[arg(long)]
        break_glass: bool,
        /// Only break-glass grants nobody has acknowledged yet.
        #[arg(long)]
        unacknowledged: bool,
    },
    /// Show one request, with its approvals and history.
    Show { id: String },
    Approve {
        id: String,
        #[arg(long)]
        reason: String,
        /// Grant at most this long (shortens the window asked for).
        #[arg(long)]
        duration: Option<String>,
    },
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// End an approved request now; its live sessions are dropped.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Withdraw your own request before its access begins.
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Ask for more time on an active grant; goes through the same approvals. Prints the
    /// extension request's id.
    Extend {
        id: String,
        #[arg(long)]
        duration: String,
        #[arg(long)]
        reason: String,
    },
    /// Review break-glass access after the fact.
    Acknowledge {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Which databases need customer approval, the JIT rules and break-glass.
    Show,
    /// Change which databases need customer approval (admins; audited).
    Set {
        /// `all`, `none` or `DB[,DB…]`.
        #[arg(long)]
        protect: String,
    },
}

#[derive(Subcommand)]
pub enum NotifyCommand {
    /// Recent deliveries: channel, target, event, status, attempts, last error.
    Status {
        #[arg(long)]
        request: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Re-read the server's configuration file (like SIGHUP); live sessions stay.
    Reload,
}

pub async fn run(cli: &Cli, command: &RequestCommand) -> Result<()> {
    let client = cli.client()?;
    match command {
        RequestCommand::Create {
            database,
            ticket,
            reason,
            access,
            duration,
            statement_timeout,
            max_rows,
            max_sessions,
            reason_category,
            starts_at,
            break_glass,
        } => {
            let new = NewRequest {
                database: database.clone(),
                ticket: ticket.clone(),
                reason: reason.clone(),
                access: *access,
                duration: duration.clone(),
                statement_timeout: statement_timeout.clone(),
                max_rows: *max_rows,
                max_sessions: *max_sessions,
                reason_category: *reason_category,
                starts_at: *starts_at,
                break_glass: *break_glass,
            };
            let request = client.create_request(&new).await?;
            if cli.json {
                super::display::print_json(&request)?;
            } else {
                outln!("{}", request.id);
            }
        }
        RequestCommand::List {
            status,
            break_glass,
            unacknowledged,
        } => {
            let list = client
                .list_requests_where(*status, *break_glass, *unacknowledged)
                .await?;
            if cli.json {
                super::display::print_json(&list)?;
            } else {
                print_table(&list);
            }
        }
        RequestCommand::Show { id } => print_request(cli, &client.show_request(id).await?)?,
        RequestCommand::Approve {
            id,
            reason,
            duration,
        } => print_request(
            cli,
            &client.approve_for(id, reason, duration.as_deref()).await?,
        )?,
        RequestCommand::Deny { id, reason } => print_request(cli, &client.deny(id, reason).await?)?,
        RequestCommand::Revoke { id, reason } => {
            print_request(cli, &client.revoke(id, reason).await?)?
        }
        RequestCommand::Cancel { id, reason } => {
            print_request(cli, &client.cancel(id, reason).await?)?
        }
        RequestCommand::Acknowledge { id, reason } => {
            print_request(cli, &client.acknowledge(id, reason).await?)?
        }
        RequestCommand::Extend {
            id,
            duration,
            reason,
        } => {
            let extension = client.extend(id, duration, reason).await?;
            if cli.json {
                super::display::print_json(&extension)?;
            } else {
                outln!("{}", extension.id);
            }
        }
    }
    Ok(())
}

pub async fn policy(cli: &Cli, command: &PolicyCommand) -> Result<()> {
    let client = cli.client()?;
    let view = match command {
        PolicyCommand::Show => client.policy().await?,
        PolicyCommand::Set { protect } => client.set_policy(protect).await?,
    };
    if cli.json {
        super::display::print_json(&view)?;
        return Ok(());
    }
    let list = |l: &[String]| {
        if l.is_empty() {
            "-".into()
        } else {
            clean(&l.join(", ")).into_owned()
        }
    };
    outln!("protect          {}", clean(&view.protect));
    outln!("protected        {}", list(&view.protected_databases));
    outln!("unprotected      {}", list(&view.unprotected_databases));
    outln!(
        "changed by       {}{}",
        clean(&view.changed_by),
        view.changed_at
            .map(|t| format!(" at {}", time(Some(t))))
            .unwrap_or_default()
    );
    outln!("rules            {}", list(&view.rules));
    outln!(
        "break-glass      {}",
        if view.break_glass {
            "enabled"
        } else {
            "disabled"
        }
    );
    Ok(())
}

pub async fn admin(cli: &Cli, command: &AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Reload => {
            let report = cli.client()?.reload().await?;
            if cli.json {
                super::display::print_json(&report)?;
            } else {
                outln!(
                    "reloaded: {} database(s), {} user(s), {} rule(s)",
                    report.databases,
                    report.users,
                    report.rules
                );
                for name in &report.needs_restart {
                    outln!("changed, takes effect after a restart: {name}");
                }
            }
        }
    }
    Ok(())
}

pub async fn notify(cli: &Cli, command: &NotifyCommand) -> Result<()> {
    let NotifyCommand::Status { request, limit } = command;
    let list = cli
        .client()?
        .notifications(request.as_deref(), Some(*limit))
        .await?;
    if cli.json {
        super::display::print_json(&list)?;
        return Ok(());
    }
    let count = |s: &str| list.iter().filter(|d| d.status == s).count();
    outln!(
        "{} delivered, {} pending, {} failed (of the latest {})",
        count("delivered"),
        count("pending"),
        count("failed"),
        list.len()
    );
    // Without --wide: short times, and the attempt count left out (a failure shows in
    // STATUS and LAST ERROR), so the table fits 100 columns.
    let wide = display::wide();
    let mut columns = vec![
        Column::fixed("ID"),
        Column::fixed("CHANNEL"),
        Column::flexible("TARGET"),
        Column::flexible("EVENT"),
        Column::fixed("REQUEST"),
        Column::fixed("STATUS"),
    ];
    if wide {
        columns.push(Column::fixed("ATTEMPTS"));
    }
    columns.extend([Column::fixed("WHEN"), Column::flexible("LAST ERROR")]);
    let when_time = |t| if wide { time(t) } else { short_time(t) };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            let when = match d.status.as_str() {
                "delivered" => when_time(d.delivered_at),
                "pending" => format!("next {}", when_time(Some(d.next_attempt_at))),
                _ => when_time(Some(d.created_at)),
            };
            let mut row = vec![
                d.id.to_string(),
                d.channel.clone(),
                d.target.clone(),
                d.event.clone(),
                d.request_id.clone(),
                d.status.clone(),
            ];
            if wide {
                row.push(d.attempts.to_string());
            }
            row.extend([when, d.last_error.clone().unwrap_or_else(|| "-".into())]);
            row
        })
        .collect();
    display::print_table(&columns, &rows);
    Ok(())
}

/// A time in a narrow table: month, day, hours and minutes (UTC).
fn short_time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%m-%d %H:%MZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn period(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn approvers(r: &Request) -> String {
    let names = r.approvers();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

fn print_request(cli: &Cli, r: &Request) -> Result<()> {
    if cli.json {
        super::display::print_json(r)?;
        return Ok(());
    }
    let required = format!(
        "{} internal ({}), {} customer",
        r.internal_required, r.internal_role, r.customer_required
    );
    let mut rows = vec![
        ("id", r.id.0.clone()),
        ("status", r.status.to_string()),
        ("ticket", r.ticket.clone()),
        ("database", r.database.clone()),
        ("engineer", r.engineer.clone()),
        ("mfa", r.requester_mfa.to_string()),
        ("access", r.access.as_str().to_owned()),
        ("reason", r.reason.clone()),
        ("requested at", time(Some(r.created_at))),
        ("request expires", time(Some(r.request_expires_at))),
        ("access period", period(r.duration_secs)),
        ("access starts", time(r.access_starts_at)),
        ("access expires", time(r.access_expires_at)),
        ("approvals needed", required),
        ("approvers", approvers(r)),
        ("rules", r.rules_applied.join(", ")),
    ];
    if let Some(limits) = r.limits() {
        rows.push(("limits", limits));
    }
    if let Some(asked) = r.requested_duration_secs {
        rows.push(("capped from", period(asked)));
    }
    if let Some(original) = &r.extends {
        rows.push(("extends", original.0.clone()));
    }
    if r.break_glass {
        rows.push((
            "break-glass",
            format!(
                "yes; acknowledged by {}",
                r.acknowledged_by.as_deref().unwrap_or("nobody yet")
            ),
        ));
    }
    if let Some(by) = &r.revoked_by {
        rows.push(("revoked by", by.clone()));
    }
    // Every value may hold a requester's or approver's own text: escaped.
    for (k, v) in rows {
        outln!("{k:<17} {}", clean(&v));
    }
    for a in &r.approvals {
        let verb = if a.approved { "approved" } else { "denied" };
        outln!(
            "  {} {verb} ({:?} stage) at {}: {}",
            clean(&a.by),
            a.stage,
            time(Some(a.at)),
            clean(&a.justification)
        );
    }
    for t in &r.history {
        let from = t.from.map_or("-".into(), |f| f.to_string());
        outln!(
            "  {} {from} -> {} by {}{}",
            time(Some(t.at)),
            t.to,
            clean(&t.by),
            t.reason
                .as_deref()
                .map(|r| format!(": {}", clean(r)))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// A column of a request table: its header and how it is filled from a request.
type RequestColumn = (Column, fn(&Request) -> String);

/// With `--wide`, the seeds' columns: support request id, database (environment), status,
/// requested at, request expiration, access period, access expiration, approver(s).
/// Without, what an approver decides on, in 100 columns: who asks for which access to
/// what, in which state, until when, approved by whom (`request show` has the rest).
fn print_table(list: &[Request]) {
    let columns = if display::wide() {
        wide_columns()
    } else {
        narrow_columns()
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| columns.iter().map(|(_, cell)| cell(r)).collect())
        .collect();
    let headers: Vec<Column> = columns.into_iter().map(|(column, _)| column).collect();
    display::print_table(&headers, &rows);
}

fn narrow_columns() -> Vec<RequestColumn> {
    vec![
        (Column::fixed("ID"), |r| r.id.0.clone()),
        (Column::flexible("TICKET"), |r| r.ticket.clone()),
        (Column::flexible("DATABASE"), |r| r.database.clone()),
        (Column::fixed("STATUS"), |r| r.status.to_string()),
        (Column::flexible("ENGINEER"), |r| r.engineer.clone()),
        (Column::fixed("ACCESS"), |r| r.access.as_str().to_owned()),
        (Column::fixed("EXPIRES"), |r| {
            short_time(r.access_expires_at)
        }),
        (Column::flexible("APPROVERS"), approvers),
    ]
}

fn wide_columns() -> Vec<RequestColumn> {
    vec![
        (Column::fixed("ID"), |r| r.id.0.clone()),
        (Column::flexible("SUPPORT REQUEST"), |r| r.ticket.clone()),
        (Column::flexible("DATABASE"), |r| r.database.clone()),
        (Column::fixed("STATUS"), |r| r.status.to_string()),
        (Column::flexible("ENGINEER"), |r| r.engineer.clone()),
        (Column::fixed("ACCESS"), |r| r.access.as_str().to_owned()),
        (Column::fixed("REQUESTED AT"), |r| time(Some(r.created_at))),
        (Column::fixed("REQUEST EXPIRES"), |r| {
            time(Some(r.request_expires_at))
        }),
        (Column::fixed("ACCESS PERIOD"), |r| period(r.duration_secs)),
        (Column::fixed("ACCESS EXPIRES"), |r| {
            time(r.access_expires_at)
        }),
        (Column::flexible("APPROVERS"), approvers),
    ]
}
