//! The client side of `/v1/sessions`.

use super::{encode, ApiClient, ClientError};
use crate::api::Kill;
use crate::proxy::SessionInfo;

impl ApiClient {
    /// Live sessions the caller may see.
    pub async fn list_sessions(&self) -> Result<Vec<SessionInfo>, ClientError> {
        self.get("/v1/sessions", &()).await
    }

    /// Live sessions the caller may see, and why the list is partial if it is (the server
    /// could not read the other nodes' sessions: `Lockbox-Incomplete`).
    pub async fn list_sessions_noting(
        &self,
    ) -> Result<(Vec<SessionInfo>, Option<String>), ClientError> {
        let url = format!("{}/v1/sessions", self.base);
        self.send_noting(
            self.http.get(&url),
            &url,
            Some(crate::api::INCOMPLETE_HEADER),
        )
        .await
    }

    /// Ends a live session (admin or approver), saying why.
    pub async fn kill_session(&self, id: &str, reason: &str) -> Result<SessionInfo, ClientError> {
        let body = Kill {
            reason: reason.to_owned(),
        };
        self.post(&format!("/v1/sessions/{}/kill", encode(id)), &body)
            .await
    }
}

impl ApiClient {
    /// The nodes sharing the server's state store, seen recently (the server alone on
    /// SQLite).
    pub async fn cluster(&self) -> Result<Vec<crate::cluster::NodeInfo>, ClientError> {
        self.get("/v1/cluster", &()).await
    }
}
