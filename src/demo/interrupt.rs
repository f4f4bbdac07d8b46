//! The demo's cleanup on Ctrl-C or SIGTERM at any point: the sandbox holds a signing key,
//! upstream passwords and API keys on disk, so the demo keeps track of what it made and
//! removes it however it stops.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::sandbox::{PgSandbox, SandboxError};
use crate::server::RunningServer;

/// SIGINT (Ctrl-C) and SIGTERM, installed before the demo makes anything: from then on
/// neither kills the process without the cleanup.
pub(super) struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    pub(super) fn install() -> Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// The name of the next stop signal.
    pub(super) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Everything the demo made so far, in the order it made it.
#[derive(Default)]
pub(super) struct Held {
    /// PostgreSQL while it is being started (on a blocking thread).
    pub pg_starting: Option<tokio::task::JoinHandle<Result<PgSandbox, SandboxError>>>,
    pub pg: Option<PgSandbox>,
    /// The deployment: signing key, certificates, passwords, config, state, audit.
    pub dir: Option<tempfile::TempDir>,
    pub server: Option<RunningServer>,
    /// Nodes 2…N of `--nodes N`.
    pub other_nodes: Vec<RunningServer>,
    /// The env file the user asked for (it holds API keys).
    pub env_file: Option<PathBuf>,
}

impl Held {
    pub(super) fn pg(&self) -> Result<&PgSandbox> {
        self.pg.as_ref().context("PostgreSQL is not running")
    }

    /// Starts PostgreSQL; an interruption meanwhile leaves the handle here for `cleanup`.
    pub(super) async fn start_pg(&mut self) -> Result<&PgSandbox> {
        let starting = self
            .pg_starting
            .insert(tokio::task::spawn_blocking(PgSandbox::start));
        let started = starting.await;
        // Finished either way: `cleanup` must not await the handle again (a JoinHandle
        // polled after completion panics).
        self.pg_starting = None;
        let pg = started??;
        Ok(self.pg.insert(pg))
    }

    /// Stops lockbox and PostgreSQL and removes every file the demo wrote, in reverse order.
    pub(super) async fn cleanup(&mut self) {
        if let Some(path) = self.env_file.take() {
            let _ = std::fs::remove_file(&path);
        }
        for node in self.other_nodes.drain(..) {
            node.shutdown().await;
        }
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(e) = dir.close() {
                eprintln!("could not remove {}: {e}", path.display());
            }
        }
        // A server still starting is stopped once it is up (its own folder goes with it).
        if let Some(starting) = self.pg_starting.take() {
            if let Ok(Ok(pg)) = starting.await {
                drop(pg);
            }
        }
        drop(self.pg.take());
    }
}
