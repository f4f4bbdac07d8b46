//! The lockbox control service: the request lifecycle as the API drives it, on top of
//! the rules (`policy`), the state (`store`), the trail (`audit`) and the signer (`token`).
//! Both planes share it: the API files and decides requests, the proxy admits sessions.

use std::sync::Arc;
use std::time::SystemTime;

use chrono::{SecondsFormat, Utc};
use tokio::sync::broadcast;

use crate::audit::{AuditError, AuditEvent, AuditLog, RequestEvent, RequestRecord};
use crate::config::{Config, User};
use crate::ids::RequestId;
use crate::policy::{self, Admission, NewRequest, PolicyError, Refusal, Request, RequestStatus};
use crate::store::{RequestFilter, Store, StoreError};
use crate::token::{Claims, TokenAuthority, TokenGrant};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Audit(#[from] AuditError),
    #[error("cannot sign token: {0}")]
    Token(String),
}

/// Why a session could not be admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Shared by the API and the proxy.
pub struct Lockbox {
    pub config: Arc<Config>,
    pub store: Store,
    pub audit: AuditLog,
    pub tokens: TokenAuthority,
    revocations: broadcast::Sender<RequestId>,
}

/// The user name the service acts under when a deadline, not a person, changes a request.
pub const SYSTEM_ACTOR: &str = "lockbox";

impl Lockbox {
    pub fn new(config: Arc<Config>, store: Store, audit: AuditLog, tokens: TokenAuthority) -> Self {
        let (revocations, _) = broadcast::channel(1024);
        Lockbox {
            config,
            store,
            audit,
            tokens,
            revocations,
        }
    }

    /// Requests revoked from now on, for the proxy to drop their sessions.
    pub fn subscribe_revocations(&self) -> broadcast::Receiver<RequestId> {
        self.revocations.subscribe()
    }

    /// The configured user holding `api_key`, if any.
    pub fn authenticate(&self, api_key: &str) -> Option<User> {
        self.config
            .user_by_key_hash(&crate::keys::api_key_sha256(api_key))
            .cloned()
    }

    pub async fn create(&self, caller: &User, new: NewRequest) -> Result<Request, ServiceError> {
        let checked = policy::check_new_request(&self.config, caller, &new)?;
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.config.request_ttl)
            .unwrap_or(chrono::Duration::hours(12));
        let request = Request {
            id: RequestId::generate(),
            engineer: caller.name.clone(),
            database: new.database,
            ticket: new.ticket.trim().to_owned(),
            reason: new.reason.trim().to_owned(),
            access: new.access,
            duration_secs: checked.duration.as_secs(),
            status: RequestStatus::Pending,
            created_at: now,
            request_expires_at: now + ttl,
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            access_expires_at: None,
            revoked_by: None,
            revoked_at: None,
            revoke_reason: None,
            statement_timeout_ms: checked.statement_timeout.map(|d| d.as_millis() as u64),
            max_rows: new.max_rows,
        };
        // The record comes first: a request nobody can trace must not exist.
        self.audit
            .append_durable(vec![request_event(
                &request,
                RequestEvent::Created,
                &caller.name,
                Some(&request.reason),
            )])
            .await?;
        self.store.insert(&request).await?;
        Ok(request)
    }

    pub async fn list(
        &self,
        caller: &User,
        status: Option<RequestStatus>,
    ) -> Result<Vec<Request>, ServiceError> {
        let now = Utc::now();
        let all = self
            .store
            .list(RequestFilter {
                status: None,
                ..Default::default()
            })
            .await?;
        Ok(all
            .into_iter()
            .filter(|r| policy::can_view(caller, r))
            .map(|mut r| {
                r.status = r.effective_status(now);
                r
            })
            .filter(|r| status.is_none_or(|s| r.status == s))
            .collect())
    }

    pub async fn get(&self, caller: &User, id: &RequestId) -> Result<Request, ServiceError> {
        let mut request = self.load(id).await?;
        if !policy::can_view(caller, &request) {
            // Same answer as for a missing request: do not confirm that it exists.
            return Err(PolicyError::NotFound(id.0.clone()).into());
        }
        request.status = request.effective_status(Utc::now());
        Ok(request)
    }

    async fn load(&self, id: &RequestId) -> Result<Request, ServiceError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| PolicyError::NotFound(id.0.clone()).into())
    }

    pub async fn approve(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
    ) -> Result<Request, ServiceError> {
        self.decide(caller, id, reason, true).await
    }

    pub async fn deny(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
    ) -> Result<Request, ServiceError> {
        self.decide(caller, id, reason, false).await
    }

    async fn decide(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
        approve: bool,
    ) -> Result<Request, ServiceError> {
        require_reason(reason)?;
        let before = self.load(id).await?;
        let now = Utc::now();
        policy::check_decision(caller, &before, now)?;
        let mut after = before.clone();
        after.decided_by = Some(caller.name.clone());
        after.decided_at = Some(now);
        after.decision_reason = Some(reason.to_owned());
        let event = if approve {
            after.status = RequestStatus::Approved;
            after.access_expires_at =
                Some(now + chrono::Duration::seconds(before.duration_secs as i64));
            RequestEvent::Approved
        } else {
            after.status = RequestStatus::Denied;
            RequestEvent::Denied
        };
        self.commit(
            &before,
            &after,
            request_event(&after, event, &caller.name, Some(reason)),
        )
        .await?;
        Ok(after)
    }

    pub async fn revoke(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
    ) -> Result<Request, ServiceError> {
        require_reason(reason)?;
        let before = self.load(id).await?;
        let now = Utc::now();
        policy::check_revoke(caller, &before, now)?;
        let mut after = before.clone();
        after.status = RequestStatus::Revoked;
        after.revoked_by = Some(caller.name.clone());
        after.revoked_at = Some(now);
        after.revoke_reason = Some(reason.to_owned());
        if !self.store.update(&after, before.status).await? {
            return Err(conflict(id));
        }
        // Sessions go first: revoking is the safe direction even if the record lags.
        let _ = self.revocations.send(id.clone());
        self.audit
            .append_durable(vec![request_event(
                &after,
                RequestEvent::Revoked,
                &caller.name,
                Some(reason),
            )])
            .await?;
        Ok(after)
    }

    /// Signs a token for the requester of an approved request; audited before it is handed out.
    pub async fn issue_token(
        &self,
        caller: &User,
        id: &RequestId,
    ) -> Result<(String, Request), ServiceError> {
        let request = self.load(id).await?;
        let window_end = policy::check_token(caller, &request, Utc::now())?;
        let grant = TokenGrant {
            engineer: &request.engineer,
            database: &request.database,
            request_id: &request.id.0,
            access: request.access,
        };
        let token = self
            .tokens
            .issue(&grant, SystemTime::from(window_end))
            .map_err(ServiceError::Token)?;
        self.audit
            .append_durable(vec![request_event(
                &request,
                RequestEvent::TokenIssued,
                &caller.name,
                None,
            )])
            .await?;
        Ok((token, request))
    }

    /// Admission of a proxied session whose token already verified.
    pub async fn admit(
        &self,
        claims: &Claims,
        user: &str,
        database: &str,
    ) -> Result<Admission, AdmitError> {
        if !self.config.databases.contains_key(database) {
            return Err(Refusal::UnknownDatabase(database.to_owned()).into());
        }
        let request = self.store.get(&RequestId(claims.rid.clone())).await?;
        Ok(policy::admit(claims, user, database, request, Utc::now())?)
    }

    /// Records the deadlines that passed: unanswered requests expire, finished windows complete.
    pub async fn sweep(&self) -> Result<usize, ServiceError> {
        let now = Utc::now();
        let mut changed = 0;
        for before in self.store.overdue(now).await? {
            let mut after = before.clone();
            after.status = before.effective_status(now);
            let event = match after.status {
                RequestStatus::Expired => RequestEvent::Expired,
                _ => RequestEvent::Completed,
            };
            let reason = match event {
                RequestEvent::Expired => "no decision within request_ttl",
                _ => "access window ended",
            };
            match self
                .commit(
                    &before,
                    &after,
                    request_event(&after, event, SYSTEM_ACTOR, Some(reason)),
                )
                .await
            {
                Ok(()) => changed += 1,
                // An approver acted at the same moment; their decision stands.
                Err(ServiceError::Policy(PolicyError::Conflict(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }

    /// Stores `after` if `before` is still current, then records `event` durably; undoes
    /// the change if the record cannot be written, so no action goes unrecorded.
    async fn commit(
        &self,
        before: &Request,
        after: &Request,
        event: AuditEvent,
    ) -> Result<(), ServiceError> {
        if !self.store.update(after, before.status).await? {
            return Err(conflict(&before.id));
        }
        if let Err(e) = self.audit.append_durable(vec![event]).await {
            if let Err(undo) = self.store.update(before, after.status).await {
                tracing::error!(request_id = %before.id, error = %undo, "could not undo an unrecorded change");
            }
            return Err(e.into());
        }
        Ok(())
    }
}

fn require_reason(reason: &str) -> Result<(), PolicyError> {
    if reason.trim().is_empty() {
        Err(PolicyError::Invalid(
            "a justification (--reason) is required".into(),
        ))
    } else {
        Ok(())
    }
}

fn conflict(id: &RequestId) -> ServiceError {
    PolicyError::Conflict(format!(
        "request {id} changed meanwhile; look again and retry"
    ))
    .into()
}

fn request_event(
    request: &Request,
    event: RequestEvent,
    actor: &str,
    reason: Option<&str>,
) -> AuditEvent {
    AuditEvent::Request(RequestRecord {
        event,
        request_id: request.id.0.clone(),
        actor: actor.to_owned(),
        engineer: request.engineer.clone(),
        database: request.database.clone(),
        ticket: request.ticket.clone(),
        access: request.access.as_str().to_owned(),
        reason: reason.map(str::to_owned),
        access_expires_at: request
            .access_expires_at
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
    })
}
