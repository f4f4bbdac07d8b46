//! Export schedules and their runs on PostgreSQL (see `store/exports.rs` for SQLite):
//! the watermark moves compare-and-set in the transaction that records the run. Each node
//! exports its own trail, so a schedule's watermark is this node's
//! (`lockbox_export_watermarks`), and a run is claimed by one node at a time
//! (`lockbox_export_claims`, a lease the running node renews).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::super::exports::{
    run_of, schedule_of, to_sql, ExportRun, ExportSchedule, RunStatus, RunSummary,
};
use super::super::StoreError;
use super::pool;
use super::PgStore;

impl PgStore {
    pub(crate) async fn insert_export_schedule(
        &self,
        schedule: &ExportSchedule,
    ) -> Result<bool, StoreError> {
        pool::bounded(async {
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
        })
        .await
    }

    pub(crate) async fn export_schedule(
        &self,
        name: &str,
    ) -> Result<Option<ExportSchedule>, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let row = conn
                .query_opt(
                    "SELECT s.body, coalesce(w.watermark, 0) FROM lockbox_export_schedules s
                     LEFT JOIN lockbox_export_watermarks w ON w.schedule = s.name AND w.node = $2
                     WHERE s.name = $1",
                    &[&name, &self.node],
                )
                .await?;
            row.map(|r| schedule_of(r.try_get(0)?, r.try_get(1)?))
                .transpose()
        })
        .await
    }

    pub(crate) async fn export_schedules(&self) -> Result<Vec<ExportSchedule>, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let rows = conn
                .query(
                    "SELECT s.body, coalesce(w.watermark, 0) FROM lockbox_export_schedules s
                     LEFT JOIN lockbox_export_watermarks w ON w.schedule = s.name AND w.node = $1
                     ORDER BY s.created_at, s.name",
                    &[&self.node],
                )
                .await?;
            rows.iter()
                .map(|r| schedule_of(r.try_get(0)?, r.try_get(1)?))
                .collect()
        })
        .await
    }

    pub(crate) async fn export_runs(
        &self,
        schedule: &str,
        limit: usize,
    ) -> Result<Vec<ExportRun>, StoreError> {
        pool::bounded(async {
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
        })
        .await
    }

    pub(crate) async fn export_run_summaries(
        &self,
    ) -> Result<HashMap<String, RunSummary>, StoreError> {
        pool::bounded(async {
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
        })
        .await
    }

    pub(crate) async fn record_export_run(&self, run: &ExportRun) -> Result<bool, StoreError> {
        pool::bounded(async {
            let mut conn = self.pool.get().await?;
            let tx = conn.transaction().await?;
            if run.status == RunStatus::Ok {
                // A node without a row is at 0: only a run from 0 may create its row.
                let statement = if run.after_seq == 0 {
                    "INSERT INTO lockbox_export_watermarks (schedule, node, watermark)
                     VALUES ($2, $4, $1)
                     ON CONFLICT (schedule, node) DO UPDATE SET watermark = EXCLUDED.watermark
                     WHERE lockbox_export_watermarks.watermark = $3"
                } else {
                    "UPDATE lockbox_export_watermarks SET watermark = $1
                     WHERE schedule = $2 AND watermark = $3 AND node = $4"
                };
                let moved = tx
                    .execute(
                        statement,
                        &[
                            &to_sql(run.through_seq),
                            &run.schedule,
                            &to_sql(run.after_seq),
                            &self.node,
                        ],
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
        })
        .await
    }

    /// Claims the run of `schedule` for `node` until `now + lease`: true when no other
    /// node holds a claim that is still running at `now` (a lapsed one is taken over). The
    /// node holding it renews it the same way.
    pub(crate) async fn claim_export_run(
        &self,
        schedule: &str,
        node: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<bool, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let until = (now + lease).timestamp_millis();
            let claimed = conn
                .execute(
                    "INSERT INTO lockbox_export_claims (schedule, node, claimed_until)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (schedule) DO UPDATE
                       SET node = EXCLUDED.node, claimed_until = EXCLUDED.claimed_until
                     WHERE lockbox_export_claims.node = EXCLUDED.node
                        OR lockbox_export_claims.claimed_until <= $4",
                    &[&schedule, &node, &until, &now.timestamp_millis()],
                )
                .await?;
            Ok(claimed == 1)
        })
        .await
    }

    /// Lets go of `node`'s claim on `schedule` (another node's is left alone).
    pub(crate) async fn release_export_run(
        &self,
        schedule: &str,
        node: &str,
    ) -> Result<(), StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            conn.execute(
                "DELETE FROM lockbox_export_claims WHERE schedule = $1 AND node = $2",
                &[&schedule, &node],
            )
            .await?;
            Ok(())
        })
        .await
    }
}
