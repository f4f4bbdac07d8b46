//! What of a delivery's target may be shown. A webhook URL is a credential (Slack's
//! `/services/T…/B…/<secret>`, Teams' signed URLs): whoever has it posts where approvers
//! look. Readers of `/v1/notifications` and the logs get its scheme, host and port only;
//! the outbox keeps the whole URL, since it is where the delivery goes.

use super::outbox::Delivery;

/// `target` as it may be displayed or logged.
pub(crate) fn target(channel: &str, target: &str) -> String {
    match channel {
        "webhook" => crate::http_client::redact_url(target),
        _ => target.to_owned(),
    }
}

/// `delivery` as readers of the outbox see it. An error recorded before URLs were
/// redacted is scrubbed of the URL too.
pub(crate) fn delivery(mut delivery: Delivery) -> Delivery {
    let shown = target(&delivery.channel, &delivery.target);
    if shown != delivery.target {
        delivery.last_error = delivery
            .last_error
            .map(|e| e.replace(delivery.target.as_str(), &shown));
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
        let shown = delivery(row.clone());
        assert_eq!(shown.target, "https://hooks.example.com");
        assert_eq!(
            shown.last_error.as_deref(),
            Some("webhook https://hooks.example.com: HTTP 500")
        );
        let email = Delivery {
            channel: "smtp".into(),
            target: "ops@example.com".into(),
            ..row
        };
        assert_eq!(delivery(email).target, "ops@example.com");
    }
}
