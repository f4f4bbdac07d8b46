//! Decisions on requests: approvals (staged, with quorum), denials, revocation,
//! cancellation, extension of an active grant, and the review of break-glass access.

use std::time::Duration;

use chrono::Utc;

use super::{conflict, request_event, require_reason, visible, Lockbox, ServiceError};
use crate::audit::RequestEvent;
use crate::config::User;
use crate::ids::RequestId;
use crate::notify::Event;
use crate::policy::{self, Decision, NewRequest, PolicyError, Request, RequestStatus};

/// How often a decision is retried when another one landed on the same request first.
const CONFLICT_RETRIES: usize = 3;

/// How often, and how many times, a change the state store did not confirm is looked at
/// again: a revocation stored ([`Lockbox::see_revocation_stored`]), a decision's follow-up
/// done once it is seen stored (`Lockbox::follow_up_once_stored`). For ten minutes.
const UNCONFIRMED_RETRY_PAUSE: Duration = Duration::from_secs(2);
const UNCONFIRMED_RETRIES: u32 = 300;

impl Lockbox {
    /// Approves, granting at most `shorten_to` of the window asked for, if given.
    pub async fn approve(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
        shorten_to: Option<Duration>,
    ) -> Result<Request, ServiceError> {
        self.decide(caller, id, reason, true, shorten_to).await
    }

    pub async fn deny(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
    ) -> Result<Request, ServiceError> {
        self.decide(caller, id, reason, false, None).await
    }

    async fn decide(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
        approve: bool,
        shorten_to: Option<Duration>,
    ) -> Result<Request, ServiceError> {
        require_reason(reason)?;
        // Two approvers of a quorum may press at once: the loser re-reads and counts again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .decide_once(caller, id, reason, approve, shorten_to)
                .await
            {
                Err(ServiceError::Policy(PolicyError::Conflict(m)))
                    if attempt < CONFLICT_RETRIES && m.contains("changed meanwhile") => {}
                other => return other,
            }
        }
    }

    async fn decide_once(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
        approve: bool,
        shorten_to: Option<Duration>,
    ) -> Result<Request, ServiceError> {
        let _epoch = super::within_bound("this decision", self.config_epoch.read()).await?;
        let (before, _guard) = self.load_locked(id).await?;
        let before = visible(caller, before)?;
        let now = Utc::now();
        let config = self.config();
        let stage = policy::check_decision(&config, caller, &before, now)?;
        let mut after = before.clone();
        policy::apply_decision(
            &mut after,
            &Decision {
                by: &caller.name,
                stage,
                approve,
                justification: reason,
                shorten_to,
            },
            now,
        );
        let event = match (before.status, after.status) {
            (_, RequestStatus::Denied) => RequestEvent::Denied,
            (_, RequestStatus::Approved) => RequestEvent::Approved,
            (RequestStatus::PendingInternal, RequestStatus::PendingCustomer) => {
                RequestEvent::CustomerNotified
            }
            _ => RequestEvent::ApprovalRecorded,
        };
        // Checked before the decision is stored, so an extension that no longer fits stays
        // pending (to be denied, or filed again) rather than approved in vain; under the
        // grant's lock, held until the extension is applied, so two extensions approved at
        // once are checked one after the other (an extension locks itself, then its grant).
        let grant = match (after.status, &after.extends) {
            (RequestStatus::Approved, Some(grant)) => {
                let (grant, guard) = self.load_locked(grant).await?;
                self.refuse_if_revoked_unstored(&grant.id)?;
                let protection = self.protection().await?;
                policy::check_extension_fits(&config, &protection, &grant, &after, now)?;
                Some((grant, guard))
            }
            _ => None,
        };
        let tell = match event {
            RequestEvent::CustomerNotified => Some(Event::AwaitingApproval),
            RequestEvent::Approved => Some(Event::Approved),
            RequestEvent::Denied => Some(Event::Denied),
            _ => None,
        };
        let record = request_event(&after, event, &caller.name, Some(reason));
        let mut decided = after.clone();
        decided.version = before.version + 1;
        let after = match self.commit(&before, after, vec![record]).await {
            Err(ServiceError::Store(e)) if e.outcome_unknown() => {
                // Recorded, and it may land once the store answers: whoever it concerns is
                // then told, and an approved extension applied, as if it had landed now.
                tracing::warn!(request_id = %id, error = %e, "decision recorded; the state store did not confirm it");
                self.follow_up_once_stored(decided, tell, &caller.name);
                return Err(ServiceError::Store(e));
            }
            other => other?,
        };
        if let Some(tell) = tell {
            self.notifier.notify(&config, &after, tell).await;
        }
        if let Some(grant) = grant {
            if let Some(original) = &after.extends {
                // Not a conflict of this decision (which is stored): never retried as one.
                self.apply_extension(&after, original, grant, &caller.name)
                    .await
                    .map_err(|e| {
                        PolicyError::Conflict(format!(
                            "extension {} is approved, but request {original} could not be extended: {e}",
                            after.id
                        ))
                    })?;
            }
        }
        Ok(after)
    }

    pub async fn revoke(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
    ) -> Result<Request, ServiceError> {
        require_reason(reason)?;
        let (before, guard) = self.load_locked(id).await?;
        let before = visible(caller, before)?;
        let now = Utc::now();
        policy::check_revoke(&self.config(), caller, &before, now)?;
        let mut after = before.clone();
        after.transition(RequestStatus::Revoked, &caller.name, now, Some(reason));
        after.revoked_by = Some(caller.name.clone());
        after.revoked_at = Some(now);
        after.revoke_reason = Some(reason.to_owned());
        after.version = before.version + 1;
        let unconfirmed = match self.store.update(&after).await {
            Ok(true) => None,
            Ok(false) => return Err(conflict(id)),
            // The revocation may land when the store answers (an attack review's landed 25 s
            // after its 503, with no record): it is ended here and recorded as if it had,
            // the safe direction, as a record written before a change that then fails is.
            Err(e) if e.outcome_unknown() => Some(e),
            Err(e) => return Err(e.into()),
        };
        // Sessions go first: revoking is the safe direction even if the record lags.
        let _ = self.revocations.send(id.clone());
        self.end_grant_role(&after);
        self.audit
            .append_durable(vec![request_event(
                &after,
                RequestEvent::Revoked,
                &caller.name,
                Some(reason),
            )])
            .await
            .map_err(ServiceError::RecordLagging)?;
        if let Some(e) = unconfirmed {
            tracing::warn!(request_id = %id, error = %e, "revocation recorded and this node's sessions ended; the state store did not confirm it");
            self.see_revocation_stored(after.clone());
            return Err(e.into());
        }
        // An extension locks itself, then the grant it extends: the grant's lock goes first.
        drop(guard);
        self.cancel_extensions_of(&after, &caller.name, "was revoked")
            .await;
        self.notifier
            .notify(&self.config(), &after, Event::Revoked)
            .await;
        Ok(after)
    }

    /// Stores a revocation the store did not confirm, until it is there: it is on the
    /// record and this node's sessions ended with it, and the other nodes must end theirs
    /// too (an attack review's revocation, its connection cut before the store answered,
    /// stayed recorded but never stored, and its engineer logged in again through another
    /// node). The version check lets it land once at most, and not over a change made since.
    fn see_revocation_stored(&self, revoked: Request) {
        let store = self.store.clone();
        self.unstored_revocations.lock().insert(revoked.id.clone());
        // Once stored, or given up on: the grant is the store's again. Made before the
        // task, so that a task dropped before it first runs lets it go too.
        let forget = Forget(self.unstored_revocations.clone(), revoked.id.clone());
        crate::runtime::spawn_control(async move {
            let _forget = forget;
            let mut revoked = revoked;
            for _ in 0..UNCONFIRMED_RETRIES {
                tokio::time::sleep(UNCONFIRMED_RETRY_PAUSE).await;
                let stored = match store.get(&revoked.id).await {
                    Ok(Some(stored)) => stored,
                    Ok(None) => return,
                    Err(_) => continue,
                };
                if stored.version >= revoked.version {
                    if stored.status == RequestStatus::Revoked {
                        return;
                    }
                    // Changed since (extended, acknowledged, on this node or another): the
                    // grant is revoked on top of that change, while it still runs.
                    let Some(again) = revoke_on_top(&stored, &revoked) else {
                        tracing::warn!(request_id = %revoked.id, status = %stored.status, "a recorded revocation was overtaken by the grant's end before it was stored");
                        return;
                    };
                    revoked = again;
                }
                if let Ok(true) = store.update(&revoked).await {
                    tracing::info!(request_id = %revoked.id, "a revocation the state store had not confirmed is stored");
                    return;
                }
            }
            tracing::error!(request_id = %revoked.id, "a recorded revocation could not be stored: revoke it again");
        });
    }

    /// Watches a decision the store did not confirm until it is stored (then does what a
    /// confirmed one does next: tells whom it concerns, applies an approved extension), is
    /// overtaken by another change, or ten minutes pass. Without it, an approval that landed
    /// after its 503 told nobody, and an approved extension never extended its grant.
    fn follow_up_once_stored(&self, decided: Request, tell: Option<Event>, actor: &str) {
        let me = self.me.clone();
        if me.strong_count() == 0 {
            tracing::warn!(request_id = %decided.id, "a decision the state store did not confirm is not followed up here");
            return;
        }
        let actor = actor.to_owned();
        crate::runtime::spawn_control(async move {
            for _ in 0..UNCONFIRMED_RETRIES {
                tokio::time::sleep(UNCONFIRMED_RETRY_PAUSE).await;
                let Some(lockbox) = me.upgrade() else { return };
                let stored = match lockbox.store.get(&decided.id).await {
                    Ok(Some(stored)) => stored,
                    Ok(None) => return,
                    Err(_) => continue,
                };
                if stored.version < decided.version {
                    continue;
                }
                if !is_this_decision(&stored, &decided) {
                    tracing::info!(request_id = %decided.id, "a decision the state store did not confirm was overtaken by another change");
                    return;
                }
                if lockbox.after_decision_stored(&stored, tell, &actor).await == FollowUp::Done {
                    tracing::info!(request_id = %decided.id, "a decision the state store had not confirmed is stored and followed up");
                    return;
                }
                // Looked at again: still this decision, or overtaken meanwhile.
            }
            tracing::error!(request_id = %decided.id, "a decision the state store did not confirm was not followed up within ten minutes: look at the request");
        });
    }

    /// What follows a stored decision that was not confirmed in time. An approved extension
    /// is applied first, under the rules in force (as in `decide_once`); whom it concerns is
    /// told only of what took effect.
    async fn after_decision_stored(
        &self,
        stored: &Request,
        tell: Option<Event>,
        actor: &str,
    ) -> FollowUp {
        if let Some(original) = stored
            .extends
            .as_ref()
            .filter(|_| stored.status == RequestStatus::Approved)
        {
            let applied = async {
                let _epoch =
                    super::within_bound("this extension", self.config_epoch.read()).await?;
                let (grant, guard) = self.load_locked(original).await?;
                // Applied already (by an attempt whose answer was lost): told, not again.
                if already_extended_by(&grant, &stored.id) {
                    return Ok(());
                }
                let protection = self.protection().await?;
                policy::check_extension_fits(
                    &self.config(),
                    &protection,
                    &grant,
                    stored,
                    Utc::now(),
                )?;
                self.apply_extension(stored, original, (grant, guard), actor)
                    .await
            };
            match applied.await {
                Ok(()) => {}
                // The store or the trail is still unsteady: tried again (never applied twice).
                Err(
                    e @ (ServiceError::Store(_)
                    | ServiceError::Busy(_)
                    | ServiceError::Audit(_)
                    | ServiceError::RecordLagging(_)),
                ) => {
                    tracing::warn!(request_id = %stored.id, grant = %original, error = %e, "an extension approved late is not applied yet; trying again");
                    return FollowUp::Again;
                }
                Err(e) => {
                    tracing::error!(request_id = %stored.id, grant = %original, error = %e, "an extension approved late could not be applied to its grant; nobody is told it was approved");
                    return FollowUp::Done;
                }
            }
        }
        if let Some(tell) = tell {
            self.notifier.notify(&self.config(), stored, tell).await;
        }
        FollowUp::Done
    }

    /// A grant whose revocation this node recorded but the store has not confirmed is not
    /// extended (see `Lockbox::unstored_revocations`).
    fn refuse_if_revoked_unstored(&self, grant: &RequestId) -> Result<(), ServiceError> {
        if self.unstored_revocations.lock().contains(grant) {
            return Err(PolicyError::Conflict(format!(
                "request {grant} was revoked: nothing to extend"
            ))
            .into());
        }
        Ok(())
    }

    /// A grant's pending extensions end with it (revoked, or its window over): approvers
    /// are not asked to extend what is over. A failure is logged; approving such an
    /// extension still fails, as the grant it extends is no longer active.
    pub(super) async fn cancel_extensions_of(&self, grant: &Request, actor: &str, why: &str) {
        let candidates = match self
            .store
            .pending_of(&grant.engineer, &grant.database)
            .await
        {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(request_id = %grant.id, error = %e, "cannot look up the extensions of a revoked grant");
                return;
            }
        };
        let now = Utc::now();
        let pending = candidates
            .into_iter()
            .filter(|r| r.extends.as_ref() == Some(&grant.id))
            .filter(|r| r.effective_status(now).is_pending());
        for extension in pending {
            if let Err(e) = self
                .cancel_extension(&extension.id, &grant.id, actor, why)
                .await
            {
                tracing::error!(request_id = %extension.id, error = %e, "cannot cancel the extension of a revoked grant");
            }
        }
    }

    async fn cancel_extension(
        &self,
        id: &RequestId,
        grant: &RequestId,
        actor: &str,
        why: &str,
    ) -> Result<(), ServiceError> {
        let (before, _guard) = self.load_locked(id).await?;
        let now = Utc::now();
        if !before.effective_status(now).is_pending() {
            return Ok(()); // decided meanwhile; approving it fails on the revoked grant
        }
        let reason = format!("the grant it extends, {grant}, {why}");
        let mut after = before.clone();
        after.transition(RequestStatus::Cancelled, actor, now, Some(&reason));
        let record = request_event(&after, RequestEvent::Cancelled, actor, Some(&reason));
        self.commit(&before, after, vec![record]).await?;
        Ok(())
    }

    /// The requester withdraws a request before its access began.
    pub async fn cancel(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
    ) -> Result<Request, ServiceError> {
        let reason = if reason.trim().is_empty() {
            "cancelled by the requester"
        } else {
            require_reason(reason)?;
            reason
        };
        let (before, _guard) = self.load_locked(id).await?;
        let before = visible(caller, before)?;
        let now = Utc::now();
        policy::check_cancel(caller, &before, now)?;
        let mut after = before.clone();
        after.transition(RequestStatus::Cancelled, &caller.name, now, Some(reason));
        let record = request_event(&after, RequestEvent::Cancelled, &caller.name, Some(reason));
        let after = self.commit(&before, after, vec![record]).await?;
        // Its window may have opened since the check: no session outlives a cancellation.
        let _ = self.revocations.send(id.clone());
        self.end_grant_role(&after);
        Ok(after)
    }

    /// Asks to extend an active grant by `duration`: a new request, linked to it, that goes
    /// through the same rules and approvals. Once approved, the grant (and its live
    /// sessions) run on.
    pub async fn extend(
        &self,
        caller: &User,
        id: &RequestId,
        duration: &str,
        reason: &str,
    ) -> Result<Request, ServiceError> {
        require_reason(reason)?;
        let original = self.load_visible(caller, id).await?;
        policy::check_extend(caller, &original, Utc::now())?;
        let new = NewRequest {
            database: original.database.clone(),
            ticket: original.ticket.clone(),
            reason: reason.to_owned(),
            access: original.access,
            duration: Some(duration.to_owned()),
            reason_category: Some(original.reason_category),
            ..NewRequest::default()
        };
        self.create_linked(caller, new, Some(&original)).await
    }

    /// An approved extension moves the original grant's end, and its sessions' deadlines:
    /// `grant` is the grant as read under its lock (held) when the extension was checked.
    async fn apply_extension(
        &self,
        extension: &Request,
        original: &RequestId,
        grant: (Request, super::locks::RequestGuard),
        actor: &str,
    ) -> Result<(), ServiceError> {
        let (before, _guard) = grant;
        self.refuse_if_revoked_unstored(original)?;
        if already_extended_by(&before, &extension.id) {
            // Applied once already (a decision followed up late, and its retry): never twice.
            tracing::info!(request_id = %extension.id, grant = %original, "extension already applied");
            return Ok(());
        }
        let now = Utc::now();
        let Some(end) = before.access_expires_at.filter(|_| {
            matches!(
                before.effective_status(now),
                RequestStatus::Active | RequestStatus::Approved
            )
        }) else {
            return Err(PolicyError::Conflict(format!(
                "request {original} is {} now: nothing to extend",
                before.effective_status(now)
            ))
            .into());
        };
        let new_end = end.max(now) + chrono::Duration::seconds(extension.duration_secs as i64);
        let mut after = before.clone();
        after.access_expires_at = Some(new_end);
        after.history.push(policy::Transition {
            from: Some(before.status),
            to: before.status,
            by: actor.to_owned(),
            at: now,
            reason: Some(format!("{}{new_end}", extension_marker(&extension.id))),
        });
        let record = request_event(
            &after,
            RequestEvent::Extended,
            actor,
            Some(&format!("extension {}", extension.id)),
        );
        let after = self.commit(&before, after, vec![record]).await?;
        let _ = self.extensions.send((original.clone(), new_end));
        self.extend_grant_role(&after, new_end);
        Ok(())
    }

    /// An approver reviews break-glass access after the fact.
    pub async fn acknowledge(
        &self,
        caller: &User,
        id: &RequestId,
        reason: &str,
    ) -> Result<Request, ServiceError> {
        require_reason(reason)?;
        let (before, _guard) = self.load_locked(id).await?;
        let before = visible(caller, before)?;
        policy::check_acknowledge(&self.config(), caller, &before)?;
        let mut after = before.clone();
        after.acknowledged_by = Some(caller.name.clone());
        after.acknowledged_at = Some(Utc::now());
        let record = request_event(
            &after,
            RequestEvent::Acknowledged,
            &caller.name,
            Some(reason),
        );
        self.commit(&before, after, vec![record]).await
    }
}

/// `revoked`'s revocation made again on top of `stored`, a later change of the grant, if
/// the grant still runs (approved or active); `None` once it has ended otherwise.
fn revoke_on_top(stored: &Request, revoked: &Request) -> Option<Request> {
    let now = Utc::now();
    if !matches!(
        stored.effective_status(now),
        RequestStatus::Approved | RequestStatus::Active
    ) {
        return None;
    }
    let step = revoked.history.last()?;
    let mut again = stored.clone();
    again.transition(
        RequestStatus::Revoked,
        &step.by,
        step.at,
        step.reason.as_deref(),
    );
    again.revoked_by.clone_from(&revoked.revoked_by);
    again.revoked_at = revoked.revoked_at;
    again.revoke_reason.clone_from(&revoked.revoke_reason);
    again.version = stored.version + 1;
    Some(again)
}

/// Whether `stored` is `decided` landed, and not another change of the same version (the
/// same approver's retry after the 503 makes one: the same step, other times). Stored whole,
/// times to the nanosecond, it reads back equal.
fn is_this_decision(stored: &Request, decided: &Request) -> bool {
    stored == decided
}

/// How an applied extension is written into its grant's history (then the new end).
fn extension_marker(extension: &RequestId) -> String {
    format!("extended by {extension} until ")
}

/// Whether `grant` was already extended by `extension` (its history says so).
fn already_extended_by(grant: &Request, extension: &RequestId) -> bool {
    let marker = extension_marker(extension);
    grant.history.iter().any(|step| {
        step.from == Some(step.to)
            && step
                .reason
                .as_deref()
                .is_some_and(|reason| reason.starts_with(&marker))
    })
}

/// Whether a late decision's follow-up is over, or is to be tried again.
#[derive(Debug, PartialEq, Eq)]
enum FollowUp {
    Done,
    Again,
}

/// Takes a revocation out of the node's unstored ones when dropped.
struct Forget(
    std::sync::Arc<parking_lot::Mutex<std::collections::HashSet<RequestId>>>,
    RequestId,
);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}
