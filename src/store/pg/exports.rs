//! Export schedules and their runs on PostgreSQL (see `store/exports.rs` for SQLite):
//! the watermark moves compare-and-set in the transaction that records the run.

use std::collections::HashMap;

use super::super::exports::{
    run_of, schedule_of, to_sql, ExportRun, ExportSchedule, RunStatus, RunSummary,
};
use super::super::StoreError;
use super::PgStore;

impl PgStore {
    pub(crate) async fn insert_export_schedule(
        &self,
        schedule: &ExportSchedule,
    ) -> Result<bool, StoreError> {
        let conn = self.pool.get().await?;
        let changed = conn
            .execute(
                "INSERT INTO lockbox_export_schedules (name, watermark, created_at, body)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                &[
                    &schedule.name,
                    &to_sql(schedule.watermark),
                    &schedule.created_at.timestamp_millis(),
                    &serde_json::to_string(schedule)?,
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    pub(crate) async fn export_schedule(
        &self,
        name: &str,
    ) -> Result<Option<ExportSchedule>, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                "SELECT body, watermark FROM lockbox_export_schedules WHERE name = $1",
                &[&name],
            )
            .await?;
        row.map(|r| schedule_of(r.try_get(0)?, r.try_get(1)?))
            .transpose()
    }

    pub(crate) async fn export_schedules(&self) -> Result<Vec<ExportSchedule>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT body, watermark FROM lockbox_export_schedules ORDER BY created_at, name",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| schedule_of(r.try_get(0)?, r.try_get(1)?))
            .collect()
    }

    pub(crate) async fn export_runs(
        &self,
        schedule: &str,
        limit: usize,
    ) -> Result<Vec<ExportRun>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT id, body FROM lockbox_export_runs WHERE schedule = $1 ORDER BY id DESC LIMIT $2",
                &[&schedule, &to_sql(limit as u64)],
            )
            .await?;
        rows.iter()
            .map(|r| run_of(r.try_get(0)?, r.try_get(1)?))
            .collect()
    }

    pub(crate) async fn export_run_summaries(
        &self,
    ) -> Result<HashMap<String, RunSummary>, StoreError> {
        let conn = self.pool.get().await?;
        let mut out: HashMap<String, RunSummary> = HashMap::new();
        for row in conn
            .query(
                "SELECT schedule, COUNT(*) FROM lockbox_export_runs GROUP BY schedule",
                &[],
            )
            .await?
        {
            out.entry(row.try_get(0)?).or_default().runs =
                u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0);
        }
        for ok_only in [false, true] {
            let status: Option<&str> = ok_only.then_some(RunStatus::Ok.as_str());
            let rows = conn
                .query(
                    "SELECT id, body FROM lockbox_export_runs WHERE id IN
                       (SELECT MAX(id) FROM lockbox_export_runs
                        WHERE $1::text IS NULL OR status = $1 GROUP BY schedule)",
                    &[&status],
                )
                .await?;
            for row in rows {
                let run = run_of(row.try_get(0)?, row.try_get(1)?)?;
                let entry = out.entry(run.schedule.clone()).or_default();
                if ok_only {
                    entry.last_ok = Some(run);
                } else {
                    entry.last = Some(run);
                }
            }
        }
        Ok(out)
    }

    pub(crate) async fn record_export_run(&self, run: &ExportRun) -> Result<bool, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        if run.status == RunStatus::Ok {
            let moved = tx
                .execute(
                    "UPDATE lockbox_export_schedules SET watermark = $1 WHERE name = $2 AND watermark = $3",
                    &[&to_sql(run.through_seq), &run.schedule, &to_sql(run.after_seq)],
                )
                .await?;
            if moved != 1 {
                return Ok(false);
            }
        }
        tx.execute(
            "INSERT INTO lockbox_export_runs (schedule, status, body) VALUES ($1, $2, $3)",
            &[
                &run.schedule,
                &run.status.as_str(),
                &serde_json::to_string(run)?,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
