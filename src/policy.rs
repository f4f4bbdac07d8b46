//! The lockbox rules: who may do what to an access request, and whether a token opens a
//! session. Every security decision lives here; this module does no I/O, so each rule is
//! a plain function of its inputs and is tested as such.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Role, User};
use crate::ids::RequestId;
use crate::token::Claims;

/// What the engineer may do in the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLevel {
    Read,
    Write,
    Admin,
}

impl AccessLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::Read => "read",
            AccessLevel::Write => "write",
            AccessLevel::Admin => "admin",
        }
    }
}

impl FromStr for AccessLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(AccessLevel::Read),
            "write" => Ok(AccessLevel::Write),
            "admin" => Ok(AccessLevel::Admin),
            other => Err(format!(
                "unknown access level `{other}` (read, write or admin)"
            )),
        }
    }
}

/// Where a request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// Waiting for an approver.
    Pending,
    /// Approved; the access window may be open.
    Approved,
    Denied,
    /// Nobody decided within `request_ttl`.
    Expired,
    Revoked,
    /// The access window ran out.
    Completed,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
            RequestStatus::Revoked => "revoked",
            RequestStatus::Completed => "completed",
        }
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => RequestStatus::Pending,
            "approved" => RequestStatus::Approved,
            "denied" => RequestStatus::Denied,
            "expired" => RequestStatus::Expired,
            "revoked" => RequestStatus::Revoked,
            "completed" => RequestStatus::Completed,
            other => {
                return Err(format!(
                "unknown status `{other}` (pending, approved, denied, expired, revoked, completed)"
            ))
            }
        })
    }
}

/// An access request and, once approved, its grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    pub engineer: String,
    pub database: String,
    pub ticket: String,
    pub reason: String,
    pub access: AccessLevel,
    pub duration_secs: u64,
    pub status: RequestStatus,
    pub created_at: DateTime<Utc>,
    /// When a pending request expires unanswered.
    pub request_expires_at: DateTime<Utc>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision_reason: Option<String>,
    /// End of the access window (set on approval).
    pub access_expires_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoke_reason: Option<String>,
    /// Per-grant limits: no statement may run longer than this (set upstream).
    #[serde(default)]
    pub statement_timeout_ms: Option<u64>,
    /// Per-grant limits: no statement may return more rows than this.
    #[serde(default)]
    pub max_rows: Option<u64>,
}

impl Request {
    /// The status as of `now`, counting deadlines that passed but were not yet recorded.
    pub fn effective_status(&self, now: DateTime<Utc>) -> RequestStatus {
        match self.status {
            RequestStatus::Pending if now >= self.request_expires_at => RequestStatus::Expired,
            RequestStatus::Approved if self.access_expires_at.is_some_and(|end| now >= end) => {
                RequestStatus::Completed
            }
            status => status,
        }
    }
}

/// A refused action: the message is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request {0} not found")]
    NotFound(String),
}

fn forbidden(m: impl Into<String>) -> PolicyError {
    PolicyError::Forbidden(m.into())
}

fn require_role(caller: &User, role: Role, action: &str) -> Result<(), PolicyError> {
    if caller.has(role) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} may not {action}: it needs the {role:?} role",
            caller.name
        )))
    }
}

/// What an engineer asks for.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct NewRequest {
    pub database: String,
    pub ticket: String,
    pub reason: String,
    pub access: AccessLevel,
    /// Human duration (`30s`, `8h`); the configured default when absent.
    pub duration: Option<String>,
    /// Longest any statement may run (`30s`), if limited.
    #[serde(default)]
    pub statement_timeout: Option<String>,
    /// Most rows any statement may return, if limited.
    #[serde(default)]
    pub max_rows: Option<u64>,
}

/// A new request that passed the rules, with its durations resolved.
#[derive(Debug)]
pub struct CheckedRequest {
    pub duration: Duration,
    pub statement_timeout: Option<Duration>,
}

pub fn check_new_request(
    config: &Config,
    caller: &User,
    new: &NewRequest,
) -> Result<CheckedRequest, PolicyError> {
    require_role(caller, Role::Engineer, "file access requests")?;
    if !config.databases.contains_key(&new.database) {
        return Err(PolicyError::Invalid(format!(
            "unknown database `{}`",
            new.database
        )));
    }
    if new.ticket.trim().is_empty() {
        return Err(PolicyError::Invalid("a support ticket is required".into()));
    }
    if new.reason.trim().is_empty() {
        return Err(PolicyError::Invalid("a reason is required".into()));
    }
    let duration = match &new.duration {
        None => config.default_access,
        Some(text) => humantime::parse_duration(text.trim())
            .map_err(|e| PolicyError::Invalid(format!("duration `{text}`: {e}")))?,
    };
    if duration < Duration::from_secs(1) {
        return Err(PolicyError::Invalid("duration must be at least 1s".into()));
    }
    if duration > config.max_access {
        return Err(PolicyError::Invalid(format!(
            "duration {} is longer than the maximum access of {}",
            humantime::format_duration(duration),
            humantime::format_duration(config.max_access)
        )));
    }
    let statement_timeout = match &new.statement_timeout {
        None => None,
        Some(text) => {
            let d = humantime::parse_duration(text.trim())
                .map_err(|e| PolicyError::Invalid(format!("statement timeout `{text}`: {e}")))?;
            if d < Duration::from_millis(1) {
                return Err(PolicyError::Invalid(
                    "statement timeout must be at least 1ms".into(),
                ));
            }
            Some(d)
        }
    };
    if new.max_rows == Some(0) {
        return Err(PolicyError::Invalid("max rows must be at least 1".into()));
    }
    Ok(CheckedRequest {
        duration,
        statement_timeout,
    })
}

/// May `caller` approve or deny `request` now?
pub fn check_decision(
    caller: &User,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<(), PolicyError> {
    require_role(caller, Role::Approver, "approve or deny requests")?;
    if request.engineer == caller.name {
        return Err(forbidden("nobody may approve or deny their own request"));
    }
    match request.effective_status(now) {
        RequestStatus::Pending => Ok(()),
        other => Err(PolicyError::Conflict(format!(
            "request {} is {other}, not pending",
            request.id
        ))),
    }
}

/// May `caller` revoke `request` now? Approvers and admins may; so may the engineer,
/// giving up their own access.
pub fn check_revoke(
    caller: &User,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<(), PolicyError> {
    let own = request.engineer == caller.name;
    if !(own || caller.has(Role::Approver) || caller.has(Role::Admin)) {
        return Err(forbidden(format!(
            "{} may not revoke this request",
            caller.name
        )));
    }
    match request.effective_status(now) {
        RequestStatus::Approved | RequestStatus::Pending => Ok(()),
        other => Err(PolicyError::Conflict(format!(
            "request {} is {other}: nothing to revoke",
            request.id
        ))),
    }
}

/// May `caller` fetch a token for `request` now? Only the engineer who filed it, only
/// while it is approved and its window is open.
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
    match (request.effective_status(now), request.access_expires_at) {
        (RequestStatus::Approved, Some(end)) => Ok(end),
        (status, _) => Err(PolicyError::Conflict(format!(
            "request {} is {status}: no token",
            request.id
        ))),
    }
}

/// May `caller` see `request`? Engineers see their own; the other roles see all.
pub fn can_view(caller: &User, request: &Request) -> bool {
    request.engineer == caller.name
        || caller.has(Role::Approver)
        || caller.has(Role::Admin)
        || caller.has(Role::Auditor)
}

pub fn check_audit_read(caller: &User) -> Result<(), PolicyError> {
    if caller.has(Role::Auditor) || caller.has(Role::Admin) || caller.has(Role::Approver) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} may not read the audit log",
            caller.name
        )))
    }
}

/// Scheduled exports write the whole trail to a folder of the server's choosing: admins only.
pub fn check_export_admin(caller: &User) -> Result<(), PolicyError> {
    if caller.has(Role::Admin) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} may not manage audit exports (admin only)",
            caller.name
        )))
    }
}

/// Why a session was refused at login. The text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("token was issued for user \"{token}\", not \"{startup}\"")]
    WrongUser { token: String, startup: String },
    #[error("token was issued for database \"{token}\", not \"{startup}\"")]
    WrongDatabase { token: String, startup: String },
    #[error("access request {0} does not exist")]
    UnknownRequest(String),
    #[error("token does not match access request {0}")]
    Mismatch(String),
    #[error("access request {0} is not yet approved")]
    NotApproved(String),
    #[error("access request {0} was denied")]
    Denied(String),
    #[error("access request {0} has been revoked")]
    Revoked(String),
    #[error("access request {0} expired before anyone approved it")]
    Expired(String),
    #[error("the access window of request {0} has ended")]
    WindowEnded(String),
    #[error("database \"{0}\" is not served by this proxy")]
    UnknownDatabase(String),
}

impl Refusal {
    /// 28P01 for a credential that is no good any more, 28000 for a mismatch.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Refusal::WrongUser { .. }
            | Refusal::WrongDatabase { .. }
            | Refusal::UnknownDatabase(_) => "28000",
            _ => "28P01",
        }
    }
}

/// A session that may go ahead, and until when.
#[derive(Debug, Clone)]
pub struct Admission {
    pub request: Request,
    pub ends_at: DateTime<Utc>,
}

/// The single admission check for a proxied session: a verified token's claims against
/// what the client asked for at startup and the request as the store holds it now.
pub fn admit(
    claims: &Claims,
    startup_user: &str,
    startup_database: &str,
    request: Option<Request>,
    now: DateTime<Utc>,
) -> Result<Admission, Refusal> {
    if claims.sub != startup_user {
        return Err(Refusal::WrongUser {
            token: claims.sub.clone(),
            startup: startup_user.to_owned(),
        });
    }
    if claims.db != startup_database {
        return Err(Refusal::WrongDatabase {
            token: claims.db.clone(),
            startup: startup_database.to_owned(),
        });
    }
    let request = request.ok_or_else(|| Refusal::UnknownRequest(claims.rid.clone()))?;
    if request.engineer != claims.sub
        || request.database != claims.db
        || request.access != claims.access
    {
        return Err(Refusal::Mismatch(claims.rid.clone()));
    }
    let id = request.id.0.clone();
    match request.effective_status(now) {
        RequestStatus::Approved => {}
        RequestStatus::Pending => return Err(Refusal::NotApproved(id)),
        RequestStatus::Denied => return Err(Refusal::Denied(id)),
        RequestStatus::Revoked => return Err(Refusal::Revoked(id)),
        RequestStatus::Expired => return Err(Refusal::Expired(id)),
        RequestStatus::Completed => return Err(Refusal::WindowEnded(id)),
    }
    let window_end = request
        .access_expires_at
        .ok_or_else(|| Refusal::NotApproved(id.clone()))?;
    let token_end = DateTime::<Utc>::from_timestamp(claims.exp as i64, 0).unwrap_or(now);
    let ends_at = window_end.min(token_end);
    if ends_at <= now {
        return Err(Refusal::WindowEnded(id));
    }
    Ok(Admission { request, ends_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, roles: &[Role]) -> User {
        User {
            name: name.into(),
            roles: roles.to_vec(),
            api_key_sha256: [0; 32],
        }
    }

    fn request(status: RequestStatus) -> Request {
        let now = Utc::now();
        Request {
            id: RequestId("req-1".into()),
            engineer: "eve".into(),
            database: "sales".into(),
            ticket: "T-1".into(),
            reason: "debug".into(),
            access: AccessLevel::Read,
            duration_secs: 3600,
            status,
            created_at: now,
            request_expires_at: now + chrono::Duration::hours(12),
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            access_expires_at: (status == RequestStatus::Approved)
                .then(|| now + chrono::Duration::hours(1)),
            revoked_by: None,
            revoked_at: None,
            revoke_reason: None,
            statement_timeout_ms: None,
            max_rows: None,
        }
    }

    fn claims() -> Claims {
        Claims {
            iss: "lockbox".into(),
            aud: "lockbox-proxy".into(),
            sub: "eve".into(),
            db: "sales".into(),
            rid: "req-1".into(),
            access: AccessLevel::Read,
            iat: 0,
            nbf: 0,
            exp: (Utc::now() + chrono::Duration::hours(2)).timestamp() as u64,
            jti: "j".into(),
        }
    }

    #[test]
    fn admission_checks_every_binding() {
        let now = Utc::now();
        let check = |user: &str, db: &str, req: Option<Request>, ok: bool| {
            let got = admit(&claims(), user, db, req, now);
            assert_eq!(got.is_ok(), ok, "{user}/{db}: {got:?}");
        };
        check("eve", "sales", Some(request(RequestStatus::Approved)), true);
        check(
            "mallory",
            "sales",
            Some(request(RequestStatus::Approved)),
            false,
        );
        check("eve", "hr", Some(request(RequestStatus::Approved)), false);
        check("eve", "sales", None, false);
        for status in [
            RequestStatus::Pending,
            RequestStatus::Denied,
            RequestStatus::Revoked,
            RequestStatus::Expired,
            RequestStatus::Completed,
        ] {
            check("eve", "sales", Some(request(status)), false);
        }
    }

    #[test]
    fn session_ends_at_the_earlier_of_window_and_token() {
        let now = Utc::now();
        let mut short = claims();
        short.exp = (now + chrono::Duration::minutes(5)).timestamp() as u64;
        let admission = admit(
            &short,
            "eve",
            "sales",
            Some(request(RequestStatus::Approved)),
            now,
        )
        .expect("admit");
        assert_eq!(admission.ends_at.timestamp() as u64, short.exp);
    }

    #[test]
    fn nobody_approves_their_own_request() {
        let now = Utc::now();
        let req = request(RequestStatus::Pending);
        let self_approver = user("eve", &[Role::Engineer, Role::Approver]);
        assert!(matches!(
            check_decision(&self_approver, &req, now),
            Err(PolicyError::Forbidden(_))
        ));
        assert!(check_decision(&user("carol", &[Role::Approver]), &req, now).is_ok());
        assert!(check_decision(&user("bob", &[Role::Engineer]), &req, now).is_err());
        let decided = request(RequestStatus::Denied);
        assert!(matches!(
            check_decision(&user("carol", &[Role::Approver]), &decided, now),
            Err(PolicyError::Conflict(_))
        ));
    }

    #[test]
    fn tokens_go_only_to_the_requester_of_an_approved_request() {
        let now = Utc::now();
        let eve = user("eve", &[Role::Engineer]);
        assert!(check_token(&eve, &request(RequestStatus::Approved), now).is_ok());
        assert!(check_token(
            &user("bob", &[Role::Engineer]),
            &request(RequestStatus::Approved),
            now
        )
        .is_err());
        assert!(check_token(&eve, &request(RequestStatus::Pending), now).is_err());
        assert!(check_token(&eve, &request(RequestStatus::Revoked), now).is_err());
    }

    #[test]
    fn deadlines_count_before_the_sweeper_runs() {
        let mut pending = request(RequestStatus::Pending);
        pending.request_expires_at = Utc::now() - chrono::Duration::seconds(1);
        assert_eq!(pending.effective_status(Utc::now()), RequestStatus::Expired);
        let mut approved = request(RequestStatus::Approved);
        approved.access_expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        assert_eq!(
            approved.effective_status(Utc::now()),
            RequestStatus::Completed
        );
    }
}
