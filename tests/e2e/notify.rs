//! Notifications reach a real local SMTP listener and a real local HTTP receiver, both
//! started here; a receiver that is down gets the delivery later, by retry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockbox::policy::{AccessLevel, NewRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::harness::{Env, Options};

/// One email as the SMTP listener received it.
#[derive(Clone, Debug)]
struct Mail {
    to: Vec<String>,
    data: String,
}

/// A minimal SMTP server: enough of RFC 5321 for a client to hand over messages.
async fn smtp_listener() -> (u16, Arc<Mutex<Vec<Mail>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mails = Arc::new(Mutex::new(Vec::new()));
    let store = mails.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 test ESMTP\r\n").await;
                let mut to = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 test\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        to.push(line[8..].trim().trim_matches(['<', '>']).to_owned());
                        b"250 OK\r\n"
                    } else if upper == "DATA" {
                        let _ = write.write_all(b"354 go ahead\r\n").await;
                        let mut data = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        store.lock().expect("mails").push(Mail {
                            to: std::mem::take(&mut to),
                            data,
                        });
                        b"250 queued\r\n"
                    } else if upper == "QUIT" {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 OK\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, mails)
}

/// An HTTP receiver for webhooks on `port`, recording each body.
async fn webhook_receiver(port: u16) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = bodies.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let store = store.clone();
            async move {
                if let Ok(v) = serde_json::from_str(&body) {
                    store.lock().expect("bodies").push(v);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind hook");
    tokio::spawn(async move { axum::serve(listener, app).await });
    bodies
}

async fn wait_for<T>(what: &str, check: impl Fn() -> Option<T>) -> T {
    wait_within(what, 150, check).await
}

/// [`wait_for`], for up to `tenths` tenths of a second.
async fn wait_within<T>(what: &str, tenths: usize, check: impl Fn() -> Option<T>) -> T {
    for _ in 0..tenths {
        if let Some(v) = check() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never saw {what}");
}

fn mails_about(mails: &Arc<Mutex<Vec<Mail>>>, subject: &str) -> Vec<Mail> {
    mails
        .lock()
        .expect("mails")
        .iter()
        .filter(|m| m.data.contains(subject))
        .cloned()
        .collect()
}

fn recipients(mails: &[Mail]) -> Vec<String> {
    let mut to: Vec<String> = mails.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    to
}

#[tokio::test(flavor = "multi_thread")]
async fn approvers_and_requesters_are_told_by_mail_and_webhook_even_when_a_receiver_was_down() {
    let (smtp_port, mails) = smtp_listener().await;
    let hook_port = lockbox::sandbox::free_port().expect("port");
    let settings = format!(
        "\n[notifications]\nretry_base = \"200ms\"\nmax_attempts = 50\n\
         [notifications.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nfrom = \"lockbox@example.test\"\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n"
    );
    let env = Env::with(
        "notify_flow",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    let new = NewRequest {
        database: env.db.clone(),
        ticket: "SUP-77".into(),
        reason: "repair rows".into(),
        access: AccessLevel::Write,
        duration: Some("1h".into()),
        ..NewRequest::default()
    };
    let id = env.file("eve", &new).await;

    // The internal stage's designated approver (the support lead) is asked first.
    let asked = wait_for("the lead's mail", || {
        Some(mails_about(&mails, "awaits your approval")).filter(|m| !m.is_empty())
    })
    .await;
    assert_eq!(recipients(&asked), ["lena@example.test"]);
    assert!(
        asked[0]
            .data
            .contains(&format!("lockbox request approve {id}")),
        "{}",
        asked[0].data
    );
    assert!(asked[0]
        .data
        .contains(&format!("/v1/requests/{id}/approve")));

    // The webhook receiver is down: the delivery waits and retries, visibly.
    let mut retried = false;
    for _ in 0..150 {
        let list = env
            .client("alice")
            .notifications(Some(&id), None)
            .await
            .expect("status");
        retried = list.iter().any(|d| {
            d.channel == "webhook"
                && d.status == "pending"
                && d.attempts >= 1
                && d.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("webhook"))
        });
        if retried {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        retried,
        "a failed webhook attempt is visible with its error"
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["notify", "status", "--request", &id])
        .env("LOCKBOX_SERVER", env.deployment.server_url())
        .env("LOCKBOX_API_KEY", &env.deployment.api_keys["alice"])
        .output()
        .expect("run lockbox");
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(
        printed.contains("webhook") && printed.contains("pending"),
        "{printed}"
    );
    assert!(
        printed.lines().all(|l| l.chars().count() <= 100),
        "fits 100 columns: {printed}"
    );

    // Retries back off from 200 ms, doubling: a busy machine that got to the receiver
    // after eight attempts waits 25.6 s for the next.
    let hooks = webhook_receiver(hook_port).await;
    let first = wait_within("the retried webhook", 600, || {
        hooks.lock().expect("hooks").first().cloned()
    })
    .await;
    assert_eq!(first["event"], "awaiting_approval");
    assert_eq!(first["request"]["request_id"], id.as_str());
    assert_eq!(first["request"]["recipients"], serde_json::json!(["lena"]));

    // Then the customer's approvers; then everyone hears of the approval.
    env.client("lena")
        .approve(&id, "lead ok")
        .await
        .expect("lead");
    let customer = wait_for("the customer approvers' mail", || {
        Some(mails_about(&mails, "awaits your approval")).filter(|m| m.len() >= 4)
    })
    .await;
    assert_eq!(
        recipients(&customer[1..]),
        [
            "carol@example.test",
            "cleo@example.test",
            "selma@example.test"
        ]
    );
    env.client("carol")
        .approve(&id, "customer ok")
        .await
        .expect("carol");
    let approved = wait_for("the approval mail", || {
        Some(mails_about(&mails, "was approved")).filter(|m| m.len() >= 5)
    })
    .await;
    let told = recipients(&approved);
    for who in [
        "eve@example.test",
        "lena@example.test",
        "carol@example.test",
    ] {
        assert!(told.iter().any(|t| t == who), "{who} not told: {told:?}");
    }

    // Break-glass: every approver at once.
    let mut glass = new.clone();
    glass.break_glass = true;
    let glass_id = env
        .client("oncall")
        .create_request(&glass)
        .await
        .expect("glass")
        .id
        .0;
    // Every approver is alarmed (the requester may be told too, in any order).
    let alarm = wait_for("the break-glass mail", || {
        Some(mails_about(&mails, "BREAK-GLASS")).filter(|m| {
            let told = recipients(m);
            [
                "carol@example.test",
                "cleo@example.test",
                "selma@example.test",
            ]
            .iter()
            .all(|who| told.iter().any(|t| t == who))
        })
    })
    .await;
    assert!(alarm.iter().all(|m| m.data.contains(&glass_id)));
    let alarmed = recipients(&alarm);
    for who in [
        "carol@example.test",
        "cleo@example.test",
        "selma@example.test",
    ] {
        assert!(
            alarmed.iter().any(|t| t == who),
            "{who} not alarmed: {alarmed:?}"
        );
    }
    let hook_events = wait_for("the break-glass webhook", || {
        let list = hooks.lock().expect("hooks").clone();
        list.iter()
            .any(|h| h["event"] == "break_glass")
            .then_some(list)
    })
    .await;
    assert!(hook_events.iter().any(|h| h["event"] == "approved"));
}
