//! A typed client of the control-plane API, used by the CLI, the demo and the tests.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{Decision, ErrorBody, Extension, PolicyChange, TokenResponse, WhoAmI, MAX_PAGE};
use crate::audit::AuditQuery;
use crate::policy::{NewRequest, Request, RequestStatus};
use crate::service::{PolicyView, ReloadReport};

mod exports;
mod server_url;
mod sessions;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer. `message` says the cause and what to try (`http_client::describe`);
    /// reqwest's error is kept but not offered as the `source`, since its chain says the
    /// same cause again in other words ("error sending request for url …").
    #[error("cannot reach the lockbox API at {url}: {message}")]
    Unreachable {
        url: String,
        message: String,
        transport: reqwest::Error,
    },
    #[error("--ca-cert / LOCKBOX_CA_CERT: {0}")]
    CaCert(#[from] crate::http_client::CaError),
    #[error("{message} ({code}){}", api_hint(.status))]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the lockbox API: {0}")]
    Decode(String),
    /// Checked before any request: the API key would go in clear, or `--ca-cert` would
    /// be ignored.
    #[error("refusing to use the lockbox API at {url}: {reason}")]
    InsecureServer { url: String, reason: String },
    /// The API never redirects, so the answer came from something else (a proxy, a moved
    /// host); following it could send the API key elsewhere, or in clear.
    #[error(
        "the lockbox API at {url} answered HTTP {status} (a redirect to {location}); \
         redirects are not followed — set LOCKBOX_SERVER (--server) to the API's own URL"
    )]
    Redirected {
        url: String,
        status: u16,
        location: String,
    },
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
    /// Whether a private CA was named: then the server must be https://.
    with_ca: bool,
}

impl ApiClient {
    /// A client trusting the public CAs (an http:// or publicly signed https:// server).
    /// A URL the key must not go to (plain http:// off loopback) fails each request
    /// before anything is sent.
    pub fn new(base: &str, api_key: &str) -> Self {
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            // Building a client without a CA file reads nothing and cannot fail in practice.
            http: crate::http_client::client(None).unwrap_or_default(),
            with_ca: false,
        }
    }

    /// A client trusting only the CAs in `ca_cert` when given (a private CA), else the
    /// public ones.
    /// Fails at once for a URL the key must not go to, or a CA with an http:// URL.
    pub fn with_ca(base: &str, api_key: &str, ca_cert: Option<&Path>) -> Result<Self, ClientError> {
        server_url::check(base, ca_cert.is_some())?;
        let Some(path) = ca_cert else {
            return Ok(ApiClient::new(base, api_key));
        };
        let pem = crate::http_client::read_ca(path)?;
        let http = crate::http_client::client(Some(&pem)).map_err(|message| {
            crate::http_client::CaError::Invalid {
                path: path.display().to_string(),
                message,
            }
        })?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            http,
            with_ca: true,
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        Ok(self.send_noting(builder, url, None).await?.0)
    }

    /// [`Self::send`], with the value of the response header `noted`, if it has one.
    async fn send_noting<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
        url: &str,
        noted: Option<&str>,
    ) -> Result<(T, Option<String>), ClientError> {
        server_url::check(&self.base, self.with_ca)?;
        let response = builder
            .bearer_auth(&self.api_key)
            .send()
            .await
            .map_err(|e| unreachable(url, e))?;
        refuse_redirect(url, &response)?;
        let status = response.status();
        let note = noted
            .and_then(|name| response.headers().get(name))
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let value =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((value, note))
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
        self.list_requests_where(status, false, false).await
    }

    /// Requests, optionally only break-glass grants (and of those, the unreviewed).
    pub async fn list_requests_where(
        &self,
        status: Option<RequestStatus>,
        break_glass: bool,
        unacknowledged: bool,
    ) -> Result<Vec<Request>, ClientError> {
        let mut query: Vec<(&str, &str)> = status.iter().map(|s| ("status", s.as_str())).collect();
        if break_glass {
            query.push(("break_glass", "true"));
        }
        if unacknowledged {
            query.push(("unacknowledged", "true"));
        }
        self.get("/v1/requests", &query).await
    }

    /// Approves, granting at most `duration` (`2h`) when given.
    pub async fn approve_for(
        &self,
        id: &str,
        reason: &str,
        duration: Option<&str>,
    ) -> Result<Request, ClientError> {
        let body = Decision {
            reason: reason.to_owned(),
            duration: duration.map(str::to_owned),
        };
        self.post(&format!("/v1/requests/{}/approve", encode(id)), &body)
            .await
    }

    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Request, ClientError> {
        self.decide(id, "cancel", reason).await
    }

    pub async fn acknowledge(&self, id: &str, reason: &str) -> Result<Request, ClientError> {
        self.decide(id, "acknowledge", reason).await
    }

    /// Asks to extend an active grant; returns the extension request.
    pub async fn extend(
        &self,
        id: &str,
        duration: &str,
        reason: &str,
    ) -> Result<Request, ClientError> {
        let body = Extension {
            duration: duration.to_owned(),
            reason: reason.to_owned(),
        };
        self.post(&format!("/v1/requests/{}/extend", encode(id)), &body)
            .await
    }

    pub async fn policy(&self) -> Result<PolicyView, ClientError> {
        self.get("/v1/policy", &()).await
    }

    pub async fn set_policy(&self, protect: &str) -> Result<PolicyView, ClientError> {
        let url = format!("{}/v1/policy", self.base);
        let body = PolicyChange {
            protect: protect.to_owned(),
        };
        self.send(self.http.put(&url).json(&body), &url).await
    }

    /// Recent notification deliveries, newest first.
    pub async fn notifications(
        &self,
        request: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<crate::notify::Delivery>, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(r) = request {
            query.push(("request", r.to_owned()));
        }
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        self.get("/v1/notifications", &query).await
    }

    pub async fn reload(&self) -> Result<ReloadReport, ClientError> {
        self.post("/v1/admin/reload", &()).await
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
            duration: None,
        };
        self.post(&format!("/v1/requests/{}/{action}", encode(id)), &body)
            .await
    }

    pub async fn token(&self, id: &str) -> Result<TokenResponse, ClientError> {
        self.post(&format!("/v1/requests/{}/token", encode(id)), &())
            .await
    }

    /// Every matching record, fetched page by page (up to `query.limit` records).
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<serde_json::Value>, ClientError> {
        let mut all = Vec::new();
        let mut page = query.clone();
        loop {
            let wanted = query.limit.map(|l| l.saturating_sub(all.len()));
            let size = wanted.unwrap_or(MAX_PAGE).min(MAX_PAGE);
            if size == 0 {
                return Ok(all);
            }
            page.limit = Some(size);
            let records: Vec<serde_json::Value> = self.get("/v1/audit", &page).await?;
            let full = records.len() == size;
            page.after_seq = records.last().and_then(|r| r["seq"].as_u64());
            // The fleet's trail (read from the audit database) pages by node and seq.
            page.after_node = records
                .last()
                .and_then(|r| r["node"].as_str())
                .map(str::to_owned);
            all.extend(records);
            if !full || page.after_seq.is_none() {
                return Ok(all);
            }
        }
    }

    /// Follows the live stream of matching records (`GET /v1/audit/stream`), calling
    /// `on_record` for each, until the server ends the stream or the connection breaks.
    /// Returns the last sequence number seen, so a caller can resume from it.
    pub async fn follow_audit(
        &self,
        query: &AuditQuery,
        on_record: &mut dyn FnMut(serde_json::Value),
    ) -> Result<Option<u64>, ClientError> {
        server_url::check(&self.base, self.with_ca)?;
        let url = format!("{}/v1/audit/stream", self.base);
        let mut response = self
            .http
            .get(&url)
            .query(query)
            .bearer_auth(&self.api_key)
            .send()
            .await
            .map_err(|e| unreachable(&url, e))?;
        refuse_redirect(&url, &response)?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        let mut events = SseBuffer::default();
        let mut last = query.after_seq;
        loop {
            let chunk = response.chunk().await.map_err(|e| unreachable(&url, e))?;
            let Some(chunk) = chunk else {
                return Ok(last);
            };
            for event in events.push(&chunk) {
                let data = event.map_err(|message| ClientError::Api {
                    status: 200,
                    code: "stream".into(),
                    message,
                })?;
                let record: serde_json::Value =
                    serde_json::from_str(&data).map_err(|e| ClientError::Decode(e.to_string()))?;
                last = record["seq"].as_u64().or(last);
                on_record(record);
            }
        }
    }
}

/// Splits a server-sent-events byte stream into the `data` of each event.
#[derive(Default)]
struct SseBuffer {
    pending: Vec<u8>,
}

impl SseBuffer {
    /// Complete events so far: each one's data, or the message of an `error` event.
    fn push(&mut self, bytes: &[u8]) -> Vec<Result<String, String>> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if text.lines().any(|l| l == "event: error") {
                out.push(Err(data.join("\n")));
            } else if !data.is_empty() {
                out.push(Ok(data.join("\n")));
            }
        }
        out
    }
}

fn unreachable(url: &str, error: reqwest::Error) -> ClientError {
    // The whole chain, for whoever runs with RUST_LOG=debug.
    tracing::debug!(%url, error = ?error, "API request failed");
    ClientError::Unreachable {
        url: url.to_owned(),
        message: crate::http_client::describe(&error, crate::http_client::API),
        transport: error,
    }
}

/// A 3xx is an error (the client follows no redirects), naming where it pointed.
fn refuse_redirect(url: &str, response: &reqwest::Response) -> Result<(), ClientError> {
    let status = response.status();
    if !status.is_redirection() {
        return Ok(());
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or("nowhere")
        .to_owned();
    Err(ClientError::Redirected {
        url: url.to_owned(),
        status: status.as_u16(),
        location,
    })
}

/// What to try after an answer that is the caller's to fix.
fn api_hint(status: &u16) -> &'static str {
    match status {
        401 => " — check --api-key / LOCKBOX_API_KEY",
        _ => "",
    }
}

fn api_error(status: reqwest::StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "http".into(),
            message: format!(
                "HTTP {status} without a lockbox error body — is LOCKBOX_SERVER (--server) \
                 the lockbox API?"
            ),
        },
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
