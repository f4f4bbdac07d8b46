//! Administration: the lockbox policy (which databases need customer approval) and
//! reloading the configuration without dropping live sessions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Lockbox, ServiceError};
use crate::audit::{AdminEvent, AdminRecord, AuditEvent};
use crate::config::{Config, ConfigError, User};
use crate::policy::rules::Protection;
use crate::policy::{self, PolicyError};

/// Store key of the protection chosen at run time (`lockbox policy set`).
const PROTECTION_KEY: &str = "protection";
/// Store key of the protection the configuration file asked for when last read: a
/// changed file wins over an older run-time choice, an unchanged one does not.
const FILE_PROTECTION_KEY: &str = "protection_from_file";

/// The protection in force, who set it and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    /// `all`, `none` or `DB,DB…`.
    pub protect: String,
    /// Configured databases that need customer approval now.
    pub protected_databases: Vec<String>,
    pub unprotected_databases: Vec<String>,
    pub changed_by: String,
    pub changed_at: Option<DateTime<Utc>>,
    pub break_glass: bool,
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredProtection {
    protection: Protection,
    changed_by: String,
    changed_at: DateTime<Utc>,
}

/// What a reload changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReport {
    pub databases: usize,
    pub users: usize,
    pub rules: usize,
    /// Settings that differ in the file but only take effect after a restart.
    pub needs_restart: Vec<String>,
}

impl Lockbox {
    /// The protection in force: the latest of the file's and a run-time choice.
    pub async fn protection(&self) -> Result<Protection, ServiceError> {
        Ok(match self.stored_protection().await? {
            Some(stored) => stored.protection,
            None => self.config().protection.clone(),
        })
    }

    async fn stored_protection(&self) -> Result<Option<StoredProtection>, ServiceError> {
        let Some(text) = self.store.setting(PROTECTION_KEY).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_str(&text).map_err(crate::store::StoreError::from)?)
    }

    pub async fn policy_view(&self) -> Result<PolicyView, ServiceError> {
        let config = self.config();
        let stored = self.stored_protection().await?;
        let protection = stored
            .as_ref()
            .map(|s| s.protection.clone())
            .unwrap_or_else(|| config.protection.clone());
        let (protected, unprotected): (Vec<String>, Vec<String>) = config
            .databases
            .keys()
            .cloned()
            .partition(|d| protection.protects(d));
        Ok(PolicyView {
            protect: protection.describe(),
            protected_databases: protected,
            unprotected_databases: unprotected,
            changed_by: stored
                .as_ref()
                .map_or_else(|| "configuration file".into(), |s| s.changed_by.clone()),
            changed_at: stored.map(|s| s.changed_at),
            break_glass: config.break_glass.is_some(),
            rules: config.rules.iter().map(|r| r.name.clone()).collect(),
        })
    }

    /// `lockbox policy set --protect …`: takes effect for new requests at once; audited.
    pub async fn set_protection(
        &self,
        caller: &User,
        protect: &str,
    ) -> Result<PolicyView, ServiceError> {
        policy::check_policy_change(caller)?;
        let protection = Protection::parse(protect).map_err(PolicyError::Invalid)?;
        crate::config::workflow::check_known("protect", &protection, &self.config().databases)
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        self.record_protection(&caller.name, protection).await?;
        self.policy_view().await
    }

    /// Stores and records a protection change (the record first: fail closed).
    async fn record_protection(
        &self,
        actor: &str,
        protection: Protection,
    ) -> Result<(), ServiceError> {
        let before = self.protection().await?;
        self.audit
            .append_durable(vec![AuditEvent::Admin(AdminRecord {
                event: AdminEvent::PolicyChanged,
                actor: actor.to_owned(),
                detail: serde_json::json!({
                    "protect_before": before.describe(),
                    "protect": protection.describe(),
                }),
            })])
            .await?;
        let stored = StoredProtection {
            protection,
            changed_by: actor.to_owned(),
            changed_at: Utc::now(),
        };
        let text = serde_json::to_string(&stored).map_err(crate::store::StoreError::from)?;
        self.store.set_setting(PROTECTION_KEY, &text).await?;
        Ok(())
    }

    /// At start and after a reload: if the file's protection changed since it was last
    /// read, it becomes the protection in force (an audited change by `actor`).
    pub async fn adopt_file_protection(
        &self,
        actor: &str,
        from_file: &Protection,
    ) -> Result<(), ServiceError> {
        let from_file = from_file.clone();
        let text = serde_json::to_string(&from_file).map_err(crate::store::StoreError::from)?;
        let last_seen = self.store.setting(FILE_PROTECTION_KEY).await?;
        if last_seen.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        if last_seen.is_some() || self.stored_protection().await?.is_some() {
            self.record_protection(actor, from_file).await?;
        }
        self.store.set_setting(FILE_PROTECTION_KEY, &text).await?;
        Ok(())
    }

    /// Re-reads the configuration file. An invalid file is refused with the reason and
    /// the running configuration stays; a valid one replaces it for everything that
    /// follows (new requests, logins, API keys). Live sessions keep the grant they were
    /// admitted with.
    pub async fn reload(&self, actor: &str) -> Result<ReloadReport, ServiceError> {
        let Some(path) = self.config_path.clone() else {
            return Err(PolicyError::Conflict(
                "this server was not started from a configuration file".into(),
            )
            .into());
        };
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| ServiceError::Token(e.to_string()))?;
        let mut next = match loaded {
            Ok(next) => next,
            Err(e) => return Err(self.reject_reload(actor, e).await),
        };
        // A database that insists on per-grant roles its service role cannot make is as
        // wrong as a bad key: the running configuration stays.
        if let Err(e) = self.provisioner.check_explicit(&next).await {
            return Err(self.reject_reload(actor, e).await);
        }
        let current = self.config();
        let needs_restart = keep_fixed_settings(&current, &mut next);
        let report = ReloadReport {
            databases: next.databases.len(),
            users: next.users.len(),
            rules: next.rules.len(),
            needs_restart,
        };
        let _epoch = super::within_bound("the reload", self.config_epoch.write()).await?;
        self.audit
            .append_durable(vec![AuditEvent::Admin(AdminRecord {
                event: AdminEvent::ConfigReloaded,
                actor: actor.to_owned(),
                detail: serde_json::to_value(&report).unwrap_or_default(),
            })])
            .await?;
        // Adopted before the swap: if recording it fails, the old configuration stays whole.
        self.adopt_file_protection(actor, &next.protection).await?;
        self.config.store(std::sync::Arc::new(next));
        tracing::info!(actor, "configuration reloaded");
        Ok(report)
    }

    /// Records a refused reload; the error to return (the record's, if that failed).
    async fn reject_reload(&self, actor: &str, error: ConfigError) -> ServiceError {
        let recorded = self
            .audit
            .append_durable(vec![AuditEvent::Admin(AdminRecord {
                event: AdminEvent::ConfigReloadRejected,
                actor: actor.to_owned(),
                detail: serde_json::json!({ "error": error.to_string() }),
            })])
            .await;
        match recorded {
            Ok(_) => error.into(),
            Err(e) => e.into(),
        }
    }
}

/// Settings a running server cannot change (listeners, files it holds open, the signing
/// key) keep their running values; their names are returned if the file changed them.
fn keep_fixed_settings(current: &Config, next: &mut Config) -> Vec<String> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($field:ident, $name:literal) => {
            if current.$field != next.$field {
                changed.push($name.to_owned());
                next.$field = current.$field.clone();
            }
        };
    }
    keep!(proxy_listen, "proxy.listen");
    keep!(api_listen, "api.listen");
    keep!(api_tls, "api.tls_cert");
    keep!(state_path, "state.sqlite_path");
    keep!(state_postgres, "state.url");
    keep!(node_id, "node.id");
    keep!(audit_path, "audit.path");
    keep!(audit_durability, "audit.durability");
    keep!(audit_sync_interval, "audit.sync_interval");
    keep!(audit_rotate_size, "audit.rotate_size");
    keep!(audit_rotate_interval, "audit.rotate_interval");
    keep!(audit_clip, "audit.max_field_bytes");
    keep!(signing_key_path, "token.signing_key");
    keep!(issuer, "token.issuer");
    keep!(audience, "token.audience");
    keep!(allow_plaintext_loopback, "proxy.allow_plaintext_loopback");
    keep!(max_message_size, "proxy.max_message_size");
    changed
}
