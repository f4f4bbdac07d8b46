//! Scheduled exports and their history. A schedule's watermark (the last sequence number
//! it exported) is its own column so a run can advance it compare-and-set, in the same
//! transaction that records the run: a run either moved the watermark and is in the
//! history as done, or did neither.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{Backend, Store, StoreError};
use crate::audit::export::ExportFormat;

pub(super) fn create_tables(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS export_schedules (
             name TEXT PRIMARY KEY,
             watermark INTEGER NOT NULL,
             created_at INTEGER NOT NULL,
             body TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS export_runs (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             schedule TEXT NOT NULL,
             status TEXT NOT NULL,
             body TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS export_runs_schedule ON export_runs (schedule, id);",
    )?;
    Ok(())
}

/// An export an admin set up: what goes where, how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSchedule {
    /// The data package's name.
    pub name: String,
    /// Only this database's records; all records when absent.
    pub database: Option<String>,
    pub format: ExportFormat,
    /// Folder on the server's machine that receives one folder per run.
    pub target: String,
    pub every_secs: u64,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Last sequence number exported (0: none yet). Kept in its own column.
    #[serde(default)]
    pub watermark: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Records were exported (or a run found on disk was taken over) and the watermark moved.
    Ok,
    /// The trail held nothing after the watermark.
    NothingNew,
    /// Nothing was written; the watermark stayed.
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::NothingNew => "nothing_new",
            RunStatus::Failed => "failed",
        }
    }
}

/// One run of a schedule, as its history shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRun {
    /// Assigned by the store.
    #[serde(default)]
    pub id: i64,
    pub schedule: String,
    /// `schedule` for the scheduler, or the admin who ran it.
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub status: RunStatus,
    pub after_seq: u64,
    /// The watermark after the run.
    pub through_seq: u64,
    pub records: u64,
    pub files: u64,
    pub path: Option<String>,
    pub error: Option<String>,
    /// The node that ran it (whose trail it exported); absent in runs recorded before
    /// nodes shared a store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The newest run, the newest successful run and the number of runs of a schedule.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub last: Option<ExportRun>,
    pub last_ok: Option<ExportRun>,
    pub runs: u64,
}

impl Store {
    /// False if a schedule of that name exists.
    pub async fn insert_export_schedule(
        &self,
        schedule: &ExportSchedule,
    ) -> Result<bool, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.insert_export_schedule(schedule).await;
        }
        let schedule = schedule.clone();
        self.with(move |c| {
            let changed = c.execute(
                "INSERT OR IGNORE INTO export_schedules (name, watermark, created_at, body) VALUES (?1, ?2, ?3, ?4)",
                params![
                    schedule.name,
                    to_sql(schedule.watermark),
                    schedule.created_at.timestamp_millis(),
                    serde_json::to_string(&schedule)?
                ],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    pub async fn export_schedule(&self, name: &str) -> Result<Option<ExportSchedule>, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.export_schedule(name).await;
        }
        let name = name.to_owned();
        self.with(move |c| {
            let row: Option<(String, i64)> = c
                .query_row(
                    "SELECT body, watermark FROM export_schedules WHERE name = ?1",
                    [name],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            row.map(|(body, watermark)| schedule_of(&body, watermark))
                .transpose()
        })
        .await
    }

    pub async fn export_schedules(&self) -> Result<Vec<ExportSchedule>, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.export_schedules().await;
        }
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT body, watermark FROM export_schedules ORDER BY created_at, name",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (body, watermark) = row?;
                out.push(schedule_of(&body, watermark)?);
            }
            Ok(out)
        })
        .await
    }

    /// The runs of `schedule`, newest first, at most `limit`.
    pub async fn export_runs(
        &self,
        schedule: &str,
        limit: usize,
    ) -> Result<Vec<ExportRun>, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.export_runs(schedule, limit).await;
        }
        let schedule = schedule.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, body FROM export_runs WHERE schedule = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![schedule, to_sql(limit as u64)], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, body) = row?;
                out.push(run_of(id, &body)?);
            }
            Ok(out)
        })
        .await
    }

    /// Per schedule: its newest run, newest successful run and run count.
    pub async fn export_run_summaries(&self) -> Result<HashMap<String, RunSummary>, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.export_run_summaries().await;
        }
        self.with(|c| {
            let mut out: HashMap<String, RunSummary> = HashMap::new();
            let mut counts = c.prepare("SELECT schedule, COUNT(*) FROM export_runs GROUP BY schedule")?;
            for row in counts.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (name, n) = row?;
                out.entry(name).or_default().runs = u64::try_from(n).unwrap_or(0);
            }
            let newest = |status: Option<&str>| -> Result<Vec<ExportRun>, StoreError> {
                let mut stmt = c.prepare(
                    "SELECT id, body FROM export_runs WHERE id IN
                       (SELECT MAX(id) FROM export_runs WHERE ?1 IS NULL OR status = ?1 GROUP BY schedule)",
                )?;
                let rows = stmt.query_map([status], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
                let mut runs = Vec::new();
                for row in rows {
                    let (id, body) = row?;
                    runs.push(run_of(id, &body)?);
                }
                Ok(runs)
            };
            for run in newest(None)? {
                let name = run.schedule.clone();
                out.entry(name).or_default().last = Some(run);
            }
            for run in newest(Some(RunStatus::Ok.as_str()))? {
                let name = run.schedule.clone();
                out.entry(name).or_default().last_ok = Some(run);
            }
            Ok(out)
        })
        .await
    }

    /// Records `run` and, for a successful run, moves the schedule's watermark from
    /// `run.after_seq` to `run.through_seq` in the same transaction. False (and nothing
    /// recorded) if the watermark was no longer `run.after_seq`.
    pub async fn record_export_run(&self, run: &ExportRun) -> Result<bool, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.record_export_run(run).await;
        }
        let run = run.clone();
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            if run.status == RunStatus::Ok {
                let moved = tx.execute(
                    "UPDATE export_schedules SET watermark = ?1 WHERE name = ?2 AND watermark = ?3",
                    params![to_sql(run.through_seq), run.schedule, to_sql(run.after_seq)],
                )?;
                if moved != 1 {
                    return Ok(false);
                }
            }
            tx.execute(
                "INSERT INTO export_runs (schedule, status, body) VALUES (?1, ?2, ?3)",
                params![
                    run.schedule,
                    run.status.as_str(),
                    serde_json::to_string(&run)?
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}

/// SQLite integers are signed; sequence numbers never get near the top bit.
pub(super) fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn schedule_of(body: &str, watermark: i64) -> Result<ExportSchedule, StoreError> {
    let mut schedule: ExportSchedule = serde_json::from_str(body)?;
    schedule.watermark = u64::try_from(watermark).unwrap_or(0);
    Ok(schedule)
}

pub(super) fn run_of(id: i64, body: &str) -> Result<ExportRun, StoreError> {
    let mut run: ExportRun = serde_json::from_str(body)?;
    run.id = id;
    Ok(run)
}
