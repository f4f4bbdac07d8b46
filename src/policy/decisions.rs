//! Who may do what to a request, and what each decision does to it. Plain functions of
//! their inputs: the service loads, calls these, and stores.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::request::{Approval, NewRequest, Request, RequestStatus, Stage};
use super::rules::{self, Ask, Plan, Protection};
use super::{forbidden, require_role, PolicyError};
use crate::config::workflow::BreakGlass;
use crate::config::{Config, Role, User, MOST_SESSIONS_PER_GRANT};

/// A new request that passed validation and the rules.
#[derive(Debug)]
pub struct CheckedRequest {
    pub plan: Plan,
    pub statement_timeout: Option<Duration>,
}

/// The ticket of work the provider starts on its own.
pub const PROVIDER_INITIATED: &str = "provider-initiated";

fn parse_duration(what: &str, text: &str) -> Result<Duration, PolicyError> {
    humantime::parse_duration(text.trim())
        .map_err(|e| PolicyError::Invalid(format!("{what} `{text}`: {e}")))
}

/// Validates `new` and runs the JIT rules on it. A rule's denial is `Forbidden`, with the
/// rule's reason for the requester.
/// How far ahead a request may ask its window to start.
pub const MAX_START_AHEAD: Duration = Duration::from_secs(30 * 24 * 3600);

pub fn check_new_request(
    config: &Config,
    protection: &Protection,
    caller: &User,
    new: &NewRequest,
    already: Duration,
    now: DateTime<Utc>,
) -> Result<CheckedRequest, PolicyError> {
    require_role(caller, Role::Engineer, "file access requests")?;
    if !config.databases.contains_key(&new.database) {
        return Err(PolicyError::Invalid(format!(
            "unknown database `{}`",
            new.database
        )));
    }
    if new.ticket.trim().is_empty() {
        return Err(PolicyError::Invalid(format!(
            "a support ticket is required (or `{PROVIDER_INITIATED}`)"
        )));
    }
    if new.reason.trim().is_empty() {
        return Err(PolicyError::Invalid("a reason is required".into()));
    }
    super::check_shown_text("the ticket", &new.ticket, super::MAX_TICKET_CHARS, false)?;
    super::check_shown_text("the reason", &new.reason, super::MAX_REASON_CHARS, true)?;
    let duration = match &new.duration {
        None => config.default_access,
        Some(text) => parse_duration("duration", text)?,
    };
    if duration < Duration::from_secs(1) {
        return Err(PolicyError::Invalid("duration must be at least 1s".into()));
    }
    // An extension is judged with the time its grant already holds: the maximum access and
    // the rules (a rule for long requests) see the whole window, so asking for a short grant
    // and extending it in steps gets no more than asking for all of it at once.
    let whole = already.saturating_add(duration);
    check_max_access(config, duration, already)?;
    let statement_timeout = match &new.statement_timeout {
        None => None,
        Some(text) => {
            let d = parse_duration("statement timeout", text)?;
            if d < Duration::from_millis(1) {
                return Err(PolicyError::Invalid(
                    "statement timeout must be at least 1ms".into(),
                ));
            }
            // PostgreSQL's own bound (an int of milliseconds); past it the value wrapped
            // round to 0, which PostgreSQL reads as no timeout at all.
            if d > MAX_STATEMENT_TIMEOUT {
                return Err(PolicyError::Invalid(format!(
                    "statement timeout must be at most {}ms (PostgreSQL's largest)",
                    MAX_STATEMENT_TIMEOUT.as_millis()
                )));
            }
            Some(d)
        }
    };
    if let Some(start) = new.starts_at {
        let latest = chrono::Duration::from_std(MAX_START_AHEAD)
            .ok()
            .and_then(|d| now.checked_add_signed(d));
        if latest.is_none_or(|latest| start > latest) {
            return Err(PolicyError::Invalid(
                "starts_at may be at most 30 days ahead".into(),
            ));
        }
    }
    if new.max_rows == Some(0) {
        return Err(PolicyError::Invalid("max rows must be at least 1".into()));
    }
    check_max_sessions(config, new.max_sessions)?;
    let ask = Ask {
        database: &new.database,
        access: new.access,
        duration: whole,
        requester: caller,
    };
    let mut plan = rules::evaluate(&config.rules, &ask, protection.protects(&new.database))
        .map_err(denied_by_rule)?;
    if !already.is_zero() {
        // The rules capped the whole window; the extension is what lies past the grant's.
        if plan.duration < already.saturating_add(Duration::from_secs(1)) {
            return Err(forbidden(format!(
                "the rules ({}) allow this grant at most {} in all, and it already holds {}",
                plan.applied.join(", "),
                humantime::format_duration(plan.duration),
                humantime::format_duration(already)
            )));
        }
        plan.duration -= already;
        plan.capped_from = plan.capped_from.map(|_| duration);
    }
    Ok(CheckedRequest {
        plan,
        statement_timeout,
    })
}

/// A rule's denial, as the requester is told it.
fn denied_by_rule(denial: rules::RuleDenial) -> PolicyError {
    forbidden(format!(
        "denied by rule `{}`: {}",
        denial.rule, denial.reason
    ))
}

/// PostgreSQL's largest `statement_timeout`: `INT_MAX` milliseconds.
const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// `duration` on top of the `already` a grant holds stays within `max_access`.
fn check_max_access(
    config: &Config,
    duration: Duration,
    already: Duration,
) -> Result<(), PolicyError> {
    let whole = already.saturating_add(duration);
    if whole <= config.max_access {
        return Ok(());
    }
    let max = humantime::format_duration(config.max_access);
    Err(PolicyError::Invalid(if already.is_zero() {
        format!(
            "duration {} is longer than the maximum access of {max}",
            humantime::format_duration(duration)
        )
    } else {
        format!(
            "with {} more the grant would run {} in all ({} so far), longer than the maximum \
             access of {max}",
            humantime::format_duration(duration),
            humantime::format_duration(whole),
            humantime::format_duration(already)
        )
    }))
}

/// The time a grant holds when an extension is filed or takes effect: from its access's
/// start to its end, or to now where the end has passed (an extension counts from the
/// later of the two, see `apply_extension`).
pub fn held_by_grant(grant: &Request, now: DateTime<Utc>) -> Duration {
    match (grant.access_starts_at, grant.access_expires_at) {
        (Some(start), Some(end)) => {
            Duration::from_secs(u64::try_from((end.max(now) - start).num_seconds()).unwrap_or(0))
        }
        _ => Duration::from_secs(grant.duration_secs),
    }
}

/// Whether `extension`, as it was filed and approved, still fits its grant now that it is
/// about to take effect: other extensions approved meanwhile count towards the maximum
/// access and the rules too, and an extension whose whole window the rules now judge
/// otherwise (more approvals, a cap) is sent back to be filed again.
pub fn check_extension_fits(
    config: &Config,
    protection: &Protection,
    grant: &Request,
    extension: &Request,
    now: DateTime<Utc>,
) -> Result<(), PolicyError> {
    let already = held_by_grant(grant, now);
    let duration = Duration::from_secs(extension.duration_secs);
    check_max_access(config, duration, already)?;
    let engineer = config
        .users
        .iter()
        .find(|u| u.name == extension.engineer && u.has(Role::Engineer))
        .ok_or_else(|| forbidden(format!("{} is no longer an engineer", extension.engineer)))?;
    let ask = Ask {
        database: &extension.database,
        access: extension.access,
        duration: already.saturating_add(duration),
        requester: engineer,
    };
    let plan = rules::evaluate(
        &config.rules,
        &ask,
        protection.protects(&extension.database),
    )
    .map_err(denied_by_rule)?;
    let more_approvals = plan.internal_approvals > extension.internal_required
        || plan.customer_approvals > extension.customer_required
        || (plan.internal_approvals > 0 && plan.internal_role != extension.internal_role);
    if more_approvals || plan.duration < ask.duration {
        return Err(PolicyError::Conflict(format!(
            "with the time its grant holds now ({}), the rules ({}) judge this extension \
             otherwise than when it was filed: file it again",
            humantime::format_duration(already),
            plan.applied.join(", ")
        )));
    }
    Ok(())
}

/// A request's own session limit: at least one, and within `[proxy]
/// max_sessions_per_grant` where that is set (the proxy holds every grant to it anyway; a
/// request asking for more is told so rather than given less than it shows).
fn check_max_sessions(config: &Config, asked: Option<u32>) -> Result<(), PolicyError> {
    match (asked, config.max_sessions_per_grant) {
        (Some(0), _) => Err(PolicyError::Invalid(
            "max sessions must be at least 1".into(),
        )),
        (Some(asked), _) if asked > MOST_SESSIONS_PER_GRANT => Err(PolicyError::Invalid(format!(
            "max sessions {asked} is more than {MOST_SESSIONS_PER_GRANT}"
        ))),
        (Some(asked), Some(most)) if asked > most => Err(PolicyError::Invalid(format!(
            "max sessions {asked} is more than this proxy allows a grant ({most}, \
             [proxy] max_sessions_per_grant)"
        ))),
        _ => Ok(()),
    }
}

/// May `caller` decide on `request` now, and in which stage? One person counts once, the
/// requester never decides, internal approvals need the rule's role, customer approvals
/// the approver role (and, where the database names its approvers, to be one of them).
pub fn check_decision(
    config: &Config,
    caller: &User,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<Stage, PolicyError> {
    if request.engineer == caller.name {
        return Err(forbidden("nobody may approve or deny their own request"));
    }
    let Some(stage) = request.stage(now) else {
        return Err(PolicyError::Conflict(format!(
            "request {} is {}, not pending",
            request.id,
            request.effective_status(now)
        )));
    };
    match stage {
        Stage::Internal => require_role(
            caller,
            request.internal_role.clone(),
            "give this request's internal approval",
        )?,
        Stage::Customer => {
            require_role(caller, Role::Approver, "approve or deny requests")?;
            check_approver_of(config, caller, &request.database)?;
        }
    }
    if request.approvals.iter().any(|a| a.by == caller.name) {
        return Err(PolicyError::Conflict(format!(
            "{} has already decided on request {}; one person counts once",
            caller.name, request.id
        )));
    }
    Ok(stage)
}

/// Is `caller`, an approver, one of the customer approvers of `database`? Where the
/// database names its approvers (by user or group) only those are; where it names none,
/// every approver is. A database no longer configured has none: nobody acts for it as its
/// approver. Deciding, revoking, reviewing break-glass access and ending sessions all ask
/// this, so an approver of one customer's databases never acts on another's.
pub fn check_approver_of(
    config: &Config,
    caller: &User,
    database: &str,
) -> Result<(), PolicyError> {
    let named = config
        .databases
        .get(database)
        .map(|d| d.approvers.as_slice())
        .ok_or_else(|| forbidden(format!("database {database} is no longer configured")))?;
    let listed = named
        .iter()
        .any(|n| *n == caller.name || caller.groups.contains(n));
    if named.is_empty() || listed {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} is not an approver of database {database}",
            caller.name
        )))
    }
}

/// An approver's decision on a request.
pub struct Decision<'a> {
    pub by: &'a str,
    pub stage: Stage,
    pub approve: bool,
    pub justification: &'a str,
    /// The approver grants a shorter window than asked for.
    pub shorten_to: Option<Duration>,
}

/// Applies `decision` to `request`: a deny ends it; an approval counts towards its stage,
/// and a complete stage moves it on (internal → customer → approved, with its window).
pub fn apply_decision(request: &mut Request, decision: &Decision<'_>, now: DateTime<Utc>) {
    let shortened = decision
        .shorten_to
        .map(|d| d.as_secs().max(1))
        .filter(|secs| *secs < request.duration_secs);
    if let Some(secs) = shortened {
        request.duration_secs = secs;
    }
    request.approvals.push(Approval {
        by: decision.by.to_owned(),
        stage: decision.stage,
        approved: decision.approve,
        justification: decision.justification.to_owned(),
        at: now,
        shortened_to_secs: shortened,
    });
    request.decided_by = Some(decision.by.to_owned());
    request.decided_at = Some(now);
    request.decision_reason = Some(decision.justification.to_owned());
    if !decision.approve {
        request.transition(
            RequestStatus::Denied,
            decision.by,
            now,
            Some(decision.justification),
        );
        return;
    }
    let next = match decision.stage {
        Stage::Internal if request.approvals_in(Stage::Internal) < request.internal_required => {
            return
        }
        Stage::Internal if request.customer_required > 0 => RequestStatus::PendingCustomer,
        Stage::Customer if request.approvals_in(Stage::Customer) < request.customer_required => {
            return
        }
        _ => RequestStatus::Approved,
    };
    if next == RequestStatus::Approved {
        open_window(request, now);
    }
    request.transition(next, decision.by, now, Some(decision.justification));
}

/// Sets the access window of an approved request: from its asked-for start (or now).
pub fn open_window(request: &mut Request, now: DateTime<Utc>) {
    let start = request.starts_at.filter(|s| *s > now).unwrap_or(now);
    request.access_starts_at = Some(start);
    // Bounded inputs (start at most 30 days ahead, duration at most max_access) cannot
    // overflow; should they ever, the window is empty rather than a panic.
    request.access_expires_at = Some(
        i64::try_from(request.duration_secs)
            .ok()
            .and_then(|secs| start.checked_add_signed(chrono::Duration::seconds(secs)))
            .unwrap_or(start),
    );
}

/// The status a new request starts in, given what the rules require.
pub fn initial_status(plan: &Plan) -> RequestStatus {
    if plan.internal_approvals > 0 {
        RequestStatus::PendingInternal
    } else {
        RequestStatus::PendingCustomer
    }
}

/// May `caller` revoke `request` now? Admins and support leads may; approvers may for the
/// databases they approve for; so may the engineer, giving up their own access. An
/// extension already in effect is part of its grant's window: revoking it alone would
/// leave that time in place, so the grant itself is revoked instead.
pub fn check_revoke(
    config: &Config,
    caller: &User,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<(), PolicyError> {
    let own = request.engineer == caller.name;
    if !(own || caller.has(Role::Admin) || caller.has(Role::SupportLead)) {
        if !caller.has(Role::Approver) {
            return Err(forbidden(format!(
                "{} may not revoke this request",
                caller.name
            )));
        }
        check_approver_of(config, caller, &request.database)?;
    }
    let status = request.effective_status(now);
    if status.is_final() {
        return Err(PolicyError::Conflict(format!(
            "request {} is {status}: nothing to revoke",
            request.id
        )));
    }
    if let Some(grant) = request.extends.as_ref().filter(|_| !status.is_pending()) {
        return Err(PolicyError::Conflict(format!(
            "extension {} is in effect: its time is part of request {grant} now; revoke {grant} to end that access",
            request.id
        )));
    }
    Ok(())
}

/// May `caller` cancel `request`? Only its requester, and only before access began (an
/// open window is ended with `revoke`).
pub fn check_cancel(
    caller: &User,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<(), PolicyError> {
    if request.engineer != caller.name {
        return Err(forbidden("only the requester may cancel a request"));
    }
    match request.effective_status(now) {
        s if s.is_pending() || s == RequestStatus::Approved => Ok(()),
        RequestStatus::Active => Err(PolicyError::Conflict(format!(
            "request {} is active: end it with `lockbox request revoke`",
            request.id
        ))),
        other => Err(PolicyError::Conflict(format!(
            "request {} is {other}: nothing to cancel",
            request.id
        ))),
    }
}

/// May `caller` ask to extend `request`? Only its requester, only while it is active,
/// and not a break-glass grant (those end and are reviewed).
pub fn check_extend(
    caller: &User,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<(), PolicyError> {
    if request.engineer != caller.name {
        return Err(forbidden("only the requester may extend a request"));
    }
    if request.break_glass {
        return Err(PolicyError::Conflict(
            "break-glass access cannot be extended; file a request".into(),
        ));
    }
    if request.extends.is_some() {
        return Err(PolicyError::Conflict(format!(
            "request {} is itself an extension: extend the grant it extends",
            request.id
        )));
    }
    match request.effective_status(now) {
        RequestStatus::Active => Ok(()),
        other => Err(PolicyError::Conflict(format!(
            "request {} is {other}: only an active grant can be extended",
            request.id
        ))),
    }
}

/// May `caller` fetch a token for `request` now? Only the engineer who filed it, only
/// while it is approved and its window has not ended.
pub fn check_token(
    caller: &User,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, PolicyError> {
    if request.engineer != caller.name {
        return Err(forbidden(
            "only the engineer who filed the request may fetch its token",
        ));
    }
    if request.extends.is_some() {
        return Err(PolicyError::Conflict(format!(
            "request {} is an extension: fetch the token of the request it extends",
            request.id
        )));
    }
    match (request.effective_status(now), request.access_expires_at) {
        (RequestStatus::Approved | RequestStatus::Active, Some(end)) => Ok(end),
        (status, _) => Err(PolicyError::Conflict(format!(
            "request {} is {status}: no token",
            request.id
        ))),
    }
}

/// May `caller` use break-glass access? Only where the policy enables it and only with
/// one of its roles; the window is capped.
pub fn check_break_glass(
    policy: Option<&BreakGlass>,
    caller: &User,
    duration: Duration,
) -> Result<Duration, PolicyError> {
    let Some(policy) = policy else {
        return Err(forbidden("break-glass access is not enabled by the policy"));
    };
    if !policy.roles.iter().any(|r| caller.has(r.clone())) {
        let roles: Vec<&str> = policy.roles.iter().map(|r| r.as_str()).collect();
        return Err(forbidden(format!(
            "break-glass access is only for the roles {}",
            roles.join(", ")
        )));
    }
    Ok(duration.min(policy.max_duration))
}

/// May `caller` acknowledge the break-glass `request` after the fact? An approver of its
/// database only.
pub fn check_acknowledge(
    config: &Config,
    caller: &User,
    request: &Request,
) -> Result<(), PolicyError> {
    require_role(caller, Role::Approver, "review break-glass access")?;
    check_approver_of(config, caller, &request.database)?;
    if !request.break_glass {
        return Err(PolicyError::Conflict(format!(
            "request {} is not break-glass access",
            request.id
        )));
    }
    if request.engineer == caller.name {
        return Err(forbidden("nobody reviews their own break-glass access"));
    }
    if request.acknowledged_by.is_some() {
        return Err(PolicyError::Conflict(format!(
            "request {} was already acknowledged",
            request.id
        )));
    }
    Ok(())
}

/// May `caller` change the lockbox policy?
pub fn check_policy_change(caller: &User) -> Result<(), PolicyError> {
    require_role(caller, Role::Admin, "change the lockbox policy")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{two_databases as config, user};

    fn request(database: &str, status: &str, extends: Option<&str>, break_glass: bool) -> Request {
        let now = Utc::now();
        serde_json::from_value(serde_json::json!({
            "id": "req-2", "engineer": "eve", "database": database, "ticket": "T-1",
            "reason": "debug", "access": "read", "duration_secs": 3600,
            "status": status, "internal_role": "support-lead", "internal_required": 0,
            "created_at": now, "request_expires_at": now + chrono::Duration::hours(12),
            "decided_by": null, "decided_at": null, "decision_reason": null,
            "access_starts_at": now, "access_expires_at": now + chrono::Duration::hours(1),
            "revoked_by": null, "revoked_at": null, "revoke_reason": null,
            "extends": extends, "break_glass": break_glass,
        }))
        .expect("request")
    }

    #[test]
    fn a_session_limit_is_at_least_one_and_within_the_proxys_ceiling() {
        let mut config = config();
        let eve = user("eve", &["engineer"]);
        let ask = |config: &Config, max_sessions: Option<u32>| {
            let new = NewRequest {
                database: "hr".into(),
                ticket: "T-1".into(),
                reason: "debug".into(),
                max_sessions,
                ..NewRequest::default()
            };
            let protection = config.protection.clone();
            check_new_request(config, &protection, &eve, &new, Duration::ZERO, Utc::now())
                .map(|_| ())
        };
        assert!(ask(&config, None).is_ok());
        assert!(ask(&config, Some(500)).is_ok(), "no ceiling by default");
        assert!(ask(&config, Some(MOST_SESSIONS_PER_GRANT)).is_ok());
        assert!(matches!(
            ask(&config, Some(MOST_SESSIONS_PER_GRANT + 1)),
            Err(PolicyError::Invalid(m)) if m.contains("is more than")
        ));
        assert!(matches!(
            ask(&config, Some(0)),
            Err(PolicyError::Invalid(m)) if m.contains("at least 1")
        ));
        config.max_sessions_per_grant = Some(4);
        assert!(ask(&config, Some(4)).is_ok());
        assert!(matches!(
            ask(&config, Some(5)),
            Err(PolicyError::Invalid(m)) if m.contains("max_sessions_per_grant")
        ));
    }

    #[test]
    fn a_statement_timeout_is_within_what_postgresql_takes() {
        let config = config();
        let eve = user("eve", &["engineer"]);
        let ask = |timeout: &str| {
            let new = NewRequest {
                database: "hr".into(),
                ticket: "T-1".into(),
                reason: "debug".into(),
                statement_timeout: Some(timeout.into()),
                ..NewRequest::default()
            };
            let protection = config.protection.clone();
            check_new_request(&config, &protection, &eve, &new, Duration::ZERO, Utc::now())
                .map(|checked| checked.statement_timeout)
        };
        assert_eq!(
            ask("2147483647ms").ok().flatten(),
            Some(MAX_STATEMENT_TIMEOUT)
        );
        // Both wrapped round to 0 (no timeout) or to a figure nobody asked for.
        for past in ["2147483648ms", "18446744073709551s 616ms", "99999999999y"] {
            assert!(
                matches!(ask(past), Err(PolicyError::Invalid(m)) if m.contains("at most")),
                "{past}"
            );
        }
    }

    #[test]
    fn a_grants_session_limit_is_the_lower_of_its_own_and_the_ceiling() {
        let mut r = request("hr", "approved", None, false);
        assert_eq!(r.session_limit(None), None);
        assert_eq!(r.session_limit(Some(8)), Some(8));
        r.max_sessions = Some(3);
        assert_eq!(r.session_limit(None), Some(3));
        assert_eq!(r.session_limit(Some(8)), Some(3));
        assert_eq!(r.session_limit(Some(2)), Some(2));
        assert_eq!(r.limits().as_deref(), Some("max sessions 3"));
        r.statement_timeout_ms = Some(1500);
        assert_eq!(
            r.limits().as_deref(),
            Some("statement timeout 1s 500ms, max sessions 3")
        );
        // A request stored before the field existed reads as unlimited.
        assert_eq!(request("hr", "approved", None, false).max_sessions, None);
    }

    #[test]
    fn approvers_revoke_and_review_only_for_the_databases_they_approve_for() {
        let config = config();
        let now = Utc::now();
        let hr = request("hr", "approved", None, true);
        let carol = user("carol", &["approver"]);
        let cleo = user("cleo", &["approver"]);
        assert!(matches!(
            check_revoke(&config, &carol, &hr, now),
            Err(PolicyError::Forbidden(m)) if m.contains("not an approver of database hr")
        ));
        assert!(check_revoke(&config, &cleo, &hr, now).is_ok());
        assert!(check_revoke(
            &config,
            &carol,
            &request("sales", "approved", None, false),
            now
        )
        .is_ok());
        // Admins, support leads and the engineer themself are not bound to a database.
        for caller in [
            user("ann", &["admin"]),
            user("lena", &["support-lead"]),
            user("eve", &["engineer"]),
        ] {
            assert!(
                check_revoke(&config, &caller, &hr, now).is_ok(),
                "{}",
                caller.name
            );
        }
        assert!(check_revoke(&config, &user("dave", &["auditor"]), &hr, now).is_err());
        assert!(matches!(
            check_acknowledge(&config, &carol, &hr),
            Err(PolicyError::Forbidden(_))
        ));
        assert!(check_acknowledge(&config, &cleo, &hr).is_ok());
    }

    #[test]
    fn an_extension_in_effect_is_revoked_with_its_grant_not_alone() {
        let config = config();
        let now = Utc::now();
        let admin = user("ann", &["admin"]);
        let applied = request("sales", "approved", Some("req-1"), false);
        assert!(matches!(
            check_revoke(&config, &admin, &applied, now),
            Err(PolicyError::Conflict(m)) if m.contains("revoke req-1")
        ));
        let asked = request("sales", "pending_customer", Some("req-1"), false);
        assert!(check_revoke(&config, &admin, &asked, now).is_ok());
    }
}
