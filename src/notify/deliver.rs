//! Sending one delivery: an email over SMTP (lettre) or a JSON POST (reqwest).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::notify::{Smtp, SmtpSecurity};

/// No delivery may hold the dispatcher longer than this.
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

/// An email's payload: subject, a blank line, then the text.
pub fn email_payload(subject: &str, text: &str) -> String {
    format!("{subject}\n\n{text}")
}

pub async fn email(smtp: &Smtp, to: &str, payload: &str) -> Result<(), String> {
    let (subject, body) = payload.split_once("\n\n").unwrap_or((payload, ""));
    let from: Mailbox = smtp
        .from
        .parse()
        .map_err(|e| format!("from address: {e}"))?;
    let to: Mailbox = to.parse().map_err(|e| format!("recipient {to}: {e}"))?;
    let message = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .body(body.to_owned())
        .map_err(|e| format!("building the email: {e}"))?;
    let builder = match smtp.security {
        SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
            .map_err(|e| e.to_string())?,
        SmtpSecurity::Tls => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(|e| e.to_string())?
        }
    };
    let mut builder = builder.port(smtp.port).timeout(Some(TIMEOUT));
    if let Some((user, password)) = &smtp.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    builder
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP {}:{}: {e}", smtp.host, smtp.port))
}

/// HTTP clients for webhooks: one trusting the public CAs, and one per private CA bundle a
/// webhook names (`ca_cert`), kept so connections to a receiver are reused.
#[derive(Clone)]
pub(crate) struct WebhookClients {
    public: reqwest::Client,
    private: Arc<Mutex<HashMap<Vec<u8>, reqwest::Client>>>,
}

/// Distinct CA bundles kept at most: each reload may bring new ones; past this the cache
/// starts over rather than grow.
const MAX_PRIVATE_CLIENTS: usize = 32;

impl WebhookClients {
    pub(crate) fn new() -> WebhookClients {
        WebhookClients {
            public: crate::http_client::client(None).unwrap_or_default(),
            private: Arc::default(),
        }
    }

    /// The client for a receiver signed by the CAs in `ca_pem`, or by a public CA.
    pub(crate) fn for_ca(&self, ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
        let Some(pem) = ca_pem else {
            return Ok(self.public.clone());
        };
        let mut private = self
            .private
            .lock()
            .map_err(|_| "webhook client cache poisoned".to_owned())?;
        if let Some(client) = private.get(pem) {
            return Ok(client.clone());
        }
        let client = crate::http_client::client(Some(pem)).map_err(|e| format!("ca_cert: {e}"))?;
        if private.len() >= MAX_PRIVATE_CLIENTS {
            private.clear();
        }
        private.insert(pem.to_vec(), client.clone());
        Ok(client)
    }
}

/// POSTs `payload` to `url`. Errors name the receiver by scheme, host and port only (the
/// rest of a webhook URL is often its secret), and a redirect is an error: the notifier
/// follows none (the client is built so), lest a receiver point it at internal addresses
/// or downgrade https:// to clear text.
///
/// Every attempt of one delivery carries the same `Idempotency-Key`: delivery is at least
/// once (an attempt the receiver took but whose answer was lost to the timeout, or to the
/// proxy's crash before it recorded the answer, is made again), and the key lets a
/// receiver tell such a repeat from a new notification.
pub async fn webhook(
    http: &reqwest::Client,
    url: &str,
    payload: &str,
    delivery_id: i64,
) -> Result<(), String> {
    let shown = crate::http_client::redact_url(url);
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", idempotency_key(delivery_id))
        .body(payload.to_owned())
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            // reqwest's own message quotes the whole URL.
            let e = e.without_url();
            format!(
                "webhook {shown}: {}",
                crate::http_client::describe(&e, crate::http_client::WEBHOOK)
            )
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(crate::http_client::redact_url)
            .unwrap_or_else(|| "nowhere".into());
        Err(format!(
            "webhook {shown}: HTTP {status}, a redirect to {location} (not followed: set \
             the webhook's url to where it should post)"
        ))
    } else {
        Err(format!("webhook {shown}: HTTP {status}"))
    }
}

/// The `Idempotency-Key` of every attempt of delivery `id`.
pub(crate) fn idempotency_key(id: i64) -> String {
    format!("lockbox-delivery-{id}")
}
