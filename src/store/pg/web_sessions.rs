//! Admin center sign-ins on PostgreSQL (see `store/web_sessions.rs`).

use chrono::{DateTime, Utc};

use super::super::web_sessions::{WebSessionLimits, WebSessionRow};
use super::super::StoreError;
use super::pool;
use super::{millis, PgStore};

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgStore {
    pub(crate) async fn insert_web_session(
        &self,
        id_hash: &str,
        row: &WebSessionRow,
        limits: WebSessionLimits,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        pool::bounded(async {
            let mut conn = self.pool.get().await?;
            let tx = conn.transaction().await?;
            tx.execute(
                "DELETE FROM lockbox_web_sessions WHERE expires_at <= $1",
                &[&now.timestamp_millis()],
            )
            .await?;
            tx.execute(
                "DELETE FROM lockbox_web_sessions WHERE id_hash IN (
                     SELECT id_hash FROM lockbox_web_sessions WHERE user_name = $1
                     ORDER BY expires_at DESC OFFSET $2)",
                &[&row.user, &count(limits.per_user.saturating_sub(1))],
            )
            .await?;
            tx.execute(
                "DELETE FROM lockbox_web_sessions WHERE id_hash IN (
                     SELECT id_hash FROM lockbox_web_sessions ORDER BY expires_at DESC OFFSET $1)",
                &[&count(limits.total.saturating_sub(1))],
            )
            .await?;
            tx.execute(
                "INSERT INTO lockbox_web_sessions (id_hash, user_name, expires_at, body, flash)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &id_hash,
                    &row.user,
                    &row.expires_at.timestamp_millis(),
                    &row.body,
                    &row.flash,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn web_session(
        &self,
        id_hash: &str,
        take_flash: bool,
    ) -> Result<Option<WebSessionRow>, StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            // Taking the flash clears it in the same statement, so two pages never both show it.
            let sql = if take_flash {
                "WITH old AS (SELECT id_hash, flash FROM lockbox_web_sessions WHERE id_hash = $1 FOR UPDATE)
                 UPDATE lockbox_web_sessions s SET flash = NULL FROM old WHERE s.id_hash = old.id_hash
                 RETURNING s.user_name, s.expires_at, s.body, old.flash"
            } else {
                "SELECT user_name, expires_at, body, flash FROM lockbox_web_sessions WHERE id_hash = $1"
            };
            let row = conn.query_opt(sql, &[&id_hash]).await?;
            row.map(|r| {
                Ok(WebSessionRow {
                    user: r.try_get(0)?,
                    expires_at: millis(r.try_get(1)?),
                    body: r.try_get(2)?,
                    flash: r.try_get(3)?,
                })
            })
            .transpose()
        })
        .await
    }

    pub(crate) async fn set_web_flash(&self, id_hash: &str, flash: &str) -> Result<(), StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            conn.execute(
                "UPDATE lockbox_web_sessions SET flash = $2 WHERE id_hash = $1",
                &[&id_hash, &flash],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn delete_web_session(&self, id_hash: &str) -> Result<(), StoreError> {
        pool::bounded(async {
            let conn = self.pool.get().await?;
            conn.execute(
                "DELETE FROM lockbox_web_sessions WHERE id_hash = $1",
                &[&id_hash],
            )
            .await?;
            Ok(())
        })
        .await
    }
}
