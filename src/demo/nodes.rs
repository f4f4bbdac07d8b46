//! `lockbox demo --nodes N`: N lockbox nodes on this machine sharing one state database on
//! the demo's PostgreSQL, as a fleet behind a load balancer shares one (the balancer
//! itself is left out: each node's ports go to the env file).

use anyhow::{Context, Result};

use super::Deployment;
use crate::sandbox::PgSandbox;
use crate::server::RunningServer;

/// The demo's shared state database.
const STATE_DB: &str = "lockbox_state";

/// Points the deployment's config at a new state database on `pg`, as node 1.
pub(super) fn share_state(pg: &PgSandbox, deployment: &Deployment) -> Result<()> {
    pg.psql("postgres", &format!("CREATE DATABASE {STATE_DB}"))?;
    let text = std::fs::read_to_string(&deployment.config_path)?;
    let text = text.replace(
        "sqlite_path = \"state.db\"",
        // The sandbox's superuser logs in from loopback without a password.
        &format!("url = \"{}\"", pg.url(STATE_DB)),
    ) + "\n[node]\nid = \"node-1\"\n";
    std::fs::write(&deployment.config_path, text)?;
    Ok(())
}

/// Starts node `i` (2…N): node 1's config with listeners, audit trail and id of its own.
pub(super) async fn start_node(deployment: &Deployment, i: usize) -> Result<RunningServer> {
    let text = std::fs::read_to_string(&deployment.config_path)?;
    let free = || crate::sandbox::free_port().context("finding a free port");
    let text = text
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", deployment.proxy_port),
            &format!("listen = \"127.0.0.1:{}\"", free()?),
        )
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", deployment.api_port),
            &format!("listen = \"127.0.0.1:{}\"", free()?),
        )
        .replace(
            "path = \"audit/audit.jsonl\"",
            &format!("path = \"audit/node{i}.jsonl\""),
        )
        .replace("id = \"node-1\"", &format!("id = \"node-{i}\""));
    let path = deployment
        .config_path
        .with_file_name(format!("lockbox-node{i}.toml"));
    std::fs::write(&path, text)?;
    let config = crate::config::Config::load(&path)?;
    Ok(crate::server::start(config).await?)
}

/// `LOCKBOX_NODE<i>_SERVER` and `LOCKBOX_NODE<i>_PROXY_PORT` of each node (node 1 first).
pub(super) fn env_lines(deployment: &Deployment, others: &[RunningServer]) -> Vec<String> {
    let scheme = if deployment.ca_path.is_some() {
        "https"
    } else {
        "http"
    };
    let mut nodes = vec![(deployment.server_url(), deployment.proxy_port)];
    nodes.extend(others.iter().map(|s| {
        (
            format!("{scheme}://127.0.0.1:{}", s.api_addr.port()),
            s.proxy_addr.port(),
        )
    }));
    nodes
        .iter()
        .enumerate()
        .flat_map(|(i, (server, port))| {
            let n = i + 1;
            [
                format!("export LOCKBOX_NODE{n}_SERVER='{server}'"),
                format!("export LOCKBOX_NODE{n}_PROXY_PORT='{port}'"),
            ]
        })
        .collect()
}
