//! Admin center sign-ins in the state store (both backends), so every node of a fleet
//! knows every browser's sign-in. Keyed by the SHA-256 of the cookie's id; the web layer
//! (`web/session.rs`) decides what a sign-in means, this only keeps rows.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{Backend, Store, StoreError};

pub(super) fn create_tables(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS web_sessions (
             id_hash TEXT PRIMARY KEY,
             user_name TEXT NOT NULL,
             expires_at INTEGER NOT NULL,
             body TEXT NOT NULL,
             flash TEXT
         );
         CREATE INDEX IF NOT EXISTS web_sessions_user ON web_sessions (user_name, expires_at);
         CREATE INDEX IF NOT EXISTS web_sessions_expiry ON web_sessions (expires_at);",
    )?;
    Ok(())
}

/// A stored sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSessionRow {
    pub user: String,
    pub expires_at: DateTime<Utc>,
    /// What the sign-in carries, as the web layer wrote it.
    pub body: String,
    pub flash: Option<String>,
}

/// How many sign-ins may be kept: per user, and in all.
#[derive(Debug, Clone, Copy)]
pub struct WebSessionLimits {
    pub per_user: usize,
    pub total: usize,
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Keeps a new sign-in. Expired ones go first; past `limits.per_user` the user's own
    /// soonest-ending one makes room, past `limits.total` the soonest-ending of all.
    pub async fn insert_web_session(
        &self,
        id_hash: &str,
        row: &WebSessionRow,
        limits: WebSessionLimits,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.insert_web_session(id_hash, row, limits, now).await;
        }
        let (id_hash, row) = (id_hash.to_owned(), row.clone());
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "DELETE FROM web_sessions WHERE expires_at <= ?1",
                [now.timestamp_millis()],
            )?;
            tx.execute(
                "DELETE FROM web_sessions WHERE id_hash IN (
                     SELECT id_hash FROM web_sessions WHERE user_name = ?1
                     ORDER BY expires_at DESC LIMIT -1 OFFSET ?2)",
                params![row.user, count(limits.per_user.saturating_sub(1))],
            )?;
            tx.execute(
                "DELETE FROM web_sessions WHERE id_hash IN (
                     SELECT id_hash FROM web_sessions
                     ORDER BY expires_at DESC LIMIT -1 OFFSET ?1)",
                [count(limits.total.saturating_sub(1))],
            )?;
            tx.execute(
                "INSERT INTO web_sessions (id_hash, user_name, expires_at, body, flash)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id_hash,
                    row.user,
                    row.expires_at.timestamp_millis(),
                    row.body,
                    row.flash
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The sign-in `id_hash`, with its flash taken (cleared) if `take_flash`.
    pub async fn web_session(
        &self,
        id_hash: &str,
        take_flash: bool,
    ) -> Result<Option<WebSessionRow>, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.web_session(id_hash, take_flash).await;
        }
        let id_hash = id_hash.to_owned();
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let row = tx
                .query_row(
                    "SELECT user_name, expires_at, body, flash FROM web_sessions WHERE id_hash = ?1",
                    [&id_hash],
                    |r| {
                        Ok(WebSessionRow {
                            user: r.get(0)?,
                            expires_at: super::pg::millis(r.get(1)?),
                            body: r.get(2)?,
                            flash: r.get(3)?,
                        })
                    },
                )
                .optional()?;
            if take_flash && row.as_ref().is_some_and(|r| r.flash.is_some()) {
                tx.execute(
                    "UPDATE web_sessions SET flash = NULL WHERE id_hash = ?1",
                    [&id_hash],
                )?;
            }
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// Leaves `flash` for the next page of sign-in `id_hash`.
    pub async fn set_web_flash(&self, id_hash: &str, flash: &str) -> Result<(), StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.set_web_flash(id_hash, flash).await;
        }
        let (id_hash, flash) = (id_hash.to_owned(), flash.to_owned());
        self.with(move |c| {
            c.execute(
                "UPDATE web_sessions SET flash = ?2 WHERE id_hash = ?1",
                params![id_hash, flash],
            )?;
            Ok(())
        })
        .await
    }

    /// Ends sign-in `id_hash` (signed out, expired, its credential gone).
    pub async fn delete_web_session(&self, id_hash: &str) -> Result<(), StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.delete_web_session(id_hash).await;
        }
        let id_hash = id_hash.to_owned();
        self.with(move |c| {
            c.execute("DELETE FROM web_sessions WHERE id_hash = ?1", [id_hash])?;
            Ok(())
        })
        .await
    }

    #[cfg(test)]
    pub(crate) async fn web_session_count(&self) -> Result<usize, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            let conn = pg.pool.get().await?;
            let n: i64 = conn
                .query_one("SELECT count(*) FROM lockbox_web_sessions", &[])
                .await?
                .try_get(0)?;
            return Ok(usize::try_from(n).unwrap_or(0));
        }
        self.with(|c| {
            let n: i64 = c.query_row("SELECT count(*) FROM web_sessions", [], |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }
}
