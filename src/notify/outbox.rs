//! The notification outbox, in the state store: every delivery is a row that survives
//! restarts and carries its attempts, next try and last error (`lockbox notify status`).

use chrono::{DateTime, Utc};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// One delivery to one channel target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    pub id: i64,
    /// `smtp` or `webhook`.
    pub channel: String,
    /// An email address or a webhook URL.
    pub target: String,
    pub event: String,
    pub request_id: String,
    /// `pending`, `delivered` or `failed` (gave up).
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// What to send (subject + text for email, the JSON body for a webhook).
    #[serde(skip_serializing)]
    #[serde(default)]
    pub payload: String,
}

pub fn create_tables(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS notifications (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             channel TEXT NOT NULL,
             target TEXT NOT NULL,
             event TEXT NOT NULL,
             request_id TEXT NOT NULL,
             status TEXT NOT NULL,
             attempts INTEGER NOT NULL,
             next_attempt_at INTEGER NOT NULL,
             last_error TEXT,
             created_at INTEGER NOT NULL,
             delivered_at INTEGER,
             payload TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS notifications_due ON notifications (status, next_attempt_at);",
    )
}

/// A delivery to queue.
pub struct NewDelivery {
    pub channel: &'static str,
    pub target: String,
    pub event: String,
    pub request_id: String,
    pub payload: String,
}

pub async fn enqueue(store: &Store, list: Vec<NewDelivery>) -> Result<(), StoreError> {
    if let Some(pg) = store.postgres_backend() {
        return pg.enqueue(list).await;
    }
    store
        .with(move |c| {
            let now = Utc::now().timestamp_millis();
            for d in list {
                c.execute(
                    "INSERT INTO notifications (channel, target, event, request_id, status, attempts, next_attempt_at, created_at, payload)
                     VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5, ?6)",
                    params![d.channel, d.target, d.event, d.request_id, now, d.payload],
                )?;
            }
            Ok(())
        })
        .await
}

const COLUMNS: &str = "id, channel, target, event, request_id, status, attempts, next_attempt_at, last_error, created_at, delivered_at, payload";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    let time = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
    Ok(Delivery {
        id: r.get(0)?,
        channel: r.get(1)?,
        target: r.get(2)?,
        event: r.get(3)?,
        request_id: r.get(4)?,
        status: r.get(5)?,
        attempts: r.get(6)?,
        next_attempt_at: time(r.get(7)?),
        last_error: r.get(8)?,
        created_at: time(r.get(9)?),
        delivered_at: r.get::<_, Option<i64>>(10)?.map(time),
        payload: r.get(11)?,
    })
}

/// Pending deliveries whose time has come, oldest first; on a shared (PostgreSQL) store,
/// claimed for this node so no other node sends them too, and then at most `limit` of them:
/// the caller must send every one it got, or a claim keeps it from every node (this one
/// included) until the claim lapses. SQLite claims nothing, and answers deliveries already
/// on their way as well (the caller skips those), up to 100.
pub async fn due(
    store: &Store,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    if let Some(pg) = store.postgres_backend() {
        return pg.claim_due(now, &pg.node, limit).await;
    }
    store
        .with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM notifications WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY id LIMIT 100"
            ))?;
            let rows = stmt.query_map([now.timestamp_millis()], row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
}

/// When the next pending delivery is due, if any.
pub async fn next_due(store: &Store) -> Result<Option<DateTime<Utc>>, StoreError> {
    if let Some(pg) = store.postgres_backend() {
        return pg.next_due().await;
    }
    store
        .with(|c| {
            let ms: Option<i64> = c.query_row(
                "SELECT MIN(next_attempt_at) FROM notifications WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )?;
            Ok(ms.and_then(DateTime::from_timestamp_millis))
        })
        .await
}

/// Records one attempt's result.
pub async fn record_attempt(
    store: &Store,
    id: i64,
    result: Result<(), String>,
    next: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    if let Some(pg) = store.postgres_backend() {
        return pg.record_attempt(id, result, next).await;
    }
    store
        .with(move |c| {
            let now = Utc::now().timestamp_millis();
            match (result, next) {
                (Ok(()), _) => c.execute(
                    "UPDATE notifications SET status = 'delivered', attempts = attempts + 1, delivered_at = ?2, last_error = NULL WHERE id = ?1",
                    params![id, now],
                )?,
                (Err(e), Some(next)) => c.execute(
                    "UPDATE notifications SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 WHERE id = ?1",
                    params![id, e, next.timestamp_millis()],
                )?,
                (Err(e), None) => c.execute(
                    "UPDATE notifications SET status = 'failed', attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                    params![id, e],
                )?,
            };
            Ok(())
        })
        .await
}

/// The latest deliveries, newest first (for `lockbox notify status`).
pub async fn recent(
    store: &Store,
    request_id: Option<String>,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    if let Some(pg) = store.postgres_backend() {
        return pg.recent(request_id, limit).await;
    }
    store
        .with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM notifications WHERE (?1 IS NULL OR request_id = ?1) ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![request_id, limit as i64], row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
}

/// Deliveries still to be made.
pub async fn pending_count(store: &Store) -> Result<i64, StoreError> {
    if let Some(pg) = store.postgres_backend() {
        return pg.pending_notifications().await;
    }
    store
        .with(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM notifications WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
}
