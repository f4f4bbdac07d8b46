//! Durable state: access requests and their grants, in SQLite (one node, the embedded
//! default) or PostgreSQL (several nodes sharing one state, `pg/`).
//!
//! Each request is one row: the columns the store filters on, plus the whole request as
//! JSON so new fields need no migration. Updates are compare-and-set on the request's
//! version, so two approvers (or an approver and the expiry sweeper) can never both win,
//! and one approval of a quorum is never lost to another given at the same moment.
//! Settings changed at run time (which databases are protected) live beside them.

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::ids::RequestId;
use crate::policy::{Request, RequestStatus};

/// The state store's page cache, in KiB (negative: SQLite's unit for a size in KiB).
const STORE_CACHE_SIZE: i64 = -512;

/// How long a statement off the runtime waits for another connection's lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

mod export_claims;
mod exports;
#[cfg(test)]
mod fleet_tests;
pub(crate) mod pg;
#[cfg(test)]
pub(crate) mod tests;
mod web_sessions;
pub use exports::{ExportRun, ExportSchedule, RunStatus, RunSummary};
pub use pg::Change;
pub use web_sessions::{WebSessionLimits, WebSessionRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state store: a stored request is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("state store: cannot create folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("state store: cannot create or restrict {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("state store: worker failed: {0}")]
    Worker(String),
    #[error("state store (PostgreSQL): {}", pg::error_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the state store is unreachable: {0}")]
    Unreachable(String),
    /// A change was sent, or may have been, and the store did not answer: it may take
    /// effect when the store answers, or may not.
    #[error("the state store did not confirm the change: {0}")]
    Unconfirmed(String),
    #[error(
        "the state store's schema is version {found}, newer than this lockbox knows ({known}): \
         upgrade lockbox, or point it at another store"
    )]
    NewerSchema { found: i32, known: i32 },
}

impl StoreError {
    /// The store could not be reached (rather than refusing or corrupting a value): the
    /// caller fails closed and says the state store is down.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Unreachable(_) | StoreError::Unconfirmed(_) => true,
            StoreError::Postgres(e) => {
                e.is_closed()
                    || e.as_db_error().is_none_or(|db| {
                        let code = db.code().code();
                        code.starts_with("08") || code.starts_with("57P")
                    })
            }
            _ => false,
        }
    }
}

impl StoreError {
    /// Whether what was asked may still take effect: given up on once a statement may have
    /// reached the server, or its connection lost while it ran. (A refusal, a statement the
    /// server failed, a store that could not be reached at all: it did not.)
    pub fn outcome_unknown(&self) -> bool {
        match self {
            StoreError::Unconfirmed(_) => true,
            StoreError::Postgres(e) => e.as_db_error().is_none(),
            _ => false,
        }
    }
}

/// Handle to the state store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(Arc<pg::PgStore>),
}

/// Which requests to list.
#[derive(Debug, Default, Clone)]
pub struct RequestFilter {
    pub status: Option<RequestStatus>,
    pub engineer: Option<String>,
    pub database: Option<String>,
}

fn read_request(c: &Connection, id: &str) -> Result<Option<Request>, StoreError> {
    // Every session's admission reads its request: keep the statement prepared.
    let body: Option<String> = c
        .prepare_cached("SELECT body FROM requests WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
}

/// Reads a request on the calling task when that costs no wait: the connection is free and
/// no other connection's lock is in the way (WAL readers rarely meet one). Every login reads
/// its request, and the hand-off to a blocking thread and back cost more CPU than the read
/// (~0.2 ms of ~1.5 ms per login). `None`: the caller reads it the usual way, off the
/// runtime, where waiting for a lock blocks no other task.
fn get_without_waiting(
    conn: &Mutex<Connection>,
    id: &str,
) -> Option<Result<Option<Request>, StoreError>> {
    let c = conn.try_lock().ok()?;
    c.busy_timeout(std::time::Duration::ZERO).ok()?;
    // On a blocking thread a panic was the join's error; here it would unwind the caller
    // (the revocation follower, say) and poison the connection: it stays an error.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_request(&c, id)))
        .unwrap_or_else(|_| Err(StoreError::Worker("reading a request panicked".into())));
    // A connection left without its timeout would fail every write that meets a lock:
    // that failure is this read's answer, rather than a later surprise.
    if let Err(e) = c.busy_timeout(BUSY_TIMEOUT) {
        return Some(Err(e.into()));
    }
    match read {
        Err(StoreError::Sqlite(e)) if is_busy(&e) => None,
        other => Some(other),
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Creates the SQLite file owner-only before SQLite opens it (SQLite then gives its -wal
/// and -shm files the database file's mode), and tightens files an older version left
/// readable by others.
fn restrict_files(path: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    crate::private_files::open_options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        crate::private_files::restrict(Path::new(&name)).map_err(io)?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private_files::create_dir_all(dir).map_err(|source| StoreError::Folder {
                path: dir.display().to_string(),
                source,
            })?;
        }
        restrict_files(path)?;
        let conn = Connection::open(path)?;
        // WAL lets readers proceed during a write; FULL makes each commit durable.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // The page cache fills to its size as the store grows (SQLite's default is 2 MiB)
        // and is never given back: resident memory that rose for the better part of an
        // hour of soak. The store's reads are by key; the OS caches the file anyway.
        conn.pragma_update(None, "cache_size", STORE_CACHE_SIZE)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS requests (
                 id TEXT PRIMARY KEY,
                 status TEXT NOT NULL,
                 engineer TEXT NOT NULL,
                 database TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS requests_status ON requests (status);
             CREATE TABLE IF NOT EXISTS settings (
                 key TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             );",
        )?;
        crate::notify::outbox::create_tables(&conn)?;
        exports::create_tables(&conn)?;
        export_claims::create_tables(&conn)?;
        web_sessions::create_tables(&conn)?;
        Ok(Store {
            backend: Backend::Sqlite(Arc::new(Mutex::new(conn))),
        })
    }

    /// Connects to the PostgreSQL state store and brings its schema up to date.
    pub async fn postgres(
        config: crate::config::StatePostgres,
        node: &str,
    ) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Postgres(Arc::new(pg::PgStore::open(config, node).await?)),
        })
    }

    /// The store `config` names: PostgreSQL with `[state] url`, else the SQLite file.
    pub async fn from_config(config: &crate::config::Config) -> Result<Store, StoreError> {
        match &config.state_postgres {
            Some(pg) => Store::postgres(pg.clone(), &config.node_id).await,
            None => Store::open(&config.state_path),
        }
    }

    /// The PostgreSQL store, when that is the backend (shared by several nodes).
    pub(crate) fn postgres_backend(&self) -> Option<&Arc<pg::PgStore>> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Sqlite(_) => None,
        }
    }

    /// Tells every node about `change`; nothing to do on SQLite (one node).
    pub async fn publish(&self, change: &Change) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(pg) => pg.publish(change).await,
            Backend::Sqlite(_) => Ok(()),
        }
    }

    /// Runs `f` on the connection off the async runtime.
    pub(crate) async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = match &self.backend {
            Backend::Sqlite(conn) => conn.clone(),
            // Every caller picks its PostgreSQL statement first; reaching here is a bug,
            // answered with an error rather than a panic.
            Backend::Postgres(_) => {
                return Err(StoreError::Worker(
                    "a SQLite statement was sent to the PostgreSQL store".into(),
                ))
            }
        };
        tokio::task::spawn_blocking(move || {
            let guard = conn
                .lock()
                .map_err(|_| StoreError::Worker("connection lock poisoned".into()))?;
            f(&guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    pub async fn insert(&self, request: &Request) -> Result<(), StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.insert(request).await;
        }
        let request = request.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO requests (id, status, engineer, database, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    request.id.0,
                    request.status.as_str(),
                    request.engineer,
                    request.database,
                    request.created_at.timestamp_millis(),
                    serde_json::to_string(&request)?
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn get(&self, id: &RequestId) -> Result<Option<Request>, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.get(id).await;
        }
        if let Backend::Sqlite(conn) = &self.backend {
            if let Some(read) = get_without_waiting(conn, &id.0) {
                return read;
            }
        }
        let id = id.0.clone();
        self.with(move |c| read_request(c, &id)).await
    }

    pub async fn list(&self, filter: RequestFilter) -> Result<Vec<Request>, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.list(filter).await;
        }
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT body FROM requests
                 WHERE (?1 IS NULL OR status = ?1)
                   AND (?2 IS NULL OR engineer = ?2)
                   AND (?3 IS NULL OR database = ?3)
                 ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map(
                params![
                    filter.status.map(|s| s.as_str()),
                    filter.engineer,
                    filter.database
                ],
                |row| row.get::<_, String>(0),
            )?;
            let mut out = Vec::new();
            for body in rows {
                out.push(serde_json::from_str(&body?)?);
            }
            Ok(out)
        })
        .await
    }

    /// The requests of `engineer` on `database` stored as pending (awaiting a decision),
    /// oldest first: what a grant's end cancels. Ending a grant used to read and decode
    /// every request the engineer ever made there, a growing load on each expiry or revoke
    /// and a transient allocation that grew with the store.
    pub async fn pending_of(
        &self,
        engineer: &str,
        database: &str,
    ) -> Result<Vec<Request>, StoreError> {
        let mut out = Vec::new();
        for status in [
            RequestStatus::PendingInternal,
            RequestStatus::PendingCustomer,
            RequestStatus::Pending,
        ] {
            out.extend(
                self.list(RequestFilter {
                    status: Some(status),
                    engineer: Some(engineer.to_owned()),
                    database: Some(database.to_owned()),
                })
                .await?,
            );
        }
        out.sort_by(|a, b| (a.created_at, &a.id.0).cmp(&(b.created_at, &b.id.0)));
        Ok(out)
    }

    /// Replaces the stored request with `request` (whose version must be one above the
    /// stored one); false if someone else changed it first.
    pub async fn update(&self, request: &Request) -> Result<bool, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.update(request).await;
        }
        let request = request.clone();
        self.with(move |c| {
            let stored: Option<String> = c
                .query_row(
                    "SELECT body FROM requests WHERE id = ?1",
                    [&request.id.0],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(stored_text) = stored else {
                return Ok(false);
            };
            let stored: Request = serde_json::from_str(&stored_text)?;
            if stored.version + 1 != request.version {
                return Ok(false);
            }
            let changed = c.execute(
                "UPDATE requests SET status = ?1, body = ?2 WHERE id = ?3 AND body = ?4",
                params![
                    request.status.as_str(),
                    serde_json::to_string(&request)?,
                    request.id.0,
                    stored_text
                ],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.setting(key).await;
        }
        let key = key.to_owned();
        self.with(move |c| {
            Ok(
                c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()?,
            )
        })
        .await
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        if let Backend::Postgres(pg) = &self.backend {
            return pg.set_setting(key, value).await;
        }
        let (key, value) = (key.to_owned(), value.to_owned());
        self.with(move |c| {
            c.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
        .await
    }

    /// Requests whose recorded status lags behind a deadline that has passed.
    pub async fn overdue(&self, now: DateTime<Utc>) -> Result<Vec<Request>, StoreError> {
        let mut out = Vec::new();
        for status in [
            RequestStatus::Pending,
            RequestStatus::PendingInternal,
            RequestStatus::PendingCustomer,
            RequestStatus::Approved,
        ] {
            let list = self
                .list(RequestFilter {
                    status: Some(status),
                    ..Default::default()
                })
                .await?;
            out.extend(list.into_iter().filter(|r| {
                matches!(
                    r.effective_status(now),
                    RequestStatus::Expired | RequestStatus::Completed
                )
            }));
        }
        Ok(out)
    }
}
