//! Versioned schema of the PostgreSQL state store, embedded in the binary. Applied at
//! start in one transaction under an advisory lock, so nodes starting together apply
//! each migration once; a schema newer than this binary knows is refused.

use tokio_postgres::Client;

use super::super::StoreError;

/// The migrations, in order: version i + 1 is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_state.sql"),
    include_str!("../migrations/0002_nodes.sql"),
    include_str!("../migrations/0003_export_claims.sql"),
    include_str!("../migrations/0004_web_sessions.sql"),
    include_str!("../migrations/0005_session_kills.sql"),
    include_str!("../migrations/0006_node_runs.sql"),
];

/// The advisory lock key of schema changes (`lockbox` in ASCII).
const LOCK_KEY: i64 = 0x006c_6f63_6b62_6f78;

/// The newest schema this binary knows.
pub(crate) fn known_version() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Brings the schema to `known_version`; refuses a newer one.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    // Another node's migration may hold the lock, and a migration may take its time: not
    // bounded like the store's other statements (see `pool`).
    tx.batch_execute("SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS lockbox_schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current = current_version(&tx).await?;
    if current > known_version() {
        return Err(StoreError::NewerSchema {
            found: current,
            known: known_version(),
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO lockbox_schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(version, "state store schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

/// The schema version the store holds (0: none yet).
pub(crate) async fn current_version(
    client: &impl tokio_postgres::GenericClient,
) -> Result<i32, StoreError> {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass('lockbox_schema_version')::text", &[])
        .await?
        .try_get(0)?;
    if exists.is_none() {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM lockbox_schema_version",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}
