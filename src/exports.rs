//! Scheduled exports: admins set up data packages (what, where, how often); the scheduler
//! runs the due ones and `run_now` runs one at once. Each run exports the records after
//! the schedule's watermark up to the trail's head, renames its folder into place, and
//! only then moves the watermark (with the history entry, in one transaction). A failed
//! run moves nothing, so the next run starts from the same place: no gaps, no duplicates.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::audit::chain::CheckpointSigner;
use crate::audit::export::{
    self, ExportFormat, ExportRequest, Manifest, Witnessing, MANIFEST_FILE,
};
use crate::audit::witness;
use crate::audit::{AuditEvent, ExportEvent, ExportRecord};
use crate::config::User;
use crate::policy::{self, PolicyError};
use crate::service::{Lockbox, ServiceError, SYSTEM_ACTOR};
use crate::store::{ExportRun, ExportSchedule, RunStatus, StoreError};

mod claim;
use claim::{node_target, StoreClaim};

/// How often the scheduler looks for due exports.
const TICK: Duration = Duration::from_secs(1);
/// The shortest interval a schedule may have.
const MIN_EVERY: Duration = Duration::from_secs(1);
/// Runs shown by `history`.
const HISTORY_LIMIT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ExportsError {
    #[error("no export named `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<PolicyError> for ExportsError {
    fn from(e: PolicyError) -> Self {
        ExportsError::Service(e.into())
    }
}

impl From<StoreError> for ExportsError {
    fn from(e: StoreError) -> Self {
        ExportsError::Service(e.into())
    }
}

impl From<crate::audit::AuditError> for ExportsError {
    fn from(e: crate::audit::AuditError) -> Self {
        ExportsError::Service(e.into())
    }
}

/// A new scheduled export, as an admin asks for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewExport {
    pub name: String,
    pub database: Option<String>,
    pub format: ExportFormat,
    /// Absolute folder on the server's machine.
    pub to: String,
    /// `1h`, `1d`, …
    pub every: String,
}

/// A schedule as the data export page lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportStatus {
    #[serde(flatten)]
    pub schedule: ExportSchedule,
    pub last_status: Option<RunStatus>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// When data was last exported (the newest successful run).
    pub last_exported_at: Option<DateTime<Utc>>,
    /// Runs in the history.
    pub runs: u64,
    pub next_run_at: DateTime<Utc>,
}

pub struct Exports {
    lockbox: Arc<Lockbox>,
    signer: Option<Arc<CheckpointSigner>>,
    running: Mutex<HashSet<String>>,
    /// Set at shutdown: a run in progress stops and leaves nothing behind.
    cancel: Arc<AtomicBool>,
}

/// Removes a schedule from the running set when its run ends, however it ends.
struct Claim<'a> {
    running: &'a Mutex<HashSet<String>>,
    name: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.running.lock() {
            set.remove(&self.name);
        }
    }
}

impl Exports {
    pub fn new(lockbox: Arc<Lockbox>) -> Arc<Exports> {
        // Manifests are signed with the key that signs checkpoints, when it can be read.
        let signer = std::fs::read_to_string(&lockbox.config().signing_key_path)
            .ok()
            .and_then(|pem| CheckpointSigner::from_pem(&pem).ok())
            .map(Arc::new);
        Arc::new(Exports {
            lockbox,
            signer,
            running: Mutex::new(HashSet::new()),
            cancel: Arc::new(AtomicBool::new(false)),
        })
    }

    pub async fn create(
        &self,
        caller: &User,
        new: NewExport,
    ) -> Result<ExportStatus, ExportsError> {
        policy::check_export_admin(caller)?;
        let schedule = self.validate(caller, new)?;
        if self
            .lockbox
            .store
            .export_schedule(&schedule.name)
            .await?
            .is_some()
        {
            return Err(conflict(format!(
                "an export named `{}` exists",
                schedule.name
            )));
        }
        self.lockbox
            .audit
            .append_durable(vec![export_event(
                &schedule,
                ExportEvent::ScheduleCreated,
                &caller.name,
                None,
            )])
            .await?;
        if !self.lockbox.store.insert_export_schedule(&schedule).await? {
            return Err(conflict(format!(
                "an export named `{}` exists",
                schedule.name
            )));
        }
        Ok(status_of(schedule, Default::default()))
    }

    fn validate(&self, caller: &User, new: NewExport) -> Result<ExportSchedule, ExportsError> {
        let valid_name = !new.name.is_empty()
            && new.name.len() <= 64
            && new
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(invalid("name: 1 to 64 letters, digits, `-` or `_`"));
        }
        if let Some(db) = &new.database {
            if !self.lockbox.config().databases.contains_key(db) {
                return Err(invalid(format!("database `{db}` is not configured")));
            }
        }
        if !Path::new(&new.to).is_absolute() {
            return Err(invalid(
                "to: must be an absolute folder on the lockbox server",
            ));
        }
        let every = humantime::parse_duration(new.every.trim()).map_err(|e| {
            invalid(format!(
                "every: `{}` is not a duration like 1h ({e})",
                new.every
            ))
        })?;
        if every < MIN_EVERY {
            return Err(invalid("every: must be at least 1s"));
        }
        Ok(ExportSchedule {
            name: new.name,
            database: new.database,
            format: new.format,
            target: new.to,
            every_secs: every.as_secs(),
            created_by: caller.name.clone(),
            created_at: Utc::now(),
            watermark: 0,
        })
    }

    pub async fn list(&self, caller: &User) -> Result<Vec<ExportStatus>, ExportsError> {
        policy::check_export_admin(caller)?;
        self.statuses().await
    }

    pub async fn history(&self, caller: &User, name: &str) -> Result<Vec<ExportRun>, ExportsError> {
        policy::check_export_admin(caller)?;
        self.schedule(name).await?;
        Ok(self.lockbox.store.export_runs(name, HISTORY_LIMIT).await?)
    }

    /// Runs `name` now, for an admin; the run's history entry, whatever became of it.
    pub async fn run_now(&self, caller: &User, name: &str) -> Result<ExportRun, ExportsError> {
        policy::check_export_admin(caller)?;
        self.schedule(name).await?;
        self.run(name, &caller.name, false)
            .await?
            .ok_or_else(|| conflict(format!("an export run of `{name}` is in progress")))
    }

    /// Runs every schedule whose time has come, one after the other.
    pub async fn run_due(&self) -> Result<(), ExportsError> {
        let now = Utc::now();
        for status in self.statuses().await? {
            if status.next_run_at > now || self.cancel.load(Ordering::Relaxed) {
                continue;
            }
            match self.run(&status.schedule.name, "schedule", true).await {
                Ok(_) => {}
                // A manual run of the same schedule is under way (here or on another
                // node): it does the work.
                Err(ExportsError::Service(ServiceError::Policy(PolicyError::Conflict(_)))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn statuses(&self) -> Result<Vec<ExportStatus>, ExportsError> {
        let mut summaries = self.lockbox.store.export_run_summaries().await?;
        let schedules = self.lockbox.store.export_schedules().await?;
        Ok(schedules
            .into_iter()
            .map(|s| {
                let summary = summaries.remove(&s.name).unwrap_or_default();
                status_of(s, summary)
            })
            .collect())
    }

    async fn schedule(&self, name: &str) -> Result<ExportSchedule, ExportsError> {
        self.lockbox
            .store
            .export_schedule(name)
            .await?
            .ok_or_else(|| ExportsError::NotFound(name.to_owned()))
    }

    fn claim(&self, name: &str) -> Result<Claim<'_>, ExportsError> {
        let mut set = self
            .running
            .lock()
            .map_err(|_| StoreError::Worker("export run lock poisoned".into()))?;
        if !set.insert(name.to_owned()) {
            return Err(conflict(format!(
                "an export run of `{name}` is in progress"
            )));
        }
        Ok(Claim {
            running: &self.running,
            name: name.to_owned(),
        })
    }

    /// One run of schedule `name`. Only one run of a schedule happens at a time on all
    /// nodes (a claim here, then one in the state store), and it starts from the stored
    /// watermark, read after the claims. `None` when `only_if_due` and another node ran it
    /// for this due time while this one waited for the claim.
    async fn run(
        &self,
        name: &str,
        trigger: &str,
        only_if_due: bool,
    ) -> Result<Option<ExportRun>, ExportsError> {
        let _claim = self.claim(name)?;
        let node = self.lockbox.config().node_id.clone();
        let Some(claim) = StoreClaim::take(&self.lockbox.store, name, &node).await? else {
            return Err(conflict(format!(
                "an export run of `{name}` is in progress on another node"
            )));
        };
        let result = claim
            .hold(self.run_claimed(name, trigger, only_if_due, &node))
            .await;
        claim.release().await;
        result
    }

    async fn run_claimed(
        &self,
        name: &str,
        trigger: &str,
        only_if_due: bool,
        node: &str,
    ) -> Result<Option<ExportRun>, ExportsError> {
        if only_if_due && !self.still_due(name).await? {
            return Ok(None);
        }
        let schedule = self.schedule(name).await?;
        let started_at = Utc::now();
        let mut run = ExportRun {
            id: 0,
            schedule: schedule.name.clone(),
            trigger: trigger.to_owned(),
            started_at,
            finished_at: started_at,
            status: RunStatus::NothingNew,
            after_seq: schedule.watermark,
            through_seq: schedule.watermark,
            records: 0,
            files: 0,
            path: None,
            error: None,
            node: Some(node.to_owned()),
        };
        let shared = self.lockbox.store.postgres_backend().is_some();
        let target = node_target(&schedule.target, node, shared);
        match self.export(&schedule, target).await {
            Ok(Some((path, manifest))) => {
                run.status = RunStatus::Ok;
                run.through_seq = manifest.through_seq.unwrap_or(schedule.watermark);
                run.records = manifest.records;
                run.files = manifest.files.len() as u64;
                run.path = Some(path);
            }
            Ok(None) => {}
            Err(message) => {
                run.status = RunStatus::Failed;
                run.error = Some(message);
            }
        }
        run.finished_at = Utc::now();
        if !self.lockbox.store.record_export_run(&run).await? {
            return Err(conflict(format!(
                "the watermark of `{}` moved during the run; its result was not recorded",
                schedule.name
            )));
        }
        self.audit_run(&schedule, &run).await;
        Ok(Some(run))
    }

    /// Whether `name` is still due, read after the claim: the node that held the claim
    /// before may have run it for this due time already.
    async fn still_due(&self, name: &str) -> Result<bool, ExportsError> {
        let now = Utc::now();
        Ok(self
            .statuses()
            .await?
            .iter()
            .any(|s| s.schedule.name == name && s.next_run_at <= now))
    }

    /// Exports after the watermark; `Ok(None)` when there was nothing new.
    async fn export(
        &self,
        schedule: &ExportSchedule,
        target: std::path::PathBuf,
    ) -> Result<Option<(String, Manifest)>, String> {
        let name = schedule.name.clone();
        let after = schedule.watermark;
        let request = ExportRequest {
            to: target,
            format: schedule.format,
            since: None,
            until: None,
            database: schedule.database.clone(),
            after_seq: Some(after),
            schedule: Some(schedule.name.clone()),
            created_by: schedule.created_by.clone(),
            witnessing: self.witnessing().await?,
        };
        let active = self.lockbox.audit.path().to_owned();
        let last_seq = *self.lockbox.audit.subscribe().borrow();
        let (signer, cancel) = (self.signer.clone(), self.cancel.clone());
        tokio::task::spawn_blocking(move || {
            // A run renamed into place just before a crash, whose watermark never moved, is
            // taken over instead of written again: that would export its records twice.
            let key = signer.as_deref().and_then(|s| s.public_key_pem().ok());
            if let Some(found) = committed_run(&request.to, &name, after, key.as_deref(), last_seq)
            {
                return Ok(Some(found));
            }
            export::export(&active, &request, signer.as_deref(), &mut |_| {}, &cancel)
                .map(|o| o.map(|o| (o.path.display().to_string(), o.manifest)))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("the export task failed: {e}"))?
    }

    /// The checkpoint the state store witnesses for this node's trail: read before the
    /// export's pass, which then finds it in the trail (the writer puts a checkpoint in the
    /// trail before it is witnessed).
    async fn witnessing(&self) -> Result<Witnessing, String> {
        let active = self.lockbox.audit.path();
        let kept = witness::kept(&self.lockbox.store, active)
            .await
            .map_err(|e| format!("reading the witnessed audit checkpoint: {e}"))?;
        Ok(Witnessing {
            witnesses: kept
                .map(|k| ("the state store".to_owned(), k))
                .into_iter()
                .collect(),
            ..Witnessing::default()
        })
    }

    async fn audit_run(&self, schedule: &ExportSchedule, run: &ExportRun) {
        let event = match run.status {
            RunStatus::Ok => ExportEvent::Completed,
            RunStatus::Failed => ExportEvent::Failed,
            // Nothing happened; a record saying so would itself be new for the next run.
            RunStatus::NothingNew => return,
        };
        let actor = if run.trigger == "schedule" {
            SYSTEM_ACTOR
        } else {
            &run.trigger
        };
        let record = export_event(schedule, event, actor, Some(run));
        if let Err(e) = self.lockbox.audit.append_durable(vec![record]).await {
            tracing::error!(schedule = %schedule.name, error = %e, "could not audit an export run");
        }
    }
}

/// A run folder of `name` starting right after `after`, complete with its manifest.
/// Only a run that verifies (with the deployment's key, its manifest's signature too) and
/// ends within the trail is taken over: an attack review planted an unsigned manifest
/// claiming records up to seq 999,999, and the schedule's watermark jumped there, so no
/// later record was ever exported.
fn committed_run(
    target: &Path,
    name: &str,
    after: u64,
    key: Option<&str>,
    last_seq: u64,
) -> Option<(String, Manifest)> {
    let prefix = export::scheduled_run_prefix(after);
    let entries = std::fs::read_dir(target).ok()?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        if !file_name.to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let path = entry.path();
        let manifest: Manifest = std::fs::read(path.join(MANIFEST_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())?;
        if manifest.schedule.as_deref() != Some(name) || manifest.selection.after_seq != Some(after)
        {
            continue;
        }
        let verified = export::verify_export(&path, key)
            .is_ok_and(|r| r.ok() && (key.is_none() || r.signature_verified));
        if verified
            && manifest
                .through_seq
                .is_some_and(|through| through <= last_seq)
        {
            tracing::warn!(path = %path.display(), "taking over an export run written before a restart");
            return Some((path.display().to_string(), manifest));
        }
    }
    None
}

fn export_event(
    schedule: &ExportSchedule,
    event: ExportEvent,
    actor: &str,
    run: Option<&ExportRun>,
) -> AuditEvent {
    AuditEvent::Export(ExportRecord {
        event,
        schedule: schedule.name.clone(),
        actor: actor.to_owned(),
        format: schedule.format.as_str().to_owned(),
        target: schedule.target.clone(),
        database: schedule.database.clone(),
        after_seq: run.map(|r| r.after_seq),
        through_seq: run.map(|r| r.through_seq),
        records: run.map(|r| r.records),
        path: run.and_then(|r| r.path.clone()),
        error: run.and_then(|r| r.error.clone()),
    })
}

fn status_of(schedule: ExportSchedule, summary: crate::store::RunSummary) -> ExportStatus {
    let every =
        chrono::Duration::seconds(i64::try_from(schedule.every_secs).unwrap_or(i64::MAX / 1000));
    let since = summary
        .last
        .as_ref()
        .map_or(schedule.created_at, |r| r.started_at);
    ExportStatus {
        next_run_at: since
            .checked_add_signed(every)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        last_status: summary.last.as_ref().map(|r| r.status),
        last_run_at: summary.last.as_ref().map(|r| r.started_at),
        last_error: summary.last.and_then(|r| r.error),
        last_exported_at: summary.last_ok.map(|r| r.finished_at),
        runs: summary.runs,
        schedule,
    }
}

fn invalid(message: impl Into<String>) -> ExportsError {
    PolicyError::Invalid(message.into()).into()
}

fn conflict(message: impl Into<String>) -> ExportsError {
    PolicyError::Conflict(message.into()).into()
}

/// Runs due exports until shutdown; a run in progress at shutdown is cancelled and leaves
/// nothing behind (its watermark stays, so the next start picks it up again).
pub async fn scheduler(exports: Arc<Exports>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                exports.cancel.store(true, Ordering::Relaxed);
                return;
            }
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = shutdown.changed() => {
                exports.cancel.store(true, Ordering::Relaxed);
                return;
            }
            result = exports.run_due() => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "scheduled export failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
