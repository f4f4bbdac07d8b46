//! The notification outbox on PostgreSQL (see `notify/outbox.rs`). A node takes due
//! deliveries with `FOR UPDATE SKIP LOCKED` and a claim that lapses (`CLAIM`), so each
//! delivery is attempted by one node at a time, and one that died mid-delivery leaves it
//! to another once its claim ran out.

use chrono::{DateTime, Utc};

use super::super::StoreError;
use super::pool;
use super::{millis, PgStore};
use crate::notify::outbox::{Delivery, NewDelivery};

/// How long a node's claim on a delivery holds: twice the longest attempt
/// (`notify::ATTEMPT_LIMIT`), so a live node's attempt is never taken over, while a dead
/// node's delivery goes out from another node within half a minute.
const CLAIM: chrono::Duration = chrono::Duration::seconds(30);
const _: () = assert!(CLAIM.num_seconds() >= 2 * crate::notify::ATTEMPT_LIMIT.as_secs() as i64);

const COLUMNS: &str = "id, channel, target, event, request_id, status, attempts, next_attempt_at, last_error, created_at, delivered_at, payload";

fn delivery(r: &tokio_postgres::Row) -> Result<Delivery, tokio_postgres::Error> {
    Ok(Delivery {
        id: r.try_get(0)?,
        channel: r.try_get(1)?,
        target: r.try_get(2)?,
        event: r.try_get(3)?,
        request_id: r.try_get(4)?,
        status: r.try_get(5)?,
        attempts: u32::try_from(r.try_get::<_, i32>(6)?).unwrap_or(0),
        next_attempt_at: millis(r.try_get(7)?),
        last_error: r.try_get(8)?,
        created_at: millis(r.try_get(9)?),
        delivered_at: r.get::<_, Option<i64>>(10).map(millis),
        payload: r.try_get(11)?,
    })
}

impl PgStore {
    pub(crate) async fn enqueue(&self, list: Vec<NewDelivery>) -> Result<(), StoreError> {
        pool::bounded(async {
            let mut conn = self.pool.get().await?;
            let tx = conn.transaction().await?;
            let now = Utc::now().timestamp_millis();
            for d in list {
                tx.execute(
                    "INSERT INTO lockbox_notifications (channel, target, event, request_id, status, attempts, next_attempt_at, created_at, payload)
                     VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $6)",
                    &[&d.channel, &d.target, &d.event, &d.request_id, &now, &d.payload],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Claims at most `limit` of the due deliveries no other node holds, for `node`.
    pub(crate) async fn claim_due(
        &self,
        now: DateTime<Utc>,
        node: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let limit = i64::try_from(limit.min(100)).unwrap_or(100);
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let now_ms = now.timestamp_millis();
            let until = (now + CLAIM).timestamp_millis();
            let rows = conn
                .query(
                    &format!(
                        "UPDATE lockbox_notifications SET claimed_by = $2, claimed_until = $3
                     WHERE id IN (
                         SELECT id FROM lockbox_notifications
                         WHERE status = 'pending' AND next_attempt_at <= $1
                           AND (claimed_until IS NULL OR claimed_until <= $1)
                         ORDER BY id LIMIT $4
                         FOR UPDATE SKIP LOCKED)
                     RETURNING {COLUMNS}"
                    ),
                    &[&now_ms, &node, &until, &limit],
                )
                .await?;
            let mut out = rows.iter().map(delivery).collect::<Result<Vec<_>, _>>()?;
            out.sort_by_key(|d| d.id);
            Ok(out)
        })
        .await
    }

    /// When the next pending delivery no node holds is due.
    pub(crate) async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let row = conn
                .query_one(
                    "SELECT MIN(GREATEST(next_attempt_at, COALESCE(claimed_until, 0)))
                     FROM lockbox_notifications WHERE status = 'pending'",
                    &[],
                )
                .await?;
            Ok(row.try_get::<_, Option<i64>>(0)?.map(millis))
        })
        .await
    }

    pub(crate) async fn record_attempt(
        &self,
        id: i64,
        result: Result<(), String>,
        next: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let now = Utc::now().timestamp_millis();
            match (result, next) {
                (Ok(()), _) => {
                    conn.execute(
                        "UPDATE lockbox_notifications SET status = 'delivered', attempts = attempts + 1, delivered_at = $2, last_error = NULL, claimed_until = NULL WHERE id = $1",
                        &[&id, &now],
                    )
                    .await?
                }
                (Err(e), Some(next)) => {
                    let next = next.timestamp_millis();
                    conn.execute(
                        "UPDATE lockbox_notifications SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3, claimed_until = NULL WHERE id = $1",
                        &[&id, &e, &next],
                    )
                    .await?
                }
                (Err(e), None) => {
                    conn.execute(
                        "UPDATE lockbox_notifications SET status = 'failed', attempts = attempts + 1, last_error = $2, claimed_until = NULL WHERE id = $1",
                        &[&id, &e],
                    )
                    .await?
                }
            };
            Ok(())
        })
        .await
    }

    pub(crate) async fn recent(
        &self,
        request_id: Option<String>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let rows = conn
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM lockbox_notifications
                         WHERE ($1::text IS NULL OR request_id = $1) ORDER BY id DESC LIMIT $2"
                    ),
                    &[&request_id, &i64::try_from(limit).unwrap_or(i64::MAX)],
                )
                .await?;
            Ok(rows.iter().map(delivery).collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(crate) async fn pending_notifications(&self) -> Result<i64, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let row = conn
                .query_one(
                    "SELECT COUNT(*) FROM lockbox_notifications WHERE status = 'pending'",
                    &[],
                )
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }
}
