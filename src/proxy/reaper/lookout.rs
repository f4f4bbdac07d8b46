//! Where a reaper looks at the backend from: a login of its own as the session's role, or,
//! when that role is at its connection limit, a service connection that names the role.

use std::time::Duration;

use super::ReapError;
use crate::proxy::upstream::{Upstream, UpstreamError};

/// How long a query on the service connection may take (the server's own
/// `statement_timeout` on it is shorter; this bounds a server that stops answering).
const SERVICE_QUERY_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) enum Lookout {
    /// Logged in as the session did: its `session_user` is the session's role.
    AsTheRole(Upstream),
    /// The database's service role, a member of the grant's role (so it may signal its
    /// backends), with the role's name as an SQL literal.
    Service {
        client: tokio_postgres::Client,
        role: String,
    },
}

impl Lookout {
    /// The SQL that names the session's role here.
    pub(super) fn role(&self) -> &str {
        match self {
            Lookout::AsTheRole(_) => "session_user",
            Lookout::Service { role, .. } => role,
        }
    }

    /// Runs `sql` and counts the rows it returned.
    pub(super) async fn rows(&mut self, sql: &str) -> Result<u64, ReapError> {
        match self {
            Lookout::AsTheRole(conn) => conn.simple_query(sql).await.map_err(ReapError::Query),
            Lookout::Service { client, .. } => {
                let answer = tokio::time::timeout(SERVICE_QUERY_TIMEOUT, client.simple_query(sql))
                    .await
                    .map_err(|_| ReapError::Query(UpstreamError::QueryTimeout))?
                    .map_err(ReapError::ServiceQuery)?;
                let rows = answer
                    .iter()
                    .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                    .count();
                Ok(u64::try_from(rows).unwrap_or(u64::MAX))
            }
        }
    }

    /// Logs out (the service connection's task ends with its client).
    pub(super) async fn close(self) {
        if let Lookout::AsTheRole(conn) = self {
            conn.close().await;
        }
    }
}
