//! The lockbox control service: the request lifecycle as the API drives it, on top of
//! the rules (`policy`), the state (`store`), the trail (`audit`) and the signer (`token`).
//! Both planes share it: the API files and decides requests, the proxy admits sessions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::broadcast;

use crate::audit::{AuditError, AuditEvent, AuditLog, RequestEvent, RequestRecord};
use crate::config::{Config, ConfigError, User};
use crate::ids::RequestId;
use crate::notify::{Event, Notifier};
use crate::policy::{
    self, Admission, NewRequest, PolicyError, Refusal, Request, RequestStatus, Transition,
};
use crate::store::{RequestFilter, Store, StoreError};
use crate::token::{Claims, TokenAuthority, TokenGrant};

mod admin;
mod locks;
mod roles;
mod sessions;
pub(crate) use sessions::KillError;
mod workflow;

pub use admin::{PolicyView, ReloadReport};

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
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The action took effect (a revocation), but its record could not be written yet.
    #[error("the action took effect, but its audit record could not be written: {0}")]
    RecordLagging(AuditError),
    /// Another change it must wait for (of the same request, or a reload) has itself waited
    /// past the state store's bound: nothing was changed.
    #[error("{0}")]
    Busy(String),
}

/// Waits for a lock another change holds for no longer than one store operation may take
/// (`store::pg::pool::OPERATION_TIMEOUT`): behind a change that waits for a frozen store,
/// the waits added up (an attack review's sixth concurrent approval answered after 90 s).
async fn within_bound<T>(
    what: &str,
    wait: impl std::future::Future<Output = T>,
) -> Result<T, ServiceError> {
    let bound = crate::store::pg::pool::OPERATION_TIMEOUT;
    tokio::time::timeout(bound, wait).await.map_err(|_| {
        ServiceError::Busy(format!(
            "{what} has waited {} s for another change, itself waiting for the state store or the audit trail; nothing was changed: try again shortly",
            bound.as_secs()
        ))
    })
}

/// Longest a login waits for its request to be read from the state store.
const ADMISSION_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// Swapped whole by a reload; readers take a snapshot with [`Lockbox::config`].
    config: ArcSwap<Config>,
    /// The file the configuration came from (for reloads).
    config_path: Option<PathBuf>,
    pub store: Store,
    pub audit: AuditLog,
    pub tokens: TokenAuthority,
    pub notifier: Notifier,
    revocations: broadcast::Sender<RequestId>,
    extensions: broadcast::Sender<(RequestId, DateTime<Utc>)>,
    /// One lock per request: a change is read, checked, recorded and stored under it, so
    /// two changes of one request never interleave in this process.
    locks: locks::RequestLocks,
    /// Per-grant upstream roles: made at a grant's first session, dropped at its end.
    pub provisioner: Arc<crate::provision::Provisioner>,
    /// A reload holds it exclusively from its record to the swap; request decisions hold it
    /// shared while they read the rules and record their outcome. So every decision the
    /// trail shows after a `config_reloaded` record was made under the reloaded rules.
    config_epoch: tokio::sync::RwLock<()>,
    /// This service, for follow-ups that outlive a call (see
    /// `Lockbox::follow_up_once_stored`); empty unless made by [`Lockbox::shared`].
    me: std::sync::Weak<Lockbox>,
    /// Revocations recorded here that the store has not confirmed yet (see
    /// `Lockbox::see_revocation_stored`): their grants are not extended meanwhile, or the
    /// extension's change would overtake the revocation and it would never be stored.
    unstored_revocations: Arc<parking_lot::Mutex<std::collections::HashSet<RequestId>>>,
}

/// The user name the service acts under when a deadline, not a person, changes a request.
pub const SYSTEM_ACTOR: &str = "lockbox";

impl Lockbox {
    pub fn new(config: Arc<Config>, store: Store, audit: AuditLog, tokens: TokenAuthority) -> Self {
        let (revocations, _) = broadcast::channel(1024);
        let (extensions, _) = broadcast::channel(1024);
        Lockbox {
            config_path: config.source.clone(),
            config: ArcSwap::new(config),
            notifier: Notifier::new(store.clone()),
            store,
            audit,
            tokens,
            revocations,
            extensions,
            locks: locks::RequestLocks::default(),
            config_epoch: tokio::sync::RwLock::new(()),
            provisioner: Arc::default(),
            me: std::sync::Weak::new(),
            unstored_revocations: Arc::default(),
        }
    }

    /// [`Lockbox::new`], shared, and able to finish a decision the state store confirms
    /// only after the call that made it has answered (see `Lockbox::follow_up_once_stored`).
    pub fn shared(
        config: Arc<Config>,
        store: Store,
        audit: AuditLog,
        tokens: TokenAuthority,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Lockbox {
            me: me.clone(),
            ..Lockbox::new(config, store, audit, tokens)
        })
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Requests revoked from now on, for the proxy to drop their sessions.
    pub fn subscribe_revocations(&self) -> broadcast::Receiver<RequestId> {
        self.revocations.subscribe()
    }

    /// Grants extended from now on, and their new ends, for the proxy's live sessions.
    pub fn subscribe_extensions(&self) -> broadcast::Receiver<(RequestId, DateTime<Utc>)> {
        self.extensions.subscribe()
    }

    /// The configured user behind a bearer credential: an API key, or (with `[oidc]`) an
    /// identity token whose `amr` decides whether the user counts as signed in with MFA.
    pub fn authenticate(&self, credential: &str) -> Option<User> {
        let config = self.config();
        if let Some(oidc) = config
            .oidc
            .as_ref()
            .filter(|_| crate::oidc::looks_like_jwt(credential))
        {
            let identity = match oidc.verify(credential) {
                Ok(identity) => identity,
                Err(e) => {
                    tracing::info!(error = %e, "identity token refused");
                    return None;
                }
            };
            let mut user = config
                .users
                .iter()
                .find(|u| u.name == identity.name)?
                .clone();
            user.mfa = identity.mfa;
            return Some(user);
        }
        config
            .user_by_key_hash(&crate::keys::api_key_sha256(credential))
            .cloned()
    }

    /// Files a request: validated, run through the JIT rules, and either refused at once
    /// (a rule's denial, recorded) or stored pending its first stage. Break-glass requests
    /// are granted at once.
    pub async fn create(&self, caller: &User, new: NewRequest) -> Result<Request, ServiceError> {
        self.create_linked(caller, new, None).await
    }

    /// Files a request; an extension names the grant it extends (and inherits its limits),
    /// so it is stored and recorded as an extension from the start.
    pub(crate) async fn create_linked(
        &self,
        caller: &User,
        new: NewRequest,
        extends: Option<&Request>,
    ) -> Result<Request, ServiceError> {
        let _epoch = within_bound("this request", self.config_epoch.read()).await?;
        let config = self.config();
        let protection = self.protection().await?;
        let now = Utc::now();
        let already = extends.map_or(std::time::Duration::ZERO, |grant| {
            policy::held_by_grant(grant, now)
        });
        let checked = policy::check_new_request(&config, &protection, caller, &new, already, now)
            .and_then(|mut checked| {
                if new.break_glass {
                    checked.plan.duration = policy::check_break_glass(
                        config.break_glass.as_ref(),
                        caller,
                        checked.plan.duration,
                    )?;
                }
                Ok(checked)
            });
        let checked = match checked {
            Ok(checked) => checked,
            // Refused by a rule or the break-glass policy: on the record all the same.
            Err(PolicyError::Forbidden(reason)) if caller.has(crate::config::Role::Engineer) => {
                self.record_rejection(caller, &new, &reason).await?;
                return Err(PolicyError::Forbidden(reason).into());
            }
            Err(e) => return Err(e.into()),
        };
        let plan = checked.plan;
        let ttl = plan.request_ttl.unwrap_or(config.request_ttl);
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(12));
        let status = policy::initial_status(&plan);
        let mut request = Request {
            id: RequestId::generate(),
            engineer: caller.name.clone(),
            database: new.database,
            ticket: new.ticket.trim().to_owned(),
            reason: new.reason.trim().to_owned(),
            reason_category: new.reason_category.unwrap_or_default(),
            access: new.access,
            duration_secs: plan.duration.as_secs(),
            status,
            created_at: now,
            request_expires_at: now + ttl,
            starts_at: new.starts_at,
            requester_mfa: caller.mfa,
            internal_required: plan.internal_approvals,
            internal_role: plan.internal_role.clone(),
            customer_required: plan.customer_approvals,
            rules_applied: plan.applied.clone(),
            requested_duration_secs: plan.capped_from.map(|d| d.as_secs()),
            approvals: Vec::new(),
            history: vec![Transition {
                from: None,
                to: status,
                by: caller.name.clone(),
                at: now,
                reason: Some(new.reason.trim().to_owned()),
            }],
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            access_starts_at: None,
            access_expires_at: None,
            revoked_by: None,
            revoked_at: None,
            revoke_reason: None,
            statement_timeout_ms: checked.statement_timeout.map(|d| d.as_millis() as u64),
            max_rows: new.max_rows,
            max_sessions: new.max_sessions,
            extends: extends.map(|o| o.id.clone()),
            break_glass: new.break_glass,
            acknowledged_by: None,
            acknowledged_at: None,
            version: 0,
        };
        let mut events = vec![request_event(
            &request,
            RequestEvent::Created,
            &caller.name,
            Some(&request.reason),
        )];
        if let Some(original) = extends {
            request.statement_timeout_ms = original.statement_timeout_ms;
            request.max_rows = original.max_rows;
            request.max_sessions = original.max_sessions;
            events.push(request_event(
                original,
                RequestEvent::ExtensionRequested,
                &caller.name,
                Some(&format!("extension {} asks for more time", request.id)),
            ));
        }
        if request.break_glass {
            request.starts_at = None;
            policy::open_window(&mut request, now);
            request.transition(
                RequestStatus::Approved,
                &caller.name,
                now,
                Some("break-glass: granted without approvals"),
            );
            events.push(request_event(
                &request,
                RequestEvent::BreakGlassGranted,
                &caller.name,
                Some(&request.reason),
            ));
        }
        // The record comes first: a request nobody can trace must not exist.
        self.audit.append_durable(events).await?;
        self.store.insert(&request).await?;
        let event = if request.break_glass {
            Event::BreakGlass
        } else {
            Event::AwaitingApproval
        };
        self.notifier.notify(&config, &request, event).await;
        Ok(request)
    }

    /// A request the rules refused is never stored, but the attempt is on the record.
    async fn record_rejection(
        &self,
        caller: &User,
        new: &NewRequest,
        reason: &str,
    ) -> Result<(), ServiceError> {
        self.audit
            .append_durable(vec![AuditEvent::Request(RequestRecord {
                event: RequestEvent::Rejected,
                request_id: String::new(),
                actor: caller.name.clone(),
                engineer: caller.name.clone(),
                database: new.database.clone(),
                ticket: new.ticket.clone(),
                access: new.access.as_str().to_owned(),
                reason: Some(reason.to_owned()),
                access_expires_at: None,
                status: Some(RequestStatus::Denied.as_str().to_owned()),
                break_glass: new.break_glass,
            })])
            .await?;
        Ok(())
    }

    pub async fn list(
        &self,
        caller: &User,
        status: Option<RequestStatus>,
    ) -> Result<Vec<Request>, ServiceError> {
        let now = Utc::now();
        let all = self.store.list(RequestFilter::default()).await?;
        Ok(all
            .into_iter()
            .filter(|r| policy::can_view(caller, r))
            .map(|mut r| {
                r.status = r.effective_status(now);
                r
            })
            .filter(|r| status.is_none_or(|s| s.includes(r.status)))
            .collect())
    }

    pub async fn get(&self, caller: &User, id: &RequestId) -> Result<Request, ServiceError> {
        let mut request = self.load_visible(caller, id).await?;
        request.status = request.effective_status(Utc::now());
        Ok(request)
    }

    /// The request as `caller` may act on it: one they may not see gets exactly the answer
    /// a missing one gets, so a refusal never confirms that a request id exists.
    async fn load_visible(&self, caller: &User, id: &RequestId) -> Result<Request, ServiceError> {
        visible(caller, self.load(id).await?)
    }

    async fn load(&self, id: &RequestId) -> Result<Request, ServiceError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| PolicyError::NotFound(id.0.clone()).into())
    }

    /// Signs a token for the requester of an approved request; audited before it is handed out.
    pub async fn issue_token(
        &self,
        caller: &User,
        id: &RequestId,
    ) -> Result<(String, Request), ServiceError> {
        let request = self.load_visible(caller, id).await?;
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
        let config = self.config();
        if !config.databases.contains_key(database) {
            return Err(Refusal::UnknownDatabase(database.to_owned()).into());
        }
        // A store that is frozen or waits on a lock answers nothing and errs nothing: the
        // login is refused as for a store that is down, not left to its login timeout.
        let id = RequestId(claims.rid.clone());
        let request = tokio::time::timeout(ADMISSION_READ_TIMEOUT, self.store.get(&id))
            .await
            .map_err(|_| {
                StoreError::Unreachable(format!(
                    "no answer within {} s",
                    ADMISSION_READ_TIMEOUT.as_secs()
                ))
            })??;
        // Revoked here, the store not told yet (it says approved): refused all the same.
        if self.unstored_revocations.lock().contains(&id) {
            return Err(Refusal::Revoked(id.0).into());
        }
        Ok(policy::admit(
            claims,
            user,
            database,
            request,
            &config.users,
            Utc::now(),
        )?)
    }

    /// Records the deadlines that passed: unanswered requests expire, finished windows complete.
    pub async fn sweep(&self) -> Result<usize, ServiceError> {
        let now = Utc::now();
        let mut changed = 0;
        for candidate in self.store.overdue(now).await? {
            let (before, guard) = self.load_locked(&candidate.id).await?;
            if !matches!(
                before.effective_status(now),
                RequestStatus::Expired | RequestStatus::Completed
            ) || before.status.is_final()
            {
                continue; // someone acted on it meanwhile
            }
            let mut after = before.clone();
            let to = before.effective_status(now);
            let (event, reason) = match to {
                RequestStatus::Expired => (RequestEvent::Expired, "no decision within request_ttl"),
                _ => (RequestEvent::Completed, "access window ended"),
            };
            after.transition(to, SYSTEM_ACTOR, now, Some(reason));
            let record = request_event(&after, event, SYSTEM_ACTOR, Some(reason));
            match self.commit(&before, after, vec![record]).await {
                Ok(after) => {
                    // An extension locks itself, then the grant it extends: the grant's
                    // lock goes before its extensions are cancelled.
                    drop(guard);
                    changed += 1;
                    self.end_grant_role(&after);
                    if event == RequestEvent::Completed {
                        self.cancel_extensions_of(&after, SYSTEM_ACTOR, "ended")
                            .await;
                    }
                    if event == RequestEvent::Expired {
                        self.notifier
                            .notify(&self.config(), &after, Event::Expired)
                            .await;
                    }
                }
                // An approver acted at the same moment; their decision stands.
                Err(ServiceError::Policy(PolicyError::Conflict(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }

    /// The request, read under its lock; the change that follows holds the guard.
    pub(crate) async fn load_locked(
        &self,
        id: &RequestId,
    ) -> Result<(Request, locks::RequestGuard), ServiceError> {
        let guard =
            within_bound(&format!("the change of request {id}"), self.locks.lock(id)).await?;
        Ok((self.load(id).await?, guard))
    }

    /// Records `events` durably, then stores `after` if `before` is still current. The
    /// record comes first: no change is ever in force without its record (a crash between
    /// the two leaves a record of a change that did not take effect: the safe direction).
    /// Callers hold the request's lock, so only another process can have changed it; then
    /// the record is marked superseded and the caller gets a conflict.
    async fn commit(
        &self,
        before: &Request,
        mut after: Request,
        events: Vec<AuditEvent>,
    ) -> Result<Request, ServiceError> {
        after.version = before.version + 1;
        self.audit.append_durable(events).await?;
        if !self.store.update(&after).await? {
            tracing::warn!(request_id = %before.id, "request changed elsewhere; the recorded change did not take effect");
            self.audit.append(vec![request_event(
                &after,
                RequestEvent::Superseded,
                SYSTEM_ACTOR,
                Some("the change recorded just before did not take effect: the request had changed meanwhile"),
            )]);
            return Err(conflict(&before.id));
        }
        Ok(after)
    }
}

/// `request` if `caller` may see it, else the not-found answer of a missing request.
fn visible(caller: &User, request: Request) -> Result<Request, ServiceError> {
    if policy::can_view(caller, &request) {
        Ok(request)
    } else {
        Err(PolicyError::NotFound(request.id.0).into())
    }
}

fn require_reason(reason: &str) -> Result<(), PolicyError> {
    if reason.trim().is_empty() {
        return Err(PolicyError::Invalid(
            "a justification (--reason) is required".into(),
        ));
    }
    policy::check_shown_text("the justification", reason, policy::MAX_REASON_CHARS, true)
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
        status: Some(request.status.as_str().to_owned()),
        break_glass: request.break_glass,
    })
}
