//! Reachability of each configured database, for `/v1/health` and `/metrics`: a TCP
//! connect to the database's address with a short timeout. Results are cached briefly and
//! probes run one round at a time, so however often health is polled the databases see
//! at most one connection attempt per `CACHE_FOR`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// How long one probe may take before the database counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a round of probes is reused.
const CACHE_FOR: Duration = Duration::from_secs(5);

/// One database's reachability as of its last probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatabaseHealth {
    pub name: String,
    /// `ok` or `unreachable`. Why it is unreachable goes to the log only: health is
    /// answered to anyone, and connection errors name hosts and addresses.
    pub status: String,
}

impl DatabaseHealth {
    pub fn reachable(&self) -> bool {
        self.status == "ok"
    }
}

/// The last round of probes and when it ran.
#[derive(Default)]
pub struct Probes {
    last: tokio::sync::Mutex<Option<(Instant, Vec<DatabaseHealth>)>>,
}

impl Probes {
    /// Each database's reachability, probed at most once per `CACHE_FOR`.
    pub async fn check(&self, config: &Config) -> Vec<DatabaseHealth> {
        // Held across the probes: concurrent callers wait for this round, not start theirs.
        let mut last = self.last.lock().await;
        if let Some((at, list)) = last.as_ref() {
            let same_databases = list.iter().map(|d| &d.name).eq(config.databases.keys());
            if at.elapsed() < CACHE_FOR && same_databases {
                return list.clone();
            }
        }
        let probes = config
            .databases
            .iter()
            .map(|(name, db)| probe(name, &db.host, db.port));
        let list = futures::future::join_all(probes).await;
        *last = Some((Instant::now(), list.clone()));
        list
    }
}

async fn probe(name: &str, host: &str, port: u16) -> DatabaseHealth {
    let connect = tokio::net::TcpStream::connect((host, port));
    let error = match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "no answer within {}",
            humantime::format_duration(PROBE_TIMEOUT)
        )),
    };
    if let Some(e) = &error {
        tracing::warn!(database = name, error = %e, "database unreachable");
    }
    DatabaseHealth {
        name: name.to_owned(),
        status: if error.is_none() { "ok" } else { "unreachable" }.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_an_open_one_ok() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open = listener.local_addr().expect("addr").port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        assert!(probe("a", "127.0.0.1", open).await.reachable());
        let down = probe("b", "127.0.0.1", closed).await;
        assert_eq!(down.status, "unreachable");
    }
}
