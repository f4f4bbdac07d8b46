//! How many entries each long-lived map of the process holds, so a long run can tell a
//! leak (a count that keeps growing with the sessions and requests that came and went)
//! from allocator growth (every count flat while RSS creeps up). Each minute `serve` hands
//! freed memory back to the OS ([`crate::memory`]) and logs the census at debug level
//! (`RUST_LOG=info,lockbox::census=debug`); `benches/soak.sh` reads
//! those lines, and the e2e tests call [`take`] after sessions have come and gone.

use std::time::Duration;

use crate::proxy::Registry;
use crate::service::Lockbox;

/// Entries held now, per map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Registered sessions (`proxy::registry`): live, or logging in.
    pub sessions: usize,
    /// Client-facing cancel keys of live sessions.
    pub cancel_keys: usize,
    /// Failed-login windows of sources (`proxy::gate`), bounded and swept.
    pub login_windows: usize,
    /// Sources with connections that have not logged in yet (`proxy::preauth`).
    pub preauth_sources: usize,
    /// Requests whose lock is held or awaited (`service::locks`).
    pub request_locks: usize,
    /// Verified tokens remembered (`token`), expired ones forgotten.
    pub cached_tokens: usize,
    /// Grants whose per-grant role this process knows (`provision`), pruned a while after
    /// their end.
    pub grant_roles: usize,
    /// Statement analyses cached by text and by shape (`guard::cache`), bounded.
    pub cached_analyses: usize,
    /// Salted SCRAM passwords cached (`proxy::scram`), bounded.
    pub cached_scram: usize,
    /// KiB SQLite holds (page cache, statements), for the state store: its page cache fills
    /// up to `cache_size` as the store grows, which shows as RSS without being a leak.
    pub sqlite_kib: usize,
    /// KiB malloc has handed out and not had back: the live heap, SQLite's included. Flat
    /// while RSS rises means the allocator keeps memory, not that something leaks.
    pub heap_kib: usize,
}

/// Counts every map now.
pub fn take(lockbox: &Lockbox, registry: &Registry) -> Census {
    Census {
        sessions: registry.sessions_held(),
        cancel_keys: registry.cancel_keys_held(),
        login_windows: registry.gate.windows_held(),
        preauth_sources: registry.preauth.sources_held(),
        request_locks: lockbox.locked_requests(),
        cached_tokens: lockbox.tokens.cached(),
        grant_roles: lockbox.provisioner.grants_held(),
        cached_analyses: crate::guard::cached_analyses(),
        cached_scram: crate::proxy::scram_cached(),
        sqlite_kib: sqlite_bytes() / 1024,
        heap_kib: crate::memory::heap_in_use() / 1024,
    }
}

fn sqlite_bytes() -> usize {
    // SAFETY: sqlite3_memory_used takes no arguments and only reads SQLite's own counter
    // (thread-safe in the bundled build, which keeps memory statistics on).
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    usize::try_from(used).unwrap_or(0)
}

/// How often `serve` logs the census.
const EVERY: Duration = Duration::from_secs(60);

/// Logs the census every minute until shutdown.
pub(crate) async fn log_every_minute(
    lockbox: std::sync::Arc<Lockbox>,
    registry: std::sync::Arc<Registry>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                // Freed memory goes back to the OS first, so RSS next to the census tells
                // a map that grows from memory the allocator merely kept.
                let trimmed = tokio::task::spawn_blocking(crate::memory::release_free_memory)
                    .await
                    .unwrap_or(false);
                let c = take(&lockbox, &registry);
                tracing::debug!(
                    sessions = c.sessions,
                    cancel_keys = c.cancel_keys,
                    login_windows = c.login_windows,
                    preauth_sources = c.preauth_sources,
                    request_locks = c.request_locks,
                    cached_tokens = c.cached_tokens,
                    grant_roles = c.grant_roles,
                    cached_analyses = c.cached_analyses,
                    cached_scram = c.cached_scram,
                    sqlite_kib = c.sqlite_kib,
                    heap_kib = c.heap_kib,
                    trimmed,
                    "census"
                );
            }
        }
    }
}
