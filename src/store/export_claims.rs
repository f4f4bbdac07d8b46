//! Who runs a scheduled export right now: one node at a time holds a schedule's claim, a
//! lease it renews while the run goes on. A node that dies mid-run stops renewing, so its
//! claim lapses and the next node to find the run due takes it over. On SQLite (one node)
//! the same table keeps two runs of one schedule apart.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::{Backend, Store, StoreError};

pub(super) fn create_tables(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS export_claims (
             schedule TEXT PRIMARY KEY,
             node TEXT NOT NULL,
             claimed_until INTEGER NOT NULL
         );",
    )?;
    Ok(())
}

impl Store {
    /// Claims (or renews) the run of `schedule` for `node` until `now + lease`. False when
    /// another node holds a claim that has not lapsed at `now`.
    pub async fn claim_export_run(
        &self,
        schedule: &str,
        node: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<bool, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.claim_export_run(schedule, node, now, lease).await;
        }
        let (schedule, node) = (schedule.to_owned(), node.to_owned());
        let until = (now + lease).timestamp_millis();
        self.with(move |c| {
            let claimed = c.execute(
                "INSERT INTO export_claims (schedule, node, claimed_until) VALUES (?1, ?2, ?3)
                 ON CONFLICT (schedule) DO UPDATE
                   SET node = excluded.node, claimed_until = excluded.claimed_until
                 WHERE export_claims.node = excluded.node
                    OR export_claims.claimed_until <= ?4",
                params![schedule, node, until, now.timestamp_millis()],
            )?;
            Ok(claimed == 1)
        })
        .await
    }

    /// Lets go of `node`'s claim on `schedule`; another node's claim stays.
    pub async fn release_export_run(&self, schedule: &str, node: &str) -> Result<(), StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.release_export_run(schedule, node).await;
        }
        let (schedule, node) = (schedule.to_owned(), node.to_owned());
        self.with(move |c| {
            c.execute(
                "DELETE FROM export_claims WHERE schedule = ?1 AND node = ?2",
                params![schedule, node],
            )?;
            Ok(())
        })
        .await
    }
}
