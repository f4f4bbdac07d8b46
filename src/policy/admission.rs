//! The single admission check for a proxied session. No I/O.

use chrono::{DateTime, Utc};

use super::request::{Request, RequestStatus};
use crate::config::{Role, User};
use crate::token::Claims;

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
    #[error("the access window of request {0} has not opened yet")]
    NotYetOpen(String),
    #[error("access request {0} was cancelled")]
    Cancelled(String),
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
    #[error("\"{0}\" is no longer an engineer of this lockbox")]
    NoLongerEngineer(String),
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
/// what the client asked for at startup, the request as the store holds it now, and the
/// `users` configured now (an engineer removed, or no longer an engineer, opens no new
/// session on a token issued before: a reload changes who may do what for everything that
/// follows; live sessions keep their grant).
pub fn admit(
    claims: &Claims,
    startup_user: &str,
    startup_database: &str,
    request: Option<Request>,
    users: &[User],
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
    let engineer = users
        .iter()
        .any(|u| u.name == claims.sub && u.has(Role::Engineer));
    if !engineer {
        return Err(Refusal::NoLongerEngineer(claims.sub.clone()));
    }
    let id = request.id.0.clone();
    match request.effective_status(now) {
        RequestStatus::Active => {}
        RequestStatus::Approved => return Err(Refusal::NotYetOpen(id)),
        RequestStatus::PendingInternal
        | RequestStatus::PendingCustomer
        | RequestStatus::Pending => return Err(Refusal::NotApproved(id)),
        RequestStatus::Denied => return Err(Refusal::Denied(id)),
        RequestStatus::Revoked => return Err(Refusal::Revoked(id)),
        RequestStatus::Cancelled => return Err(Refusal::Cancelled(id)),
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
    use crate::policy::AccessLevel;

    fn request(status: RequestStatus) -> Request {
        let now = Utc::now();
        let open = matches!(status, RequestStatus::Approved | RequestStatus::Active);
        serde_json::from_value(serde_json::json!({
            "id": "req-1", "engineer": "eve", "database": "sales", "ticket": "T-1",
            "reason": "debug", "access": "read", "duration_secs": 3600,
            "status": status,
            "created_at": now, "request_expires_at": now + chrono::Duration::hours(12),
            "decided_by": null, "decided_at": null, "decision_reason": null,
            "access_starts_at": open.then_some(now - chrono::Duration::minutes(1)),
            "access_expires_at": open.then_some(now + chrono::Duration::hours(1)),
            "revoked_by": null, "revoked_at": null, "revoke_reason": null,
        }))
        .expect("request")
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

    fn engineers() -> Vec<User> {
        vec![crate::policy::test_support::user("eve", &["engineer"])]
    }

    #[test]
    fn an_engineer_removed_or_no_longer_one_opens_no_session() {
        let now = Utc::now();
        let approved = || Some(request(RequestStatus::Approved));
        assert!(admit(&claims(), "eve", "sales", approved(), &engineers(), now).is_ok());
        let demoted = [crate::policy::test_support::user("eve", &["approver"])];
        let others = [crate::policy::test_support::user("bob", &["engineer"])];
        for users in [&demoted[..], &others[..], &[]] {
            let refused = admit(&claims(), "eve", "sales", approved(), users, now).map(|_| ());
            assert_eq!(refused, Err(Refusal::NoLongerEngineer("eve".into())));
            assert_eq!(Refusal::NoLongerEngineer("eve".into()).sqlstate(), "28P01");
        }
    }

    #[test]
    fn admission_checks_every_binding() {
        let now = Utc::now();
        let check = |user: &str, db: &str, req: Option<Request>, ok: bool| {
            let got = admit(&claims(), user, db, req, &engineers(), now);
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
            RequestStatus::PendingInternal,
            RequestStatus::PendingCustomer,
            RequestStatus::Denied,
            RequestStatus::Revoked,
            RequestStatus::Cancelled,
            RequestStatus::Expired,
            RequestStatus::Completed,
        ] {
            check("eve", "sales", Some(request(status)), false);
        }
    }

    #[test]
    fn a_window_that_has_not_opened_admits_nobody() {
        let now = Utc::now();
        let mut later = request(RequestStatus::Approved);
        later.access_starts_at = Some(now + chrono::Duration::minutes(10));
        assert_eq!(
            admit(&claims(), "eve", "sales", Some(later), &engineers(), now).map(|_| ()),
            Err(Refusal::NotYetOpen("req-1".into()))
        );
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
            &engineers(),
            now,
        )
        .expect("admit");
        assert_eq!(admission.ends_at.timestamp() as u64, short.exp);
    }

    #[test]
    fn a_token_rounded_up_to_the_second_ends_the_session_at_the_windows_millisecond() {
        let now = Utc::now();
        let mut approved = request(RequestStatus::Approved);
        let end = now + chrono::Duration::milliseconds(60_500);
        approved.access_expires_at = Some(end);
        let mut rounded = claims();
        rounded.exp = (end.timestamp() + 1) as u64;
        let admission =
            admit(&rounded, "eve", "sales", Some(approved), &engineers(), now).expect("admit");
        assert_eq!(admission.ends_at, end);
    }

    #[test]
    fn deadlines_count_before_the_sweeper_runs() {
        let mut pending = request(RequestStatus::PendingCustomer);
        pending.request_expires_at = Utc::now() - chrono::Duration::seconds(1);
        assert_eq!(pending.effective_status(Utc::now()), RequestStatus::Expired);
        let mut approved = request(RequestStatus::Approved);
        approved.access_expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        assert_eq!(
            approved.effective_status(Utc::now()),
            RequestStatus::Completed
        );
        let legacy = request(RequestStatus::Pending);
        assert_eq!(
            legacy.effective_status(Utc::now()),
            RequestStatus::PendingCustomer
        );
    }
}
