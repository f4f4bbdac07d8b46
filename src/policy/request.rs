//! An access request: what was asked, what the rules decided, who approved, and every
//! transition it went through. Stored whole (as JSON) by the store; new fields default so
//! older rows stay readable.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AccessLevel;
use crate::config::Role;
use crate::ids::RequestId;

/// Where a request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Waiting for provider-side (internal) approvals.
    PendingInternal,
    /// Waiting for the customer's approvers ("Customer Notified").
    PendingCustomer,
    /// Written by earlier versions for a request awaiting its (only) approver; read as
    /// `pending_customer`. As a filter it means either pending state.
    Pending,
    /// Approved; the access window has not opened yet.
    Approved,
    /// Approved and inside its access window (never stored: derived from `approved`).
    Active,
    Denied,
    /// Nobody decided within the request's time to live.
    Expired,
    Revoked,
    /// Withdrawn by the requester.
    Cancelled,
    /// The access window ran out.
    Completed,
}

pub const STATUS_NAMES: &str = "pending_internal, pending_customer, pending, approved, active, denied, expired, revoked, cancelled, completed";

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::PendingInternal => "pending_internal",
            RequestStatus::PendingCustomer => "pending_customer",
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Active => "active",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
            RequestStatus::Revoked => "revoked",
            RequestStatus::Cancelled => "cancelled",
            RequestStatus::Completed => "completed",
        }
    }

    /// Waiting for someone to decide.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            RequestStatus::PendingInternal
                | RequestStatus::PendingCustomer
                | RequestStatus::Pending
        )
    }

    /// Whether a request in this (effective) status is listed under the filter `self`:
    /// `pending` takes both pending stages, `approved` includes `active`.
    pub fn includes(self, status: RequestStatus) -> bool {
        match self {
            RequestStatus::Pending => status.is_pending(),
            RequestStatus::Approved => {
                matches!(status, RequestStatus::Approved | RequestStatus::Active)
            }
            other => other == status,
        }
    }

    /// Nothing more can happen to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RequestStatus::Denied
                | RequestStatus::Expired
                | RequestStatus::Revoked
                | RequestStatus::Cancelled
                | RequestStatus::Completed
        )
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
            "pending_internal" => RequestStatus::PendingInternal,
            "pending_customer" => RequestStatus::PendingCustomer,
            "pending" => RequestStatus::Pending,
            "approved" => RequestStatus::Approved,
            "active" => RequestStatus::Active,
            "denied" => RequestStatus::Denied,
            "expired" => RequestStatus::Expired,
            "revoked" => RequestStatus::Revoked,
            "cancelled" => RequestStatus::Cancelled,
            "completed" => RequestStatus::Completed,
            other => return Err(format!("unknown status `{other}` ({STATUS_NAMES})")),
        })
    }
}

/// Why the engineer needs access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCategory {
    Incident,
    ServiceRequest,
    Maintenance,
    Investigation,
    #[default]
    Other,
}

impl FromStr for ReasonCategory {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            format!("unknown reason category `{s}` (incident, service_request, maintenance, investigation, other)")
        })
    }
}

/// The two approval stages: the provider's own, then the customer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Internal,
    Customer,
}

/// One approver's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
    pub stage: Stage,
    pub approved: bool,
    pub justification: String,
    pub at: DateTime<Utc>,
    /// The window this approver shortened the grant to, if they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortened_to_secs: Option<u64>,
}

/// One change of state: who, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: Option<RequestStatus>,
    pub to: RequestStatus,
    pub by: String,
    pub at: DateTime<Utc>,
    pub reason: Option<String>,
}

/// An access request and, once approved, its grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    pub engineer: String,
    pub database: String,
    /// Support ticket id, or `provider-initiated`.
    pub ticket: String,
    pub reason: String,
    #[serde(default)]
    pub reason_category: ReasonCategory,
    pub access: AccessLevel,
    pub duration_secs: u64,
    pub status: RequestStatus,
    pub created_at: DateTime<Utc>,
    /// When a pending request expires unanswered.
    pub request_expires_at: DateTime<Utc>,
    /// Earliest start of the access window the requester asked for.
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// The requester's credential carried multi-factor authentication.
    #[serde(default)]
    pub requester_mfa: bool,
    /// Approvals the rules require, per stage, and who gives the internal ones.
    #[serde(default)]
    pub internal_required: u32,
    #[serde(default = "default_internal_role")]
    pub internal_role: Role,
    #[serde(default = "one")]
    pub customer_required: u32,
    /// JIT rules that matched, and the duration asked for if one capped it.
    #[serde(default)]
    pub rules_applied: Vec<String>,
    #[serde(default)]
    pub requested_duration_secs: Option<u64>,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    #[serde(default)]
    pub history: Vec<Transition>,
    /// Last decider (kept for readers of earlier versions).
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision_reason: Option<String>,
    /// The access window, set on approval.
    #[serde(default)]
    pub access_starts_at: Option<DateTime<Utc>>,
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
    /// Per-grant limits: most sessions open at once (through one proxy; the grant's
    /// database role is given the same `CONNECTION LIMIT`, which holds across proxies).
    #[serde(default)]
    pub max_sessions: Option<u32>,
    /// This request asks to extend that (active) request's window.
    #[serde(default)]
    pub extends: Option<RequestId>,
    /// Emergency access granted without approvals; reviewed afterwards.
    #[serde(default)]
    pub break_glass: bool,
    #[serde(default)]
    pub acknowledged_by: Option<String>,
    #[serde(default)]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// Bumped on every change; updates are compare-and-set on it.
    #[serde(default)]
    pub version: u64,
}

fn default_internal_role() -> Role {
    Role::SupportLead
}

fn one() -> u32 {
    1
}

impl Request {
    /// The status as of `now`, counting deadlines that passed but were not yet recorded
    /// and whether an approved window is open.
    pub fn effective_status(&self, now: DateTime<Utc>) -> RequestStatus {
        match self.status {
            s if s.is_pending() && now >= self.request_expires_at => RequestStatus::Expired,
            RequestStatus::Pending => RequestStatus::PendingCustomer,
            RequestStatus::Approved | RequestStatus::Active => {
                if self.access_expires_at.is_some_and(|end| now >= end) {
                    RequestStatus::Completed
                } else if self.access_starts_at.is_none_or(|start| now >= start) {
                    RequestStatus::Active
                } else {
                    RequestStatus::Approved
                }
            }
            status => status,
        }
    }

    /// The stage waiting for decisions, if any.
    pub fn stage(&self, now: DateTime<Utc>) -> Option<Stage> {
        match self.effective_status(now) {
            RequestStatus::PendingInternal => Some(Stage::Internal),
            RequestStatus::PendingCustomer => Some(Stage::Customer),
            _ => None,
        }
    }

    /// Approvals given so far in `stage`.
    pub fn approvals_in(&self, stage: Stage) -> u32 {
        self.approvals
            .iter()
            .filter(|a| a.stage == stage && a.approved)
            .count() as u32
    }

    /// The grant's own limits in words (`statement timeout 300ms, max sessions 2`), none
    /// if it has none: what an approver agrees to, beside the level and the window.
    pub fn limits(&self) -> Option<String> {
        let mut limits = Vec::new();
        if let Some(ms) = self.statement_timeout_ms {
            let timeout = humantime::format_duration(std::time::Duration::from_millis(ms));
            limits.push(format!("statement timeout {timeout}"));
        }
        if let Some(rows) = self.max_rows {
            limits.push(format!("max rows {rows}"));
        }
        if let Some(sessions) = self.max_sessions {
            limits.push(format!("max sessions {sessions}"));
        }
        (!limits.is_empty()).then(|| limits.join(", "))
    }

    /// Most sessions the grant may have open at once: its own limit, within `ceiling`
    /// (`[proxy] max_sessions_per_grant`), whichever is lower; none if neither is set.
    pub fn session_limit(&self, ceiling: Option<u32>) -> Option<u32> {
        match (self.max_sessions, ceiling) {
            (Some(own), Some(most)) => Some(own.min(most)),
            (own, most) => own.or(most),
        }
    }

    /// Everyone who approved, in order.
    pub fn approvers(&self) -> Vec<&str> {
        self.approvals
            .iter()
            .filter(|a| a.approved)
            .map(|a| a.by.as_str())
            .collect()
    }

    /// Moves to `to`, noting who and why.
    pub fn transition(
        &mut self,
        to: RequestStatus,
        by: &str,
        at: DateTime<Utc>,
        reason: Option<&str>,
    ) {
        self.history.push(Transition {
            from: Some(self.status),
            to,
            by: by.to_owned(),
            at,
            reason: reason.map(str::to_owned),
        });
        self.status = to;
    }
}

/// What an engineer asks for.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct NewRequest {
    pub database: String,
    /// Support ticket id, or `provider-initiated`.
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
    /// Most sessions open at once, if limited.
    #[serde(default)]
    pub max_sessions: Option<u32>,
    #[serde(default)]
    pub reason_category: Option<ReasonCategory>,
    /// Earliest start of the window (RFC 3339); at approval when absent.
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// Emergency access (only where the policy allows it, for its roles).
    #[serde(default)]
    pub break_glass: bool,
}
