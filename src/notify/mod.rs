//! Notifications: approvers are told when a request awaits them, requester and approvers
//! when it is approved, denied, expires or is revoked, and every approver of break-glass
//! access. Channels: SMTP email and JSON webhooks (plain, Slack or Teams payloads).
//!
//! The request flow only queues: each delivery is a row in the state store's outbox, and a
//! dispatcher task sends them, retrying with exponential backoff. A receiver that is down
//! never slows or fails a request; failures are logged and visible (`lockbox notify status`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{watch, Notify};

use crate::config::notify::WebhookFormat;
use crate::config::Config;
use crate::policy::Request;
use crate::store::Store;

mod deliver;
pub mod message;
pub mod outbox;
mod redact;

pub use message::Event;
pub use outbox::Delivery;

/// Longest wait between two attempts of one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The dispatcher looks at the outbox at least this often.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Deliveries on their way at once (each bounded by the delivery timeout).
const DELIVERIES_IN_FLIGHT: usize = 8;
/// Longest one delivery attempt may take, all steps together (an SMTP exchange is several
/// steps of up to 10 s each): well within a node's claim on the delivery in a shared
/// store (`store/pg/outbox.rs`), so no other node takes over an attempt still running.
pub(crate) const ATTEMPT_LIMIT: Duration = Duration::from_secs(15);
/// How soon the outbox is read again while deliveries are on their way.
const BUSY_POLL: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct Notifier {
    store: Store,
    wake: Arc<Notify>,
    http: deliver::WebhookClients,
}

impl Notifier {
    pub fn new(store: Store) -> Notifier {
        Notifier {
            store,
            wake: Arc::new(Notify::new()),
            http: deliver::WebhookClients::new(),
        }
    }

    /// Queues `event` on `request` for every configured channel. Never fails the caller:
    /// a notification that cannot even be queued is logged.
    pub async fn notify(&self, config: &Config, request: &Request, event: Event) {
        let message = message::compose(config, request, event);
        let mut list = Vec::new();
        if config.notifications.smtp.is_some() {
            let payload = deliver::email_payload(&message.subject, &message.text);
            for to in &message.emails {
                list.push(outbox::NewDelivery {
                    channel: "smtp",
                    target: to.clone(),
                    event: event.as_str().to_owned(),
                    request_id: message.request_id.clone(),
                    payload: payload.clone(),
                });
            }
        }
        for hook in &config.notifications.webhooks {
            list.push(outbox::NewDelivery {
                channel: "webhook",
                target: hook.url.clone(),
                event: event.as_str().to_owned(),
                request_id: message.request_id.clone(),
                payload: webhook_body(&message, hook.format),
            });
        }
        if list.is_empty() {
            return;
        }
        match outbox::enqueue(&self.store, list).await {
            Ok(()) => self.wake.notify_one(),
            Err(e) => {
                tracing::error!(request_id = %request.id, error = %e, "could not queue notifications")
            }
        }
    }

    /// Sends due deliveries until `shutdown`, reading the configuration in force each time.
    /// Deliveries go out side by side and each is recorded as it ends: a receiver that
    /// hangs holds one slot for the delivery timeout, not every delivery due behind it.
    pub async fn dispatch(
        self,
        config: impl Fn() -> Arc<Config>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Each delivery runs on a task of its own, not as a future this loop polls: a
        // delivery records its attempt through the state store's pool, and one that holds a
        // pooled connection while this loop awaits the store itself (not polling it) would
        // never give it back. Four such (the PostgreSQL pool's size) deadlocked the node's
        // whole store: the API, decisions and admissions with it.
        let mut in_flight = tokio::task::JoinSet::new();
        // Delivery ids on their way, by task (a task that panicked still frees its id).
        let mut sending: std::collections::HashMap<tokio::task::Id, i64> =
            std::collections::HashMap::new();
        loop {
            let free = DELIVERIES_IN_FLIGHT.saturating_sub(in_flight.len());
            if free > 0 {
                // Only as many as there are free slots: on a shared store each one returned
                // is claimed for two minutes, and one claimed but left unsent would wait out
                // the claim before any node sent it.
                match outbox::due(&self.store, Utc::now(), free).await {
                    Ok(due) => {
                        let config = config();
                        let new: Vec<Delivery> = due
                            .into_iter()
                            .filter(|d| !sending.values().any(|id| *id == d.id))
                            .take(free)
                            .collect();
                        for delivery in new {
                            let id = delivery.id;
                            let notifier = self.clone();
                            let config = config.clone();
                            let task = in_flight
                                .spawn(async move { notifier.send_one(config, delivery).await });
                            sending.insert(task.id(), id);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "notification outbox unreadable"),
                }
            }
            let wait = match outbox::next_due(&self.store).await {
                // A delivery on its way is still "due" in the outbox: look again soon,
                // not at once, while it is.
                Ok(Some(at)) if !in_flight.is_empty() => (at - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .clamp(BUSY_POLL, IDLE_POLL),
                Ok(Some(at)) => (at - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_POLL),
                _ => IDLE_POLL,
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(joined) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                    match joined {
                        Ok((task, (_, recorded))) => {
                            sending.remove(&task);
                            if let Err(e) = recorded {
                                tracing::error!(error = %e, "notification outbox unwritable");
                            }
                        }
                        Err(e) => {
                            sending.remove(&e.id());
                            tracing::error!(error = %e, "a notification delivery failed to finish");
                        }
                    }
                }
            }
        }
    }

    /// Sends one delivery and records the attempt (and the next one, or giving up).
    async fn send_one(
        &self,
        config: Arc<Config>,
        delivery: Delivery,
    ) -> (i64, Result<(), crate::store::StoreError>) {
        // The whole attempt is bounded here, whatever the channel: lettre's own timeout
        // covers only the TCP connect, so a relay that accepts and never greets (or drips
        // its replies) would hold this slot for ever, and 8 of them every notification.
        // The same bound lets a shared store's claim outlast any live node's attempt.
        let result = tokio::time::timeout(ATTEMPT_LIMIT, self.send(&config, &delivery))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{}: no answer within {} s",
                    delivery.channel,
                    ATTEMPT_LIMIT.as_secs()
                ))
            });
        let attempt = delivery.attempts + 1;
        let next = match &result {
            Ok(()) => None,
            Err(e) if attempt >= config.notifications.max_attempts => {
                tracing::error!(id = delivery.id, target = %redact::target(&delivery.channel, &delivery.target, &config.notifications.webhooks), error = %e, attempt, "notification failed; giving up");
                None
            }
            Err(e) => {
                let backoff = backoff(config.notifications.retry_base, attempt);
                tracing::warn!(id = delivery.id, target = %redact::target(&delivery.channel, &delivery.target, &config.notifications.webhooks), error = %e, attempt, retry_in_ms = backoff.as_millis() as u64, "notification failed; will retry");
                chrono::Duration::from_std(backoff)
                    .ok()
                    .map(|b| Utc::now() + b)
            }
        };
        let recorded = outbox::record_attempt(&self.store, delivery.id, result, next).await;
        (delivery.id, recorded)
    }

    async fn send(&self, config: &Config, delivery: &Delivery) -> Result<(), String> {
        match delivery.channel.as_str() {
            "smtp" => match &config.notifications.smtp {
                Some(smtp) => deliver::email(smtp, &delivery.target, &delivery.payload).await,
                None => Err("SMTP is no longer configured".into()),
            },
            "webhook" => {
                // The receiver's CA as configured now; a url no longer configured is sent
                // with the public CAs.
                let ca = config
                    .notifications
                    .webhooks
                    .iter()
                    .find(|w| w.url == delivery.target)
                    .and_then(|w| w.ca_pem.as_deref());
                let http = self.http.for_ca(ca)?;
                deliver::webhook(&http, &delivery.target, &delivery.payload, delivery.id).await
            }
            other => Err(format!("unknown channel {other}")),
        }
    }

    /// Recent deliveries, webhook URLs shown as their origin and configured webhook.
    pub async fn recent(
        &self,
        request_id: Option<String>,
        limit: usize,
        webhooks: &[crate::config::notify::Webhook],
    ) -> Result<Vec<Delivery>, crate::store::StoreError> {
        let recent = outbox::recent(&self.store, request_id, limit).await?;
        Ok(recent
            .into_iter()
            .map(|d| redact::delivery(d, webhooks))
            .collect())
    }
}

/// `base`, doubled for each attempt after the first, at most [`MAX_BACKOFF`].
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

fn webhook_body(message: &message::Message, format: WebhookFormat) -> String {
    let body = match format {
        WebhookFormat::Json => serde_json::json!({
            "event": message.event,
            "request": message,
        }),
        WebhookFormat::Slack => serde_json::json!({
            "text": format!("*{}*\n{}", message.subject, message.text),
        }),
        WebhookFormat::Teams => serde_json::json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": message.subject,
            "title": message.subject,
            "text": message.text.replace('\n', "<br>"),
        }),
    };
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=4).map(|a| backoff(base, a).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8]);
        assert_eq!(backoff(base, 30), MAX_BACKOFF);
    }
}
