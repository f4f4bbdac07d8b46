//! The state store on PostgreSQL, for several lockbox nodes sharing one state. Same
//! operations and semantics as the SQLite store; every change of a request also sends a
//! notification on [`CHANNEL`] (delivered at commit, only if the change won), which each
//! node's listener turns into the same local path a revocation or extension takes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;

use super::{RequestFilter, StoreError};
use crate::config::StatePostgres;
use crate::ids::RequestId;
use crate::policy::Request;

pub(crate) mod exports;
mod migrate;
pub(crate) mod nodes;
pub(crate) mod outbox;
pub(crate) mod pool;
mod web_sessions;

pub(crate) use migrate::{current_version, known_version};

/// The LISTEN/NOTIFY channel of changes between nodes.
pub(crate) const CHANNEL: &str = "lockbox_changes";

/// What one node tells the others (the notification's JSON payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A request changed (decided, revoked, cancelled, extended, ended): re-read it.
    Request { id: String },
    /// A run-time setting changed (protection policy).
    Setting { key: String },
    /// End the session `session` wherever it lives.
    Kill {
        session: String,
        node: String,
        reason: String,
        /// The session's own engineer asked (absent from a node that does not say: false).
        #[serde(default)]
        by_its_engineer: bool,
    },
}

pub(crate) struct PgStore {
    pub(crate) pool: pool::Pool,
    pub(crate) config: StatePostgres,
    /// This node's id: the owner of its claims.
    pub(crate) node: String,
}

/// A PostgreSQL error with the server's message (tokio-postgres shows only "db error").
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

impl PgStore {
    /// Connects and brings the schema up to date (refusing a newer one).
    pub(crate) async fn open(config: StatePostgres, node: &str) -> Result<PgStore, StoreError> {
        let store = PgStore {
            pool: pool::Pool::new(config.clone()),
            config,
            node: node.to_owned(),
        };
        {
            let mut conn = store.pool.get().await?;
            migrate::migrate(&mut conn).await?;
        }
        Ok(store)
    }

    pub(crate) async fn insert(&self, request: &Request) -> Result<(), StoreError> {
        pool::bounded_change(async {
            let conn = self.pool.get().await?;
            conn.execute(
                "INSERT INTO lockbox_requests (id, status, engineer, db, created_at, version, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &request.id.0,
                    &request.status.as_str(),
                    &request.engineer,
                    &request.database,
                    &request.created_at.timestamp_millis(),
                    &version_sql(request.version),
                    &serde_json::to_string(request)?,
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn get(&self, id: &RequestId) -> Result<Option<Request>, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let row = conn
                .query_opt("SELECT body FROM lockbox_requests WHERE id = $1", &[&id.0])
                .await?;
            row.map(|r| Ok(serde_json::from_str(r.try_get::<_, &str>(0)?)?))
                .transpose()
        })
        .await
    }

    pub(crate) async fn list(&self, filter: RequestFilter) -> Result<Vec<Request>, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let status = filter.status.map(|s| s.as_str());
            let rows = conn
                .query(
                    "SELECT body FROM lockbox_requests
                     WHERE ($1::text IS NULL OR status = $1)
                       AND ($2::text IS NULL OR engineer = $2)
                       AND ($3::text IS NULL OR db = $3)
                     ORDER BY created_at, id",
                    &[&status, &filter.engineer, &filter.database],
                )
                .await?;
            rows.iter()
                .map(|r| Ok(serde_json::from_str(r.try_get::<_, &str>(0)?)?))
                .collect()
        })
        .await
    }

    /// Compare-and-set on the version: the row changes only from `version - 1`. Under
    /// READ COMMITTED a concurrent update of the same row waits, then re-checks the
    /// version against the committed row, so of two updates from one version one wins.
    pub(crate) async fn update(&self, request: &Request) -> Result<bool, StoreError> {
        pool::bounded_change(async {
            let conn = self.pool.get().await?;
            let change = change_payload(&Change::Request {
                id: request.id.0.clone(),
            })?;
            let previous = version_sql(request.version.saturating_sub(1));
            let params: [&(dyn ToSql + Sync); 7] = [
                &request.status.as_str(),
                &serde_json::to_string(request)?,
                &version_sql(request.version),
                &request.id.0,
                &previous,
                &change,
                &CHANNEL,
            ];
            let rows = conn
                .query(
                    "WITH changed AS (
                         UPDATE lockbox_requests SET status = $1, body = $2, version = $3
                         WHERE id = $4 AND version = $5 AND $3 = $5 + 1
                         RETURNING id
                     )
                     SELECT pg_notify($7, $6) FROM changed",
                    &params,
                )
                .await?;
            Ok(rows.len() == 1)
        })
        .await
    }

    pub(crate) async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            let row = conn
                .query_opt("SELECT value FROM lockbox_settings WHERE key = $1", &[&key])
                .await?;
            row.map(|r| r.try_get(0))
                .transpose()
                .map_err(StoreError::from)
        })
        .await
    }

    pub(crate) async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        pool::bounded_change(async {
            let conn = self.pool.get().await?;
            let change = change_payload(&Change::Setting {
                key: key.to_owned(),
            })?;
            conn.query(
                "WITH set AS (
                     INSERT INTO lockbox_settings (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value
                     RETURNING key
                 )
                 SELECT pg_notify($4, $3) FROM set",
                &[&key, &value, &change, &CHANNEL],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Runs `work` if no other node runs work of `key` now (a session advisory lock, let go
    /// after it, or by the server when this node's connection dies); `None` if another
    /// node holds it.
    pub(crate) async fn exclusive<T>(
        &self,
        key: i64,
        work: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>, StoreError> {
        // Only taking the lock is bounded: `work` (a sweep) takes what it takes, and
        // bounds its own store calls.
        let (mut conn, got) = pool::bounded(async {
            let conn = self.pool.get().await?;
            let got: bool = conn
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await?
                .try_get(0)?;
            Ok((conn, got))
        })
        .await?;
        if !got {
            return Ok(None);
        }
        let out = work.await;
        // A failed unlock leaves the lock to the connection's end; one given up on (a store
        // that stopped answering) closes the connection once the server answers, and the
        // lock goes with it.
        let unlock = pool::bounded(async {
            conn.execute("SELECT pg_advisory_unlock($1)", &[&key])
                .await?;
            Ok(())
        });
        if let Err(e) = unlock.await {
            tracing::debug!(error = %e, "cannot release an advisory lock");
            conn.discard();
        }
        Ok(Some(out))
    }

    /// Tells every node (this one included) about `change`.
    pub(crate) async fn publish(&self, change: &Change) -> Result<(), StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            conn.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &change_payload(change)?],
            )
            .await?;
            Ok(())
        })
        .await
    }
}

fn change_payload(change: &Change) -> Result<String, StoreError> {
    Ok(serde_json::to_string(change)?)
}

/// Versions count changes of one request: far below the top bit.
fn version_sql(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

pub(crate) fn millis(time: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(time).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::Change;

    /// A kill relayed by a node that does not say whose it is (an older one) is an
    /// operator's: its session's farewell is not counted as one the client chose.
    #[test]
    fn a_relayed_kill_says_whether_its_engineer_asked_and_defaults_to_not() {
        let old: Change =
            serde_json::from_str(r#"{"kind":"kill","session":"s-1","node":"n-2","reason":"r"}"#)
                .expect("parses");
        assert!(matches!(
            old,
            Change::Kill {
                by_its_engineer: false,
                ..
            }
        ));
        let own = Change::Kill {
            session: "s-1".into(),
            node: "n-2".into(),
            reason: "done (by eve)".into(),
            by_its_engineer: true,
        };
        let text = serde_json::to_string(&own).expect("serializes");
        assert_eq!(serde_json::from_str::<Change>(&text).expect("parses"), own);
    }
}
