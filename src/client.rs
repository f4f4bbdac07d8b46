//! A typed client of the control-plane API, used by the CLI, the demo and the tests.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{Decision, ErrorBody, TokenResponse, WhoAmI};
use crate::audit::AuditQuery;
use crate::policy::{NewRequest, Request, RequestStatus};

mod exports;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the lockbox API at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{message} ({code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the lockbox API: {0}")]
    Decode(String),
}

impl ClientError {
    /// The API's error code, if the API answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    api_key: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, api_key: &str) -> Self {
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        let response = builder
            .bearer_auth(&self.api_key)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Api {
                    status: status.as_u16(),
                    code: body.error.code,
                    message: body.error.message,
                },
                Err(_) => ClientError::Api {
                    status: status.as_u16(),
                    code: "http".into(),
                    message: format!("HTTP {status}"),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url).query(query), &url).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), &url).await
    }

    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get("/v1/whoami", &()).await
    }

    pub async fn create_request(&self, new: &NewRequest) -> Result<Request, ClientError> {
        self.post("/v1/requests", new).await
    }

    pub async fn list_requests(
        &self,
        status: Option<RequestStatus>,
    ) -> Result<Vec<Request>, ClientError> {
        let query: Vec<(&str, &str)> = status.iter().map(|s| ("status", s.as_str())).collect();
        self.get("/v1/requests", &query).await
    }

    pub async fn show_request(&self, id: &str) -> Result<Request, ClientError> {
        self.get(&format!("/v1/requests/{}", encode(id)), &()).await
    }

    pub async fn approve(&self, id: &str, reason: &str) -> Result<Request, ClientError> {
        self.decide(id, "approve", reason).await
    }

    pub async fn deny(&self, id: &str, reason: &str) -> Result<Request, ClientError> {
        self.decide(id, "deny", reason).await
    }

    pub async fn revoke(&self, id: &str, reason: &str) -> Result<Request, ClientError> {
        self.decide(id, "revoke", reason).await
    }

    async fn decide(&self, id: &str, action: &str, reason: &str) -> Result<Request, ClientError> {
        let body = Decision {
            reason: reason.to_owned(),
        };
        self.post(&format!("/v1/requests/{}/{action}", encode(id)), &body)
            .await
    }

    pub async fn token(&self, id: &str) -> Result<TokenResponse, ClientError> {
        self.post(&format!("/v1/requests/{}/token", encode(id)), &())
            .await
    }

    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<serde_json::Value>, ClientError> {
        self.get("/v1/audit", query).await
    }
}

/// Request ids are `req-<hex>`, but a path segment must never smuggle a `/` or `?`.
fn encode(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c.to_string(),
            other => format!("%{:02X}", other as u32 & 0xff),
        })
        .collect()
}
