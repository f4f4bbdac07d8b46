//! A few connections to the PostgreSQL state store, each reconnected on first use after
//! it broke. Small on purpose: the store's statements are short, and a pool crate would
//! add a dependency for what fits here.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::Client;

use super::super::StoreError;
use crate::config::StatePostgres;

/// Connections held at most; enough for the API, the proxy's admissions and the
/// background tasks of one node without starving the shared server of slots.
const SIZE: usize = 4;

/// How long a new connection may take before the store counts as unreachable: short, so
/// a login or an API call fails closed quickly instead of hanging on a dead server.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Server-side bounds on each statement of the store's connections.
const STATEMENT_LIMITS: &str = "-c lock_timeout=3s -c statement_timeout=10s";

/// How long one store operation may wait, all told (a free connection, its statements and
/// their answers). Past the server's own bounds (`STATEMENT_LIMITS`, `CONNECT_TIMEOUT`), so
/// it only ends the waits the server cannot end itself: a server frozen (SIGSTOP, a hung
/// host or VM) keeps its connections open and answers nothing, and keepalives do not
/// notice while its kernel still acknowledges. Without it an API call or a sweep waited
/// until the server woke.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// What one bounded store operation did, for [`bounded`] and the connection it used.
#[derive(Debug, Default)]
struct Operation {
    /// It got a connection: from here on a statement may have reached the server.
    leased: AtomicBool,
    /// It was given up on: its connection may still carry a statement the server has not
    /// answered (and a session lock that statement takes), so it is never lent again.
    abandoned: AtomicBool,
}

tokio::task_local! {
    static OPERATION: Arc<Operation>;
}

/// Runs one store operation within [`OPERATION_TIMEOUT`]; past it, the store counts as
/// unreachable and the caller fails closed. Given up on after it got a connection, its
/// outcome is unknown: a statement sent still runs, or not, as one when the server answers
/// (each operation is one statement or one transaction, rolled back if given up before its
/// commit); see [`bounded_change`]. Its connection is closed once the server answers, never lent
/// again: an advisory lock taken by a statement nobody waited for goes with it.
pub(crate) async fn bounded<T>(
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    bounded_as(operation, false).await
}

/// [`bounded`] for a change a decision stores (a request, a setting, a kill order): given
/// up on once it may have reached the server, or its connection lost meanwhile, it is
/// [`StoreError::Unconfirmed`], which its caller must treat as a change that may still take
/// effect. Other operations given up on are
/// [`StoreError::Unreachable`] (a read, a heartbeat: nobody acts on their outcome).
pub(crate) async fn bounded_change<T>(
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    bounded_as(operation, true).await
}

async fn bounded_as<T>(
    operation: impl Future<Output = Result<T, StoreError>>,
    change: bool,
) -> Result<T, StoreError> {
    let state = Arc::new(Operation::default());
    match tokio::time::timeout(OPERATION_TIMEOUT, OPERATION.scope(state.clone(), operation)).await {
        // A connection lost while a change was on it (not a statement the server failed):
        // it may have run all the same.
        Ok(Err(StoreError::Postgres(e)))
            if change && state.leased.load(Ordering::SeqCst) && e.as_db_error().is_none() =>
        {
            Err(StoreError::Unconfirmed(super::error_text(&e)))
        }
        Ok(result) => result,
        Err(_) => {
            state.abandoned.store(true, Ordering::SeqCst);
            let waited = OPERATION_TIMEOUT.as_secs();
            Err(if change && state.leased.load(Ordering::SeqCst) {
                StoreError::Unconfirmed(format!("no answer within {waited} s"))
            } else {
                StoreError::Unreachable(format!("no connection within {waited} s"))
            })
        }
    }
}

pub(crate) struct Pool {
    config: StatePostgres,
    slots: Vec<Mutex<Option<Pooled>>>,
}

/// A slot's connection, and the operation that used it last.
pub(crate) struct Pooled {
    client: Client,
    last: Option<Arc<Operation>>,
    /// Its holder saw a statement of its own given up on: never lent again.
    discarded: bool,
}

impl Pooled {
    /// Lent again only if it is open and its last operation was not given up on.
    fn usable(&self) -> bool {
        !self.discarded
            && !self.client.is_closed()
            && !self
                .last
                .as_ref()
                .is_some_and(|op| op.abandoned.load(Ordering::SeqCst))
    }

    /// Never lends this connection again (it is closed once the server has answered what
    /// it holds): for a holder whose statement on it was given up on outside the operation
    /// that lent it.
    pub(crate) fn discard(&mut self) {
        self.discarded = true;
    }
}

impl std::ops::Deref for Pooled {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// A connection lent out; back in its slot when dropped.
pub(crate) type Conn<'a> = MappedMutexGuard<'a, Pooled>;

impl Pool {
    pub(crate) fn new(config: StatePostgres) -> Pool {
        Pool {
            config,
            slots: (0..SIZE).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// A free connection (waiting for one if none is), connected.
    pub(crate) async fn get(&self) -> Result<Conn<'_>, StoreError> {
        // Connections given up on are let go at the next use of the pool, whichever slot
        // it takes: one holding a session lock (the sweep's) would keep it for as long as
        // its slot stayed unused.
        for slot in &self.slots {
            if let Ok(mut idle) = slot.try_lock() {
                if idle.as_ref().is_some_and(|p| !p.usable()) {
                    *idle = None;
                }
            }
        }
        let mut guard = match self.slots.iter().find_map(|s| s.try_lock().ok()) {
            Some(guard) => guard,
            // The first slot to come free: a caller holding one slot while it waits for
            // another (an advisory lock held over a sweep) must not wait on its own.
            None => {
                let waits = self.slots.iter().map(|s| Box::pin(s.lock()));
                futures::future::select_all(waits).await.0
            }
        };
        if !guard.as_ref().is_some_and(Pooled::usable) {
            // Dropping the old one closes it once the server has answered what it holds.
            *guard = None;
            *guard = Some(Pooled {
                client: connect(&self.config).await?,
                last: None,
                discarded: false,
            });
        }
        let current = OPERATION.try_with(Arc::clone).ok();
        if let Some(op) = &current {
            op.leased.store(true, Ordering::SeqCst);
        }
        if let Some(pooled) = guard.as_mut() {
            pooled.last = current;
        }
        MutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| StoreError::Unreachable("no connection".into()))
    }
}

/// One new connection, its driver running on its own task.
pub(crate) async fn connect(config: &StatePostgres) -> Result<Client, StoreError> {
    let (client, _) = connect_with(config, |_| {}).await?;
    Ok(client)
}

/// One new connection whose server messages (notifications) go to `on_message`; the
/// returned handle ends when the connection does.
///
/// On the main runtime: a pool connection a session's admission opens serves the API and
/// revocations afterwards, so its socket must not stay on that session's thread (nor its
/// login's password hashing and TLS handshake hold that thread up).
pub(crate) async fn connect_with(
    config: &StatePostgres,
    on_message: impl FnMut(tokio_postgres::AsyncMessage) + Send + 'static,
) -> Result<(Client, tokio::task::JoinHandle<()>), StoreError> {
    let config = config.clone();
    crate::runtime::spawn_control(async move { connect_here(&config, on_message).await })
        .await
        .unwrap_or_else(|e| Err(StoreError::Unreachable(format!("connecting failed: {e}"))))
}

async fn connect_here(
    config: &StatePostgres,
    on_message: impl FnMut(tokio_postgres::AsyncMessage) + Send + 'static,
) -> Result<(Client, tokio::task::JoinHandle<()>), StoreError> {
    let mut pg = config.connect.clone();
    pg.connect_timeout(CONNECT_TIMEOUT);
    // Every statement of the store is short: one held up behind a lock (a `LOCK TABLE`, a
    // long transaction on a request's row) ends in an error, and the caller fails closed
    // (a login refused as for a store that is down, an API call a 503) instead of waiting
    // without end. The migration lifts both for its own transaction.
    let given = pg
        .get_options()
        .map(|o| format!("{o} "))
        .unwrap_or_default();
    pg.options(format!("{given}{STATEMENT_LIMITS}"));
    // A store gone without a word (a cut network) is noticed in seconds, not hours: its
    // connections then fail, and the node fails closed instead of waiting.
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3);
    let unreachable = |e: String| StoreError::Unreachable(e);
    match &config.tls_client {
        None => {
            let (client, connection) =
                tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(tokio_postgres::NoTls))
                    .await
                    .map_err(|_| unreachable("connecting timed out".into()))?
                    .map_err(|e| unreachable(super::error_text(&e)))?;
            Ok((
                client,
                crate::runtime::spawn_control(drive(connection, on_message)),
            ))
        }
        Some(tls) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
            let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(tls))
                .await
                .map_err(|_| unreachable("connecting timed out".into()))?
                .map_err(|e| unreachable(super::error_text(&e)))?;
            Ok((
                client,
                crate::runtime::spawn_control(drive(connection, on_message)),
            ))
        }
    }
}

/// Runs a connection, handing what the server sends on its own to `on_message`.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    mut on_message: impl FnMut(tokio_postgres::AsyncMessage),
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(message)) => on_message(message),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "state store connection ended");
                return;
            }
            None => return,
        }
    }
}
