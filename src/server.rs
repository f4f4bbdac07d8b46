//! Wiring: one process serves the proxy listener and the control-plane API over the same
//! `Lockbox` service, plus the deadline sweeper. Used by `lockbox serve`, the demo and tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::pg_sink::PgSinkHandle;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::proxy::{Proxy, Registry};
use crate::service::Lockbox;
use crate::store::Store;
use crate::token::TokenAuthority;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Key(#[from] crate::token::KeyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot start the proxy's session threads: {0}")]
    SessionThreads(#[source] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Longest the audit sink may take for its final drain at shutdown.
const SINK_DRAIN: Duration = Duration::from_secs(10);

/// How often recorded states catch up with passed deadlines.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// How often per-grant roles of grants that are over are looked for (a drop that failed,
/// or one missed while lockbox was down).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(60);

/// A running lockbox: proxy, API and sweeper.
pub struct RunningServer {
    pub proxy_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub lockbox: Arc<Lockbox>,
    pub registry: Arc<Registry>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    audit_thread: Option<std::thread::JoinHandle<()>>,
    /// Copies the trail into PostgreSQL, when `[audit.postgres]` is configured.
    audit_sink: Option<PgSinkHandle>,
    /// Keeps the last durable checkpoint in the state store (truncation evidence).
    audit_witness: Option<crate::audit::witness::Keeper>,
    /// The trail's lock (`audit::lock_trail`), held while the server lives.
    _audit_lock: std::fs::File,
}

/// Starts everything `config` describes. Listeners bind before this returns, so a test or
/// the demo can connect at once (port 0 picks a free port).
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    let config = Arc::new(config);
    let tokens = TokenAuthority::load(&config.signing_key_path, &config.issuer, &config.audience)?;
    let tls = match &config.tls {
        Some(files) => {
            // Clients that start with TLS (`sslnegotiation=direct`) name the protocol by
            // ALPN; those that send an SSLRequest first may name it too.
            let mut proxy_tls = (*crate::tls::server_config(&files.cert, &files.key)?).clone();
            proxy_tls.alpn_protocols = vec![crate::proxy::ALPN_POSTGRESQL.to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(proxy_tls)))
        }
        None => None,
    };
    let api_tls = config
        .api_tls
        .as_ref()
        .map(crate::config::api_tls::server_config)
        .transpose()?;
    let store = Store::from_config(&config).await?;
    let signer = std::fs::read_to_string(&config.signing_key_path)
        .ok()
        .and_then(|pem| crate::audit::chain::CheckpointSigner::from_pem(&pem).ok());
    // One process writes a trail: taken before anything reads or changes it.
    let audit_lock = crate::audit::lock_trail(&config.audit_path)?;
    // Records a crash left only in the `fsync` journal go back into the trail first: the
    // trail is compared with its witness as it stood when those records were acknowledged.
    crate::audit::recover_journal(&config.audit_path).map_err(|e| {
        crate::audit::AuditError::Io {
            path: config.audit_path.display().to_string(),
            message: format!("recovering the audit journal: {e}"),
        }
    })?;
    // A trail shorter than the checkpoint last witnessed was cut: nothing is appended to it.
    crate::audit::witness::check_trail(&config.audit_path, &store).await?;
    crate::audit::witness::reopen(&store, &config.audit_path).await?;
    let (audit, audit_thread) = AuditLog::open_with(
        &config.audit_path,
        signer,
        crate::audit::AuditOptions {
            durability: config.audit_durability,
            sync_interval: config.audit_sync_interval,
            rotate_size: Some(config.audit_rotate_size),
            rotate_interval: config.audit_rotate_interval,
            ..crate::audit::AuditOptions::default()
        },
    )?;
    let audit_witness = crate::audit::witness::Keeper::spawn(
        store.clone(),
        config.audit_path.clone(),
        audit.witnessed(),
    );
    audit.set_clip_limits(config.audit_clip);
    audit.set_node(&config.node_id);
    let lockbox = Lockbox::shared(config.clone(), store, audit, tokens);
    lockbox
        .adopt_file_protection("configuration file", &config.protection)
        .await?;
    // A database that insists on per-grant roles its service role cannot make: no start.
    lockbox.provisioner.check_explicit(&config).await?;
    let audit_sink = config
        .audit_pg_sink
        .clone()
        .map(|sink| PgSinkHandle::spawn(sink, config.audit_path.clone()));
    let registry = Arc::new(Registry::default());
    registry.spares.count_in(lockbox.audit.metrics().clone());
    let exports = crate::exports::Exports::new(lockbox.clone());

    let proxy_listener = bind(config.proxy_listen).await?;
    let api_listener = bind(config.api_listen).await?;
    let proxy_addr = local_addr(&proxy_listener, config.proxy_listen)?;
    let api_addr = local_addr(&api_listener, config.api_listen)?;
    let (shutdown, shutdown_rx) = watch::channel(false);

    let mut tasks = Vec::new();
    let threads = crate::proxy::SessionThreads::start(config.proxy_threads)
        .map_err(ServerError::SessionThreads)?;
    let _ = registry.thread_sessions.set(threads.live());
    let proxy = Arc::new(Proxy {
        lockbox: lockbox.clone(),
        tls,
        registry: registry.clone(),
        threads,
    });
    tasks.push(tokio::spawn(proxy.run(proxy_listener, shutdown_rx.clone())));
    let api_state = crate::api::ApiState {
        lockbox: lockbox.clone(),
        registry: registry.clone(),
        exports: exports.clone(),
        shutdown: shutdown_rx.clone(),
        audit_sink: audit_sink.as_ref().map(|s| s.status.clone()),
        probes: Default::default(),
    };
    tasks.push(tokio::spawn(serve_api(
        api_state,
        api_listener,
        api_tls.map(|tls| (tls, api_addr)),
        shutdown_rx.clone(),
    )));
    // This node's heartbeat in a shared (PostgreSQL) store, for `GET /v1/cluster`.
    tasks.push(tokio::spawn(crate::cluster::nodes::heartbeat(
        crate::cluster::nodes::Local {
            lockbox: lockbox.clone(),
            registry: registry.clone(),
            sink: audit_sink.as_ref().map(|s| s.status.clone()),
        },
        shutdown_rx.clone(),
    )));
    let revocations = lockbox.subscribe_revocations();
    let follower = registry.clone();
    let follower_lockbox = lockbox.clone();
    let mut follower_stop = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = follower.follow_revocations(&follower_lockbox, revocations) => {}
            _ = follower_stop.changed() => {}
        }
    }));
    // Other nodes' revocations, cancels and extensions (a PostgreSQL state store only).
    tasks.push(tokio::spawn(crate::cluster::follow(
        lockbox.clone(),
        registry.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(follow_extensions(
        lockbox.clone(),
        registry.clone(),
        shutdown_rx.clone(),
    )));
    let config_source = lockbox.clone();
    tasks.push(tokio::spawn(
        lockbox
            .notifier
            .clone()
            .dispatch(move || config_source.config(), shutdown_rx.clone()),
    ));
    tasks.push(tokio::spawn(crate::exports::scheduler(
        exports,
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(reconcile_roles(
        lockbox.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::census::log_every_minute(
        lockbox.clone(),
        registry.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(sweep(lockbox.clone(), shutdown_rx)));
    tracing::info!(%proxy_addr, %api_addr, "lockbox is serving");
    Ok(RunningServer {
        proxy_addr,
        api_addr,
        lockbox,
        registry,
        shutdown,
        tasks,
        audit_thread: Some(audit_thread),
        audit_sink,
        audit_witness: Some(audit_witness),
        _audit_lock: audit_lock,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    listener
        .local_addr()
        .map_err(|source| ServerError::Listen { addr, source })
}

/// Serves the API on `listener`: HTTPS when `tls` (config, local address) is given.
async fn serve_api(
    state: crate::api::ApiState,
    listener: TcpListener,
    tls: Option<(Arc<rustls::ServerConfig>, SocketAddr)>,
    shutdown: watch::Receiver<bool>,
) {
    let app = crate::api::router(state);
    crate::https::serve(listener, tls.map(|(tls, _addr)| tls), app, shutdown).await;
}

/// Moves live sessions' deadlines when their grant is extended.
async fn follow_extensions(
    lockbox: Arc<Lockbox>,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut extended = lockbox.subscribe_extensions();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            next = extended.recv() => match next {
                Ok((id, end)) => {
                    let n = registry.extend_request(&id, end);
                    tracing::info!(request_id = %id, sessions = n, %end, "grant extended");
                }
                // A missed extension only means a session ends at its old deadline:
                // the safe direction.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "extension notices were missed");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn sweep(lockbox: Arc<Lockbox>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                if let Err(e) = crate::cluster::sweep_once(&lockbox).await {
                    tracing::error!(error = %e, "deadline sweep failed");
                }
            }
        }
    }
}

/// Drops per-grant roles whose grants are over: at start (it also decides each database's
/// logins, logged), then periodically.
async fn reconcile_roles(lockbox: Arc<Lockbox>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                let dropped = lockbox.reconcile_grant_roles().await;
                if dropped > 0 {
                    tracing::info!(dropped, "dropped the roles of grants that are over");
                }
            }
        }
    }
}

impl RunningServer {
    /// Stops accepting, ends every session with a FATAL 57P01, then flushes and closes the
    /// audit log so nothing is left half-written.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let aborter = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                aborter.abort();
            }
        }
        self.lockbox.audit.close().await;
        if let Some(thread) = self.audit_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(witness) = self.audit_witness.take() {
            witness.finish().await;
        }
        // The file is complete now: the sink ships the rest, then stops.
        if let Some(sink) = self.audit_sink.take() {
            sink.stop(SINK_DRAIN).await;
        }
        tracing::info!("lockbox stopped");
    }
}
