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

/// Whether `/v1/health` shows `caller` its details (live sessions, each database by
/// name, the audit sink's lag and errors). The API listens on the network once it serves
/// HTTPS: which customer databases sit behind the proxy, how many engineers are inside
/// them right now, and PostgreSQL's error words (hosts, roles), are for those who may read
/// the audit trail; a probe needs up/down.
pub(crate) fn visible_to(caller: Option<&crate::config::User>) -> bool {
    caller.is_some_and(|user| crate::policy::check_audit_read(user).is_ok())
}

/// The audit sink in `/v1/health`: its whole status for a caller who may see details,
/// else `ok` (connected) or `failing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SinkView {
    Details(crate::audit::pg_sink::SinkHealth),
    Summary(String),
}

impl SinkView {
    pub(crate) fn new(health: crate::audit::pg_sink::SinkHealth, details: bool) -> SinkView {
        match (details, health.connected) {
            (true, _) => SinkView::Details(health),
            (false, true) => SinkView::Summary("ok".into()),
            (false, false) => SinkView::Summary("failing".into()),
        }
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
    use crate::config::{Role, User};

    fn user(roles: &[Role]) -> User {
        User {
            name: "u".into(),
            roles: roles.to_vec(),
            api_key_sha256: None,
            mfa: false,
            groups: Vec::new(),
            email: None,
        }
    }

    #[test]
    fn details_are_for_those_who_may_read_the_audit_trail() {
        assert!(!visible_to(None));
        assert!(!visible_to(Some(&user(&[Role::Engineer]))));
        assert!(visible_to(Some(&user(&[Role::Auditor]))));
        assert!(visible_to(Some(&user(&[Role::Admin]))));
    }

    #[test]
    fn an_anonymous_caller_sees_the_sink_as_ok_or_failing_only() {
        let sink = |connected| crate::audit::pg_sink::SinkHealth {
            proxy_id: "proxy-a".into(),
            connected,
            shipped_seq: 1,
            written_seq: 3,
            lag: 2,
            last_error: Some("connection to db.internal:5432 refused".into()),
        };
        let shown = |view: SinkView| serde_json::to_value(view).expect("json");
        assert_eq!(shown(SinkView::new(sink(true), false)), "ok");
        assert_eq!(shown(SinkView::new(sink(false), false)), "failing");
        let details = shown(SinkView::new(sink(false), true));
        assert_eq!(details["lag"], 2);
        assert!(details["last_error"].is_string());
    }

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
