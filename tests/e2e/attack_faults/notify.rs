//! Notification receivers that stay silent, drip, or see a delivery twice, and a burst of
//! deliveries on a shared store.

use super::*;

/// An SMTP "server" that accepts connections and never says a word.
async fn silent_listener() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

/// Finding: lettre's `timeout` bounds only the SMTP connect; a relay that accepts and never
/// greets held the delivery (and one of the 8 slots) for ever, never retried, and 8 such
/// deliveries stopped every notification.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_smtp_relay_times_out_and_the_delivery_is_retried() {
    let smtp_port = silent_listener().await;
    let settings = format!(
        "\n[notifications]\nretry_base = \"100ms\"\nmax_attempts = 50\n\
         [notifications.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nfrom = \"lockbox@example.test\"\n"
    );
    let env = Env::with(
        "atk14_silent_smtp",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    let id = env.pending_request("eve", "1h").await;
    for _ in 0..400 {
        let list = env
            .client("alice")
            .notifications(Some(&id), None)
            .await
            .expect("status");
        if list
            .iter()
            .any(|d| d.channel == "smtp" && d.attempts >= 1 && d.last_error.is_some())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a delivery to a silent SMTP relay never ended in 40 s");
}

/// A webhook receiver answering 200 to every POST, recording each path.
async fn recording_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let paths = Arc::new(Mutex::new(Vec::new()));
    let store = paths.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let store = store.clone();
        async move {
            store.lock().expect("paths").push(uri.path().to_owned());
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, paths)
}

/// Finding: the dispatcher polled its deliveries itself, and each records its attempt
/// through the PostgreSQL store's pool of 4 connections: deliveries that took a connection,
/// then were not polled while the dispatcher awaited the store, held all 4 for ever. The
/// node's API, decisions and admissions all hung behind them.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_deliveries_leaves_the_shared_store_answering() {
    let (port, paths) = recording_receiver().await;
    let mut settings = String::from("\n[notifications]\nretry_base = \"100ms\"\n");
    for n in 0..8 {
        settings.push_str(&format!(
            "[[notifications.webhooks]]\nurl = \"http://127.0.0.1:{port}/hook/{n}\"\n"
        ));
    }
    let env = Env::with(
        "atk14_pool",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            state_postgres: true,
            ..Options::default()
        },
    )
    .await;
    for round in 0..5 {
        let id = env.pending_request("eve", "1h").await;
        let mut delivered = 0;
        for _ in 0..300 {
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                env.client("alice").notifications(Some(&id), None),
            )
            .await;
            let Ok(list) = answer else {
                panic!(
                    "round {round}: the API hung on the state store after {} webhook calls",
                    paths.lock().expect("paths").len()
                );
            };
            delivered = list
                .expect("status")
                .iter()
                .filter(|d| d.status == "delivered")
                .count();
            if delivered == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            delivered, 8,
            "round {round}: not every delivery was recorded"
        );
    }
}

/// Finding: on a shared (PostgreSQL) store the dispatcher claimed up to 100 due deliveries
/// for two minutes but sent only as many as it had free slots (8): the rest waited out the
/// claim before anyone sent them.
#[tokio::test(flavor = "multi_thread")]
async fn more_deliveries_than_slots_all_go_out_promptly_on_a_shared_store() {
    let (port, paths) = recording_receiver().await;
    let mut settings = String::from("\n[notifications]\nretry_base = \"100ms\"\n");
    for n in 0..12 {
        settings.push_str(&format!(
            "[[notifications.webhooks]]\nurl = \"http://127.0.0.1:{port}/hook/{n}\"\n"
        ));
    }
    let env = Env::with(
        "atk14_claims",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            state_postgres: true,
            ..Options::default()
        },
    )
    .await;
    env.pending_request("eve", "1h").await;
    for _ in 0..300 {
        let seen: BTreeSet<String> = paths.lock().expect("paths").iter().cloned().collect();
        if seen.len() == 12 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen: BTreeSet<String> = paths.lock().expect("paths").iter().cloned().collect();
    panic!(
        "only {} of 12 deliveries arrived within 30 s: {seen:?}",
        seen.len()
    );
}

/// Finding: delivery is at least once (an attempt the receiver took but whose answer was
/// lost to the timeout or to a crash of the proxy is made again), and a repeat looked like a
/// new notification: every attempt of one delivery now carries the same Idempotency-Key.
#[tokio::test(flavor = "multi_thread")]
async fn every_attempt_of_one_delivery_carries_the_same_idempotency_key() {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let store = keys.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let store = store.clone();
        async move {
            let key = headers
                .get("idempotency-key")
                .and_then(|k| k.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let mut keys = store.lock().expect("keys");
            keys.push(key);
            // The first attempt "fails" as one whose answer was lost would.
            if keys.len() == 1 {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                axum::http::StatusCode::OK
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let settings = format!(
        "\n[notifications]\nretry_base = \"100ms\"\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\n"
    );
    let env = Env::with(
        "atk14_idempotency",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    env.pending_request("eve", "1h").await;
    for _ in 0..100 {
        let seen = keys.lock().expect("keys").clone();
        if seen.len() >= 2 {
            assert!(!seen[0].is_empty(), "an attempt without an Idempotency-Key");
            assert_eq!(seen[0], seen[1], "two attempts of one delivery");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the delivery was not retried");
}

/// A TCP server answering every connection with `serve`.
async fn raw_receiver<F, Fut>(serve: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket));
        }
    });
    port
}

/// Checked sound: a webhook receiver that drips its answer a byte a second (defeating a
/// per-read timeout) is cut at the delivery timeout and retried; one answering 200 with an
/// endless body is delivered at once (the body is never read).
#[tokio::test(flavor = "multi_thread")]
async fn a_dripping_receiver_times_out_and_an_endless_body_is_not_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let drip = raw_receiver(|mut socket| async move {
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf).await;
        for byte in b"HTTP/1.1 200 OK\r\n".iter().cycle() {
            if socket.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let endless = raw_receiver(|mut socket| async move {
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf).await;
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n";
        if socket.write_all(head).await.is_err() {
            return;
        }
        let zeros = vec![0u8; 64 * 1024];
        while socket.write_all(&zeros).await.is_ok() {}
    })
    .await;
    let settings = format!(
        "\n[notifications]\nretry_base = \"100ms\"\nmax_attempts = 50\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{drip}/hook\"\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{endless}/hook\"\n"
    );
    let env = Env::with(
        "atk14_drip",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    let id = env.pending_request("eve", "1h").await;
    for _ in 0..300 {
        let list = env
            .client("alice")
            .notifications(Some(&id), None)
            .await
            .expect("status");
        let dripped = list.iter().any(|d| {
            d.target.contains(&drip.to_string()) && d.attempts >= 1 && d.last_error.is_some()
        });
        let endless_delivered = list
            .iter()
            .any(|d| d.target.contains(&endless.to_string()) && d.status == "delivered");
        if dripped && endless_delivered {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the dripping receiver was not cut, or the endless body held its delivery");
}
