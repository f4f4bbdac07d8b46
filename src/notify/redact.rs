//! What of a delivery's target may be shown. A webhook URL is a credential (Slack's
//! `/services/T…/B…/<secret>`, Teams' signed URLs): whoever has it posts where approvers
//! look. Readers of `/v1/notifications` and the logs get its scheme, host and port only,
//! and which configured webhook it is (`webhooks[i]`, in the configuration in force), so
//! two webhooks to one host stay apart; the outbox keeps the whole URL, since it is where
//! the delivery goes.

use super::outbox::Delivery;
use crate::config::notify::Webhook;

/// `target` as it may be displayed or logged.
pub(crate) fn target(channel: &str, target: &str, webhooks: &[Webhook]) -> String {
    if channel != "webhook" {
        return target.to_owned();
    }
    let origin = crate::http_client::redact_url(target);
    match webhooks.iter().position(|w| w.url == target) {
        Some(i) => format!("{origin} (webhooks[{i}])"),
        None => origin,
    }
}

/// `delivery` as readers of the outbox see it. An error recorded before URLs were
/// redacted is scrubbed of the URL too.
pub(crate) fn delivery(mut delivery: Delivery, webhooks: &[Webhook]) -> Delivery {
    let shown = target(&delivery.channel, &delivery.target, webhooks);
    if shown != delivery.target {
        let origin = crate::http_client::redact_url(&delivery.target);
        delivery.last_error = delivery
            .last_error
            .map(|e| e.replace(delivery.target.as_str(), &origin));
        delivery.target = shown;
    }
    delivery
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_target_and_its_error_lose_the_secret_an_email_stays() {
        let url = "https://hooks.example.com/services/T0/B0/SECRET";
        let row = Delivery {
            id: 1,
            channel: "webhook".into(),
            target: url.into(),
            event: "requested".into(),
            request_id: "r".into(),
            status: "pending".into(),
            attempts: 1,
            next_attempt_at: chrono::Utc::now(),
            last_error: Some(format!("webhook {url}: HTTP 500")),
            created_at: chrono::Utc::now(),
            delivered_at: None,
            payload: String::new(),
        };
        let configured = |url: &str| Webhook {
            url: url.into(),
            format: crate::config::notify::WebhookFormat::Json,
            ca_pem: None,
        };
        let shown = delivery(row.clone(), &[]);
        assert_eq!(shown.target, "https://hooks.example.com");
        assert_eq!(
            shown.last_error.as_deref(),
            Some("webhook https://hooks.example.com: HTTP 500")
        );
        let email = Delivery {
            channel: "smtp".into(),
            target: "ops@example.com".into(),
            ..row.clone()
        };
        let webhooks = [
            configured("https://hooks.example.com/other"),
            configured(url),
        ];
        let second = delivery(row, &webhooks);
        assert_eq!(second.target, "https://hooks.example.com (webhooks[1])");
        assert_eq!(
            second.last_error.as_deref(),
            Some("webhook https://hooks.example.com: HTTP 500")
        );
        assert_eq!(delivery(email, &webhooks).target, "ops@example.com");
    }
}
